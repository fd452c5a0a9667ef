"""Demo: every serial device family behind its own pty, wired into the hub's [serial] ports."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from .dmr import DmrSim
from .gnss import GnssSim
from .ptz import PtzSim
from .rdss import RdssSim
from .tiantong import TiantongSim


class SerialDemo:
    """GNSS (moving fix), Beidou RDSS, Tiantong, PTZ ball and DMR gateway; a Beidou message and an
    SMS sent to themselves once the hub runs; a little line noise and one GNSS unplug/replug."""

    name = "serial"

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        base = Path(ctx.workdir or ctx.data_dir.parent) / "serial"
        base.mkdir(parents=True, exist_ok=True)
        self.sims = {
            "gnss-1": (GnssSim(base / "gnss", hz=2, noise=0.02, seed=1), "nmea", "gnss", "nmea-generic"),
            "bd-1": (RdssSim(base / "rdss", interval=10), "beidou_rdss", "bd_terminal", "rdss-bd2-level3"),
            "tt-1": (TiantongSim(base / "tiantong", loss_every=20, loss_for=4), "tiantong", "sat_phone",
                     "tiantong-generic"),
            "ptz-1": (PtzSim(base / "ptz"), "pelco_d", "ptz", "pelco-d-generic"),
            "dmr-1": (DmrSim(base / "dmr", period=2), "dmr", "dmr_radio", "dmr-hytera-gateway"),
        }
        self.events: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def setup(self) -> None:
        ports = []
        for dev, (sim, driver, kind, model) in self.sims.items():
            self.ctx.add_device(dev, kind, model=model)
            ports.append({"device_id": dev, "driver": driver, "url": sim.path, "profile": model})
        self.ctx.overrides["serial.ports"] = ports
        self.ctx.overrides["serial.backoff_initial"] = 0.2
        self.ctx.overrides["serial.backoff_max"] = 2.0

    def start(self) -> None:
        for sim, *_ in self.sims.values():
            sim.start()
        self._thread = threading.Thread(target=self._script, name="demo-serial", daemon=True)
        self._thread.start()

    def _script(self) -> None:
        from fieldhub.core import control
        from fieldhub.core.errors import FieldhubError

        if self._stop.wait(3):
            return
        data_dir = self.ctx.data_dir
        for name, cmd, args in (
                ("bd_send", "serial.bd_send", {"dest": "0242286", "text": "北斗短报文演示：水位 3.2 米"}),
                ("sms_send", "serial.sms_send", {"number": "+8617400000001", "text": "天通短信演示：人员已转移"}),
                ("ptz", "serial.ptz", {"command": {"cmd": "right", "speed": 20}})):
            try:
                self.events[name] = control.call(data_dir, cmd, args, timeout=60)
            except FieldhubError as exc:
                self.events[name] = f"failed: {exc}"
        if self._stop.wait(3):
            return
        self.sims["gnss-1"][0].unplug()
        if self._stop.wait(2):
            self.sims["gnss-1"][0].replug()
            return
        self.sims["gnss-1"][0].replug()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=70)
        for sim, *_ in self.sims.values():
            sim.stop()

    def summary(self) -> dict[str, Any]:
        """Flat figures for the live table: frames each device wrote, faults injected, actions."""
        out: dict[str, Any] = {f"{dev} frames": sim.stats["frames_out"] for dev, (sim, *_) in self.sims.items()}
        out["garbage bytes injected"] = sum(sim.stats["garbage_injected"] for sim, *_ in self.sims.values())
        out["unplugs"] = sum(sim.stats["unplugs"] for sim, *_ in self.sims.values())
        out["bd messages sent"] = len(self.sims["bd-1"][0].sent)
        out["sms sent"] = len(self.sims["tt-1"][0].sent)
        out["actions"] = ", ".join(f"{k} {'ok' if isinstance(v, dict) else v}" for k, v in self.events.items()) or "-"
        return out

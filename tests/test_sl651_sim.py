"""``fieldhub sim sl651`` against a real hub process on real sockets, through a hub ``kill -9``:
every report stored exactly once, every confirm the stations got was for a durable report,
unconfirmed reports resent and deduplicated, corrupt frames unanswered and counted."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

from fieldhub.core import control
from fieldhub.core.datadir import LOG_FILE, REGISTRY_FILE
from fieldhub.core.errors import HubNotRunning
from fieldhub.core.logview import LogView
from fieldhub.core.registry import Device, Registry
from simulators.sl651 import CST, SimOptions, Sl651Fleet, station_address
from tests.conftest import ROOT, fieldhub_cmd, free_port, run_cli

STATIONS = 200


def _spawn_hub(conf: Path) -> subprocess.Popen:
    return subprocess.Popen(fieldhub_cmd("run", "--config", str(conf)), cwd=str(ROOT), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _server_status(data: Path, timeout: float = 30.0) -> dict:
    end = time.monotonic() + timeout
    while True:
        try:
            st = control.call(data, "status", {}, timeout=10)
            return next(c for name, c in st["components"].items() if name == "sl651")
        except (HubNotRunning, StopIteration, KeyError, OSError):
            if time.monotonic() > end:
                raise
            time.sleep(0.2)


def _hydro_keys(data: Path) -> list[tuple[str, int, int]]:
    with LogView.open(data / LOG_FILE) as view:
        return [(e.record.tags["station"], int(e.record.tags["fc"], 16), e.record.ts)
                for e in view.read({}, limit=1_000_000) if e.record.kind in ("hydro", "sl651_picture")]


def _ns(obs: datetime) -> int:
    return int(obs.timestamp()) * 1_000_000_000


def test_200_stations_through_hub_kill_9(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    reg = Registry(data / REGISTRY_FILE)
    for i in range(STATIONS):
        reg.add(Device(f"st-{i:03d}", "water_level", "420102001001", transport={"sl651": station_address(i)}))
    reg.close()
    port = free_port()
    conf = tmp_path / "hub.toml"
    conf.write_text(f"""
[hub]
data_dir = "{data}"
[store]
enabled = false
[sl651]
enabled = true
listen = "127.0.0.1:{port}"
quarantine_per_minute = 100000
""")
    hub = _spawn_hub(conf)
    _server_status(data)
    fleet = Sl651Fleet(SimOptions(port=port, stations=STATIONS, rate=2.0, confirm_timeout=30.0, corrupt=0.02,
                                  keepalive=1.0, picture_every=12, start=datetime(2025, 7, 15, 0, 0, tzinfo=CST))).start()
    try:
        time.sleep(5)
        confirmed_before = list(fleet.confirmed)
        fleet.deaf = True                     # confirms lost on the way: reports durable, stations unaware
        time.sleep(1.0)
        hub.send_signal(signal.SIGSTOP)       # and now reports are sent that the hub never reads
        time.sleep(0.7)
        hub.kill()
        hub.wait(10)
        t_dead = time.monotonic()
        assert fleet.unconfirmed() >= STATIONS // 2
        time.sleep(1.0)                       # stations reconnect in vain, queue what falls due
        fleet.deaf = False
        hub = _spawn_hub(conf)
        # what the stations saw confirmed before the kill was durable: it survived the kill
        stored = Counter(_hydro_keys(data))
        lost = [c for c in confirmed_before if (c[0], c[1], _ns(c[2])) not in stored]
        assert not lost, f"{len(lost)} confirmed reports not durable, e.g. {lost[:3]}"
        _server_status(data)
        time.sleep(5)
        assert fleet.drain(90), fleet.summary()
        time.sleep(1.6)                       # idle stations send keep-alives, which get no answer
        summary = fleet.summary()
        status = _server_status(data)
    finally:
        fleet.stop()
        hub.send_signal(signal.SIGTERM)
        hub.wait(30)
    generated = Counter((s, fc, _ns(t)) for s, fc, t in fleet.generated)
    stored = Counter(_hydro_keys(data))
    assert set(generated.values()) == {1}
    missing = set(generated) - set(stored)
    twice = [k for k, n in stored.items() if n > 1]
    extra = set(stored) - set(generated)
    assert not missing and not twice and not extra, (len(missing), twice[:3], len(extra))
    assert summary["confirmed"] == summary["generated"] == len(stored)
    assert summary["unexpected_replies"] == 0              # no confirm for a corrupt frame, none twice
    assert summary["resends"] >= STATIONS // 2             # the reports in flight at the kill were resent
    # ... among them the ones made durable whose confirms were lost: deduplicated by record id
    assert status["duplicates"] >= summary["replies_lost"] >= STATIONS // 2
    assert {fc for _, fc, _ in generated} == {0x32, 0x33, 0x34, 0x36}     # 36: pictures in M3 sets
    assert summary["pictures"] >= 2 * STATIONS and summary["naks"] == summary["nak_resends"] > 0
    assert summary["keepalives"] >= STATIONS and status["keepalives"] >= STATIONS and summary["corrupt_sent"] > 0
    # corrupt frames sent to the restarted hub: each counted there, none stored
    assert status["bad_frames"] == fleet.corrupt_since(t_dead) > 0
    print(f"\nsl651 sim through kill -9: {summary['generated']} reports from {STATIONS} stations stored once; "
          f"resends {summary['resends']}, duplicates seen by the restarted hub {status['duplicates']}, "
          f"corrupt {summary['corrupt_sent']}, pictures {summary['pictures']} "
          f"({summary['packets_sent']} packets, {summary['naks']} NAKed packets resent)")


def test_sim_cli_json(tmp_path: Path) -> None:
    """``fieldhub sim sl651`` with no hub listening: a bounded run that says what it could not deliver."""
    proc = run_cli("sim", "sl651", "--stations", "3", "--rate", "5", "--seconds", "1", "--drain", "0.5",
                   "--hub", f"127.0.0.1:{free_port()}", "--json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = __import__("json").loads(proc.stdout)
    assert out["stations"] == 3 and out["generated"] >= 3 and out["confirmed"] == 0
    assert out["unconfirmed"] == out["generated"] and out["connect_failures"] > 0 and not out["drained"]
    proc = run_cli("sim", "sl651", "--hub", "nonsense")
    assert proc.returncode != 0 and "HOST:PORT" in proc.stderr and "Traceback" not in proc.stderr

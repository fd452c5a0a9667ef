"""Pelco-D PTZ ball simulator: moves at the commanded speed, presets, answers position queries."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from drivers.pelco_d import DOWN, LEFT, RIGHT, TELE, UP, WIDE, PelcoFramer, frame_d
from fieldhub.core import profiles

from .ptysim import PtySim


class PtzSim(PtySim):
    """Pan 0-360°, tilt -90..+90° (reported as counts mod 360°), zoom 0-0xFFFF, in profile units."""

    kind = "ptz"

    def __init__(self, link: str | Path | None = None, *, address: int = 1, profile: str = "pelco-d-generic",
                 **kw: Any) -> None:
        super().__init__(link, **kw)
        self.profile = profiles.load(profile)
        self.address = address
        self.unit = float(self.profile.get("units", {}).get("position_deg", 0.01))
        self.max_dps = float(self.profile["ptz"]["max_speed_dps"])
        self.pan = self.tilt = 0.0
        self.zoom = 0.0
        self.pan_rate = self.tilt_rate = self.zoom_rate = 0.0
        self.presets: dict[int, tuple[float, float, float]] = {}
        self.framer = PelcoFramer()
        self.commands = 0
        self._last = time.monotonic()

    def tick(self, now: float) -> None:
        dt = now - self._last
        self._last = now
        self.pan = (self.pan + self.pan_rate * dt) % 360.0
        self.tilt = max(-90.0, min(90.0, self.tilt + self.tilt_rate * dt))
        self.zoom = max(0.0, min(65535.0, self.zoom + self.zoom_rate * dt))

    def _reply(self, cmd2: int, counts: int) -> None:
        self.emit(frame_d(self.address, 0, cmd2, (counts >> 8) & 0xFF, counts & 0xFF))

    def on_input(self, data: bytes) -> None:
        for fr in self.framer.feed(data):
            if not fr.ok or fr.raw[0] != 0xFF or fr.raw[1] not in (self.address, 0xFF):
                continue
            self.tick(time.monotonic())
            self.commands += 1
            _, _, cmd1, cmd2, d1, d2, _ = fr.raw
            if cmd2 & 0x01:
                self._extended(cmd2, d1, d2)
                continue
            speed_p = d1 / 0x3F * self.max_dps
            speed_t = d2 / 0x3F * self.max_dps
            self.pan_rate = speed_p if cmd2 & RIGHT else -speed_p if cmd2 & LEFT else 0.0
            self.tilt_rate = speed_t if cmd2 & UP else -speed_t if cmd2 & DOWN else 0.0
            self.zoom_rate = 2000.0 if cmd2 & TELE else -2000.0 if cmd2 & WIDE else 0.0

    def _extended(self, cmd2: int, d1: int, d2: int) -> None:
        value = (d1 << 8) | d2
        if cmd2 == 0x03:
            self.presets[d2] = (self.pan, self.tilt, self.zoom)
        elif cmd2 == 0x05:
            self.presets.pop(d2, None)
        elif cmd2 == 0x07 and d2 in self.presets:
            self.pan, self.tilt, self.zoom = self.presets[d2]
            self.pan_rate = self.tilt_rate = self.zoom_rate = 0.0
        elif cmd2 == 0x4B:
            self.pan = (value * self.unit) % 360.0
            self.pan_rate = 0.0
        elif cmd2 == 0x4D:
            deg = value * self.unit
            self.tilt = deg - 360.0 if deg > 180 else deg
            self.tilt_rate = 0.0
        elif cmd2 == 0x4F:
            self.zoom = float(value)
            self.zoom_rate = 0.0
        elif cmd2 == 0x51:
            self._reply(0x59, int(round(self.pan / self.unit)) & 0xFFFF)
        elif cmd2 == 0x53:
            self._reply(0x5B, int(round((self.tilt % 360.0) / self.unit)) & 0xFFFF)
        elif cmd2 == 0x55:
            self._reply(0x5D, int(self.zoom) & 0xFFFF)

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "commands": self.commands, "pan": round(self.pan, 2), "tilt": round(self.tilt, 2)}

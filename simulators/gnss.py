"""GNSS receiver simulator: replays an NMEA capture, or generates a moving fix (GGA/RMC/GSA/GSV)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from drivers.sentence import sentence

from .ptysim import PtySim


def _dm(value: float, lat: bool) -> tuple[str, str]:
    hemi = ("N" if value >= 0 else "S") if lat else ("E" if value >= 0 else "W")
    v = abs(value)
    deg = int(v)
    minutes = (v - deg) * 60
    return (f"{deg:02d}{minutes:07.4f}" if lat else f"{deg:03d}{minutes:07.4f}"), hemi


def fix_sentences(t: float, lat: float, lon: float, speed_kn: float, course: float, alt: float = 35.0) -> list[bytes]:
    """One epoch: GNGGA, GNRMC, GNGSA, GPGSV, BDGSV (BeiDou PRNs 1-64 under the BD talker)."""
    g = time.gmtime(t)
    hms = time.strftime("%H%M%S", g) + f".{int((t % 1) * 100):02d}"
    dmy = time.strftime("%d%m%y", g)
    la, ns = _dm(lat, True)
    lo, ew = _dm(lon, False)
    return [
        sentence(f"GNGGA,{hms},{la},{ns},{lo},{ew},1,14,0.8,{alt:.1f},M,-10.2,M,,"),
        sentence(f"GNRMC,{hms},A,{la},{ns},{lo},{ew},{speed_kn:.2f},{course:.1f},{dmy},,,A"),
        sentence("GNGSA,A,3,03,06,17,19,24,28,,,,,,,1.4,0.8,1.1,1"),
        sentence("GNGSA,A,3,06,09,16,21,,,,,,,,,1.4,0.8,1.1,4"),
        sentence("GPGSV,2,1,06,03,45,120,42,06,30,210,38,17,60,045,45,19,15,300,31"),
        sentence("GPGSV,2,2,06,24,55,090,44,28,10,330,29"),
        sentence("BDGSV,1,1,04,06,50,150,40,09,35,250,37,16,70,010,43,21,20,100,33"),
    ]


class GnssSim(PtySim):
    """A receiver: ``capture`` replays a file line by line (``rate`` lines/s, looping), else a
    vehicle driving a circle near ``lat``/``lon`` reported ``hz`` times a second."""

    kind = "gnss"

    def __init__(self, link: str | Path | None = None, *, capture: str | Path | None = None,
                 rate: float = 50.0, hz: float = 1.0, lat: float = 30.5928, lon: float = 114.3055,
                 speed_kn: float = 20.0, profile: str = "", loop: bool = True, **kw: Any) -> None:
        super().__init__(link, **kw)
        self.lines: list[bytes] = []
        if capture:
            for line in Path(capture).read_bytes().splitlines():
                if line.strip() and not line.startswith(b"#"):
                    self.lines.append(line.rstrip(b"\r\n") + b"\r\n")
        self.rate, self.hz = rate, hz
        self.loop = loop
        #: while True the receiver says nothing (a test opens the port first, then replays)
        self.paused = False
        self.lat0, self.lon0, self.speed_kn = lat, lon, speed_kn
        self._i = 0
        self._next = 0.0
        self.epochs = 0
        self.profile = profile

    def position(self, t: float) -> tuple[float, float, float]:
        """Where the simulated vehicle is at ``t``: a 1 km circle around the start point."""
        w = self.speed_kn * 0.514444 / 1000.0  # rad/s on a 1 km radius
        a = t * w
        lat = self.lat0 + math.degrees(1000 * math.sin(a) / 6371000)
        lon = self.lon0 + math.degrees(1000 * math.cos(a) / (6371000 * math.cos(math.radians(self.lat0))))
        return lat, lon, (math.degrees(a) + 270) % 360

    def tick(self, now: float) -> None:
        if now < self._next or self.paused:
            return
        if self.lines:
            n = max(1, int(self.rate * self.tick_interval))
            if not self.loop:
                n = min(n, len(self.lines) - self._i)
            for _ in range(n):
                self.emit(self.lines[self._i % len(self.lines)])
                self._i += 1
            self._next = now + max(self.tick_interval, n / self.rate)
            return
        t = time.time()
        lat, lon, course = self.position(t)
        for s in fix_sentences(t, lat, lon, self.speed_kn, course):
            self.emit(s)
        self.epochs += 1
        self._next = now + 1.0 / self.hz

    @property
    def replayed(self) -> int:
        return self._i

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "epochs": self.epochs, "lines_replayed": self._i}

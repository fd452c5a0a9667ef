"""DMR gateway simulator: Hytera LP location reports, Motorola LRRP reports, TMP text messages."""

from __future__ import annotations

import math
import struct
import time
from pathlib import Path
from typing import Any

from drivers.dmr import HDAP_LP, HDAP_TMP, TMP_TEXT, DmrFramer, hdap_message

from .ptysim import PtySim


def lp_report(radio_ip: str, lat: float, lon: float, t: float, speed_kn: float = 0.1, course: int = 121) -> bytes:
    g = time.gmtime(t)
    la, lo = abs(lat), abs(lon)
    gps = (f"A{time.strftime('%H%M%S', g)}{time.strftime('%d%m%y', g)}"
           f"{'N' if lat >= 0 else 'S'}{int(la):02d}{(la % 1) * 60:07.4f}"
           f"{'E' if lon >= 0 else 'W'}{int(lo):03d}{(lo % 1) * 60:07.4f}{speed_kn:.1f}{course:03d}")
    payload = (1).to_bytes(4, "big") + bytes(int(x) for x in radio_ip.split(".")) + b"\x00\x00" + gps.encode()
    return hdap_message(HDAP_LP, 0xA002, payload)


def lrrp_report(lat: float, lon: float, heading: int = 52) -> bytes:
    latv = int(abs(lat) * 2**31 / 90.0) | (0x80000000 if lat < 0 else 0)
    lonv = int(lon * 2**32 / 360.0) & 0xFFFFFFFF
    body = b"\x23\x2f" + b"\x66" + struct.pack(">II", latv, lonv) + b"\x56" + bytes((heading // 2,))
    return bytes((0x13, len(body))) + body


class DmrSim(PtySim):
    """Radios walking around a point, reporting every ``period`` seconds; echoes texts sent to it."""

    kind = "dmr"

    def __init__(self, link: str | Path | None = None, *, period: float = 2.0, lat: float = 30.60,
                 lon: float = 114.30, profile: str = "", **kw: Any) -> None:
        super().__init__(link, **kw)
        self.period, self.lat, self.lon = period, lat, lon
        self.framer = DmrFramer()
        self.texts_in: list[bytes] = []
        self.reports = 0
        self._next = 0.0
        self.profile = profile

    def tick(self, now: float) -> None:
        if now < self._next:
            return
        self._next = now + self.period
        a = self.reports / 20.0
        self.emit(lp_report("10.33.16.221", self.lat + 0.01 * math.sin(a), self.lon + 0.01 * math.cos(a), time.time()))
        self.emit(lrrp_report(self.lat - 0.01 * math.sin(a), self.lon - 0.01 * math.cos(a)))
        self.reports += 2

    def on_input(self, data: bytes) -> None:
        for fr in self.framer.feed(data):
            if fr.ok and fr.raw[0] == HDAP_TMP:
                self.texts_in.append(fr.raw)
                # the radio acknowledges by answering with a text of its own
                payload = fr.raw[5:-2]
                reply = payload[:4] + payload[8:12] + payload[4:8] + "收到 / received".encode("utf-16-le")
                self.emit(hdap_message(HDAP_TMP, TMP_TEXT, reply))

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "reports": self.reports, "texts_in": len(self.texts_in)}

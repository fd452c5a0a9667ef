"""Beidou RDSS module simulator: card info, TXA with the card's interval enforced (FKI), TXR, BSI."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from drivers import beidou_rdss
from drivers.sentence import SentenceFramer, sentence, split_fields
from fieldhub.core import profiles

from .ptysim import PtySim


class RdssSim(PtySim):
    """Answers like a module: ``$CCICA`` -> ``$BDICI``; ``$CCTXA`` -> ``$BDFKI`` (refused with the
    remaining wait when the card's interval has not passed); messages to its own card come back
    as ``$BDTXR`` (loopback); ``$CCRMO,BSI,2,n`` starts beam reports every n seconds."""

    kind = "rdss"

    def __init__(self, link: str | Path | None = None, *, card: str = "0242286", interval: float | None = None,
                 profile: str = "rdss-bd2-level3", loopback_delay: float = 0.3, **kw: Any) -> None:
        super().__init__(link, **kw)
        self.profile = profiles.load(profile)
        self.card = card
        self.interval = float(interval if interval is not None else self.profile["rdss"]["service_interval_s"])
        self.bd3 = self.profile["rdss"].get("fki_style") == "bd3"
        self.framer = SentenceFramer(max_len=4096)
        self.last_tx = -1e9
        self.sent: list[dict[str, Any]] = []
        self.refused = 0
        self.inbox_due: list[tuple[float, bytes]] = []
        self.bsi_period = 0.0
        self._next_bsi = 0.0
        self.beam_phase = 0

    def _fki(self, ok: bool, wait: int) -> bytes:
        if self.bd3:
            hms = time.strftime("%H%M%S", time.gmtime())
            return sentence(f"BDFKI,{hms},TCQ,{'Y' if ok else 'N'},{0 if ok else 1},{wait}")
        return sentence(f"BDFKI,TXA,{'Y' if ok else 'N'},{'Y' if ok else 'N'},0,{wait:04d}")

    def on_input(self, data: bytes) -> None:
        for frame in self.framer.feed(data):
            if not frame.ok:
                continue
            f = split_fields(frame.raw)
            addr = f[0]
            if addr in (b"CCICA", b"CCICI"):
                self.emit(sentence(f"BDICI,{self.card},{int(self.card):08d},0000011,6,{int(self.interval)},3,N,0"))
            elif addr == b"CCICP":
                self.emit(sentence(f"BDICP,{self.card},{int(self.card):08d},1,3,0,N,1,Y,1,0,0,3,1,"
                                   f"{int(self.interval)},5,1,1,2,2,500,100,10,10"))
            elif addr == b"CCRMO" and len(f) >= 4 and f[1] == b"BSI":
                self.bsi_period = float(f[3] or 0)
            elif addr == b"CCTXA" and len(f) >= 5:
                self._txa(f)

    def _txa(self, f: list[bytes]) -> None:
        now = time.monotonic()
        remaining = self.interval - (now - self.last_tx)
        if remaining > 0:
            self.refused += 1
            self.emit(self._fki(False, int(remaining + 0.999)))
            return
        self.last_tx = now
        dest, enc, content = f[1].decode(), int(f[3]), b",".join(f[4:])
        text, hexed = beidou_rdss.decode_content(enc, content)
        self.sent.append({"dest": dest, "encoding": enc, "text": text, "hex": hexed, "at": time.time()})
        self.emit(self._fki(True, 0))
        if dest.lstrip("0") == self.card.lstrip("0"):
            sent_time = time.strftime("%H%M", time.gmtime())
            txr = b"BDTXR,1,%s,%d,%s,%s" % (self.card.encode(), enc, sent_time.encode(), content)
            self.inbox_due.append((now + 0.3, sentence(txr)))

    def inject_message(self, sender: str, text: str, encoding: int = beidou_rdss.ENC_MIXED) -> None:
        """A message arrives from another terminal (as the satellite would deliver it)."""
        content = beidou_rdss.encode_content(text, encoding)
        self.inbox_due.append((time.monotonic(), sentence(b"BDTXR,1,%s,%d,,%s" % (sender.encode(), encoding, content))))

    def tick(self, now: float) -> None:
        due = [m for m in self.inbox_due if m[0] <= now]
        if due:
            self.inbox_due = [m for m in self.inbox_due if m[0] > now]
            for _, msg in due:
                self.emit(msg)
        if self.bsi_period and now >= self._next_bsi:
            self._next_bsi = now + self.bsi_period
            self.beam_phase += 1
            p = [(self.beam_phase + i) % 5 for i in range(10)]
            self.emit(sentence("BDBSI,01,03," + ",".join(map(str, p))))

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "sent": len(self.sent), "refused_interval": self.refused}

"""Tiantong-1 terminal simulator: AT commands, varying signal, registration loss, an SMS inbox."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from drivers.sms_pdu import decode_submit, deliver_pdus, split_text
from fieldhub.core.errors import ProtocolError

from .ptysim import PtySim


class TiantongSim(PtySim):
    """Answers AT/ATE0/+CSQ/+CREG?/+CMGF/+CSCS/+CSMP/+CMGS/+CMGR/+CMGD/+CMGL/+CLCC.

    Signal wanders; every ``loss_every`` seconds registration drops for ``loss_for`` seconds
    (``+CREG: 2`` unsolicited, SMS submission fails meanwhile). SMS sent to ``own_number``
    loop back into the inbox with ``+CMTI``. ``fail_next`` makes the next submissions fail
    (``+CMS ERROR: 332``, network timeout) to exercise retries.
    """

    kind = "tiantong"

    def __init__(self, link: str | Path | None = None, *, own_number: str = "+8617400000001",
                 loss_every: float = 0.0, loss_for: float = 5.0, profile: str = "", **kw: Any) -> None:
        super().__init__(link, **kw)
        self.own_number = own_number
        self.loss_every, self.loss_for = loss_every, loss_for
        self.profile = profile
        self.cmgf = 1
        self.cscs = "GSM"
        self.echo = True
        self.creg_urc = 0
        self.inbox: dict[int, dict[str, Any]] = {}
        self.sent: list[dict[str, Any]] = []
        self.fail_next = 0
        self._buf = b""
        self._pending_cmgs: str | None = None
        self._next_idx = 1
        self._t0 = time.monotonic()
        self._registered = True
        self._parts: dict[tuple[str, int], dict[int, str]] = {}
        #: the call in progress: (number, state) with 27.007 +CLCC states (4 incoming, 0 active)
        self.call: tuple[str, int] | None = None
        self._next_ring = 0.0

    # -- state
    def rssi(self, now: float) -> int:
        if not self.registered(now):
            return 99 if int(now) % 2 else 3
        return int(16 + 8 * math.sin((now - self._t0) / 7.0))

    def registered(self, now: float) -> bool:
        if not self.loss_every:
            return True
        return ((now - self._t0) % (self.loss_every + self.loss_for)) < self.loss_every

    def ring(self, number: str) -> None:
        """An incoming call: RING and +CLIP every 2 s until answered (ATA) or hung up (ATH)."""
        self.call = (number, 4)
        self._next_ring = 0.0

    def tick(self, now: float) -> None:
        if self.call is not None and self.call[1] == 4 and now >= self._next_ring:
            self._next_ring = now + 2.0
            self._line("RING")
            self._line(f'+CLIP: "{self.call[0]}",145')
        reg = self.registered(now)
        if reg != self._registered:
            self._registered = reg
            if self.creg_urc:
                self._line(f"+CREG: {1 if reg else 2}")

    def _line(self, text: str) -> None:
        self.emit(b"\r\n" + text.encode() + b"\r\n")

    # -- input
    def on_input(self, data: bytes) -> None:
        self._buf += data
        while True:
            if self._pending_cmgs is not None:
                end = self._buf.find(b"\x1a")
                esc = self._buf.find(b"\x1b")
                if esc >= 0 and (end < 0 or esc < end):
                    self._buf = self._buf[esc + 1:]
                    self._pending_cmgs = None
                    self._line("OK")
                    continue
                if end < 0:
                    if len(self._buf) > 4096:
                        self._buf = b""
                    return
                body, self._buf = self._buf[:end], self._buf[end + 1:]
                try:
                    self._submit(self._pending_cmgs, body.decode("ascii", "replace"))
                except (ValueError, UnicodeDecodeError, ProtocolError):
                    self._line("+CMS ERROR: 304")  # invalid PDU / text parameter
                self._pending_cmgs = None
                continue
            cr = self._buf.find(b"\r")
            if cr < 0:
                if len(self._buf) > 1024:
                    self._buf = b""
                return
            line, self._buf = self._buf[:cr], self._buf[cr + 1:].lstrip(b"\n")
            self._command(line.decode("ascii", "replace").strip())

    def _command(self, cmd: str) -> None:
        if not cmd:
            return
        if self.echo:
            self.emit(cmd.encode() + b"\r", frame=False)
        up = cmd.upper()
        now = time.monotonic()
        if not up.startswith("AT"):
            self._line("ERROR")
            return
        body = up[2:]
        if body in ("", "&K0", "+CMEE=1", "+CLIP=1", "+CNMI=2,1,0,0,0", "+CNMI=2,1"):
            self._line("OK")
        elif body == "E0":
            self.echo = False
            self._line("OK")
        elif body == "E1":
            self.echo = True
            self._line("OK")
        elif body == "+CSQ":
            self._line(f"+CSQ: {self.rssi(now)},99")
            self._line("OK")
        elif body.startswith("+CREG="):
            self.creg_urc = int(body[6:] or 0)
            self._line("OK")
        elif body == "+CREG?":
            self._line(f"+CREG: {self.creg_urc},{1 if self.registered(now) else 2}")
            self._line("OK")
        elif body.startswith("+CMGF="):
            self.cmgf = int(body[6:] or 1)
            self._line("OK")
        elif body.startswith("+CSCS="):
            self.cscs = cmd[8:].strip('"').upper()
            self._line("OK")
        elif body.startswith("+CSMP="):
            self._line("OK")
        elif body.startswith("+CMGS="):
            self._pending_cmgs = cmd[8:].strip('"')
            self.emit(b"\r\n> ", frame=False)
        elif body.startswith("+CMGR="):
            self._read(int(body[6:] or 0))
        elif body.startswith("+CMGD="):
            self.inbox.pop(int(body[6:].split(",")[0] or 0), None)
            self._line("OK")
        elif body.startswith("+CMGL"):
            for idx in sorted(self.inbox):
                self._line(f'+CMGL: {idx},"REC UNREAD","{self.inbox[idx]["sender"]}",,""')
                self._line(self.inbox[idx]["text"])
            self._line("OK")
        elif body == "+CLCC":
            if self.call is not None:
                self._line(f'+CLCC: 1,1,{self.call[1]},0,0,"{self.call[0]}",145')
            self._line("OK")
        elif body == "A":
            if self.call is None:
                self._line("NO CARRIER")
            else:
                self.call = (self.call[0], 0)
                self._line("OK")
        elif body in ("H", "+CHUP"):
            ended = self.call is not None
            self.call = None
            self._line("OK")
            if ended:
                self._line("NO CARRIER")
        else:
            self._line("+CME ERROR: 4")

    def _submit(self, arg: str, body: str) -> None:
        now = time.monotonic()
        if self.fail_next > 0 or not self.registered(now):
            self.fail_next = max(0, self.fail_next - 1)
            self._line("+CMS ERROR: 332")
            return
        if self.cmgf == 0:
            number, text, ref, total, seq = decode_submit(body)
            if total > 1:
                parts = self._parts.setdefault((number, ref), {})
                parts[seq] = text
                if len(parts) == total:
                    del self._parts[(number, ref)]
                    self._deliver_out(number, "".join(parts[i] for i in sorted(parts)), total)
            else:
                self._deliver_out(number, text, 1)
        else:
            if self.cscs == "UCS2":
                number = bytes.fromhex(arg).decode("utf-16-be")
                text = bytes.fromhex(body).decode("utf-16-be")
            else:
                number, text = arg, body
            self._deliver_out(number, text, 1)
        self._line(f"+CMGS: {len(self.sent) % 256}")
        self._line("OK")

    def _deliver_out(self, number: str, text: str, parts: int) -> None:
        self.sent.append({"number": number, "text": text, "parts": parts, "at": time.time()})
        if number == self.own_number:
            self.receive(self.own_number, text)

    def receive(self, sender: str, text: str) -> None:
        """An SMS arrives: stored (one slot per part, as a phone does) and announced with +CMTI."""
        g = time.gmtime()
        stamp = (g.tm_year % 100, g.tm_mon, g.tm_mday, g.tm_hour, g.tm_min, g.tm_sec)
        coding, parts = split_text(text)
        for pdu, part in zip(deliver_pdus(sender, text, stamp, ref=self._next_idx & 0xFF), parts):
            idx = self._next_idx
            self._next_idx += 1
            self.inbox[idx] = {"sender": sender, "text": part, "pdu": pdu,
                               "coding": coding, "stamp": time.strftime("%y/%m/%d,%H:%M:%S+32", g)}
            self._line(f'+CMTI: "SM",{idx}')

    def _read(self, idx: int) -> None:
        msg = self.inbox.get(idx)
        if msg is None:
            self._line("+CMS ERROR: 321")
            return
        if self.cmgf == 0:
            self._line(f"+CMGR: 0,,{len(msg['pdu']) // 2 - 1}")
            self._line(msg["pdu"])
        else:
            text = msg["text"]
            sender = msg["sender"]
            if self.cscs == "UCS2" or msg["coding"] == "ucs2":
                text = text.encode("utf-16-be").hex().upper()
            self._line(f'+CMGR: "REC UNREAD","{sender}",,"{msg["stamp"]}"')
            self._line(text)
        self._line("OK")

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "sms_sent": len(self.sent), "inbox": len(self.inbox)}

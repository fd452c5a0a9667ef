"""Tiantong-1 satellite terminals over 3GPP AT commands (27.007/27.005): framer, parser, encoder."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from fieldhub.core.errors import ValidationError
from fieldhub.core.records import Priority, Record

from .base import Driver, Frame, ParseContext
from .sentence import read_text_capture
from .sms_pdu import decode_deliver

SOURCE = "serial:tiantong"
MAX_LINE = 1024
CTRL_Z = b"\x1a"
REG_STATES = {0: "not_searching", 1: "home", 2: "searching", 3: "denied", 4: "unknown", 5: "roaming"}
FINAL = (b"OK", b"ERROR", b"NO CARRIER", b"BUSY", b"NO ANSWER", b"NO DIALTONE")
CALL_STATES = {0: "active", 1: "held", 2: "dialing", 3: "alerting", 4: "incoming", 5: "waiting"}


class AtFramer:
    """Lines ending CR/LF are frames; the ``>`` SMS prompt (no line end) is its own frame.

    Lines with control bytes (line noise) come back as bad frames; over-long lines are cut.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._buf = b""
        self.max_line = max_line
        self.garbage_bytes = 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf + data
        out: list[Frame] = []
        start, n = 0, len(buf)
        while start < n:
            c = buf[start]
            if c in (0x0D, 0x0A):
                start += 1
                continue
            if c == 0x3E and (n - start == 1 or buf[start + 1] == 0x20) and \
                    buf.find(b"\n", start) < 0:  # the "> " prompt waits for SMS text
                out.append(Frame(b">"))
                start += 2 if n - start > 1 else 1
                continue
            m = _EOL.search(buf, start)
            if m is None:
                if n - start > self.max_line:
                    out.append(Frame(buf[start:start + 80], ok=False, error=f"line longer than {self.max_line}"))
                    self.garbage_bytes += n - start
                    start = n
                break
            line = buf[start:m.start()]
            start = m.end()
            if len(line) > self.max_line:
                out.append(Frame(line[:80], ok=False, error=f"line longer than {self.max_line}"))
            elif _NOISE.search(line):
                self.garbage_bytes += len(line)
                out.append(Frame(line[:80], ok=False, error="line noise"))
            else:
                out.append(Frame(line))
        self._buf = buf[start:]
        return out

    def flush(self) -> list[Frame]:
        """End of input: a last line without its line end is still a line."""
        rest, self._buf = self._buf, b""
        return self.feed(rest + b"\r\n") if rest.strip() else []


_EOL = re.compile(rb"\r\n|\r|\n")
_NOISE = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\xff]")
_CSQ = re.compile(rb"^\+CSQ:\s*(\d+)\s*,\s*(\d+)")
_CREG = re.compile(rb"^\+C(?:E)?REG:\s*(\d+)(?:\s*,\s*(\d+))?"
                   rb"(?:\s*,\s*\"?([0-9A-Fa-f]*)\"?\s*,\s*\"?([0-9A-Fa-f]*)\"?)?")
_CMTI = re.compile(rb'^\+CMTI:\s*"(\w+)"\s*,\s*(\d+)')
_CMGR_TEXT = re.compile(rb'^\+CMGR:\s*"([^"]*)"\s*,\s*"([^"]*)"\s*,\s*"?[^"]*"?\s*,\s*"([^"]*)"')
_CMGR_PDU = re.compile(rb"^\+CMGR:\s*(\d+)\s*,[^,]*,\s*(\d+)")
_CLIP = re.compile(rb'^\+CLIP:\s*"([^"]*)"')
_CLCC = re.compile(rb'^\+CLCC:\s*(\d+)\s*,\s*(\d)\s*,\s*(\d)\s*,\s*(\d)\s*,\s*(\d)(?:\s*,\s*"([^"]*)")?')
_CMGS = re.compile(rb"^\+CMGS:\s*(\d+)")


def rssi_dbm(rssi: int) -> int | None:
    """27.007 CSQ: 0 = -113 dBm ... 31 = -51 dBm or better; 99 = unknown."""
    return None if rssi == 99 else -113 + 2 * min(rssi, 31)


def decode_ucs2_hex(text: str) -> str:
    """Text that a terminal in UCS2 character set prints as hex; plain text stays as it is."""
    t = text.strip()
    if len(t) >= 4 and len(t) % 4 == 0 and re.fullmatch(r"[0-9A-Fa-f]+", t):
        try:
            return bytes.fromhex(t).decode("utf-16-be")
        except UnicodeDecodeError:
            return text
    return text


class TiantongParser:
    """Pure parser over AT response lines; keeps the pending ``+CMGR`` header and long-SMS parts."""

    def __init__(self, profile: Mapping[str, Any] | None = None) -> None:
        self.profile = dict(profile or {})
        self._pending: tuple[str, ...] | None = None
        self._parts: dict[tuple[str, int], dict[int, Any]] = {}
        self._n = 0
        self.max_parts_pending = 64

    def _rec(self, kind: str, ctx: ParseContext, fields: dict[str, Any], key: object,
             priority: Priority = Priority.TELEMETRY, ts: int | None = None) -> Record:
        return Record.make(kind, ctx.device_id, ts or ctx.now_ns, fields, tags=ctx.tags, priority=priority,
                           source=ctx.source or SOURCE, key=key)

    def parse(self, frame: Frame, ctx: ParseContext) -> list[Record]:
        line = frame.raw.strip()
        self._n += 1
        seq = f"{ctx.now_ns}:{self._n}"
        if self._pending is not None and not line.startswith(b"+") and line not in FINAL:
            pending, self._pending = self._pending, None
            return self._sms_body(pending, line, ctx)
        if line == b"NO CARRIER":
            self._pending = None
            return [self._rec("sat_call", ctx, {"state": "ended"}, key=f"END:{seq}", priority=Priority.COMMAND)]
        if line in FINAL or line in (b">",):
            self._pending = None
            return []
        m = _CSQ.match(line)
        if m:
            rssi, ber = int(m.group(1)), int(m.group(2))
            fields: dict[str, Any] = {"rssi": rssi, "ber": ber, "known": rssi != 99}
            dbm = rssi_dbm(rssi)
            if dbm is not None:
                fields["dbm"] = dbm
            return [self._rec("sat_signal", ctx, fields, key=f"CSQ:{seq}")]
        m = _CREG.match(line)
        if m:
            # "+CREG: n,stat" answers AT+CREG?; "+CREG: stat" is the unsolicited form
            stat = int(m.group(2)) if m.group(2) is not None else int(m.group(1))
            fields = {"stat": stat, "state": REG_STATES.get(stat, str(stat)), "registered": stat in (1, 5)}
            if m.group(3):
                fields["lac"] = m.group(3).decode()
            if m.group(4):
                fields["cell"] = m.group(4).decode()
            prio = Priority.TELEMETRY if stat in (1, 5) else Priority.ALARM
            return [self._rec("sat_registration", ctx, fields, key=f"CREG:{seq}", priority=prio)]
        m = _CMTI.match(line)
        if m:
            return [self._rec("sms_notice", ctx, {"storage": m.group(1).decode(), "index": int(m.group(2))},
                              key=f"CMTI:{seq}", priority=Priority.BULK)]
        m = _CMGR_TEXT.match(line)
        if m:
            self._pending = ("text", m.group(1).decode(errors="replace"),
                             decode_ucs2_hex(m.group(2).decode(errors="replace")), m.group(3).decode(errors="replace"))
            return []
        m = _CMGR_PDU.match(line)
        if m:
            self._pending = ("pdu",)
            return []
        m = _CMGS.match(line)
        if m:
            return [self._rec("sms_sent", ctx, {"mr": int(m.group(1))}, key=f"CMGS:{seq}", priority=Priority.BULK)]
        if line == b"RING":
            return [self._rec("sat_call", ctx, {"state": "ringing"}, key=f"RING:{seq}", priority=Priority.COMMAND)]
        m = _CLIP.match(line)
        if m:
            return [self._rec("sat_call", ctx, {"state": "incoming", "number": m.group(1).decode(errors="replace")},
                              key=f"CLIP:{seq}", priority=Priority.COMMAND)]
        m = _CLCC.match(line)
        if m:
            fields = {"state": CALL_STATES.get(int(m.group(3)), m.group(3).decode()), "call_id": int(m.group(1)),
                      "direction": "incoming" if m.group(2) == b"1" else "outgoing"}
            if m.group(6):
                fields["number"] = m.group(6).decode(errors="replace")
            return [self._rec("sat_call", ctx, fields, key=f"CLCC:{seq}", priority=Priority.COMMAND)]
        return []  # echoes, OK, vendor lines: nothing to record

    def _sms_body(self, pending: tuple[str, ...], line: bytes, ctx: ParseContext) -> list[Record]:
        if pending[0] == "text":
            _, status, sender, stamp = pending
            text = decode_ucs2_hex(line.decode("utf-8", "replace"))
            return [self._sms(ctx, sender, text, stamp, 1, ctx.now_ns)]
        d = decode_deliver(line.decode("ascii", "replace"))
        if d.total <= 1:
            return [self._sms(ctx, d.sender, d.text, "", 1, d.ts_ns)]
        key = (d.sender, d.ref)
        parts = self._parts.setdefault(key, {})
        parts[d.seq] = d
        if len(self._parts) > self.max_parts_pending:  # bounded: drop the oldest incomplete message
            self._parts.pop(next(iter(self._parts)))
        if len(parts) < d.total:
            return []
        del self._parts[key]
        text = "".join(parts[i].text for i in sorted(parts))
        return [self._sms(ctx, d.sender, text, "", d.total, parts[1].ts_ns if 1 in parts else d.ts_ns)]

    def _sms(self, ctx: ParseContext, sender: str, text: str, stamp: str, parts: int, ts: int) -> Record:
        digest = hashlib.blake2b(text.encode(), digest_size=6).hexdigest()
        return self._rec("sms", ctx, {"sender": sender, "text": text, "parts": parts, "sent": stamp or "-"},
                         key=f"SMS:{sender}:{ts}:{digest}", priority=Priority.COMMAND, ts=ts)


def encode(command: Mapping[str, Any]) -> bytes:
    """An AT command line: {"cmd": "csq"} | creg | cmgr (index) | cmgd (index) | {"at": "AT+CGMI"}."""
    cmd = str(command.get("cmd", "")).lower()
    fixed = {"csq": b"AT+CSQ", "creg": b"AT+CREG?", "clcc": b"AT+CLCC", "cmgf_text": b"AT+CMGF=1",
             "cmgf_pdu": b"AT+CMGF=0", "ate0": b"ATE0", "at": b"AT", "hangup": b"ATH"}
    if cmd in fixed:
        return fixed[cmd] + b"\r"
    if cmd in ("cmgr", "cmgd"):
        return b"AT+%s=%d\r" % (cmd.upper().encode(), int(command["index"]))
    if "at" in command:
        line = str(command["at"])
        if not line.upper().startswith("AT") or any(c in line for c in "\r\n\x1a"):
            raise ValidationError(f"{line!r} is not a single AT command")
        return line.encode("ascii") + b"\r"
    raise ValidationError(f"unknown AT command {cmd!r}; one of {', '.join(sorted(fixed))}, cmgr, cmgd")


def read_capture(path: Any):
    return read_text_capture(path)


DRIVER = Driver(name="tiantong", summary="Tiantong-1 satellite terminals (AT commands, SMS text/UCS2/PDU)",
                framer=AtFramer, parser=TiantongParser, read_capture=read_capture,
                simulator="simulators.tiantong:TiantongSim", encoder=encode)

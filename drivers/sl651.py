"""SL 651-2014 (水文监测数据通信规约) hydrological telemetry: framer, parser, confirm encoder.

Facts and their sources are in the workspace's ``shared/SL651.md``. Both encodings (HEX/BCD
from ``7E7E``, ASCII from ``SOH``), uplink and downlink header layouts, CRC-16/MODBUS sent
high byte first. The framer resynchronises on length + CRC, never on ``7E7E`` alone
(``0x7E`` occurs inside frames: serials ``7E08``, ``027E``...).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from fieldhub.core.errors import ProtocolError, ValidationError
from fieldhub.core.records import Priority, Record

from .base import Driver, Frame, ParseContext, read_raw_capture

SOURCE = "sl651"
SOH, STX, SYN, ETX, ETB = 0x01, 0x02, 0x16, 0x03, 0x17
ENQ, EOT, ACK, NAK, ESC = 0x05, 0x04, 0x06, 0x15, 0x1B
HEX_START = b"\x7e\x7e"
UP_ENDS = frozenset((ETX, ETB, ENQ))          # ENQ on an uplink: seen in the wild, tolerated
DOWN_ENDS = frozenset((ENQ, ACK, EOT, ESC, NAK))
END_NAMES = {ETX: "ETX", ETB: "ETB", ENQ: "ENQ", EOT: "EOT", ACK: "ACK", NAK: "NAK", ESC: "ESC"}
#: HEX: 13 header bytes + start char + body + end char + 2 CRC bytes; body at most 4095
HEX_OVERHEAD, ASCII_OVERHEAD, MAX_BODY = 17, 29, 0xFFF
MAX_FRAME = MAX_BODY + ASCII_OVERHEAD

#: function codes (Appendix B): code -> (name, record priority or None when it carries no data)
FUNCTIONS: dict[int, tuple[str, Priority | None]] = {
    0x2F: ("keepalive", None), 0x30: ("test", Priority.DRILL), 0x31: ("interval", Priority.TELEMETRY),
    0x32: ("timed", Priority.TELEMETRY), 0x33: ("added", Priority.ALARM), 0x34: ("hourly", Priority.TELEMETRY),
    0x35: ("manual", Priority.TELEMETRY), 0x36: ("picture", Priority.BULK),
    0x37: ("realtime_reply", Priority.TELEMETRY), 0x38: ("period_reply", Priority.TELEMETRY),
    0x39: ("manual_reply", Priority.TELEMETRY), 0x3A: ("elements_reply", Priority.TELEMETRY),
}
#: reports the center confirms in M2/M3 (a keep-alive and query replies get none)
CONFIRMED = frozenset((0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36))
#: station types (Appendix A)
STATION_TYPES = {0x50: "P", 0x48: "H", 0x4B: "K", 0x5A: "Z", 0x44: "D", 0x54: "T", 0x4D: "M",
                 0x47: "G", 0x51: "Q", 0x49: "I", 0x4F: "O"}

#: The one element table (Table C.1): guide byte -> (SL651 identifier, unit). A record field is
#: ``<identifier>_<unit>`` (``PJ_mm``, ``Z_m``, ``VT_V``); unlisted guides become ``E<guide hex>``.
ELEMENTS: dict[int, tuple[str, str]] = {
    0x06: ("ED", "mm"), 0x07: ("EJ", "mm"), 0x08: ("FL", "hPa"), 0x09: ("GH", "m"), 0x0D: ("GTP", "C"),
    0x0E: ("H", "m"), 0x0F: ("HW", "m"),
    0x10: ("M10", "pct"), 0x11: ("M20", "pct"), 0x12: ("M30", "pct"), 0x13: ("M40", "pct"),
    0x14: ("M50", "pct"), 0x15: ("M60", "pct"), 0x16: ("M80", "pct"), 0x17: ("M100", "pct"),
    0x18: ("MST", "pct"), 0x1A: ("P1", "mm"), 0x1B: ("P2", "mm"), 0x1C: ("P3", "mm"), 0x1D: ("P6", "mm"),
    0x1E: ("P12", "mm"), 0x1F: ("PD", "mm"), 0x20: ("PJ", "mm"), 0x21: ("PN01", "mm"), 0x22: ("PN05", "mm"),
    0x23: ("PN10", "mm"), 0x24: ("PN30", "mm"), 0x25: ("PR", "mm"), 0x26: ("PT", "mm"), 0x27: ("Q", "m3s"),
    0x30: ("QA", "m3s"), 0x37: ("VJ", "ms"), 0x38: ("VT", "V"), 0x39: ("Z", "m"), 0x3A: ("ZB", "m"),
    0x3B: ("ZU", "m"),
    **{0x3C + i: (f"Z{i + 1}", "m") for i in range(8)},
}
ELEMENT_BY_CODE = {code: (guide, unit) for guide, (code, unit) in ELEMENTS.items()}
#: fixed-length series: guide -> (identifier, unit, value bytes, scale, invalid marker), 12 values each
SERIES: dict[int, tuple[str, str, int, float]] = {
    0xF4: ("DRP", "mm", 1, 0.1),
    **{0xF5 + i: (f"DRZ{i + 1}", "m", 2, 0.01) for i in range(8)},
}
TIME_STEP, STATUS = 0x04, 0x45


def crc16(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF); SL651 sends it high byte first."""
    crc = 0xFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def _table() -> list[int]:
    out = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xA001 if c & 1 else c >> 1
        out.append(c)
    return out


_TABLE = _table()


# --------------------------------------------------------------------------------------------------
# framing

def _hex_len(buf: bytearray, i: int) -> int:
    """Total length of a HEX frame starting at ``i`` if its header is plausible, else -1 (needs 14 bytes)."""
    word = (buf[i + 11] << 8) | buf[i + 12]
    if word >> 12 not in (0, 8) or buf[i + 13] not in (STX, SYN):
        return -1
    n = word & 0xFFF
    return n + HEX_OVERHEAD if n else -1


def _ascii_len(buf: bytearray, i: int) -> int:
    """Total length of an ASCII frame starting at ``i`` if plausible, else -1 (needs 24 bytes)."""
    head = bytes(buf[i + 1:i + 23])
    if buf[i + 23] not in (STX, SYN) or not all(c in b"0123456789ABCDEFabcdef" for c in head):
        return -1
    word = int(head[18:22], 16)
    if word >> 12 not in (0, 8):
        return -1
    n = word & 0xFFF
    return n + ASCII_OVERHEAD if n else -1


def _check(frame: bytes, ascii_mode: bool) -> str:
    """'' when end char and CRC are right, else why not."""
    if ascii_mode:
        end = frame[-5]
        try:
            got = int(frame[-4:].decode("ascii"), 16)
        except ValueError:
            return "bad CRC digits"
        want = crc16(frame[:-4])
    else:
        end = frame[-3]
        got = (frame[-2] << 8) | frame[-1]
        want = crc16(frame[:-2])
    if end not in UP_ENDS and end not in DOWN_ENDS:
        return f"bad end char {end:02X}"
    return "" if got == want else "bad CRC"


class Sl651Framer:
    """HEX (``7E7E``) and ASCII (``SOH``) frames, found by start + plausible header + length + CRC.

    A candidate whose end char or CRC is wrong is reported once (``ok=False``) and the search goes on
    one byte later, so a real frame behind a stray ``7E7E`` is still found. A candidate still waiting
    for bytes is abandoned as soon as a complete, CRC-valid frame starts after it. Memory: at most
    one maximal frame (``MAX_FRAME``) plus one read is held.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.garbage_bytes = 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def _candidate(self, buf: bytearray, i: int) -> tuple[int, bool]:
        """(total length, ascii?) of a frame starting at i; 0 = need more bytes; -1 = no frame here."""
        n = len(buf)
        b = buf[i]
        if b == 0x7E:
            if n - i < 2:
                return 0, False
            if buf[i + 1] != 0x7E:
                return -1, False
            if n - i < 14:
                return 0, False
            return _hex_len(buf, i), False
        if b == SOH:
            if n - i < 24:
                return 0, True
            return _ascii_len(buf, i), True
        return -1, False

    def _valid_later(self, buf: bytearray, start: int) -> bool:
        """Whether a complete CRC-valid frame starts somewhere after ``start``."""
        j = start + 1
        n = len(buf)
        while j < n:
            total, asc = self._candidate(buf, j)
            if total > 0 and j + total <= n and not _check(bytes(buf[j:j + total]), asc):
                return True
            j += 1
        return False

    def flush(self) -> list[Frame]:
        """End of input: a frame still waiting for bytes will not be completed; what is buffered
        is one counted bad frame (a frame is complete only with its CRC, so nothing else is)."""
        rest, self._buf = bytes(self._buf), bytearray()
        if not rest:
            return []
        self.garbage_bytes += len(rest)
        if not rest.startswith((b"\x7e\x7e", b"\x01")):  # e.g. one 0x7E kept in case a second followed
            return []
        return [Frame(rest[:120], ok=False, error=f"input ended inside a frame ({len(rest)} bytes)")]

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf
        buf += data
        out: list[Frame] = []
        i, n = 0, len(buf)
        while i < n:
            total, asc = self._candidate(buf, i)
            if total < 0:
                self.garbage_bytes += 1
                i += 1
                continue
            if total == 0 or i + total > n:
                if self._valid_later(buf, i):
                    self.garbage_bytes += 1
                    i += 1
                    continue
                break
            raw = bytes(buf[i:i + total])
            why = _check(raw, asc)
            if why:
                out.append(Frame(raw, ok=False, error=why))
                i += 1
                continue
            out.append(Frame(raw))
            i += total
        del buf[:i]
        if len(buf) > MAX_FRAME:  # cannot happen with plausible headers; a hard bound all the same
            self.garbage_bytes += len(buf) - MAX_FRAME
            del buf[:len(buf) - MAX_FRAME]
        return out


# --------------------------------------------------------------------------------------------------
# header

@dataclass(frozen=True)
class Header:
    """The decoded frame header (the same for both encodings)."""

    encoding: str            # "hex" | "ascii"
    uplink: bool
    center: int
    station: str             # 10 hex digits, opaque (real stations use non-decimal nibbles)
    password: int
    fc: int
    start: int               # STX or SYN
    end: int
    body: bytes              # between the start char (and M3 packet field) and the end char
    total: int = 0           # M3 packets: total and sequence (0 when not M3)
    seq: int = 0
    #: an M3 set reassembled by ``assemble`` (body = every packet's body, in order)
    assembled: bool = False

    @property
    def function(self) -> str:
        name = FUNCTIONS.get(self.fc, (None,))[0]
        return name or f"fc_{self.fc:02X}"


def decode_header(raw: bytes) -> Header:
    """The header of one framed (CRC-checked) SL651 frame; ProtocolError if malformed."""
    try:
        if raw[:2] == HEX_START:
            if len(raw) < HEX_OVERHEAD + 1:
                raise ProtocolError("frame too short")
            word = (raw[11] << 8) | raw[12]
            up = word >> 12 == 0
            if up:
                center, addr = raw[2], raw[3:8]
            else:
                addr, center = raw[2:7], raw[7]
            start, body, end = raw[13], raw[14:-3], raw[-3]
            total = seq = 0
            if start == SYN:
                if len(body) < 3:
                    raise ProtocolError("M3 frame without its packet field")
                pk = int.from_bytes(body[:3], "big")
                total, seq, body = pk >> 12, pk & 0xFFF, body[3:]
            return Header("hex", up, center, addr.hex().upper(), (raw[8] << 8) | raw[9], raw[10],
                          start, end, bytes(body), total, seq)
        if raw[:1] == bytes((SOH,)):
            head = raw[1:23].decode("ascii")
            word = int(head[18:22], 16)
            up = word >> 12 == 0
            start, body, end = raw[23], raw[24:-5], raw[-5]
            total = seq = 0
            if start == SYN:
                pks = body[:6].decode("ascii")
                total, seq, body = int(pks[:3], 16), int(pks[3:], 16), body[6:]
            if up:
                center, station = int(head[0:2], 16), head[2:12]
            else:
                station, center = head[0:10], int(head[10:12], 16)
            return Header("ascii", up, center, station.upper(), int(head[12:16], 16), int(head[16:18], 16),
                          start, end, bytes(body), total, seq)
    except (ValueError, UnicodeDecodeError, IndexError) as exc:
        raise ProtocolError(f"bad SL651 header: {exc}") from None
    raise ProtocolError("not an SL651 frame (no 7E7E or SOH start)")


# --------------------------------------------------------------------------------------------------
# body values

def bcd_digits(b: bytes) -> str:
    return b.hex().upper()


def bcd_value(data: bytes, decimals: int) -> float | int | None:
    """A BCD value with an ``FF`` negative sign; None for a no-data filler (all F or all A);
    ProtocolError for other non-decimal digits."""
    digits = data.hex()
    if digits.isdigit():                         # the common case: plain BCD
        v = int(digits)
        return round(v / 10 ** decimals, decimals) if decimals else v
    digits = digits.upper()
    if not digits or set(digits) <= {"F"} or set(digits) <= {"A"}:
        return None
    neg = False
    if digits.startswith("FF") and len(digits) > 2:
        neg, digits = True, digits[2:]
    if not digits.isdigit():
        raise ProtocolError(f"value {data.hex().upper()} is not BCD")
    v = int(digits)
    if neg:
        v = -v
    return round(v / 10 ** decimals, decimals) if decimals else v


@functools.lru_cache(maxsize=4096)   # one observation time is shared by a whole fleet's reports
def bcd_time(data: bytes, utc_offset_h: float) -> int:
    """YYMMDDHHmm[SS] in BCD (station local time) -> ns UTC; ProtocolError when not a time."""
    d = data.hex()
    if not d.isdigit():
        raise ProtocolError(f"time {d.upper()} is not BCD")
    try:
        t = datetime(2000 + int(d[0:2]), int(d[2:4]), int(d[4:6]), int(d[6:8]), int(d[8:10]),
                     int(d[10:12]) if len(d) >= 12 else 0, tzinfo=timezone(timedelta(hours=utc_offset_h)))
    except ValueError:
        raise ProtocolError(f"time {d} is not a date") from None
    return int(t.timestamp()) * 1_000_000_000


@functools.lru_cache(maxsize=1024)
def field_name(guide: int, sub: int | None = None) -> tuple[str, str]:
    """(record field name, unit) for an element guide byte (``FFxx``: sub byte)."""
    if guide == 0xFF:
        return f"FF{(sub or 0):02X}", ""
    code, unit = ELEMENTS.get(guide, (f"E{guide:02X}", ""))
    return (f"{code}_{unit}" if unit else code), unit


@dataclass
class Group:
    """The elements observed at one time (one ``F0F0`` group) for one station."""

    station: str
    station_type: str
    obs_ns: int
    fields: dict[str, Any] = field(default_factory=dict)
    no_data: int = 0
    #: uniform-interval values: (offset ns, field, value)
    series: list[tuple[int, str, Any]] = field(default_factory=list)


@dataclass
class Report:
    """A decoded uplink body."""

    serial: int
    send_ns: int
    groups: list[Group] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def _step_ns(dhm: bytes) -> int:
    d = dhm.hex()
    if not d.isdigit():
        raise ProtocolError(f"time step {d.upper()} is not BCD")
    return ((int(d[0:2]) * 24 + int(d[2:4])) * 60 + int(d[4:6])) * 60_000_000_000


def parse_hex_body(body: bytes, fc: int, utc_offset_h: float = 8.0) -> Report:
    """An uplink HEX/BCD body: serial, send time, then F1F1/F0F0 groups of elements."""
    if len(body) < 8:
        raise ProtocolError(f"body of {len(body)} bytes: no serial and send time")
    rep = Report((body[0] << 8) | body[1], bcd_time(body[2:8], utc_offset_h))
    i, n = 8, len(body)
    station, stype = "", ""
    cur: Group | None = None
    step = 0
    while i < n:
        if i + 1 >= n:
            raise ProtocolError(f"dangling byte at body offset {i}")
        g, d = body[i], body[i + 1]
        if g == 0xF1 and d == 0xF1:
            if i + 8 > n:
                raise ProtocolError("truncated F1F1 address")
            station = body[i + 2:i + 7].hex().upper()
            stype = STATION_TYPES.get(body[i + 7], f"{body[i + 7]:02X}")
            cur, i = None, i + 8
            continue
        if g == 0xF0 and d == 0xF0:
            if i + 7 > n:
                raise ProtocolError("truncated F0F0 time")
            cur = Group(station, stype, bcd_time(body[i + 2:i + 7], utc_offset_h))
            rep.groups.append(cur)
            i += 7
            continue
        if g == 0xF2 and d == 0xF2:
            rep.extra["manual"] = body[i + 2:].decode("ascii", "replace").strip()
            break
        if g == 0xF3 and d == 0xF3:
            rep.extra["picture_bytes"] = n - i - 2
            rep.extra["picture"] = body[i + 2:]
            break
        if cur is None:
            # elements before any F0F0 (query replies, status reports): time = send time
            cur = Group(station, stype, rep.send_ns)
            rep.groups.append(cur)
        if g in SERIES:
            code, unit, width, scale = SERIES[g]
            end = i + 2 + 12 * width
            if end > n:
                raise ProtocolError(f"truncated {g:02X} series")
            for k in range(12):
                sv = int.from_bytes(body[i + 2 + k * width:i + 2 + (k + 1) * width], "big")
                if sv == (1 << (8 * width)) - 1:
                    cur.no_data += 1
                    continue
                cur.fields[f"{code}_{unit}_{k + 1:02d}"] = round(sv * scale, 2)
            i = end
            continue
        sub = None
        if g == 0xFF:
            if i + 2 >= n:
                raise ProtocolError("truncated FFxx identifier")
            sub, d = body[i + 1], body[i + 2]
            i += 1
        width, dec = d >> 3, d & 7
        start = i + 2
        if start + width > n:
            raise ProtocolError(f"element {g:02X}{d:02X} needs {width} bytes, {n - start} left")
        data = body[start:start + width]
        i = start + width
        if g == TIME_STEP and sub is None:
            step = _step_ns(data)
            cur.fields["step_s"] = step // 1_000_000_000
            continue
        name, _unit = field_name(g, sub)
        if g == 0xFF:
            cur.fields[name] = data.hex().upper()       # user-defined: kept raw
            continue
        if g == STATUS:
            cur.fields["status_bits"] = int.from_bytes(data, "big")
            continue
        if fc in (0x31, 0x38) and step:
            # uniform interval: n equal-width groups of this one element follow
            k = 0
            while True:
                v = bcd_value(data, dec)
                if v is None:
                    cur.no_data += 1
                else:
                    cur.series.append((k * step, name, v))
                k += 1
                if i + width > n or width == 0:
                    break
                data = body[i:i + width]
                i += width
            continue
        try:
            v = bcd_value(data, dec)
        except ProtocolError:
            cur.fields[name + "_raw"] = data.hex().upper()   # sentinel or vendor value: kept, not guessed
            continue
        if v is None:
            cur.no_data += 1
        else:
            cur.fields[name] = v
    return rep


def parse_ascii_body(body: bytes, fc: int, utc_offset_h: float = 8.0) -> Report:
    """An uplink ASCII body: 4 hex serial, 12-digit send time, then ``ID SP value SP`` tokens."""
    try:
        text = body.decode("ascii")
        serial = int(text[0:4], 16)
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("ASCII body without a serial") from None
    rep = Report(serial, bcd_time(bytes.fromhex(text[4:16]) if text[4:16].isdigit() else b"x", utc_offset_h))
    tokens = text[16:].split()
    station, stype = "", ""
    cur: Group | None = None
    step = 0
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "ST" and i + 2 < len(tokens) + 1:
            station = tokens[i + 1].upper() if i + 1 < len(tokens) else ""
            stype = tokens[i + 2] if i + 2 < len(tokens) else ""
            cur, i = None, i + 3
            continue
        if tok == "TT":
            if i + 1 >= len(tokens) or not tokens[i + 1].isdigit():
                raise ProtocolError("TT without a time")
            cur = Group(station, stype, bcd_time(bytes.fromhex(tokens[i + 1]), utc_offset_h))
            rep.groups.append(cur)
            i += 2
            continue
        if cur is None:
            cur = Group(station, stype, rep.send_ns)
            rep.groups.append(cur)
        if len(tok) == 5 and tok[:2] == "DR" and tok[2] in "DHN" and tok[3:].isdigit():
            step = int(tok[3:]) * {"D": 86400, "H": 3600, "N": 60}[tok[2]] * 1_000_000_000
            cur.fields["step_s"] = step // 1_000_000_000
            i += 1
            continue
        values = []
        j = i + 1
        while j < len(tokens) and (tokens[j] == "M" or _is_number(tokens[j])):
            values.append(tokens[j])
            j += 1
        guide, unit = ELEMENT_BY_CODE.get(tok, (-1, ""))
        name = f"{tok}_{unit}" if unit else tok
        if not values:
            raise ProtocolError(f"element {tok} without a value")
        if fc in (0x31, 0x38) and step:
            for k, v in enumerate(values):
                if v == "M":
                    cur.no_data += 1
                else:
                    cur.series.append((k * step, name, _num(v)))
        elif values[0] == "M":
            cur.no_data += 1
        else:
            cur.fields[name] = _num(values[0])
        i = j
    return rep


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _num(s: str) -> int | float:
    return float(s) if "." in s else int(s)


# --------------------------------------------------------------------------------------------------
# records

def report_key(hdr: Header) -> str:
    """What makes two frames the same report: station, function and everything after the send time.

    Serials wrap at 65535 and restart on a reboot, and a resend may be restamped, so neither the
    serial nor the send time identifies a report; its observations (times and values) do."""
    tail = hdr.body[8:] if hdr.encoding == "hex" else hdr.body[16:]
    return hashlib.blake2b(b"%s|%02X|%s" % (hdr.station.encode(), hdr.fc, tail), digest_size=10).hexdigest()


class Sl651Parser:
    """Pure parser: each observation group of a report becomes one ``hydro`` record (uniform-interval
    reports: one per slot); keep-alives none; downlinks an ``sl651_downlink`` record."""

    def __init__(self, profile: Mapping[str, Any] | None = None) -> None:
        self.profile = dict(profile or {})
        self.utc_offset_h = float(self.profile.get("utc_offset_hours", 8.0))

    def parse(self, frame: Frame, ctx: ParseContext) -> list[Record]:
        return self.records(decode_header(frame.raw), ctx)

    def records(self, hdr: Header, ctx: ParseContext) -> list[Record]:
        src = ctx.source or SOURCE
        base_tags = {**ctx.tags, "station": hdr.station, "fc": f"{hdr.fc:02X}", "report": hdr.function,
                     "encoding": hdr.encoding}
        if not hdr.uplink:
            serial = (hdr.body[0] << 8 | hdr.body[1]) if len(hdr.body) >= 2 else 0
            return [Record.make("sl651_downlink", ctx.device_id, ctx.now_ns,
                                {"serial": serial, "end": END_NAMES.get(hdr.end, f"{hdr.end:02X}"),
                                 "body_bytes": len(hdr.body)}, tags=base_tags, priority=Priority.COMMAND,
                                source=src, key=f"down:{ctx.now_ns}:{hdr.body.hex()}")]
        if hdr.fc == 0x2F:
            return []
        prio = FUNCTIONS.get(hdr.fc, ("", None))[1]
        if prio is None:
            prio = Priority.TELEMETRY
        if hdr.start == SYN and hdr.seq > 1 and not hdr.assembled:
            # an M3 continuation packet: raw bytes until the set is reassembled
            return [Record.make("sl651_packet", ctx.device_id, ctx.now_ns,
                                {"total": hdr.total, "seq": hdr.seq, "bytes": len(hdr.body),
                                 "data": hdr.body.hex().upper()}, tags=base_tags, priority=Priority.BULK,
                                source=src, key=f"pk:{report_key(hdr)}:{hdr.seq}")]
        if hdr.encoding == "hex":
            rep = parse_hex_body(hdr.body, hdr.fc, self.utc_offset_h)
        else:
            rep = parse_ascii_body(hdr.body, hdr.fc, self.utc_offset_h)
        key = report_key(hdr)
        out: list[Record] = []
        for gi, grp in enumerate(rep.groups):
            tags = {**base_tags, "station": grp.station or hdr.station}
            if grp.station_type:
                tags["station_type"] = grp.station_type
            for k, (off, name, v) in enumerate(grp.series):
                out.append(Record.make("hydro", ctx.device_id, grp.obs_ns + off, {name: v, "serial": rep.serial},
                                       tags=tags, priority=prio, source=src, key=f"{key}:{gi}:s{k}"))
            fields = dict(grp.fields)
            if set(fields) <= {"step_s"} and (grp.series or not grp.no_data):
                continue   # a group that only framed its series, or carried nothing
            fields["serial"] = rep.serial
            if grp.no_data:
                fields["no_data"] = grp.no_data
            out.append(Record.make("hydro", ctx.device_id, grp.obs_ns, fields, tags=tags, priority=prio,
                                   source=src, key=f"{key}:{gi}"))
        if "manual" in rep.extra or "picture_bytes" in rep.extra or not out:
            fields = {"serial": rep.serial, "send_ns": rep.send_ns}
            if "manual" in rep.extra:
                fields["manual"] = rep.extra["manual"]
            if "picture_bytes" in rep.extra:
                pic = rep.extra["picture"]
                fields.update(total=hdr.total, seq=hdr.seq, bytes=rep.extra["picture_bytes"], data=pic.hex().upper())
                if hdr.assembled:
                    fields.update(packets=hdr.total, format="jpeg" if pic[:2] == b"\xff\xd8" else "raw")
                    del fields["seq"]
            kind = "sl651_report"
            if "picture_bytes" in rep.extra:
                kind = "sl651_picture" if hdr.assembled else "sl651_packet"
            ts = rep.groups[-1].obs_ns if kind == "sl651_picture" and rep.groups else rep.send_ns
            out.append(Record.make(kind, ctx.device_id, ts, fields, tags=base_tags,
                                   priority=Priority.BULK if kind != "sl651_report" else prio,
                                   source=src, key=f"{key}:x"))
        return out


# --------------------------------------------------------------------------------------------------
# M3 multi-packet sets

def assemble(packets: Mapping[int, Header]) -> Header:
    """One header whose body is the set's packets in order (only packet 1 has the serial and
    send time); ProtocolError unless packets 1..total are all there and agree."""
    first = packets.get(1)
    if first is None or first.start != SYN or first.total < 1:
        raise ProtocolError("M3 set without its first packet")
    missing = [k for k in range(1, first.total + 1) if k not in packets]
    if missing:
        raise ProtocolError(f"M3 set misses packets {missing[:10]}")
    if any(p.station != first.station or p.fc != first.fc or p.total != first.total for p in packets.values()):
        raise ProtocolError("M3 packets of different sets")
    body = b"".join(packets[k].body for k in range(1, first.total + 1))
    return Header(first.encoding, True, first.center, first.station, first.password, first.fc, SYN,
                  packets[first.total].end, body, first.total, first.total, assembled=True)


def nak_for(first: Header | None, station: str, center: int, password: int, fc: int, total: int, seq: int,
            now: datetime | None = None) -> bytes:
    """The downlink NAK asking for M3 packet ``seq`` again: packet field (total, seq), the set's serial
    when its first packet arrived (else 0), end NAK (HEX encoding)."""
    serial = first.body[:2] if first is not None and len(first.body) >= 2 else b"\x00\x00"
    t = now or datetime.now(timezone(timedelta(hours=8)))
    return build_frame(center=center, station=station, password=password, fc=fc, body=serial + time_bcd(t),
                       end=NAK, uplink=False, packet=(total, seq))


# --------------------------------------------------------------------------------------------------
# Beidou short messages

#: station address -> (device id, tags) of its registry device, or None when unknown
StationLookup = Callable[[str], "tuple[str, dict[str, str]] | None"]


def beidou_payload(hex_payload: str) -> bytes | None:
    """The SL651 bytes inside a Beidou short message's payload (code/mixed mode: the frame's own
    bytes; Chinese/text mode: the frame written as hex text), or None when it holds no SL651 frame."""
    try:
        raw = bytes.fromhex(hex_payload)
    except ValueError:
        return None
    if raw[:4].upper() == b"7E7E":
        try:
            raw = bytes.fromhex(raw.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            return None
    return raw if raw[:2] == HEX_START or raw[:1] == bytes((SOH,)) else None


def beidou_records(msg: Record, lookup: StationLookup, parser: Sl651Parser | None = None
                   ) -> tuple[list[Record], list[tuple[str, bytes, dict[str, Any]]]]:
    """The records of the SL651 frames inside one ``bd_message`` record, decoded exactly as over TCP
    (the same record ids, so a report that arrives both ways is stored once), tagged
    ``channel=beidou`` and ``bd_sender``; and what to quarantine: (reason, bytes, meta) for a bad
    frame or an unknown station (with its decoded records). ([], []) for an ordinary message."""
    raw = beidou_payload(str(msg.fields.get("hex") or ""))
    if raw is None:
        return [], []
    parser = parser or Sl651Parser()
    sender = str(msg.fields.get("sender", ""))
    frames = Sl651Framer().feed(raw) or [Frame(raw, ok=False, error="incomplete frame")]
    out: list[Record] = []
    rejects: list[tuple[str, bytes, dict[str, Any]]] = []
    for frame in frames:
        station = ""
        try:
            if not frame.ok:
                raise ProtocolError(frame.error or "bad frame")
            hdr = decode_header(frame.raw)
            station = hdr.station
            if not hdr.uplink:
                raise ProtocolError("a downlink frame")
            dev = lookup(hdr.station)
            tags = {**(dev[1] if dev else {}), "channel": "beidou", "bd_sender": sender}
            ctx = ParseContext(dev[0] if dev else f"sl651-{hdr.station}", msg.ts, tags=tags, source=SOURCE)
            records = parser.records(hdr, ctx)
        except (ProtocolError, ValidationError) as exc:
            rejects.append((f"bad frame over Beidou: {exc}", frame.raw,
                            {"bd_sender": sender, "station": station, "channel": "beidou"}))
            continue
        if dev is None:
            rejects.append(("unknown station", frame.raw,
                            {"station": hdr.station, "bd_sender": sender, "fc": f"{hdr.fc:02X}",
                             "channel": "beidou", "records": [r.to_dict() for r in records][:50]}))
            continue
        out.extend(records)
    return out, rejects


# --------------------------------------------------------------------------------------------------
# encoding

def bcd(number: str) -> bytes:
    return bytes.fromhex(number)


def time_bcd(ts: datetime, seconds: bool = True) -> bytes:
    return bytes.fromhex(ts.strftime("%y%m%d%H%M%S" if seconds else "%y%m%d%H%M"))


def build_frame(*, center: int, station: str, password: int, fc: int, body: bytes, end: int,
                uplink: bool = True, packet: tuple[int, int] | None = None, ascii_mode: bool = False) -> bytes:
    """One complete frame (HEX or ASCII, uplink or downlink, M3 when ``packet`` = (total, seq))."""
    if len(station) != 10:
        raise ValidationError(f"station address {station!r} must be 10 hex digits / 测站地址须为10位")
    flag = 0 if uplink else 0x8000
    if ascii_mode:
        pka = f"{packet[0]:03X}{packet[1]:03X}".encode() if packet else b""
        n = len(body) + len(pka)
        aaddr = (f"{center:02X}{station}" if uplink else f"{station}{center:02X}").upper()
        head = b"\x01" + f"{aaddr}{password:04X}{fc:02X}{flag | n:04X}".encode()
        out = head + bytes((SYN if packet else STX,)) + pka + body + bytes((end,))
        return out + f"{crc16(out):04X}".encode()
    pk = ((packet[0] << 12) | packet[1]).to_bytes(3, "big") if packet else b""
    n = len(body) + len(pk)
    if not 0 < n <= MAX_BODY:
        raise ValidationError(f"body of {n} bytes: 1-{MAX_BODY}")
    st = bytes.fromhex(station)
    addr = bytes((center,)) + st if uplink else st + bytes((center,))
    out = HEX_START + addr + password.to_bytes(2, "big") + bytes((fc,)) + (flag | n).to_bytes(2, "big")
    out += bytes((SYN if packet else STX,)) + pk + body + bytes((end,))
    return out + crc16(out).to_bytes(2, "big")


def confirm_for(hdr: Header, *, end: str = "EOT", now: datetime | None = None) -> bytes:
    """The downlink confirm of an uplink report: same function code and serial, EOT or ESC (M3: the set)."""
    ends = {"EOT": EOT, "ESC": ESC, "ACK": ACK}
    if end.upper() not in ends:
        raise ValidationError(f"confirm end {end!r}: one of EOT, ESC, ACK")
    if hdr.encoding == "hex":
        serial = hdr.body[:2] if len(hdr.body) >= 2 else b"\x00\x00"
    else:
        serial = hdr.body[:4]
    t = now or datetime.now(timezone(timedelta(hours=8)))
    body = serial + (time_bcd(t) if hdr.encoding == "hex" else t.strftime("%y%m%d%H%M%S").encode())
    packet = (hdr.total, hdr.total) if hdr.start == SYN else None
    return build_frame(center=hdr.center, station=hdr.station, password=hdr.password, fc=hdr.fc, body=body,
                       end=ends[end.upper()], uplink=False, packet=packet, ascii_mode=hdr.encoding == "ascii")


def encode(command: Mapping[str, Any]) -> bytes:
    """{"cmd": "confirm", "frame": <uplink bytes>, "end": "EOT"|"ESC"} -> the confirm downlink;
    {"cmd": "query", "station": "0012345678", "center": 1, "password": 0, "serial": 1} -> a 37 real-time query."""
    cmd = str(command.get("cmd", "confirm"))
    if cmd == "confirm":
        raw = command.get("frame")
        if not isinstance(raw, (bytes, bytearray)):
            raise ValidationError("confirm needs the uplink frame's bytes")
        return confirm_for(decode_header(bytes(raw)), end=str(command.get("end", "EOT")))
    if cmd == "query":
        t = datetime.now(timezone(timedelta(hours=8)))
        body = int(command.get("serial", 1)).to_bytes(2, "big") + time_bcd(t)
        return build_frame(center=int(command.get("center", 1)), station=str(command["station"]),
                           password=int(command.get("password", 0)), fc=0x37, body=body, end=ENQ, uplink=False)
    raise ValidationError(f"unknown SL651 command {cmd!r}; one of confirm, query")


def read_capture(path: Path) -> Iterator[bytes]:
    """A text file of hex frames (one a line, ``#`` comments) or a raw binary capture."""
    with open(path, "rb") as f:
        head = f.read(4096)
    text = head.replace(b"\r", b"").replace(b"\n", b"").replace(b" ", b"").replace(b"\t", b"")
    is_text = bool(head) and (head.lstrip().startswith(b"#") or all(c in b"0123456789abcdefABCDEF" for c in text))
    if not is_text:
        yield from read_raw_capture(path)
        return
    with open(path, "rb") as f:
        for line in f:
            line = line.split(b"#", 1)[0].strip().replace(b" ", b"")
            if not line:
                continue
            try:
                yield bytes.fromhex(line.decode("ascii"))
            except ValueError:
                yield line   # not hex: fed as bytes, so the framer counts it as garbage


DRIVER = Driver(name="sl651", summary="SL 651-2014 hydrological telemetry stations (HEX/BCD and ASCII)",
                framer=Sl651Framer, parser=Sl651Parser, read_capture=read_capture,
                simulator="", encoder=encode)

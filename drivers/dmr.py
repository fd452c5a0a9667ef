"""DMR radio positions and texts: Hytera HDAP (LP location, TMP text) and Motorola LRRP documents.

The stream framer finds HDAP messages (``hdr op op len len payload sum 03``, checksum verified)
and LRRP documents (``doc-id length tokens``, validated by decoding every token). LRRP comes
from radios as UDP datagrams on port 4001; a gateway (or the simulator) may forward them on a
serial line or socket unchanged, which is what this driver reads.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from fieldhub.core.errors import ProtocolError, ValidationError
from fieldhub.core.records import Priority, Record

from .base import Driver, Frame, ParseContext, read_hex_capture

SOURCE = "serial:dmr"
HDAP_LP, HDAP_TMP = 0x08, 0x09
HDAP_HEADERS = {0x02: "rcp", 0x08: "lp", 0x09: "tmp", 0x11: "rrs", 0x12: "tp", 0x13: "dtp", 0x14: "dds"}
HDAP_END = 0x03
LP_OPS = {0xA001: "standard_request", 0xA002: "standard_report", 0xB001: "emergency_request",
          0xB002: "emergency_report", 0xC001: "triggered_request", 0xC002: "triggered_answer",
          0xC003: "triggered_report", 0xD001: "condition_request", 0xD003: "condition_report"}
#: TMP private text message (opcode *unverified*; a profile may override ``text_opcode``)
TMP_TEXT = 0x00A1
LRRP_DOCS = {0x04: "immediate_request", 0x05: "immediate_request", 0x06: "immediate_report",
             0x07: "immediate_report", 0x08: "triggered_request", 0x09: "triggered_request",
             0x0A: "triggered_answer", 0x0B: "triggered_answer", 0x0C: "triggered_report",
             0x0D: "triggered_report", 0x0E: "triggered_stop_request", 0x0F: "triggered_stop_request",
             0x10: "triggered_stop_answer", 0x11: "triggered_stop_answer", 0x12: "unsolicited_report",
             0x13: "unsolicited_report", 0x14: "unsolicited_register", 0x15: "unsolicited_register"}
MAX_FRAME = 1024


def hdap_checksum(body: bytes) -> int:
    """HDAP: (~sum(opcode, length, payload) + 0x33) & 0xFF."""
    return (~sum(body) + 0x33) & 0xFF


def hdap_message(header: int, opcode: int, payload: bytes) -> bytes:
    body = struct.pack(">HH", opcode, len(payload)) + payload
    return bytes((header,)) + body + bytes((hdap_checksum(body), HDAP_END))


# ----------------------------------------------------------------------------- LRRP tokens
def _uintvar(b: bytes, i: int) -> tuple[int, int]:
    v = 0
    while True:
        if i >= len(b):
            raise ProtocolError("truncated uintvar")
        c = b[i]
        i += 1
        v = (v << 7) | (c & 0x7F)
        if not c & 0x80:
            return v, i


def _ufloatvar(b: bytes, i: int) -> tuple[float, int]:
    whole, i = _uintvar(b, i)
    if i >= len(b):
        raise ProtocolError("truncated ufloatvar")
    return whole + b[i] / 128.0, i + 1


def _lat(v: int) -> float:
    sign = -1 if v & 0x80000000 else 1
    return round(sign * (v & 0x7FFFFFFF) * 90.0 / 2**31, 7)


def _lon(v: int) -> float:
    return round((v - 2**32 if v & 0x80000000 else v) * 360.0 / 2**32, 7)


def _time(b: bytes) -> str:
    v = int.from_bytes(b, "big")
    year, month, day = v >> 26, (v >> 22) & 0xF, (v >> 17) & 0x1F
    hour, minute, sec = (v >> 12) & 0x1F, (v >> 6) & 0x3F, v & 0x3F
    if len(b) != 5 or not (1990 <= year <= 2100 and 1 <= month <= 12 and 1 <= day <= 31
                           and hour < 24 and minute < 60 and sec < 60):
        raise ProtocolError("LRRP info-time is not a date")
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{sec:02d}Z"


def lrrp_plausible(doc: bytes) -> bool:
    """More evidence than a length byte: random bytes decode as LRRP tokens often (138 of 300
    random datagrams did), so a document counts only if its tokens make sense for its type."""
    try:
        f, tail = _decode_lrrp(doc)
    except (ProtocolError, IndexError, struct.error):
        return False
    if tail > 16:
        return False
    if "request_id" not in f or len(doc) < 6 or f.get("result", 0) > 0x3FF:
        return False  # a bare one-byte request id is 1 chance in ~500,000 of noise; result codes are small
    doc_type = f["document"]
    if "unknown_tokens" in f and "info_time" not in f:
        return False  # vendor tokens (e.g. 0x6B) only after a valid time: real radios, not noise
    if doc_type.endswith("report"):
        return "lat" in f or "result" in f
    if doc_type.endswith("answer"):
        return "result" in f
    if doc_type == "triggered_request" and "trigger" not in f:
        return False
    return "unknown_tokens" not in f and "result" not in f  # requests: request id, maybe a trigger


def decode_lrrp(doc: bytes) -> dict[str, Any]:
    """Decode an LRRP document (report or request tokens) into flat fields; raises ProtocolError."""
    return _decode_lrrp(doc)[0]


def _decode_lrrp(doc: bytes) -> tuple[dict[str, Any], int]:
    """The fields, and how many bytes after a result code were left undecoded (vendor text)."""
    if len(doc) < 2 or doc[0] not in LRRP_DOCS or doc[1] != len(doc) - 2:
        raise ProtocolError("not an LRRP document")
    if len(doc) < 4 or doc[2] not in (0x22, 0x23, 0x24):
        raise ProtocolError("LRRP document without a request-id")
    doc_type = LRRP_DOCS[doc[0]]
    out: dict[str, Any] = {"document": doc_type}
    b, i, n = doc[2:], 0, len(doc) - 2
    is_request = doc_type.endswith("request")
    while i < n:
        t = b[i]
        i += 1
        if t == 0x22:  # request-id, length-prefixed
            ln = b[i]
            if not 1 <= ln <= 16 or i + 1 + ln > n:
                raise ProtocolError("LRRP request-id length out of range")
            out["request_id"] = b[i + 1:i + 1 + ln].hex().upper()
            i += 1 + ln
        elif t == 0x23 or t == 0x24:  # request-id, one byte
            out["request_id"] = f"{b[i]:02X}"
            i += 1
        elif t == 0x34 and not is_request:  # info-time
            out["info_time"] = _time(b[i:i + 5])
            i += 5
        elif t == 0x34 and is_request:  # periodic trigger, interval follows as 0x31 uintvar
            out["trigger"] = "periodic"
        elif t == 0x31 and is_request:
            out["interval_s"], i = _uintvar(b, i)
        elif t in (0x37, 0x38):  # result code 0 (no value)
            out["result"] = 0
        elif t == 0x39:  # result code, uintvar
            out["result"], i = _uintvar(b, i)
            return out, n - i  # result text tokens after an error are vendor specific
        elif t in (0x51, 0x54, 0x55, 0x66, 0x69):  # circle-2d, circle-3d(54/55), point-2d, point-3d
            if i + 8 > n:
                raise ProtocolError("truncated position")
            lat, lon = struct.unpack(">II", b[i:i + 8])
            out["lat"], out["lon"] = _lat(lat), _lon(lon)
            i += 8
            if t in (0x51, 0x54, 0x55):
                out["radius_m"], i = _ufloatvar(b, i)
            if t in (0x54, 0x55, 0x69):
                out["alt_m"], i = _ufloatvar(b, i)
        elif t == 0x6C:  # speed-hor, ufloatvar (m/s)
            out["speed_ms"], i = _ufloatvar(b, i)
        elif t == 0x56:  # direction-hor, 2-degree steps
            out["heading_deg"] = b[i] * 2
            i += 1
        else:
            out["unknown_tokens"] = b[i - 1:].hex().upper()
            break
    if i > n:
        raise ProtocolError("truncated LRRP document")
    return out, 0


# ----------------------------------------------------------------------------- framer
class DmrFramer:
    """Finds HDAP messages (checksum, end byte, length) and LRRP documents (tokens that make
    sense for the document type) in a byte stream.

    It waits for more bytes only behind a plausible start: an LRRP document id whose next
    bytes are a length that fits and a request-id token, or an HDAP header whose length
    fits. Anything else is skipped at once, so a stray byte in front of a report (a gateway's
    envelope) cannot hold the report back until the next datagram. ``flush()`` ends the
    input: what is still buffered is framed if complete, else reported as one bad frame.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self.max_frame = max_frame
        self.garbage_bytes = 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        return self._scan(eof=False)

    def flush(self) -> list[Frame]:
        return self._scan(eof=True)

    def _scan(self, eof: bool) -> list[Frame]:
        buf = self._buf
        out: list[Frame] = []
        truncated = b""
        i = 0
        while i < len(buf):
            n = len(buf) - i
            b = buf[i]
            wait = False
            if b in HDAP_HEADERS and n >= 5:
                ln = (buf[i + 3] << 8) | buf[i + 4]
                total = 5 + ln + 2
                if total <= self.max_frame:
                    if n >= total:
                        if buf[i + total - 1] == HDAP_END:
                            fr = bytes(buf[i:i + total])
                            if hdap_checksum(fr[1:-2]) == fr[-2]:
                                out.append(Frame(fr))
                            else:
                                out.append(Frame(fr, ok=False, error="bad checksum"))
                            i += total
                            continue
                    else:
                        wait = True  # an HDAP message still arriving
            elif b in HDAP_HEADERS:
                wait = True
            if b in LRRP_DOCS:
                if n < 3:
                    wait = True
                else:
                    total = buf[i + 1] + 2
                    if n >= total:
                        fr = bytes(buf[i:i + total])
                        if lrrp_plausible(fr):
                            out.append(Frame(fr))
                            i += total
                            continue
                    elif total >= 4 and buf[i + 2] in (0x22, 0x23, 0x24):
                        wait = True  # a plausible LRRP start: its length runs past the data so far
            if wait and not eof:
                break
            if wait and not truncated:
                truncated = bytes(buf[i:i + 64])
            self.garbage_bytes += 1
            i += 1
        del buf[:i]
        if eof:
            if truncated:
                out.append(Frame(truncated, ok=False, error="truncated frame at end of input"))
            buf.clear()
        elif len(buf) > self.max_frame:
            self.garbage_bytes += len(buf)
            out.append(Frame(bytes(buf[:64]), ok=False, error="unterminated frame"))
            buf.clear()
        return out


# ----------------------------------------------------------------------------- parser
def _ip(b: bytes) -> str:
    return ".".join(str(x) for x in b)


def _nmea_deg(text: str, width: int) -> float:
    deg = int(text[:width])
    return deg + float(text[width:]) / 60.0


def decode_lp_report(payload: bytes) -> dict[str, Any]:
    """HDAP LP standard/emergency report: request id, radio IP, result, then the GPS ASCII block."""
    if len(payload) < 10:
        raise ProtocolError("LP report too short")
    out: dict[str, Any] = {"request_id": int.from_bytes(payload[0:4], "big"),
                           "radio_ip": _ip(payload[4:8]),
                           "result": int.from_bytes(payload[8:10], "big")}
    gps = payload[10:].decode("ascii", "replace")
    if len(gps) >= 33:
        out["gps_valid"] = gps[0] == "A"
        out["gps_time"] = f"{gps[1:3]}:{gps[3:5]}:{gps[5:7]}"
        out["gps_date"] = f"20{gps[11:13]}-{gps[9:11]}-{gps[7:9]}"
        try:
            lat = _nmea_deg(gps[14:23], 2)
            lon = _nmea_deg(gps[24:34], 3)
        except ValueError:
            raise ProtocolError(f"LP GPS block not understood: {gps[:40]!r}") from None
        out["lat"] = round(-lat if gps[13] == "S" else lat, 7)
        out["lon"] = round(-lon if gps[23] == "W" else lon, 7)
        rest = gps[34:]
        # speed (knots, ASCII float) and course (3 ASCII digits) share the tail
        if len(rest) >= 3 and rest[-3:].isdigit():
            out["course_deg"] = int(rest[-3:])
            try:
                out["speed_kn"] = float(rest[:-3]) if rest[:-3] else 0.0
            except ValueError:
                pass
    return out


class DmrParser:
    """Pure parser for HDAP LP/TMP and LRRP frames."""

    def __init__(self, profile: Mapping[str, Any] | None = None) -> None:
        self.profile = dict(profile or {})
        self.text_opcode = int(self.profile.get("text_opcode", TMP_TEXT))
        self._n = 0

    def parse(self, frame: Frame, ctx: ParseContext) -> list[Record]:
        try:
            return self._parse(frame, ctx)
        except (IndexError, struct.error, ValueError) as exc:
            raise ProtocolError(f"DMR frame not understood: {exc}", device=ctx.device_id) from None

    def _parse(self, frame: Frame, ctx: ParseContext) -> list[Record]:
        raw = frame.raw
        self._n += 1
        key = f"{ctx.now_ns}:{self._n}"
        src = ctx.source or SOURCE
        if raw[0] in HDAP_HEADERS and raw[-1] == HDAP_END and len(raw) >= 7 and \
                ((raw[3] << 8) | raw[4]) == len(raw) - 7:
            opcode = (raw[1] << 8) | raw[2]
            payload = raw[5:-2]
            if raw[0] == HDAP_LP and opcode in (0xA002, 0xB002, 0xC003, 0xD003):
                f = decode_lp_report(payload)
                f["protocol"] = "hytera_lp"
                f["report"] = LP_OPS[opcode]
                emergency = opcode == 0xB002
                kind = "position" if "lat" in f and f.get("gps_valid") else "dmr_status"
                prio = Priority.ALARM if emergency else Priority.POSITION
                return [Record.make(kind, ctx.device_id, ctx.now_ns, f, tags=ctx.tags, priority=prio,
                                    source=src,
                                    key=f"lp:{f['radio_ip']}:{f.get('gps_date')}T{f.get('gps_time')}:{key}")]
            if raw[0] == HDAP_TMP and opcode == self.text_opcode:
                return [self._text(payload, ctx, src, key)]
            return [Record.make("dmr_raw", ctx.device_id, ctx.now_ns,
                                {"protocol": HDAP_HEADERS[raw[0]], "opcode": f"{opcode:04X}",
                                 "hex": raw.hex().upper()}, tags=ctx.tags, priority=Priority.BULK,
                                source=src, key=f"raw:{key}")]
        f = decode_lrrp(raw)
        f["protocol"] = "lrrp"
        kind = "position" if "lat" in f else "dmr_status"
        return [Record.make(kind, ctx.device_id, ctx.now_ns, f, tags=ctx.tags,
                            priority=Priority.POSITION if "lat" in f else Priority.TELEMETRY,
                            source=src, key=f"lrrp:{key}")]

    def _text(self, payload: bytes, ctx: ParseContext, src: str, key: str) -> Record:
        if len(payload) < 12:
            raise ProtocolError("TMP text message too short")
        text = payload[12:].decode("utf-16-le", "replace").rstrip("\x00")
        fields = {"request_id": int.from_bytes(payload[0:4], "big"), "dest_ip": _ip(payload[4:8]),
                  "src_ip": _ip(payload[8:12]), "text": text, "protocol": "hytera_tmp"}
        return Record.make("dmr_text", ctx.device_id, ctx.now_ns, fields, tags=ctx.tags,
                           priority=Priority.COMMAND, source=src, key=f"tmp:{key}")


def _ip_bytes(ip: str) -> bytes:
    try:
        parts = [int(p) for p in ip.split(".")]
        if len(parts) != 4 or not all(0 <= p <= 255 for p in parts):
            raise ValueError
    except ValueError:
        raise ValidationError(f"radio address {ip!r} must be an IPv4 address (Hytera radio id as IP)") from None
    return bytes(parts)


def encode(command: Mapping[str, Any]) -> bytes:
    """{"cmd": "text", "dest": "10.0.0.80", "src": "10.0.0.1", "text": "..."} |
    {"cmd": "locate", "radio": "10.33.16.221"} (LP standard location request)."""
    cmd = str(command.get("cmd", "")).lower()
    rid = int(command.get("request_id", 1)) & 0xFFFFFFFF
    if cmd == "text":
        payload = rid.to_bytes(4, "big") + _ip_bytes(str(command["dest"])) + \
            _ip_bytes(str(command.get("src", "0.0.0.0"))) + str(command["text"]).encode("utf-16-le")
        return hdap_message(HDAP_TMP, int(command.get("opcode", TMP_TEXT)), payload)
    if cmd == "locate":
        return hdap_message(HDAP_LP, 0xA001, rid.to_bytes(4, "big") + _ip_bytes(str(command["radio"])))
    raise ValidationError(f"unknown DMR command {cmd!r}; one of text, locate")


DRIVER = Driver(name="dmr", summary="DMR radios: Hytera HDAP location/text, Motorola LRRP",
                framer=DmrFramer, parser=DmrParser, read_capture=read_hex_capture,
                simulator="simulators.dmr:DmrSim", encoder=encode)

"""MAVLink driver on pymavlink: framing of streams and ``.tlog`` files, telemetry to records."""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymavlink import mavutil
from pymavlink.dialects.v20 import ardupilotmega as mavlink2

from fieldhub.core.errors import FieldhubError, ValidationError
from fieldhub.core.records import Priority, Record

from .base import Driver, Frame, ParseContext

#: the dialect every part of fieldhub speaks (a superset of common.xml)
mav = mavlink2
BAD_DATA_ID = mavlink2.MAVLINK_MSG_ID_BAD_DATA
#: pymavlink rescans for a plausible tlog timestamp after bad data when the jump exceeds this
TLOG_SCAN_WINDOW_S = 3 * 24 * 60 * 60

#: per-kind records per second into the log (0 = every message); the raw stream still goes to the tlog
DEFAULT_RATES: dict[str, float] = {
    "position": 2.0, "altitude": 1.0, "velocity": 1.0, "attitude": 1.0, "airdata": 1.0,
    "battery": 0.2, "gps": 0.2, "drone_state": 0.1, "drone_event": 0.0, "command_ack": 0.0,
}

SEVERITY = ("emergency", "alert", "critical", "error", "warning", "notice", "info", "debug")
GPS_FIX = ("no_gps", "no_fix", "2d", "3d", "dgps", "rtk_float", "rtk_fixed", "static", "ppp")
MAV_RESULT = {0: "accepted", 1: "temporarily_rejected", 2: "denied", 3: "unsupported",
              4: "failed", 5: "in_progress", 6: "cancelled", 7: "command_long_only",
              8: "command_int_only", 9: "unsupported_mav_frame"}


def new_parser(src_system: int = 0, src_component: int = 0) -> mavlink2.MAVLink:
    """A pymavlink parser/encoder that reports bad data instead of raising (robust parsing)."""
    p = mavlink2.MAVLink(None, src_system, src_component)
    p.robust_parsing = True
    return p


def mode_name(autopilot: int, vehicle_type: int, base_mode: int, custom_mode: int) -> str:
    """Flight mode name per autopilot: ArduPilot tables by vehicle type, PX4 main/sub modes."""
    if autopilot == mavlink2.MAV_AUTOPILOT_PX4:
        return mavutil.interpret_px4_mode(base_mode, custom_mode)
    if not base_mode & mavlink2.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED:
        return f"Mode(0x{base_mode:02x})"
    table = mavutil.mode_mapping_bynumber(vehicle_type) or {}
    return table.get(custom_mode, f"Mode({custom_mode})")


def mode_number(autopilot: int, vehicle_type: int, name: str) -> tuple[int, int, int]:
    """(base_mode, custom main mode, custom sub mode) to request ``name``; KeyError lists the known ones."""
    name = name.upper()
    if autopilot == mavlink2.MAV_AUTOPILOT_PX4:
        if name not in mavutil.px4_map:
            raise KeyError(", ".join(sorted(mavutil.px4_map)))
        return mavutil.px4_map[name]
    table = mavutil.mode_mapping_byname(vehicle_type) or {}
    if name not in table:
        raise KeyError(", ".join(sorted(table)) or "none known for this vehicle type")
    return mavlink2.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED, table[name], 0


def command_name(cmd: int) -> str:
    entry = mavlink2.enums["MAV_CMD"].get(cmd)
    return entry.name.removeprefix("MAV_CMD_").lower() if entry else f"cmd_{cmd}"


# ----------------------------------------------------------------------------- framing
class TlogChunk(bytes):
    """Bytes read from a ``.tlog`` file: 8-byte big-endian µs timestamps before every packet.

    An empty ``TlogChunk`` marks the end of the file.
    """


class MavFramer:
    """Bytes -> frames through pymavlink's own parser; bad CRC and junk become ``ok=False`` frames.

    Raw streams go through ``parse_buffer``. ``TlogChunk`` input is split exactly as pymavlink's
    ``mavlogfile`` reads a tlog (timestamp, then ``bytes_needed()`` pieces, rescan after bad
    data), so good and bad counts match pymavlink's own on the same file.
    """

    def __init__(self) -> None:
        self.mav = new_parser()
        self._buf = bytearray()
        self._phase = "ts"  # ts | scan | body | done
        self._tbuf = b""
        self._ts_s = 0.0
        self._last_good_s: float | None = None
        self._last_bad = False
        self._tlog = False

    def feed(self, data: bytes) -> list[Frame]:
        if isinstance(data, TlogChunk):
            self._tlog = True
            return self._feed_tlog(data, eof=not data)
        return [to_frame(m, 0) for m in self.mav.parse_buffer(data) or ()]

    def flush(self) -> list[Frame]:
        """End of input: a tlog not yet ended is ended; a raw stream's partial packet is one bad frame."""
        out: list[Frame] = []
        if self._buf and self._phase != "done":
            out = self._feed_tlog(TlogChunk(b""), eof=True)
        left = 0 if self._tlog else self.mav.buf_len()  # a tlog ends as pymavlink's reader ends it
        if left > 0:
            rest = bytes(self.mav.buf[self.mav.buf_index:])
            self.mav = new_parser()
            out.append(Frame(rest[:64], ok=False, error="truncated packet at end of input"))
        return out

    def _feed_tlog(self, data: bytes, eof: bool) -> list[Frame]:
        buf = self._buf
        buf += data
        pos, out = 0, []
        while self._phase != "done":
            avail = len(buf) - pos
            if self._phase == "ts":
                if avail < 8:
                    if not eof:
                        break
                    pos += avail
                    self._phase = "body"
                    continue
                self._tbuf = bytes(buf[pos:pos + 8])
                pos += 8
                self._ts_s = int.from_bytes(self._tbuf, "big") * 1.0e-6
                scan = self._last_bad and self._last_good_s is not None and \
                    abs(self._ts_s - self._last_good_s) > TLOG_SCAN_WINDOW_S
                self._phase = "scan" if scan else "body"
            elif self._phase == "scan":
                assert self._last_good_s is not None
                if abs(self._ts_s - self._last_good_s) <= TLOG_SCAN_WINDOW_S:
                    self._phase = "body"
                    continue
                if avail < 1:
                    if eof:
                        self._phase = "body"
                        continue
                    break
                self._tbuf = self._tbuf[1:] + bytes(buf[pos:pos + 1])
                pos += 1
                self._ts_s = int.from_bytes(self._tbuf, "big") * 1.0e-6
            else:
                n = self.mav.bytes_needed()
                if avail < n and not eof:
                    break
                piece = bytes(buf[pos:pos + n])
                pos += len(piece)
                msg = self.mav.parse_char(piece)
                if msg is None:
                    if not piece:
                        self._phase = "done"
                    continue
                bad = msg._header.msgId == BAD_DATA_ID if hasattr(msg, "_header") else True
                self._last_bad = bad
                if not bad:
                    self._last_good_s = self._ts_s
                out.append(to_frame(msg, int(self._ts_s * 1e6) * 1000))
                self._phase = "ts"
        del buf[:pos]
        return out


_CRC_VALUES = re.compile(r" 0x[0-9a-f]+ should be 0x[0-9a-f]+")


def to_frame(msg: Any, ts_ns: int) -> Frame:
    if msg.get_msgId() == BAD_DATA_ID:
        return Frame(bytes(msg.data), ok=False, error=_CRC_VALUES.sub("", str(msg.reason)), ts=ts_ns)
    return Frame(bytes(msg.get_msgbuf()), message=msg, ts=ts_ns)


def read_tlog(path: Path, chunk: int = 65536) -> Iterator[bytes]:
    """A ``.tlog`` file as ``TlogChunk`` pieces, ending with the empty end-of-file marker."""
    with open(path, "rb") as f:
        while data := f.read(chunk):
            yield TlogChunk(data)
    yield TlogChunk(b"")


def read_capture(path: Path) -> Iterator[bytes]:
    """``.tlog`` files carry timestamps; anything else is a raw MAVLink byte stream."""
    if path.suffix.lower() == ".tlog":
        yield from read_tlog(path)
        return
    with open(path, "rb") as f:
        while data := f.read(65536):
            yield data


# ----------------------------------------------------------------------------- telemetry
Handler = Callable[[Any, int, int], list[Record]]


class Telemetry:
    """MAVLink messages -> records, rate-limited per drone and kind (time is passed in).

    ``device_for(sysid)`` names the device; ``tags_for(sysid)`` gives its tags. HEARTBEATs
    from ground stations and non-autopilot components update nothing.
    """

    def __init__(self, device_for: Callable[[int], str], *, rates: Mapping[str, float] | None = None,
                 tags_for: Callable[[int], Mapping[str, str]] | None = None, source: str = "mavlink") -> None:
        self.device_for = device_for
        self.tags_for = tags_for or (lambda sysid: {})
        self.source = source
        rates = DEFAULT_RATES if rates is None else {**DEFAULT_RATES, **rates}
        self._period = {k: (int(1e9 / v) if v > 0 else 0) for k, v in rates.items()}
        self._next: dict[tuple[int, str], int] = {}
        #: sysid -> (autopilot, type, mode name, armed, system_status)
        self.state: dict[int, tuple[int, int, str, bool, int]] = {}
        self.suppressed = 0
        #: GLOBAL_POSITION_INT at exactly (0, 0), i.e. without a fix, not recorded as positions
        self.no_fix = 0
        self._chunks: dict[tuple[int, int], dict[int, str]] = {}
        self.handlers: dict[int, Handler] = {
            mavlink2.MAVLINK_MSG_ID_HEARTBEAT: self._heartbeat,
            mavlink2.MAVLINK_MSG_ID_GLOBAL_POSITION_INT: self._global_position,
            mavlink2.MAVLINK_MSG_ID_VFR_HUD: self._vfr_hud,
            mavlink2.MAVLINK_MSG_ID_ATTITUDE: self._attitude,
            mavlink2.MAVLINK_MSG_ID_SYS_STATUS: self._sys_status,
            mavlink2.MAVLINK_MSG_ID_BATTERY_STATUS: self._battery_status,
            mavlink2.MAVLINK_MSG_ID_GPS_RAW_INT: self._gps,
            mavlink2.MAVLINK_MSG_ID_STATUSTEXT: self._statustext,
            mavlink2.MAVLINK_MSG_ID_COMMAND_ACK: self._command_ack,
        }

    def handle(self, msg: Any, ts: int) -> list[Record]:
        """Records for one decoded message at time ``ts`` (ns UTC); [] for most messages."""
        h = self.handlers.get(msg._header.msgId)
        if h is None:
            return []
        return h(msg, msg._header.srcSystem, ts)

    # -- helpers
    def _due(self, sysid: int, kind: str, ts: int) -> bool:
        period = self._period.get(kind, 0)
        if not period:
            return True
        key = (sysid, kind)
        nxt = self._next.get(key)
        if nxt is not None and ts < nxt and ts > nxt - 2 * period:
            self.suppressed += 1
            return False
        self._next[key] = ts + period
        return True

    def _rec(self, kind: str, sysid: int, ts: int, fields: dict[str, Any], msg: Any,
             priority: Priority = Priority.TELEMETRY) -> Record:
        for name, value in list(fields.items()):
            if isinstance(value, float) and not math.isfinite(value):
                del fields[name]  # autopilots send NaN for "unknown" (e.g. airspeed without a sensor)
        if not fields:
            fields = {"empty": True}
        h = msg._header
        tags = {**self.tags_for(sysid), "sysid": str(sysid)}
        return Record.make(kind, self.device_for(sysid), ts, fields, tags=tags, priority=priority,
                           source=self.source, key=f"{ts}:{h.msgId}:{h.srcComponent}:{h.seq}")

    # -- message handlers
    def _heartbeat(self, m: Any, sysid: int, ts: int) -> list[Record]:
        if m.type == mavlink2.MAV_TYPE_GCS or m.autopilot == mavlink2.MAV_AUTOPILOT_INVALID:
            return []
        armed = bool(m.base_mode & mavlink2.MAV_MODE_FLAG_SAFETY_ARMED)
        mode = mode_name(m.autopilot, m.type, m.base_mode, m.custom_mode)
        now = (m.autopilot, m.type, mode, armed, m.system_status)
        changed = self.state.get(sysid) != now
        self.state[sysid] = now
        if changed:
            self._next[(sysid, "drone_state")] = ts + self._period.get("drone_state", 0)
        elif not self._due(sysid, "drone_state", ts):
            return []
        return [self._rec("drone_state", sysid, ts, {
            "mode": mode, "armed": armed, "custom_mode": m.custom_mode,
            "autopilot": autopilot_name(m.autopilot), "vehicle_type": vehicle_name(m.type),
            "system_status": m.system_status, "changed": changed}, m,
            Priority.COMMAND if changed else Priority.TELEMETRY)]

    def _global_position(self, m: Any, sysid: int, ts: int) -> list[Record]:
        out = []
        if m.lat == 0 and m.lon == 0:
            # autopilots send 0/0 before a GPS fix: no position (a drone in the Gulf of Guinea)
            self.no_fix += 1
        elif self._due(sysid, "position", ts):
            f = {"lat": m.lat * 1e-7, "lon": m.lon * 1e-7, "alt_m": m.alt / 1000.0,
                 "rel_alt_m": m.relative_alt / 1000.0}
            if m.hdg != 65535:
                f["heading_deg"] = m.hdg / 100.0
            out.append(self._rec("position", sysid, ts, f, m, Priority.POSITION))
        if self._due(sysid, "altitude", ts):
            out.append(self._rec("altitude", sysid, ts, {
                "alt_m": m.alt / 1000.0, "rel_alt_m": m.relative_alt / 1000.0,
                "climb_ms": -m.vz / 100.0}, m))
        if self._due(sysid, "velocity", ts):
            out.append(self._rec("velocity", sysid, ts, {
                "vn_ms": m.vx / 100.0, "ve_ms": m.vy / 100.0, "vd_ms": m.vz / 100.0,
                "ground_speed_ms": round(math.hypot(m.vx, m.vy) / 100.0, 3)}, m))
        return out

    def _vfr_hud(self, m: Any, sysid: int, ts: int) -> list[Record]:
        if not self._due(sysid, "airdata", ts):
            return []
        return [self._rec("airdata", sysid, ts, {
            "airspeed_ms": m.airspeed, "groundspeed_ms": m.groundspeed, "heading_deg": m.heading,
            "throttle_pct": m.throttle, "alt_m": m.alt, "climb_ms": m.climb}, m)]

    def _attitude(self, m: Any, sysid: int, ts: int) -> list[Record]:
        if not self._due(sysid, "attitude", ts):
            return []
        d = 180.0 / math.pi
        return [self._rec("attitude", sysid, ts, {
            "roll_deg": round(m.roll * d, 3), "pitch_deg": round(m.pitch * d, 3),
            "yaw_deg": round(m.yaw * d, 3)}, m)]

    def _sys_status(self, m: Any, sysid: int, ts: int) -> list[Record]:
        if not self._due(sysid, "battery", ts):
            return []
        f: dict[str, Any] = {"source": "sys_status", "voltage_v": m.voltage_battery / 1000.0}
        if m.current_battery >= 0:
            f["current_a"] = m.current_battery / 100.0
        if m.battery_remaining >= 0:
            f["remaining_pct"] = m.battery_remaining
        return [self._rec("battery", sysid, ts, f, m)]

    def _battery_status(self, m: Any, sysid: int, ts: int) -> list[Record]:
        if not self._due(sysid, "battery", ts):
            return []
        cells = [v for v in m.voltages if v != 65535]
        f: dict[str, Any] = {"source": "battery_status", "battery_id": m.id,
                             "voltage_v": round(sum(cells) / 1000.0, 3)}
        if m.current_battery >= 0:
            f["current_a"] = m.current_battery / 100.0
        if m.battery_remaining >= 0:
            f["remaining_pct"] = m.battery_remaining
        if m.current_consumed >= 0:
            f["consumed_mah"] = m.current_consumed
        if m.temperature != 32767:
            f["temperature_c"] = m.temperature / 100.0
        return [self._rec("battery", sysid, ts, f, m)]

    def _gps(self, m: Any, sysid: int, ts: int) -> list[Record]:
        key = (sysid, "gps_fix")
        changed = self._next.get(key) != m.fix_type
        self._next[key] = m.fix_type
        if not changed and not self._due(sysid, "gps", ts):
            return []
        f: dict[str, Any] = {"fix_type": m.fix_type,
                             "fix": GPS_FIX[m.fix_type] if m.fix_type < len(GPS_FIX) else str(m.fix_type),
                             "satellites": m.satellites_visible if m.satellites_visible != 255 else -1}
        if m.eph != 65535:
            f["hdop"] = m.eph / 100.0
        if m.fix_type >= 2 and (m.lat or m.lon):
            f.update(lat=m.lat * 1e-7, lon=m.lon * 1e-7, alt_m=m.alt / 1000.0)
        return [self._rec("gps", sysid, ts, f, m, Priority.POSITION if changed else Priority.TELEMETRY)]

    def _statustext(self, m: Any, sysid: int, ts: int) -> list[Record]:
        text = m.text if isinstance(m.text, str) else bytes(m.text).decode("utf-8", "replace")
        chunk_id = getattr(m, "id", 0)
        if chunk_id:
            # MAVLink 2 long texts come in 50-char chunks sharing an id; the last one is shorter
            key = (sysid, chunk_id)
            parts = self._chunks.setdefault(key, {})
            parts[getattr(m, "chunk_seq", 0)] = text
            if len(text) >= 50:
                if len(self._chunks) > 32:
                    self._chunks.pop(next(iter(self._chunks)))
                return []
            del self._chunks[key]
            text = "".join(parts[i] for i in sorted(parts))
        sev = m.severity
        prio = Priority.ALARM if sev <= mavlink2.MAV_SEVERITY_CRITICAL else Priority.TELEMETRY
        return [self._rec("drone_event", sysid, ts, {
            "severity": sev, "level": SEVERITY[sev] if sev < len(SEVERITY) else str(sev),
            "text": text}, m, prio)]

    def _command_ack(self, m: Any, sysid: int, ts: int) -> list[Record]:
        f: dict[str, Any] = {"command": m.command, "command_name": command_name(m.command),
                             "result": m.result, "result_name": MAV_RESULT.get(m.result, str(m.result))}
        if getattr(m, "target_system", 0):
            f["target_system"] = m.target_system
        return [self._rec("command_ack", sysid, ts, f, m, Priority.COMMAND)]


def autopilot_name(n: int) -> str:
    e = mavlink2.enums["MAV_AUTOPILOT"].get(n)
    return e.name.removeprefix("MAV_AUTOPILOT_").lower() if e else str(n)


def vehicle_name(n: int) -> str:
    e = mavlink2.enums["MAV_TYPE"].get(n)
    return e.name.removeprefix("MAV_TYPE_").lower() if e else str(n)


class MavParser:
    """The replay parser: device ids ``<device>-<sysid>`` unless the profile maps them."""

    def __init__(self, profile: Mapping[str, Any]) -> None:
        self._ids: dict[int, str] = {int(k): v for k, v in (profile.get("device_ids") or {}).items()}
        self._ctx_device = "replay"
        self.telemetry = Telemetry(self._device, rates=profile.get("rates"), source="replay:mavlink")

    def _device(self, sysid: int) -> str:
        return self._ids.get(sysid) or f"{self._ctx_device}-{sysid}"

    def parse(self, frame: Frame, ctx: ParseContext) -> list[Record]:
        self._ctx_device = ctx.device_id
        if frame.message is None:
            return []
        return self.telemetry.handle(frame.message, ctx.now_ns)


SIGNING_EPOCH = 1420070400  # 2015-01-01 UTC; signing timestamps count 10 µs from here


def signing_now() -> int:
    return int((time.time() - SIGNING_EPOCH) * 100_000)


def sync_signing_clock(m: Any) -> None:
    """Signing timestamps must follow real time: receivers reject a new stream over a minute old."""
    if m.signing.sign_outgoing:
        m.signing.timestamp = max(m.signing.timestamp, signing_now())


#: a new signing stream may start at most this far (10 µs units: one minute) behind our clock
NEW_STREAM_SLACK = 6_000_000


def check_signature(m: Any, msgbuf: bytes | bytearray, src_system: int, src_component: int) -> bool:
    """MAVLink 2 signature check whose state moves only after the signature verifies.

    Replaces pymavlink's ``MAVLink.check_signature``, which stores the stream's timestamp
    before it compares the signature: one forged packet carrying timestamp 2^48-1 made every
    genuine packet after it a "replay". Here a packet must first be signed with the key; only
    then is its timestamp checked against the stream (link id, system, component) and
    remembered, as the C library (``mavlink_signature_check``) and ArduPilot do.
    """
    s = m.signing
    if s.secret_key is None or len(msgbuf) < 13 + 10:
        return False
    want = hashlib.sha256(bytes(s.secret_key) + bytes(msgbuf[:-6])).digest()[:6]
    if not hmac.compare_digest(want, bytes(msgbuf[-6:])):
        s.badsig_count += 1
        return False
    timestamp = int.from_bytes(msgbuf[-12:-6], "little")
    stream = (msgbuf[-13], src_system, src_component)
    last = s.stream_timestamps.get(stream)
    if last is not None and timestamp <= last:
        s.reject_count += 1
        return False  # a replay (or an old packet) of a genuine one
    if last is None and timestamp + NEW_STREAM_SLACK < s.timestamp:
        s.reject_count += 1
        return False  # a new stream over a minute behind our clock: a recorded stream replayed
    s.stream_timestamps[stream] = timestamp
    s.timestamp = max(s.timestamp, timestamp)
    s.goodsig_count += 1
    return True


def signer(key: bytes | None, src_system: int, src_component: int, link_id: int = 0) -> Any:
    """A pymavlink encoder (and signature checker) set up with ``key`` when there is one."""
    m = new_parser(src_system, src_component)
    if key is not None:
        m.signing.secret_key = key
        m.signing.link_id = link_id
        m.signing.sign_outgoing = True
        m.signing.timestamp = signing_now()
    return m


# operator commands: the action names, and how each becomes COMMAND_LONG / COMMAND_INT
ACTIONS = ("rtl", "land", "arm", "disarm", "mode", "goto")


@dataclass(frozen=True)
class CommandSpec:
    """One command to one drone; ``use_int`` sends COMMAND_INT (positions as 1e-7 degrees)."""

    action: str
    command: int
    params: tuple[float, ...] = (0, 0, 0, 0, 0, 0, 0)
    use_int: bool = False
    frame: int = mav.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT
    detail: str = ""

    def encode(self, encoder: Any, sysid: int, compid: int, confirmation: int) -> Any:
        p = self.params
        if self.use_int:
            # COMMAND_INT has no confirmation field; a resend is the same message again
            return encoder.command_int_encode(sysid, compid, self.frame, self.command, 0, 0,
                                              p[0], p[1], p[2], p[3], int(p[4]), int(p[5]), p[6])
        return encoder.command_long_encode(sysid, compid, self.command, confirmation & 0xFF, *p)


def build(action: str, args: list[str], autopilot: int | None, vehicle_type: int | None) -> CommandSpec:
    """The command for an operator action; ValidationError says what was expected."""
    if action == "rtl":
        return CommandSpec(action, mav.MAV_CMD_NAV_RETURN_TO_LAUNCH)
    if action == "land":
        return CommandSpec(action, mav.MAV_CMD_NAV_LAND)
    if action in ("arm", "disarm"):
        return CommandSpec(action, mav.MAV_CMD_COMPONENT_ARM_DISARM,
                           (1.0 if action == "arm" else 0.0, 0, 0, 0, 0, 0, 0))
    if action == "mode":
        if len(args) != 1:
            raise ValidationError("mode needs one NAME, e.g. RTL, LOITER, GUIDED / 需要一个模式名")
        if autopilot is None or vehicle_type is None:
            raise FieldhubError("no HEARTBEAT from this drone yet, so its mode table is unknown "
                                "/ 尚未收到该无人机心跳，无法确定模式表")
        try:
            base, main, sub = mode_number(autopilot, vehicle_type, args[0])
        except KeyError as exc:
            raise ValidationError(f"unknown mode {args[0]!r} for this autopilot; known: {exc.args[0]} "
                                  f"/ 未知飞行模式") from None
        return CommandSpec(action, mav.MAV_CMD_DO_SET_MODE, (float(base), float(main), float(sub), 0, 0, 0, 0),
                           detail=args[0].upper())
    if action == "goto":
        try:
            lat, lon, alt = (float(a) for a in args)
        except ValueError:
            raise ValidationError("goto needs LAT LON ALT (degrees, degrees, metres above home) "
                                  "/ 需要 纬度 经度 高度") from None
        if not (-90 <= lat <= 90 and -180 <= lon <= 180 and -100 <= alt <= 10000):
            raise ValidationError(f"goto {lat} {lon} {alt}: out of range / 坐标超出范围")
        return CommandSpec(action, mav.MAV_CMD_DO_REPOSITION,
                           (-1.0, float(mav.MAV_DO_REPOSITION_FLAGS_CHANGE_MODE), 0, math.nan,
                            round(lat * 1e7), round(lon * 1e7), alt), use_int=True,
                           detail=f"{lat:.7f},{lon:.7f},{alt:g}")
    raise ValidationError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")


def pack_tlog(ts_us: int, packet: bytes) -> bytes:
    return struct.pack(">Q", ts_us) + packet


def encode_command(command: Mapping[str, Any]) -> bytes:
    """One operator command as MAVLink bytes, for the dispatcher: ``{"action": "rtl",
    "target_system": 1, "args": [...], "source_system": 254, "confirmation": 0,
    "autopilot": 3, "vehicle_type": 2}`` (autopilot/vehicle type name the mode table for
    ``mode``; ArduCopter by default). Unsigned; the hub signs for drones with keys."""
    spec = build(str(command["action"]), [str(a) for a in command.get("args") or []],
                 int(command.get("autopilot", mavlink2.MAV_AUTOPILOT_ARDUPILOTMEGA)),
                 int(command.get("vehicle_type", mavlink2.MAV_TYPE_QUADROTOR)))
    enc = new_parser(int(command.get("source_system", 254)), mavlink2.MAV_COMP_ID_MISSIONPLANNER)
    msg = spec.encode(enc, int(command["target_system"]), int(command.get("target_component", 1)),
                      int(command.get("confirmation", 0)))
    return bytes(msg.pack(enc))


DRIVER = Driver(
    name="mavlink",
    summary="MAVLink 1/2 drones (pymavlink, ardupilotmega dialect); .tlog captures",
    framer=MavFramer,
    parser=MavParser,
    read_capture=read_capture,
    simulator="simulators.drone:DroneSwarm",
    encoder=encode_command,
)

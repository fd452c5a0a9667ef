"""Pelco-D (and Pelco-P) PTZ control over RS-485: framer, parser, command encoder."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fieldhub.core.errors import ProtocolError, ValidationError
from fieldhub.core.records import Priority, Record

from .base import Driver, Frame, ParseContext, read_hex_capture

SOURCE = "serial:pelco_d"
D_SYNC, P_SYNC, P_END = 0xFF, 0xA0, 0xAF

#: cmd2 bits (cmd1 = 0) for movement
RIGHT, LEFT, UP, DOWN, TELE, WIDE = 0x02, 0x04, 0x08, 0x10, 0x20, 0x40
#: extended commands (cmd2 with bit 0 set), data2 = argument
EXTENDED = {0x03: "set_preset", 0x05: "clear_preset", 0x07: "goto_preset", 0x09: "aux_on",
            0x0B: "aux_off", 0x1F: "tour_learn", 0x21: "tour_learn_stop", 0x23: "tour_start",
            0x25: "zoom_speed", 0x27: "focus_speed", 0x4B: "set_pan", 0x4D: "set_tilt",
            0x4F: "set_zoom", 0x51: "query_pan", 0x53: "query_tilt", 0x55: "query_zoom",
            0x59: "pan_position", 0x5B: "tilt_position", 0x5D: "zoom_position"}
REPLIES = {0x59: "pan", 0x5B: "tilt", 0x5D: "zoom"}
QUERIES = {"pan": 0x51, "tilt": 0x53, "zoom": 0x55}
SETS = {"pan": 0x4B, "tilt": 0x4D, "zoom": 0x4F}


def d_checksum(body: bytes) -> int:
    """Pelco-D: sum of address, cmd1, cmd2, data1, data2 modulo 256."""
    return sum(body) & 0xFF


def p_checksum(frame7: bytes) -> int:
    """Pelco-P: XOR of the first seven bytes."""
    x = 0
    for b in frame7:
        x ^= b
    return x


def frame_d(addr: int, cmd1: int, cmd2: int, data1: int = 0, data2: int = 0) -> bytes:
    body = bytes((addr & 0xFF, cmd1 & 0xFF, cmd2 & 0xFF, data1 & 0xFF, data2 & 0xFF))
    return bytes((D_SYNC,)) + body + bytes((d_checksum(body),))


class PelcoFramer:
    """7-byte Pelco-D frames (``FF``) and 8-byte Pelco-P frames (``A0 .. AF``).

    On a bad checksum the frame is reported and the search restarts one byte later, so a real
    frame hidden behind a stray sync byte is still found.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.garbage_bytes = 0
        #: bytes at the head of the buffer that belong to a frame already reported bad
        self._covered = 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf
        buf += data
        out: list[Frame] = []
        i, n = 0, len(buf)
        covered = self._covered
        while i < n:
            b = buf[i]
            if b == D_SYNC:
                if n - i < 7:
                    break
                fr = bytes(buf[i:i + 7])
                if d_checksum(fr[1:6]) == fr[6]:
                    out.append(Frame(fr))
                    i += 7
                else:
                    out.append(Frame(fr, ok=False, error="bad checksum"))
                    covered = i + 7
                    i += 1
                continue
            if b == P_SYNC:
                if n - i < 8:
                    break
                fr = bytes(buf[i:i + 8])
                if fr[6] == P_END:
                    if p_checksum(fr[:7]) == fr[7]:
                        out.append(Frame(fr))
                        i += 8
                    else:
                        out.append(Frame(fr, ok=False, error="bad checksum"))
                        covered = i + 8
                        i += 1
                    continue
            self.garbage_bytes += 1
            i += 1
        del buf[:i]
        self._covered = max(0, covered - i)
        return out

    def flush(self) -> list[Frame]:
        """End of input: a partial frame left over is one bad frame (a frame has a fixed length)."""
        rest = bytes(self._buf)
        self._buf.clear()
        covered, self._covered = self._covered, 0
        self.garbage_bytes += len(rest)
        if len(rest) <= covered:
            return []  # the tail of a frame already reported bad
        return [Frame(rest, ok=False, error="truncated frame at end of input")]


def _describe(cmd1: int, cmd2: int, d1: int, d2: int) -> tuple[str, dict[str, Any]]:
    if cmd2 & 0x01:
        name = EXTENDED.get(cmd2, f"ext_{cmd2:02x}")
        return name, {"arg": (d1 << 8) | d2}
    parts = []
    if cmd2 & RIGHT:
        parts.append("right")
    if cmd2 & LEFT:
        parts.append("left")
    if cmd2 & UP:
        parts.append("up")
    if cmd2 & DOWN:
        parts.append("down")
    if cmd2 & TELE:
        parts.append("zoom_in")
    if cmd2 & WIDE:
        parts.append("zoom_out")
    if cmd2 & 0x80:
        parts.append("focus_far")
    if cmd1 & 0x01:
        parts.append("focus_near")
    if cmd1 & 0x02:
        parts.append("iris_open")
    if cmd1 & 0x04:
        parts.append("iris_close")
    if cmd1 & 0x08:
        parts.append("camera_off" if not cmd1 & 0x80 else "camera_on")
    return ("+".join(parts) or "stop"), {"pan_speed": d1, "tilt_speed": d2}


class PelcoParser:
    """Pure parser: replies become ``ptz_position`` records, commands ``ptz_command`` records."""

    def __init__(self, profile: Mapping[str, Any] | None = None) -> None:
        self.profile = dict(profile or {})
        units = self.profile.get("units", {}) if isinstance(self.profile.get("units"), Mapping) else {}
        self.unit = float(units.get("position_deg", self.profile.get("position_unit", 0.01)))
        self.zoom_unit = float(units.get("zoom", 1.0))
        # One checksum byte passes 1 random frame in 256: a frame counts only for a camera we
        # know (the profile's [ptz] address or addresses). Without a profile (replay) any address.
        section = self.profile.get("ptz")
        ptz: Mapping[str, Any] = section if isinstance(section, Mapping) else {}
        known = ptz.get("addresses", [ptz["address"]] if "address" in ptz else [])
        self.addresses = frozenset(int(a) for a in known)
        self._n = 0

    def _check_address(self, addr: int, proto: str) -> None:
        if not self.addresses or addr in self.addresses:
            return
        if proto == "pelco-p" and addr + 1 in self.addresses:  # Pelco-P counts cameras from 0
            return
        raise ProtocolError(f"{proto} frame for address {addr}, not a configured camera "
                            f"({', '.join(map(str, sorted(self.addresses)))})")

    def parse(self, frame: Frame, ctx: ParseContext) -> list[Record]:
        raw = frame.raw
        self._n += 1
        key = f"{ctx.now_ns}:{self._n}"
        src = ctx.source or SOURCE
        if raw[0] == D_SYNC:
            addr, cmd1, cmd2, d1, d2 = raw[1], raw[2], raw[3], raw[4], raw[5]
            proto = "pelco-d"
        else:
            addr, cmd1, cmd2, d1, d2 = raw[1], raw[2], raw[3], raw[4], raw[5]
            proto = "pelco-p"
        self._check_address(addr, proto)
        if cmd2 in REPLIES and cmd1 == 0:
            axis = REPLIES[cmd2]
            value = (d1 << 8) | d2
            fields: dict[str, Any] = {"address": addr, "axis": axis, "raw": value}
            fields[f"{axis}_deg" if axis != "zoom" else "zoom"] = round(
                value * (self.unit if axis != "zoom" else self.zoom_unit), 4)
            return [Record.make("ptz_position", ctx.device_id, ctx.now_ns, fields, tags=ctx.tags,
                                priority=Priority.TELEMETRY, source=src, key=f"{axis}:{key}")]
        name, extra = _describe(cmd1, cmd2, d1, d2)
        fields = {"address": addr, "command": name, "protocol": proto, **extra}
        return [Record.make("ptz_command", ctx.device_id, ctx.now_ns, fields, tags=ctx.tags,
                            priority=Priority.BULK, source=src, key=f"cmd:{key}")]


def encode(command: Mapping[str, Any]) -> bytes:
    """{"cmd": "left", "speed": 32, "address": 1} | stop | up/down/right | zoom_in/zoom_out |
    set_preset/clear_preset/goto_preset (preset) | set_pan/set_tilt (deg) | set_zoom (raw) |
    query_pan/query_tilt/query_zoom; "unit" = degrees per count (profile, default 0.01)."""
    cmd = str(command.get("cmd", "")).lower()
    addr = int(command.get("address", 1))
    if not 0 <= addr <= 255:
        raise ValidationError(f"Pelco-D address {addr} must be 0-255")
    speed = max(0, min(0x3F, int(command.get("speed", 0x20))))
    tilt_speed = max(0, min(0x3F, int(command.get("tilt_speed", speed))))
    unit = float(command.get("unit", 0.01))
    moves = {"right": (RIGHT, speed, 0), "left": (LEFT, speed, 0), "up": (UP, 0, tilt_speed),
             "down": (DOWN, 0, tilt_speed), "zoom_in": (TELE, 0, 0), "zoom_out": (WIDE, 0, 0),
             "stop": (0, 0, 0)}
    if cmd in moves:
        c2, d1, d2 = moves[cmd]
        return frame_d(addr, 0, c2, d1, d2)
    if cmd in ("set_preset", "clear_preset", "goto_preset"):
        preset = int(command.get("preset", 0))
        if not 1 <= preset <= 255:
            raise ValidationError(f"preset {preset} must be 1-255 / 预置位须为1-255")
        return frame_d(addr, 0, {"set_preset": 0x03, "clear_preset": 0x05, "goto_preset": 0x07}[cmd], 0, preset)
    if cmd in ("set_pan", "set_tilt", "set_zoom"):
        axis = cmd[4:]
        value = float(command.get("value", command.get("deg", 0)))
        counts = int(round(value if axis == "zoom" else (value % 360.0) / unit))
        if not 0 <= counts <= 0xFFFF:
            raise ValidationError(f"{axis} {value} out of range")
        return frame_d(addr, 0, SETS[axis], counts >> 8, counts & 0xFF)
    if cmd in ("query_pan", "query_tilt", "query_zoom"):
        return frame_d(addr, 0, QUERIES[cmd[6:]])
    raise ValidationError(f"unknown PTZ command {cmd!r}; one of {', '.join(sorted(moves))}, "
                          "set_preset, clear_preset, goto_preset, set_pan, set_tilt, set_zoom, query_pan, "
                          "query_tilt, query_zoom")


DRIVER = Driver(name="pelco_d", summary="Pelco-D/P PTZ control balls over RS-485",
                framer=PelcoFramer, parser=PelcoParser, read_capture=read_hex_capture,
                simulator="simulators.ptz:PtzSim", encoder=encode)

"""The MQTT topic scheme and payload spec (docs/mqtt.md): pure decoding and validation, no I/O."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import cbor2
import orjson

from fieldhub.core.errors import ValidationError
from fieldhub.core.records import Priority, Record, stable_id
from fieldhub.core.registry import Device

SOURCE = "mqtt"
CHANNELS = ("telemetry", "status", "position", "alarm", "ack")
UP_FILTER = "fh/+/up/#"
DOWN_FILTER = "fh/+/down/#"
SEVERITIES = ("critical", "major", "minor", "info")
ACK_RESULTS = ("ok", "accepted", "in_progress", "rejected", "failed", "unsupported")

_TOPIC_RE = re.compile(r"\Afh/([^/]+)/up/([^/]+)\Z")
_FIELD_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,63}\Z")  # \Z: "$" passes a trailing newline
MAX_FIELDS = 64
MAX_STR = 512
#: epoch-ms bounds a device timestamp must lie within to be a timestamp at all (2000..2100)
TS_MIN_MS, TS_MAX_MS = 946_684_800_000, 4_102_444_800_000

#: per device kind: field -> (type, min, max); fields not listed are accepted as scalars.
KIND_FIELDS: dict[str, dict[str, tuple[type, float | None, float | None]]] = {
    "rain_gauge": {"rain_mm": (float, 0, 2000), "rain_1h_mm": (float, 0, 500)},
    "water_level": {"level_m": (float, -50, 500), "flow_m3s": (float, 0, 1e6)},
    "handheld": {"battery_pct": (float, 0, 100)},
    "sat_phone": {"csq": (int, 0, 99)},
    "checkin": {"people": (int, 0, 100000), "missing": (int, 0, 100000)},
    "ptz": {"pan_deg": (float, -360, 360), "tilt_deg": (float, -90, 90)},
}
#: every channel: common fields with ranges
COMMON_FIELDS: dict[str, tuple[type, float | None, float | None]] = {
    "battery_pct": (float, 0, 100), "battery_v": (float, 0, 100), "rssi_dbm": (float, -200, 0),
    "temp_c": (float, -80, 120),
}
POSITION_FIELDS: dict[str, tuple[type, float | None, float | None]] = {
    "lat": (float, -90, 90), "lon": (float, -180, 180), "alt_m": (float, -500, 12000),
    "speed_mps": (float, 0, 400), "course_deg": (float, 0, 360), "hdop": (float, 0, 100),
}


class Rejected(ValidationError):
    """A message that does not meet the spec; ``reason`` is what `quarantine list` shows."""

    def __init__(self, reason: str, device_id: str | None = None) -> None:
        self.reason, self.device_id = reason, device_id
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class Message:
    """A decoded, validated device message and the record it becomes."""

    device_id: str
    channel: str
    seq: int
    record: Record
    digest: bytes
    clock_suspect: bool


@lru_cache(maxsize=65536)  # a fleet uses few topics; bad ones raise and are not cached
def parse_topic(topic: str) -> tuple[str, str]:
    """``fh/{device_id}/up/{channel}`` -> (device_id, channel), or Rejected."""
    m = _TOPIC_RE.fullmatch(topic)
    if not m:
        raise Rejected(f"topic {topic[:120]!r} is not fh/{{device_id}}/up/{{channel}}")
    device_id, channel = m.group(1), m.group(2)
    if channel not in CHANNELS:
        raise Rejected(f"unknown channel {channel[:40]!r} (one of {', '.join(CHANNELS)})", device_id)
    return device_id, channel


def decode_body(payload: bytes, max_bytes: int) -> dict[str, Any]:
    """UTF-8 JSON object, or a CBOR map (short keys s/t/f allowed); anything else is Rejected."""
    if len(payload) > max_bytes:
        raise Rejected(f"payload too large ({len(payload)} bytes > {max_bytes})")
    if not payload:
        raise Rejected("empty payload")
    head = payload.lstrip()[:1]
    try:
        if head == b"{":
            body = orjson.loads(payload)
        else:
            body = cbor2.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise Rejected(f"not valid UTF-8 JSON: {str(exc)[:120]}") from None
    except RecursionError:
        raise Rejected("payload nested too deeply") from None
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, MemoryError,
            UnicodeDecodeError, KeyError, IndexError, AttributeError) as exc:
        raise Rejected(f"neither a JSON object nor a CBOR map ({type(exc).__name__})") from None
    if not isinstance(body, dict):
        raise Rejected(f"payload is a {_tname(body)}, not an object/map")
    if head != b"{":
        body = {({"s": "seq", "t": "ts", "f": "fields"}.get(k, k) if isinstance(k, str) else k): v
                for k, v in body.items()}
    return body


def _tname(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
            float: "number", type(None): "null", bytes: "byte string"}.get(type(v), type(v).__name__)


def parse_ts(value: Any) -> int:
    """epoch-ms integer or RFC 3339 string -> ns UTC."""
    if isinstance(value, bool):
        raise Rejected("ts must be epoch milliseconds (integer) or an RFC 3339 string, got boolean")
    if isinstance(value, int):
        if not TS_MIN_MS <= value <= TS_MAX_MS:
            raise Rejected(f"ts {value} is not epoch milliseconds between 2000 and 2100")
        return value * 1_000_000
    if isinstance(value, datetime):  # CBOR tag 0/1
        if value.tzinfo is None:
            raise Rejected("ts datetime without a time zone")
        return int(value.timestamp() * 1e9)
    if isinstance(value, str) and len(value) <= 40:
        try:
            dt = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
        except ValueError:
            raise Rejected(f"ts {value!r} is not RFC 3339 (e.g. 2026-11-30T08:00:00+08:00)") from None
        if dt.tzinfo is None:
            raise Rejected(f"ts {value!r} has no time zone offset (RFC 3339 needs Z or +08:00)")
        if not TS_MIN_MS <= dt.timestamp() * 1000 <= TS_MAX_MS:
            raise Rejected(f"ts {value!r} is outside 2000..2100")
        return int(dt.timestamp() * 1e9)
    raise Rejected(f"ts must be epoch milliseconds (integer) or an RFC 3339 string, got {_tname(value)}")


def _check_fields(fields: Any, spec: Mapping[str, tuple[type, float | None, float | None]]) -> dict[str, Any]:
    if not isinstance(fields, dict):
        raise Rejected(f"fields must be an object, got {_tname(fields)}")
    if len(fields) > MAX_FIELDS:
        raise Rejected(f"too many fields ({len(fields)} > {MAX_FIELDS})")
    out: dict[str, Any] = {}
    common = COMMON_FIELDS
    for name, value in fields.items():
        if name.__class__ is not str or not _FIELD_RE.fullmatch(name):
            raise Rejected(f"field name {str(name)[:40]!r}: letters, digits, '_', at most 64")
        t = value.__class__
        if t is float:
            if not math.isfinite(value):
                raise Rejected(f"field {name}: {value} is not a finite number")
        elif t is str:
            if len(value) > MAX_STR:
                raise Rejected(f"field {name}: string longer than {MAX_STR}")
        elif t is int:
            if not -(2**63) <= value < 2**63:
                raise Rejected(f"field {name}: integer out of 64-bit range")
        elif t is not bool:
            raise Rejected(f"field {name}: {_tname(value)} is not a number, string or boolean")
        rule = spec.get(name) or common.get(name)
        if rule is not None:
            typ, lo, hi = rule
            if t is not int and t is not float:
                raise Rejected(f"field {name} must be a number, got {_tname(value)}")
            if typ is int and t is float and not value.is_integer():
                raise Rejected(f"field {name} must be an integer, got {value}")
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                raise Rejected(f"field {name}={value} out of range [{lo}, {hi}]")
        out[name] = value
    return out


def decode(topic: str, payload: bytes, device: Device | None, recv_ns: int, *,
           max_bytes: int = 65536, max_skew_s: float = 300.0) -> Message:
    """Validate one message against the spec and the device's kind; returns the record or raises Rejected."""
    device_id, channel = parse_topic(topic)
    if device is None:
        raise Rejected("unknown device", device_id)
    try:
        body = decode_body(payload, max_bytes)
        seq = body.get("seq")
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < 2**63:
            raise Rejected(f"seq must be a non-negative integer, got {_tname(seq)}"
                           + (f" {seq}" if isinstance(seq, int) else ""))
        ts = parse_ts(body["ts"]) if "ts" in body else None
        fields: dict[str, Any]
        tags = dict(_tags(device.kind, device.model, device.admin_code))
        if channel == "telemetry":
            fields = _check_fields(body.get("fields"), KIND_FIELDS.get(device.kind, {}))
            kind, prio = device.kind, Priority.TELEMETRY
        elif channel == "position":
            fields = _check_fields(body.get("fields"), POSITION_FIELDS)
            if "lat" not in fields or "lon" not in fields:
                raise Rejected("position needs fields.lat and fields.lon")
            kind, prio = "position", Priority.POSITION
        elif channel == "status":
            fields = _check_fields(body.get("fields", {}), KIND_FIELDS.get(device.kind, {}))
            kind, prio = "status", Priority.TELEMETRY
        elif channel == "alarm":
            fields = _check_fields(body.get("fields", {}), KIND_FIELDS.get(device.kind, {}))
            alarm, severity = body.get("alarm"), body.get("severity", "major")
            if not isinstance(alarm, str) or not alarm or len(alarm) > MAX_STR:
                raise Rejected("alarm channel needs \"alarm\": a non-empty string")
            if severity not in SEVERITIES:
                raise Rejected(f"severity must be one of {', '.join(SEVERITIES)}")
            fields.update(alarm=alarm, severity=severity)
            kind, prio = "alarm", Priority.ALARM
        else:  # ack
            fields = _check_fields(body.get("fields", {}), {})
            cmd_id, result = body.get("cmd_id"), body.get("result")
            if not isinstance(cmd_id, str) or not cmd_id or len(cmd_id) > 128:
                raise Rejected("ack channel needs \"cmd_id\": a non-empty string")
            if result not in ACK_RESULTS:
                raise Rejected(f"ack result must be one of {', '.join(ACK_RESULTS)}")
            fields.update(cmd_id=cmd_id, result=result)
            kind, prio = "cmd_ack", Priority.COMMAND
        if not fields:
            raise Rejected(f"{channel} message has no fields")
        suspect = False
        if ts is None:
            ts = recv_ns
            tags["clock"] = "hub"
        elif abs(ts - recv_ns) > max_skew_s * 1e9:
            suspect = True
            tags["clock"] = "suspect"
            fields["clock_skew_s"] = round((ts - recv_ns) / 1e9, 3)
        fields["seq"] = seq
        fields["hub_rx_ns"] = recv_ns
        # fields are checked above (scalars, finite, named): build the record without a second pass
        rec = Record(kind, device_id, ts, fields, tags, prio, SOURCE, stable_id(SOURCE, device_id, kind, seq))
    except Rejected as exc:
        exc.device_id = device_id
        raise
    except ValidationError as exc:
        raise Rejected(str(exc), device_id) from None
    return Message(device_id, channel, seq, rec, digest(payload), suspect)


@lru_cache(maxsize=4096)
def _tags(kind: str, model: str, admin_code: str) -> dict[str, str]:
    return Device("x", kind, admin_code, model).tags()


def digest(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=8).digest()


def down_topic(device_id: str) -> str:
    return f"fh/{device_id}/down/cmd"


def up_topic(device_id: str, channel: str) -> str:
    return f"fh/{device_id}/up/{channel}"


def is_will(channel: str, payload: bytes) -> bool:
    """The last will a device registers: ``{"online": false}`` on its status channel, no seq."""
    if channel != "status" or len(payload) > 256:
        return False
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and body.get("online") is False and "seq" not in body


def utc_ms(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns / 1e9, tz=UTC).isoformat(timespec="milliseconds")

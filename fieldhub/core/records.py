"""The one normalised record type shared by every driver and consumer."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import orjson

from fieldhub.core.errors import ValidationError


class Priority(IntEnum):
    """Priority classes, highest first; lower value = more urgent."""

    ALARM = 0
    COMMAND = 1
    DRILL = 2
    POSITION = 3
    TELEMETRY = 4
    BULK = 5

    @classmethod
    def parse(cls, value: Priority | str | int) -> Priority:
        if isinstance(value, Priority):
            return value
        if isinstance(value, int):
            return cls(value)
        try:
            return cls[str(value).upper()]
        except KeyError:
            raise ValidationError(
                f"unknown priority class {value!r}; one of {', '.join(PRIORITY_NAMES)}") from None

    @property
    def label(self) -> str:
        return self.name.lower()


PRIORITY_NAMES = tuple(p.label for p in Priority)
_PRIO_BY_NAME: dict[object, Priority] = {p.label: p for p in Priority}
_GOOD_KINDS: set[str] = set()
#: classes that disk-cap eviction never removes
PROTECTED = frozenset({Priority.ALARM, Priority.COMMAND})

FieldValue = int | float | str | bool
_KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def now_ns() -> int:
    """Current UTC time in nanoseconds since the epoch."""
    return time.time_ns()


def stable_id(source: str, device_id: str, kind: str, key: object) -> str:
    """A stable record id: the same source event always yields the same id (idempotent replays)."""
    raw = f"{source}\x1f{device_id}\x1f{kind}\x1f{key}".encode()
    return hashlib.blake2b(raw, digest_size=10).hexdigest()


@dataclass(frozen=True, slots=True)
class Record:
    """One measurement or event.

    kind: measurement name (``position``, ``water_level``...); device_id: registry id;
    ts: event time in ns UTC; fields: scalar values; tags: string metadata;
    priority: class used by eviction and uplink order; source: which ingest path made it
    (``mqtt``, ``serial:nmea``...); id: stable id, so replays are idempotent downstream.
    """

    kind: str
    device_id: str
    ts: int
    fields: Mapping[str, FieldValue]
    tags: Mapping[str, str] = field(default_factory=dict)
    priority: Priority = Priority.TELEMETRY
    source: str = ""
    id: str = ""

    @classmethod
    def make(cls, kind: str, device_id: str, ts: int, fields: Mapping[str, Any], *,
             tags: Mapping[str, str] | None = None, priority: Priority | str = Priority.TELEMETRY,
             source: str = "", key: object = None) -> Record:
        """Build a validated record; ``key`` (default: ts) makes the stable id unique per event."""
        if kind not in _GOOD_KINDS:
            if not _KIND_RE.match(kind or ""):
                raise ValidationError(f"bad record kind {kind!r}: lower-case letters, digits, '_'")
            if len(_GOOD_KINDS) < 10_000:
                _GOOD_KINDS.add(kind)
        if not device_id:
            raise ValidationError("record without device_id")
        if type(ts) is not int:
            if not isinstance(ts, int) or isinstance(ts, bool):
                raise ValidationError(f"ts must be integer ns, got {type(ts).__name__}")
            ts = int(ts)
        for name, value in fields.items():
            t = type(value)
            if t is float:
                if value != value:
                    raise ValidationError(f"field {name!r} is NaN")
            elif t is not int and t is not str and t is not bool:
                if not isinstance(value, (int, float, str, bool)):
                    raise ValidationError(f"field {name!r}: {t.__name__} is not a scalar")
                if isinstance(value, float) and value != value:
                    raise ValidationError(f"field {name!r} is NaN")
            if type(name) is not str or not name:
                raise ValidationError(f"field name {name!r} is not a non-empty string")
        if not fields:
            raise ValidationError(f"record {kind} from {device_id} has no fields")
        clean = dict(fields)
        prio = priority if type(priority) is Priority else _PRIO_BY_NAME.get(priority)
        if prio is None:
            prio = Priority.parse(priority)
        rid = stable_id(source, device_id, kind, ts if key is None else key)
        return cls(kind, device_id, ts, clean, dict(tags or {}), prio, source, rid)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "device_id": self.device_id, "ts": self.ts,
                "fields": dict(self.fields), "tags": dict(self.tags),
                "priority": self.priority.label, "source": self.source}

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Record:
        return cls(d["kind"], d["device_id"], int(d["ts"]), d["fields"], d.get("tags") or {},
                   Priority.parse(d.get("priority", "telemetry")), d.get("source", ""), d["id"])

    @classmethod
    def from_json(cls, data: bytes | str) -> Record:
        return cls.from_dict(orjson.loads(data))

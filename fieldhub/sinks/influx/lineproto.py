"""Records to InfluxDB line protocol: the one encoder both write modes (v1 ``/write``, v2 API) use.

Schema (``docs/influxdb.md``): measurement = record kind; tags = the record's tags (``kind``
of device, ``model``, ``admin_code``, ``level``, ``county``...) plus ``device_id`` and ``hub``,
empty values left out, keys sorted; fields as typed (int ``i``, float, bool, string);
timestamp in ns. Two records of one series at the same coarse timestamp are kept apart by a
deterministic nudge below the timestamp's own precision (see ``nudge``).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping

from fieldhub.core.records import Record

_ESC_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n", "\r": r"\r", "\t": r"\t"})
_ESC_KEY = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\r": r"\r", "\t": r"\t"})
_ESC_STRING = str.maketrans({'"': r"\"", "\\": r"\\"})

#: what ``same_timestamp`` may be
SAME_TS_POLICIES = ("nudge", "overwrite")


def escape_key(text: str) -> str:
    """Escape a tag key, tag value or field key."""
    out = text.translate(_ESC_KEY)
    return out + " " if out.endswith("\\") else out


def escape_measurement(text: str) -> str:
    return text.translate(_ESC_MEASUREMENT)


def nudge(record_id: str, ts: int) -> int:
    """Nanoseconds to add to ``ts`` so two records of one series with the same coarse timestamp
    but different ids stay two points.

    The offset is derived from the record id (a replay gets the same one, so rewrites stay
    idempotent) and stays below the timestamp's own precision: a whole-millisecond timestamp
    moves by less than 1 ms, a whole-microsecond one by less than 1 µs, a nanosecond one not
    at all. Truncated to its own precision the written time equals the record's.
    """
    if ts % 1000:
        return 0
    try:
        h = int(record_id[:12], 16)
    except ValueError:
        h = zlib.crc32(record_id.encode())
    return h % 1_000_000 if ts % 1_000_000 == 0 else h % 1000


def format_field(value: object) -> str | None:
    """One field value in line protocol, or None when it cannot be written (inf, nan, or
    None: the log stores nan and inf as JSON null)."""
    if type(value) is float:
        if not math.isfinite(value):
            return None
        return repr(value)
    if type(value) is int:
        return f"{value}i"
    if type(value) is bool:
        return "true" if value else "false"
    if type(value) is str:
        return '"' + value.translate(_ESC_STRING) + '"'
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{int(value)}i"
    if isinstance(value, float):
        return repr(float(value)) if math.isfinite(value) else None
    return '"' + str(value).translate(_ESC_STRING) + '"'


class Encoder:
    """Encodes records; caches the escaped series key (measurement + tags) per device."""

    def __init__(self, hub_id: str = "", *, same_timestamp: str = "nudge",
                 tags_for: Callable[[str], Mapping[str, str]] | None = None) -> None:
        if same_timestamp not in SAME_TS_POLICIES:
            raise ValueError(f"same_timestamp must be one of {', '.join(SAME_TS_POLICIES)}")
        self.hub_id = hub_id
        self.nudge = same_timestamp == "nudge"
        self.tags_for = tags_for
        self._series: dict[tuple[str, str], tuple[dict, str]] = {}
        self._fkeys: dict[str, str] = {}

    def forget(self) -> None:
        """Drop cached series keys (device tags may have changed)."""
        self._series.clear()

    def series_key(self, kind: str, device_id: str, tags: Mapping[str, str]) -> str:
        """Escaped ``measurement,tag=value,...`` for a record, cached per kind and device."""
        key = (kind, device_id)
        cached = self._series.get(key)
        if cached is not None and cached[0] == tags:
            return cached[1]
        merged: dict[str, str] = {}
        if self.tags_for is not None:
            merged.update({k: v for k, v in self.tags_for(device_id).items() if v})
        merged.update({k: str(v) for k, v in tags.items() if v not in ("", None)})
        merged["device_id"] = device_id
        if self.hub_id:
            merged.setdefault("hub", self.hub_id)
        parts = [escape_measurement(kind)]
        for k in sorted(merged):
            parts.append(f"{escape_key(k)}={escape_key(merged[k])}")
        text = ",".join(parts)
        if len(self._series) > 100_000:
            self._series.clear()
        self._series[key] = (dict(tags), text)
        return text

    def encode(self, record: Record) -> bytes | None:
        """One line (no newline), or None when the record has no writable field."""
        return self.line(record.kind, record.device_id, record.ts, record.fields, record.tags, record.id)

    def line(self, kind: str, device_id: str, ts: int, fields: Mapping[str, object],
             tags: Mapping[str, str], record_id: str) -> bytes | None:
        """The hot path (the sink calls it for every record): one line, or None if nothing is writable."""
        out = []
        fkeys = self._fkeys
        for name, v in fields.items():
            k = fkeys.get(name)
            if k is None:
                if len(fkeys) > 10_000:
                    fkeys.clear()
                k = fkeys[name] = escape_key(name)
            if type(v) is float:
                if v - v != 0:  # inf or nan: line protocol has no way to say it
                    continue
                out.append(f"{k}={v!r}")
            elif type(v) is int:
                out.append(f"{k}={v}i")
            else:
                text = format_field(v)
                if text is not None:
                    out.append(f"{k}={text}")
        if not out:
            return None
        if self.nudge and not ts % 1000:
            ts += nudge(record_id, ts)
        return f"{self.series_key(kind, device_id, tags)} {','.join(out)} {ts}".encode()

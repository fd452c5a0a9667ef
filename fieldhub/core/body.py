"""The durable log's record body: the one place that knows its keys.

A record is stored as the compact JSON object (orjson) of
``{"k": kind, "d": device_id, "t": ts, "f": fields, "g": tags, "s": source, "i": id}``;
its priority is the row's own column. Nothing else in Python reads or writes these keys:
the log and its view call ``encode``/``decode``, the InfluxDB sink's Python encoder calls
``line_parts``. The sink's C encoder (``fieldhub/sinks/influx/_lpenc.c``) walks the same
bytes; its copy of the keys (``BODY_KEY_*``) is checked against ``C_KEYS`` by
``tests/test_body.py``: change both together.
"""

from __future__ import annotations

from typing import Any

import orjson

from fieldhub.core.records import Priority, Record

KIND = "k"
DEVICE = "d"
TS = "t"
FIELDS = "f"
TAGS = "g"
SOURCE = "s"
ID = "i"

#: every key of a body, by Record attribute
KEYS: dict[str, str] = {"kind": KIND, "device_id": DEVICE, "ts": TS, "fields": FIELDS, "tags": TAGS,
                        "source": SOURCE, "id": ID}
#: the keys the C encoder reads (it skips ``source``), by the names of its ``BODY_KEY_*`` macros
C_KEYS: dict[str, str] = {"KIND": KIND, "DEVICE": DEVICE, "TS": TS, "FIELDS": FIELDS, "TAGS": TAGS, "ID": ID}


def encode(r: Record) -> bytes:
    """The stored form of a record (its priority is stored beside it, not in it)."""
    return orjson.dumps({KIND: r.kind, DEVICE: r.device_id, TS: r.ts, FIELDS: r.fields, TAGS: r.tags,
                         SOURCE: r.source, ID: r.id})


def decode(body: bytes | str, prio: int) -> Record:
    """The Record a log row holds (its ``body`` and ``prio`` columns); raises ValueError
    (orjson.JSONDecodeError), KeyError or TypeError on a damaged body."""
    d = orjson.loads(body)
    return Record(d[KIND], d[DEVICE], d[TS], d[FIELDS], d[TAGS], Priority(prio), d[SOURCE], d[ID])


def line_parts(body: bytes | str) -> tuple[Any, Any, Any, Any, Any, Any]:
    """What a line of InfluxDB line protocol needs from a body, without making a Record:
    ``(kind, device_id, ts, fields, tags, id)``, values as stored (a damaged body may hold
    any JSON there); raises like ``decode``."""
    d = orjson.loads(body)
    return d[KIND], d[DEVICE], d[TS], d[FIELDS], d[TAGS], d[ID]

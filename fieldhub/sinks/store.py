"""The local store: the embedded default sink, a SQLite time series queryable by kind, device, time."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from fieldhub.core.component import HubContext
from fieldhub.core.config import Duration
from fieldhub.core.consumer import ConsumerRunner
from fieldhub.core.datadir import STORE_FILE
from fieldhub.core.db import connect
from fieldhub.core.errors import StorageError
from fieldhub.core.records import Priority, Record

#: a device with no record for this long is shown offline (presence may refine this)
DEFAULT_OFFLINE_AFTER_S = 600

SCHEMA = """
CREATE TABLE IF NOT EXISTS points(
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    device_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    source TEXT NOT NULL,
    fields TEXT NOT NULL,
    tags TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS points_kind_ts ON points(kind, ts);
CREATE INDEX IF NOT EXISTS points_device_ts ON points(device_id, ts);
"""

# a record replaces the stored one of its id only when that is a short-message summary
# (tags via=beidou) and the new one is not: the full record, arrived later over another link
_UPSERT = ("INSERT INTO points VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
           "kind=excluded.kind, device_id=excluded.device_id, ts=excluded.ts, priority=excluded.priority, "
           "source=excluded.source, fields=excluded.fields, tags=excluded.tags "
           "WHERE json_extract(points.tags, '$.via') = 'beidou' "
           "AND json_extract(excluded.tags, '$.via') IS NOT 'beidou'")


@dataclass(frozen=True)
class StoreConfig:
    """[store] the embedded local time-series store (SQLite)."""

    enabled: bool = True
    #: records older than this (by their timestamp) are deleted
    retention: Duration = Duration(90 * 86400)
    #: records per write batch
    batch: int = 5000


class LocalStore:
    """Records by id (idempotent inserts), indexed by kind/time and device/time."""

    name = "store"
    #: what errors call it
    what = "local store"

    def __init__(self, path: Path | str, *, retention: float | None = None, readonly: bool = False) -> None:
        self.path = Path(path)
        self.retention = retention
        if readonly and not self.path.exists():
            raise StorageError(f"no local store at {self.path} (has the hub run with this data dir?)")
        self._db = connect(self.path, readonly=readonly)
        if not readonly:
            self._db.executescript(SCHEMA)
        self._lock = threading.Lock()
        self._last_purge = 0.0

    def write(self, records: Sequence[Record]) -> None:
        rows = [(r.id, r.kind, r.device_id, r.ts, int(r.priority), r.source,
                 orjson.dumps(r.fields).decode(), orjson.dumps(r.tags).decode()) for r in records]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR IGNORE INTO points VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if self.retention and time.monotonic() - self._last_purge > 60:
            self.purge()

    def upsert(self, records: Sequence[Record], extra_tags: dict[str, str] | None = None) -> tuple[int, int]:
        """Durably write, each record's tags plus ``extra_tags``; returns (stored, duplicates).

        A duplicate id changes nothing, except that a full record replaces a short-message
        summary of itself (counted as stored)."""
        return self._upsert(_UPSERT, records, extra_tags or {})

    def _upsert(self, sql: str, records: Sequence[Record], extra_tags: dict[str, str],
                *extra_cols: str) -> tuple[int, int]:
        """Rows for ``sql`` (the record's columns, its tags plus ``extra_tags``, then ``extra_cols``),
        written in one transaction; (stored, duplicates) from SQLite's change count. A store with
        another key (the center's (hub, id)) passes its own upsert statement."""
        tag_json: dict[tuple, str] = {}  # records of one series share their tags
        rows = []
        for r in records:
            key = tuple(r.tags.items())
            tj = tag_json.get(key)
            if tj is None:
                tj = tag_json[key] = orjson.dumps({**r.tags, **extra_tags}).decode()
            rows.append((r.id, r.kind, r.device_id, r.ts, int(r.priority), r.source,
                         orjson.dumps(r.fields).decode(), tj, *extra_cols))
        rows.sort()  # in key order: B-tree inserts stay local
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                before = db.total_changes
                db.executemany(sql, rows)
                stored = db.total_changes - before  # new records, and summaries replaced by full ones
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise StorageError(f"{self.what} {self.path}: {exc}") from None
        return stored, len(rows) - stored

    def purge(self, now_ns: int | None = None) -> int:
        """Delete records older than the retention period; returns how many went."""
        if not self.retention:
            return 0
        cutoff = (now_ns or time.time_ns()) - int(self.retention * 1e9)
        with self._lock:
            n = self._db.execute("DELETE FROM points WHERE ts < ?", (cutoff,)).rowcount
        self._last_purge = time.monotonic()
        return n

    def query(self, kind: str | None = None, *, device: str | None = None, since: int | None = None,
              until: int | None = None, limit: int | None = None, order: str = "asc") -> Iterator[Record]:
        """Records matching kind/device within [since, until) (ns), oldest first."""
        where: list[str] = []
        args: list[str | int] = []
        if kind:
            where.append("kind = ?")
            args.append(kind)
        if device:
            where.append("device_id = ?")
            args.append(device)
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        if until is not None:
            where.append("ts < ?")
            args.append(until)
        sql = "SELECT id, kind, device_id, ts, priority, source, fields, tags FROM points"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY ts {'DESC' if order == 'desc' else 'ASC'}, id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        for rid, kind_, dev, ts, prio, source, fields, tags in self._db.execute(sql, args):
            yield Record(kind_, dev, ts, orjson.loads(fields), orjson.loads(tags), Priority(prio), source, rid)

    def counts(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT kind, count(*) FROM points GROUP BY kind ORDER BY kind"))

    def record_count(self) -> int:
        """How many records the store holds; StorageError if the file holds no store."""
        try:
            return self._db.execute("SELECT count(*) FROM points").fetchone()[0]
        except sqlite3.OperationalError as exc:
            raise StorageError(f"{self.what} {self.path}: {exc}") from None

    def device_states(self, device_ids: Sequence[str], now_ns: int,
                      offline_after_s: float = DEFAULT_OFFLINE_AFTER_S) -> dict[str, str]:
        """online/offline per device: an offline ``presence`` record (last will, unplugged port,
        lost heartbeat) newer than the device's last data wins; otherwise the device is online if
        it reported within ``offline_after_s``. StorageError if the file holds no store."""
        out: dict[str, str] = {}
        horizon = now_ns - int(offline_after_s * 1e9)
        db = self._db
        try:
            for dev in device_ids:
                data = db.execute("SELECT ts FROM points WHERE device_id=? AND kind!='presence' "
                                  "ORDER BY ts DESC LIMIT 1", (dev,)).fetchone()
                pres = db.execute("SELECT ts, fields FROM points WHERE device_id=? AND kind='presence' "
                                  "ORDER BY ts DESC LIMIT 1", (dev,)).fetchone()
                last_data = data[0] if data else None
                if pres and (last_data is None or pres[0] >= last_data):
                    online = bool(orjson.loads(pres[1]).get("online"))
                    out[dev] = "online" if online and pres[0] >= horizon else "offline"
                else:
                    out[dev] = "online" if last_data is not None and last_data >= horizon else "offline"
        except sqlite3.OperationalError as exc:
            raise StorageError(f"{self.what} {self.path}: {exc}") from None
        return out

    def close(self) -> None:
        self._db.close()


def build(ctx: HubContext, cfg: StoreConfig) -> ConsumerRunner | None:
    """Hub component builder: the store behind its consumer runner, unless ``[store] enabled = false``."""
    if not cfg.enabled:
        return None
    store = LocalStore(ctx.data_dir / STORE_FILE, retention=cfg.retention or None)
    return ConsumerRunner(ctx.log, store, batch=cfg.batch, oplog=ctx.oplog)

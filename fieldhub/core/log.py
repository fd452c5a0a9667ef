"""The durable log: group-committed appends, per-consumer cursors per priority class, disk cap.

One SQLite file in WAL mode with ``synchronous=FULL``. A single writer thread owns the only
write connection; appends, cursor moves and maintenance are queued to it and committed in
groups (every ``commit_interval`` or ``commit_max`` records), and each caller is told only
after the commit is on disk. Readers use their own connections.

A consumer's cursor is one sequence number per priority class: it reads the most urgent
class first and can acknowledge what it has delivered class by class. Records every
registered cursor has passed are compacted away; when the disk cap is reached, the
lowest-priority, oldest records are evicted first (never ``alarm`` or ``command``), and
each eviction is counted, raised as an alarm record and written to the operator log.

A record's stored body is ``fieldhub.core.body``'s format; everything that reads the log
goes through its public view (``DurableLog.view()``, ``fieldhub.core.logview``).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import orjson

from fieldhub.core import audit, body
from fieldhub.core.db import connect
from fieldhub.core.errors import DiskFullError, StorageError
from fieldhub.core.logview import Entry, LogView
from fieldhub.core.oplog import OpLog
from fieldhub.core.records import PROTECTED, Priority, Record, now_ns
from fieldhub.core.worker import Worker

__all__ = ["AppendResult", "Cursor", "DurableLog", "Entry", "LogView", "connect"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS log(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: cursors stay valid after compaction
    id TEXT NOT NULL,
    prio INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS log_id ON log(id);
CREATE INDEX IF NOT EXISTS log_prio ON log(prio, seq);
CREATE TABLE IF NOT EXISTS cursors(
    consumer TEXT NOT NULL, prio INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY(consumer, prio)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quarantine(
    qid INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    source TEXT NOT NULL,
    device_id TEXT,
    reason TEXT NOT NULL,
    payload BLOB,
    meta TEXT,
    state TEXT NOT NULL DEFAULT 'held',
    qkey TEXT  -- the item's identity (see DurableLog.quarantine): stored once however often it comes
);
CREATE INDEX IF NOT EXISTS quarantine_state ON quarantine(state, qid);
"""
#: run after SCHEMA: files made before quarantine had an identity get the column, then the index
_MIGRATE_QKEY = "ALTER TABLE quarantine ADD COLUMN qkey TEXT"
_QKEY_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS quarantine_key ON quarantine(qkey)"

Callback = Callable[["AppendResult | None", "BaseException | None"], None]
QuarantineCallback = Callable[["int | None", "BaseException | None"], None]


class QuarantineId(int):
    """The qid of a quarantined item; ``repeat`` is True when an item with the same identity was
    already held (nothing new was stored)."""

    repeat: bool = False

    @classmethod
    def of(cls, qid: int, repeat: bool) -> QuarantineId:
        q = cls(qid)
        q.repeat = repeat
        return q


def quarantine_key(source: str, key: bytes | str) -> str:
    """The stored identity of a quarantined item: a hash of its source and its caller's key."""
    raw = key.encode("utf-8", "surrogateescape") if isinstance(key, str) else key
    return hashlib.blake2b(source.encode() + b"\x1f" + raw, digest_size=16).hexdigest()
#: what the writer calls back with; the result's type depends on the op's kind
_OpCallback = Callable[[Any, "BaseException | None"], None]


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What a durable append did: how many records were new and how many were duplicates."""

    added: int
    duplicates: int


@dataclass
class _Op:
    kind: str
    payload: object
    callback: _OpCallback | None = None
    done: threading.Event | None = None
    result: object = None
    error: BaseException | None = None
    size: int = 1

    def finish(self, result: object, error: BaseException | None) -> None:
        self.result, self.error = result, error
        if self.callback is not None:
            self.callback(result, error)
        if self.done is not None:
            self.done.set()


#: how long ``close`` waits for the writer to commit what is queued
CLOSE_TIMEOUT = 60.0


class DurableLog:
    """Append-only record log with per-consumer cursors; see the module docstring."""

    def __init__(self, path: Path | str, *, commit_interval: float = 0.01, commit_max: int = 2000,
                 disk_cap: int | None = None, max_pending: int = 50_000,
                 compact_interval: float = 5.0, oplog: OpLog | None = None,
                 hub_id: str = "hub") -> None:
        self.path = Path(path)
        self.commit_interval = commit_interval
        self.commit_max = commit_max
        self.disk_cap = disk_cap
        self.compact_interval = compact_interval
        self.oplog = oplog or OpLog(None)
        self.hub_id = hub_id
        self._ops: deque[_Op | None] = deque()
        self._wake = threading.Event()
        # backpressure: appenders wait while this many records are queued but not committed
        self._max_pending = max_pending
        self._blocked = 0
        self._pending_cv = threading.Condition()
        self._changed = threading.Condition()
        self._last_seq = 0
        self._closed = False
        self._local = threading.local()
        self._view = LogView(self._reader)
        self.stats = {"appended": 0, "duplicates": 0, "commits": 0, "evicted": 0,
                      "compacted": 0, "append_errors": 0, "disk_full": 0}
        self._open()
        # the writer ends on the ``None`` close() queues, after committing everything before it
        self._writer = Worker("log-writer", lambda _stop: self._run()).start()

    # ---------------------------------------------------------------- opening, recovery
    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = connect(self.path)
            check = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            self._recover(exc)
        cols = {r[1] for r in self._db.execute("PRAGMA table_info(quarantine)")}
        if "qkey" not in cols:
            self._db.execute(_MIGRATE_QKEY)
        self._db.execute(_QKEY_INDEX)
        if self.disk_cap:
            # the WAL is disk too: checkpoint it (and truncate it back) long before it could
            # outgrow the cap; SQLite's defaults let it reach ~4 MB and never shrink
            page = self._db.execute("PRAGMA page_size").fetchone()[0]
            self._db.execute(f"PRAGMA journal_size_limit={self._wal_allowance()}")
            self._db.execute(f"PRAGMA wal_autocheckpoint={max(16, min(1000, self._wal_allowance() // page))}")
        self._last_seq = self._high_water()
        self._counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())

    def _high_water(self) -> int:
        """The highest seq ever used; never below any cursor, so new records are never skipped."""
        db = self._db
        used = db.execute("SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name='log'").fetchone()[0]
        top = max(used, db.execute("SELECT coalesce(max(seq), 0) FROM log").fetchone()[0],
                  db.execute("SELECT coalesce(max(seq), 0) FROM cursors").fetchone()[0])
        if top > used:
            db.execute("DELETE FROM sqlite_sequence WHERE name='log'")
            db.execute("INSERT INTO sqlite_sequence(name, seq) VALUES ('log', ?)", (top,))
        return top

    def _recover(self, exc: BaseException) -> None:
        """A damaged file: move it aside, salvage every readable row, start a clean file."""
        try:
            self._db.close()
        except Exception:  # noqa: BLE001 - closing a broken handle may fail; nothing to save
            pass
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                os.replace(src, Path(str(aside) + suffix))
        self._db = connect(self.path)
        self._db.executescript(SCHEMA)
        salvaged = self._salvage(aside)
        self.oplog.write("error", "log_recovered",
                         f"log file {self.path} was damaged ({exc}); moved to {aside.name}, "
                         f"{salvaged} records salvaged",
                         f"日志文件损坏（{exc}），已移至 {aside.name}，抢救 {salvaged} 条记录",
                         salvaged=salvaged)

    @staticmethod
    def _columns(db: sqlite3.Connection, table: str) -> set[str]:
        try:
            return {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
        except sqlite3.DatabaseError:
            return set()

    def _salvage(self, aside: Path) -> int:
        try:
            old = sqlite3.connect(f"file:{aside}?mode=ro", uri=True)
        except sqlite3.DatabaseError:
            return 0
        saved = 0
        try:
            for table, cols in (("log", "seq, id, prio, body"),
                                ("cursors", "consumer, prio, seq"),
                                ("counters", "name, value"),
                                ("quarantine", "qid, ts, source, device_id, reason, payload, meta, state"
                                 + (", qkey" if "qkey" in self._columns(old, "quarantine") else ""))):
                marks = ",".join("?" * len(cols.split(",")))
                try:
                    rows = old.execute(f"SELECT {cols} FROM {table}")
                    while True:
                        try:
                            row = rows.fetchone()
                        except sqlite3.DatabaseError:
                            break
                        if row is None:
                            break
                        self._db.execute(f"INSERT OR IGNORE INTO {table}({cols}) VALUES ({marks})", row)
                        saved += table == "log"
                except sqlite3.DatabaseError:
                    continue
        finally:
            old.close()
        return saved

    # ---------------------------------------------------------------- writing
    def append(self, records: Sequence[Record], callback: Callback | None = None,
               timeout: float | None = None) -> AppendResult | None:
        """Append records durably.

        Without ``callback`` this blocks until the records are on disk and returns the
        result (raising StorageError/DiskFullError on failure). With ``callback`` it returns
        at once and the callback runs on the writer thread after the commit, with
        ``(result, None)`` or ``(None, error)``: acknowledge the source only then.
        """
        if not records:
            if callback is not None:
                callback(AppendResult(0, 0), None)
            return AppendResult(0, 0)
        return self._submit("append", list(records), callback, timeout, size=len(records))

    def quarantine(self, source: str, reason: str, payload: bytes | str | None, *,
                   device_id: str | None = None, meta: dict | None = None,
                   callback: QuarantineCallback | None = None, key: bytes | str | None = None) -> int | None:
        """Put something that could not be admitted into the dead-letter area, durably.

        ``key`` is the item's identity (MQTT: topic and payload): an item whose identity is
        already held is not stored again (a retained or redelivered message arrives at every
        restart), the result is the held item's qid with ``repeat`` set, and the
        ``quarantine_repeats`` counter counts it. Without a key every call stores a new item.
        """
        if isinstance(payload, str):
            payload = payload.encode("utf-8", "surrogateescape")
        row = (now_ns(), source, device_id, reason, payload,
               orjson.dumps(meta).decode() if meta else None,
               quarantine_key(source, key) if key is not None else None)
        return self._submit("quarantine", row, callback, None)

    def set_quarantine_state(self, qids: Iterable[int], state: str) -> int:
        return self._submit("qstate", (list(qids), state), None, None)

    def commit_cursor(self, consumer: str, positions: dict[int, int]) -> None:
        """Durably move a consumer's cursor to the given seq per priority class."""
        self._submit("cursor", (consumer, dict(positions)), None, None)

    def register_consumer(self, consumer: str, start: str = "earliest") -> None:
        """Create a consumer's cursor if it does not exist (``earliest`` or ``latest``)."""
        self._submit("register", (consumer, start), None, None)

    def view(self) -> LogView:
        """The public read-only view of this log (raw batches, quarantine, backlog, status)."""
        return self._view

    def backlog(self, consumer: str) -> dict[str, int]:
        """Records ``consumer`` has not passed yet, per priority class ({} if no such consumer)."""
        return self._view.backlog(consumer)

    def consumer_names(self) -> list[str]:
        return self._view.consumer_names()

    def drop_consumer(self, consumer: str) -> None:
        self._submit("drop", consumer, None, None)

    def bump(self, name: str, by: int = 1) -> None:
        """Add to a persisted counter (visible in ``fieldhub status`` even when stopped)."""
        self._submit("bump", (name, by), lambda r, e: None, None)

    def _submit(self, kind: str, payload: object, callback: _OpCallback | None,
                timeout: float | None, size: int = 1):
        if self._closed:
            raise StorageError("the log is closed")
        if kind == "append" and self._max_pending and len(self._ops) >= self._max_pending:
            self._wait_for_room(timeout if timeout is not None else 60)
        op = _Op(kind, payload, callback, None if callback else threading.Event(), size=size)
        self._ops.append(op)
        if not self._wake.is_set():
            self._wake.set()
        if callback is not None:
            return None
        assert op.done is not None
        if not op.done.wait(timeout):
            raise StorageError(f"log {kind} not durable within {timeout}s")
        if op.error is not None:
            raise op.error
        return op.result

    def _run(self) -> None:
        """Writer loop: take what is queued (waiting up to ``commit_interval`` for more, at most
        ``commit_max`` records), commit it in one transaction, tell every waiter."""
        ops = self._ops
        next_maint = time.monotonic() + self.compact_interval
        stop = False
        while not stop:
            if not ops:
                self._wake.wait(max(0.0, min(1.0, next_maint - time.monotonic())))
                self._wake.clear()
            group: list[_Op] = []
            n = 0
            deadline = time.monotonic() + self.commit_interval
            while n < self.commit_max:
                if not ops:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not group:
                        break
                    self._wake.wait(remaining)
                    self._wake.clear()
                    continue
                op = ops.popleft()
                if op is None:
                    stop = True
                    break
                group.append(op)
                n += op.size
            if group:
                self._commit_group(group)
            if time.monotonic() >= next_maint:
                done = self._maintain()
                next_maint = time.monotonic() + (self.compact_interval if done else 0.005)
        self._maintain(budget=None)

    def _commit_group(self, group: list[_Op]) -> None:
        db = self._db
        results: list[tuple[_Op, object]] = []
        top = self._last_seq
        try:
            if self.disk_cap and any(op.kind == "append" for op in group):
                self._enforce_cap(group)
            db.execute("BEGIN IMMEDIATE")
            appends = [op for op in group if op.kind == "append"]
            bulk = self._bulk_append(appends) if len(appends) > 1 else {}
            for op in group:
                results.append((op, bulk[id(op)] if id(op) in bulk else self._apply(op)))
            db.execute("COMMIT")
        except BaseException as exc:  # noqa: BLE001 - every waiter must hear about the failure
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            err = self._map_error(exc)
            self.stats["append_errors"] += 1
            self._release()
            for op in group:
                op.finish(None, err)
            return
        self.stats["commits"] += 1
        self._release()
        for op, result in results:
            if op.kind == "append":
                assert isinstance(result, AppendResult)
                self.stats["appended"] += result.added
                self.stats["duplicates"] += result.duplicates
        if any(op.kind == "maint" for op in group):
            self._maintain(budget=None)
        for op, result in results:
            op.finish(result, None)
        if self._last_seq != top:
            with self._changed:
                self._changed.notify_all()

    def _wait_for_room(self, timeout: float) -> None:
        """Backpressure: block the appender while too many appends are queued."""
        deadline = time.monotonic() + timeout
        with self._pending_cv:
            self._blocked += 1
            try:
                while len(self._ops) >= self._max_pending:
                    if time.monotonic() > deadline:
                        raise StorageError("the log writer is not keeping up (pending queue full)")
                    self._pending_cv.wait(0.05)
            finally:
                self._blocked -= 1

    def _release(self) -> None:
        if self._blocked:
            with self._pending_cv:
                self._pending_cv.notify_all()

    def _map_error(self, exc: BaseException) -> BaseException:
        if isinstance(exc, DiskFullError):
            return exc
        text = str(exc)
        if isinstance(exc, sqlite3.OperationalError) and ("full" in text or "disk I/O" in text):
            self.stats["disk_full"] += 1
            self.oplog.write("error", "disk_full", f"log write failed: {text}",
                             f"日志写入失败（磁盘已满）：{text}")
            return DiskFullError(f"log {self.path}: cannot write, disk full or failing ({text}) "
                                 f"/ 磁盘已满或故障，无法写入")
        if isinstance(exc, (sqlite3.Error, OSError)):
            self.oplog.write("error", "log_write_failed", f"log write failed: {text}",
                             f"日志写入失败：{text}")
            return StorageError(f"log {self.path}: {text}")
        return exc

    def _bulk_append(self, ops: list[_Op]) -> dict[int, AppendResult]:
        """All appends of a group in one statement; if any id was a duplicate, redo them one
        by one so each caller learns its own count (duplicates are rare: redeliveries)."""
        db = self._db
        rows = [(r.id, int(r.priority), body.encode(r)) for op in ops
                for r in cast("list[Record]", op.payload)]
        db.execute("SAVEPOINT bulk")
        before = db.total_changes
        db.executemany("INSERT OR IGNORE INTO log(id, prio, body) VALUES (?, ?, ?)", rows)
        if db.total_changes - before != len(rows):
            db.execute("ROLLBACK TO bulk")
            db.execute("RELEASE bulk")
            return {}
        db.execute("RELEASE bulk")
        self._last_seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name='log'").fetchone()[0]
        return {id(op): AppendResult(op.size, 0) for op in ops}

    def _apply(self, op: _Op) -> object:
        db = self._db
        if op.kind == "append":
            records = cast("list[Record]", op.payload)
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO log(id, prio, body) VALUES (?, ?, ?)",
                [(r.id, int(r.priority), body.encode(r)) for r in records])
            added = db.total_changes - before
            if added:
                self._last_seq = db.execute(
                    "SELECT seq FROM sqlite_sequence WHERE name='log'").fetchone()[0]
            return AppendResult(added, len(records) - added)
        if op.kind == "cursor":
            consumer, positions = cast("tuple[str, dict[int, int]]", op.payload)
            db.executemany(
                "INSERT INTO cursors(consumer, prio, seq) VALUES (?, ?, ?) "
                "ON CONFLICT(consumer, prio) DO UPDATE SET seq=max(seq, excluded.seq)",
                [(consumer, int(p), int(s)) for p, s in positions.items()])
            return None
        if op.kind == "register":
            consumer, start = cast("tuple[str, str]", op.payload)
            exists = db.execute("SELECT 1 FROM cursors WHERE consumer=? LIMIT 1", (consumer,)).fetchone()
            if not exists:
                seq = self._last_seq if start == "latest" else 0
                db.executemany("INSERT INTO cursors(consumer, prio, seq) VALUES (?, ?, ?)",
                               [(consumer, int(p), seq) for p in Priority])
            return None
        if op.kind == "drop":
            db.execute("DELETE FROM cursors WHERE consumer=?", (op.payload,))
            return None
        if op.kind == "quarantine":
            row = cast("tuple[object, ...]", op.payload)
            cur = db.execute("INSERT INTO quarantine(ts, source, device_id, reason, payload, meta, qkey) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(qkey) DO NOTHING", row)
            if cur.rowcount == 0:  # the same identity is already held
                self._count_in_tx("quarantine_repeats", 1)
                held = db.execute("SELECT qid FROM quarantine WHERE qkey=?", (row[6],)).fetchone()
                return QuarantineId.of(held[0], True)
            self._count_in_tx("quarantined", 1)
            return QuarantineId.of(cur.lastrowid or 0, False)
        if op.kind == "qstate":
            qids, state = cast("tuple[list[int], str]", op.payload)
            before = db.total_changes
            db.executemany("UPDATE quarantine SET state=? WHERE qid=?", [(state, q) for q in qids])
            return db.total_changes - before
        if op.kind == "bump":
            name, by = cast("tuple[str, int]", op.payload)
            self._count_in_tx(name, by)
            return None
        if op.kind == "maint":
            return None
        raise ValueError(op.kind)

    def _count_in_tx(self, name: str, by: int) -> None:
        self._db.execute("INSERT INTO counters(name, value) VALUES (?, ?) "
                         "ON CONFLICT(name) DO UPDATE SET value=value+excluded.value", (name, by))
        self._counters[name] = self._counters.get(name, 0) + by

    # ---------------------------------------------------------------- maintenance
    def _wal_allowance(self) -> int:
        """What the WAL may grow to between checkpoints: a sixteenth of the cap, at most 64 MiB."""
        return min((self.disk_cap or 0) // 16, 64 << 20)

    def wal_bytes(self) -> int:
        """The WAL file's size on disk."""
        try:
            return os.path.getsize(str(self.path) + "-wal")
        except OSError:
            return 0

    def used_bytes(self, db: sqlite3.Connection | None = None) -> int:
        """Bytes the log's live pages take. The disk cap holds these plus the WAL: live pages
        may use the cap less the larger of 3 × the WAL's allowance and its size now."""
        db = db or self._reader()
        page = db.execute("PRAGMA page_size").fetchone()[0]
        count = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        return (count - free) * page

    def _fold_wal(self) -> int:
        """The WAL's size, after truncating it if it has outgrown its allowance: readers reading
        all the while keep SQLite from resetting it, and it would grow without end."""
        wal = self.wal_bytes()
        if wal > self._wal_allowance():
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # waits for current readers
            except sqlite3.OperationalError:
                pass  # still busy: counted at its real size
            wal = self.wal_bytes()
        return wal

    def _enforce_cap(self, group: list[_Op]) -> None:
        """Before committing appends over the cap: evict, or refuse if nothing may go."""
        assert self.disk_cap
        incoming = sum(op.size * 300 for op in group if op.kind == "append")
        used = self.used_bytes(self._db)
        wal = self._fold_wal()
        # the WAL holds up to its allowance plus the frames of one eviction and one append
        cap = self.disk_cap - max(wal, 3 * self._wal_allowance())
        if used + incoming <= cap:
            return
        target = int(cap * 0.9) - incoming
        evicted: dict[str, int] = {}
        # Evict in small transactions, each counted, and keep the WAL folded between them: every
        # page a delete touches (the random-id index: nearly all of it) passes through the WAL,
        # which the cap holds too. A step is about what must go (~300 bytes a record).
        step_max = max(50, min(2000, self._wal_allowance() // 2 // 300))
        for prio in sorted((p for p in Priority if p not in PROTECTED), reverse=True):
            while used > target:
                step = min(step_max, max(50, (used - target) // 300))
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    rows = self._db.execute("SELECT seq FROM log WHERE prio=? ORDER BY seq LIMIT ?",
                                            (int(prio), step)).fetchall()
                    if rows:
                        self._db.execute("DELETE FROM log WHERE prio=? AND seq<=?", (int(prio), rows[-1][0]))
                        self._count_in_tx("evicted", len(rows))
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                if not rows:
                    break
                evicted[prio.label] = evicted.get(prio.label, 0) + len(rows)
                self._fold_wal()
                used = self.used_bytes(self._db)
            if used <= target:
                break
        total = sum(evicted.values())
        if total:
            alarm = Record.make("hub_alarm", self.hub_id, now_ns(),
                                {"event": "log_eviction", "evicted": total,
                                 "message": f"disk cap reached: evicted {total} records"},
                                priority=Priority.ALARM, source="hub", key=f"evict-{now_ns()}")
            self._db.execute("INSERT OR IGNORE INTO log(id, prio, body) VALUES (?, ?, ?)",
                             (alarm.id, int(alarm.priority), body.encode(alarm)))
        if evicted:
            total = sum(evicted.values())
            self.stats["evicted"] += total
            detail = ", ".join(f"{k} {v}" for k, v in evicted.items())
            self.oplog.write("warning", "log_eviction",
                             f"disk cap {self.disk_cap} bytes reached: evicted {total} oldest "
                             f"low-priority records ({detail})",
                             f"达到磁盘上限 {self.disk_cap} 字节：已淘汰 {total} 条最旧的低优先级记录（{detail}）",
                             evicted=evicted)
            audit.record(self.path.parent, "hub", "log.evict", self.path.name, evicted=evicted,
                         disk_cap=self.disk_cap)
        if used + incoming > cap:
            self.stats["disk_full"] += 1
            self.oplog.write("error", "disk_cap_full",
                             f"disk cap {self.disk_cap} bytes reached and only alarm/command "
                             "records remain: refusing new records",
                             "达到磁盘上限且只剩告警/指令记录：拒绝写入新记录")
            raise DiskFullError(
                f"log {self.path}: disk cap of {self.disk_cap} bytes reached; only alarm and "
                "command records remain, which are never evicted")

    def _maintain(self, *, chunk: int = 2000, budget: float | None = 0.01) -> bool:
        """Delete what every consumer has passed, in small transactions, and checkpoint the WAL.

        Appends wait while the writer compacts, so each pass deletes at most ``chunk`` rows
        per transaction and stops after ``budget`` seconds or as soon as appends are queued;
        returns True when everything passed has gone (the caller comes back soon otherwise).
        """
        started = time.monotonic()
        try:
            rows = self._db.execute("SELECT prio, min(seq) FROM cursors GROUP BY prio").fetchall()
            for prio, low in rows:
                while True:
                    n = self._db.execute(
                        "DELETE FROM log WHERE seq IN (SELECT seq FROM log WHERE prio=? AND seq<=? "
                        "ORDER BY seq LIMIT ?)", (prio, low, chunk)).rowcount
                    self.stats["compacted"] += n
                    if n < chunk:
                        break
                    if budget is not None and (self._ops or time.monotonic() - started > budget):
                        return False
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            self.oplog.write("warning", "log_maintenance_failed", f"log compaction failed: {exc}",
                             f"日志整理失败：{exc}")
        return True

    def compact(self) -> None:
        """Run compaction now (it also runs every ``compact_interval`` seconds)."""
        self._submit("maint", None, None, None)

    # ---------------------------------------------------------------- reading
    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            self._local.conn = conn
        return conn

    def cursor(self, consumer: str, *, start: str = "earliest") -> Cursor:
        self.register_consumer(consumer, start)
        return Cursor(self, consumer)

    def positions(self, consumer: str) -> dict[int, int]:
        return self._view.positions(consumer)

    def wait_for_data(self, after_seq: int, timeout: float) -> bool:
        """Block until a commit has happened after ``after_seq`` or timeout."""
        with self._changed:
            if self._last_seq > after_seq:
                return True
            self._changed.wait(timeout)
            return self._last_seq > after_seq

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Commit what is queued, then close. A writer that cannot finish within ``timeout``
        (a disk that stopped answering) is left behind, said so, and its file left open:
        what it had not committed was never acknowledged, so nothing acknowledged is lost."""
        if self._closed:
            return
        self._closed = True
        self._ops.append(None)
        self._wake.set()
        if not self._writer.join(timeout):
            self.oplog.write("error", "log_close_timeout",
                             f"durable log: the writer did not finish within {timeout:g} s; "
                             f"appends not yet committed were not acknowledged",
                             f"持久日志：写线程 {timeout:g} 秒内未结束；未提交的记录未被确认")
            return
        self._db.close()
        with self._changed:
            self._changed.notify_all()


class Cursor:
    """One consumer's view of the log: read by priority, commit what the destination accepted."""

    def __init__(self, log: DurableLog, name: str) -> None:
        self.log, self.name = log, name
        self._seen = 0

    def read(self, limit: int = 1000, classes: Iterable[Priority] | None = None,
             after: dict[int, int] | None = None) -> list[Entry]:
        """Up to ``limit`` records past the cursor, most urgent class first, oldest first.

        ``after`` overrides the stored positions (for consumers with records in flight).
        """
        pos = after if after is not None else self.log.positions(self.name)
        self._seen = self.log.last_seq
        return self.log.view().read(pos, limit, classes)

    def commit(self, entries: Sequence[Entry]) -> None:
        """Advance past ``entries`` (a prefix of what ``read`` returned, per class)."""
        if not entries:
            return
        top: dict[int, int] = {}
        for e in entries:
            p = int(e.record.priority)
            if e.seq > top.get(p, 0):
                top[p] = e.seq
        self.log.commit_cursor(self.name, top)

    def wait(self, timeout: float) -> bool:
        return self.log.wait_for_data(self._seen, timeout)

    def backlog(self) -> dict[str, int]:
        return self.log.backlog(self.name)


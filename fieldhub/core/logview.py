"""The durable log's public read-only view: what consumers, operators and status may read.

``DurableLog.view()`` gives the view of a running hub's log (it reads through the log's
per-thread reader connections); ``LogView.open(path)`` opens a log file on its own when no
hub runs in this process (``fieldhub status``, ``fieldhub quarantine list``). Only this
module and ``fieldhub.core.log`` run SQL on ``log.db``; bodies are read through
``fieldhub.core.body``. The view never writes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from fieldhub.core import body
from fieldhub.core.db import connect
from fieldhub.core.errors import StorageError
from fieldhub.core.records import Priority, Record


@dataclass(frozen=True, slots=True)
class Entry:
    """A record as read from the log, with its sequence number."""

    seq: int
    record: Record


@dataclass
class Chunk:
    """Records of one priority class as stored (``fieldhub.core.body``), joined by newlines
    (their JSON never holds a raw newline), oldest first: the InfluxDB sink's raw batches."""

    prio: int
    bodies: bytes
    count: int

    def refs(self) -> list[tuple[int, bytes]]:
        """The records as ``(priority, body)`` pairs."""
        if self.count == 1:  # one body, which may be a damaged one with a newline in it
            return [(self.prio, self.bodies)]
        return [(self.prio, b) for b in self.bodies.split(b"\n")]


@dataclass(frozen=True, slots=True)
class QuarantineItem:
    """One item of the dead-letter area, as the log holds it."""

    qid: int
    ts: int
    source: str
    device_id: str | None
    reason: str
    payload: bytes | None
    meta: dict[str, Any]
    state: str


class LogView:
    """Read-only queries on one log file; see the module docstring."""

    def __init__(self, conn: Callable[[], sqlite3.Connection], *, close: Callable[[], None] | None = None) -> None:
        self._conn = conn
        self._close = close

    @classmethod
    def open(cls, path: Path | str) -> LogView:
        """A view of the log file at ``path`` with its own connection (close it when done).

        It opens the file as the hub does (not ``mode=ro``), so whoever closes last removes the
        WAL files as after a hub's clean stop; it only reads."""
        path = Path(path)
        if not path.exists():
            raise StorageError(f"no log at {path} (has the hub run with this data dir?)")
        db = connect(path)
        return cls(lambda: db, close=db.close)

    def close(self) -> None:
        if self._close is not None:
            self._close()

    def __enter__(self) -> LogView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- records
    def read(self, after: dict[int, int], limit: int = 1000,
             classes: Iterable[Priority] | None = None) -> list[Entry]:
        """Up to ``limit`` records past ``after`` (seq per class), most urgent class first,
        oldest first within a class."""
        db = self._conn()
        out: list[Entry] = []
        decode = body.decode
        for prio in sorted(classes if classes is not None else Priority):
            if len(out) >= limit:
                break
            rows = db.execute("SELECT seq, body FROM log WHERE prio=? AND seq>? ORDER BY seq LIMIT ?",
                              (int(prio), after.get(int(prio), 0), limit - len(out))).fetchall()
            for seq, b in rows:
                out.append(Entry(seq, decode(b, prio)))
        return out

    def read_raw(self, after: dict[int, int], limit: int) -> tuple[list[Chunk], dict[int, int]]:
        """Like ``read`` but the stored bodies as they are, one ``Chunk`` per class, and the last
        seq read per class: the InfluxDB sink's hot path (SQLite joins the bodies, so no Python
        object is made per record)."""
        db = self._conn()
        out: list[Chunk] = []
        top: dict[int, int] = {}
        total = 0
        for prio in Priority:
            if total >= limit:
                break
            p = int(prio)
            args = (p, after.get(p, 0), limit - total)
            # one statement, so the count, the last seq and the bodies are one snapshot
            n, last, bodies = db.execute(
                "SELECT count(*), max(seq), CAST(group_concat(body, x'0a') AS BLOB) FROM "
                "(SELECT seq, body FROM log WHERE prio=? AND seq>? ORDER BY seq LIMIT ?)", args).fetchone()
            if not n:
                continue
            if bodies.count(b"\n") != n - 1:  # a damaged body with a newline in it: one by one
                rows = db.execute("SELECT body FROM log WHERE prio=? AND seq>? AND seq<=? ORDER BY seq",
                                  (p, args[1], last)).fetchall()
                out += [Chunk(p, _as_bytes(b), 1) for (b,) in rows]
            else:
                out.append(Chunk(p, bodies, n))
            top[p] = last
            total += n
        return out, top

    def record_count(self) -> int:
        """Records the log holds (not yet compacted away)."""
        return self._conn().execute("SELECT count(*) FROM log").fetchone()[0]

    # ---------------------------------------------------------------- consumers
    def consumer_names(self) -> list[str]:
        return [r[0] for r in self._conn().execute("SELECT DISTINCT consumer FROM cursors ORDER BY consumer")]

    def positions(self, consumer: str) -> dict[int, int]:
        """A consumer's cursor: the last seq it passed, per priority class ({} if no such consumer)."""
        rows = self._conn().execute("SELECT prio, seq FROM cursors WHERE consumer=?", (consumer,))
        return {p: s for p, s in rows}

    def backlog(self, consumer: str) -> dict[str, int]:
        """Records ``consumer`` has not passed yet, per priority class ({} if no such consumer)."""
        db = self._conn()
        out: dict[str, int] = {}
        for prio, seq in db.execute("SELECT prio, seq FROM cursors WHERE consumer=?", (consumer,)).fetchall():
            n = db.execute("SELECT count(*) FROM log WHERE prio=? AND seq>?", (prio, seq)).fetchone()[0]
            out[Priority(prio).label] = n
        return out

    def counters(self) -> dict[str, int]:
        """The persisted counters (``DurableLog.bump``), as committed."""
        return dict(self._conn().execute("SELECT name, value FROM counters"))

    # ---------------------------------------------------------------- quarantine
    def quarantine(self, *, source: str | None = None, state: str = "held", qids: Sequence[int] | None = None,
                   reason: str | None = None, device: str | None = None, limit: int | None = None,
                   newest_first: bool = True) -> list[QuarantineItem]:
        """Quarantined items: in ``state`` ("all" for any), from ``source``, among ``qids``, whose
        reason contains ``reason``, of ``device``; newest first (or oldest), at most ``limit``."""
        where: list[str] = []
        args: list[Any] = []
        if state != "all":
            where.append("state = ?")
            args.append(state)
        if source:
            where.append("source = ?")
            args.append(source)
        if qids:
            ids = [int(q) for q in qids]
            where.append(f"qid IN ({','.join('?' * len(ids))})")
            args.extend(ids)
        if reason:
            where.append("reason LIKE ?")
            args.append(f"%{reason}%")
        if device:
            where.append("device_id = ?")
            args.append(device)
        sql = "SELECT qid, ts, source, device_id, reason, payload, meta, state FROM quarantine"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY qid {'DESC' if newest_first else 'ASC'}"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        return [QuarantineItem(q, ts, src, dev, why, payload, orjson.loads(meta) if meta else {}, st)
                for q, ts, src, dev, why, payload, meta, st in self._conn().execute(sql, args).fetchall()]

    def quarantine_held(self) -> int:
        """How many quarantined items are still held."""
        return self._conn().execute("SELECT count(*) FROM quarantine WHERE state='held'").fetchone()[0]

    # ---------------------------------------------------------------- status
    def summary(self) -> dict[str, Any]:
        """What ``fieldhub status`` shows of the log: records, each consumer's backlog, held
        quarantine items, counters; ``error`` (and what was read before it) if the file is not
        a readable log."""
        info: dict[str, Any] = {}
        try:
            info["records"] = self.record_count()
            consumers = self.consumer_names()
            info["consumers"] = {c: {"backlog": self.backlog(c)} for c in consumers}
            for c in consumers:
                info["consumers"][c]["backlog_total"] = sum(info["consumers"][c]["backlog"].values())
            info["quarantine_held"] = self.quarantine_held()
            info["counters"] = self.counters()
        except sqlite3.OperationalError as exc:
            info["error"] = str(exc)
        return info


def _as_bytes(b: object) -> bytes:
    """A damaged row's body as bytes (the encoders quarantine what they cannot read)."""
    if isinstance(b, bytes):
        return b
    return b.encode("utf-8", "replace") if isinstance(b, str) else b""

"""MQTT ingest's own small state file: the (device_id, seq) dedupe table and last-known presence.

The durable log's unique record id already drops a duplicate while the original is still in
the log; this table keeps (device_id, seq) beyond log compaction, for ``dedupe_horizon``.
A digest of the payload tells a true duplicate (same bytes) from a reused seq (a device that
reset its counter), which is quarantined instead of silently dropped.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

STATE_FILE = "mqtt.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS seen(
    device_id TEXT NOT NULL, seq INTEGER NOT NULL, digest BLOB NOT NULL, ts INTEGER NOT NULL,
    PRIMARY KEY(device_id, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_ts ON seen(ts);
CREATE TABLE IF NOT EXISTS presence(
    device_id TEXT PRIMARY KEY, last_seen INTEGER NOT NULL, online INTEGER NOT NULL,
    since INTEGER NOT NULL, reason TEXT NOT NULL) WITHOUT ROWID;
"""


class MqttState:
    """Dedupe table and presence snapshot; used by one thread at a time (the ingest worker)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # the log's unique id covers anything lost here in a power cut (see module docstring)
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        # highest seq remembered per device: a newer seq needs no lookup (the common case)
        self._top: dict[str, int] = dict(self._db.execute(
            "SELECT device_id, max(seq) FROM seen GROUP BY device_id"))

    @staticmethod
    def read_seen(path: Path | str, device_id: str, seq: int) -> bytes | None:
        """``seen`` from any thread, on its own read-only connection to the state file at
        ``path`` (the ingest worker owns the state's write connection)."""
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            row = db.execute("SELECT digest FROM seen WHERE device_id=? AND seq=?",
                             (device_id, seq)).fetchone()
        finally:
            db.close()
        return row[0] if row else None

    def seen(self, device_id: str, seq: int) -> bytes | None:
        if seq > self._top.get(device_id, -1):
            return None
        row = self._db.execute("SELECT digest FROM seen WHERE device_id=? AND seq=?",
                               (device_id, seq)).fetchone()
        return row[0] if row else None

    def add_seen(self, rows: Iterable[tuple[str, int, bytes]], now_ns: int | None = None) -> None:
        now = now_ns or time.time_ns()
        rows = list(rows)
        top = self._top
        for d, s, _h in rows:
            if s > top.get(d, -1):
                top[d] = s
        self._db.execute("BEGIN")
        self._db.executemany("INSERT OR IGNORE INTO seen(device_id, seq, digest, ts) VALUES (?, ?, ?, ?)",
                             [(d, s, h, now) for d, s, h in rows])
        self._db.execute("COMMIT")

    def prune(self, horizon_s: float, now_ns: int | None = None) -> int:
        cutoff = (now_ns or time.time_ns()) - int(horizon_s * 1e9)
        return self._db.execute("DELETE FROM seen WHERE ts < ?", (cutoff,)).rowcount

    def save_presence(self, rows: Iterable[tuple[str, int, bool, int, str]]) -> None:
        self._db.execute("BEGIN")
        self._db.executemany("INSERT OR REPLACE INTO presence VALUES (?, ?, ?, ?, ?)",
                             [(d, last, int(on), since, reason) for d, last, on, since, reason in rows])
        self._db.execute("COMMIT")

    def load_presence(self) -> list[tuple[str, int, bool, int, str]]:
        return [(d, last, bool(on), since, reason) for d, last, on, since, reason in
                self._db.execute("SELECT device_id, last_seen, online, since, reason FROM presence")]

    def close(self) -> None:
        self._db.close()


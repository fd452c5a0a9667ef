"""Opening the hub's SQLite files (log, store, center) with the pragmas durability needs."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open a log/store SQLite file: WAL, ``synchronous=FULL``, autocommit; or read-only."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30,
                               check_same_thread=False)
    else:
        conn = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn

"""Issue 13, item 5: the disk cap counts the WAL. Before, ``log.db-wal`` grew to 5 MB under a
1 MiB cap (SQLite checkpoints at ~4 MB by default and never shrinks the file)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from fieldhub.core.log import DurableLog
from fieldhub.core.records import Record


def _files(path: Path) -> int:
    return sum(os.path.getsize(p) for p in (path, Path(f"{path}-wal")) if p.exists())


def _batch(b: int) -> list[Record]:
    return [Record.make("t", "d1", 1_000 + i, {"v": i, "pad": "x" * 300}, priority="telemetry",
                        source="test", key=i) for i in range(b * 100, b * 100 + 100)]


def test_log_file_and_wal_stay_under_the_cap(tmp_path: Path) -> None:
    path, cap = tmp_path / "log.db", 1 << 20
    log = DurableLog(path, disk_cap=cap, compact_interval=3600)
    log.cursor("store")  # a consumer that never reads: only eviction makes room
    peak = 0
    try:
        for b in range(200):  # ~7 MB of records through a 1 MiB cap
            log.append(_batch(b))
            peak = max(peak, _files(path))
        newest = log.view().record_count()
        assert log.stats["evicted"] > 0 and newest > 500
    finally:
        log.close()
    assert peak <= cap, peak  # before: 6.2 MB (log.db 1 MB + log.db-wal 5.1 MB)


def test_cap_holds_with_a_reader_on_the_log(tmp_path: Path) -> None:
    """A consumer reading all the while (readers delay WAL resets): the files still fit."""
    path, cap = tmp_path / "log.db", 2 << 20
    log = DurableLog(path, disk_cap=cap, compact_interval=3600)
    cursor = log.cursor("store")
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            cursor.read(500)

    reader = threading.Thread(target=read)
    reader.start()
    peak = 0
    try:
        for b in range(300):
            log.append(_batch(b))
            peak = max(peak, _files(path))
    finally:
        stop.set()
        reader.join(10)
        log.close()
    assert peak <= cap, peak  # before: 3.1 MB

"""The durable log: durability, dedupe, per-consumer cursors by class, disk cap, damaged files."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest

from fieldhub.core.errors import DiskFullError
from fieldhub.core.log import DurableLog
from fieldhub.core.oplog import OpLog, tail
from fieldhub.core.records import Priority, Record


def recs(n: int, *, prio: str = "telemetry", start: int = 0, dev: str = "d1", size: int = 0) -> list[Record]:
    pad = {"pad": "x" * size} if size else {}
    return [Record.make("t", dev, 1_000 + i, {"v": i, **pad}, priority=prio, source="test", key=i)
            for i in range(start, start + n)]


def test_append_is_durable_and_deduplicated(tmp_path: Path) -> None:
    log = DurableLog(tmp_path / "log.db")
    first = log.append(recs(100))
    again = log.append(recs(100, start=50))
    assert (first.added, first.duplicates) == (100, 0)
    assert (again.added, again.duplicates) == (50, 50)
    log.close()
    # a fresh process view sees every record
    db = sqlite3.connect(tmp_path / "log.db")
    assert db.execute("SELECT count(*) FROM log").fetchone()[0] == 150


def test_async_append_calls_back_after_commit(tmp_path: Path) -> None:
    log = DurableLog(tmp_path / "log.db", commit_interval=0.05)
    results = []
    done = threading.Event()

    def cb(result, error):
        # by the time we are told, another connection must see the rows
        n = sqlite3.connect(tmp_path / "log.db").execute("SELECT count(*) FROM log").fetchone()[0]
        results.append((result, error, n))
        done.set()

    assert log.append(recs(10), callback=cb) is None
    assert done.wait(5)
    result, error, visible = results[0]
    assert error is None and result.added == 10 and visible == 10
    log.close()


def test_group_commit_batches_many_appends(tmp_path: Path) -> None:
    log = DurableLog(tmp_path / "log.db", commit_interval=0.02)
    sem = threading.Semaphore(0)
    for i in range(200):
        log.append(recs(5, start=i * 5), callback=lambda r, e: sem.release())
    for _ in range(200):
        assert sem.acquire(timeout=10)
    assert log.stats["appended"] == 1000
    assert log.stats["commits"] < 100  # grouped, not one commit per append
    log.close()


def test_cursors_are_per_consumer_and_read_most_urgent_first(tmp_path: Path) -> None:
    log = DurableLog(tmp_path / "log.db")
    log.append(recs(5, prio="telemetry"))
    log.append(recs(2, prio="alarm", start=100))
    log.append(recs(3, prio="position", start=200))
    a, b = log.cursor("a"), log.cursor("b")
    got = a.read(4)
    assert [e.record.priority for e in got] == [Priority.ALARM] * 2 + [Priority.POSITION] * 2
    a.commit(got)
    rest = a.read(100)
    assert [e.record.priority for e in rest] == [Priority.POSITION] + [Priority.TELEMETRY] * 5
    # b is untouched by a
    assert sum(b.backlog().values()) == 10
    assert a.backlog() == {"alarm": 0, "command": 0, "drill": 0, "position": 1, "telemetry": 5, "bulk": 0}
    log.close()
    # cursors survive a restart
    log = DurableLog(tmp_path / "log.db")
    assert [e.record.id for e in log.cursor("a").read(100)] == [e.record.id for e in rest]
    log.close()


def test_read_after_lets_a_consumer_read_past_batches_in_flight(tmp_path: Path) -> None:
    log = DurableLog(tmp_path / "log.db")
    log.append(recs(10))
    c = log.cursor("up")
    first = c.read(4)
    second = c.read(4, after={int(Priority.TELEMETRY): first[-1].seq})
    assert [e.record.fields["v"] for e in second] == [4, 5, 6, 7]
    log.close()


def test_compaction_keeps_what_any_consumer_still_needs(tmp_path: Path) -> None:
    log = DurableLog(tmp_path / "log.db")
    fast, slow = log.cursor("fast"), log.cursor("slow")
    log.append(recs(100))
    fast.commit(fast.read(100))
    log.compact()
    assert len(slow.read(1000)) == 100  # slow consumer lost nothing
    slow.commit(slow.read(60))
    log.compact()
    assert log.stats["compacted"] == 60
    assert [e.record.fields["v"] for e in slow.read(1000)][:1] == [60]
    log.close()


def test_wait_wakes_on_new_data(tmp_path: Path) -> None:
    log = DurableLog(tmp_path / "log.db")
    c = log.cursor("w")
    assert c.read(10) == []
    threading.Timer(0.1, lambda: log.append(recs(1))).start()
    assert c.wait(5)
    assert len(c.read(10)) == 1
    log.close()


def test_disk_cap_evicts_lowest_priority_oldest_first_never_alarms(tmp_path: Path) -> None:
    oplog = OpLog(tmp_path / "oplog.jsonl")
    log = DurableLog(tmp_path / "log.db", disk_cap=400_000, oplog=oplog, hub_id="v1")
    log.cursor("store")  # a consumer that never reads: nothing gets compacted
    log.append(recs(200, prio="alarm", size=200))
    log.append(recs(300, prio="position", start=1000, size=200))
    for i in range(20):  # bulk then telemetry floods past the cap
        log.append(recs(100, prio="bulk", start=10_000 + i * 100, size=200))
    for i in range(20):
        log.append(recs(100, prio="telemetry", start=20_000 + i * 100, size=200))
    db = sqlite3.connect(tmp_path / "log.db")
    by = dict(db.execute("SELECT prio, count(*) FROM log GROUP BY prio"))
    assert by[int(Priority.ALARM)] >= 200  # all alarms kept (plus eviction alarms)
    assert by.get(int(Priority.BULK), 0) == 0  # bulk evicted first
    assert by[int(Priority.POSITION)] == 300  # position untouched while lower classes remained
    assert log.stats["evicted"] > 0
    assert log.counters()["evicted"] == log.stats["evicted"]
    assert log.used_bytes() <= 400_000
    # the newest telemetry survives; the oldest went
    tele = [r[0] for r in db.execute("SELECT body FROM log WHERE prio=? ORDER BY seq", (int(Priority.TELEMETRY),))]
    assert b'"v":21999' in tele[-1]
    # counted, alarmed and written to the operator log
    alarms = db.execute("SELECT count(*) FROM log WHERE CAST(body AS TEXT) LIKE '%log_eviction%'").fetchone()[0]
    assert alarms >= 1
    assert any(e["event"] == "log_eviction" for e in tail(tmp_path / "oplog.jsonl", 100))
    log.close()


def test_disk_cap_full_of_alarms_refuses_with_clear_error(tmp_path: Path) -> None:
    log = DurableLog(tmp_path / "log.db", disk_cap=150_000)
    log.cursor("store")
    with pytest.raises(DiskFullError, match="disk cap"):
        for i in range(100):
            log.append(recs(50, prio="alarm", start=i * 50, size=300))
    kept = sqlite3.connect(tmp_path / "log.db").execute("SELECT count(*) FROM log").fetchone()[0]
    assert kept > 0  # what was acknowledged before stays
    assert log.stats["disk_full"] >= 1
    log.close()


def test_torn_wal_tail_is_recovered(tmp_path: Path) -> None:
    """A write cut off mid-frame (power loss) leaves a torn WAL tail: committed data survives."""
    path = tmp_path / "log.db"
    log = DurableLog(path, compact_interval=3600)
    log.append(recs(100))
    # simulate the crash: copy the files as they are on disk while the writer still holds them
    wal = Path(str(path) + "-wal")
    snapshot = path.read_bytes(), wal.read_bytes()
    log.close()
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    (crashed / "log.db").write_bytes(snapshot[0])
    # append half of a frame of garbage: the torn last write
    (crashed / "log.db-wal").write_bytes(snapshot[1] + os.urandom(2000))
    log = DurableLog(crashed / "log.db")
    assert len(log.cursor("x").read(1000)) == 100
    log.append(recs(10, start=500))
    log.close()


def test_corrupt_file_is_moved_aside_and_salvaged(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    log = DurableLog(path)
    log.append(recs(2000, size=100))
    log.close()
    data = bytearray(path.read_bytes())
    # smash pages in the middle of the file (not the header)
    mid = len(data) // 2
    data[mid:mid + 8192] = os.urandom(8192)
    path.write_bytes(bytes(data))
    oplog = OpLog(tmp_path / "oplog.jsonl")
    log = DurableLog(path, oplog=oplog)  # must not raise
    n = len(log.cursor("x").read(5000))
    assert 0 < n < 2000
    log.append(recs(5, start=9000))  # and it keeps working
    log.close()
    assert list(tmp_path.glob("log.db.corrupt-*"))
    assert any(e["event"] == "log_recovered" for e in tail(tmp_path / "oplog.jsonl"))
    # reopening is clean: no crash loop
    DurableLog(path).close()


def test_garbage_file_is_not_a_crash_loop(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    path.write_bytes(os.urandom(10000))
    for _ in range(2):
        log = DurableLog(path)
        log.append(recs(3))
        log.close()


def test_sequence_numbers_never_reused_after_compaction(tmp_path: Path) -> None:
    """Compaction empties the table; new records must still sort after every cursor."""
    log = DurableLog(tmp_path / "log.db")
    c = log.cursor("c")
    log.append(recs(50))
    c.commit(c.read(100))
    log.compact()
    log.close()
    log = DurableLog(tmp_path / "log.db")
    log.append(recs(5, start=100))
    assert [e.record.fields["v"] for e in log.cursor("c").read(100)] == [100, 101, 102, 103, 104]
    log.close()


def test_real_disk_full_is_a_clear_error_and_loses_nothing_acknowledged(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    path = tmp_path / "log.db"
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "helpers" / "fill_disk.py"), str(path),
                           str(2 * 1024 * 1024)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stderr
    errors = [line for line in lines if line.startswith("ERROR")]
    assert errors and ("DiskFullError" in errors[0] or "StorageError" in errors[0]), lines[-3:]
    assert lines[-1].startswith("STILL-RUNNING")
    assert "full" in errors[0] or "disk" in errors[0]
    last_ack = max(int(line.split()[1]) for line in lines if line.startswith("ACK"))
    log = DurableLog(path)  # with room again, everything acknowledged is there
    got = {e.record.fields["v"] for e in log.cursor("check").read(100_000)}
    assert set(range(last_ack + 1)) <= got
    log.close()


def test_close_is_bounded_when_the_writer_cannot_finish_and_acknowledges_nothing_late(tmp_path: Path) -> None:
    """A writer stuck on its disk (here: another process holds the write lock) does not make
    close() wait forever; what it had not committed is not acknowledged, and says so."""
    import time

    oplog = OpLog(tmp_path / "oplog.jsonl")
    log = DurableLog(tmp_path / "log.db", commit_interval=0.01, oplog=oplog)
    log.append(recs(10))
    blocker = sqlite3.connect(tmp_path / "log.db", timeout=30, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the writer's next commit waits for this lock
    acked = threading.Event()
    log.append(recs(5, start=10), callback=lambda result, error: acked.set())
    t0 = time.monotonic()
    log.close(timeout=0.5)
    assert time.monotonic() - t0 < 3.0
    assert not acked.is_set()  # not committed, so not acknowledged
    assert [e for e in tail(tmp_path / "oplog.jsonl", 10) if e["event"] == "log_close_timeout"]
    blocker.execute("ROLLBACK")
    blocker.close()
    assert acked.wait(10)  # the writer finishes once the disk answers; the ack comes after the commit
    db = sqlite3.connect(tmp_path / "log.db")
    assert db.execute("SELECT count(*) FROM log").fetchone()[0] == 15

"""The one consumer runner (fieldhub.core.consumer): window, commit order, retry, bounded stop, status."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

from fieldhub.core.backoff import Backoff
from fieldhub.core.component import check_status
from fieldhub.core.consumer import Batch, ConsumerRunner, Done, Output
from fieldhub.core.log import DurableLog
from fieldhub.core.oplog import OpLog
from fieldhub.core.records import Record


def wait_until(cond, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def records(n: int, start: int = 0) -> list[Record]:
    """Telemetry records (class 4)."""
    return [Record.make("t", "d", i, {"v": i}, key=i) for i in range(start, start + n)]


class HeldOutput(Output):
    """Sends go nowhere until the test settles them: ``accept(i)`` / ``fail(i)`` by send order."""

    name = "held"

    def __init__(self, window: int, batch: int) -> None:
        self.window, self.batch = window, batch
        self.sends: list[tuple[Batch, Done]] = []
        self.max_inflight = 0
        self.lock = threading.Lock()

    def send(self, batch: Batch, done: Done) -> bool:
        with self.lock:
            self.sends.append((batch, done))
        return True

    def lanes(self, inflight):
        self.max_inflight = max(self.max_inflight, len(inflight))
        return super().lanes(inflight)

    def accept(self, i: int) -> None:
        self.sends[i][1](None)

    def fail(self, i: int) -> None:
        self.sends[i][1](ConnectionError("destination down"))


def test_window_keeps_n_batches_in_flight_and_commits_in_cursor_order(tmp_path: Path) -> None:
    log = DurableLog(tmp_path / "log.db")
    log.append(records(100))
    out = HeldOutput(window=3, batch=10)
    runner = ConsumerRunner(log, out, max_wait=0.05)
    runner.start()
    try:
        wait_until(lambda: len(out.sends) == 3, what="three batches in flight")
        time.sleep(0.3)
        assert len(out.sends) == 3 and out.max_inflight <= 3  # the window is full: nothing more goes
        assert [b.ranges for b, _ in out.sends] == [{4: (0, 10)}, {4: (10, 20)}, {4: (20, 30)}]
        out.accept(1)  # the second is accepted before the first: the cursor may not move yet
        wait_until(lambda: len(out.sends) == 4, what="a slot to open")
        time.sleep(0.2)
        assert log.positions("held")[4] == 0
        out.accept(0)  # now both chain from the committed position
        wait_until(lambda: log.positions("held")[4] == 20, what="the commit over batches 1 and 2")
        assert runner.status()["written"] == 20 and runner.status()["in_flight"] == 3
    finally:
        runner.stop(2)
    log.close()


def test_a_failed_batch_is_sent_again_with_everything_after_it_and_nothing_is_lost(tmp_path: Path) -> None:
    log = DurableLog(tmp_path / "log.db")
    log.append(records(40))
    out = HeldOutput(window=2, batch=10)
    oplog = OpLog(None)
    runner = ConsumerRunner(log, out, oplog=oplog, max_wait=0.05, backoff=Backoff(0.05, 0.1))
    runner.start()
    try:
        wait_until(lambda: len(out.sends) == 2, what="two batches in flight")
        out.fail(0)
        out.accept(1)  # accepted, but behind a failure: kept until the gap is filled
        wait_until(lambda: len(out.sends) >= 3, what="the resend")
        assert out.sends[2][0].ranges == {4: (0, 10)}  # read again from the first record not accepted
        assert runner.status()["state"] == "retrying"
        i = 2
        while log.positions("held")[4] != 40:
            wait_until(lambda: len(out.sends) > i or log.positions("held")[4] == 40, what="the next batch")
            if len(out.sends) > i:
                out.accept(i)
                i += 1
        assert runner.status()["state"] == "ok" and runner.stats["errors"] == 1
        events = [e["event"] for e in oplog.recent]
        assert events.count("sink_write_failed") == 1
        sent = [r for b, _ in out.sends for r in b.payload]
        assert {r.id for r in sent} == {r.id for r in records(40)}  # every record went, some twice
    finally:
        runner.stop(2)
    log.close()


class FlakySink:
    name = "flaky"

    def __init__(self, fail_times: int) -> None:
        self.fail_times, self.seen, self.calls = fail_times, [], []

    def write(self, records) -> None:
        self.calls.append(time.monotonic())
        if self.fail_times:
            self.fail_times -= 1
            raise ConnectionError("destination down")
        self.seen.extend(r.id for r in records)

    def close(self) -> None:
        pass


def test_retries_back_off_and_the_status_follows(tmp_path: Path) -> None:
    log = DurableLog(tmp_path / "log.db")
    log.append(records(5))
    sink = FlakySink(fail_times=4)
    runner = ConsumerRunner(log, sink, max_wait=0.05, backoff=Backoff(0.1, 0.4, rng=random.Random(1)))
    assert runner.status()["state"] == "off"
    runner.start()
    try:
        wait_until(lambda: len(sink.seen) == 5, what="the write after four failures")
        gaps = [b - a for a, b in zip(sink.calls, sink.calls[1:])]
        assert gaps[0] >= 0.05 and gaps[2] >= 0.2 and gaps[3] >= 0.2  # 0.1, 0.2, 0.4, 0.4 (half to all)
        wait_until(lambda: runner.status()["backlog"] == 0, what="the commit")
        status = runner.status()
        assert check_status("flaky", status) == []
        assert status["state"] == "ok" and status["errors"] == 4 and status["written"] == 5
        assert status["last_error"] == "destination down"
        assert sum(status["detail"]["backlog_by_class"].values()) == 0
    finally:
        runner.stop(2)
    assert runner.status()["state"] == "off"
    log.close()


def test_stop_is_bounded_with_a_sink_that_hangs(tmp_path: Path) -> None:
    log = DurableLog(tmp_path / "log.db")
    log.append(records(3))
    hang = threading.Event()
    closed = []

    class Hanging:
        name = "hanging"

        def write(self, records) -> None:
            hang.wait()  # a destination that never answers

        def close(self) -> None:
            closed.append(True)

    runner = ConsumerRunner(log, Hanging(), max_wait=0.05)
    runner.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    runner.stop(1.0)
    assert time.monotonic() - t0 < 1.5 and closed == [True]
    runner.stop(1.0)  # idempotent
    assert closed == [True]
    hang.set()
    log.close()

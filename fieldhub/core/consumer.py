"""The one consumer runner: what every reader of the log (the store, InfluxDB, the uplink) shares.

In the manner of Telegraf's ``RunningOutput``, a ``ConsumerRunner`` wraps an ``Output`` so the
output never sees cursors, windows, commits, retries or counters. The runner owns the consumer's
cursor and its thread (a ``Worker``); it reads batches past what is already in flight, hands
each to the output, keeps up to the output's window of batches in flight, and commits a class's
position only over a contiguous run of accepted batches (a batch covers, per class, every record
with ``after < seq <= hi``, so accepted ranges chain from the committed position). A batch that
fails, or that the output declares lost (``expired``), is read and sent again from the first
record not accepted (outputs are idempotent by record id). Failures retry with the one
``Backoff``; the operator log says when writes fail and when they recover.

A plain ``Sink`` (``write(records)`` that returns once the destination accepted them, raises to
say "retry") is wrapped in ``SinkOutput``: one batch at a time, all classes.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from fieldhub.core.backoff import Backoff
from fieldhub.core.component import Command, make_status
from fieldhub.core.log import Cursor, DurableLog, Entry
from fieldhub.core.oplog import OpLog
from fieldhub.core.records import Priority, Record
from fieldhub.core.worker import DEFAULT_JOIN, Worker

#: per class: the batch holds every record with ``after < seq <= hi``
Ranges = dict[int, tuple[int, int]]
Done = Callable[[BaseException | None], None]


class Sink(Protocol):
    """A destination for records. ``write`` returns only once the destination has accepted
    every record (or quarantined it itself); it raises to say "nothing accepted, retry".
    Writes must be idempotent by ``Record.id``: after a crash the same records come again."""

    name: str

    def write(self, records: Sequence[Record]) -> None: ...

    def close(self) -> None: ...


@dataclass
class Lane:
    """Where one more batch may go now: ``dest`` (e.g. a link's name; batches in flight are
    counted by it), the classes it carries (None = all, most urgent first) and at most how many
    records. ``key`` tells lanes to the same ``dest`` apart (an urgent lane beside the bulk one)."""

    dest: str = ""
    classes: Sequence[Priority] | None = None
    limit: int = 5000
    key: str = ""


@dataclass
class Batch:
    """Records read for one output, on their way to it."""

    ranges: Ranges
    count: int
    #: what the output sends (records, encoded bytes, ...); the output may replace it
    payload: Any
    dest: str = ""
    id: int = 0
    sent_at: float = 0.0
    #: bytes on the wire, when the output knows it
    size: int = 0


def ranges_of(entries: Sequence[Entry], after: Mapping[int, int]) -> Ranges:
    """The ranges ``entries`` (as ``Cursor.read`` returns them past ``after``: each class oldest
    first) cover, per class."""
    top: dict[int, int] = {}
    for e in entries:
        top[e.record.priority] = e.seq
    return {int(p): (after.get(p, 0), hi) for p, hi in top.items()}


class Output:
    """A destination as the runner drives it. The defaults read records through the cursor,
    one lane of all classes, ``window`` batches in flight; an output overrides what differs."""

    name = "output"
    #: batches in flight at once
    window = 1
    #: records per batch
    batch = 5000
    #: read and prepare the next batch while the window is full (a slot never waits for a read)
    prefetch = False
    #: seconds between looks at the window and the lanes while waiting (acks, links coming back)
    poll = 0.5
    #: seconds between two "still failing" lines in the operator log (0: every failure)
    warn_every = 0.0
    #: stopping: how long batches in flight may take to be accepted (and committed)
    settle_on_stop = 0.0
    #: a restart of the runner's loop after an unforeseen error waits this long
    restart_delay = 1.0

    def start(self) -> None:
        """Called by the runner before its thread starts."""

    def close(self) -> None:
        """Called by the runner after its thread ended (or was given up on)."""

    def tick(self, runner: ConsumerRunner) -> None:
        """Once a round, before the window is filled: take acknowledgements, probe links."""

    def sent(self, runner: ConsumerRunner) -> None:
        """After each batch sent, before the next is read (e.g. take acknowledgements)."""

    def lanes(self, inflight: Sequence[Batch]) -> list[Lane]:
        """Where a batch may go now (empty: the window is full or nothing is up)."""
        return [Lane(limit=self.batch)] if len(inflight) < self.window else []

    def read(self, cursor: Cursor, after: dict[int, int], lane: Lane) -> Batch | float | None:
        """The next batch past ``after`` for ``lane``; None when there is nothing to read; a
        number of seconds to say "something is there, ask again in that long" (a partial batch
        filling up)."""
        entries = cursor.read(lane.limit, classes=lane.classes, after=after)
        if not entries:
            return None
        return Batch(ranges_of(entries, after), len(entries), [e.record for e in entries])

    def send(self, batch: Batch, done: Done) -> bool:
        """Send ``batch``; call ``done(None)`` once the destination accepted it, ``done(exc)``
        when it failed (from any thread, now or later), or leave it to an acknowledgement
        (``runner.accept``). False: the lane refused it now and nothing was sent. Raising is
        ``done(exc)``. The output may shrink the batch (its ranges) before it goes."""
        raise NotImplementedError

    def expired(self, batch: Batch, now: float) -> bool:
        """True when a batch in flight will not be accepted any more (sent again without a retry delay)."""
        return False

    def idle(self) -> None:
        """Nothing to read and nothing in flight (e.g. probe the destination now and then)."""

    def failed(self, exc: BaseException) -> None:
        """A batch or a read failed (the runner counts it and logs it)."""

    def accepted(self, batch: Batch) -> None:
        """The destination accepted ``batch``."""

    def recovered(self) -> None:
        """The first acceptance after failures."""

    def failure_line(self, exc: BaseException, delay: float, attempts: int) -> tuple[str, str, str]:
        """The operator-log line for a failure: (event, English, Chinese)."""
        return ("sink_write_failed", f"{self.name}: write failed ({exc}); retrying in {delay:.1f}s",
                f"{self.name}：写入失败（{exc}），{delay:.1f} 秒后重试")

    def restart_line(self, exc: BaseException, delay: float) -> tuple[str, str, str]:
        """The operator-log line when a round failed unforeseen and the loop goes on after ``delay``."""
        return ("consumer_restarted", f"{self.name}: consumer loop failed ({exc!r}); restarting it in {delay:g} s",
                f"{self.name}：消费循环出错（{exc!r}），{delay:g} 秒后重启")

    def recovery_line(self, attempts: int, seconds: float) -> tuple[str, str, str] | None:
        """The operator-log line when writes resume after ``attempts`` failures (None: no line)."""
        return None

    def status(self, runner: ConsumerRunner) -> dict[str, Any]:
        """The output's own values for the runner's status (nested ones go to ``detail``)."""
        return {}

    def detail(self, runner: ConsumerRunner) -> dict[str, Any]:
        """More for the status's ``detail`` (scalars that belong there rather than on top)."""
        return {}

    def commands(self) -> dict[str, Command]:
        return {}


class SinkOutput(Output):
    """A plain ``Sink`` driven one batch at a time."""

    def __init__(self, sink: Sink, batch: int = 5000) -> None:
        self.sink, self.name, self.batch = sink, sink.name, batch

    def send(self, batch: Batch, done: Done) -> bool:
        self.sink.write(batch.payload)
        done(None)
        return True

    def close(self) -> None:
        self.sink.close()


@dataclass
class _Failing:
    since: float
    attempts: int = 0
    warned: float = 0.0


class ConsumerRunner:
    """Drives an ``Output`` (or a plain ``Sink``) from the log: a Component (see the module docstring)."""

    def __init__(self, log: DurableLog, sink: Sink | Output, *, batch: int = 5000, oplog: OpLog | None = None,
                 max_wait: float = 0.5, start: str = "earliest", backoff: Backoff | None = None,
                 name: str | None = None) -> None:
        self.output: Output = sink if isinstance(sink, Output) else SinkOutput(sink, batch)
        self.sink = sink
        self.log = log
        self.name = name or self.output.name
        self.oplog = oplog or OpLog(None)
        self.max_wait = max_wait
        self.cursor: Cursor = log.cursor(self.name, start=start)
        self.backoff = backoff or Backoff(0.2, 30.0)
        self.committed: dict[int, int] = {int(p): 0 for p in Priority}
        self.committed.update(log.positions(self.name))
        #: per class, the position reads continue from (past everything in flight)
        self.sent = dict(self.committed)
        self._acked: dict[int, list[tuple[int, int]]] = collections.defaultdict(list)
        self.inflight: dict[int, Batch] = {}
        self._ids = itertools.count(1)
        self._ready: Batch | None = None
        self._done: collections.deque[tuple[int, BaseException | None]] = collections.deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._failing: _Failing | None = None
        self._worker = Worker(f"consumer-{self.name}", self._run)
        self._committer: ThreadPoolExecutor | None = None
        self._started = self._stopped = False
        self.counters: dict[str, Any] = {"written": 0, "batches": 0, "errors": 0, "resent": 0,
                                      "last_success": None, "last_error": None, "last_error_at": None}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._started and not self._stopped:
            return
        self._started, self._stopped = True, False
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"commit-{self.name}")
        self.output.start()
        self._worker.start()

    def stop(self, timeout: float = DEFAULT_JOIN) -> None:
        """Stop the loop (in-flight batches get part of ``timeout`` to settle), make accepted
        positions durable, close the output; never longer than ``timeout`` in all."""
        if self._stopped or not self._started:
            if not self._started:
                self.output.close()
            self._stopped = True
            return
        self._stopped = True
        deadline = time.monotonic() + timeout
        self._worker.signal()
        self._wake.set()
        if not self._worker.join(timeout * 0.8):
            self.oplog.write("warning", "consumer_stop_timeout",
                             f"{self.name}: its thread did not stop within {timeout * 0.8:.1f}s; left behind",
                             f"{self.name}：线程未在 {timeout * 0.8:.1f} 秒内停止，已放弃等待", consumer=self.name)
        committer, self._committer = self._committer, None
        if committer is not None:
            try:
                committer.submit(lambda: None).result(max(0.0, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001 - a commit still pending is made again on the next start
                pass
            committer.shutdown(wait=False)
        self.output.close()

    def commands(self) -> Mapping[str, Command]:
        return self.output.commands()

    def wake(self) -> None:
        """Make the loop look again now (an acknowledgement came, a link came back)."""
        self._wake.set()

    # ------------------------------------------------------------------ the loop
    def _run(self, stop: threading.Event) -> None:
        """Run rounds; should anything unforeseen break one, count it, say so, go on."""
        while not stop.is_set():
            try:
                self._round(stop)
            except Exception as exc:  # noqa: BLE001 - the consumer must outlive any one failure
                self.counters["errors"] += 1
                self.counters["last_error"] = str(exc)
                self.counters["last_error_at"] = time.time_ns()
                delay = self.output.restart_delay
                event, en, zh = self.output.restart_line(exc, delay)
                self.oplog.write("error", event, en, zh, consumer=self.name)
                stop.wait(delay)
        self._drain_on_stop()

    def _round(self, stop: threading.Event) -> None:
        self._settle()
        self.output.tick(self)
        self._expire()
        if stop.is_set():
            return
        seen = self.log.last_seq
        try:
            sent, empty, wait = self._fill(stop)
        except Exception as exc:  # noqa: BLE001 - a read or an encode failed: retry later
            self._retry_later(stop, exc)
            return
        if sent or stop.is_set() or self._done:
            return
        if empty and not self.inflight and self._ready is None and wait is None:
            self.output.idle()
            self.log.wait_for_data(seen, self.max_wait)  # caught up: sleep until the log grows
            return
        self._wake.wait(min(self.output.poll, wait) if wait is not None else self.output.poll)
        self._wake.clear()

    def _fill(self, stop: threading.Event) -> tuple[bool, bool, float | None]:
        """Send while a lane is open; (sent anything, a read came back empty, ask again in)."""
        sent = empty = False
        wait: float | None = None
        done_lanes: set[tuple[str, str]] = set()
        while not stop.is_set():
            open_lanes = [ln for ln in self.output.lanes(list(self.inflight.values()))
                          if (ln.dest, ln.key) not in done_lanes]
            if not open_lanes:
                if self.output.prefetch and self._ready is None and self.inflight:
                    got = self.output.read(self.cursor, dict(self.sent), Lane(limit=self.output.batch))
                    if isinstance(got, Batch):
                        self._take(got)
                        self._ready = got
                break
            lane = open_lanes[0]
            batch, self._ready = self._ready, None
            if batch is None:
                got = self.output.read(self.cursor, dict(self.sent), lane)
                if got is None or isinstance(got, (int, float)):
                    empty = empty or got is None
                    if got is not None:
                        wait = float(got) if wait is None else min(wait, float(got))
                    done_lanes.add((lane.dest, lane.key))
                    continue
                batch = got
                if self.output.prefetch:
                    self._take(batch)
            if not self._send(batch, lane):
                done_lanes.add((lane.dest, lane.key))
                continue
            sent = True
            self.output.sent(self)
        return sent, empty, wait

    def _take(self, batch: Batch) -> None:
        for p, (_lo, hi) in batch.ranges.items():
            self.sent[p] = max(self.sent.get(p, 0), hi)

    def _send(self, batch: Batch, lane: Lane) -> bool:
        batch.id = next(self._ids)
        batch.dest = lane.dest
        batch.sent_at = time.monotonic()
        bid = batch.id

        def done(exc: BaseException | None) -> None:
            self._done.append((bid, exc))
            self._wake.set()

        self.inflight[bid] = batch
        try:
            ok = self.output.send(batch, done)
        except Exception as exc:  # noqa: BLE001 - a send that raises is a failed batch
            done(exc)
            ok = True
        if not ok:
            del self.inflight[bid]
            if self.output.prefetch:  # read ahead of the send: read it again
                self._rewind(batch)
            return False
        self._take(batch)
        return True

    # ------------------------------------------------------------------ settling
    def _settle(self) -> None:
        failure: BaseException | None = None
        while self._done:
            bid, exc = self._done.popleft()
            if exc is None:
                self.accept(bid)
                continue
            batch = self.inflight.pop(bid, None)
            if batch is not None:
                self._rewind(batch)
            failure = failure or exc
        if failure is not None:
            self._retry_later(self._worker.stop_event, failure)

    def accept(self, bid: int, ranges: Ranges | None = None, *, commit: bool = True) -> Batch | None:
        """The destination accepted batch ``bid`` (covering ``ranges``, by default the batch's
        own): commit what now chains from the committed position. Returns the batch if it was
        in flight. Called on the runner's thread (``Output.tick``) or through ``done``; with
        ``commit=False`` the caller calls ``commit()`` after a run of acceptances."""
        batch = self.inflight.pop(bid, None)
        if ranges is None:
            if batch is None:
                return None
            ranges = batch.ranges
        if batch is not None:
            self.counters["written"] += batch.count
            self.counters["batches"] += 1
            self.counters["last_success"] = time.time_ns()
            self.backoff.reset()
            self.output.accepted(batch)
            if self._failing is not None:
                self._recovered()
        for p, r in ranges.items():
            self._acked[p].append(r)
        if commit:
            self.commit()
        return batch

    def commit(self) -> None:
        """Move each class's position over the accepted ranges that chain from it."""
        changed: dict[int, int] = {}
        for p, ranges in self._acked.items():
            pos = self.committed.get(p, 0)
            progress = True
            while progress:
                progress = False
                for lo, hi in ranges:
                    if lo <= pos < hi:
                        pos, progress = hi, True
            self._acked[p] = [r for r in ranges if r[1] > pos]
            if pos > self.committed.get(p, 0):
                self.committed[p] = changed[p] = pos
        if changed:
            if self._committer is not None:
                self._committer.submit(self._write_positions, changed)
            else:
                self._write_positions(changed)

    def _write_positions(self, positions: dict[int, int]) -> None:
        try:
            self.log.commit_cursor(self.name, positions)
        except Exception as exc:  # noqa: BLE001 - the batch comes again after a restart: idempotent
            self._failed(exc, 0.0)

    def _rewind(self, batch: Batch) -> None:
        """Read ``batch``'s records again (and everything after them) on the next fill."""
        self._ready = None
        for p, (lo, _hi) in batch.ranges.items():
            self.sent[p] = max(self.committed.get(p, 0), min(self.sent.get(p, 0), lo))

    def _expire(self) -> None:
        now = time.monotonic()
        for bid, batch in list(self.inflight.items()):
            if self.output.expired(batch, now):
                del self.inflight[bid]
                self.counters["resent"] += 1
                self._rewind(batch)

    def _drain_on_stop(self) -> None:
        """Stopping: give batches in flight up to ``settle_on_stop`` seconds, so the accepted
        ones are committed (the rest come again after the next start)."""
        self._ready = None
        deadline = time.monotonic() + self.output.settle_on_stop
        while True:
            while self._done:
                bid, exc = self._done.popleft()
                if exc is None:
                    self.accept(bid)
                else:
                    self.inflight.pop(bid, None)
            if not self.inflight or time.monotonic() >= deadline:
                return
            self._wake.wait(0.05)
            self._wake.clear()

    # ------------------------------------------------------------------ failures
    def _retry_later(self, stop: threading.Event, exc: BaseException) -> None:
        delay = self.backoff.next()
        retry_after = getattr(exc, "retry_after", None)
        if retry_after:
            delay = min(max(delay, float(retry_after)), self.backoff.cap)
        self._failed(exc, delay)
        stop.wait(delay)

    def _failed(self, exc: BaseException, delay: float) -> None:
        self.counters["errors"] += 1
        self.counters["last_error"] = str(exc)
        self.counters["last_error_at"] = time.time_ns()
        now = time.monotonic()
        f = self._failing = self._failing or _Failing(now)
        f.attempts += 1
        self.output.failed(exc)
        if f.attempts == 1 or now - f.warned >= self.output.warn_every:
            f.warned = now
            event, en, zh = self.output.failure_line(exc, delay, f.attempts)
            self.oplog.write("warning", event, en, zh, consumer=self.name, attempts=f.attempts)

    def _recovered(self) -> None:
        f, self._failing = self._failing, None
        assert f is not None
        self.output.recovered()
        down = time.monotonic() - f.since
        line = self.output.recovery_line(f.attempts, down)
        if line is not None:
            self.oplog.write("info", line[0], line[1], line[2], failures=f.attempts, seconds=round(down, 1))

    @property
    def stats(self) -> dict[str, Any]:
        """The runner's counters (written, batches, errors, resent, last success and error)."""
        return self.counters

    @property
    def failing_since(self) -> float | None:
        return self._failing.since if self._failing is not None else None

    # ------------------------------------------------------------------ status
    def state(self) -> str:
        if not self._started or self._stopped:
            return "off"
        if not self._worker.alive:
            return "down"
        return "retrying" if self._failing is not None else "ok"

    def status(self) -> dict[str, Any]:
        """The common shape: state, counters, backlog; the output's own values beside them."""
        by_class = self.cursor.backlog()
        total = sum(by_class.values())
        values: dict[str, Any] = {
            "consumer": self.name, "written": self.counters["written"], "batches": self.counters["batches"],
            "errors": self.counters["errors"], "last_success": self.counters["last_success"],
            "last_error": self.counters["last_error"], "last_error_at": self.counters["last_error_at"],
            "backlog": total, "backlog_total": total, "in_flight": len(self.inflight),
        }
        detail: dict[str, Any] = {"backlog_by_class": by_class, "resent": self.counters["resent"]}
        values.update(self.output.status(self))
        detail.update(self.output.detail(self))
        return make_status(self.state(), detail, **values)


class FutureOutput(Output):
    """An output whose sends run on a small pool of threads, ``window`` of them."""

    def __init__(self, name: str, window: int) -> None:
        self.name, self.window = name, window
        self._pool: ThreadPoolExecutor | None = None

    def start(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=self.window, thread_name_prefix=f"{self.name}-send")

    def submit(self, fn: Callable[[Any], Any], arg: Any, done: Done) -> None:
        """Run ``fn(arg)`` on the pool; ``done`` with its outcome."""
        assert self._pool is not None, "not started"
        self._pool.submit(fn, arg).add_done_callback(lambda f: done(f.exception()))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

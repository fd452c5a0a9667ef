"""The InfluxDB sink: every record of the durable log as a point in InfluxDB, through outages.

``InfluxSink`` encodes records (``lineproto``) and posts them (``influx_http``); a batch the
server refuses as bad data (400/413/422) is split in halves until the bad points are alone,
and those are quarantined with the server's message while the rest is written.
``InfluxWriter`` is the hub component: it reads the log through the ``influx`` cursor in
batches (by size and time), keeps up to ``concurrency`` batches in flight, retries with a
capped jittered backoff on 5xx, timeouts and lost connections, and advances the cursor only
over the batches the server accepted, in order.
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence

from .config import Duration
from .consumer import Backoff
from .influx_http import InfluxWriteError, Transport, V1Transport, V2Transport
from .lineproto import SAME_TS_POLICIES, Encoder
from .log import DurableLog, Entry
from .oplog import OpLog
from .records import Priority, Record

NAME = "influx"
QUARANTINE_COUNTER = "influx_quarantined"


@dataclass(frozen=True)
class InfluxConfig:
    """[influx] the InfluxDB sink (schema in docs/influxdb.md); an empty url disables it."""

    #: server URL, e.g. http://127.0.0.1:8086 ("" = no InfluxDB sink)
    url: str = ""
    #: "v2": the v2 write API via influxdb-client (InfluxDB 2.x/3.x, 1.8+, VictoriaMetrics); "v1": POST /write (InfluxDB 1.x)
    mode: str = "v2"
    #: v2: API token
    token: str = ""
    #: v2: organisation
    org: str = ""
    #: v2: bucket
    bucket: str = "fieldhub"
    #: v1: database
    database: str = "fieldhub"
    #: v1: retention policy ("" = the database's default)
    retention_policy: str = ""
    #: v1: user name ("" = no authentication)
    username: str = ""
    #: v1: password
    password: str = ""
    #: v1: create the database when the server says it does not exist
    create_database: bool = True
    #: points per write request
    batch_size: int = 5000
    #: a partial batch is written once its oldest record waited this long (alarms go at once)
    batch_time: Duration = Duration(1.0)
    #: write requests in flight at once
    concurrency: int = 2
    #: gzip request bodies (worth it over satellite links; costs CPU on a local server)
    gzip: bool = True
    #: gzip level 1 (fast) .. 9 (small)
    gzip_level: int = 6
    #: per-request timeout
    timeout: Duration = Duration(10.0)
    #: first retry delay after a failed write (doubles, with jitter, up to retry_max)
    retry_initial: Duration = Duration(0.5)
    #: longest retry delay
    retry_max: Duration = Duration(60.0)
    #: two records of one series at the same timestamp: "nudge" keeps both (offset below the timestamp's precision), "overwrite" keeps the last
    same_timestamp: str = "nudge"
    #: where a new influx cursor starts: "earliest" (everything in the log) or "latest"
    start: str = "earliest"

    def validate(self) -> None:
        if self.mode not in ("v1", "v2"):
            raise ValueError(f"mode {self.mode!r}: expected v1 or v2")
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url {self.url!r}: expected http://HOST:PORT or https://HOST:PORT")
        if self.mode == "v2" and self.url and not self.bucket:
            raise ValueError("mode v2 needs a bucket")
        if self.mode == "v1" and self.url and not self.database:
            raise ValueError("mode v1 needs a database")
        if self.batch_size < 1 or self.concurrency < 1:
            raise ValueError("batch_size and concurrency must be at least 1")
        if not 1 <= self.gzip_level <= 9:
            raise ValueError("gzip_level must be 1..9")
        if self.same_timestamp not in SAME_TS_POLICIES:
            raise ValueError(f"same_timestamp {self.same_timestamp!r}: expected nudge or overwrite")
        if self.start not in ("earliest", "latest"):
            raise ValueError(f"start {self.start!r}: expected earliest or latest")


def make_transport(cfg: InfluxConfig) -> Transport:
    level = cfg.gzip_level if cfg.gzip else 0
    pool = max(2, cfg.concurrency + 1)
    if cfg.mode == "v1":
        return V1Transport(cfg.url, cfg.database, retention_policy=cfg.retention_policy,
                           username=cfg.username, password=cfg.password, gzip_level=level,
                           timeout=cfg.timeout, pool_size=pool, create_database=cfg.create_database)
    return V2Transport(cfg.url, cfg.token, cfg.org, cfg.bucket, gzip_level=level,
                       timeout=cfg.timeout, pool_size=pool)


class InfluxSink:
    """A Sink (see ``fieldhub.consumer``): ``write`` returns once every record is in InfluxDB
    or quarantined; raises InfluxWriteError for "nothing certain, retry"."""

    name = NAME

    def __init__(self, transport: Transport, log: DurableLog, *, hub_id: str = "",
                 same_timestamp: str = "nudge",
                 tags_for: Callable[[str], Mapping[str, str]] | None = None) -> None:
        self.transport = transport
        self.log = log
        self.encoder = Encoder(hub_id, same_timestamp=same_timestamp, tags_for=tags_for)
        self.quarantined = 0
        self.requests = 0
        self._recent_bad: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._tags_at = time.monotonic()

    def encode(self, records: Sequence[Record]) -> list[tuple[Record, bytes]]:
        """Lines for the records; a record with nothing writable is quarantined here."""
        now = time.monotonic()
        if now - self._tags_at > 60:  # device tags may have changed in the registry
            self.encoder.forget()
            self._tags_at = now
        out = []
        for r in records:
            if r.id in self._recent_bad:
                continue
            line = self.encoder.encode(r)
            if line is None:
                self._quarantine(r, repr(dict(r.fields)).encode(), "no field InfluxDB can store "
                                 "(only inf values) / 没有可写入的字段", 0)
                continue
            out.append((r, line))
        return out

    def write(self, records: Sequence[Record]) -> None:
        self.send(self.encode(records))

    def send(self, items: Sequence[tuple[Record, bytes]]) -> None:
        """Post lines; on a data rejection split until the bad points are isolated."""
        if not items:
            return
        try:
            self.requests += 1
            self.transport.post(b"\n".join(line for _, line in items))
        except InfluxWriteError as exc:
            if not exc.rejected:
                raise
            if len(items) == 1:
                record, line = items[0]
                self._quarantine(record, line, exc.server_message, exc.status)
                return
            mid = len(items) // 2
            self.send(items[:mid])
            self.send(items[mid:])

    def _quarantine(self, record: Record, line: bytes, message: str, status: int) -> None:
        with self._lock:
            if record.id in self._recent_bad:
                return
            self._recent_bad[record.id] = None
            if len(self._recent_bad) > 10_000:
                self._recent_bad.popitem(last=False)
        self.log.quarantine(NAME, message, line, device_id=record.device_id,
                            meta={"record_id": record.id, "kind": record.kind, "ts": record.ts,
                                  "status": status, "mode": self.transport.mode,
                                  "target": self.transport.target})
        self.log.bump(QUARANTINE_COUNTER)
        self.quarantined += 1

    def close(self) -> None:
        self.transport.close()


@dataclass
class _Batch:
    entries: list[Entry]
    future: Future


def _local(ts_ns: int | None) -> str:
    if not ts_ns:
        return "-"
    return datetime.fromtimestamp(ts_ns / 1e9, tz=timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M:%S%z")


class InfluxWriter:
    """The hub component that drives an InfluxSink from the log (see the module docstring)."""

    name = NAME

    def __init__(self, log: DurableLog, sink: InfluxSink, cfg: InfluxConfig, *,
                 oplog: OpLog | None = None) -> None:
        self.log, self.sink, self.cfg = log, sink, cfg
        self.oplog = oplog or OpLog(None)
        self.cursor = log.cursor(NAME, start=cfg.start)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="influx-post")
        self.written = 0
        self.batches = 0
        self.errors = 0
        self.last_success: int | None = None
        self.last_error: str | None = None
        self.last_error_at: int | None = None
        self.failing_since: float | None = None
        self._failures = 0
        self._last_warned = 0.0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="influx-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._pool.shutdown(wait=True)
        self.sink.close()

    # ------------------------------------------------------------------ the loop
    def _run(self) -> None:
        backoff = Backoff(self.cfg.retry_initial, self.cfg.retry_max)
        inflight: collections.deque[_Batch] = collections.deque()
        after = self.log.positions(NAME)
        pending_since: float | None = None
        while True:
            # settle finished batches, oldest first; the cursor moves over accepted ones only
            while inflight and inflight[0].future.done():
                batch = inflight.popleft()
                exc = batch.future.exception()
                if exc is None:
                    self._accepted(batch.entries)
                    backoff.reset()
                    continue
                for other in inflight:  # let later batches finish; they are sent again (idempotent)
                    other.future.exception()
                inflight.clear()
                after = self.log.positions(NAME)
                self._failed(exc)
                delay = backoff.next()
                retry_after = getattr(exc, "retry_after", None)
                if retry_after:
                    delay = min(max(delay, retry_after), self.cfg.retry_max)
                self._stop.wait(delay)
            if self._stop.is_set():
                for batch in inflight:  # finish what is in flight; commit the accepted prefix
                    if batch.future.exception() is not None:
                        break
                    self._accepted(batch.entries)
                return
            if len(inflight) >= self.cfg.concurrency:
                self._wait_first(inflight)
                continue
            entries = self.cursor.read(self.cfg.batch_size, after=after)
            if not entries:
                pending_since = None
                if inflight:
                    self._wait_first(inflight)
                else:
                    self.cursor.wait(0.5)
                continue
            if len(entries) < self.cfg.batch_size and not self._urgent(entries):
                now = time.monotonic()
                if pending_since is None:
                    pending_since = now
                if now - pending_since < self.cfg.batch_time:
                    # let a partial batch fill, unless the server is idle and data is old enough
                    self._stop.wait(min(self.cfg.batch_time - (now - pending_since), 0.25))
                    continue
            pending_since = None
            try:
                items = self.sink.encode([e.record for e in entries])
            except Exception as exc:  # noqa: BLE001 - e.g. the log refused a quarantine: retry later
                self._failed(exc)
                self._stop.wait(backoff.next())
                continue
            future = self._pool.submit(self.sink.send, items)
            inflight.append(_Batch(entries, future))
            for e in entries:
                p = int(e.record.priority)
                if e.seq > after.get(p, 0):
                    after[p] = e.seq

    @staticmethod
    def _urgent(entries: Sequence[Entry]) -> bool:
        return any(e.record.priority <= Priority.COMMAND for e in entries)

    def _wait_first(self, inflight: collections.deque[_Batch]) -> None:
        try:
            inflight[0].future.exception(timeout=0.5)
        except TimeoutError:
            pass

    def _accepted(self, entries: list[Entry]) -> None:
        self.cursor.commit(entries)
        self.written += len(entries)
        self.batches += 1
        self.last_success = time.time_ns()
        if self.failing_since is not None:
            down = time.monotonic() - self.failing_since
            self.oplog.write("info", "influx_recovered",
                             f"influx: writes to {self.sink.transport.target} resumed after "
                             f"{self._failures} failed attempts ({down:.0f}s)",
                             f"influx：写入已恢复（失败 {self._failures} 次，{down:.0f} 秒）",
                             failures=self._failures, seconds=round(down, 1))
            self.failing_since = None
            self._failures = 0

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        self._failures += 1
        self.last_error = str(exc)
        self.last_error_at = time.time_ns()
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        if now - self._last_warned >= 60 or self._failures == 1:
            self._last_warned = now
            hint = ""
            if isinstance(exc, InfluxWriteError) and exc.auth:
                hint = " — check credentials/permissions (fieldhub influx check)"
            self.oplog.write("warning", "influx_write_failed",
                             f"influx: write to {self.sink.transport.target} failed ({exc}){hint}; "
                             f"retrying, nothing is lost",
                             f"influx：写入失败（{exc}），正在重试，数据不会丢失",
                             attempts=self._failures)

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        by_class = self.cursor.backlog()
        state = "retrying" if self.failing_since is not None else "ok"
        return {
            "mode": self.sink.transport.mode,
            "target": self.sink.transport.target,
            "state": state,
            "backlog": sum(by_class.values()),
            "written": self.written,
            "batches": self.batches,
            "quarantined": self.log.counters().get(QUARANTINE_COUNTER, 0),
            "errors": self.errors,
            "last_success": _local(self.last_success),
            "last_error": self.last_error or "-",
            "last_error_at": _local(self.last_error_at),
            "detail": {"backlog_by_class": by_class, "last_success_ns": self.last_success,
                       "last_error_ns": self.last_error_at, "requests": self.sink.requests},
        }


def build(ctx: Any) -> InfluxWriter | None:
    """Hub component builder (``COMPONENTS``): None when no ``[influx] url`` is set."""
    cfg: InfluxConfig = ctx.config.section("influx")
    if not cfg.url:
        return None
    registry = ctx.registry
    cache: dict[str, tuple[float, dict[str, str]]] = {}

    def tags_for(device_id: str) -> dict[str, str]:
        hit = cache.get(device_id)
        now = time.monotonic()
        if hit is not None and now - hit[0] < 60:
            return hit[1]
        dev = registry.get(device_id)
        tags = dev.tags() if dev is not None else {}
        cache[device_id] = (now, tags)
        return tags

    sink = InfluxSink(make_transport(cfg), ctx.log, hub_id=ctx.hub_id,
                      same_timestamp=cfg.same_timestamp, tags_for=tags_for)
    return InfluxWriter(ctx.log, sink, cfg, oplog=ctx.oplog)

"""The InfluxDB sink: every record of the durable log as a point in InfluxDB, through outages.

``InfluxSink`` encodes records (``lineproto``) and posts them (``influx_http``); a batch the
server refuses as bad data (400/413/422) is split in halves until the bad points are alone,
and those are quarantined with the server's message while the rest is written.
``InfluxOutput`` is that sink as the consumer runner (``fieldhub.core.consumer``) drives it:
raw log rows in batches by size and time, ``concurrency`` requests in flight. ``InfluxWriter``,
the hub component, is the runner around it: it reads through the ``influx`` cursor, retries
with the one backoff on 5xx, timeouts and lost connections, and advances the cursor only over
the batches the server accepted, in order.
"""

from __future__ import annotations

import collections
import hashlib
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from fieldhub.core.backoff import Backoff
from fieldhub.core.body import decode, line_parts
from fieldhub.core.component import HubContext
from fieldhub.core.consumer import Batch, ConsumerRunner, FutureOutput, Lane
from fieldhub.core.log import Cursor, DurableLog
from fieldhub.core.logview import Chunk
from fieldhub.core.oplog import OpLog
from fieldhub.core.records import Priority, Record
from fieldhub.sinks.influx.config import InfluxConfig
from fieldhub.sinks.influx.http import InfluxWriteError, Transport, V1Transport, V2Transport
from fieldhub.sinks.influx.lineproto import Encoder

NAME = "influx"
QUARANTINE_COUNTER = "influx_quarantined"
#: seconds between idle health probes (GET /ping) when there is nothing to write
PROBE_INTERVAL = 30.0


def make_transport(cfg: InfluxConfig) -> Transport:
    level = cfg.gzip_level if cfg.gzip else 0
    pool = max(2, cfg.concurrency + 1)
    if cfg.mode == "v1":
        return V1Transport(cfg.url, cfg.database, retention_policy=cfg.retention_policy,
                           username=cfg.username, password=cfg.password, gzip_level=level,
                           timeout=cfg.timeout, pool_size=pool, create_database=cfg.create_database,
                           tls_ca=cfg.tls_ca, tls_verify=cfg.tls_verify)
    return V2Transport(cfg.url, cfg.token, cfg.org, cfg.bucket, gzip_level=level,
                       timeout=cfg.timeout, pool_size=pool, tls_ca=cfg.tls_ca, tls_verify=cfg.tls_verify)


#: a record as the sink holds it: a Record, or a (priority, log body) pair straight from the log
Ref = Record | tuple[int, bytes]

class _CEncoder(Protocol):
    """What the C encoder module offers (its types: ``_lpenc.pyi``)."""

    def encode(self, bodies: bytes, cache: dict[bytes, bytes],
               series: Callable[[bytes, bytes, bytes], bytes | None], nudge: bool,
               skip: Collection[str] | None, /) -> tuple[bytes, int, list[int]]: ...


_lpenc: _CEncoder | None
try:  # the C encoder (fieldhub/_lpenc.c), built by pip install; without it Python does it all
    from fieldhub.sinks.influx import _lpenc
except ImportError:  # pragma: no cover - a source tree nobody built
    _lpenc = None


def _record_of(ref: Ref) -> Record:
    if isinstance(ref, Record):
        return ref
    return decode(ref[1], ref[0])


def _refs(chunks: Sequence[Chunk]) -> list[tuple[int, bytes]]:
    return [ref for chunk in chunks for ref in chunk.refs()]


@dataclass
class Payload:
    """One batch ready to post: its lines joined, and the chunks they came from (a batch the
    server rejects is encoded again line by line to find the bad points)."""

    body: bytes
    lines: int
    chunks: Sequence[Chunk]


class InfluxSink:
    """A Sink (see ``fieldhub.core.consumer``): ``write`` returns once every record is in InfluxDB
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
        #: series part of the line by raw (kind, device, tags) JSON text, for the C encoder
        self._series: dict[bytes, bytes] = {}
        #: "c" (fieldhub/_lpenc.c) or "python"; shown in status
        self.encoder_name = "python" if _lpenc is None else "c"

    def _refresh_tags(self) -> None:
        now = time.monotonic()
        if now - self._tags_at > 60 or len(self._series) > 100_000:  # tags may have changed
            self.encoder.forget()
            self._series.clear()
            self._tags_at = now

    def _series_of(self, kind: bytes, device_id: bytes, tags: bytes) -> bytes | None:
        """The series part for the C encoder; None hands the record back (damaged tags)."""
        loads = orjson.loads
        try:
            return self.encoder.series_key(loads(kind), loads(device_id), loads(tags)).encode()
        except (ValueError, TypeError, AttributeError):
            return None

    def encode(self, records: Sequence[Record]) -> list[tuple[Ref, bytes]]:
        """Lines for the records; a record with nothing writable is quarantined here."""
        self._refresh_tags()
        out: list[tuple[Ref, bytes]] = []
        for r in records:
            line = self.encoder.line(r.kind, r.device_id, r.ts, r.fields, r.tags, r.id)
            self._keep(out, r, r.id, line)
        return out

    def encode_rows(self, chunks: Sequence[Chunk]) -> Payload:
        """One batch from ``LogView.read_raw`` (the hot path): the C encoder writes the lines straight
        from the log bodies and hands back what it leaves to Python (records to quarantine or
        skip, shapes it does not take)."""
        self._refresh_tags()
        if _lpenc is None:
            items = self._encode_refs(_refs(chunks))
            return Payload(b"\n".join([line for _, line in items]), len(items), chunks)
        parts: list[bytes] = []
        count = 0
        for chunk in chunks:
            body, n, handed = _lpenc.encode(chunk.bodies, self._series, self._series_of,
                                            self.encoder.nudge, self._recent_bad or None)
            if n + len(handed) != chunk.count:  # a damaged body holding a newline: Python's
                n, handed = 0, list(range(chunk.count))
            if n:
                parts.append(body)
                count += n
            if handed:
                refs = chunk.refs()
                extra = [line for _, line in self._encode_refs([refs[i] for i in handed])]
                parts += extra
                count += len(extra)
        return Payload(parts[0] if len(parts) == 1 else b"\n".join(parts), count, chunks)

    def _encode_refs(self, rows: Sequence[tuple[int, bytes]]) -> list[tuple[Ref, bytes]]:
        """The Python encoder over log rows (what the C encoder hands back, and a rejected batch)."""
        out: list[tuple[Ref, bytes]] = []
        line_of = self.encoder.line
        parts = line_parts
        for row in rows:
            ref: Ref = row
            try:
                kind, device_id, ts, fields, tags, rid = parts(row[1])
                line = line_of(kind, device_id, ts, fields, tags, rid)
                if line is None:  # quarantined as the record it must then read as
                    ref = _record_of(row)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:  # a damaged row
                self._unreadable(row, exc)
                continue
            self._keep(out, ref, rid, line)
        return out

    def _unreadable(self, ref: tuple[int, bytes], exc: Exception) -> None:
        """A log row that is not a record (damaged on disk): quarantined, the stream goes on."""
        self._hold("row:" + hashlib.blake2b(ref[1], digest_size=10).hexdigest(),
                   f"unreadable log record ({type(exc).__name__}: {exc}) / 日志记录无法解析", bytes(ref[1]),
                   meta={"priority": ref[0]})

    def _keep(self, out: list[tuple[Ref, bytes]], ref: Ref, rid: str, line: bytes | None) -> None:
        if rid in self._recent_bad:
            return
        if line is None:
            r = _record_of(ref)
            self._quarantine(ref, orjson.dumps(dict(r.fields)), "no field InfluxDB can store "
                             "(only inf/nan values) / 没有可写入的字段", 0)
            return
        out.append((ref, line))

    def write(self, records: Sequence[Record]) -> None:
        self.send(self.encode(records))

    def send(self, batch: Payload | Sequence[tuple[Ref, bytes]]) -> None:
        """Post a batch; on a data rejection split it until the bad points are isolated."""
        if isinstance(batch, Payload):
            if not batch.lines:
                return
            try:
                self.requests += 1
                self.transport.post(batch.body)
                return
            except InfluxWriteError as exc:
                if not exc.rejected:
                    raise
                self._isolate(self._encode_refs(_refs(batch.chunks)), exc)  # the same lines, one per record
                return
        self._send_items(batch)

    def _send_items(self, items: Sequence[tuple[Ref, bytes]]) -> None:
        if not items:
            return
        try:
            self.requests += 1
            self.transport.post(b"\n".join([line for _, line in items]))
        except InfluxWriteError as exc:
            if not exc.rejected:
                raise
            self._isolate(items, exc)

    def _isolate(self, items: Sequence[tuple[Ref, bytes]], exc: InfluxWriteError) -> None:
        """The server refused these lines as bad data: quarantine a lone one, else halve and retry."""
        if len(items) == 1:
            ref, line = items[0]
            self._quarantine(ref, line, exc.server_message, exc.status)
            return
        mid = len(items) // 2
        self._send_items(items[:mid])
        self._send_items(items[mid:])

    def _quarantine(self, ref: Ref, line: bytes, message: str, status: int) -> None:
        record = _record_of(ref)
        self._hold(record.id, message, line, device_id=record.device_id,
                   meta={"record_id": record.id, "kind": record.kind, "ts": record.ts, "status": status})

    def _hold(self, key: str, message: str, data: bytes, *, device_id: str | None = None,
              meta: dict[str, Any]) -> None:
        """Quarantine once per ``key`` (a retried batch meets the same bad records again)."""
        with self._lock:
            if key in self._recent_bad:
                return
            self._recent_bad[key] = None
            if len(self._recent_bad) > 10_000:
                self._recent_bad.popitem(last=False)
        self.log.quarantine(NAME, message, data, device_id=device_id,
                            meta={**meta, "mode": self.transport.mode, "target": self.transport.target})
        self.log.bump(QUARANTINE_COUNTER)
        self.quarantined += 1

    def close(self) -> None:
        self.transport.close()


def _local(ts_ns: int | None) -> str:
    if not ts_ns:
        return "-"
    return datetime.fromtimestamp(ts_ns / 1e9, tz=UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S%z")


class InfluxOutput(FutureOutput):
    """The InfluxDB sink as the consumer runner drives it: raw log rows read in batches by size
    and time (alarms and commands go at once), encoded by the C encoder, ``concurrency``
    requests in flight; an idle probe of the server now and then."""

    prefetch = True
    warn_every = 60.0
    restart_delay = 5.0

    def __init__(self, log: DurableLog, sink: InfluxSink, cfg: InfluxConfig) -> None:
        super().__init__(NAME, cfg.concurrency)
        self.log, self.sink, self.cfg = log, sink, cfg
        self.batch = cfg.batch_size
        self.settle_on_stop = min(3.0, float(cfg.timeout))
        self._pending_since: float | None = None
        self._probed = self._last_activity = time.monotonic() - PROBE_INTERVAL  # probe at start
        #: what the last idle probe (GET /ping) found; writes update it too
        self.server = "not yet contacted"

    def read(self, cursor: Cursor, after: dict[int, int], lane: Lane) -> Batch | float | None:
        rows, top = self.log.view().read_raw(after, self.cfg.batch_size)
        if not rows:
            self._pending_since = None
            return None
        count = sum(chunk.count for chunk in rows)
        if count < self.cfg.batch_size and rows[0].prio > int(Priority.COMMAND):
            now = time.monotonic()
            if self._pending_since is None:
                self._pending_since = now
            if now - self._pending_since < self.cfg.batch_time:
                # let a partial batch fill for up to batch_time (alarms and commands go at once)
                return float(self.cfg.batch_time) - (now - self._pending_since)
        self._pending_since = None
        payload = self.sink.encode_rows(rows)
        return Batch({p: (after.get(p, 0), hi) for p, hi in top.items()}, count, payload)

    def send(self, batch: Batch, done: Callable[[BaseException | None], None]) -> bool:
        self.submit(self.sink.send, batch.payload, done)
        return True

    def idle(self) -> None:
        """With nothing to write, ping the server now and then so status shows an outage early."""
        now = time.monotonic()
        if now - self._probed < PROBE_INTERVAL or now - self._last_activity < PROBE_INTERVAL:
            return
        self._probed = now
        try:
            self.sink.transport.ping()
            self.server = "reachable"
        except InfluxWriteError as exc:
            self.server = f"unreachable: {exc}"

    def accepted(self, batch: Batch) -> None:
        self._last_activity = time.monotonic()
        self.server = "reachable"

    def failed(self, exc: BaseException) -> None:
        self._last_activity = time.monotonic()
        self.server = f"write failing: {exc}"

    def failure_line(self, exc: BaseException, delay: float, attempts: int) -> tuple[str, str, str]:
        hint = ""
        if isinstance(exc, InfluxWriteError) and exc.auth:
            hint = " — check credentials/permissions (fieldhub influx check)"
        return ("influx_write_failed",
                f"influx: write to {self.sink.transport.target} failed ({exc}){hint}; retrying, nothing is lost",
                f"influx：写入失败（{exc}），正在重试，数据不会丢失")

    def recovery_line(self, attempts: int, seconds: float) -> tuple[str, str, str]:
        return ("influx_recovered",
                f"influx: writes to {self.sink.transport.target} resumed after {attempts} failed attempts "
                f"({seconds:.0f}s)",
                f"influx：写入已恢复（失败 {attempts} 次，{seconds:.0f} 秒）")

    def restart_line(self, exc: BaseException, delay: float) -> tuple[str, str, str]:
        return ("influx_writer_restarted", f"influx: writer loop failed ({exc!r}); restarting it in {delay:g} s",
                f"influx：写入循环出错（{exc!r}），{delay:g} 秒后重启")

    def status(self, runner: ConsumerRunner) -> dict[str, Any]:
        st = runner.counters
        return {"mode": self.sink.transport.mode, "target": self.sink.transport.target, "server": self.server,
                "quarantined": self.log.counters().get(QUARANTINE_COUNTER, 0),
                "last_success": _local(st["last_success"]), "last_error": st["last_error"] or "-",
                "last_error_at": _local(st["last_error_at"]), "encoder": self.sink.encoder_name}

    def detail(self, runner: ConsumerRunner) -> dict[str, Any]:
        return {"last_success_ns": runner.counters["last_success"], "last_error_ns": runner.counters["last_error_at"],
                "requests": self.sink.requests, "encoder": self.sink.encoder_name}

    def close(self) -> None:
        super().close()
        self.sink.close()


class InfluxWriter(ConsumerRunner):
    """The hub component: the consumer runner driving an ``InfluxOutput`` through the ``influx`` cursor."""

    def __init__(self, log: DurableLog, sink: InfluxSink, cfg: InfluxConfig, *,
                 oplog: OpLog | None = None) -> None:
        self.cfg = cfg
        super().__init__(log, InfluxOutput(log, sink, cfg), oplog=oplog, start=cfg.start,
                         backoff=Backoff(float(cfg.retry_initial), float(cfg.retry_max)))
        self.sink = sink

    @property
    def written(self) -> int:
        return int(self.counters["written"])

    @property
    def errors(self) -> int:
        return int(self.counters["errors"])


def build(ctx: HubContext, cfg: InfluxConfig) -> InfluxWriter | None:
    """Hub component builder: None when no ``[influx] url`` is set."""
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

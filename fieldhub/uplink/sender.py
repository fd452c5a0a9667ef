"""The uplink: store-and-forward of the durable log to the center, most urgent class first.

It reads the log through its own cursor (``uplink``), reading past batches still in flight
(``after=``), and sends batches over whichever link the link manager picks for each class.
The cursor moves only when the center acknowledges a batch on ``fh/hub/{hub}/ack`` (sent
after the center's durable write), per class, as a contiguous prefix: a batch covers, per
class, every record with ``after < seq <= hi``, so acknowledged ranges chain from the
committed position. A batch not acknowledged in time, or whose link drops, is read and sent
again (the center deduplicates by record id). Alarms and latest positions also go as
Beidou short messages when the Beidou link is the best one left for them.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from typing import Any

import orjson
import zstandard

from fieldhub.core.component import Command, HubContext
from fieldhub.uplink import shortmsg
from fieldhub.uplink.bearers.beidou import BeidouBearer
from fieldhub.uplink.bearers.mqtt import MqttBearer
from fieldhub.core.errors import TransportError, ValidationError
from fieldhub.uplink.links import LinkManager
from fieldhub.core.log import DurableLog, Entry
from fieldhub.core.oplog import OpLog
from fieldhub.core.records import Priority, now_ns
from fieldhub.uplink.codec import Batch, encode_batch
from fieldhub.uplink.bearers.tiantong import TiantongSmsBearer
from fieldhub.uplink.config import UplinkConfig

CONSUMER = "uplink"
#: classes that may go beyond the window, so they never wait for an ack to be sent
URGENT = (Priority.ALARM, Priority.COMMAND)
#: bearers that carry one record summary per message (not batches)
SHORT = (BeidouBearer, TiantongSmsBearer)


@dataclass
class _Flight:
    link: str
    ranges: dict[int, tuple[int, int]]
    sent_at: float
    records: int
    size: int


def build(ctx: HubContext, cfg: UplinkConfig) -> "Uplink | None":
    """Hub component builder: the uplink when ``[uplink] enabled``."""
    if not cfg.enabled:
        return None
    return Uplink(ctx.log, cfg, ctx.hub_id, ctx.oplog)


class Uplink:
    name = "uplink"

    def commands(self) -> dict[str, Command]:
        """``uplink.status`` on the control socket."""
        return {"status": lambda args: self.status()}

    def __init__(self, log: DurableLog, cfg: UplinkConfig, hub_id: str, oplog: OpLog | None = None) -> None:
        self.log, self.cfg, self.hub_id = log, cfg, hub_id
        self.oplog = oplog or OpLog(None)
        self.cursor = log.cursor(CONSUMER)
        self._acks: queue.Queue[bytes] = queue.Queue(maxsize=10_000)
        self._wake = threading.Event()
        self.manager = LinkManager(cfg, hub_id, self._on_ack, self.oplog)
        self._committed: dict[int, int] = {int(p): 0 for p in Priority}
        self._committed.update(log.positions(CONSUMER))
        self._sent = dict(self._committed)
        self._acked: dict[int, list[tuple[int, int]]] = defaultdict(list)
        self._inflight: dict[int, _Flight] = {}
        self._boot = int.from_bytes(os.urandom(3), "big")
        self._n = 0
        self._bpr: dict[str, float] = {}  # bytes per record, per link (EWMA)
        self._zstd = zstandard.ZstdCompressor(level=cfg.zstd_level)
        self._mac_key = bytes.fromhex(cfg.mac_key) if cfg.mac_key else b""
        self._beidou_sent: OrderedDict[str, float] = OrderedDict()
        self._meta: dict[str, Any] = {}
        self._meta_at = 0.0
        self._read_empty = False
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.stats: dict[str, Any] = {"batches_sent": 0, "batches_acked": 0, "records_sent": 0,
                                      "records_acked": 0, "resent_batches": 0, "bytes_sent": 0,
                                      "acks_ignored": 0, "short_messages": 0, "short_message_errors": 0,
                                      "last_ack_ns": None, "send_errors": 0}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.manager.start()
        for target, name in ((self._run, "uplink"), (self._run_beidou, "uplink-short")):
            if name == "uplink-short" and not any(isinstance(b, SHORT) for b in self.manager.links):
                continue
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(10)
        self.manager.stop()

    # ------------------------------------------------------------------ main loop
    def _run(self) -> None:
        while not self._stop.is_set():
            self._read_empty = False
            try:
                busy = self._step()
            except Exception as exc:  # noqa: BLE001 - the uplink thread must outlive any one failure
                self.stats["errors"] = self.stats.get("errors", 0) + 1
                self.oplog.write("error", "uplink_error", f"uplink: {type(exc).__name__}: {exc}; retrying in 1 s",
                                 f"上行出错：{exc}，1 秒后重试")
                self._stop.wait(1)
                continue
            if busy:
                continue
            if self._read_empty and not self._inflight:
                self.cursor.wait(0.2)  # caught up: sleep until the log grows
            else:
                self._wake.wait(0.1)  # acks, or links coming back
                self._wake.clear()

    def _step(self) -> bool:
        """One round: links, acks, timeouts, then fill each link's window. True if it sent."""
        self.manager.tick()
        self._drain_acks()
        self._expire()
        if time.monotonic() - self._meta_at > 5:
            self._refresh_meta()
        sent = False
        ip_links = sorted((b for b in self.manager.links if isinstance(b, MqttBearer) and b.up()),
                          key=self.manager.rank)
        for link in ip_links:
            classes = [p for p in Priority if self.manager.best(p) is link]
            while classes and self._window_open(link):
                if not self._send_batch(link, classes):
                    break
                sent = True
                self._drain_acks()
            # urgent lane: an alarm or command does not wait for a window slot (at most 2 extra)
            urgent = [p for p in classes if p in URGENT]
            if urgent and self._in_flight(link.name) < self.cfg.window + 2:
                sent = self._send_batch(link, urgent) or sent
        return sent

    def _in_flight(self, link: str) -> int:
        return sum(1 for f in self._inflight.values() if f.link == link)

    def _window_open(self, link: MqttBearer) -> bool:
        """The window is link time, not a batch count: ``window`` batches of ``batch_time``
        each. Batches cut short by ``batch_records`` (well-compressed telemetry) leave room
        for more of them, so the link stays busy; an alarm still waits behind at most about
        ``window * batch_time`` of link time. At most ``4 * window`` batches either way."""
        flights = [f for f in self._inflight.values() if f.link == link.name]
        if len(flights) >= 4 * self.cfg.window:
            return False
        budget = self.cfg.window * link.config.bps / 8 * float(self.cfg.batch_time)
        return sum(f.size for f in flights) < budget

    def _limit(self, link: MqttBearer) -> int:
        bpr = self._bpr.get(link.name, 6.0)
        per_batch = link.config.bps / 8 * float(self.cfg.batch_time)
        return max(1, min(self.cfg.batch_records, int(per_batch / bpr)))

    def _send_batch(self, link: MqttBearer, classes: list[Priority]) -> bool:
        entries = self.cursor.read(self._limit(link), classes=classes, after=self._sent)
        if not entries:
            self._read_empty = True
            return False
        while True:
            ranges = self._ranges(entries)
            self._n += 1
            bid = (self._boot << 32) | self._n
            meta = {**self._meta, "link": link.name}
            payload = encode_batch(Batch(self.hub_id, bid, now_ns(), ranges, [e.record for e in entries], meta),
                                   compressor=self._zstd)
            if len(payload) <= link.config.mtu or len(entries) == 1:
                break
            entries = entries[:len(entries) // 2]
        try:
            link.send(payload)
        except TransportError as exc:
            self.stats["send_errors"] += 1
            link.last_error = str(exc)
            return False
        if len(entries) >= 100:  # a lone alarm's header would skew the estimate for bulk batches
            old = self._bpr.get(link.name, len(payload) / len(entries))
            self._bpr[link.name] = 0.7 * old + 0.3 * len(payload) / len(entries)
        for p, (_after, hi) in ranges.items():
            self._sent[p] = max(self._sent[p], hi)
        self._inflight[bid] = _Flight(link.name, ranges, time.monotonic(), len(entries), len(payload))
        self.stats["batches_sent"] += 1
        self.stats["records_sent"] += len(entries)
        self.stats["bytes_sent"] += len(payload)
        return True

    def _ranges(self, entries: list[Entry]) -> dict[int, tuple[int, int]]:
        out: dict[int, tuple[int, int]] = {}
        for e in entries:
            p = int(e.record.priority)
            after = self._sent[p]
            hi = out.get(p, (after, after))[1]
            out[p] = (after, max(hi, e.seq))
        return out

    # ------------------------------------------------------------------ acks and timeouts
    def _on_ack(self, payload: bytes) -> None:
        """paho thread: hand over to the uplink thread (bounded; a dropped ack means a resend)."""
        try:
            self._acks.put_nowait(payload)
        except queue.Full:
            self.stats["acks_ignored"] += 1
        self._wake.set()

    def _drain_acks(self) -> None:
        moved = False
        while True:
            try:
                raw = self._acks.get_nowait()
            except queue.Empty:
                break
            try:
                ack = orjson.loads(raw)
                bid = int(ack["batch"])
                ranges = {int(p): (int(r[0]), int(r[1])) for p, r in ack["ranges"].items()}
                if ack.get("hub") != self.hub_id:
                    raise ValueError("ack for another hub")
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
                self.stats["acks_ignored"] += 1
                continue
            flight = self._inflight.pop(bid, None)
            if flight is not None:
                self.stats["batches_acked"] += 1
                self.stats["records_acked"] += flight.records
            self.stats["last_ack_ns"] = now_ns()
            for p, r in ranges.items():
                self._acked[p].append(r)
            moved = True
        if moved:
            self._commit()

    def _commit(self) -> None:
        changed: dict[int, int] = {}
        for p, ranges in self._acked.items():
            pos = self._committed.get(p, 0)
            progress = True
            while progress:
                progress = False
                for after, hi in ranges:
                    if after <= pos < hi:
                        pos, progress = hi, True
            self._acked[p] = [r for r in ranges if r[1] > pos]
            if pos > self._committed.get(p, 0):
                self._committed[p] = changed[p] = pos
        if changed:
            self.log.commit_cursor(CONSUMER, changed)

    def _expire(self) -> None:
        now = time.monotonic()
        up = {b.name for b in self.manager.links if b.up()}
        for bid, f in list(self._inflight.items()):
            if f.link in up and now - f.sent_at < float(self.cfg.ack_timeout):
                continue
            del self._inflight[bid]
            self.stats["resent_batches"] += 1
            for p, (after, _hi) in f.ranges.items():
                self._sent[p] = max(self._committed.get(p, 0), min(self._sent[p], after))

    # ------------------------------------------------------------------ Beidou short messages
    def _run_beidou(self) -> None:
        while not self._stop.wait(0.25):
            for link in self.manager.links:
                if isinstance(link, SHORT) and link.ready():
                    try:
                        self._beidou_once(link)
                    except Exception as exc:  # noqa: BLE001 - keep trying every interval
                        link.last_error = f"{type(exc).__name__}: {exc}"
                        self.stats["short_message_errors"] += 1

    def _beidou_once(self, link: Any) -> None:
        mine = [p for p in (Priority.ALARM, Priority.POSITION) if self.manager.best(p) is link]
        rec = None
        if Priority.ALARM in mine:
            for e in self.cursor.read(500, classes=[Priority.ALARM]):
                if e.record.id not in self._beidou_sent:
                    rec = e.record
                    break
        if rec is None and Priority.POSITION in mine:
            p = int(Priority.POSITION)
            start = max(self.log.positions(CONSUMER).get(p, 0), self.log.last_seq - 500)
            recent = self.cursor.read(500, classes=[Priority.POSITION], after={p: start})
            if recent and recent[-1].record.id not in self._beidou_sent:
                rec = recent[-1].record
        if rec is None:
            return
        try:
            budget = (shortmsg.budget_bytes(link.config.card_level) if isinstance(link, BeidouBearer)
                      else link.budget)
            payload = shortmsg.encode(rec, self.hub_id, self._mac_key, budget)
            link.send(payload)
        except ValidationError as exc:
            self._beidou_sent[rec.id] = time.time()  # cannot ever fit: do not retry it each interval
            self.stats["short_message_errors"] += 1
            self.oplog.write("warning", "uplink_short_message_unfit", f"uplink: {exc}", f"上行：北斗短报文无法容纳：{exc}")
            return
        except TransportError as exc:
            self.stats["short_message_errors"] += 1
            link.last_error = str(exc)
            return
        self._beidou_sent[rec.id] = time.time()
        while len(self._beidou_sent) > 10_000:
            self._beidou_sent.popitem(last=False)
        self.stats["short_messages"] += 1

    # ------------------------------------------------------------------ status
    def _refresh_meta(self) -> None:
        self._meta_at = time.monotonic()
        self._meta = {"backlog": self.cursor.backlog(),
                      "links": {b.name: ("up" if b.up() else "down") for b in self.manager.links}}

    def oldest_unsent(self) -> dict[str, float]:
        """Age in seconds of the oldest record not yet acknowledged, per class that has one."""
        out = {}
        now = now_ns()
        for p in Priority:
            first = self.cursor.read(1, classes=[p])
            if first:
                out[p.label] = round(max(0, now - first[0].record.ts) / 1e9, 1)
        return out

    def status(self) -> dict[str, Any]:
        backlog = self.cursor.backlog()
        return {"hub_id": self.hub_id, "links": self.manager.status(), "routes": self.manager.chosen(),
                "backlog": backlog, "backlog_total": sum(backlog.values()),
                "oldest_unsent_s": self.oldest_unsent(), "in_flight": len(self._inflight),
                "committed": {Priority(p).label: s for p, s in self._committed.items()},
                "stats": dict(self.stats)}

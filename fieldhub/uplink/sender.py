"""The uplink: store-and-forward of the durable log to the center, most urgent class first.

``UplinkOutput`` is what the consumer runner (``fieldhub.core.consumer``) drives: one lane per
IP link the link manager picks for some class (plus an urgent lane for alarms and commands),
each windowed by link time. The runner reads through the ``uplink`` cursor past batches still
in flight and moves the cursor only when the center acknowledges a batch on
``fh/hub/{hub}/ack`` (sent after the center's durable write), per class, as a contiguous
prefix: acknowledged ranges chain from the committed position. An ack binds to what was sent:
it is applied only for a batch this run sent on the link the ack arrived on, and only when it
names exactly the ranges that batch carried; anything else (a forged or stray ack) is counted,
warned about in the operator log and ignored, so it can neither move the cursor nor let the
log compact records the center never stored. A batch not acknowledged in time, or whose link
drops, is read and sent again (the center deduplicates by record id).
``Uplink`` is the component: that runner, plus alarms and latest positions as Beidou /
Tiantong short messages when such a link is the best one left for them.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import zstandard

from fieldhub.core.backoff import Backoff
from fieldhub.core.component import Command, HubContext
from fieldhub.core.consumer import Batch, ConsumerRunner, Done, Lane, Output, Ranges, ranges_of
from fieldhub.core.errors import TransportError, ValidationError
from fieldhub.core.log import Cursor, DurableLog
from fieldhub.core.oplog import OpLog
from fieldhub.core.records import Priority, now_ns
from fieldhub.core.worker import DEFAULT_JOIN, Worker
from fieldhub.uplink import acksign, shortmsg
from fieldhub.uplink.bearers.beidou import BeidouBearer
from fieldhub.uplink.bearers.mqtt import MqttBearer
from fieldhub.uplink.bearers.tiantong import TiantongSmsBearer
from fieldhub.uplink.codec import Batch as WireBatch
from fieldhub.uplink.codec import encode_batch
from fieldhub.uplink.config import UplinkConfig
from fieldhub.uplink.links import LinkManager

CONSUMER = "uplink"
#: classes that may go beyond the window, so they never wait for an ack to be sent
URGENT = (Priority.ALARM, Priority.COMMAND)
#: bearers that carry one record summary per message (not batches)
SHORT = (BeidouBearer, TiantongSmsBearer)
#: batches remembered (link, ranges) until their ack comes; far more than ever fly at once
SENT_MEMORY = 8192
#: seconds between two operator-log lines about ignored acks (the first is written at once)
ACK_WARN_EVERY = 60.0


class _Unbound(Exception):
    """An ack that matches nothing this run sent (why, in English and Chinese)."""

    def __init__(self, en: str, zh: str, *, quiet: bool = False) -> None:
        super().__init__(en)
        self.en, self.zh, self.quiet = en, zh, quiet


def build(ctx: HubContext, cfg: UplinkConfig) -> Uplink | None:
    """Hub component builder: the uplink when ``[uplink] enabled``."""
    if not cfg.enabled:
        return None
    return Uplink(ctx.log, cfg, ctx.hub_id, ctx.oplog)


class UplinkOutput(Output):
    """The uplink as the consumer runner drives it (see the module docstring)."""

    name = CONSUMER
    poll = 0.1

    def __init__(self, cfg: UplinkConfig, hub_id: str, oplog: OpLog) -> None:
        self.cfg, self.hub_id, self.oplog = cfg, hub_id, oplog
        #: when set, only acks the center signed with this hub's key are read at all
        self.ack_key = acksign.parse_key(cfg.ack_key, "uplink.ack_key") if cfg.ack_key else None
        self.batch = cfg.batch_records
        self._acks: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=10_000)
        #: batch id (this run's) -> (link, ranges) of every batch sent and not yet acknowledged
        self._sent: OrderedDict[int, tuple[str, Ranges]] = OrderedDict()
        #: batch ids recently acknowledged (a second ack of one is a broker redelivery, not an attack)
        self._acked: OrderedDict[int, None] = OrderedDict()
        self._ack_warned_at = -ACK_WARN_EVERY
        self._ack_unwarned = 0
        #: wakes the runner's loop (set by ``Uplink``)
        self.wake: Callable[[], None] = lambda: None
        self.manager = LinkManager(cfg, hub_id, self._on_ack, oplog)
        self._links = {b.name: b for b in self.manager.links}
        self._boot = int.from_bytes(os.urandom(3), "big")
        self._bpr: dict[str, float] = {}  # bytes per record, per link (EWMA)
        self._zstd = zstandard.ZstdCompressor(level=cfg.zstd_level)
        self._meta: dict[str, Any] = {}
        self._meta_at = 0.0
        self.stats: dict[str, Any] = {"batches_sent": 0, "records_sent": 0, "bytes_sent": 0,
                                      "acks_ignored": 0, "acks_duplicate": 0, "acks_other_link": 0,
                                      "acks_bad_mac": 0, "ack_key_set": self.ack_key is not None,
                                      "short_messages": 0, "short_message_errors": 0,
                                      "last_ack_ns": None, "send_errors": 0}

    def start(self) -> None:
        self.manager.start()

    def close(self) -> None:
        self.manager.stop()

    # ------------------------------------------------------------------ lanes and windows
    def tick(self, runner: ConsumerRunner) -> None:
        self.manager.tick()
        self._drain_acks(runner)
        if time.monotonic() - self._meta_at > 5:
            self._refresh_meta(runner)

    def sent(self, runner: ConsumerRunner) -> None:
        self._drain_acks(runner)

    def lanes(self, inflight: Sequence[Batch]) -> list[Lane]:
        """Each IP link that is up, best first, with the classes it now carries: its bulk lane
        while its window is open, then an urgent lane (alarms, commands) that does not wait for
        a window slot (at most 2 batches beyond the window)."""
        out = []
        ip_links = sorted((b for b in self.manager.links if isinstance(b, MqttBearer) and b.up()),
                          key=self.manager.rank)
        for link in ip_links:
            classes = [p for p in Priority if self.manager.best(p) is link]
            if not classes:
                continue
            flights = [b for b in inflight if b.dest == link.name]
            if self._window_open(link, flights):
                out.append(Lane(link.name, classes, self._limit(link)))
            urgent = [p for p in classes if p in URGENT]
            if urgent and len(flights) < self.cfg.window + 2:
                out.append(Lane(link.name, urgent, self._limit(link), key="urgent"))
        return out

    def _window_open(self, link: MqttBearer, flights: list[Batch]) -> bool:
        """The window is link time, not a batch count: ``window`` batches of ``batch_time``
        each. Batches cut short by ``batch_records`` (well-compressed telemetry) leave room
        for more of them, so the link stays busy; an alarm still waits behind at most about
        ``window * batch_time`` of link time. At most ``4 * window`` batches either way."""
        if len(flights) >= 4 * self.cfg.window:
            return False
        budget = self.cfg.window * link.config.bps / 8 * float(self.cfg.batch_time)
        return sum(f.size for f in flights) < budget

    def _limit(self, link: MqttBearer) -> int:
        bpr = self._bpr.get(link.name, 6.0)
        per_batch = link.config.bps / 8 * float(self.cfg.batch_time)
        return max(1, min(self.cfg.batch_records, int(per_batch / bpr)))

    # ------------------------------------------------------------------ sending
    def read(self, cursor: Cursor, after: dict[int, int], lane: Lane) -> Batch | None:
        entries = cursor.read(lane.limit, classes=lane.classes, after=after)
        if not entries:
            return None
        return Batch(ranges_of(entries, after), len(entries), entries)

    def send(self, batch: Batch, done: Done) -> bool:
        """Encode (halving the batch until it fits the link's MTU) and publish; the center's
        ack accepts it later. False when the link refused the publish."""
        link = self._links[batch.dest]
        entries = batch.payload
        after = {p: lo for p, (lo, _hi) in batch.ranges.items()}
        ranges = batch.ranges
        while True:
            meta = {**self._meta, "link": link.name}
            payload = encode_batch(WireBatch(self.hub_id, (self._boot << 32) | batch.id, now_ns(), ranges,
                                             [e.record for e in entries], meta), compressor=self._zstd)
            if len(payload) <= link.config.mtu or len(entries) == 1:
                break
            entries = entries[:len(entries) // 2]
            ranges = ranges_of(entries, after)
        try:
            link.send(payload)
        except TransportError as exc:
            self.stats["send_errors"] += 1
            link.last_error = str(exc)
            return False
        if len(entries) >= 100:  # a lone alarm's header would skew the estimate for bulk batches
            old = self._bpr.get(link.name, len(payload) / len(entries))
            self._bpr[link.name] = 0.7 * old + 0.3 * len(payload) / len(entries)
        batch.ranges, batch.count, batch.size, batch.payload = ranges, len(entries), len(payload), None
        self._sent[batch.id] = (link.name, dict(ranges))
        while len(self._sent) > SENT_MEMORY:
            self._sent.popitem(last=False)
        self.stats["batches_sent"] += 1
        self.stats["records_sent"] += len(entries)
        self.stats["bytes_sent"] += len(payload)
        return True

    def expired(self, batch: Batch, now: float) -> bool:
        """Not acknowledged within ``ack_timeout``, or its link went down: send it again."""
        link = self._links.get(batch.dest)
        return link is None or not link.up() or now - batch.sent_at >= float(self.cfg.ack_timeout)

    # ------------------------------------------------------------------ acks
    def _on_ack(self, link: str, payload: bytes) -> None:
        """paho thread: hand over to the runner's thread (bounded; a dropped ack means a resend)."""
        try:
            self._acks.put_nowait((link, payload))
        except queue.Full:
            self.stats["acks_ignored"] += 1
        self.wake()

    def _bind_ack(self, link: str, raw: bytes) -> tuple[int, Ranges]:
        """The (batch id, ranges) an ack on ``link`` accepts (batch id -1: a repeat of an ack
        already taken); ``_Unbound`` with the reason (English, Chinese) when it accepts nothing.
        With an ack key, the MAC is checked first and only the bytes it covers are parsed."""
        if self.ack_key is not None:
            signed = acksign.verify(raw, self.ack_key)
            if signed is None:
                self.stats["acks_bad_mac"] += 1
                raise _Unbound("ack not signed with this hub's ack key (unsigned, wrong key or altered)",
                               "确认未用本车确认密钥签名（未签名、密钥错误或被篡改）")
            raw = signed
        try:
            ack = orjson.loads(raw)
            hub, bid = ack["hub"], int(ack["batch"])
            ranges = {int(p): (int(r[0]), int(r[1])) for p, r in ack["ranges"].items()}
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError):
            raise _Unbound("malformed ack", "确认格式错误") from None
        if hub != self.hub_id:
            raise _Unbound(f"ack names hub {str(hub)[:64]!r}", f"确认指向其他指挥车 {str(hub)[:64]!r}")
        if bid >> 32 != self._boot:
            raise _Unbound(f"batch {bid} was not sent by this run", f"批次 {bid} 不是本次运行发送的")
        local = bid & 0xFFFF_FFFF
        sent = self._sent.get(local)
        if sent is None:
            if local in self._acked:
                return -1, {}
            raise _Unbound(f"batch {local} is not in flight", f"批次 {local} 不在途中")
        dest, carried = sent
        if dest != link:
            # two links to one center broker both hear every ack: the copy on the link the batch
            # went out on is the one taken; this one is counted, but it is no sign of an attack
            raise _Unbound(f"batch {local} was sent on {dest}, not {link}", f"批次 {local} 经 {dest} 发送，而非 {link}",
                           quiet=True)
        if ranges != carried:
            raise _Unbound(f"ranges {ranges} are not the ones batch {local} carried {carried}",
                           f"范围 {ranges} 与批次 {local} 所载 {carried} 不符")
        del self._sent[local]
        self._acked[local] = None
        while len(self._acked) > SENT_MEMORY:
            self._acked.popitem(last=False)
        return local, carried

    def _ignore_ack(self, link: str, en: str, zh: str) -> None:
        """Count an ack that accepts nothing; say so in the operator log (at most once a minute)."""
        self.stats["acks_ignored"] += 1
        self._ack_unwarned += 1
        now = time.monotonic()
        if now - self._ack_warned_at < ACK_WARN_EVERY:
            return
        n, self._ack_unwarned, self._ack_warned_at = self._ack_unwarned, 0, now
        self.oplog.write("warning", "uplink_ack_ignored",
                         f"uplink: ignored {n} acknowledgement(s) on link {link} that match nothing sent "
                         f"(forged or stray), e.g. {en}; {self.stats['acks_ignored']} ignored in all",
                         f"上行：链路 {link} 上有 {n} 条确认与已发送的批次不符（伪造或错发），已忽略，例如：{zh}；"
                         f"累计忽略 {self.stats['acks_ignored']} 条", link=link, ignored=self.stats["acks_ignored"])

    def _drain_acks(self, runner: ConsumerRunner) -> None:
        moved = False
        while True:
            try:
                link, raw = self._acks.get_nowait()
            except queue.Empty:
                break
            try:
                bid, ranges = self._bind_ack(link, raw)
            except _Unbound as why:
                if why.quiet:
                    self.stats["acks_other_link"] += 1
                else:
                    self._ignore_ack(link, why.en, why.zh)
                continue
            if bid < 0:  # a second ack of a batch already accepted (broker redelivery)
                self.stats["acks_duplicate"] += 1
                continue
            # a batch that timed out is being sent again, but what it carried is stored all the same
            runner.accept(bid if bid in runner.inflight else -1, ranges, commit=False)
            self.stats["last_ack_ns"] = now_ns()
            moved = True
        if moved:
            runner.commit()

    # ------------------------------------------------------------------ operator log
    def failure_line(self, exc: BaseException, delay: float, attempts: int) -> tuple[str, str, str]:
        return ("uplink_error", f"uplink: {type(exc).__name__}: {exc}; retrying in {delay:.1f} s",
                f"上行出错：{exc}，{delay:.1f} 秒后重试")

    def restart_line(self, exc: BaseException, delay: float) -> tuple[str, str, str]:
        return ("uplink_error", f"uplink: {type(exc).__name__}: {exc}; retrying in {delay:g} s",
                f"上行出错：{exc}，{delay:g} 秒后重试")

    def _refresh_meta(self, runner: ConsumerRunner) -> None:
        self._meta_at = time.monotonic()
        self._meta = {"backlog": runner.cursor.backlog(),
                      "links": {b.name: ("up" if b.up() else "down") for b in self.manager.links}}


class Uplink(ConsumerRunner):
    """The uplink component: the consumer runner driving an ``UplinkOutput``, and the short-message thread."""

    def __init__(self, log: DurableLog, cfg: UplinkConfig, hub_id: str, oplog: OpLog | None = None) -> None:
        self.cfg, self.hub_id = cfg, hub_id
        out = UplinkOutput(cfg, hub_id, oplog or OpLog(None))
        super().__init__(log, out, oplog=out.oplog, max_wait=0.2, backoff=Backoff(0.5, 30.0))
        out.wake = self.wake
        self.up_output = out
        self.manager = out.manager
        self._mac_key = bytes.fromhex(cfg.mac_key) if cfg.mac_key else b""
        self._beidou_sent: OrderedDict[str, float] = OrderedDict()
        self._short = Worker("uplink-short", self._run_beidou)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        super().start()
        if any(isinstance(b, SHORT) for b in self.manager.links):
            self._short.start()

    def stop(self, timeout: float = 2 * DEFAULT_JOIN) -> None:
        deadline = time.monotonic() + timeout
        self._short.signal()
        self._short.join(timeout / 2)
        super().stop(max(0.1, deadline - time.monotonic()))

    def _in_flight(self, link: str) -> int:
        return sum(1 for b in list(self.inflight.values()) if b.dest == link)

    @property
    def stats(self) -> dict[str, Any]:
        """The uplink's counters (the runner's under their uplink names)."""
        run = self.counters
        out = {**self.up_output.stats, "batches_acked": run["batches"], "records_acked": run["written"],
               "resent_batches": run["resent"]}
        if run["errors"]:
            out["errors"] = run["errors"]
        return out

    # ------------------------------------------------------------------ Beidou short messages
    def _run_beidou(self, stop: threading.Event) -> None:
        while not stop.wait(0.25):
            for link in self.manager.links:
                if isinstance(link, SHORT) and link.ready():
                    try:
                        self._beidou_once(link)
                    except Exception as exc:  # noqa: BLE001 - keep trying every interval
                        link.last_error = f"{type(exc).__name__}: {exc}"
                        self.up_output.stats["short_message_errors"] += 1

    def _beidou_once(self, link: BeidouBearer | TiantongSmsBearer) -> None:
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
            self.up_output.stats["short_message_errors"] += 1
            self.oplog.write("warning", "uplink_short_message_unfit", f"uplink: {exc}",
                             f"上行：北斗短报文无法容纳：{exc}")
            return
        except TransportError as exc:
            self.up_output.stats["short_message_errors"] += 1
            link.last_error = str(exc)
            return
        self._beidou_sent[rec.id] = time.time()
        while len(self._beidou_sent) > 10_000:
            self._beidou_sent.popitem(last=False)
        self.up_output.stats["short_messages"] += 1

    # ------------------------------------------------------------------ status
    def oldest_unsent(self) -> dict[str, float]:
        """Age in seconds of the oldest record not yet acknowledged, per class that has one."""
        out = {}
        now = now_ns()
        for p in Priority:
            first = self.cursor.read(1, classes=[p])
            if first:
                out[p.label] = round(max(0, now - first[0].record.ts) / 1e9, 1)
        return out

    def report(self) -> dict[str, Any]:
        """What ``fieldhub uplink status`` shows: links, routes, backlog and oldest unsent record per class."""
        backlog = self.cursor.backlog()
        return {"hub_id": self.hub_id, "links": self.manager.status(), "routes": self.manager.chosen(),
                "backlog": backlog, "backlog_total": sum(backlog.values()),
                "oldest_unsent_s": self.oldest_unsent(), "in_flight": len(self.inflight),
                "committed": {Priority(p).label: s for p, s in self.committed.items()},
                "stats": dict(self.stats)}

    def status(self) -> dict[str, Any]:
        """The common shape: the runner's values and the uplink's counters; the report's tables in ``detail``."""
        out = super().status()
        report = self.report()
        for key, value in report["stats"].items():
            out.setdefault(key, value)
        out["hub_id"] = self.hub_id
        out["detail"].update({k: report[k] for k in ("links", "routes", "backlog", "oldest_unsent_s",
                                                    "committed", "stats")})
        return out

    def commands(self) -> dict[str, Command]:
        """``uplink.status`` on the control socket: the full report (`fieldhub uplink status`)."""
        return {"status": lambda args: self.report()}

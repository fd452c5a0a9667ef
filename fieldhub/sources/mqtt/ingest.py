"""MQTT ingest: QoS 1 persistent session, ack only after the log commit, dedupe, quarantine, presence."""

from __future__ import annotations

import socket
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fieldhub.core.component import Command, HubContext, make_status
from fieldhub.core.errors import ConfigError, FieldhubError, TransportError
from fieldhub.core.log import DurableLog, QuarantineCallback
from fieldhub.core.oplog import OpLog
from fieldhub.core.records import Priority, Record
from fieldhub.core.registry import Device, Registry
from fieldhub.core.worker import Worker
from fieldhub.sources.mqtt.client import BufferedClient
from fieldhub.sources.mqtt.config import MqttConfig
from fieldhub.sources.mqtt.spec import SOURCE, UP_FILTER, Rejected, decode, is_will, parse_topic
from fieldhub.sources.mqtt.state import STATE_FILE, MqttState

HUB_USER = "fieldhub"


def build(ctx: HubContext, cfg: MqttConfig) -> MqttIngest | None:
    """Hub component builder: None unless ``[mqtt] broker`` is set."""
    if not cfg.broker:
        return None
    return MqttIngest(cfg, ctx.log, ctx.registry, ctx.oplog, ctx.data_dir / STATE_FILE, hub_id=ctx.hub_id)


def broker_address(url: str) -> tuple[str, int, bool]:
    u = urlparse(url)
    tls = u.scheme in ("mqtts", "ssl")
    if not u.hostname:
        raise ConfigError(f"broker {url!r}", key="mqtt.broker", expected="mqtt://HOST:PORT")
    return u.hostname, u.port or (8883 if tls else 1883), tls


#: while the broker stays unreachable (or refuses the hub), the operator log says so again this often
REMIND_S = 300.0

class AckPipeline:
    """Acknowledges batches to the broker strictly in arrival order, each once it is durable.

    ``done`` (on the log's writer thread) only moves the acks of the oldest finished batches to
    ``ready``; ``flush`` (on the ingest worker) sends them. The writer never waits on a socket.
    """

    def __init__(self, send: Callable[[list[tuple[int, int, int]]], None],
                 notify: Callable[[], None] = lambda: None) -> None:
        self._send = send
        self._notify = notify
        self._lock = threading.Lock()
        self._tickets: deque[list] = deque()  # [done, acks]
        self._ready: deque[list[tuple[int, int, int]]] = deque()

    def open(self, acks: list[tuple[int, int, int]]) -> list:
        ticket = [False, acks]
        with self._lock:
            self._tickets.append(ticket)
        return ticket

    def done(self, ticket: list) -> None:
        with self._lock:
            ticket[0] = True
            moved = False
            while self._tickets and self._tickets[0][0]:
                self._ready.append(self._tickets.popleft()[1])
                moved = True
        if moved:
            self._notify()

    def flush(self) -> int:
        """Send every ready ack, oldest first (one thread calls this)."""
        n = 0
        while self._ready:
            acks = self._ready.popleft()
            self._send(acks)
            n += len(acks)
        return n

    def drop_all(self) -> None:
        with self._lock:
            self._tickets.clear()
            self._ready.clear()

    def pending(self) -> int:
        with self._lock:
            return sum(len(t[1]) for t in self._tickets) + sum(len(a) for a in self._ready)

    def has_ready(self) -> bool:
        """Acks waiting for ``flush`` (read without the lock: a hint for the worker's idle check)."""
        return bool(self._ready)


class Presence:
    """Online/offline per device from its last message, its last will, and per-kind timeouts."""

    def __init__(self, offline_after: dict[str, float]) -> None:
        self.offline_after = offline_after
        self.devices: dict[str, list] = {}  # id -> [last_seen_ns, online, since_ns, reason, kind]
        self.dirty = False

    def timeout(self, kind: str) -> float:
        return float(self.offline_after.get(kind, self.offline_after.get("default", 600)))

    def seen(self, device_id: str, kind: str, now_ns: int) -> bool:
        """Record a message; True if the device just came (back) online."""
        d = self.devices.get(device_id)
        self.dirty = True
        if d is None:
            self.devices[device_id] = [now_ns, True, now_ns, "message", kind]
            return True
        d[0] = max(d[0], now_ns)
        d[4] = kind
        if not d[1]:
            d[1], d[2], d[3] = True, now_ns, "message"
            return True
        return False

    def went_offline(self, device_id: str, kind: str, now_ns: int, reason: str) -> bool:
        d = self.devices.setdefault(device_id, [0, True, now_ns, reason, kind])
        self.dirty = True
        if d[1]:
            d[1], d[2], d[3] = False, now_ns, reason
            return True
        return False

    def expired(self, now_ns: int) -> list[tuple[str, str, int]]:
        out = []
        for dev, (last, online, _since, _reason, kind) in self.devices.items():
            if online and now_ns - last > self.timeout(kind) * 1e9:
                out.append((dev, kind, last))
        return out

    def snapshot(self) -> list[dict[str, Any]]:
        return [{"device_id": dev, "online": on, "last_seen_ns": last, "since_ns": since,
                 "reason": reason, "kind": kind}
                for dev, (last, on, since, reason, kind) in sorted(self.devices.items())]

    def summary(self) -> dict[str, int]:
        online = sum(1 for d in self.devices.values() if d[1])
        return {"online": online, "offline": len(self.devices) - online}


class MqttIngest:
    """The hub's MQTT source; see the module docstring and docs/mqtt.md."""

    name = "mqtt"

    def __init__(self, cfg: MqttConfig, log: DurableLog, registry: Registry, oplog: OpLog,
                 state_path: Path, *, hub_id: str = "hub", batch_max: int = 2000) -> None:
        self.cfg, self.log, self.registry, self.oplog = cfg, log, registry, oplog
        self.hub_id = hub_id
        self.state_path = state_path
        self.batch_max = batch_max
        self.host, self.port, self.tls = broker_address(cfg.broker)
        # paho's thread appends, the worker pops: a deque needs no lock for that (unlike queue.Queue)
        self._inbox: deque[tuple] = deque()
        self._wake = threading.Event()
        self._idle = False
        self._gen = 0
        self._committed: deque[list[tuple[str, int, bytes]]] = deque()
        self._closing = False
        self.connected = False
        self.presence = Presence({k: float(v) for k, v in cfg.offline_after.items()})
        self.stats = {"received": 0, "stored": 0, "duplicates": 0, "quarantined": 0, "acked": 0,
                      "unknown_device": 0, "clock_suspect": 0, "wills": 0, "connects": 0,
                      "disconnects": 0, "append_errors": 0, "acks_dropped_reconnect": 0,
                      "offline_alarms": 0}
        self.last_error: str | None = None
        self._failing_since: float | None = None  # first failed connect of the current run of failures
        self._reminded = 0.0
        self._failures = 0
        self.acks = AckPipeline(self._send_acks, self._poke)
        self._client = self._make_client()
        self._worker = Worker("mqtt-ingest", self._run)
        self.state: MqttState  # opened by start()
        self._running = False
        self._old_switch: float | None = None
        self._devices: dict[str, Device | None] = {}
        self._devices_until = 0.0
        #: receive-to-durable seconds per message, when a benchmark sets a list here
        self.latencies: list[float] | None = None

    def commands(self) -> dict[str, Command]:
        """``mqtt.presence`` and ``mqtt.readmit`` on the control socket."""
        return {"presence": lambda args: self.presence_report(), "readmit": self._readmit_cmd}

    # ---------------------------------------------------------------- the paho client
    def _make_client(self) -> mqtt.Client:
        cid = self.cfg.client_id or f"fieldhub-{self.hub_id}"
        c = BufferedClient(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5,
                           manual_ack=True)
        if self.cfg.username:
            c.username_pw_set(self.cfg.username, self.cfg.password or None)
        if self.tls:
            c.tls_set(ca_certs=self.cfg.tls_ca or None, cert_reqs=ssl.CERT_REQUIRED)
        c.reconnect_delay_set(1, 30)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        return c

    def _connect_props(self) -> Properties:
        p = Properties(PacketTypes.CONNECT)
        p.SessionExpiryInterval = int(self.cfg.session_expiry)
        p.ReceiveMaximum = self.cfg.receive_maximum
        return p

    def _problem(self, level: str, event: str, en: str, zh: str) -> None:
        """A connection problem: said at once, then reminded every REMIND_S while it lasts (paho
        retries every few seconds: one line per retry would bury everything else)."""
        now = time.monotonic()
        self.last_error = en
        self._failures += 1
        if self._failing_since is None:
            self._failing_since = self._reminded = now
            self.oplog.write(level, event, f"{en}; retrying", f"{zh}，正在重试", broker=self.cfg.broker)
        elif now - self._reminded >= REMIND_S:
            self._reminded = now
            minutes = (now - self._failing_since) / 60
            self.oplog.write(level, event, f"{en}; still failing after {self._failures} attempts in "
                             f"{minutes:.0f} min", f"{zh}，已重试 {self._failures} 次（{minutes:.0f} 分钟）",
                             broker=self.cfg.broker, attempts=self._failures)

    def _on_connect_fail(self, client, userdata) -> None:
        self._problem("warning", "mqtt_unreachable", f"cannot reach MQTT broker {self.cfg.broker}",
                      f"无法连接 MQTT 代理 {self.cfg.broker}")

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            self._problem("error", "mqtt_refused", f"broker {self.cfg.broker} refused the hub: {reason}",
                          f"MQTT 代理拒绝连接：{reason}")
            return
        if self._failing_since is not None:
            down = time.monotonic() - self._failing_since
            self.oplog.write("info", "mqtt_recovered", f"broker {self.cfg.broker} reached again after "
                             f"{self._failures} failed attempts ({down:.0f}s)",
                             f"已重新连接 MQTT 代理（失败 {self._failures} 次，{down:.0f} 秒）",
                             attempts=self._failures, seconds=round(down, 1))
            self._failing_since, self._failures, self.last_error = None, 0, None
        self._gen += 1
        self.connected = True
        self.stats["connects"] += 1
        client.subscribe(UP_FILTER, qos=1)
        self.oplog.write("info", "mqtt_connected",
                         f"connected to {self.cfg.broker} (session present: {flags.session_present})",
                         f"已连接 MQTT 代理 {self.cfg.broker}（会话保留：{flags.session_present}）")

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        self._gen += 1  # acks for the old connection's packet ids must not go out on the new one
        if self.connected:
            self.stats["disconnects"] += 1
            if not self._closing:
                self.oplog.write("warning", "mqtt_disconnected",
                                 f"lost broker {self.cfg.broker} ({reason}); reconnecting",
                                 f"与 MQTT 代理断开（{reason}），正在重连")
        self.connected = False

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        self._inbox.append((self._gen, msg.mid, msg.qos, msg.topic, msg.payload, time.time_ns(),
                            time.monotonic()))
        self._poke()

    def _poke(self) -> None:
        if self._idle:
            self._idle = False
            self._wake.set()

    def _send_acks(self, acks: list[tuple[int, int, int]]) -> None:
        gen = self._gen
        for g, mid, qos in acks:
            if qos == 0:
                continue
            if g != gen:
                self.stats["acks_dropped_reconnect"] += 1  # the broker redelivers; dedupe drops it
                continue
            self._client.ack(mid, qos)
            self.stats["acked"] += 1

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._old_switch = sys.getswitchinterval()
        if self.cfg.switch_interval > 0:
            sys.setswitchinterval(float(self.cfg.switch_interval))
        self.state = MqttState(self.state_path)
        self._running = True
        for dev, last, online, since, reason in self.state.load_presence():
            d = self.registry.get(dev)
            self.presence.devices[dev] = [last, online, since, reason, d.kind if d else "?"]
        self._worker.start()
        try:
            self._client.connect_async(self.host, self.port, keepalive=30, clean_start=False,
                                       properties=self._connect_props())
        except (OSError, ValueError) as exc:
            raise TransportError(f"mqtt broker {self.cfg.broker}: {exc}") from None
        self._client.loop_start()

    def stop(self, timeout: float = 5.0) -> None:
        """Disconnect, end the worker (joined for at most ``timeout``), save presence. Idempotent."""
        if not self._running:
            return
        self._running = False
        deadline = time.monotonic() + timeout
        self._closing = True
        self._client.disconnect()
        self._client.loop_stop()
        if not self._worker.stop(deadline - time.monotonic()):
            self.oplog.write("warning", "mqtt_stop_slow",
                             f"the MQTT worker did not end within {timeout:.1f}s; leaving it behind",
                             f"MQTT 工作线程未在 {timeout:.1f} 秒内结束")
            return  # it still owns the state db: closing it under the worker would corrupt its write
        self._flush_committed()
        self._save_presence(force=True)
        self.state.close()
        if self._old_switch is not None:
            sys.setswitchinterval(self._old_switch)

    # ---------------------------------------------------------------- the worker
    def _run(self, stop: threading.Event) -> None:
        next_check = time.monotonic() + 1.0
        next_prune = time.monotonic() + 60
        next_flush = 0.0
        inbox = self._inbox
        while not stop.is_set():
            self.acks.flush()
            if not inbox and not self.acks.has_ready():
                self._idle = True
                if not inbox and not self.acks.has_ready():  # arrived before the flag: don't sleep on it
                    self._wake.wait(0.25)
                self._wake.clear()
                self._idle = False
            elif inbox and len(inbox) < self.batch_max:
                time.sleep(0.002)  # let a batch gather: fewer, larger appends and less GIL ping-pong
            batch: list[tuple] = []
            while inbox and len(batch) < self.batch_max:
                batch.append(inbox.popleft())
            if time.monotonic() >= next_flush:
                self._flush_committed()
                next_flush = time.monotonic() + 0.5
            if batch:
                try:
                    self._process(batch)
                except FieldhubError as exc:  # the log refused (closed, full): do not ack
                    self._append_failed(exc)
            now = time.monotonic()
            if now >= next_check:
                self._check_presence()
                self._save_presence()
                next_check = now + 1.0
            if now >= next_prune:
                self.state.prune(float(self.cfg.dedupe_horizon))
                next_prune = now + 60

    def _flush_committed(self) -> None:
        rows: list[tuple[str, int, bytes]] = []
        while self._committed:
            rows.extend(self._committed.popleft())
        if rows:
            self.state.add_seen(rows)

    def _process(self, batch: list[tuple]) -> None:
        records: list[Record] = []
        acks: list[tuple[int, int, int]] = []
        seen_rows: list[tuple[str, int, bytes]] = []
        in_batch: dict[tuple[str, int], bytes] = {}
        held: list[tuple[str, bytes, str | None, str, int]] = []
        if time.monotonic() >= self._devices_until:  # registry changes show within a second
            self._devices.clear()
            self._devices_until = time.monotonic() + 1.0
        devices = self._devices
        for gen, mid, qos, topic, payload, recv_ns, _mono in batch:
            self.stats["received"] += 1
            acks.append((gen, mid, qos))
            try:
                device_id, channel = parse_topic(topic)
                if device_id in devices:
                    device = devices[device_id]
                else:
                    device = devices[device_id] = self.registry.get(device_id)
                if device is not None and is_will(channel, payload):
                    self.stats["wills"] += 1
                    self._offline(device_id, device.kind, recv_ns, "last_will", records)
                    continue
                msg = decode(topic, payload, device, recv_ns, max_bytes=int(self.cfg.max_payload),
                             max_skew_s=float(self.cfg.max_clock_skew))
            except Rejected as exc:
                if exc.reason == "unknown device":
                    self.stats["unknown_device"] += 1
                held.append((exc.reason, payload, exc.device_id, topic, recv_ns))
                continue
            key = (msg.device_id, msg.seq)
            prev = in_batch.get(key)
            if prev is None:
                prev = self.state.seen(*key)
            if prev is not None:
                if prev == msg.digest:
                    self.stats["duplicates"] += 1
                else:
                    held.append((f"seq {msg.seq} reused with different content (device counter reset?)",
                                 payload, msg.device_id, topic, recv_ns))
                continue
            in_batch[key] = msg.digest
            seen_rows.append((msg.device_id, msg.seq, msg.digest))
            if msg.clock_suspect:
                self.stats["clock_suspect"] += 1
            assert device is not None
            if self.presence.seen(msg.device_id, device.kind, recv_ns):
                records.append(self._presence_record(msg.device_id, device.kind, recv_ns, True, "message"))
            records.append(msg.record)
        ticket = self.acks.open(acks)
        received = [item[6] for item in batch] if self.latencies is not None else None

        def committed(result, error) -> None:
            if error is not None:
                self._append_failed(error)
                return
            if received is not None and self.latencies is not None:
                t = time.monotonic()
                self.latencies.extend(t - m for m in received)
            if records and result is not None:
                self.stats["stored"] += result.added
                self.stats["duplicates"] += result.duplicates
            if seen_rows:
                self._committed.append(seen_rows)
            self.acks.done(ticket)

        # the log's writer commits in submission order, so the last op's callback means all are durable
        for i, item in enumerate(held):
            last = i == len(held) - 1 and not records
            self._quarantine(*item, committed if last else self._quarantine_done)
        if records:
            self.log.append(records, callback=committed)
        elif not held:
            self.acks.done(ticket)  # only duplicates: nothing new to make durable

    def _quarantine(self, reason: str, payload: bytes, device_id: str | None, topic: str,
                    recv_ns: int, callback: QuarantineCallback) -> None:
        def counted(result: int | None, error: BaseException | None) -> None:
            if error is None:
                # a message already held (retained, or redelivered after a crash) is a duplicate
                self.stats["duplicates" if getattr(result, "repeat", False) else "quarantined"] += 1
            callback(result, error)

        # identity = topic and payload: however often the broker delivers it, it is held once
        self.log.quarantine(SOURCE, reason, payload, device_id=device_id,
                            meta={"topic": topic[:300], "recv_ns": recv_ns}, callback=counted,
                            key=topic.encode("utf-8", "surrogateescape") + b"\x00" + payload)

    def _quarantine_done(self, result, error) -> None:
        if error is not None:
            self._append_failed(error)

    def _append_failed(self, error: BaseException) -> None:
        """Nothing after this point may be acked: drop the connection so the broker redelivers."""
        self.stats["append_errors"] += 1
        self.last_error = str(error)
        self._gen += 1
        self.oplog.write("error", "mqtt_append_failed",
                         f"could not make MQTT messages durable ({error}); reconnecting so the broker "
                         "redelivers them", f"MQTT 消息写入失败（{error}），重连以便代理重发")
        self.acks.drop_all()
        sock = self._client.socket()
        if isinstance(sock, socket.socket):  # None while down (a TLS socket is one too)
            try:  # an abrupt close: paho's loop reconnects (with backoff), the broker redelivers
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # ---------------------------------------------------------------- presence
    def _presence_record(self, device_id: str, kind: str, now_ns: int, online: bool, reason: str,
                         last_seen: int | None = None) -> Record:
        fields: dict[str, Any] = {"online": online, "reason": reason}
        if last_seen:
            fields["last_seen_ns"] = last_seen
            fields["silent_s"] = round((now_ns - last_seen) / 1e9, 1)
        dev = self.registry.get(device_id)
        tags = dev.tags() if dev else {"kind": kind}
        return Record.make("presence", device_id, now_ns, fields, tags=tags,
                           priority=Priority.TELEMETRY if online else Priority.ALARM,
                           source=SOURCE, key=f"presence-{int(online)}-{now_ns}")

    def _offline(self, device_id: str, kind: str, now_ns: int, reason: str,
                 records: list[Record], last_seen: int | None = None) -> None:
        if self.presence.went_offline(device_id, kind, now_ns, reason):
            self.stats["offline_alarms"] += 1
            records.append(self._presence_record(device_id, kind, now_ns, False, reason, last_seen))
            self.oplog.write("warning", "device_offline", f"device {device_id} ({kind}) offline: {reason}",
                             f"设备 {device_id}（{kind}）离线：{'遗嘱消息' if reason == 'last_will' else '超时'}")

    def _check_presence(self) -> None:
        now = time.time_ns()
        records: list[Record] = []
        for dev, kind, last in self.presence.expired(now):
            self._offline(dev, kind, now, "timeout", records, last_seen=last)
        if records:
            self.log.append(records, callback=lambda r, e: None)

    def _save_presence(self, force: bool = False) -> None:
        if not (self.presence.dirty or force):
            return
        self.presence.dirty = False
        self.state.save_presence((dev, last, on, since, reason) for dev, (last, on, since, reason, _k)
                                 in list(self.presence.devices.items()))

    def presence_report(self) -> dict[str, Any]:
        now = time.time_ns()
        devices = self.presence.snapshot()
        seen = {d["device_id"] for d in devices}
        for dev in self.registry.all():
            if dev.id not in seen:
                devices.append({"device_id": dev.id, "online": None, "last_seen_ns": None,
                                "since_ns": None, "reason": "never seen", "kind": dev.kind})
        for d in devices:
            d["timeout_s"] = self.presence.timeout(d["kind"])
            d["silent_s"] = round((now - d["last_seen_ns"]) / 1e9, 1) if d["last_seen_ns"] else None
        return {"summary": self.presence.summary(), "devices": devices}

    # ---------------------------------------------------------------- operator commands
    def _readmit_cmd(self, args: dict[str, Any]) -> dict[str, Any]:
        from fieldhub.sources.mqtt.readmit import readmit

        return readmit(self.log, self.registry, self.state_lookup, qids=args.get("qids"),
                       reason=args.get("reason"), device=args.get("device"),
                       max_payload=int(self.cfg.max_payload), max_skew_s=float(self.cfg.max_clock_skew),
                       on_seen=self._committed.append)

    def state_lookup(self, device_id: str, seq: int) -> bytes | None:
        # from another thread than the worker's, which owns the state's connection
        return MqttState.read_seen(self.state_path, device_id, seq)

    def status(self) -> dict[str, Any]:
        """ok when connected; retrying while paho reconnects; off when not running."""
        state = "ok" if self.connected else "retrying" if self._running else "off"
        summary = self.presence.summary()
        return make_status(state, {"presence": summary}, broker=self.cfg.broker, connected=self.connected,
                           **self.stats, awaiting_durable=self.acks.pending(), inbox=len(self._inbox),
                           online=summary["online"], offline=summary["offline"], last_error=self.last_error)

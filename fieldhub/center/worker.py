"""The provincial center's ingest: shared-subscription workers that decode, dedupe, store, then ack.

Each worker subscribes to ``$share/center/fh/hub/+/uplink`` (MQTT 5), so several workers
share the stream; a batch is written durably (the embedded store, ``store.db``, and
InfluxDB when configured) and only then acknowledged to the hub on ``fh/hub/{hub}/ack``.
With ``ack_keys`` (``center run --ack-keys``), each ack carries a MAC under that hub's key
(``fieldhub.uplink.acksign``). A worker that dies before its write simply never acks: the hub resends. Every batch is
released at the broker once handled, stored or not, so none can fill the worker's window; a
batch that cannot be decoded is kept in ``rejected`` with its reason.
Records are deduplicated by (hub, id); a Beidou short-message summary is replaced by the full
record when that arrives later. The hub registry (``center.db``) keeps last contact,
reported backlog and links per hub.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fieldhub.core.db import connect
from fieldhub.core.errors import ProtocolError, StorageError, TransportError
from fieldhub.core.oplog import OpLog
from fieldhub.core.records import Record
from fieldhub.core.worker import Worker, stop_all
from fieldhub.sinks.store import LocalStore
from fieldhub.uplink import acksign, shortmsg
from fieldhub.uplink.bearers.mqtt import mqtt_client
from fieldhub.uplink.codec import decode_batch

if TYPE_CHECKING:  # its InfluxDB client is imported only when the CLI asks for it
    from fieldhub.center.influx import CenterInflux

STORE_FILE, CENTER_FILE = "store.db", "center.db"
SHARE_GROUP = "center"
#: bytes of a rejected payload kept for the operator (more than any link's default MTU)
REJECTED_KEEP = 1024 * 1024

CENTER_SCHEMA = """
CREATE TABLE IF NOT EXISTS hubs(
    hub_id TEXT PRIMARY KEY, first_ns INTEGER, last_ns INTEGER, batches INTEGER DEFAULT 0,
    records INTEGER DEFAULT 0, duplicates INTEGER DEFAULT 0, short_messages INTEGER DEFAULT 0,
    backlog TEXT, links TEXT, last_link TEXT, last_worker TEXT);
CREATE TABLE IF NOT EXISTS rejected(
    rid INTEGER PRIMARY KEY, ts INTEGER, topic TEXT, reason TEXT, payload BLOB);
"""

#: the center's points: keyed by (hub, id), since ids are only unique within one hub (two
#: vehicles provisioned alike have the same device ids, hence the same record ids). Its first
#: eight columns are the local store's, so ``LocalStore.query`` reads it unchanged.
CENTER_POINTS = """
CREATE TABLE IF NOT EXISTS points(
    id TEXT NOT NULL,
    kind TEXT NOT NULL,
    device_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    source TEXT NOT NULL,
    fields TEXT NOT NULL,
    tags TEXT NOT NULL,
    hub TEXT NOT NULL,
    PRIMARY KEY (hub, id)
) WITHOUT ROWID;
"""

#: a store written before ids were hub-scoped: the hub each record came from is in its tags
_MIGRATE_V1 = """
BEGIN IMMEDIATE;
ALTER TABLE points RENAME TO points_v1;
""" + CENTER_POINTS + """
INSERT INTO points SELECT id, kind, device_id, ts, priority, source, fields, tags,
    coalesce(json_extract(tags, '$.hub'), '') FROM points_v1;
DROP TABLE points_v1;
COMMIT;
"""

# as ``LocalStore.upsert``: a record replaces the stored one of its (hub, id) only when that
# is a short-message summary (tags via=beidou) and the new one is not
_CENTER_UPSERT = (
    "INSERT INTO points(id, kind, device_id, ts, priority, source, fields, tags, hub) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(hub, id) DO UPDATE SET "
    "kind=excluded.kind, device_id=excluded.device_id, ts=excluded.ts, priority=excluded.priority, "
    "source=excluded.source, fields=excluded.fields, tags=excluded.tags "
    "WHERE json_extract(points.tags, '$.via') = 'beidou' AND json_extract(excluded.tags, '$.via') IS NOT 'beidou'")


def private_files(data_dir: Path, names: Sequence[str]) -> None:
    """The center's data is for the center's operators: the dir at most 0750, each database
    (and its WAL and shared-memory files, which SQLite creates with the database's mode) at
    most 0640, whatever the umask. Existing modes are only ever tightened."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    os.chmod(data_dir, data_dir.stat().st_mode & 0o7750)
    for name in names:
        path = data_dir / name
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o640))  # an empty file is an empty database
        for f in (path, path.with_name(name + "-wal"), path.with_name(name + "-shm")):
            if f.exists():
                os.chmod(f, f.stat().st_mode & 0o640)


class CenterStore(LocalStore):
    """The center's store: records keyed by (hub, id) and tagged with their hub, a
    short-message summary replaced by the full record when that arrives. A record of one hub
    never counts as a duplicate of, nor replaces, a record of another."""

    what = "center store"

    def __init__(self, path: Path | str, **kw: Any) -> None:
        path = Path(path)
        if not kw.get("readonly"):
            db = connect(path)
            try:
                cols = [row[1] for row in db.execute("PRAGMA table_info(points)")]
                if not cols:
                    db.executescript(CENTER_POINTS)
                elif "hub" not in cols:
                    db.executescript(_MIGRATE_V1)
            except sqlite3.Error as exc:
                raise StorageError(f"center store {path}: {exc}") from None
            finally:
                db.close()
        super().__init__(path, **kw)

    def write(self, records: Sequence[Record]) -> None:
        """Records without a hub have no place at the center."""
        raise TypeError("the center store is written with write_counted(records, hub_id)")

    def write_counted(self, records: Sequence[Record], hub_id: str) -> tuple[int, int]:
        """Durably write under ``hub_id``; returns (stored, duplicates): a record whose
        (hub, id) is already stored changes nothing (unless it replaces a short-message summary)."""
        return self._upsert(_CENTER_UPSERT, records, {"hub": hub_id}, hub_id)


class HubRegistry:
    """Which hubs reported, when, with what backlog, over which links."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        if readonly and not path.exists():
            raise StorageError(f"no center data at {path.parent} (has `fieldhub center run` used it?)")
        self._db = connect(path, readonly=readonly)
        if not readonly:
            self._db.executescript(CENTER_SCHEMA)
        self._lock = threading.Lock()

    def touch(self, hub_id: str, *, records: int = 0, duplicates: int = 0, meta: dict | None = None,
              link: str = "", worker: str = "", short: int = 0) -> None:
        meta = meta or {}
        now = time.time_ns()
        with self._lock:
            self._db.execute(
                "INSERT INTO hubs(hub_id, first_ns, last_ns, batches, records, duplicates, short_messages, "
                "backlog, links, last_link, last_worker) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(hub_id) DO UPDATE SET last_ns=excluded.last_ns, batches=batches+excluded.batches, "
                "records=records+excluded.records, duplicates=duplicates+excluded.duplicates, "
                "short_messages=short_messages+excluded.short_messages, "
                "backlog=coalesce(excluded.backlog, backlog), links=coalesce(excluded.links, links), "
                "last_link=excluded.last_link, last_worker=excluded.last_worker",
                (hub_id, now, now, 0 if short else 1, records, duplicates, short,
                 orjson.dumps(meta["backlog"]).decode() if "backlog" in meta else None,
                 orjson.dumps(meta["links"]).decode() if "links" in meta else None, link, worker))

    def reject(self, topic: str, reason: str, payload: bytes) -> None:
        with self._lock:
            self._db.execute("INSERT INTO rejected(ts, topic, reason, payload) VALUES (?, ?, ?, ?)",
                             (time.time_ns(), topic, reason, payload[:REJECTED_KEEP]))

    def hubs(self) -> list[dict[str, Any]]:
        out = []
        for row in self._db.execute("SELECT hub_id, first_ns, last_ns, batches, records, duplicates, "
                                    "short_messages, backlog, links, last_link, last_worker FROM hubs ORDER BY hub_id"):
            d = dict(zip(("hub_id", "first_ns", "last_ns", "batches", "records", "duplicates",
                          "short_messages", "backlog", "links", "last_link", "last_worker"), row))
            d["backlog"] = orjson.loads(d["backlog"]) if d["backlog"] else {}
            d["links"] = orjson.loads(d["links"]) if d["links"] else {}
            d["backlog_total"] = sum(d["backlog"].values())
            out.append(d)
        return out

    def rejected_count(self) -> int:
        return self._db.execute("SELECT count(*) FROM rejected").fetchone()[0]

    def close(self) -> None:
        self._db.close()


class CenterWorker:
    """One center worker process: ``CenterWorker(broker, data_dir).run(stop_event)``."""

    def __init__(self, broker: str, data_dir: Path, *, worker: str | None = None,
                 influx: CenterInflux | None = None,
                 beidou_port: str | None = None, tiantong_port: str | None = None, mac_key: bytes = b"",
                 tls: dict[str, str] | None = None, ack_keys: dict[str, bytes] | None = None,
                 oplog: OpLog | None = None) -> None:
        private_files(data_dir, (STORE_FILE, CENTER_FILE))
        self.data_dir = data_dir
        self.worker = worker or f"{socket.gethostname()}-{os.getpid()}"
        self.store = CenterStore(data_dir / STORE_FILE)
        self.registry = HubRegistry(data_dir / CENTER_FILE)
        self.influx = influx
        self.oplog = oplog or OpLog(data_dir / f"center-{self.worker}.jsonl")
        self.mac_key = mac_key
        #: hub id -> its ack key (``center run --ack-keys``); None: acks go out unsigned
        self.ack_keys = ack_keys
        self._unkeyed_warned: set[str] = set()
        self.beidou_port = beidou_port
        self.tiantong_port = tiantong_port
        self.stats = {"batches": 0, "records": 0, "duplicates": 0, "rejected": 0, "short_messages": 0,
                      "write_errors": 0, "acks_signed": 0, "acks_unsigned": 0}
        self.connected = threading.Event()
        self.client, self._host, self._port = mqtt_client(
            broker, f"fh-center-{self.worker}", protocol=mqtt.MQTTv5, manual_ack=True, **(tls or {}))
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if self.connected.is_set():
            self.oplog.write("warning", "center_disconnected", f"broker connection lost: {rc}; reconnecting",
                             f"与代理的连接断开：{rc}，正在重连")
        self.connected.clear()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            self.oplog.write("error", "center_connect_refused", f"broker refused: {rc}", f"代理拒绝连接：{rc}")
            return
        client.subscribe(f"$share/{SHARE_GROUP}/fh/hub/+/uplink", qos=1)
        self.connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """Handle one batch, then always release it at the broker: a batch the broker kept
        in flight for this worker would hold a slot of its window (20 by default) until a
        restart, and a few such batches would stall the center for every hub. The hub's own
        ack (sent only after the durable write) is what makes delivery certain; a batch not
        stored is sent again by its hub after its ack timeout."""
        payload = bytes(msg.payload)  # paho's payload is bytes; bytes() of bytes is itself
        try:
            self.handle(msg.topic, payload)
        except (StorageError, sqlite3.Error) as exc:
            # not durable: no ack to the hub, which sends the batch again
            self.stats["write_errors"] += 1
            self.oplog.write("error", "center_write_failed", f"write failed: {exc}", f"写入失败：{exc}")
        except Exception as exc:  # noqa: BLE001 - paho's network thread must survive any one batch
            self.stats["write_errors"] += 1
            self.oplog.write("error", "center_batch_failed", f"{msg.topic}: {type(exc).__name__}: {exc}",
                             f"{msg.topic}：批次处理失败：{exc}")
            try:
                self.registry.reject(msg.topic, f"internal error: {type(exc).__name__}: {exc}", payload)
            except sqlite3.Error:
                pass  # the hub still holds the batch and sends it again
        client.ack(msg.mid, msg.qos)

    def handle(self, topic: str, payload: bytes) -> None:
        """Decode, store durably, register, then ack to the hub."""
        parts = topic.split("/")
        hub_from_topic = parts[2] if len(parts) == 4 else ""
        try:
            batch = decode_batch(payload)
            if batch.hub_id != hub_from_topic:
                raise ProtocolError(f"batch from {batch.hub_id!r} on topic of {hub_from_topic!r}")
        except ProtocolError as exc:
            self.stats["rejected"] += 1
            self.registry.reject(topic, str(exc), payload)
            self.oplog.write("warning", "center_batch_rejected", f"{topic}: {exc}", f"{topic}：批次无法解析：{exc}")
            return
        new, dup = self.store.write_counted(batch.records, batch.hub_id)
        if self.influx is not None:
            self.influx.write(batch.records, batch.hub_id)
        self.stats["batches"] += 1
        self.stats["records"] += new
        self.stats["duplicates"] += dup
        self.registry.touch(batch.hub_id, records=new, duplicates=dup, meta=batch.meta,
                            link=str(batch.meta.get("link", "")), worker=self.worker)
        ack = {"hub": batch.hub_id, "batch": batch.batch_id, "stored": new, "duplicates": dup,
               "ranges": {str(p): list(r) for p, r in batch.ranges.items()}, "worker": self.worker}
        props = Properties(PacketTypes.PUBLISH)
        self.client.publish(f"fh/hub/{batch.hub_id}/ack", self._signed(batch.hub_id, orjson.dumps(ack)), qos=1,
                            properties=props)

    def _signed(self, hub: str, body: bytes) -> bytes:
        """The ack as published: signed with the hub's ack key when the center holds one."""
        key = self.ack_keys.get(hub) if self.ack_keys is not None else None
        if key is not None:
            self.stats["acks_signed"] += 1
            return acksign.sign(body, key)
        self.stats["acks_unsigned"] += 1
        if self.ack_keys is not None and hub not in self._unkeyed_warned:
            self._unkeyed_warned.add(hub)
            self.oplog.write("warning", "center_ack_unsigned",
                             f"no ack key for hub {hub} in --ack-keys: its acks go out unsigned, and a hub "
                             f"that holds an ack key refuses them (provision it with --hub {hub})",
                             f"--ack-keys 中没有指挥车 {hub} 的确认密钥：其确认未签名发送，持有密钥的指挥车将拒收",
                             hub=hub)
        return body

    # ------------------------------------------------------------------ Beidou receive side
    def _beidou_loop(self, stop: threading.Event, url: str) -> None:
        import serial

        from drivers import beidou_rdss
        from drivers.sentence import split_fields

        port = None
        framer = beidou_rdss.framer()
        while not stop.is_set():
            if port is None:
                try:
                    port = serial.serial_for_url(url, baudrate=115200, timeout=0.2)
                except (serial.SerialException, OSError, ValueError) as exc:
                    self.oplog.write("warning", "center_beidou_open", f"Beidou port: {exc}", f"北斗端口：{exc}")
                    stop.wait(2)
                    continue
            try:
                data = port.read(port.in_waiting or 1)
            except OSError:
                port = None
                continue
            for frame in framer.feed(data):
                f = split_fields(frame.raw) if frame.ok else []
                if len(f) >= 6 and f[0].endswith(b"TXR"):
                    self.handle_short(f[2].decode("ascii", "replace"), f[5].decode("ascii", "replace"))

    # ------------------------------------------------------------------ Tiantong SMS receive side
    def _tiantong_loop(self, stop: threading.Event, url: str) -> None:
        """Poll the center's Tiantong terminal for SMS (AT+CMGL), ingest each, then delete it."""
        from fieldhub.uplink.bearers.tiantong import AtPort, sms_payload

        at = AtPort(url, lambda line: None)

        def pump(_: threading.Event) -> None:
            while not stop.is_set():
                if at.port is None:
                    stop.wait(0.5)
                    continue
                try:
                    at.pump()
                except (OSError, TypeError, AttributeError):
                    at.close()

        reader = Worker("center-tiantong-rx", pump).start()
        try:
            self._poll_tiantong(stop, at, sms_payload)
        finally:
            reader.stop(2.0)

    def _poll_tiantong(self, stop: threading.Event, at: Any, sms_payload: Callable[[str], bytes]) -> None:
        """List the terminal's stored SMS every second; file fieldhub summaries, delete what was read."""
        ready = False
        while not stop.wait(1.0):
            try:
                if at.port is None:
                    ready = False
                    if not at.open():
                        continue
                if not ready:
                    for cmd in (b"ATE0\r", b"AT+CMGF=1\r"):
                        at.command(cmd)
                    ready = True
                lines = at.command(b'AT+CMGL="ALL"\r')
                done = []
                for head, text in zip(lines, lines[1:]):
                    if head.startswith(b"+CMGL:"):
                        idx = head.split(b":", 1)[1].split(b",")[0].strip()
                        sender = head.split(b",")[2].strip(b'" ') if head.count(b",") >= 2 else b"?"
                        try:
                            payload = sms_payload(text.decode("ascii"))
                        except (ValueError, UnicodeDecodeError):
                            self.stats["rejected"] += 1
                            self.registry.reject(f"tiantong:{sender.decode(errors='replace')}", "not a fieldhub SMS",
                                                 text)
                        else:
                            self.handle_short(sender.decode(errors="replace"), payload.hex(), via="tiantong")
                        done.append(idx)
                for idx in done:
                    at.command(b"AT+CMGD=" + idx + b"\r")
            except TransportError as exc:
                self.oplog.write("warning", "center_tiantong", f"Tiantong terminal: {exc}", f"天通终端：{exc}")
                ready = False

    def handle_short(self, sender: str, content: str, via: str = "beidou") -> None:
        try:
            hub_id, rec = shortmsg.decode(bytes.fromhex(content), self.mac_key)
        except (ValueError, ProtocolError) as exc:
            self.stats["rejected"] += 1
            self.registry.reject(f"{via}:{sender}", str(exc), content.encode())
            return
        if via != "beidou":
            rec = Record(rec.kind, rec.device_id, rec.ts, rec.fields, {**rec.tags, "via": via}, rec.priority,
                         f"uplink:{via}", rec.id)
        new, dup = self.store.write_counted([rec], hub_id)
        self.stats["short_messages"] += 1
        self.stats["records"] += new
        self.registry.touch(hub_id, records=new, duplicates=dup, link=f"{via}:{sender}",
                            worker=self.worker, short=1)

    # ------------------------------------------------------------------ run
    def run(self, stop: threading.Event) -> None:
        # each loop also watches the run's own ``stop``; the worker's event is for a bounded join
        threads = [Worker(name, lambda _, loop=loop, port=port: loop(stop, port)).start()
                   for port, loop, name in ((self.beidou_port, self._beidou_loop, "center-beidou"),
                                            (self.tiantong_port, self._tiantong_loop, "center-tiantong"))
                   if port]
        self.client.connect_async(self._host, self._port, keepalive=30, clean_start=True)
        self.client.loop_start()
        self.oplog.write("info", "center_started", f"center worker {self.worker} started",
                         f"中心工作进程 {self.worker} 已启动")
        try:
            stop.wait()
        finally:
            self.client.disconnect()
            self.client.loop_stop()
            stop_all(threads, 5.0)
            self.store.close()
            self.registry.close()

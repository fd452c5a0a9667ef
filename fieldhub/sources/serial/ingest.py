"""Serial ingest: one reader per configured port, records into the durable log, commands out."""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

import drivers
from drivers import sl651
from drivers.base import Frame, ParseContext
from drivers.transport import open_transport
from fieldhub.core import profiles
from fieldhub.core.component import Command, HubContext, make_status
from fieldhub.core.errors import ConfigError, FieldhubError, ProtocolError, StorageError, ValidationError
from fieldhub.core.log import AppendResult, Callback, QuarantineCallback
from fieldhub.core.oplog import OpLog
from fieldhub.core.records import Priority, Record
from fieldhub.core.registry import Registry
from fieldhub.core.worker import Worker
from fieldhub.sources.serial.config import SerialConfig, SerialPortConfig
from fieldhub.sources.serial.sessions import SESSIONS, PtzSession, RdssSession, Session, TiantongSession


class RateLimit:
    """Token bucket: ``allow()`` at most ``per_minute`` times a minute (line noise can't flood the log)."""

    def __init__(self, per_minute: int) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(max(1, per_minute))
        self.tokens = self.capacity
        self.t = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class PortLog(Protocol):
    """Where a port puts its records: the hub's DurableLog (or a direct port's stand-in)."""

    def append(self, records: Sequence[Record], callback: Callback | None = None) -> object: ...

    def quarantine(self, source: str, reason: str, payload: bytes, *, device_id: str | None = None,
                   meta: dict[str, Any] | None = None, callback: QuarantineCallback | None = None) -> object: ...


class Port:
    """One device on one serial line: transport, framer, parser, session; records go to the log."""

    def __init__(self, cfg: SerialPortConfig, *, log: PortLog, oplog: OpLog | None, tags: dict[str, str],
                 profile: dict[str, Any], settings: SerialConfig | None = None) -> None:
        settings = settings or SerialConfig()
        self.cfg = cfg
        self.device_id = cfg.device_id
        self.log, self.oplog = log, oplog
        self.tags = tags
        self.profile = profile
        self.driver = drivers.get(cfg.driver)
        self.framer = self.driver.framer()
        self.parser = self.driver.parser(profile)
        self.source = f"serial:{cfg.driver}"
        ser = profile.get("serial", {})
        self.transport = open_transport(cfg.url, baud=cfg.baud or int(ser.get("baud", 9600)),
                                         bytesize=int(ser.get("bytesize", 8)), parity=str(ser.get("parity", "N")),
                                         stopbits=int(ser.get("stopbits", 1)),
                                         backoff_initial=float(settings.backoff_initial),
                                         backoff_max=float(settings.backoff_max), on_state=self._on_state)
        self.transport_is_datagram = cfg.url.startswith("udp://")
        self.session: Session = SESSIONS[cfg.driver](self, profile)
        if cfg.poll_interval:
            self.session.poll_interval = float(cfg.poll_interval)
        self.counts: Counter[str] = Counter({k: 0 for k in (
            "frames", "records", "bad_frames", "quarantined", "quarantine_suppressed", "append_errors",
            "connects")})
        self.errors: Counter[str] = Counter()
        self.limit = RateLimit(settings.quarantine_per_minute)
        self.last_record_ns = 0
        #: when set, the device's tags are looked up again at every (re)connect
        self.registry: Registry | None = None
        self._sl651_map: dict[str, tuple[str, dict[str, str]]] = {}
        self._sl651_at = -1e9
        # the reader's loop is the transport's: transport.stop() ends it
        self._reader = Worker(f"serial-{self.device_id}", lambda stop: self.transport.run(self.on_data))

    @property
    def connected(self) -> bool:
        return self.transport.connected.is_set()

    def start(self) -> None:
        self.session.start()
        self._reader.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Close the port and end its reader and session threads within ``timeout``; idempotent.
        False if a thread was still alive at the deadline."""
        deadline = time.monotonic() + timeout
        self.transport.stop()
        self.session.signal()
        reader = self._reader.stop(deadline - time.monotonic())
        return self.session.stop(deadline - time.monotonic()) and reader

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def note(self, event: str, en: str, zh: str, level: str = "warning") -> None:
        if self.oplog is not None:
            self.oplog.write(level, event, f"{self.device_id}: {en}", f"{self.device_id}：{zh}",
                             device_id=self.device_id)

    def _on_state(self, state: str, detail: str) -> None:
        self.counts[{"connected": "connects", "disconnected": "disconnects_seen"}.get(state, state)] += 1
        if state == "connected":
            self.note("serial_connected", f"port {detail} open", f"串口 {detail} 已打开", level="info")
            self._refresh_tags()
            self.framer = self.driver.framer()  # a replugged device starts a fresh stream
            self.session.task("connected")
            self._presence(True, "port_open")
        elif state == "disconnected":
            self.on_data(b"", end=True)  # the last sentence before the unplug may lack its line end
            self.note("serial_disconnected", f"port went away ({detail}); reopening with backoff",
                      f"串口断开（{detail}），正在重连")
            self._presence(False, "port_lost", detail)
        elif state == "open_failed":
            self.note("serial_open_failed", f"cannot open {self.cfg.url}: {detail}; retrying",
                      f"无法打开 {self.cfg.url}：{detail}，重试中")

    def _presence(self, online: bool, reason: str, detail: str = "") -> None:
        """Port up/down as a ``presence`` record (an unplugged adapter is an alarm, as for drones)."""
        fields: dict[str, Any] = {"online": online, "reason": reason, "url": self.cfg.url}
        if detail:
            fields["detail"] = detail[:200]
        try:
            self.record("presence", fields, Priority.TELEMETRY if online else Priority.ALARM)
        except StorageError as exc:
            self.counts["append_errors"] += 1
            self.note("serial_append_failed", str(exc), f"写入日志失败：{exc}", level="error")

    def _refresh_tags(self) -> None:
        """A device registered (or moved) while the hub runs gets its tags at the next connect."""
        if self.registry is None:
            return
        try:
            dev = self.registry.get(self.device_id)
        except sqlite3.Error as exc:
            self.note("serial_registry", f"registry lookup failed: {exc}", f"设备登记查询失败：{exc}")
            return
        if dev is not None:
            self.tags = dev.tags()

    # -- the data path (reader thread)
    def on_data(self, data: bytes, *, end: bool = False) -> None:
        frames = self.framer.feed(data)
        if end or self.transport_is_datagram:  # a datagram is whole; a lost port sends no more
            frames += self.framer.flush()
        if not frames:
            return
        out: list[Record] = []
        now = time.time_ns()
        ctx = ParseContext(self.device_id, now, self.tags, self.profile, self.source)
        for frame in frames:
            if not frame.ok:
                self._bad(frame, frame.error or "bad frame")
                continue
            try:
                records = self.parser.parse(frame, ctx)
            except (ProtocolError, ValidationError) as exc:
                self._bad(frame, str(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - a parser bug must not stop the port's reader
                self.counts["parser_bugs"] += 1
                self._bad(frame, f"parser bug: {type(exc).__name__}: {exc}")
                self.note("serial_parser_bug", f"{self.cfg.driver} parser failed on a frame: {exc!r}",
                          f"{self.cfg.driver} 解析器异常：{exc!r}", level="error")
                continue
            self.counts["frames"] += 1
            out.extend(records)
            if self.cfg.driver == "beidou_rdss":
                out.extend(self._sl651(records))
            self.session.on_frame(frame, records)
        if out:
            self.counts["records"] += len(out)
            self.last_record_ns = now
            try:
                self.log.append(out, callback=self._appended)
            except StorageError as exc:
                self.counts["append_errors"] += 1
                self.note("serial_append_failed", str(exc), f"写入日志失败：{exc}", level="error")

    def _sl651(self, records: list[Record]) -> list[Record]:
        """SL651 station reports inside Beidou short messages (HEX payloads), decoded as over TCP and
        appended with the message itself; bad frames and unknown stations quarantined (issue 21)."""
        out: list[Record] = []
        for rec in records:
            if rec.kind == "bd_message":
                got, rejects = sl651.beidou_records(rec, self._sl651_station)
                out.extend(got)
                for reason, raw, meta in rejects:
                    self.log.quarantine(sl651.SOURCE, reason, raw, device_id=None, meta=meta,
                                        callback=lambda r, e: None)
        return out

    def _sl651_station(self, address: str) -> tuple[str, dict[str, str]] | None:
        """The registry device whose transport ``sl651`` is this station address (map cached 5 s)."""
        now = time.monotonic()
        stale = now - self._sl651_at > 5.0 or (address not in self._sl651_map and now - self._sl651_at > 1.0)
        if stale and self.registry is not None:
            self._sl651_at = now
            try:
                self._sl651_map = {str(d.transport.get("sl651", "")).upper(): (d.id, d.tags())
                                   for d in self.registry.all() if d.transport.get("sl651")}
            except sqlite3.Error as exc:
                self.note("serial_registry", f"registry lookup failed: {exc}", f"设备登记查询失败：{exc}")
        return self._sl651_map.get(address)

    def record(self, kind: str, fields: dict[str, Any], priority: Priority | str) -> None:
        """A record of something the hub did on this device (a message sent), for the trail."""
        now = time.time_ns()
        rec = Record.make(kind, self.device_id, now, fields, tags=self.tags, priority=priority,
                          source=self.source, key=f"out:{now}")
        self.log.append([rec], callback=self._appended)

    def _appended(self, result: AppendResult | None, error: BaseException | None) -> None:
        if error is not None:
            self.counts["append_errors"] += 1

    def _bad(self, frame: Frame, reason: str) -> None:
        self.counts["bad_frames"] += 1
        key = reason[:60]
        self.errors[key if key in self.errors or len(self.errors) < 32 else "other"] += 1  # bounded
        if self.limit.allow():
            self.counts["quarantined"] += 1
            self.log.quarantine(self.source, reason, frame.raw, device_id=self.device_id,
                                meta={"url": self.cfg.url, "driver": self.cfg.driver},
                                callback=lambda r, e: None)
        else:
            self.counts["quarantine_suppressed"] += 1

    def status(self) -> dict[str, Any]:
        return {"driver": self.cfg.driver, "url": self.cfg.url, "profile": self.profile.get("name"),
                "connected": self.connected, **self.counts, **self.transport.stats,
                "garbage_bytes": getattr(self.framer, "garbage_bytes", 0),
                "errors": dict(self.errors.most_common(5)), "session": self.session.status(),
                "last_error": self.transport.last_error}


def open_port(cfg: SerialPortConfig, *, log: PortLog, oplog: OpLog | None = None, registry: Registry | None = None,
              settings: SerialConfig | None = None) -> Port:
    """A Port for ``cfg``: tags and default profile from the registry entry when there is one."""
    tags: dict[str, str] = {}
    model = ""
    dev = registry.get(cfg.device_id) if registry is not None else None
    if dev is not None:
        tags = dev.tags()
        # the registry model picks the profile only when it is a profile of this port's driver
        if dev.model in profiles.names() and profiles.load(dev.model)["family"] == cfg.driver:
            model = dev.model
    try:
        profile = profiles.for_port(cfg.driver, cfg.profile or model)
    except ConfigError as exc:
        raise ConfigError(str(exc), key=f"serial.ports[{cfg.device_id}].profile") from None
    port = Port(cfg, log=log, oplog=oplog, tags=tags, profile=profile, settings=settings)
    port.registry = registry
    return port


class SerialIngest:
    """The hub component: every enabled port, and the control commands that reach them."""

    name = "serial"

    def __init__(self, ports: list[Port]) -> None:
        self.ports = {p.device_id: p for p in ports}
        self._running = False

    def start(self) -> None:
        self._running = True
        for p in self.ports.values():
            p.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Close every port; all of them within ``timeout`` together (they stop side by side)."""
        self._running = False
        deadline = time.monotonic() + timeout
        for p in self.ports.values():  # signal all first: a slow port must not eat the others' time
            p.transport.stop()
            p.session.signal()
        for p in self.ports.values():
            p.stop(max(0.0, deadline - time.monotonic()))

    def commands(self) -> dict[str, Command]:
        """``serial.status``, ``serial.bd_send``, ``serial.sms_send``, ``serial.ptz``, ``serial.send``."""
        return {"status": lambda args: self.ports_status(), "bd_send": self.bd_send,
                "sms_send": self.sms_send, "ptz": self.ptz, "send": self.send}

    def ports_status(self) -> dict[str, Any]:
        return {dev: p.status() for dev, p in self.ports.items()}

    def status(self) -> dict[str, Any]:
        """Scalars first (what `fieldhub status` prints on one line), then every port in detail."""
        ports = self.ports_status()
        down = [dev for dev, p in ports.items() if not p["connected"]]
        state = "off" if not self._running else "retrying" if down else "ok"
        return make_status(state, ports, ports=len(ports), connected=len(ports) - len(down),
                           down=",".join(down) or "-", records=sum(p["records"] for p in ports.values()),
                           bad_frames=sum(p["bad_frames"] for p in ports.values()))

    def _port(self, args: dict[str, Any], kind: type) -> Port:
        dev = args.get("device")
        candidates = [p for p in self.ports.values() if isinstance(p.session, kind)]
        if dev:
            port = self.ports.get(dev)
            if port is None or not isinstance(port.session, kind):
                raise FieldhubError(f"no {kind.__name__[:-7].lower()} port for device {dev!r} "
                                    f"(have: {', '.join(p.device_id for p in candidates) or 'none'}) / 设备不存在")
            return port
        if len(candidates) != 1:
            raise FieldhubError(f"{len(candidates)} matching ports; name one with --device "
                                f"({', '.join(p.device_id for p in candidates) or 'none configured'})")
        return candidates[0]

    def bd_send(self, args: dict[str, Any]) -> dict[str, Any]:
        port = self._port(args, RdssSession)
        assert isinstance(port.session, RdssSession)
        res = port.session.send(str(args["dest"]), str(args["text"]), str(args.get("encoding") or ""),
                                bool(args.get("express")), wait=not args.get("no_wait"))
        port.record("bd_sent", {"dest": res["dest"], "text": str(args["text"]), "bits": res["bits"],
                                "attempts": res["attempts"], "encoding": res["encoding"]}, Priority.COMMAND)
        return {"device": port.device_id, **res}

    def sms_send(self, args: dict[str, Any]) -> dict[str, Any]:
        port = self._port(args, TiantongSession)
        assert isinstance(port.session, TiantongSession)
        res = port.session.send_sms(str(args["number"]), str(args["text"]), str(args.get("mode") or ""))
        port.record("sms_out", {"number": res["number"], "text": str(args["text"]), "parts": res["parts"],
                                "mode": res["mode"]}, Priority.COMMAND)
        return {"device": port.device_id, **res}

    def send(self, args: dict[str, Any]) -> dict[str, Any]:
        """Any driver command, encoded by the port's driver (e.g. a DMR text message)."""
        port = self.ports.get(str(args.get("device", "")))
        if port is None:
            raise FieldhubError(f"no serial port for device {args.get('device')!r} "
                                f"(have: {', '.join(self.ports) or 'none'}) / 设备不存在")
        if port.driver.encoder is None:
            raise FieldhubError(f"driver {port.cfg.driver} takes no commands")
        data = port.driver.encoder(dict(args.get("command") or {}))
        port.write(data)
        return {"device": port.device_id, "bytes": len(data)}

    def ptz(self, args: dict[str, Any]) -> dict[str, Any]:
        port = self._port(args, PtzSession)
        assert isinstance(port.session, PtzSession)
        return {"device": port.device_id, **port.session.command(dict(args.get("command") or {}))}


def build(ctx: HubContext, cfg: SerialConfig) -> SerialIngest | None:
    """Hub component builder: None unless ``[serial] ports`` lists an enabled port."""
    ports = [open_port(p, log=ctx.log, oplog=ctx.oplog, registry=ctx.registry, settings=cfg)
             for p in cfg.ports if p.enabled]
    if not ports:
        return None
    return SerialIngest(ports)

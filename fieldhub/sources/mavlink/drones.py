"""The drone component: MAVLink endpoints in, records and tlogs out, commands, signing, GCS forwarding."""

from __future__ import annotations

import builtins
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.mavlink import (
    ACTIONS,
    BAD_DATA_ID,
    CommandSpec,
    Telemetry,
    build,
    check_signature,
    mav,
    new_parser,
    signer,
    sync_signing_clock,
)
from fieldhub.core.component import Command, HubContext, make_status
from fieldhub.core.errors import FieldhubError, StorageError, TransportError
from fieldhub.core.log import AppendResult, DurableLog
from fieldhub.core.oplog import OpLog
from fieldhub.core.records import Priority, Record
from fieldhub.core.registry import Registry
from fieldhub.core.worker import Worker
from fieldhub.sources.mavlink.commands import CommandRunner
from fieldhub.sources.mavlink.config import KINDS, MavlinkConfig, load_keys
from fieldhub.sources.mavlink.endpoints import Endpoint, make_endpoint

ALARM_EVERY_NS = 10 * 10**9
QUARANTINE_PER_MIN = 30
MAX_PEERS = 1024
HUB_COMPONENT = mav.MAV_COMP_ID_MISSIONPLANNER
_ID_HEARTBEAT = mav.MAVLINK_MSG_ID_HEARTBEAT
_ID_COMMAND_ACK = mav.MAVLINK_MSG_ID_COMMAND_ACK
_TS = struct.Struct(">Q")
_LINK_MSGS = frozenset({mav.MAVLINK_MSG_ID_RADIO_STATUS, mav.MAVLINK_MSG_ID_RADIO})


@dataclass
class Drone:
    """What the hub knows about one system id."""

    sysid: int
    device_id: str
    key: bytes | None
    verifier: Any
    encoder: Any
    link: tuple[Endpoint, Any] | None = None
    online: bool = False
    last_heartbeat: float = 0.0
    autopilot: int | None = None
    vehicle_type: int | None = None
    #: the autopilot's component id (commands go to it)
    compid: int = 1
    mode: str = ""
    armed: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: {
        "unsigned": 0, "bad_signature": 0, "heartbeats": 0})
    rx: int = 0
    last: dict[str, Any] = field(default_factory=dict)
    #: signing alarms: reason -> time of the last alarm, and drops (count, last type) not yet reported
    alarm_at: dict[str, int] = field(default_factory=dict)
    alarm_pending: dict[str, tuple[int, str]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "sysid": self.sysid, "online": self.online,
                "mode": self.mode, "armed": self.armed, "signed": self.key is not None,
                "link": self.link[0].name if self.link else "", "rx": self.rx,
                "last_heartbeat_s": round(time.monotonic() - self.last_heartbeat, 1) if self.last_heartbeat else None,
                **self.counts, **self.last}


class DroneHub:
    """Reads every endpoint, keeps per-drone state, logs records, writes tlogs, runs commands."""

    name = "drones"
    #: its control commands predate the component's name: drone.command, drone.list
    command_prefix = "drone"

    def __init__(self, cfg: MavlinkConfig, log: DurableLog, *, oplog: OpLog | None = None,
                 registry: Registry | None = None,
                 tlog_dir: Path | None = None) -> None:
        from fieldhub.sources.mavlink.tlog import TlogStore

        self.cfg = cfg
        self.log = log
        self.oplog = oplog
        self.registry = registry
        self.keys, warnings = load_keys(cfg)
        if mav.mcrf4xx is None:
            warnings.append("fastcrc is not installed: MAVLink checksums run in pure Python at half speed "
                            "(pip install fastcrc)")
        for w in warnings:
            self._op("warning", "mavlink_setup", w, f"MAVLink 配置警告：{w}")
        reg_ids, reg_endpoints = from_registry(registry)
        self.ids = {**reg_ids, **{int(k): v for k, v in cfg.drones.items()}}  # the config wins
        self.drones: dict[int, Drone] = {}
        self._lock = threading.RLock()
        self._parsers: dict[tuple[int, Any], Any] = {}
        self._others: set[int] = set()  # system ids that are not drones (ground stations)
        self.telemetry = Telemetry(self._device_id, rates=cfg.rates, tags_for=self._tags)
        self.tlogs = TlogStore(tlog_dir or Path("tlog"), max_file=cfg.tlog_max_file,
                               max_total=cfg.tlog_max_total)
        #: runs operator commands to the drone's final ack
        self.runner = CommandRunner(self._send_command, timeout=cfg.command_timeout,
                                    attempts=cfg.command_attempts,
                                    progress_timeout=cfg.command_progress_timeout,
                                    system_id=cfg.system_id)
        self.endpoints = [make_endpoint(e, self.on_data, "drone", f"mavlink.endpoints[{i}]")
                          for i, e in enumerate(cfg.endpoints)]
        self.endpoints += [make_endpoint(e, self.on_data, "drone", f"registry device {dev} transport.endpoint")
                           for e, dev in reg_endpoints.items() if e not in cfg.endpoints]
        self.gcs = [make_endpoint(e, self.on_gcs_data, "gcs", f"mavlink.forward[{i}]")
                    for i, e in enumerate(cfg.forward)]
        self.stats = {"messages": 0, "bad_frames": 0, "records": 0, "dropped_unsigned": 0,
                      "dropped_bad_signature": 0, "forwarded_to_gcs": 0, "from_gcs": 0, "dropped_from_gcs": 0,
                      "append_errors": 0, "quarantined": 0, "unknown_messages": 0, "other_messages": 0}
        self._hb = new_parser(cfg.system_id, HUB_COMPONENT)
        self._monitor_worker = Worker("drones-monitor", self._monitor)
        self._running = False
        self._q_budget = (0.0, 0)

    def commands(self) -> dict[str, Command]:
        """``drone.command`` and ``drone.list`` on the control socket."""
        return {"command": self.control_command, "list": lambda args: self.list()}

    # ------------------------------------------------------------------ naming
    def _device_id(self, sysid: int) -> str:
        return self.ids.get(sysid) or f"drone-{sysid}"

    def _tags(self, sysid: int) -> dict[str, str]:
        d = self.drones.get(sysid)
        return d.tags if d else {}

    def _drone(self, sysid: int) -> Drone:
        d = self.drones.get(sysid)
        if d is None:
            device = self._device_id(sysid)
            key = self.keys.get(device)
            d = Drone(sysid, device, key, signer(key, self.cfg.system_id, HUB_COMPONENT),
                      signer(key, self.cfg.system_id, HUB_COMPONENT))
            tags = {"kind": "drone"}
            if self.registry is not None:
                dev = self.registry.get(device)
                if dev is not None:
                    tags = dev.tags()
            d.tags = tags
            self.drones[sysid] = d
        return d

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        started = []
        try:
            for ep in self.endpoints + self.gcs:
                ep.start()
                started.append(ep)
        except TransportError:
            for ep in started:
                ep.stop()
            raise
        self._running = True
        self._monitor_worker.start()
        self._op("info", "mavlink_started",
                 f"MAVLink on {', '.join(e.name for e in self.endpoints)}"
                 + (f", forwarding to {', '.join(g.name for g in self.gcs)}" if self.gcs else ""),
                 f"MAVLink 已启动：{', '.join(e.name for e in self.endpoints)}")

    def stop(self, timeout: float = 5.0) -> None:
        """End the monitor and every endpoint within ``timeout`` in all, then close the tlogs. Idempotent."""
        deadline = time.monotonic() + timeout
        self._running = False
        self._monitor_worker.signal()
        for ep in self.endpoints + self.gcs:  # close every socket first, then wait for the threads
            ep.stop(0)
        self._monitor_worker.join(deadline - time.monotonic())
        for ep in self.endpoints + self.gcs:
            ep.stop(max(0.0, deadline - time.monotonic()))
        self.tlogs.close()

    def status(self) -> dict[str, Any]:
        """ok while running with every endpoint connected; retrying while one reconnects; off when stopped."""
        with self._lock:
            drones = {d.device_id: d.summary() for d in self.drones.values()}
        endpoints = {e.name: e.status() for e in self.endpoints}
        up = all(e["connected"] for e in endpoints.values())
        state = "off" if not self._running else "ok" if up else "retrying"
        return make_status(state, {"commands": dict(self.runner.stats), "drones": drones,
                                   "endpoints": endpoints, "forward": {e.name: e.status() for e in self.gcs},
                                   "tlog": self.tlogs.status()},
                           **self.stats, rate_limited=self.telemetry.suppressed)

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [d.summary() for d in sorted(self.drones.values(), key=lambda d: d.sysid)]

    # ------------------------------------------------------------------ ingest
    def on_data(self, ep: Endpoint, data: bytes, peer: Any) -> None:
        """Bytes from a drone endpoint: parse, check signatures, track state, log, tlog, forward.

        The hot path: per message only dictionary lookups; tlog and forwarding are joined per
        chunk and drone (see bench/bench_mavlink.py).
        """
        now = time.time_ns()
        key = (id(ep), peer)
        records: list[Record] = []
        with self._lock:
            parser = self._parsers.get(key) or self._new_parser(key)
            msgs = parser.parse_buffer(data)
            if not msgs:
                return
            handlers = self.telemetry.handlers
            drones = self.drones
            hdr = _TS.pack(now // 1000)
            raw: dict[int, list[Any]] = {}
            other: list[Any] = []
            last_sysid = -1
            parts: list[Any] = []  # set at the first message: no system id is -1
            n = 0
            for m in msgs:
                h = m._header
                msgid = h.msgId
                if msgid < 0:
                    if msgid == BAD_DATA_ID:
                        self._bad(ep, m)
                    else:
                        self._unknown(m)
                    continue
                sysid = h.srcSystem
                d = drones.get(sysid)
                if d is None:
                    if self._not_a_drone(sysid, msgid, m):
                        n += 1
                        other.append(m._msgbuf)
                        continue
                    d = self._drone(sysid)
                if d.key is not None and not self._signed_ok(d, m, h, now, records):
                    continue
                n += 1
                if sysid != last_sysid:
                    last_sysid = sysid
                    got = raw.get(sysid)
                    if got is None:
                        got = raw[sysid] = []
                    parts = got
                parts.append(hdr)
                parts.append(m._msgbuf)
                if msgid == _ID_HEARTBEAT:
                    self._heartbeat(d, m, now, records)
                elif msgid == _ID_COMMAND_ACK:
                    self.runner.on_ack(sysid, m)
                handler = handlers.get(msgid)
                if handler is not None:
                    out = handler(m, sysid, now)
                    if out:
                        records += out
                        self._remember(d, out)
            self.stats["messages"] += n
            forward = []
            if other:
                self.stats["other_messages"] += len(other)
                if self.gcs:
                    forward.append(b"".join(other))
            for sysid, parts in raw.items():
                d = drones[sysid]
                d.link = (ep, peer)
                d.rx += len(parts) // 2
                self.tlogs.write_raw(d.device_id, b"".join(parts), len(parts) // 2)
                if self.gcs:
                    forward.append(b"".join(parts[1::2]))
        if forward:
            self._forward(b"".join(forward))
        if records:
            self._append(records)

    def _new_parser(self, key: tuple[int, Any]) -> Any:
        """One pymavlink parser per (endpoint, peer); bounded, so spoofed source ports can't grow it."""
        if len(self._parsers) >= MAX_PEERS:
            self._parsers.pop(next(iter(self._parsers)))
        p = self._parsers[key] = new_parser()
        return p

    def _not_a_drone(self, sysid: int, msgid: int, m: Any) -> bool:
        """Ground stations (a GCS HEARTBEAT, or sysid 255 unless configured) and radios (RADIO_STATUS)
        share drone links; their traffic is forwarded but makes no drone."""
        if sysid in self._others or msgid in _LINK_MSGS:
            return True
        if sysid in self.ids:
            return False
        if sysid == 255 or (msgid == _ID_HEARTBEAT and m.type == mav.MAV_TYPE_GCS):
            self._others.add(sysid)
            return True
        return False

    def _unknown(self, m: Any) -> None:
        """A message id our dialect lacks: pymavlink can't say whose it is, so it is counted only."""
        self.stats["unknown_messages"] += 1

    def _signed_ok(self, d: Drone, m: Any, h: Any, now: int, records: builtins.list[Record]) -> bool:
        """Signature check with the drone's own key; unsigned or forged messages are dropped."""
        if not h.incompat_flags & mav.MAVLINK_IFLAG_SIGNED:
            reason = "unsigned"
        elif check_signature(d.verifier, m._msgbuf, h.srcSystem, h.srcComponent):
            return True
        else:
            reason = "bad_signature"
        d.counts[reason] += 1
        self.stats[f"dropped_{reason}"] += 1
        self._signing_alarm(d, reason, m, now, records)
        return False

    def _signing_alarm(self, d: Drone, reason: str, m: Any, now: int, records: builtins.list[Record]) -> None:
        """One alarm at once, then at most one per ALARM_EVERY_NS carrying the count since."""
        n, _ = d.alarm_pending.get(reason, (0, ""))
        d.alarm_pending[reason] = (n + 1, m.get_type())
        self._quarantine(f"{reason} MAVLink message from a signing drone", bytes(m._msgbuf), d.device_id)
        if now - d.alarm_at.get(reason, 0) >= ALARM_EVERY_NS:
            records.append(self._alarm(d, reason, now))

    def _alarm(self, d: Drone, reason: str, now: int) -> Record:
        n, mtype = d.alarm_pending.pop(reason)
        d.alarm_at[reason] = now
        en = (f"{d.device_id}: dropped {n} {'unsigned' if reason == 'unsigned' else 'badly signed'} "
              f"MAVLink message(s) (sysid {d.sysid}, last {mtype}) - possible spoofing")
        what = "未签名" if reason == "unsigned" else "签名错误"
        zh = f"{d.device_id}：丢弃 {n} 条{what}的 MAVLink 消息，可能遭到伪造"
        self._op("warning", f"mavlink_{reason}", en, zh, device=d.device_id)
        return Record.make("alarm", d.device_id, now, {
            "alarm": f"mavlink_{reason}", "count": n, "message_type": mtype,
            "message": en, "message_zh": zh}, tags={**d.tags, "sysid": str(d.sysid)},
            priority=Priority.ALARM, source="mavlink", key=f"{reason}:{now}")

    def _heartbeat(self, d: Drone, m: Any, now: int, records: builtins.list[Record]) -> None:
        if m.autopilot == mav.MAV_AUTOPILOT_INVALID or m.type == mav.MAV_TYPE_GCS:
            return  # a camera, gimbal or companion computer on the same system
        d.counts["heartbeats"] += 1
        d.last_heartbeat = time.monotonic()
        d.autopilot, d.vehicle_type, d.compid = m.autopilot, m.type, m._header.srcComponent
        d.armed = bool(m.base_mode & mav.MAV_MODE_FLAG_SAFETY_ARMED)
        if not d.online:
            d.online = True
            records.append(self._presence(d, now, True, "heartbeat"))
            self._op("info", "drone_online", f"drone {d.device_id} (sysid {d.sysid}) online",
                     f"无人机 {d.device_id} 上线", device=d.device_id)

    def _remember(self, d: Drone, records: builtins.list[Record]) -> None:
        for r in records:
            f = r.fields
            if r.kind == "drone_state":
                d.mode = str(f["mode"])
            elif r.kind == "position":
                d.last.update(lat=f["lat"], lon=f["lon"], rel_alt_m=f["rel_alt_m"])
            elif r.kind == "battery" and "remaining_pct" in f:
                d.last["battery_pct"] = f["remaining_pct"]
            elif r.kind == "gps":
                d.last["gps_fix"] = f["fix"]

    def _presence(self, d: Drone, now: int, online: bool, reason: str, **extra: Any) -> Record:
        return Record.make("presence", d.device_id, now, {"online": online, "reason": reason, **extra},
                           tags={**d.tags, "sysid": str(d.sysid)},
                           priority=Priority.TELEMETRY if online else Priority.ALARM,
                           source="mavlink", key=f"presence:{now}")

    def _bad(self, ep: Endpoint, m: Any) -> None:
        self.stats["bad_frames"] += 1
        self._quarantine(str(m.reason), bytes(m.data), None, endpoint=ep.name)

    def _quarantine(self, reason: str, payload: bytes, device: str | None, **meta: Any) -> None:
        """Keep bad input for inspection, at most QUARANTINE_PER_MIN a minute (a noisy radio can't flood it)."""
        minute = int(time.monotonic() // 60)
        start, n = self._q_budget
        if start != minute:
            start, n = minute, 0
        if n >= QUARANTINE_PER_MIN:
            return
        self._q_budget = (start, n + 1)
        self.stats["quarantined"] += 1
        self.log.quarantine("mavlink", reason, payload, device_id=device, meta=meta or None,
                            callback=lambda r, e: None)

    def _append(self, records: builtins.list[Record]) -> None:
        self.stats["records"] += len(records)
        try:
            self.log.append(records, callback=self._appended)
        except StorageError as exc:
            self._appended(None, exc)

    def _appended(self, result: AppendResult | None, error: BaseException | None) -> None:
        if error is not None:
            self.stats["append_errors"] += 1
            self._op("error", "mavlink_append_failed", f"drone records not stored: {error}",
                     f"无人机数据未能写入：{error}")

    # ------------------------------------------------------------------ forwarding
    def _forward(self, data: bytes) -> None:
        for g in self.gcs:
            if g.send(data):
                self.stats["forwarded_to_gcs"] += 1

    def on_gcs_data(self, ep: Endpoint, data: bytes, peer: Any) -> None:
        """What a ground station sends goes to the drone it targets (or every drone link), only
        with ``forward_commands = true``; otherwise it is dropped, counted and said once."""
        if not self.cfg.forward_commands:
            self._gcs_refused(ep, data, peer)
            return
        ts_us = time.time_ns() // 1000
        key = (id(ep), peer)
        out: dict[tuple[int, Any], tuple[tuple[Endpoint, Any], list[bytes]]] = {}
        with self._lock:
            parser = self._parsers.get(key) or self._new_parser(key)
            for m in parser.parse_buffer(data) or ():
                if m._header.msgId == BAD_DATA_ID:
                    self._bad(ep, m)
                    continue
                self.stats["from_gcs"] += 1
                target = getattr(m, "target_system", 0)
                drones = [self.drones[target]] if target in self.drones else \
                    ([] if target else list(self.drones.values()))
                links = {}
                for d in drones:
                    if d.link is not None:
                        links[(id(d.link[0]), d.link[1])] = d.link
                        self.tlogs.write(d.device_id, ts_us, m._msgbuf)
                if target and not drones:
                    links = {(id(e), None): (e, None) for e in self.endpoints}  # unknown yet: broadcast
                for k, link in links.items():
                    out.setdefault(k, (link, []))[1].append(bytes(m._msgbuf))
        for link, bufs in out.values():
            link[0].send(b"".join(bufs), link[1])

    def _gcs_refused(self, ep: Endpoint, data: bytes, peer: Any) -> None:
        with self._lock:
            self.stats["dropped_from_gcs"] += 1
            first = self.stats["dropped_from_gcs"] == 1
        if first:
            self._op("warning", "gcs_one_way",
                     f"{ep.name}: {peer} sent MAVLink to the drones; dropped, forward ports are one-way "
                     f"(set [mavlink] forward_commands = true to let ground stations command drones)",
                     f"{ep.name}：地面站 {peer} 发往无人机的 MAVLink 已丢弃（转发端口为单向；"
                     f"如需地面站控制无人机，设置 [mavlink] forward_commands = true）")

    # ------------------------------------------------------------------ monitor
    def _monitor(self, stop: threading.Event) -> None:
        last_hb = 0.0
        while not stop.wait(0.25):
            now_m = time.monotonic()
            records = []
            with self._lock:
                for d in self.drones.values():
                    if d.online and now_m - d.last_heartbeat > self.cfg.heartbeat_timeout:
                        d.online = False
                        rec = self._presence(d, time.time_ns(), False, "heartbeat timeout",
                                             silent_s=round(now_m - d.last_heartbeat, 1))
                        records.append(rec)
                        self._op("warning", "drone_offline",
                                 f"drone {d.device_id} offline: no heartbeat for {self.cfg.heartbeat_timeout:g}s",
                                 f"无人机 {d.device_id} 离线：{self.cfg.heartbeat_timeout:g} 秒无心跳",
                                 device=d.device_id)
                    for reason in list(d.alarm_pending):
                        now = time.time_ns()
                        if now - d.alarm_at.get(reason, 0) >= ALARM_EVERY_NS:
                            records.append(self._alarm(d, reason, now))
            if records:
                self._append(records)
            if now_m - last_hb >= 1.0:
                last_hb = now_m
                self._send_heartbeat()
                self.tlogs.flush()

    def _send_heartbeat(self) -> None:
        """Our own HEARTBEAT, so udpout/tcp drones and radios learn where we are."""
        with self._lock:
            buf = bytes(self._hb.heartbeat_encode(mav.MAV_TYPE_GCS, mav.MAV_AUTOPILOT_INVALID, 0, 0,
                                                  mav.MAV_STATE_ACTIVE).pack(self._hb))
            self._hb.seq = (self._hb.seq + 1) % 256
        for ep in self.endpoints:
            ep.send(buf)

    # ------------------------------------------------------------------ commands
    def _send_command(self, d: Drone, spec: CommandSpec, confirmation: int) -> None:
        with self._lock:
            if d.link is None:
                raise TransportError(f"{d.device_id} has no link yet / 无人机尚无链路")
            msg = spec.encode(d.encoder, d.sysid, d.compid, confirmation)
            sync_signing_clock(d.encoder)
            buf = bytes(msg.pack(d.encoder))
            d.encoder.seq = (d.encoder.seq + 1) % 256
            ep, peer = d.link
            self.tlogs.write(d.device_id, time.time_ns() // 1000, buf)
        if not ep.send(buf, peer):
            raise TransportError(f"cannot send to {d.device_id} over {ep.name} / 指令发送失败")

    def find(self, ident: str) -> Drone:
        with self._lock:
            for d in self.drones.values():
                if d.device_id == ident or str(d.sysid) == ident:
                    return d
        known = ", ".join(d.device_id for d in self.drones.values()) or "none yet"
        raise FieldhubError(f"no drone {ident!r} seen on any MAVLink endpoint (known: {known}) "
                            f"/ 未发现该无人机")

    def command(self, ident: str, action: str, args: builtins.list[str] | None = None) -> dict[str, Any]:
        """Run one operator command to the final ack and record its outcome (``command`` class)."""
        d = self.find(ident)
        spec = build(action, list(args or []), d.autopilot, d.vehicle_type)
        if not d.online:
            raise FieldhubError(f"{d.device_id} is offline (no heartbeat) / 无人机离线")
        result = self.runner.execute(d, spec)
        now = time.time_ns()
        fields = {k: v for k, v in result.items() if k not in ("drone",)}
        rec = Record.make("command", d.device_id, now, fields,
                          tags={**d.tags, "sysid": str(d.sysid)},
                          priority=Priority.COMMAND, source="mavlink", key=f"cmd:{now}")
        self.log.append([rec])
        self.stats["records"] += 1
        ok = result["accepted"]
        self._op("info" if ok else "warning", "drone_command",
                 f"{d.device_id} {action}{' ' + spec.detail if spec.detail else ''}: "
                 f"{result['result_name']} after {result['attempts']} attempt(s)",
                 f"{d.device_id} 指令 {action}：{result['result_name']}", device=d.device_id)
        return result

    def control_command(self, args: dict[str, Any]) -> dict[str, Any]:
        action = str(args.get("action", ""))
        if action not in ACTIONS:
            raise FieldhubError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
        return self.command(str(args.get("drone", "")), action, [str(a) for a in args.get("args") or []])

    def _op(self, level: str, event: str, en: str, zh: str, **extra: Any) -> None:
        if self.oplog is not None:
            self.oplog.write(level, event, en, zh, **extra)


def from_registry(registry: Registry | None) -> tuple[dict[int, str], dict[str, str]]:
    """Drones registered with ``--transport '{"sysid": 1, "endpoint": "udpin:0.0.0.0:14550"}'``:
    (sysid -> device id, endpoint -> first device naming it)."""
    ids: dict[int, str] = {}
    endpoints: dict[str, str] = {}
    if registry is None:
        return ids, endpoints
    for dev in registry.all():
        t = dev.transport or {}
        sysid = t.get("sysid")
        if isinstance(sysid, int) and 1 <= sysid <= 255:
            ids[sysid] = dev.id
        ep = t.get("endpoint")
        if isinstance(ep, str) and ep.split(":", 1)[0] in KINDS and (sysid is not None or dev.kind == "drone"):
            endpoints.setdefault(ep, dev.id)
    return ids, endpoints


def build_drones(ctx: HubContext, cfg: MavlinkConfig) -> DroneHub | None:
    """Hub component builder: None unless ``[mavlink] endpoints`` or a registered drone names one."""
    if not cfg.endpoints and not from_registry(ctx.registry)[1]:
        return None
    tlog_dir = Path(cfg.tlog_dir) if cfg.tlog_dir else ctx.data_dir / "tlog"
    return DroneHub(cfg, ctx.log, oplog=ctx.oplog, registry=ctx.registry, tlog_dir=tlog_dir)

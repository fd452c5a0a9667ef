"""The ``sl651`` component: a TCP server for SL 651-2014 station DTUs.

One thread runs a ``selectors`` loop over every connection. A report is appended to the log
and confirmed (same function code and serial, EOT or ESC) only in the log's commit callback,
so a confirm always follows durability; the station resends what was not confirmed and the
resend gets the same record ids (drivers.sl651.report_key: station, function code and the
body after the send time, not the serial, which wraps and restarts on a reboot), so the log
keeps it once. Keep-alives (2F) and invalid frames get no answer, as the standard requires.
"""

from __future__ import annotations

import collections
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from drivers import sl651
from drivers.base import ParseContext
from fieldhub.core.component import HubContext, make_status
from fieldhub.core.errors import FieldhubError, ProtocolError, TransportError, ValidationError
from fieldhub.core.log import AppendResult, DurableLog
from fieldhub.core.oplog import OpLog
from fieldhub.core.registry import Device, Registry
from fieldhub.core.worker import Worker

from .config import Sl651Config

SOURCE = "sl651"
#: the server's counters, all shown in status (zero included)
COUNTERS = ("accepted", "refused", "idle_closed", "frames", "bad_frames", "reports", "keepalives", "stored",
            "duplicates", "confirms", "confirms_lost", "unknown", "quarantined", "bad_not_quarantined",
            "downlinks_ignored", "append_errors", "queries", "query_answers", "query_timeouts",
            "m3_packets", "m3_sets", "m3_naks", "m3_dropped")
#: an M3 set being reassembled may hold at most this many bytes; a connection at most this many sets
MAX_SET_BYTES, MAX_SETS = 4 * 1024 * 1024, 4


@dataclass
class Conn:
    sock: socket.socket
    peer: str
    framer: sl651.Sl651Framer = field(default_factory=sl651.Sl651Framer)
    out: bytearray = field(default_factory=bytearray)
    last_rx: float = field(default_factory=time.monotonic)
    closed: bool = False
    stations: set[str] = field(default_factory=set)
    counters: collections.Counter[str] = field(default_factory=collections.Counter)
    #: M3 sets being reassembled: (station, fc) -> M3Set
    sets: dict[tuple[str, int], M3Set] = field(default_factory=dict)


@dataclass
class Query:
    """A center-initiated real-time query (37) waiting for its station's answer."""

    station: str
    done: threading.Event = field(default_factory=threading.Event)
    records: list[Any] = field(default_factory=list)
    peer: str = ""


@dataclass
class M3Set:
    total: int
    packets: dict[int, sl651.Header] = field(default_factory=dict)
    nbytes: int = 0
    naked: set[int] = field(default_factory=set)
    at: float = field(default_factory=time.monotonic)


def _station_view(st: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in st.items() if not k.startswith("_")}


class Sl651Server:
    """Listens for station DTUs; many connections, several stations per connection."""

    name = "sl651"

    def __init__(self, cfg: Sl651Config, *, log: DurableLog, registry: Registry, oplog: OpLog) -> None:
        self.cfg, self.log, self.registry, self.oplog = cfg, log, registry, oplog
        self.parser = sl651.Sl651Parser({"utc_offset_hours": cfg.utc_offset_hours})
        self.stats: collections.Counter[str] = collections.Counter({k: 0 for k in COUNTERS})
        self.stations: dict[str, dict[str, Any]] = {}
        self.address: tuple[str, int] | None = None
        self._sel: selectors.BaseSelector | None = None
        self._listener: socket.socket | None = None
        self._conns: dict[int, Conn] = {}
        self._replies: collections.deque[tuple[Conn, bytes, str]] = collections.deque()
        #: downlinks the center initiates (real-time queries), sent by the loop thread
        self._outbox: collections.deque[tuple[Conn, bytes]] = collections.deque()
        self._queries: dict[str, Query] = {}
        self._query_serial = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._lock = threading.Lock()
        self._by_station: dict[str, Device] = {}
        self._map_at = 0.0
        self._q_window = (0.0, 0)
        self._worker = Worker("sl651-server", self._run)
        self.last_error = ""

    # ---------------------------------------------------------------------------------- contract
    def start(self) -> None:
        host, _, port = self.cfg.listen.rpartition(":")
        try:
            infos = socket.getaddrinfo(host or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family, _, _, _, addr = infos[0]
            lst = socket.socket(family, socket.SOCK_STREAM)
            lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lst.bind(addr)
            lst.listen(256)
        except OSError as exc:
            raise TransportError(f"sl651: cannot listen on {self.cfg.listen}: {exc.strerror or exc}") from None
        lst.setblocking(False)
        self._listener = lst
        self.address = lst.getsockname()[:2]
        self._sel = selectors.DefaultSelector()
        self._sel.register(lst, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._worker.start()
        self.oplog.write("info", "sl651_listening", f"SL651 station server listening on {self.address[0]}:"
                         f"{self.address[1]}", f"SL651 测站服务监听 {self.address[0]}:{self.address[1]}")

    def stop(self, timeout: float = 5.0) -> None:
        self._worker.signal()
        self._wake()
        self._worker.stop(timeout)
        for conn in list(self._conns.values()):
            self._close(conn, "hub stopping")
        for s in (self._listener, self._wake_r, self._wake_w):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        if self._sel is not None:
            self._sel.close()
            self._sel = None

    def status(self) -> dict[str, Any]:
        with self._lock:
            stations = {k: _station_view(v) for k, v in self.stations.items()}
            conns = [{"peer": c.peer, "stations": sorted(c.stations), **c.counters} for c in self._conns.values()]
        state = "ok" if self._worker.alive else "down"
        listen = f"{self.address[0]}:{self.address[1]}" if self.address else self.cfg.listen
        return make_status(state, {"stations": stations, "connections": conns}, listen=listen,
                           connections_open=len(conns), stations_seen=len(stations), **dict(self.stats))

    def commands(self) -> dict[str, Any]:
        return {"stations": lambda args: self.station_list(), "query": self.query}

    def query(self, args: dict[str, Any]) -> dict[str, Any]:
        """Send a real-time query (37) to a registered station over its open TCP connection and wait
        (at most ``timeout`` seconds) for its answer: the decoded elements, optionally only ``elements``
        (SL651 identifiers such as ``Z``, ``PJ``). The answer is also stored like any report."""
        name = str(args.get("station") or "").strip()
        timeout = min(max(float(args.get("timeout") or 10.0), 0.5), 60.0)
        wanted = [str(e).upper() for e in args.get("elements") or []]
        known = set(sl651.ELEMENT_BY_CODE) | {v[0] for v in sl651.SERIES.values()}
        bad = [e for e in wanted if e not in known]
        if bad:
            raise ValidationError(f"unknown SL651 element(s) {', '.join(bad)}: identifiers such as Z, PJ, PT, VT "
                                  f"/ 未知要素标识符 {', '.join(bad)}")
        dev = self.registry.get(name) if name else None
        address = str(dev.transport.get("sl651") or "").upper() if dev else name.upper()
        self._map_at = 0.0                               # see a station registered a moment ago
        dev = self._device(address) if address else None
        if dev is None:
            raise ValidationError(f"unknown station {name!r}: no registry device has it as its sl651 address "
                                  f"(fieldhub devices add ... --transport '{{\"sl651\": \"0012345678\"}}') "
                                  f"/ 未登记的测站 {name!r}")
        with self._lock:
            conns = [c for c in self._conns.values() if address in c.stations and not c.closed]
            st = self.stations.get(address, {})
            if not conns:
                raise FieldhubError(f"station {address} ({dev.id}) is not connected: a query goes over the "
                                    f"station's open TCP connection; wait for its next report or keep-alive "
                                    f"/ 测站 {address} 未在线，实时查询需测站保持 TCP 连接")
            if address in self._queries:
                raise FieldhubError(f"a query to station {address} is already waiting for its answer "
                                    f"/ 测站 {address} 已有查询在等待应答")
            conn = max(conns, key=lambda c: c.last_rx)
            q = self._queries[address] = Query(address, peer=conn.peer)
            self._query_serial = self._query_serial % 65535 + 1
            frame = sl651.encode({"cmd": "query", "station": address, "center": st.get("_center", 1),
                                  "password": st.get("_password", 0), "serial": self._query_serial})
        self.stats["queries"] += 1
        t0 = time.monotonic()
        self._outbox.append((conn, frame))
        self._wake()
        try:
            answered = q.done.wait(timeout)
        finally:
            with self._lock:
                self._queries.pop(address, None)
        if not answered:
            self.stats["query_timeouts"] += 1
            raise FieldhubError(f"station {address} ({dev.id}) did not answer the real-time query within "
                                f"{timeout:g}s / 测站 {address} 在 {timeout:g} 秒内未应答实时查询")
        elements: dict[str, Any] = {}
        observed_ns = 0
        for r in q.records:
            if r.kind != "hydro":
                continue
            observed_ns = max(observed_ns, r.ts)
            for k, v in r.fields.items():
                if k not in ("serial", "no_data") and (not wanted or k.split("_")[0].upper() in wanted):
                    elements[k] = v
        return {"station": address, "device_id": dev.id, "peer": q.peer, "observed_ns": observed_ns,
                "elapsed_ms": round((time.monotonic() - t0) * 1000), "elements": elements,
                "missing": [e for e in wanted if not any(k.split("_")[0].upper() == e for k in elements)]}

    def station_list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"station": k, **_station_view(v)} for k, v in sorted(self.stations.items())]

    # ---------------------------------------------------------------------------------- loop
    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def _run(self, stop: threading.Event) -> None:
        sel = self._sel
        assert sel is not None
        last_sweep = time.monotonic()
        while not stop.is_set():
            for key, mask in sel.select(timeout=1.0):
                if key.data == "listen":
                    self._accept()
                elif key.data == "wake":
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except OSError:
                        pass
                else:
                    conn: Conn = key.data
                    if mask & selectors.EVENT_READ and not conn.closed:
                        self._read(conn)
                    if mask & selectors.EVENT_WRITE and not conn.closed:
                        self._flush(conn)
            self._send_replies()
            while self._outbox:
                conn, data = self._outbox.popleft()
                if not conn.closed:
                    conn.out += data
                    self._flush(conn)
            now = time.monotonic()
            if now - last_sweep >= 1.0:
                last_sweep = now
                for conn in list(self._conns.values()):
                    if now - conn.last_rx > self.cfg.idle_timeout:
                        self.stats["idle_closed"] += 1
                        self._close(conn, "idle")
                    for k, m3 in list(conn.sets.items()):
                        if now - m3.at > self.cfg.idle_timeout:   # the station gave up on this set
                            del conn.sets[k]
                            self.stats["m3_dropped"] += 1

    def _accept(self) -> None:
        assert self._listener is not None and self._sel is not None
        while True:
            try:
                sock, addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.last_error = str(exc)
                return
            if len(self._conns) >= self.cfg.max_connections:
                self.stats["refused"] += 1
                sock.close()
                continue
            sock.setblocking(False)
            conn = Conn(sock, f"{addr[0]}:{addr[1]}")
            with self._lock:
                self._conns[sock.fileno()] = conn
            self._sel.register(sock, selectors.EVENT_READ, conn)
            self.stats["accepted"] += 1

    def _close(self, conn: Conn, why: str) -> None:
        if conn.closed:
            return
        conn.closed = True
        with self._lock:
            self._conns.pop(conn.sock.fileno(), None)
        if self._sel is not None:
            try:
                self._sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        try:
            conn.sock.close()
        except OSError:
            pass

    def _read(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn, "reset")
            return
        if not data:
            self._close(conn, "closed by station")
            return
        conn.last_rx = time.monotonic()
        conn.counters["bytes"] += len(data)
        for frame in conn.framer.feed(data):
            if frame.ok:
                self._frame(conn, frame.raw)
            else:
                self._bad(conn, frame.raw, frame.error, None)
                self._m3_bad(conn, frame.raw)

    def _flush(self, conn: Conn) -> None:
        try:
            n = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self._close(conn, "reset")
            return
        del conn.out[:n]
        if self._sel is not None:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.out else 0)
            self._sel.modify(conn.sock, events, conn)

    def _send_replies(self) -> None:
        while self._replies:
            conn, data, station = self._replies.popleft()
            if conn.closed:
                self.stats["confirms_lost"] += 1   # the station resends; the resend is deduplicated
                continue
            conn.out += data
            conn.counters["confirms"] += 1
            self.stats["confirms"] += 1
            with self._lock:
                if station in self.stations:
                    self.stations[station]["confirms"] += 1
            self._flush(conn)

    # ---------------------------------------------------------------------------------- frames
    def _device(self, station: str) -> Device | None:
        dev = self._by_station.get(station)
        now = time.monotonic()
        if dev is None and now - self._map_at > 1.0 or now - self._map_at > 10.0:
            self._map_at = now
            self._by_station = {str(d.transport.get("sl651", "")).upper(): d for d in self.registry.all()
                                if d.transport.get("sl651")}
            dev = self._by_station.get(station)
        return dev

    def _station(self, hdr: sl651.Header, conn: Conn) -> dict[str, Any]:
        st = self.stations.get(hdr.station)
        if st is None:
            st = self.stations[hdr.station] = {
                "device_id": None, "channel": "tcp", "peer": conn.peer, "reports": 0, "keepalives": 0,
                "bad_frames": 0, "stored": 0, "duplicates": 0, "confirms": 0, "last_seen_ns": 0,
                "last_report_ns": 0, "last_fc": "", "last_serial": None, "battery_v": None}
        st["peer"], st["last_seen_ns"] = conn.peer, time.time_ns()
        st["_center"], st["_password"] = hdr.center, hdr.password
        conn.stations.add(hdr.station)
        return st

    def _frame(self, conn: Conn, raw: bytes) -> None:
        conn.counters["frames"] += 1
        self.stats["frames"] += 1
        try:
            hdr = sl651.decode_header(raw)
        except ProtocolError as exc:
            self._bad(conn, raw, str(exc), None)
            return
        if not hdr.uplink:
            self.stats["downlinks_ignored"] += 1
            return
        with self._lock:
            st = self._station(hdr, conn)
            if hdr.fc == 0x2F:
                st["keepalives"] += 1
                self.stats["keepalives"] += 1
                return                                   # the standard: a keep-alive gets no reply
        if hdr.start == sl651.SYN and hdr.total > 1:
            done = self._m3_packet(conn, hdr)
            if done is None:
                return                                   # more packets to come (or a NAK went out)
            hdr = done
        dev = self._device(hdr.station)
        tags = {**(dev.tags() if dev else {}), "channel": "tcp"}
        ctx = ParseContext(dev.id if dev else f"sl651-{hdr.station}", time.time_ns(), tags=tags, source=SOURCE)
        try:
            records = self.parser.records(hdr, ctx)
        except (ProtocolError, ValidationError) as exc:
            self._bad(conn, raw, f"unparseable: {exc}", hdr.station)
            return
        if hdr.fc == 0x37 and dev is not None:
            with self._lock:
                waiting = self._queries.get(hdr.station)
            if waiting is not None and not waiting.done.is_set():
                waiting.records = records
                self.stats["query_answers"] += 1
                waiting.done.set()
        reply = b""
        mode = str((dev.transport.get("confirm") if dev else None) or self.cfg.confirm).upper()
        if mode not in ("EOT", "ESC", "NONE"):   # a typo in a registry entry must not stop the server
            mode = self.cfg.confirm.upper()
        last_packet = hdr.start != sl651.SYN or hdr.seq == hdr.total
        if hdr.fc in sl651.CONFIRMED and mode != "NONE" and last_packet:
            reply = sl651.confirm_for(hdr, end=mode)
        with self._lock:
            st["reports"] += 1
            st["last_report_ns"], st["last_fc"] = ctx.now_ns, f"{hdr.fc:02X}"
            st["device_id"] = dev.id if dev else None
            for r in records:
                if "VT_V" in r.fields:
                    st["battery_v"] = r.fields["VT_V"]
                if "serial" in r.fields:
                    st["last_serial"] = r.fields["serial"]
        self.stats["reports"] += 1
        if dev is None:
            self.stats["unknown"] += 1
            meta: dict[str, Any] = {"station": hdr.station, "peer": conn.peer, "fc": f"{hdr.fc:02X}",
                                    "records": [r.to_dict() for r in records][:50]}
            if hdr.assembled:                            # keep the whole set, not its last packet
                raw = hdr.body
                meta["m3_packets"] = hdr.total
            self.stats["quarantined"] += 1
            self.log.quarantine(SOURCE, "unknown station", raw, device_id=None, meta=meta,
                                callback=self._after(conn, reply, hdr.station, None))
            return
        self.log.append(records, callback=self._after(conn, reply, hdr.station, len(records)))

    def _after(self, conn: Conn, reply: bytes, station: str, n: int | None):
        def done(result: AppendResult | int | None, error: BaseException | None) -> None:
            if error is not None:
                self.stats["append_errors"] += 1
                self.last_error = str(error)
                return                                   # no confirm: the station resends
            if isinstance(result, AppendResult):
                self.stats["stored"] += result.added
                self.stats["duplicates"] += result.duplicates
                with self._lock:
                    st = self.stations.get(station)
                    if st is not None:
                        st["stored"] += result.added
                        st["duplicates"] += result.duplicates
            if reply:
                self._replies.append((conn, reply, station))
                self._wake()
        return done

    # ---------------------------------------------------------------------------------- M3
    def _m3_packet(self, conn: Conn, hdr: sl651.Header) -> sl651.Header | None:
        """Keep one packet of a multi-packet set; the reassembled set once every packet is there.
        NAKs (one per missing packet) when the last packet, or a resent one (ETX), shows a gap."""
        self.stats["m3_packets"] += 1
        key = (hdr.station, hdr.fc)
        m3 = conn.sets.get(key)
        if m3 is None or m3.total != hdr.total or (hdr.seq == 1 and 1 in m3.packets
                                                    and m3.packets[1].body != hdr.body):
            if m3 is not None:
                self.stats["m3_dropped"] += 1            # a new set replaces an unfinished one
            if len(conn.sets) >= MAX_SETS and key not in conn.sets:
                oldest = min(conn.sets, key=lambda k: conn.sets[k].at)
                del conn.sets[oldest]
                self.stats["m3_dropped"] += 1
            m3 = conn.sets[key] = M3Set(hdr.total)
        if not 1 <= hdr.seq <= hdr.total:
            self._bad(conn, b"", f"M3 packet {hdr.seq} of {hdr.total}", hdr.station)
            return None
        old = m3.packets.get(hdr.seq)
        m3.nbytes += len(hdr.body) - (len(old.body) if old else 0)
        m3.packets[hdr.seq], m3.at = hdr, time.monotonic()
        m3.naked.discard(hdr.seq)
        if m3.nbytes > MAX_SET_BYTES:
            del conn.sets[key]
            self.stats["m3_dropped"] += 1
            self._bad(conn, b"", f"M3 set over {MAX_SET_BYTES} bytes", hdr.station)
            return None
        if len(m3.packets) == m3.total:
            del conn.sets[key]
            try:
                done = sl651.assemble(m3.packets)
            except ProtocolError as exc:
                self._bad(conn, b"", str(exc), hdr.station)
                return None
            self.stats["m3_sets"] += 1
            return done
        if hdr.seq == hdr.total or hdr.end == sl651.ETX:
            for k in range(1, m3.total + 1):
                if k not in m3.packets and k not in m3.naked:
                    self._nak(conn, m3, hdr, k)
        return None

    def _m3_bad(self, conn: Conn, raw: bytes) -> None:
        """A packet of a set in progress failed its CRC: NAK it by its sequence number, when the
        header is plausible (the station is on this connection, the set's total matches)."""
        try:
            hdr = sl651.decode_header(raw)
        except ProtocolError:
            return
        if not (hdr.uplink and hdr.start == sl651.SYN and 1 <= hdr.seq <= hdr.total):
            return
        m3 = conn.sets.get((hdr.station, hdr.fc))
        if m3 is None and hdr.seq == 1 and hdr.station in conn.stations:
            m3 = conn.sets[(hdr.station, hdr.fc)] = M3Set(hdr.total)
        if m3 is None or m3.total != hdr.total:
            return
        self._nak(conn, m3, hdr, hdr.seq)

    def _nak(self, conn: Conn, m3: M3Set, hdr: sl651.Header, seq: int) -> None:
        m3.naked.add(seq)
        self.stats["m3_naks"] += 1
        conn.counters["naks"] += 1
        conn.out += sl651.nak_for(m3.packets.get(1), hdr.station, hdr.center, hdr.password, hdr.fc, hdr.total, seq)
        self._flush(conn)

    def _bad(self, conn: Conn, raw: bytes, why: str, station: str | None) -> None:
        conn.counters["bad_frames"] += 1
        self.stats["bad_frames"] += 1
        if station:
            with self._lock:
                if station in self.stations:
                    self.stations[station]["bad_frames"] += 1
        start, n = self._q_window
        now = time.monotonic()
        if now - start >= 60.0:
            start, n = now, 0
        if n >= self.cfg.quarantine_per_minute:
            self.stats["bad_not_quarantined"] += 1
            self._q_window = (start, n)
            return
        self._q_window = (start, n + 1)
        self.stats["quarantined"] += 1
        self.log.quarantine(SOURCE, f"bad frame: {why}", raw[:8192], device_id=None,
                            meta={"peer": conn.peer, "station": station or ""})


def build(ctx: HubContext, cfg: Sl651Config) -> Sl651Server | None:
    """Hub component builder: None unless ``[sl651] enabled``."""
    if not cfg.enabled:
        return None
    return Sl651Server(cfg, log=ctx.log, registry=ctx.registry, oplog=ctx.oplog)

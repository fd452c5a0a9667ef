"""SL 651-2014 station fleet: TCP DTUs of rain/water-level stations that behave like RTUs in M2.

Each station has a simulated clock that advances 5 minutes per report: a ``32`` timed report
(period rain PJ, cumulative rain PT, water level Z, battery VT) every slot, a ``34`` hourly
report (12 five-minute rain values ``F4`` and 12 water levels ``F5``) every 12th slot, and a
``33`` added (alarm) report when the 5-minute rain of a slot passes ``alarm_mm`` — which the
rain-burst pattern (a burst of heavy rain every 24 slots, 4 slots long, staggered per station)
makes happen. A station keeps at most one report unconfirmed, queues what falls due meanwhile,
and resends the unconfirmed one (same serial, as the standard says) after a confirm timeout or
on a new connection when the old one broke. When idle it sends ``2F`` keep-alives; with
probability ``corrupt`` a report is preceded by a corrupted copy (one body byte flipped, so the
CRC fails), which the center must leave unanswered.

One thread (a ``Worker``) runs a ``selectors`` loop over every DTU connection.

Beidou (``beidou``: a started ``RdssSim``): the stations report over Beidou instead — each report
is an M1 frame (no confirm) delivered by the simulated RDSS module as a ``$BDTXR`` short message
in code (HEX) mode from the station's card; the hourly report (over 98 bytes) is not sent.
"""

from __future__ import annotations

import errno
import random
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from drivers import beidou_rdss, sl651
from drivers.sentence import sentence
from fieldhub.core.backoff import Backoff
from fieldhub.core.worker import Worker

SLOT = timedelta(minutes=5)
CST = timezone(timedelta(hours=8))


def station_address(n: int, base: int = 0) -> str:
    """The n-th simulated station's 10-digit address (hydrological style: 00 + 8 BCD digits)."""
    return f"00{base + n:08d}"


@dataclass
class SimOptions:
    host: str = "127.0.0.1"
    port: int = 5651
    stations: int = 10
    #: reports per second per station (the simulated clock advances one 5-minute slot per report)
    rate: float = 0.2
    seconds: float = 0.0
    keepalive: float = 40.0
    confirm_timeout: float = 10.0
    corrupt: float = 0.01
    alarm_mm: float = 5.0
    #: every this many slots a station sends a picture (function 36) as an M3 multi-packet set; 0 = never
    picture_every: int = 24
    center: int = 1
    password: int = 0
    #: first station number (addresses ``00`` + 8 digits from here)
    first: int = 0
    #: the simulated clock's start (station local time, UTC+8); default: now, on a 5-minute boundary
    start: datetime | None = None
    seed: int = 651
    #: a started simulators.rdss.RdssSim: report as Beidou short messages through it, not over TCP
    beidou: Any = None
    #: Beidou: the first station's card number (the others follow)
    card: int = 300000


@dataclass
class Pending:
    fc: int
    serial: int
    obs: datetime
    frame: bytes
    sends: int = 0
    sent_at: float = 0.0
    #: an M3 set (a picture): its packets, sent in place of ``frame``
    packets: list[bytes] = field(default_factory=list)


@dataclass
class Station:
    address: str
    index: int
    rng: random.Random
    clock: datetime
    slot: int = 0
    serial: int = 0
    pt: float = 0.0                       # cumulative rain, mm
    level: float = 2.0                    # water level, m
    rain: float = 0.0                     # the last slot's rain, mm
    volts: float = 12.3                   # battery, V
    rain_hour: list[float] = field(default_factory=list)
    level_hour: list[float] = field(default_factory=list)
    queue: list[Pending] = field(default_factory=list)
    sock: socket.socket | None = None
    connecting: bool = False
    conn_opened: float = 0.0
    framer: sl651.Sl651Framer = field(default_factory=sl651.Sl651Framer)
    out: bytearray = field(default_factory=bytearray)
    last_tx: float = 0.0
    next_report: float = 0.0
    retry_at: float = 0.0
    backoff: Backoff = field(default_factory=lambda: Backoff(0.2, 5.0))


class Sl651Fleet:
    """N simulated stations over TCP. ``start()``, ``drain(timeout)``, ``stop()``, ``summary()``."""

    def __init__(self, opts: SimOptions) -> None:
        self.opts = opts
        start = opts.start or datetime.now(CST).replace(second=0, microsecond=0)
        start = start.replace(minute=start.minute - start.minute % 5)
        rng = random.Random(opts.seed)
        self.stations = [Station(station_address(i, opts.first), i, random.Random(rng.random()), start)
                         for i in range(opts.stations)]
        self.stats: dict[str, int] = {k: 0 for k in (
            "generated", "sent", "resends", "confirmed", "unexpected_replies", "keepalives", "corrupt_sent",
            "connects", "connect_failures", "disconnects", "alarms", "hourly", "timed", "beidou_sent",
            "replies_lost", "pictures", "packets_sent", "naks", "nak_resends", "queries_answered")}
        #: every report generated: (station, fc, observation time) in generation order
        self.generated: list[tuple[str, int, datetime]] = []
        #: reports confirmed by the center: (station, fc, observation time)
        self.confirmed: list[tuple[str, int, datetime]] = []
        #: corrupt frames sent: monotonic time the connection they went on was opened
        self.corrupt_log: list[float] = []
        self._generating = True
        #: while True, what the center sends is lost on the way (a fading GPRS link): confirms never arrive
        self.deaf = False
        self._lock = threading.Lock()
        self._sel = selectors.DefaultSelector()
        self._worker = Worker("sl651-fleet", self._run)
        self._t0 = 0.0

    # ------------------------------------------------------------------------------ control
    def start(self) -> Sl651Fleet:
        self._t0 = time.monotonic()
        period = 1.0 / self.opts.rate if self.opts.rate > 0 else 1e9
        for st in self.stations:
            st.next_report = self._t0 + st.rng.uniform(0, period)   # spread the fleet over one period
        self._worker.start()
        return self

    @property
    def generating(self) -> bool:
        return self._generating

    def stop_generating(self) -> None:
        self._generating = False

    def drain(self, timeout: float) -> bool:
        """Stop generating and wait until every report is confirmed; False on timeout."""
        self.stop_generating()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.unconfirmed() == 0:
                return True
            time.sleep(0.1)
        return self.unconfirmed() == 0

    def unconfirmed(self) -> int:
        with self._lock:
            return sum(len(st.queue) for st in self.stations)

    def stop(self) -> None:
        self._worker.stop(5.0)
        for st in self.stations:
            self._disconnect(st, count=False)
        self._sel.close()

    def corrupt_since(self, t: float) -> int:
        """Corrupt frames sent on connections opened after monotonic time ``t``."""
        with self._lock:
            return sum(1 for opened in self.corrupt_log if opened > t)

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {**self.stats, "stations": len(self.stations),
                    "unconfirmed": sum(len(st.queue) for st in self.stations),
                    "connected": sum(1 for st in self.stations if st.sock is not None and not st.connecting)}

    # ------------------------------------------------------------------------------ reports
    def _next_serial(self, st: Station) -> int:
        st.serial = st.serial % 65535 + 1
        return st.serial

    def _rain(self, st: Station) -> float:
        phase = (st.slot + st.index * 7) % 24
        if phase < 4:                                            # the burst
            return round(st.rng.uniform(4.0, 12.0), 1)
        return round(st.rng.choice((0.0, 0.0, 0.0, 0.1, 0.2, 0.5)), 1)

    def _frame(self, st: Station, fc: int, serial: int, obs: datetime, elements: bytes) -> bytes:
        now = datetime.now(CST)
        body = (serial.to_bytes(2, "big") + sl651.time_bcd(now) + bytes.fromhex("F1F1" + st.address + "48")
                + bytes.fromhex("F0F0") + sl651.time_bcd(obs, seconds=False) + elements)
        return sl651.build_frame(center=self.opts.center, station=st.address, password=self.opts.password,
                                 fc=fc, body=body, end=sl651.ETX)

    def _generate(self, st: Station) -> None:
        """The reports of one 5-minute slot."""
        st.slot += 1
        st.clock += SLOT
        rain = self._rain(st)
        st.pt = round(st.pt + rain, 1)
        st.level = round(max(0.5, st.level + rain * 0.01 - 0.005), 3)
        st.rain_hour.append(rain)
        st.level_hour.append(st.level)
        volts = 12.0 + st.rng.randint(0, 60) / 100
        st.rain, st.volts = rain, volts
        common = (bytes.fromhex("2019") + _bcd(rain, 1, 3) + bytes.fromhex("2619") + _bcd(st.pt, 1, 3)
                  + bytes.fromhex("3923") + _bcd(st.level, 3, 4) + bytes.fromhex("3812") + _bcd(volts, 2, 2))
        due = [(0x32, common)]
        if rain >= self.opts.alarm_mm:
            due.append((0x33, bytes.fromhex("2019") + _bcd(rain, 1, 3) + bytes.fromhex("3923")
                        + _bcd(st.level, 3, 4)))
        if len(st.rain_hour) == 12 and self.opts.beidou is None:
            f4 = bytes(min(254, round(r * 10)) for r in st.rain_hour)
            f5 = b"".join(min(65534, round(v * 100)).to_bytes(2, "big") for v in st.level_hour)
            due.append((0x34, bytes.fromhex("F460") + f4 + bytes.fromhex("F5C0") + f5 + common))
            st.rain_hour, st.level_hour = [], []
        for fc, elements in due:
            serial = self._next_serial(st)
            st.queue.append(Pending(fc, serial, st.clock, self._frame(st, fc, serial, st.clock, elements)))
            self.generated.append((st.address, fc, st.clock))
            self.stats["generated"] += 1
            self.stats[{0x32: "timed", 0x33: "alarms", 0x34: "hourly"}[fc]] += 1
        every = self.opts.picture_every
        if every and self.opts.beidou is None and st.slot % every == 0:
            serial = self._next_serial(st)
            pic = picture(st.rng, st.rng.randint(1500, 4000))
            st.queue.append(Pending(0x36, serial, st.clock, b"", packets=self._picture(st, serial, pic)))
            self.generated.append((st.address, 0x36, st.clock))
            self.stats["generated"] += 1
            self.stats["pictures"] += 1

    def _picture(self, st: Station, serial: int, pic: bytes, chunk: int = 256) -> list[bytes]:
        """A picture as an M3 set (Tables 22/23): packet 1 has serial, send time, F1F1, F0F0 and F3F3
        before the first bytes; later packets carry bytes only; ETB on all but the last (ETX)."""
        head = (serial.to_bytes(2, "big") + sl651.time_bcd(datetime.now(CST))
                + bytes.fromhex("F1F1" + st.address + "48") + bytes.fromhex("F0F0")
                + sl651.time_bcd(st.clock, seconds=False) + bytes.fromhex("F3F3"))
        chunks = [pic[i:i + chunk] for i in range(0, len(pic), chunk)]
        n = len(chunks)
        return [sl651.build_frame(center=self.opts.center, station=st.address, password=self.opts.password,
                                  fc=0x36, body=(head if k == 0 else b"") + c,
                                  end=sl651.ETX if k == n - 1 else sl651.ETB, packet=(n, k + 1))
                for k, c in enumerate(chunks)]

    # ------------------------------------------------------------------------------ loop
    def _run(self, stop: threading.Event) -> None:
        period = 1.0 / self.opts.rate if self.opts.rate > 0 else 1e9
        end = self._t0 + self.opts.seconds if self.opts.seconds > 0 else float("inf")
        while not stop.is_set():
            now = time.monotonic()
            if now >= end:
                self._generating = False
            for st in self.stations:
                with self._lock:
                    if self._generating and now >= st.next_report:
                        st.next_report += period
                        if st.next_report < now:          # fell behind (hub away): do not burst
                            st.next_report = now + period
                        self._generate(st)
                    self._tick(st, now)
            timeout = 0.05
            for key, mask in self._sel.select(timeout):
                st = key.data
                with self._lock:
                    if st.connecting:
                        self._connected(st)
                    elif mask & selectors.EVENT_READ:
                        self._read(st)
                    if st.sock is not None and not st.connecting and mask & selectors.EVENT_WRITE:
                        self._flush(st)

    def _tick(self, st: Station, now: float) -> None:
        if self.opts.beidou is not None:
            while st.queue:
                p = st.queue.pop(0)
                self.opts.beidou.emit(beidou_txr(str(self.opts.card + st.index), p.frame))
                self.stats["beidou_sent"] += 1
            return
        if st.sock is None:
            if (st.queue or self._generating) and now >= st.retry_at:
                self._connect(st)
            return
        if st.connecting:
            return
        if st.queue:
            p = st.queue[0]
            if p.sends == 0 or now - p.sent_at >= self.opts.confirm_timeout:
                self._send_report(st, p, now)
        elif now - st.last_tx >= self.opts.keepalive and st.serial:
            body = st.serial.to_bytes(2, "big") + sl651.time_bcd(datetime.now(CST))
            self._send(st, sl651.build_frame(center=self.opts.center, station=st.address,
                                             password=self.opts.password, fc=0x2F, body=body, end=sl651.ETX))
            self.stats["keepalives"] += 1

    def _send_report(self, st: Station, p: Pending, now: float) -> None:
        if p.sends:
            self.stats["resends"] += 1
        if p.packets:
            bad_k = st.rng.randrange(1, len(p.packets) - 1) if (len(p.packets) > 2
                                                               and st.rng.random() < self.opts.corrupt) else -1
            for k, packet in enumerate(p.packets):
                if k == bad_k:                                # corrupted on the way: the center NAKs it
                    packet = packet[:40] + bytes((packet[40] ^ 0x5A,)) + packet[41:]
                    self.stats["corrupt_sent"] += 1
                    self.corrupt_log.append(st.conn_opened)
                self._send(st, packet)
                self.stats["packets_sent"] += 1
            p.sends += 1
            p.sent_at = now
            self.stats["sent"] += 1
            return
        if st.rng.random() < self.opts.corrupt:
            bad = bytearray(p.frame)
            bad[24] ^= 0x5A                                   # a body byte (F1F1 area): the CRC fails
            self._send(st, bytes(bad))
            self.stats["corrupt_sent"] += 1
            self.corrupt_log.append(st.conn_opened)
        self._send(st, p.frame)
        p.sends += 1
        p.sent_at = now
        self.stats["sent"] += 1

    def _send(self, st: Station, data: bytes) -> None:
        st.out += data
        st.last_tx = time.monotonic()
        self._flush(st)

    def _connect(self, st: Station) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        rc = sock.connect_ex((self.opts.host, self.opts.port))
        if rc not in (0, errno.EINPROGRESS):
            sock.close()
            self._failed(st)
            return
        st.sock, st.connecting = sock, True
        self._sel.register(sock, selectors.EVENT_WRITE, st)

    def _connected(self, st: Station) -> None:
        assert st.sock is not None
        err = st.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._disconnect(st, count=False)
            self._failed(st)
            return
        st.connecting = False
        st.conn_opened = time.monotonic()
        st.backoff.reset()
        st.framer = sl651.Sl651Framer()
        st.out.clear()
        st.last_tx = st.conn_opened
        self.stats["connects"] += 1
        if st.queue:
            st.queue[0].sent_at = -1e9                         # resend the unconfirmed report now
        self._sel.modify(st.sock, selectors.EVENT_READ, st)

    def _failed(self, st: Station) -> None:
        self.stats["connect_failures"] += 1
        st.retry_at = time.monotonic() + st.backoff.next()

    def _disconnect(self, st: Station, count: bool = True) -> None:
        if st.sock is None:
            return
        try:
            self._sel.unregister(st.sock)
        except (KeyError, ValueError):
            pass
        st.sock.close()
        st.sock, st.connecting = None, False
        if count:
            self.stats["disconnects"] += 1
            st.retry_at = time.monotonic() + st.backoff.next()

    def _flush(self, st: Station) -> None:
        if st.sock is None or st.connecting:
            return
        try:
            n = st.sock.send(st.out) if st.out else 0
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self._disconnect(st)
            return
        del st.out[:n]
        self._sel.modify(st.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if st.out else 0), st)

    def _read(self, st: Station) -> None:
        assert st.sock is not None
        try:
            data = st.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._disconnect(st)
            return
        if self.deaf:
            self.stats["replies_lost"] += len(st.framer.feed(data))
            return
        for frame in st.framer.feed(data):
            if not frame.ok:
                self.stats["unexpected_replies"] += 1
                continue
            hdr = sl651.decode_header(frame.raw)
            if not hdr.uplink and hdr.fc == 0x37 and hdr.station == st.address:
                self._answer_query(st, hdr)
                continue
            p = st.queue[0] if st.queue else None
            if (p is not None and p.packets and not hdr.uplink and hdr.end == sl651.NAK and hdr.fc == p.fc
                    and 1 <= hdr.seq <= len(p.packets)):
                self.stats["naks"] += 1                       # resend that packet alone, ending ETX
                bad = sl651.decode_header(p.packets[hdr.seq - 1])
                self._send(st, sl651.build_frame(center=bad.center, station=bad.station, password=bad.password,
                                                 fc=bad.fc, body=bad.body, end=sl651.ETX,
                                                 packet=(bad.total, bad.seq)))
                self.stats["nak_resends"] += 1
                continue
            if (p is not None and p.sends and not hdr.uplink and hdr.fc == p.fc
                    and hdr.body[:2] == p.serial.to_bytes(2, "big") and hdr.end in (sl651.EOT, sl651.ESC)):
                st.queue.pop(0)
                self.confirmed.append((st.address, p.fc, p.obs))
                self.stats["confirmed"] += 1
                if st.queue:
                    self._send_report(st, st.queue[0], time.monotonic())
            else:
                self.stats["unexpected_replies"] += 1


    def _answer_query(self, st: Station, hdr: sl651.Header) -> None:
        """The real-time query (37): answered at once with the station's current values (no confirm),
        the center's serial echoed, observed at the station's current clock."""
        self.stats["queries_answered"] += 1
        elements = (bytes.fromhex("2019") + _bcd(st.rain, 1, 3) + bytes.fromhex("2619") + _bcd(st.pt, 1, 3)
                    + bytes.fromhex("3923") + _bcd(st.level, 3, 4) + bytes.fromhex("3812") + _bcd(st.volts, 2, 2))
        serial = int.from_bytes(hdr.body[:2], "big") if len(hdr.body) >= 2 else 0
        self._send(st, self._frame(st, 0x37, serial, st.clock, elements))


def picture(rng: random.Random, n: int) -> bytes:
    """``n`` bytes that start and end like a JPEG (FFD8 ... FFD9)."""
    return b"\xff\xd8" + rng.randbytes(n - 4) + b"\xff\xd9"


def beidou_txr(card: str, frame: bytes) -> bytes:
    """The ``$BDTXR`` sentence an RDSS module outputs for a short message carrying ``frame`` in code mode."""
    return sentence(b"BDTXR,1,%s,%d,,%s" % (card.encode(), beidou_rdss.ENC_CODE, frame.hex().upper().encode()))


def _bcd(value: float, decimals: int, width: int) -> bytes:
    """A non-negative value as ``width`` BCD bytes with ``decimals`` implied decimals."""
    digits = f"{round(abs(value) * 10 ** decimals):0{width * 2}d}"[-width * 2:]
    return bytes.fromhex(digits)

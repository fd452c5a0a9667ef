"""A minimal Beidou RDSS network simulator for the uplink: terminals behind pseudo-terminals.

Each terminal (a card number, service interval and card level) is a pty the hub or the
center opens with pyserial. It answers ``$CCICA`` with ``$BDICI``, and on ``$CCTXA`` checks
the card interval and message size, replies ``$BDFKI,TXA,...`` and, after ``delay``,
delivers ``$BDTXR`` to the destination card's terminal. Only what the uplink needs; the
serial helper's full terminal simulator supersedes it where present.
"""

from __future__ import annotations

import os
import pty
import select
import threading
import time
import tty
from dataclasses import dataclass, field

from drivers.sentence import SentenceFramer, sentence, split_fields
from fieldhub.uplink.shortmsg import CARD_BITS


@dataclass
class Terminal:
    card: str
    interval: int = 60
    level: int = 3
    master: int = -1
    slave: int = -1
    path: str = ""
    last_send: float = -1e9
    framer: SentenceFramer = field(default_factory=lambda: SentenceFramer(max_len=4096))
    sent: int = 0
    refused: int = 0
    received: list[str] = field(default_factory=list)


class RdssNetwork:
    """``net = RdssNetwork(); path = net.add("0242286", interval=2); net.start()``."""

    def __init__(self, delay: float = 0.3) -> None:
        self.delay = delay
        self.terminals: dict[str, Terminal] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._timers: list[threading.Timer] = []

    def add(self, card: str, *, interval: int = 60, level: int = 3) -> str:
        master, slave = pty.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        t = Terminal(card, interval, level, master, slave, os.ttyname(slave))
        self.terminals[card] = t
        return t.path

    def start(self) -> RdssNetwork:
        self._thread = threading.Thread(target=self._run, name="rdss-net", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for tm in self._timers:
            tm.cancel()
        if self._thread is not None:
            self._thread.join(5)
        for t in self.terminals.values():
            for fd in (t.master, t.slave):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _write(self, t: Terminal, body: str) -> None:
        try:
            os.write(t.master, sentence(body))
        except OSError:
            pass

    def _run(self) -> None:
        by_fd = {t.master: t for t in self.terminals.values()}
        while not self._stop.is_set():
            ready, _, _ = select.select(list(by_fd), [], [], 0.2)
            for fd in ready:
                t = by_fd[fd]
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue
                for frame in t.framer.feed(data):
                    if frame.ok:
                        self._handle(t, [x.decode("ascii", "replace") for x in split_fields(frame.raw)])

    def _handle(self, t: Terminal, f: list[str]) -> None:
        if f[0] in ("CCICA", "CCICI"):
            self._write(t, f"BDICI,{t.card},{t.card.zfill(8)},0000011,6,{t.interval},{t.level},N,0")
        elif f[0] == "CCTXA" and len(f) >= 5:
            now = time.monotonic()
            wait = t.interval - (now - t.last_send)
            size_bits = len(f[4]) * 4 if f[3] == "1" else len(f[4].encode()) * 8
            if wait > 0:
                t.refused += 1
                self._write(t, f"BDFKI,TXA,N,N,0,{int(wait) + 1:04d}")
                return
            if size_bits > CARD_BITS.get(t.level, 628):
                t.refused += 1
                self._write(t, "BDFKI,TXA,N,Y,1,0000")
                return
            t.last_send = now
            t.sent += 1
            self._write(t, "BDFKI,TXA,Y,Y,0,0000")
            dest = self.terminals.get(f[1])
            if dest is not None:
                hhmm = time.strftime("%H%M", time.gmtime())
                body = f"BDTXR,1,{t.card},{f[3]},{hhmm},{f[4]}"
                tm = threading.Timer(self.delay, self._deliver, (dest, body))
                tm.daemon = True
                self._timers.append(tm)
                tm.start()

    def _deliver(self, dest: Terminal, body: str) -> None:
        dest.received.append(body)
        self._write(dest, body)

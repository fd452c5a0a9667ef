"""Tiantong-1 SMS bearer: short-message summaries as text SMS through the terminal's AT commands.

Used for a ``tiantong`` link whose url is a serial port (an ``mqtt://`` url means the
terminal's IP data service instead). The payload is the same MAC'd record summary as a
Beidou short message (``shortmsg.py``), base64 in one 160-character text SMS (120 bytes).
Framing and URC parsing come from the Tiantong driver (``drivers/tiantong.py``).
"""

from __future__ import annotations

import base64
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from drivers.tiantong import AtFramer
from fieldhub.core.errors import TransportError
from fieldhub.core.worker import DEFAULT_JOIN, Worker, stop_all
from fieldhub.uplink.config import LinkConfig

SMS_BUDGET = 120  # bytes: base64 of 120 bytes is 160 GSM characters, one SMS
_CREG = re.compile(rb"^\+CREG:\s*(\d+)(?:\s*,\s*(\d+))?")
_CSQ = re.compile(rb"^\+CSQ:\s*(\d+)")
FINAL_ERR = (b"ERROR", b"+CMS ERROR", b"+CME ERROR")


def sms_text(payload: bytes) -> str:
    return base64.b64encode(payload).decode("ascii")


def sms_payload(text: str) -> bytes:
    return base64.b64decode(text.strip(), validate=True)


class AtPort:
    """A serial AT terminal: one command at a time, URCs handed to ``on_urc``."""

    def __init__(self, url: str, on_urc: Callable[[bytes], None]) -> None:
        self.url, self.on_urc = url, on_urc
        self.port: Any = None
        self.framer = AtFramer()
        self.lock = threading.Lock()  # one command sequence at a time
        self._lines: list[bytes] = []
        self._cv = threading.Condition()
        self.bad_frames = 0

    def open(self) -> bool:
        import serial

        try:
            self.port = serial.serial_for_url(self.url, baudrate=115200, timeout=0.2)
        except (serial.SerialException, OSError, ValueError):
            self.port = None
        return self.port is not None

    def close(self) -> None:
        if self.port is not None:
            try:
                self.port.close()
            except OSError:
                pass
            self.port = None

    def pump(self) -> None:
        """Read what is there (called by the owner's thread)."""
        data = self.port.read(self.port.in_waiting or 1)
        for frame in self.framer.feed(data) if data else ():
            if not frame.ok:
                self.bad_frames += 1
                continue
            self.on_urc(frame.raw)
            with self._cv:
                self._lines.append(frame.raw)
                self._cv.notify_all()

    def command(self, text: bytes, until: tuple[bytes, ...] = (b"OK",) + FINAL_ERR,
                timeout: float = 5.0) -> list[bytes]:
        """Write ``text``; the lines up to one starting with one of ``until`` (TransportError on timeout)."""
        with self._cv:
            self._lines.clear()
        self.port.write(text)
        deadline = time.monotonic() + timeout
        got: list[bytes] = []
        with self._cv:
            while True:
                while self._lines:
                    line = self._lines.pop(0)
                    got.append(line)
                    if line.startswith(until):
                        return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TransportError(f"{self.url}: no answer to {text[:20]!r} within {timeout:.0f}s")
                self._cv.wait(left)


class TiantongSmsBearer:
    """One SMS per ``card_interval`` to ``dest_card`` (the center's number); up while registered."""

    budget = SMS_BUDGET

    def __init__(self, config: LinkConfig, hub_id: str) -> None:
        self.name, self.config, self.hub_id = config.name, config, hub_id
        self.at = AtPort(config.url, self._urc)
        self._workers = [Worker(f"tiantong-{self.name}", self._run),
                         Worker(f"tiantong-rx-{self.name}", self._read_loop)]
        self.registered = False
        self.rssi: int | None = None
        self.last_heard = 0.0
        self.last_send = 0.0
        self.bytes_sent = self.messages_sent = self.refused = 0
        self.last_error = ""
        self.since = time.time_ns()
        self.rtt: float | None = None

    @property
    def interval(self) -> float:
        return float(self.config.card_interval)

    def _urc(self, line: bytes) -> None:
        self.last_heard = time.monotonic()
        m = _CREG.match(line)
        if m:
            stat = int(m.group(2) if m.group(2) is not None else m.group(1))
            if (stat in (1, 5)) != self.registered:
                self.since = time.time_ns()
            self.registered = stat in (1, 5)
        m = _CSQ.match(line)
        if m:
            self.rssi = int(m.group(1))

    def start(self) -> None:
        for w in self._workers:
            w.start()

    def stop(self, timeout: float = DEFAULT_JOIN) -> None:
        """Idempotent; waits at most ``timeout`` in all for the prober and the reader."""
        stop_all(self._workers, timeout)
        self.at.close()

    def _run(self, stop: threading.Event) -> None:
        """The prober: registration and signal every 10 s, unless a send holds the port."""
        next_probe = 0.0
        while not stop.wait(0.2):
            if self.at.port is None or time.monotonic() < next_probe:
                continue
            next_probe = time.monotonic() + 10
            if not self.at.lock.acquire(blocking=False):
                continue  # a send is in progress
            try:
                t = time.monotonic()
                for cmd in (b"ATE0\r", b"AT+CMGF=1\r", b"AT+CREG?\r", b"AT+CSQ\r"):
                    self.at.command(cmd)
                self.rtt = (time.monotonic() - t) / 4
            except (TransportError, OSError) as exc:
                self.last_error = str(exc)
            finally:
                self.at.lock.release()

    def _read_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if self.at.port is None and not self.at.open():
                self.last_error = f"cannot open {self.config.url}"
                stop.wait(2)
                continue
            try:
                self.at.pump()
            except (OSError, TypeError, AttributeError) as exc:
                self.last_error = f"serial: {exc}"
                self.at.close()

    def up(self) -> bool:
        return self.at.port is not None and self.registered and time.monotonic() - self.last_heard < 30

    def ready(self) -> bool:
        return self.up() and time.monotonic() - self.last_send >= self.interval

    def send(self, payload: bytes) -> None:
        if not self.up():
            raise TransportError(f"link {self.name}: Tiantong terminal not registered")
        number = self.config.dest_card
        with self.at.lock:
            self.last_send = time.monotonic()
            try:
                self.at.command(f'AT+CMGS="{number}"\r'.encode(), until=(b">",) + FINAL_ERR)
                lines = self.at.command(sms_text(payload).encode() + b"\x1a", timeout=60)
            except OSError as exc:
                raise TransportError(f"link {self.name}: serial write failed: {exc}") from None
        if not any(line.startswith(b"+CMGS") for line in lines):
            self.refused += 1
            self.last_error = f"SMS refused: {lines[-1].decode(errors='replace') if lines else '?'}"
            raise TransportError(f"link {self.name}: {self.last_error}")
        self.bytes_sent += len(payload)
        self.messages_sent += 1

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "tiantong", "url": self.config.url,
                "state": "up" if self.up() else "down", "since_ns": self.since,
                "rtt_ms": round(self.rtt * 1000, 1) if self.rtt is not None else None, "loss": None,
                "bytes_sent": self.bytes_sent, "messages_sent": self.messages_sent, "refused": self.refused,
                "rssi": self.rssi, "interval_s": self.interval, "cost": self.config.cost,
                "classes": list(self.config.classes), "last_error": self.last_error}

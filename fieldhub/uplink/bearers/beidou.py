"""The Beidou RDSS bearer: short messages through the text protocol 2.1 (``$CCTXA`` /
``$BDFKI`` / ``$CCICA``) with pyserial's ``serial_for_url``, so it drives a real terminal, a
pseudo-terminal or ``socket://`` alike."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from drivers import beidou_rdss
from drivers.base import Frame
from drivers.sentence import sentence, split_fields
from fieldhub.core.errors import TransportError
from fieldhub.core.worker import DEFAULT_JOIN, Worker
from fieldhub.uplink.config import LinkConfig

if TYPE_CHECKING:  # pyserial is imported when the link starts
    import serial


def txa(dest_card: str, payload: bytes) -> bytes:
    """``$CCTXA,<dest>,1,1,<HEX>*hh``: a normal (not express) message in code mode carrying raw bytes.

    The RDSS driver's own TXA encoder carries GBK text; the uplink's payload is binary, so it
    goes in code mode as hex, framed by the driver's ``sentence``.
    """
    return sentence(f"CCTXA,{dest_card.zfill(7)},1,{beidou_rdss.ENC_CODE},{payload.hex().upper()}")


def rdss_fields(frame: Frame) -> list[str]:
    return [x.decode("ascii", "replace") for x in split_fields(frame.raw)]


class BeidouBearer:
    """Beidou RDSS short messages: one ``$CCTXA`` per card interval, confirmed by ``$BDFKI``."""

    def __init__(self, config: LinkConfig, hub_id: str, *, on_line: Callable[[list[str]], None] | None = None) -> None:
        self.name, self.config, self.hub_id = config.name, config, hub_id
        self.on_line = on_line
        self._port: serial.Serial | None = None
        self._worker = Worker(f"beidou-{self.name}", self._run)
        self._lock = threading.Lock()
        self._fki: deque[dict[str, Any]] = deque(maxlen=8)
        self.bad_frames = 0
        self._fki_event = threading.Event()
        self.card: dict[str, Any] = {}
        self.last_send = 0.0
        self.last_heard = 0.0
        self.bytes_sent = 0
        self.messages_sent = 0
        self.refused = 0
        self.last_error = ""
        self.since = time.time_ns()
        self.rtt: float | None = None
        self._query_sent = 0.0

    @property
    def interval(self) -> float:
        iv = self.card.get("interval") or 0
        return max(float(self.config.card_interval), float(iv))

    def start(self) -> None:
        self._worker.start()

    def stop(self, timeout: float = DEFAULT_JOIN) -> None:
        """Idempotent; waits at most ``timeout`` for the reader thread."""
        self._worker.stop(timeout)
        self._close()

    def _close(self) -> None:
        if self._port is not None:
            try:
                self._port.close()
            except OSError:
                pass
            self._port = None

    def _open(self) -> None:
        import serial

        try:
            self._port = serial.serial_for_url(self.config.url, baudrate=115200, timeout=0.2)
        except (serial.SerialException, OSError, ValueError) as exc:
            self.last_error = f"cannot open {self.config.url}: {exc}"
            self._port = None

    def _run(self, stop: threading.Event) -> None:
        framer = beidou_rdss.framer()
        next_query = 0.0
        while not stop.is_set():
            if self._port is None:
                self._open()
                if self._port is None:
                    stop.wait(2)
                    continue
            now = time.monotonic()
            try:
                if now >= next_query:  # card query doubles as the link probe
                    self._port.write(beidou_rdss.encode({"cmd": "ica"}))
                    self._query_sent = now
                    next_query = now + 10
                data = self._port.read(self._port.in_waiting or 1)
            except OSError as exc:
                self.last_error = f"serial: {exc}"
                self._close()
                continue
            if not data:
                continue
            for frame in framer.feed(data):
                if frame.ok:
                    self._handle(frame)
                else:
                    self.bad_frames += 1

    def _handle(self, frame: Frame) -> None:
        self.last_heard = time.monotonic()
        raw = split_fields(frame.raw)
        kind = raw[0][2:]
        if kind in (b"ICI", b"ICP"):
            info = beidou_rdss.card_info(raw) if kind == b"ICI" else beidou_rdss.card_info_bd3(raw)
            self.rtt = time.monotonic() - self._query_sent
            self.card = {"card": info["card"], "interval": info["interval_s"], "level": info["comm_level"],
                         "present": info["present"]}
        elif kind == b"FKI":
            self._fki.append(beidou_rdss.feedback(raw))
            self._fki_event.set()
        if self.on_line is not None:
            self.on_line(rdss_fields(frame))

    def up(self) -> bool:
        return (self._port is not None and bool(self.card.get("present"))
                and time.monotonic() - self.last_heard < 30)

    def ready(self) -> bool:
        """Up and the card interval has passed since the last send."""
        return self.up() and time.monotonic() - self.last_send >= self.interval

    def send(self, payload: bytes, timeout: float = 5.0) -> None:
        """Send one short message (code mode, hex content); raises TransportError if refused."""
        if not self.up():
            raise TransportError(f"link {self.name}: no Beidou card/terminal")
        self._fki.clear()
        self._fki_event.clear()
        line = txa(self.config.dest_card, payload)
        port = self._port
        try:
            if port is None:  # closed by the reader since up()
                raise OSError("the port is closed")
            port.write(line)
        except (OSError, AttributeError) as exc:
            raise TransportError(f"link {self.name}: serial write failed: {exc}") from None
        self.last_send = time.monotonic()
        if not self._fki_event.wait(timeout):
            raise TransportError(f"link {self.name}: no $BDFKI feedback within {timeout:.0f}s")
        fki = self._fki[-1]  # BD-2 ($BDFKI,TXA,...) and BD-3 ($BDFKI,hhmmss,TCQ,...) forms, via the driver
        if not fki["executed"]:
            self.refused += 1
            self.last_error = f"send refused: {fki}"
            raise TransportError(f"link {self.name}: terminal refused the send (wait {fki['wait_s']} s)")
        self.bytes_sent += len(payload)
        self.messages_sent += 1

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "beidou", "url": self.config.url,
                "state": "up" if self.up() else "down", "since_ns": self.since,
                "rtt_ms": round(self.rtt * 1000, 1) if self.rtt is not None else None, "loss": None,
                "bytes_sent": self.bytes_sent, "messages_sent": self.messages_sent, "refused": self.refused,
                "card": self.card, "interval_s": self.interval, "cost": self.config.cost,
                "classes": list(self.config.classes), "last_error": self.last_error}

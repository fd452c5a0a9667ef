"""The serial transport: pyserial ``serial_for_url`` (tty, pty, socket://, loop://) with reconnect."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypedDict

import serial

if TYPE_CHECKING:
    import socket

from fieldhub.core.backoff import Backoff
from fieldhub.core.errors import TransportError

PARITY = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD,
          "M": serial.PARITY_MARK, "S": serial.PARITY_SPACE}


class PortSettings(TypedDict):
    """The line settings ``serial_for_url`` is opened with."""

    baudrate: int
    bytesize: int
    parity: str
    stopbits: int


class SerialTransport:
    """One port: ``run(on_data)`` reads until stopped, reopening with backoff when the port goes away.

    Reads use ``read(in_waiting or 1)`` (never ``readline``: one syscall per byte). Writes may
    come from any thread; they fail with TransportError while the port is away.
    """

    def __init__(self, url: str, *, baud: int = 9600, bytesize: int = 8, parity: str = "N",
                 stopbits: int = 1, backoff_initial: float = 0.5, backoff_max: float = 30.0,
                 on_state: Callable[[str, str], None] | None = None) -> None:
        self.url = url
        self.settings: PortSettings = {"baudrate": baud, "bytesize": bytesize, "parity": PARITY.get(parity, "N"),
                         "stopbits": stopbits}
        self.backoff = Backoff(backoff_initial, backoff_max)
        self.on_state = on_state or (lambda state, detail: None)
        self._ser: serial.Serial | None = None
        self._wlock = threading.Lock()
        self._stop = threading.Event()
        self.connected = threading.Event()
        self.stats = {"opens": 0, "open_failures": 0, "disconnects": 0, "bytes_in": 0, "bytes_out": 0}
        self.last_error = ""

    def _open(self) -> serial.Serial:
        ser = serial.serial_for_url(self.url, timeout=0.2, write_timeout=5, do_not_open=True, **self.settings)
        ser.open()
        return ser

    def run(self, on_data: Callable[[bytes], None], on_idle: Callable[[], None] | None = None) -> None:
        while not self._stop.is_set():
            try:
                ser = self._open()
            except (serial.SerialException, OSError, ValueError) as exc:
                self.stats["open_failures"] += 1
                self.last_error = str(exc)
                if self.stats["open_failures"] == 1 or self.backoff.attempt == 0:
                    self.on_state("open_failed", self.last_error)
                self._stop.wait(self.backoff.next())
                continue
            self.backoff.reset()
            self.stats["opens"] += 1
            with self._wlock:
                self._ser = ser
            self.connected.set()
            self.on_state("connected", self.url)
            try:
                while not self._stop.is_set():
                    data = ser.read(ser.in_waiting or 1)
                    if data:
                        self.stats["bytes_in"] += len(data)
                        on_data(data)
                    elif on_idle is not None:
                        on_idle()
            except (serial.SerialException, OSError, TypeError) as exc:
                # TypeError: pyserial's socket:// reader on a closed socket
                self.last_error = str(exc) or type(exc).__name__
                self.stats["disconnects"] += 1
                self.on_state("disconnected", self.last_error)
            finally:
                self.connected.clear()
                with self._wlock:
                    self._ser = None
                try:
                    ser.close()
                except (serial.SerialException, OSError):
                    pass
            if not self._stop.is_set():
                self._stop.wait(self.backoff.next())

    def write(self, data: bytes) -> None:
        with self._wlock:
            ser = self._ser
            if ser is None:
                raise TransportError(f"{self.url} is not connected ({self.last_error or 'opening'}) "
                                     f"/ 串口未连接")
            try:
                ser.write(data)
                ser.flush()
            except (serial.SerialException, OSError) as exc:
                raise TransportError(f"write to {self.url} failed: {exc} / 串口写入失败") from exc
        self.stats["bytes_out"] += len(data)

    def stop(self) -> None:
        self._stop.set()
        with self._wlock:
            ser = self._ser
        if ser is not None:
            try:
                ser.cancel_read()
            except (AttributeError, serial.SerialException, OSError):
                pass

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()


class DatagramTransport:
    """``udp://HOST:PORT``: listen for datagrams (Motorola LRRP arrives on UDP 4001); each datagram
    is fed whole to the framer. Writes go to the last peer heard from (e.g. a location request)."""

    def __init__(self, url: str, *, on_state: Callable[[str, str], None] | None = None,
                 backoff_initial: float = 0.5, backoff_max: float = 30.0, **_: Any) -> None:
        import socket

        self.url = url
        rest = url[len("udp://"):]
        host, _sep, port = rest.rpartition(":")
        try:
            # no host: loopback only; every interface must be asked for (udp://0.0.0.0:4001)
            self.addr = (host.strip("[]") or "127.0.0.1", int(port))
        except ValueError:
            raise TransportError(f"{url}: expected udp://HOST:PORT") from None
        self._socket_mod = socket
        self.backoff = Backoff(backoff_initial, backoff_max)
        self.on_state = on_state or (lambda state, detail: None)
        self._sock: socket.socket | None = None
        self._peer: tuple[str, int] | None = None
        self._stop = threading.Event()
        self.connected = threading.Event()
        self.stats = {"opens": 0, "open_failures": 0, "disconnects": 0, "bytes_in": 0, "bytes_out": 0}
        self.last_error = ""

    def run(self, on_data: Callable[[bytes], None], on_idle: Callable[[], None] | None = None) -> None:
        socket = self._socket_mod
        while not self._stop.is_set():
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(self.addr)
                sock.settimeout(0.2)
            except OSError as exc:
                self.stats["open_failures"] += 1
                self.last_error = str(exc)
                self.on_state("open_failed", self.last_error)
                self._stop.wait(self.backoff.next())
                continue
            self.backoff.reset()
            self.stats["opens"] += 1
            self._sock = sock
            self.connected.set()
            self.on_state("connected", self.url)
            try:
                while not self._stop.is_set():
                    try:
                        data, peer = sock.recvfrom(65535)
                    except socket.timeout:
                        if on_idle is not None:
                            on_idle()
                        continue
                    self._peer = peer
                    self.stats["bytes_in"] += len(data)
                    on_data(data)
            except OSError as exc:
                self.last_error = str(exc)
                self.stats["disconnects"] += 1
                self.on_state("disconnected", self.last_error)
            finally:
                self.connected.clear()
                self._sock = None
                sock.close()

    @property
    def bound_port(self) -> int:
        return self._sock.getsockname()[1] if self._sock is not None else 0

    def write(self, data: bytes) -> None:
        sock, peer = self._sock, self._peer
        if sock is None or peer is None:
            raise TransportError(f"{self.url}: no radio heard from yet, nowhere to send / 尚未收到电台数据")
        try:
            sock.sendto(data, peer)
        except OSError as exc:
            raise TransportError(f"send to {peer} failed: {exc}") from exc
        self.stats["bytes_out"] += len(data)

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()


def open_transport(url: str, **kw: Any) -> SerialTransport | DatagramTransport:
    """``udp://`` listens for datagrams; everything else is a pyserial URL or path."""
    if url.startswith("udp://"):
        return DatagramTransport(url, **kw)
    return SerialTransport(url, **kw)

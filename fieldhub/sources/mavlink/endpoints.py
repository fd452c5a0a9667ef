"""MAVLink transports: udpin, udpout, tcp, tcpin and serial endpoints sharing one base (as mavlink-router)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import serial

from fieldhub.core.backoff import Backoff
from fieldhub.core.errors import TransportError
from fieldhub.core.worker import Worker, stop_all
from fieldhub.sources.mavlink.config import EndpointSpec

#: a udpin peer not heard from for this long no longer gets our packets
PEER_TTL_S = 60.0


OnData = Callable[["Endpoint", bytes, Any], None]


class Endpoint:
    """Shared part: a reader thread handing (endpoint, bytes, peer) to ``on_data``; stats; stop."""

    def __init__(self, spec: EndpointSpec, on_data: OnData, role: str = "drone") -> None:
        self.spec = spec
        self.role = role
        self.on_data = on_data
        self.stats = {"rx_bytes": 0, "tx_bytes": 0, "rx_chunks": 0, "tx_errors": 0, "reconnects": 0,
                      "handler_errors": 0}
        self.connected = False
        self.error = ""
        #: one stop flag for the endpoint's reader and its per-client threads
        self._stop = threading.Event()
        #: reconnect delays: 0.2-0.4 s first, doubling, at most 5 s
        self._retry = Backoff(0.4, 5.0)
        self._workers: list[Worker] = []
        self._opened = False

    @property
    def name(self) -> str:
        return self.spec.text

    def start(self) -> None:
        self._open()
        self._opened = True
        self._spawn(self._run, f"mav-{self.spec.kind}")

    def _spawn(self, fn: Callable[..., None], name: str, *args: Any) -> None:
        self._workers = [w for w in self._workers if w.alive]  # ended client threads
        self._workers.append(Worker(name, lambda _own_stop, *a: fn(*a), *args).start())

    def stop(self, timeout: float = 3.0) -> bool:
        """Close the endpoint and join its threads within ``timeout`` in all; idempotent.
        False if one was still alive at the deadline."""
        self._stop.set()
        if self._opened:
            self._opened = False
            self._close()
        return stop_all(self._workers, timeout)

    def _deliver(self, data: bytes, peer: Any) -> None:
        self.stats["rx_bytes"] += len(data)
        self.stats["rx_chunks"] += 1
        try:
            self.on_data(self, data, peer)
        except Exception as exc:  # noqa: BLE001 - one bad chunk must not end the link's reader thread
            self.stats["handler_errors"] += 1
            self.error = f"handling data: {type(exc).__name__}: {exc}"

    def _write(self, write: Callable[..., object], data: bytes, *args: Any) -> bool:
        """Send through ``write(data, *args)``, counting bytes or the failure (serial errors are OSErrors)."""
        try:
            write(data, *args)
        except OSError:
            self.stats["tx_errors"] += 1
            return False
        self.stats["tx_bytes"] += len(data)
        return True

    def _backoff(self) -> None:
        """Wait before reconnecting: the one Backoff, reset by a connection that worked."""
        self._stop.wait(self._retry.next())

    def status(self) -> dict[str, Any]:
        return {"kind": self.spec.kind, "role": self.role, "connected": self.connected,
                "peers": len(self.peers()), "error": self.error, **self.stats}

    # subclasses implement these
    def _open(self) -> None: ...

    def _close(self) -> None: ...

    def _run(self) -> None: ...

    def peers(self) -> list[Any]:
        return []

    def send(self, data: bytes, peer: Any = None) -> bool:
        raise NotImplementedError


class UdpIn(Endpoint):
    """Listen on HOST:PORT; peers are learned from what arrives; replies go to them."""

    def _open(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        try:
            self.sock.bind((self.spec.host, self.spec.port))
        except OSError as exc:
            self.sock.close()
            raise TransportError(f"cannot listen on {self.spec.text}: {exc.strerror} "
                                 f"/ 无法监听 {self.spec.text}") from None
        self.sock.settimeout(0.5)
        self._peers: dict[Any, float] = {}
        self.connected = True

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def _close(self) -> None:
        self.sock.close()

    #: seconds to pause after a failed receive (UdpOut: ICMP port unreachable while the far end is down)
    _error_pause = 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                if self._error_pause:
                    self._stop.wait(self._error_pause)
                continue
            self._peers[addr] = time.monotonic()
            self._deliver(data, addr)

    def peers(self) -> list[Any]:
        cutoff = time.monotonic() - PEER_TTL_S
        return [p for p, seen in list(self._peers.items()) if seen >= cutoff]

    def send(self, data: bytes, peer: Any = None) -> bool:
        ok = True
        for p in ([peer] if peer is not None else self.peers()):
            ok = self._write(self.sock.sendto, data, p) and ok
        return ok


class UdpOut(UdpIn):
    """Send to HOST:PORT from an ephemeral port; whatever comes back is read from the same socket."""

    def _open(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.settimeout(0.5)
        try:
            self.target = (socket.gethostbyname(self.spec.host), self.spec.port)
        except OSError as exc:
            raise TransportError(f"cannot resolve {self.spec.host}: {exc}") from None
        self._peers = {}
        self.connected = True

    _error_pause = 0.2

    def peers(self) -> list[Any]:
        return [self.target]


class TcpClient(Endpoint):
    """Connect to HOST:PORT, reconnecting with backoff."""

    def _open(self) -> None:
        self.sock: socket.socket | None = None
        self._lock = threading.Lock()

    def _close(self) -> None:
        with self._lock:
            if self.sock is not None:
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self.sock.close()

    def peers(self) -> list[Any]:
        return [self.spec.text] if self.sock is not None else []

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sock = socket.create_connection((self.spec.host, self.spec.port), timeout=3)
            except OSError as exc:
                self.error = f"connect: {exc.strerror or exc}"
                self._backoff()
                continue
            sock.settimeout(0.5)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.sock = sock
            self.connected, self.error = True, ""
            self._retry.reset()
            self._read(sock)
            with self._lock:
                self.sock = None
            sock.close()
            self.connected = False
            if not self._stop.is_set():
                self.stats["reconnects"] += 1
                self._backoff()

    def _read(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:
                self.error = f"read: {exc.strerror or exc}"
                return
            if not data:
                self.error = "closed by peer"
                return
            self._deliver(data, self.spec.text)

    def send(self, data: bytes, peer: Any = None) -> bool:
        with self._lock:
            sock = self.sock
        if sock is None:
            self.stats["tx_errors"] += 1
            return False
        return self._write(sock.sendall, data)


class TcpIn(Endpoint):
    """Listen on HOST:PORT for TCP clients (ground stations, companion computers, SITL)."""

    def _open(self) -> None:
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.server.bind((self.spec.host, self.spec.port))
        except OSError as exc:
            self.server.close()
            raise TransportError(f"cannot listen on {self.spec.text}: {exc.strerror}") from None
        self.server.listen(8)
        self.server.settimeout(0.5)
        self._clients: dict[Any, socket.socket] = {}
        self._lock = threading.Lock()
        self.connected = True

    @property
    def port(self) -> int:
        return self.server.getsockname()[1]

    def _close(self) -> None:
        self.server.close()
        with self._lock:
            for c in self._clients.values():
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()

    def peers(self) -> list[Any]:
        with self._lock:
            return list(self._clients)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, addr = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(0.5)
            with self._lock:
                self._clients[addr] = conn
            self._spawn(self._client, f"mav-tcpin-{addr[1]}", conn, addr)

    def _client(self, conn: socket.socket, addr: Any) -> None:
        try:
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                self._deliver(data, addr)
        finally:
            with self._lock:
                self._clients.pop(addr, None)
            conn.close()

    def send(self, data: bytes, peer: Any = None) -> bool:
        with self._lock:
            targets = [(p, c) for p, c in self._clients.items() if peer is None or p == peer]
        ok = bool(targets)
        for _, c in targets:
            ok = self._write(c.sendall, data) and ok
        return ok


class SerialEndpoint(Endpoint):
    """A telemetry radio or autopilot on a serial port (pyserial ``serial_for_url``), reopened on loss."""

    def _open(self) -> None:
        self.port_obj: Any = None
        self._lock = threading.Lock()

    def _close(self) -> None:
        with self._lock:
            if self.port_obj is not None:
                self.port_obj.close()

    def peers(self) -> list[Any]:
        return [self.spec.host] if self.port_obj is not None else []

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                port = serial.serial_for_url(self.spec.host, baudrate=self.spec.port, timeout=0.2)
            except (serial.SerialException, OSError, ValueError) as exc:
                self.error = f"open: {exc}"
                self._backoff()
                continue
            with self._lock:
                self.port_obj = port
            self.connected, self.error = True, ""
            self._retry.reset()
            try:
                while not self._stop.is_set():
                    data = port.read(port.in_waiting or 1)
                    if data:
                        self._deliver(data, self.spec.host)
            except (serial.SerialException, OSError, TypeError) as exc:
                self.error = f"read: {exc}"
            with self._lock:
                self.port_obj = None
            port.close()
            self.connected = False
            if not self._stop.is_set():
                self.stats["reconnects"] += 1
                self._backoff()

    def send(self, data: bytes, peer: Any = None) -> bool:
        with self._lock:
            port = self.port_obj
            if port is None:
                self.stats["tx_errors"] += 1
                return False
            return self._write(port.write, data)


CLASSES: dict[str, type[Endpoint]] = {"udpin": UdpIn, "udpout": UdpOut, "tcp": TcpClient,
                                      "tcpin": TcpIn, "serial": SerialEndpoint}


def make_endpoint(text: str, on_data: OnData, role: str = "drone", key: str = "mavlink.endpoints") -> Endpoint:
    spec = EndpointSpec.parse(text, key)
    return CLASSES[spec.kind](spec, on_data, role)

"""The link emulator: a real TCP proxy with latency, bandwidth, outages; and its CLI."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time

import pytest

from fieldhub.sources.mqtt.mosquitto import free_port, wait_port
from simulators.link import LinkEmulator, LinkSpec
from tests.conftest import ROOT, fieldhub_cmd


class Echo:
    """A TCP server that answers 'ping' and counts every other byte it receives."""

    def __init__(self) -> None:
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen()
        self.port = self.srv.getsockname()[1]
        self.received = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, conn: socket.socket) -> None:
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            if data == b"ping":
                conn.sendall(b"pong")
            else:
                self.received += len(data)

    def wait_for(self, n: int, timeout: float = 20) -> float:
        start = time.monotonic()
        while self.received < n:
            assert time.monotonic() - start < timeout, f"only {self.received} of {n} bytes arrived"
            time.sleep(0.005)
        return time.monotonic() - start


@pytest.fixture
def echo():
    e = Echo()
    yield e
    e.srv.close()


def _rtt(sock: socket.socket) -> float:
    t = time.monotonic()
    sock.sendall(b"ping")
    assert sock.recv(4) == b"pong"
    return time.monotonic() - t


def _closed(sock: socket.socket) -> bool:
    """True if the peer closed or reset the connection (EOF or an error on send/receive)."""
    sock.settimeout(2)
    try:
        sock.sendall(b"ping")
        return sock.recv(4) == b""
    except OSError:
        return True


def test_latency_and_bandwidth_are_imposed(echo: Echo) -> None:
    with LinkEmulator(free_port(), ("127.0.0.1", echo.port), LinkSpec(latency=0.15, bandwidth=256_000)) as em:
        sock = socket.create_connection(em.listen)
        assert 0.29 <= _rtt(sock) < 0.6
        took = (sock.sendall(b"x" * 32_000), echo.wait_for(32_000))[1]
        # 32 kB at 256 kbit/s is 1.0 s of serialisation plus 0.15 s latency
        assert 1.05 <= took < 1.8
        assert em.status()["bytes_up"] == 32_004


def test_stall_outage_holds_bytes_until_restored(echo: Echo) -> None:
    with LinkEmulator(free_port(), ("127.0.0.1", echo.port), LinkSpec(latency=0.01, bandwidth=0)) as em:
        sock = socket.create_connection(em.listen)
        _rtt(sock)
        em.outage()
        sock.sendall(b"y" * 1000)
        time.sleep(0.5)
        assert echo.received == 0 and em.is_down
        em.restore()
        echo.wait_for(1000, timeout=2)


def test_drop_outage_resets_and_refuses_connections(echo: Echo) -> None:
    spec = LinkSpec(latency=0.01, bandwidth=0, outage_mode="drop")
    with LinkEmulator(free_port(), ("127.0.0.1", echo.port), spec) as em:
        sock = socket.create_connection(em.listen)
        _rtt(sock)
        em.outage(1.0)
        time.sleep(0.1)
        assert _closed(sock)
        new = socket.create_connection(em.listen)
        assert _closed(new)
        time.sleep(1.0)
        assert _rtt(socket.create_connection(em.listen)) < 0.2


def test_scheduled_outages_recur(echo: Echo) -> None:
    spec = LinkSpec(latency=0.01, bandwidth=0, outage_every=0.4, outage_for=0.2)
    with LinkEmulator(free_port(), ("127.0.0.1", echo.port), spec) as em:
        time.sleep(1.3)
        assert em.status()["outages"] >= 2


def test_cli_sim_link_with_control_port(echo: Echo) -> None:
    listen, control = free_port(), free_port()
    proc = subprocess.Popen(fieldhub_cmd("sim", "link", "--listen", str(listen), "--to", f"127.0.0.1:{echo.port}",
                                         "--latency", "50ms", "--bandwidth", "1mbit", "--loss", "0%",
                                         "--control", str(control)),
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        wait_port("127.0.0.1", control, proc=proc)
        sock = socket.create_connection(("127.0.0.1", listen))
        assert 0.09 <= _rtt(sock) < 0.5
        ctl = socket.create_connection(("127.0.0.1", control)).makefile("rw")
        ctl.write("down\n")
        ctl.flush()
        assert json.loads(ctl.readline())["status"]["down"] is True
        sock.sendall(b"q" * 100)
        time.sleep(0.3)
        assert echo.received == 0
        ctl.write("up\n")
        ctl.flush()
        assert json.loads(ctl.readline())["status"]["down"] is False
        echo.wait_for(100, timeout=3)
        ctl.write("bogus\n")
        ctl.flush()
        assert "unknown command" in json.loads(ctl.readline())["error"]
    finally:
        proc.terminate()
        proc.wait(10)
    assert "link emulator" in proc.stderr.read()

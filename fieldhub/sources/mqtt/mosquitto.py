"""A private Mosquitto broker process on a free loopback port (demo, tests, drills)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from fieldhub.core.errors import TransportError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise TransportError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TransportError(f"nothing listening on {host}:{port} after {timeout}s")


def stop_process(proc: subprocess.Popen, timeout: float = 10.0, *, kill: bool = False) -> None:
    """Terminate (or kill) a child process and reap it; kill it if it outlives ``timeout``."""
    if proc.poll() is not None:
        return
    if kill:
        proc.kill()
    else:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None)


class Mosquitto:
    """Runs ``mosquitto -c`` with a generated (or given) config; ``url`` is where to connect."""

    def __init__(self, workdir: Path | None = None, *, port: int | None = None,
                 extra_conf: str = "", conf_file: Path | None = None, persistence: bool = True) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise TransportError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        self.binary = binary
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="fh-mosq-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf_file = conf_file
        self.extra_conf = extra_conf
        self.persistence = persistence
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def write_conf(self) -> Path:
        conf = self.workdir / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true",
                 f"persistence {'true' if self.persistence else 'false'}",
                 f"persistence_location {self.workdir}/", "autosave_interval 1",
                 "max_queued_messages 0", "max_inflight_messages 0",
                 "log_dest file " + str(self.workdir / "mosquitto.log"), self.extra_conf]
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self) -> Mosquitto:
        conf = self.conf_file or self.write_conf()
        self.log_file = open(self.workdir / "stderr.log", "ab")
        self.proc = subprocess.Popen([self.binary, "-c", str(conf)], stdout=self.log_file,
                                     stderr=subprocess.STDOUT)
        wait_port("127.0.0.1", self.port, proc=self.proc)
        return self

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        stop_process(self.proc, 10, kill=kill)
        self.proc = None
        self.log_file.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Shared test harness: real Mosquitto on free ports, pseudo-terminals, the CLI as a subprocess."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest

from fieldhub.sources.mqtt.mosquitto import Mosquitto, free_port

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures"
SOAK_SECONDS = float(os.environ.get("FIELDHUB_SOAK_SECONDS", "20"))


@pytest.fixture
def fixtures_dir() -> Path:
    """../shared/fixtures (real captures); skips only where it is absent (a clone outside CI)."""
    if not FIXTURES.is_dir():
        pytest.skip(f"real captures not present at {FIXTURES} (only in the project's workspace and CI)")
    return FIXTURES


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real Mosquitto broker on a free loopback port, anonymous, persistence on."""
    broker = Mosquitto(tmp_path / "broker").start()
    yield broker
    broker.stop()


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator:
    """Start brokers with custom config: ``mosquitto_factory(conf_file=..., port=...)``."""
    started: list[Mosquitto] = []

    def make(**kw) -> Mosquitto:
        kw.setdefault("workdir", tmp_path / f"broker{len(started)}")
        b = Mosquitto(**kw).start()
        started.append(b)
        return b
    yield make
    for b in started:
        b.stop()


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    """A raw pseudo-terminal: (master fd for the simulated device, slave path to open with pyserial)."""
    master, slave = pty.openpty()
    tty.setraw(master)
    path = os.ttyname(slave)
    yield master, path
    for fd in (master, slave):
        try:
            os.close(fd)
        except OSError:
            pass


def fieldhub_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


def run_cli(*args: str, timeout: float = 120, check: bool = False, env: dict | None = None,
            input: str | None = None) -> subprocess.CompletedProcess:
    """Run the ``fieldhub`` command as a subprocess; returns the completed process."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.run(fieldhub_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          env=full_env, cwd=str(ROOT), input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"fieldhub {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


@pytest.fixture
def cli():
    return run_cli

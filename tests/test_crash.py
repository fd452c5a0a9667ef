"""kill -9 of a hub process during sustained appends loses nothing it acknowledged."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import orjson

from tests.conftest import ROOT

KILLS = 20


def start_appender(data_dir: Path, start: int, limit: int | None = None) -> subprocess.Popen:
    args = [sys.executable, str(ROOT / "tests" / "helpers" / "appender.py"), str(data_dir), str(start)]
    if limit is not None:
        args.append(str(limit))
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=str(ROOT))


def read_acks(proc: subprocess.Popen, until_acks: int, acked: set[int], timeout: float = 60) -> None:
    got = 0
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while got < until_acks and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("ACK"):
            _, first, last = line.split()
            acked.update(range(int(first), int(last) + 1))
            got += 1


def test_kill_9_twenty_times_loses_no_acknowledged_record(data_dir: Path) -> None:
    rng = random.Random(7)
    acked: set[int] = set()
    next_start = 0
    for round_ in range(KILLS):
        proc = start_appender(data_dir, next_start)
        read_acks(proc, rng.randint(3, 25), acked)
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: batches are in flight right now
        proc.wait()
        assert proc.stdout is not None
        for line in proc.stdout:  # acks written before the kill still count
            if line.startswith("ACK"):
                _, first, last = line.split()
                acked.update(range(int(first), int(last) + 1))
        assert acked, f"round {round_}: nothing acknowledged; stderr: {proc.stderr.read()}"  # type: ignore[union-attr]
        # like a broker redelivering what was never acked: resume after the last contiguous ack
        next_start = max(acked) + 1
        while next_start - 1 not in acked:
            next_start -= 1
    # a last clean run lets the store consumer catch up, then stops on SIGTERM
    proc = start_appender(data_dir, next_start, next_start + 200)
    read_acks(proc, 1, acked)
    store = data_dir / "store.db"
    log = data_dir / "log.db"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        lag = sqlite3.connect(log).execute(
            "SELECT count(*) FROM log l JOIN cursors c ON c.prio=l.prio AND c.consumer='store' "
            "WHERE l.seq > c.seq").fetchone()[0]
        if lag == 0:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    db = sqlite3.connect(store)
    seqs = [orjson.loads(f)["seq"] for (f,) in db.execute("SELECT fields FROM points")]
    assert len(seqs) == len(set(seqs)), "a record is in the local store twice"
    missing = acked - set(seqs)
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {sorted(missing)[:5]}"
    assert len(acked) > KILLS * 200

"""`fieldhub status --watch` (issue 15, item 1, first part): one frame fits 80x24 and names the
silent devices; the live view refreshes from the running hub and Ctrl-C is a normal exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from rich.cells import cell_len

from fieldhub.core.datadir import REGISTRY_FILE
from fieldhub.core.records import Record
from fieldhub.core.registry import Device, Registry
from fieldhub.hub import Hub, load_config
from tests.conftest import ROOT, fieldhub_cmd, run_cli
from tests.test_cli import _start_hub


def _hub_with_devices(data: Path, n: int = 30) -> None:
    """A data dir whose registry holds ``n`` village devices, every other one heard from."""
    hub = Hub(load_config(None, {"hub.data_dir": str(data)}, env={}))
    reg = Registry(data / REGISTRY_FILE)
    now = time.time_ns()
    for i in range(n):
        reg.add(Device(f"rg-{i:02d}", "rain_gauge", "420102001001"))
    reg.close()
    hub.start()
    hub.log.append([Record.make("telemetry", f"rg-{i:02d}", now, {"rain_mm": 1.0}, source="test", key=i)
                    for i in range(0, n, 2)])
    deadline = time.monotonic() + 15
    while hub.log.view().backlog("store").get("telemetry") and time.monotonic() < deadline:
        time.sleep(0.05)
    hub.stop()


def test_one_frame_fits_80_by_24_and_names_the_silent(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _hub_with_devices(data)
    proc = run_cli("status", "--watch", "--once", "--data-dir", str(data), env={"COLUMNS": "80", "LINES": "24"},
                   check=True)
    lines = proc.stdout.rstrip("\n").splitlines()
    assert 3 <= len(lines) <= 24, proc.stdout
    assert max(cell_len(line) for line in lines) <= 80, proc.stdout
    assert "devices 设备 30: 15 online" in proc.stdout
    silent = next(line for line in lines if "silent" in line)
    assert "rg-01" in silent and "rg-00" not in silent  # the odd ones never reported
    assert any(line.startswith("log 日志") for line in lines) and "NOT RUNNING" in lines[0]


def test_the_live_view_refreshes_and_ctrl_c_ends_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    hub = _start_hub(data)
    try:
        watch = subprocess.Popen(fieldhub_cmd("status", "--watch", "--json", "--interval", "0.3",
                                              "--data-dir", str(data)),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT),
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
        docs = []
        assert watch.stdout is not None
        while len(docs) < 4:
            docs.append(json.loads(watch.stdout.readline()))
        watch.send_signal(signal.SIGINT)
        assert watch.wait(10) == 0  # Ctrl-C ends a live view normally
    finally:
        hub.send_signal(signal.SIGINT)
        hub.communicate(timeout=30)
    assert all(d["running"] for d in docs)
    assert docs[-1]["uptime_s"] > docs[0]["uptime_s"]  # each frame is the hub's state now

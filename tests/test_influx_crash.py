"""The hub process ``kill -9``ed mid-stream and restarted: every record in InfluxDB 1.6 exactly once."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import orjson

from fieldhub.core.records import Record
from tests.conftest import ROOT, fieldhub_cmd, run_cli
from tests.influx_servers import InfluxDB1, influxdb1  # noqa: F401
from tests.test_influx_sink import check_v1, records

N = 30_000


def influx_count(server: InfluxDB1) -> int:
    try:
        rows = server.rows("SELECT count(seq) FROM water_level", "fieldhub")
    except RuntimeError:  # the hub has not created the database yet
        return 0
    return rows[0]["count"] if rows else 0


def cursor_seq(data_dir: Path) -> int:
    db = sqlite3.connect(f"file:{data_dir / 'log.db'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT max(seq) FROM cursors WHERE consumer='influx'").fetchone()
    finally:
        db.close()
    return row[0] or 0


def start_hub(config: Path, log_file: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = open(log_file, "ab")
    return subprocess.Popen(fieldhub_cmd("run", "--config", str(config)), stdout=out, stderr=subprocess.STDOUT,
                            env=env, cwd=str(ROOT))


def test_kill_9_mid_stream_then_restart_writes_every_record_once(influxdb1: InfluxDB1, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    config = tmp_path / "fieldhub.toml"
    config.write_text(f"""
[hub]
id = "veh-test"
data_dir = "{data_dir}"
[store]
enabled = false
[influx]
url = "{influxdb1.url}"
mode = "v1"
database = "fieldhub"
batch_size = 100
batch_time = "20ms"
retry_initial = "100ms"
retry_max = "1s"
""")
    from fieldhub.core.log import DurableLog

    # a registered device whose record carries no tags: the sink fills them from the registry
    run_cli("devices", "add", "rg-9", "--kind", "rain_gauge", "--admin-code", "420102001002",
            "--data-dir", str(data_dir), check=True)
    log = DurableLog(data_dir / "log.db", hub_id="veh-test")
    sent = records(N)
    log.append(sent)
    log.append([Record.make("rain", "rg-9", sent[0].ts, {"mm": 0.5}, source="test")])
    log.close()

    hub = start_hub(config, tmp_path / "hub.log")
    try:
        deadline = time.monotonic() + 60
        while influx_count(influxdb1) < N // 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        hub.send_signal(signal.SIGKILL)  # no clean shutdown: batches in flight, cursor behind
        hub.wait(10)
    finally:
        if hub.poll() is None:
            hub.kill()
    at_kill = influx_count(influxdb1)
    committed = cursor_seq(data_dir)
    assert 0 < committed < N and at_kill < N + 1, (committed, at_kill)
    assert at_kill >= committed  # the cursor never runs ahead of what the server holds

    hub = start_hub(config, tmp_path / "hub.log")
    try:
        deadline = time.monotonic() + 120
        status: dict = {}
        while time.monotonic() < deadline:
            proc = run_cli("status", "--json", "--config", str(config))
            if proc.returncode == 0:
                status = orjson.loads(proc.stdout)
                influx = status.get("components", {}).get("influx")
                if influx and influx["backlog"] == 0 and influx["written"] > 0:
                    break
            time.sleep(0.3)
        influx = status["components"]["influx"]
        assert influx["backlog"] == 0 and influx["state"] == "ok" and influx["last_success"] != "-"
        assert influx["detail"]["encoder"] == "c"  # the real hub writes through the C encoder
        # what the new process wrote covers everything past the cursor at the kill
        assert influx["written"] == N + 1 - committed
        hub.send_signal(signal.SIGTERM)
        assert hub.wait(30) == 0
    finally:
        if hub.poll() is None:
            hub.kill()
    check_v1(influxdb1, sent)
    assert cursor_seq(data_dir) == N + 1
    rain = influxdb1.rows('SELECT "mm", "kind", "level", "county", "admin_code", "hub" FROM rain', "fieldhub")
    assert len(rain) == 1 and rain[0]["mm"] == 0.5
    assert (rain[0]["kind"], rain[0]["level"], rain[0]["county"], rain[0]["admin_code"], rain[0]["hub"]) == \
        ("rain_gauge", "village", "420102", "420102001002", "veh-test")

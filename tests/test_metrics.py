"""The Prometheus endpoint (issue 15, item 7): scraped over real HTTP from a running hub and read
with prometheus-client's own parser; off unless configured; a taken port is one clear line."""

from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fieldhub.core.errors import ConfigError
from fieldhub.core.records import Record
from fieldhub.hub import Hub, load_config
from fieldhub.sources.mqtt.mosquitto import free_port
from tests.conftest import run_cli


def _scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def _value(metrics: dict, name: str, **labels: str) -> float:
    return next(v for lab, v in metrics[name] if all(lab.get(k) == x for k, x in labels.items()))


def test_a_running_hub_is_scraped_and_the_figures_follow_its_state(tmp_path: Path) -> None:
    port = free_port()
    cfg = load_config(None, {"hub.data_dir": str(tmp_path / "data"), "hub.id": "veh-9",
                             "metrics.listen": f"127.0.0.1:{port}",
                             "serial.ports": [{"device_id": "radio-1", "driver": "dmr", "url": "udp://127.0.0.1:0"}],
                             "influx.url": f"http://127.0.0.1:{free_port()}", "influx.mode": "v1"}, env={})
    hub = Hub(cfg)
    hub.start()
    try:
        m = _scrape(port)
        assert _value(m, "fieldhub_info", hub_id="veh-9") == 1
        assert _value(m, "fieldhub_component_state", component="store", state="ok") == 1
        assert _value(m, "fieldhub_component_state", component="store", state="down") == 0
        assert _value(m, "fieldhub_component_value", component="serial", key="ports") == 1
        # records appended reach the backlog of the consumer that cannot deliver (InfluxDB is down)
        hub.log.append([Record.make("telemetry", "rg-1", time.time_ns(), {"v": i}, source="test", key=i)
                        for i in range(25)])
        deadline = time.monotonic() + 20
        while True:
            m = _scrape(port)
            stuck = _value(m, "fieldhub_log_backlog_records", consumer="influx", **{"class": "telemetry"})
            stored = _value(m, "fieldhub_store_records")
            failing = _value(m, "fieldhub_component_state", component="influx", state="retrying")
            if (stuck >= 25 and stored >= 25 and failing == 1) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert stuck >= 25 and stored >= 25  # the 25 (and the radio port's own presence record)
        assert stuck == hub.log.view().backlog("influx")["telemetry"]  # the log's own figure
        assert _value(m, "fieldhub_log_backlog_records", consumer="store", **{"class": "telemetry"}) == 0
        assert _value(m, "fieldhub_log_operations_total", op="appended") >= 25
        assert failing == 1  # the sink that cannot write says so
        assert sum(v for lab, v in m["fieldhub_component_state"] if lab["component"] == "influx") == 1
        assert _value(m, "fieldhub_component_value", component="metrics", key="scrapes") >= 1
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)
    finally:
        hub.stop()
    with pytest.raises(OSError):  # the endpoint went away with the hub
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_off_by_default(tmp_path: Path) -> None:
    hub = Hub(load_config(None, {"hub.data_dir": str(tmp_path / "data")}, env={}))
    try:
        assert "metrics" not in [c.name for c in hub.components]
    finally:
        hub.stop()


def test_a_bad_address_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        load_config(None, {"hub.data_dir": str(tmp_path), "metrics.listen": "9108"}, env={})


def test_a_taken_port_stops_the_hub_with_one_line(tmp_path: Path) -> None:
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    try:
        proc = run_cli("run", "--data-dir", str(tmp_path / "data"), "--set",
                       f"metrics.listen=127.0.0.1:{held.getsockname()[1]}", timeout=60)
    finally:
        held.close()
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "metrics could not start" in proc.stderr and "无法监听指标端口" in proc.stderr

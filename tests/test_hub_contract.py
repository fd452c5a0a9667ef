"""The component contract on a real hub: one component list, light config, commands on the
control socket, one status shape, bounded stops, and a start that fails safely."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fieldhub.core import control
from fieldhub.core.component import check_status, load_object
from fieldhub.core.datadir import LOCK_FILE, OPLOG_FILE, take_lock
from fieldhub.core.errors import ConfigError
from fieldhub.hub import COMPONENTS, SECTIONS, Hub, StartError, load_config
from fieldhub.sources.mqtt.mosquitto import free_port
from tests.conftest import ROOT, run_cli

HEAVY = ("paho", "influxdb_client", "pymavlink", "serial", "prometheus_client")


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def oplog_events(data_dir: Path) -> list[dict[str, Any]]:
    path = data_dir / OPLOG_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def hubs() -> Iterator[list[Hub]]:
    made: list[Hub] = []
    yield made
    for h in made:
        h.stop()


# ----------------------------------------------------------------------------- the component list
def test_every_section_and_builder_comes_from_the_component_list() -> None:
    assert list(SECTIONS) == [s.section for s in COMPONENTS if s.section]
    for spec in COMPONENTS:
        assert callable(load_object(spec.builder)), spec.builder
        assert isinstance(load_object(spec.config), type), spec.config


def test_loading_the_config_imports_no_heavy_client(tmp_path: Path) -> None:
    """Every section present and set; still no paho, influxdb_client, pymavlink or pyserial."""
    cfg = tmp_path / "all.toml"
    cfg.write_text(f"""
[hub]
id = "light-1"
data_dir = "{tmp_path / 'data'}"
[log]
commit_max = 100
[store]
enabled = true
[mqtt]
broker = "mqtt://127.0.0.1:1883"
[serial]
ports = [{{device_id = "gnss-1", driver = "nmea", url = "/dev/ttyUSB0"}}]
[mavlink]
endpoints = ["udpin:0.0.0.0:14550", "serial:/dev/ttyUSB1:57600"]
[influx]
url = "http://127.0.0.1:8086"
[uplink]
enabled = false
[metrics]
listen = "127.0.0.1:9108"
""")
    assert {"hub", "log"} | set(SECTIONS) == {"hub", "log", "store", "mqtt", "serial", "mavlink", "influx", "uplink",
                                                "sl651", "metrics"}
    code = ("import sys, json\n"
            "from fieldhub.hub import load_config, sample_config\n"
            f"cfg = load_config({str(cfg)!r}, env={{}})\n"
            "sample_config()\n"
            "assert cfg.mavlink.endpoints[0] == 'udpin:0.0.0.0:14550' and cfg.serial.ports[0].driver == 'nmea'\n"
            f"print(json.dumps([m for m in sys.modules if m.split('.')[0] in {HEAVY!r}]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_mavlink_default_rates_match_the_driver() -> None:
    """The config keeps a copy of the driver's rates so that it loads without pymavlink."""
    from drivers.mavlink import DEFAULT_RATES as DRIVER_RATES
    from fieldhub.sources.mavlink.config import DEFAULT_RATES, MavlinkConfig

    assert DEFAULT_RATES == DRIVER_RATES
    assert MavlinkConfig().rates == DRIVER_RATES


def test_the_core_config_alone_knows_only_its_sections(tmp_path: Path) -> None:
    from fieldhub.core import config

    f = tmp_path / "c.toml"
    f.write_text("[mqtt]\nbroker = \"mqtt://127.0.0.1:1\"\n")
    with pytest.raises(ConfigError, match=r"unknown section \[mqtt\]"):
        config.load(f, env={})
    assert load_config(f, env={}).mqtt.broker == "mqtt://127.0.0.1:1"
    assert "[mqtt]" not in config.sample_config() and "[hub]" in config.sample_config()


# ----------------------------------------------------------------------------- commands, status
class Probe:
    """A component added with ``extra``: records how it was stopped; may hang in stop()."""

    def __init__(self, name: str, hang: float = 0.0, prefix: str = "") -> None:
        self.name = name
        if prefix:
            self.command_prefix = prefix
        self.hang = hang
        self.stopped_with: list[float] = []
        self.running = False

    def start(self) -> None:
        self.running = True

    def stop(self, timeout: float = 5.0) -> None:
        self.stopped_with.append(timeout)
        if self.running and self.hang:
            time.sleep(min(self.hang, timeout))
        self.running = False

    def status(self) -> dict[str, Any]:
        return {"state": "ok" if self.running else "off", "detail": {}}

    def commands(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        return {"echo": lambda args: {"from": self.name, **args}}


def test_components_commands_are_registered_under_their_prefix(tmp_path: Path, hubs: list[Hub]) -> None:
    data = tmp_path / "data"
    cfg = load_config(None, {"hub.data_dir": str(data), "store.enabled": False,
                             "mavlink.endpoints": [f"udpin:127.0.0.1:{free_udp_port()}"],
        "influx.url": f"http://127.0.0.1:{free_port()}", "influx.mode": "v1",
        "uplink.enabled": True,
        "uplink.links": [{"name": "geo", "kind": "mqtt", "url": f"mqtt://127.0.0.1:{free_port()}"}]}, env={})
    hub = Hub(cfg, extra=(lambda ctx: Probe("probe"), lambda ctx: Probe("second", prefix="alias")))
    hubs.append(hub)
    hub.start()
    names = set(hub.control.handlers)
    assert {"ping", "status", "drone.command", "drone.list", "probe.echo", "alias.echo"} <= names
    assert not any(n.startswith("drones.") or n.startswith("second.") for n in names)
    assert control.call(data, "drone.list") == []
    assert control.call(data, "alias.echo", {"x": 1}) == {"from": "second", "x": 1}


def test_every_running_component_reports_the_common_status_shape(tmp_path: Path, hubs: list[Hub]) -> None:
    """mqtt (its broker not up: retrying), serial (a UDP port), drones (a udpin endpoint), the
    store, InfluxDB (nothing listening: retrying) and the uplink (its center broker down)."""
    data = tmp_path / "data"
    cfg = load_config(None, {
        "hub.data_dir": str(data),
        "mqtt.broker": f"mqtt://127.0.0.1:{free_port()}",
        "serial.ports": [{"device_id": "radio-1", "driver": "dmr", "url": "udp://127.0.0.1:0"}],
        "mavlink.endpoints": [f"udpin:127.0.0.1:{free_udp_port()}"],
        "influx.url": f"http://127.0.0.1:{free_port()}", "influx.mode": "v1",
        "uplink.enabled": True,
        "uplink.links": [{"name": "geo", "kind": "mqtt", "url": f"mqtt://127.0.0.1:{free_port()}"}]}, env={})
    hub = Hub(cfg)
    hubs.append(hub)
    hub.start()
    components = hub.live_status()["components"]
    assert set(components) == {"store", "mqtt", "serial", "drones", "influx", "uplink"}
    for name, status in components.items():
        assert check_status(name, status) == [], status
    mqtt, serial, drones = components["mqtt"], components["serial"], components["drones"]
    assert mqtt["state"] == "retrying" and mqtt["connected"] is False
    assert mqtt["detail"]["presence"] == {"online": 0, "offline": 0}
    assert "online" in mqtt and "offline" in mqtt and "received" in mqtt  # the scalars stay on top
    assert serial["state"] == "ok" and serial["ports"] == 1 and "radio-1" in serial["detail"]
    assert drones["state"] == "ok" and "endpoints" in drones["detail"] and "messages" in drones
    # the control command keeps returning the ports map, as the CLI reads it
    assert set(control.call(data, "serial.status")) == {"radio-1"}
    hub.stop()
    assert hub.components[1].status()["state"] == "off"  # a stopped source says so


def test_stop_shares_one_budget_and_a_hanging_part_does_not_strand_the_rest(tmp_path: Path) -> None:
    cfg = load_config(None, {"hub.data_dir": str(tmp_path / "data"), "store.enabled": False}, env={})
    first, hang, last = Probe("first"), Probe("hang", hang=60), Probe("last")
    hub = Hub(cfg, extra=(lambda ctx: first, lambda ctx: hang, lambda ctx: last))
    hub.start()
    t0 = time.monotonic()
    hub.stop(timeout=3.0)
    took = time.monotonic() - t0
    assert took < 5.0, took  # the hanging part got its share, not 60 s
    assert last.stopped_with and hang.stopped_with and first.stopped_with  # reverse order, all of them
    assert last.stopped_with[0] <= 3.0 / 3 + 0.1  # a third of the budget each, at first
    assert first.stopped_with[0] < 3.0
    hub.stop()  # idempotent
    assert len(first.stopped_with) == 1
    os.close(take_lock(tmp_path / "data"))  # released


def test_source_stops_are_idempotent_and_bounded(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cfg = load_config(None, {
        "hub.data_dir": str(data), "store.enabled": False,
        "mqtt.broker": f"mqtt://127.0.0.1:{free_port()}",
        "serial.ports": [{"device_id": "radio-1", "driver": "dmr", "url": "udp://127.0.0.1:0"}],
        "mavlink.endpoints": [f"udpin:127.0.0.1:{free_udp_port()}", "tcpin:127.0.0.1:0"]}, env={})
    before = {t.ident for t in threading.enumerate()}
    hub = Hub(cfg)
    hub.start()
    for comp in hub.components:
        t0 = time.monotonic()
        comp.stop(2.0)
        comp.stop(2.0)
        assert time.monotonic() - t0 < 3.0, comp.name
    hub.stop()
    wait_for(lambda: {t.ident for t in threading.enumerate() if t.is_alive()} - before == set(), 5,
             "every thread of the sources and the control socket gone")


# ----------------------------------------------------------------------------- failing starts
def test_a_part_that_cannot_start_stops_the_started_ones_and_frees_the_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # no SO_REUSEADDR: the hub cannot share it
    held.bind(("127.0.0.1", 0))
    try:
        cfg = load_config(None, {"hub.data_dir": str(data),
                                 "mavlink.endpoints": [f"udpin:127.0.0.1:{held.getsockname()[1]}"]}, env={})
        before = {t.ident for t in threading.enumerate()}
        hub = Hub(cfg)
        assert [c.name for c in hub.components] == ["store", "drones"]
        with pytest.raises(StartError) as err:
            hub.start()
    finally:
        held.close()
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("drones could not start: cannot listen on udpin:") and "启动失败" in msg
    # the store's thread, the control socket's and the endpoint's are all gone
    wait_for(lambda: {t.ident for t in threading.enumerate() if t.is_alive()} - before == set(), 5,
             "threads of the started parts gone")
    assert not (data / "hub.sock").exists()
    os.close(take_lock(data))  # the same process can take the lock: the hub's fd is closed
    events = [e["event"] for e in oplog_events(data)]
    assert events[-2:] == ["hub_start_failed", "hub_stopped"]
    failed = next(e for e in oplog_events(data) if e["event"] == "hub_start_failed")
    assert failed["component"] == "drones" and failed["stopped"] == ["store"]
    hub.stop()  # harmless afterwards


def test_a_part_that_cannot_be_built_frees_the_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cfg = load_config(None, {"hub.data_dir": str(data), "mavlink.endpoints": ["udpin:127.0.0.1:0"],
                             "mavlink.keystore": str(tmp_path / "missing.toml")}, env={})
    with pytest.raises(ConfigError, match="keystore file not found"):
        Hub(cfg)
    os.close(take_lock(data))


def test_fieldhub_run_with_a_part_that_cannot_start_exits_with_one_clear_line(tmp_path: Path) -> None:
    """`fieldhub run` where the SECOND component (MAVLink, after the store) cannot start."""
    data = tmp_path / "data"
    held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    held.bind(("127.0.0.1", 0))
    try:
        proc = run_cli("run", "--data-dir", str(data), "--set",
                       f'mavlink.endpoints=udpin:127.0.0.1:{held.getsockname()[1]}', timeout=60)
        # right after the exit: the lock is free (a second hub could start)
        os.close(take_lock(data))
    finally:
        held.close()
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("fieldhub: error:")]
    assert len(errors) == 1, proc.stderr
    assert "drones could not start" in errors[0] and "启动失败" in errors[0]
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") <= 2, proc.stderr
    events = oplog_events(data)
    failed = next(e for e in events if e["event"] == "hub_start_failed")
    assert failed["component"] == "drones" and failed["stopped"] == ["store"]
    assert events[-1]["event"] == "hub_stopped"
    assert (data / LOCK_FILE).exists() and not (data / "hub.sock").exists()

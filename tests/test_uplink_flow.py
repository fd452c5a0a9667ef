"""Hub -> emulated GEO link -> real Mosquitto -> center workers: exactly once, alarms first, failover."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fieldhub.center.worker import HubRegistry
from fieldhub.core import control
from fieldhub.core.log import DurableLog
from fieldhub.sinks.store import LocalStore
from fieldhub.sources.mqtt.mosquitto import free_port, stop_process
from fieldhub.uplink.codec import decode_batch
from fieldhub.uplink.config import LinkConfig, UplinkConfig
from fieldhub.uplink.sender import Uplink
from simulators.link import LinkEmulator, LinkSpec
from tests import uplink_hubproc as hubproc
from tests.conftest import ROOT, SOAK_SECONDS, fieldhub_cmd
from tests.influx_servers import influxdb1  # noqa: F401 - fixture

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def center_worker(broker: str, data_dir: Path, name: str, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen(fieldhub_cmd("center", "run", "--broker", broker, "--data-dir", str(data_dir),
                                         "--worker", name, *extra),
                            cwd=ROOT, env=ENV, stderr=subprocess.PIPE, text=True)
    assert "center worker" in proc.stderr.readline()
    return proc


def stop(proc: subprocess.Popen) -> None:
    stop_process(proc, 15)


def center_ids(center_dir: Path) -> list[str]:
    path = center_dir / "store.db"
    if not path.exists():
        return []
    store = LocalStore(path, readonly=True)
    try:
        return [r.id for r in store.query()]
    finally:
        store.close()


def wait_until(cond, timeout: float, what: str, every: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


class Observer:
    """A plain (non-shared) subscriber that decodes every batch, in broker order."""

    def __init__(self, broker_port: int) -> None:
        self.batches: list[list] = []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="observer")
        self.c.on_message = lambda c, u, m: self.batches.append(decode_batch(m.payload).records)
        self.c.connect("127.0.0.1", broker_port)
        self.c.subscribe("fh/hub/+/uplink", qos=1)
        self.c.loop_start()

    def first_seen(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for i, recs in enumerate(self.batches):
            for r in recs:
                out.setdefault(r.id, i)
        return out

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def hub_config(tmp: Path, data_dir: Path, link_port: int, **uplink: object) -> Path:
    cfg = tmp / "hub.toml"
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in uplink.items())
    cfg.write_text(f"""
[hub]
id = "vehicle-07"
data_dir = "{data_dir}"
[log]
compact_interval = "1s"
[uplink]
enabled = true
probe_interval = "500ms"
ack_timeout = "6s"
batch_time = "300ms"
batch_records = 1000
window = 2
{extra}
[[uplink.links]]
name = "geo"
kind = "mqtt"
url = "mqtt://127.0.0.1:{link_port}"
bandwidth = "512kbit"
latency = "300ms"
""")
    return cfg


def start_hub(cfg: Path, total: int, rate: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "tests.uplink_hubproc", str(cfg), str(total), str(rate)],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.soak
def test_geo_link_outages_and_hub_kills_lose_nothing_and_alarms_go_first(tmp_path: Path, mosquitto, cli) -> None:
    total = max(20_000, min(100_000, int(SOAK_SECONDS * 1500)))
    rate = 2500.0
    center_dir, hub_dir = tmp_path / "center", tmp_path / "hub"
    em = LinkEmulator(free_port(), ("127.0.0.1", mosquitto.port), LinkSpec(latency=0.3, bandwidth=512_000)).start()
    observer = Observer(mosquitto.port)
    workers = [center_worker(mosquitto.url, center_dir, f"w{i}") for i in (1, 2)]
    cfg = hub_config(tmp_path, hub_dir, em.listen[1])
    hub = start_hub(cfg, total, rate)
    try:
        wait_until(lambda: len(center_ids(center_dir)) > 1000, 30, "first records at the center")
        status = json.loads(cli("uplink", "status", "--json", "--config", str(cfg), check=True).stdout)
        assert status["links"][0]["name"] == "geo" and status["links"][0]["state"] == "up"
        assert status["routes"]["alarm"] == "geo" and "telemetry" in status["backlog"]
        text = cli("uplink", "status", "--config", str(cfg), check=True).stdout
        assert "geo" in text and "telemetry" in text
        # outage 1 (rain fade: the link stalls); alarms raised in the middle of it
        em.outage(6)
        before = control.call(hub_dir, "test.alarm", {"ids": []})["progress"]
        time.sleep(2)
        control.call(hub_dir, "test.alarm", {"ids": [1, 2, 3]})
        time.sleep(2.5)
        during = control.call(hub_dir, "test.alarm", {"ids": [4]})["progress"]
        wait_until(lambda: not em.is_down, 10, "outage end", 0.1)
        # kill -9 the hub while it drains, restart it
        time.sleep(1.5)
        hub.send_signal(signal.SIGKILL)
        hub.wait()
        hub = start_hub(cfg, total, rate)
        # outage 2 (carrier lost: connections reset), then a second kill -9 during the backlog
        time.sleep(2)
        em.spec.outage_mode = "drop"
        em.outage(4)
        time.sleep(5)
        hub.send_signal(signal.SIGKILL)
        hub.wait()
        hub = start_hub(cfg, total, rate)
        expected = {hubproc.record(i).id for i in range(total)} | {hubproc.alarm(n).id for n in (1, 2, 3, 4)}
        wait_until(lambda: len(center_ids(center_dir)) >= len(expected), 240, "every record at the center")
        ids = center_ids(center_dir)
        assert len(ids) == len(set(ids)) == len(expected)
        assert set(ids) == expected
        # alarms raised during the outage overtook the telemetry backlog of that outage:
        # at most `window` batches of it got ahead (sent before the link was seen down)
        seen = observer.first_seen()
        backlog = [hubproc.record(i).id for i in range(before, during)]
        backlog_batches = sorted({seen[r] for r in backlog})
        alarm_batch = max(seen[hubproc.alarm(n).id] for n in (1, 2, 3, 4))
        print(f"outage backlog {len(backlog)} records in batches {backlog_batches[:3]}..{backlog_batches[-1]}, alarms in {alarm_batch}; center {reg_preview(center_dir)}")
        assert len(backlog_batches) >= 3, "the outage backlog should span several batches"
        assert sum(1 for b in backlog_batches if b < alarm_batch) <= 2
        reg = HubRegistry(center_dir / "center.db", readonly=True).hubs()
        assert reg[0]["hub_id"] == "vehicle-07" and reg[0]["last_link"] == "geo"
        assert reg[0]["records"] == len(expected)
        hubs = json.loads(cli("center", "hubs", "--data-dir", str(center_dir), "--json", check=True).stdout)
        assert hubs[0]["hub_id"] == "vehicle-07"
        out = cli("query", "alarm", "--data-dir", str(center_dir), "--json", check=True).stdout
        assert len(out.splitlines()) == 4
    finally:
        stop(hub)
        for w in workers:
            stop(w)
        observer.close()
        em.stop()


def test_center_worker_killed_the_other_carries_on(tmp_path: Path, mosquitto) -> None:
    center_dir = tmp_path / "center"
    w1, w2 = (center_worker(mosquitto.url, center_dir, name) for name in ("w1", "w2"))
    log = DurableLog(tmp_path / "hub" / "log.db")
    recs = [hubproc.record(i) for i in range(30_000)]
    cfg = UplinkConfig(enabled=True, batch_records=500, window=4, ack_timeout=3, probe_interval=0.5,
                       links=[LinkConfig(name="ground", url=mosquitto.url, bandwidth="2mbit", latency=0.01)])
    up = Uplink(log, cfg, "vehicle-09")
    try:
        junk = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="junk")
        junk.connect("127.0.0.1", mosquitto.port)
        junk.loop_start()
        junk.publish("fh/hub/vehicle-09/uplink", b"not a batch", qos=1).wait_for_publish(5)
        junk.loop_stop()
        junk.disconnect()
        log.append(recs[:10_000])
        up.start()
        wait_until(lambda: len(center_ids(center_dir)) >= 3000, 30, "the first batches", 0.1)
        w1.send_signal(signal.SIGKILL)
        w1.wait()
        log.append(recs[10_000:])
        wait_until(lambda: len(center_ids(center_dir)) >= len(recs), 90, "every record after the kill")
        assert set(center_ids(center_dir)) == {r.id for r in recs}
        wait_until(lambda: up.status()["backlog_total"] == 0, 20, "the uplink cursor to reach the end")
        registry = HubRegistry(center_dir / "center.db", readonly=True)
        assert registry.hubs()[0]["last_worker"] == "w2"
        assert registry.rejected_count() == 1  # the junk payload: kept with its reason, not fatal
    finally:
        up.stop()
        log.close()
        stop(w1)
        stop(w2)


def reg_preview(center_dir: Path) -> dict:
    h = HubRegistry(center_dir / "center.db", readonly=True).hubs()[0]
    return {k: h[k] for k in ("records", "duplicates", "batches")}


def test_center_writes_influxdb_before_it_acks(tmp_path: Path, mosquitto, influxdb1) -> None:
    center_dir = tmp_path / "center"
    worker = center_worker(mosquitto.url, center_dir, "w1", "--influx", influxdb1.url, "--influx-db", "center")
    log = DurableLog(tmp_path / "hub" / "log.db")
    recs = [hubproc.record(i) for i in range(2000)]
    up = Uplink(log, UplinkConfig(enabled=True, probe_interval=0.5, links=[
        LinkConfig(name="ground", url=mosquitto.url, bandwidth="2mbit", latency=0.01)]), "vehicle-12")
    try:
        log.append(recs)
        up.start()
        wait_until(lambda: up.status()["backlog_total"] == 0, 30, "every batch acknowledged", 0.2)
        rows = influxdb1.rows('SELECT count("seq") FROM "hydro"', "center")
        assert rows[0]["count"] == len(recs)
        assert influxdb1.rows('SELECT * FROM "hydro" WHERE "hub" = \'vehicle-12\' LIMIT 1', "center")
        assert len(center_ids(center_dir)) == len(recs)  # and the embedded store, the dedupe ledger
    finally:
        up.stop()
        log.close()
        stop(worker)


def test_window_counts_link_time_not_batches(tmp_path: Path, mosquitto) -> None:
    """Short batches (cut by batch_records) fill the window by bytes, so more of them fly at
    once than `window` — the link stays busy — but never more than 4 x window; with no center
    acking, nothing more is sent."""
    log = DurableLog(tmp_path / "hub" / "log.db")
    log.append([hubproc.record(i) for i in range(5000)])
    cfg = UplinkConfig(enabled=True, batch_records=50, window=2, ack_timeout=60, probe_interval=0.5,
                       links=[LinkConfig(name="ground", url=mosquitto.url, bandwidth="2mbit", latency=0.01)])
    up = Uplink(log, cfg, "vehicle-13")
    try:
        up.start()
        wait_until(lambda: up._in_flight("ground") >= 8, 20,
                   "short batches to fill the window by bytes", 0.1)
        time.sleep(1.0)
        assert up._in_flight("ground") == 8  # 4 x window, far below the byte budget
        assert up.stats["records_sent"] == 8 * 50
    finally:
        up.stop()
        log.close()

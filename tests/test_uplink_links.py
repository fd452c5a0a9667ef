"""Link manager: failover and failback between IP links; Beidou-only alarms as short messages."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fieldhub.center.worker import HubRegistry
from fieldhub.core.log import DurableLog
from fieldhub.sinks.store import LocalStore
from fieldhub.sources.mqtt.mosquitto import free_port
from fieldhub.uplink.config import LinkConfig, UplinkConfig
from fieldhub.uplink.sender import Uplink
from simulators.link import LinkEmulator, LinkSpec
from simulators.rdss_net import RdssNetwork
from simulators.uplink_load import alarm
from tests import uplink_hubproc as hubproc
from tests.test_uplink_flow import center_ids, center_worker, stop, wait_until

KEY = "5a" * 32


def test_failover_to_4g_and_back_to_geo(tmp_path: Path, mosquitto) -> None:
    center_dir = tmp_path / "center"
    worker = center_worker(mosquitto.url, center_dir, "w1")
    geo = LinkEmulator(free_port(), ("127.0.0.1", mosquitto.port), LinkSpec(latency=0.3, bandwidth=512_000)).start()
    lte = LinkEmulator(free_port(), ("127.0.0.1", mosquitto.port), LinkSpec(latency=0.05, bandwidth=2_000_000)).start()
    cfg = UplinkConfig(enabled=True, probe_interval=0.3, ack_timeout=5, batch_time=0.3, batch_records=500,
                       links=[LinkConfig(name="geo", url=f"mqtt://127.0.0.1:{geo.listen[1]}", cost=1, latency=0.3),
                              LinkConfig(name="4g", kind="4g", url=f"mqtt://127.0.0.1:{lte.listen[1]}", cost=5,
                                         latency=0.05, bandwidth="2mbit")])
    log = DurableLog(tmp_path / "hub" / "log.db")
    up = Uplink(log, cfg, "vehicle-03")
    try:
        up.start()
        wait_until(lambda: up.report()["routes"]["telemetry"] == "geo", 15, "geo to come up", 0.1)
        log.append([hubproc.record(i) for i in range(2000)])
        wait_until(lambda: len(center_ids(center_dir)) == 2000, 30, "records over geo", 0.2)
        assert geo.stats.bytes_up > 2000
        lte_before = lte.stats.bytes_up
        geo.outage()  # a stall: only probes can tell
        t0 = time.monotonic()
        wait_until(lambda: up.report()["routes"]["telemetry"] == "4g", 15, "failover to 4g", 0.1)
        failover_s = time.monotonic() - t0
        log.append([hubproc.record(i) for i in range(2000, 4000)])
        wait_until(lambda: len(center_ids(center_dir)) == 4000, 30, "records over 4g", 0.2)
        assert lte.stats.bytes_up - lte_before > 2000  # the batches really went over the 4G emulator
        geo_link = next(l for l in up.report()["links"] if l["name"] == "geo")
        assert geo_link["state"] != "up" and geo_link["loss"] > 0
        geo.restore()
        wait_until(lambda: up.report()["routes"]["telemetry"] == "geo", 15, "failback to geo", 0.1)
        geo_before = geo.stats.bytes_up
        log.append([hubproc.record(i) for i in range(4000, 5000)])
        wait_until(lambda: len(center_ids(center_dir)) == 5000, 30, "records after failback", 0.2)
        assert geo.stats.bytes_up - geo_before > 1000
        assert failover_s < 10
        switches = [e for e in up.oplog.recent if e["event"] == "uplink_link_switch"]
        assert any(e["link"] == "4g" for e in switches) and switches[-1]["link"] == "geo"
    finally:
        up.stop()
        log.close()
        stop(worker)
        geo.stop()
        lte.stop()


def test_beidou_only_alarm_arrives_as_a_short_message_within_one_card_interval(tmp_path: Path, mosquitto) -> None:
    interval = 4
    net = RdssNetwork(delay=0.3)
    hub_port = net.add("0100001", interval=interval)
    center_port = net.add("0200002", interval=interval)
    net.start()
    center_dir = tmp_path / "center"
    worker = center_worker(mosquitto.url, center_dir, "w1", "--beidou", center_port, "--mac-key", KEY)
    cfg = UplinkConfig(enabled=True, mac_key=KEY, links=[
        LinkConfig(name="bd", kind="beidou", url=hub_port, dest_card="0200002", card_interval=interval,
                   classes=["alarm", "position"], cost=100, bandwidth="100bit")])
    log = DurableLog(tmp_path / "hub" / "log.db")
    up = Uplink(log, cfg, "vehicle-05")
    try:
        up.start()
        wait_until(lambda: up.report()["links"][0]["state"] == "up", 15, "the Beidou card", 0.1)
        log.append([hubproc.record(i) for i in range(50)])  # telemetry: not allowed on Beidou, held
        first = alarm("geo-monitor-3", time.time_ns(), 1)
        t0 = time.monotonic()
        log.append([first])
        wait_until(lambda: first.id in center_ids(center_dir), interval, "the alarm at the center", 0.05)
        took = time.monotonic() - t0
        second = alarm("geo-monitor-3", time.time_ns(), 2)
        log.append([second])
        wait_until(lambda: second.id in center_ids(center_dir), 2 * interval + 2, "the second alarm", 0.1)
        store = LocalStore(center_dir / "store.db", readonly=True)
        got = {r.id: r for r in store.query("alarm")}
        assert got[first.id].tags["via"] == "beidou" and got[first.id].fields["code"] == 301
        assert abs(got[first.id].fields["lat"] - 30.5928) < 1e-6
        assert len(center_ids(center_dir)) == 2  # no telemetry went over Beidou
        assert net.terminals["0100001"].refused == 0  # the hub kept to the card interval
        assert took < interval
        status = up.report()
        assert status["routes"]["telemetry"] is None and status["backlog"]["telemetry"] == 50
        assert status["stats"]["short_messages"] == 2
        reg = HubRegistry(center_dir / "center.db", readonly=True).hubs()
        assert reg[0]["short_messages"] == 2 and reg[0]["last_link"] == "beidou:0100001"
    finally:
        up.stop()
        log.close()
        stop(worker)
        net.stop()


@pytest.mark.parametrize("profile", ["rdss-bd2-level3", "rdss-bd3"])
def test_beidou_bearer_drives_the_rdss_module_simulator(profile: str) -> None:
    """The bearer against the serial feature's RDSS module simulator (BD-2 and BD-3 feedback)."""
    from fieldhub.core.errors import TransportError
    from fieldhub.uplink.bearers.beidou import BeidouBearer
    from simulators.rdss import RdssSim

    sim = RdssSim(card="0242286", interval=30, profile=profile)
    sim.start()
    lines: list[list[str]] = []
    bearer = BeidouBearer(LinkConfig(name="bd", kind="beidou", url=sim.path, dest_card="0242286",
                                     card_interval=30), "vehicle-01", on_line=lines.append)
    try:
        bearer.start()
        wait_until(bearer.up, 10, "the card info", 0.05)
        assert bearer.card["card"] == "0242286" and bearer.interval == 30
        payload = bytes(range(70))
        bearer.send(payload)
        assert sim.sent[-1]["hex"] == payload.hex().upper()
        wait_until(lambda: any(f[0] == "BDTXR" for f in lines), 5, "the loopback message", 0.05)
        txr = next(f for f in lines if f[0] == "BDTXR")
        assert txr[-1] == payload.hex().upper()
        assert not bearer.ready()  # the bearer itself keeps to the card interval
        with pytest.raises(TransportError, match="refused"):
            bearer.send(b"too soon")  # and the module's refusal is reported, not lost
        assert bearer.status()["refused"] == 1 and bearer.status()["messages_sent"] == 1
    finally:
        bearer.stop()
        sim.stop()


def test_tiantong_sms_only_alarm_reaches_the_center(tmp_path: Path, mosquitto) -> None:
    """Hub terminal -> (the test relays SMS like the network) -> center terminal -> center."""
    import threading

    from simulators.tiantong import TiantongSim

    hub_sim = TiantongSim(own_number="+8617400000001").start()
    center_sim = TiantongSim(own_number="+8617400000999").start()
    stop_relay = threading.Event()

    def relay() -> None:
        done = 0
        while not stop_relay.wait(0.1):
            for msg in hub_sim.sent[done:]:
                if msg["number"] == center_sim.own_number:
                    center_sim.receive(hub_sim.own_number, msg["text"])
                done += 1

    threading.Thread(target=relay, daemon=True).start()
    center_dir = tmp_path / "center"
    worker = center_worker(mosquitto.url, center_dir, "w1", "--tiantong", center_sim.path, "--mac-key", KEY)
    cfg = UplinkConfig(enabled=True, mac_key=KEY, links=[
        LinkConfig(name="tt", kind="tiantong", url=hub_sim.path, dest_card=center_sim.own_number,
                   card_interval=2, classes=["alarm"], cost=50, bandwidth="2400bit")])
    log = DurableLog(tmp_path / "hub" / "log.db")
    up = Uplink(log, cfg, "vehicle-06")
    try:
        up.start()
        wait_until(lambda: up.report()["links"][0]["state"] == "up", 20, "Tiantong registration", 0.1)
        log.append([hubproc.record(i) for i in range(20)])  # telemetry is not allowed on this link
        first = alarm("geo-monitor-4", time.time_ns(), 1)
        log.append([first])
        wait_until(lambda: first.id in center_ids(center_dir), 15, "the alarm by SMS", 0.1)
        store = LocalStore(center_dir / "store.db", readonly=True)
        got = {r.id: r for r in store.query("alarm")}
        assert got[first.id].tags["via"] == "tiantong" and got[first.id].fields["code"] == 301
        assert len(center_ids(center_dir)) == 1
        assert hub_sim.sent[0]["number"] == center_sim.own_number and len(hub_sim.sent[0]["text"]) <= 160
        status = up.report()
        assert status["stats"]["short_messages"] == 1 and status["routes"]["telemetry"] is None
        wait_until(lambda: not center_sim.inbox, 10, "the center to delete the read SMS", 0.1)
        reg = HubRegistry(center_dir / "center.db", readonly=True).hubs()
        assert reg[0]["last_link"] == f"tiantong:{hub_sim.own_number}"
    finally:
        stop_relay.set()
        up.stop()
        log.close()
        stop(worker)
        hub_sim.stop()
        center_sim.stop()

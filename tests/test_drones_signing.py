"""Signing, several endpoints and drones, offline detection, rate limits, tlog bounds — real sockets, real log."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.mavlink import mav, signer
from fieldhub.cli.replay import replay_file
from fieldhub.core.quarantine import list_items
from fieldhub.core.records import Record
from fieldhub.hub import Hub, load_config
from fieldhub.sources.mavlink.config import key_bytes
from fieldhub.sources.mavlink.drones import DroneHub
from fieldhub.sources.mavlink.tlog import TlogStore
from fieldhub.sources.mqtt.mosquitto import free_port
from simulators.drone import DroneSwarm, free_udp_port


def wait_for(cond: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def records(hub: Hub, kind: str | None = None) -> list[Record]:
    cur = hub.log.cursor("test-reader")
    out = []
    while batch := cur.read(10000):
        out += [e.record for e in batch]
        cur.commit(batch)
    hub.log.drop_consumer("test-reader")
    return [r for r in out if kind is None or r.kind == kind]


@pytest.fixture
def make_hub(tmp_path: Path) -> Iterator[Callable[..., tuple[Hub, DroneHub]]]:
    hubs: list[Hub] = []

    def make(**mavlink: Any) -> tuple[Hub, DroneHub]:
        overrides = {"hub.data_dir": str(tmp_path / f"data{len(hubs)}"), "store.enabled": False}
        overrides.update({f"mavlink.{k}": v for k, v in mavlink.items()})
        hub = Hub(load_config(None, overrides, env={}))
        hub.start()
        hubs.append(hub)
        comp = next(c for c in hub.components if c.name == "drones")
        return hub, comp
    yield make
    for h in hubs:
        h.stop()


def test_signed_drone_works_and_forged_packets_are_rejected(make_hub) -> None:
    port = free_udp_port()
    hub, drones = make_hub(endpoints=[f"udpin:127.0.0.1:{port}"], signing_keys={"drone-1": "field key one"},
                           heartbeat_timeout=1.5)
    swarm = DroneSwarm(2, f"udpout:127.0.0.1:{port}", keys={1: key_bytes("field key one")}, gps_loss=False,
                       rate_hz=10)
    swarm.start()
    try:
        wait_for(lambda: len(drones.list()) == 2 and all(d["online"] for d in drones.list()), what="online")
        wait_for(lambda: drones.drones[1].rx > 20, what="signed traffic")
        assert drones.drones[1].counts["unsigned"] == drones.drones[1].counts["bad_signature"] == 0
        # commands to the signing drone are signed by the hub (the simulator ignores unsigned ones)
        result = drones.command("drone-1", "mode", ["LOITER"])
        assert result["accepted"] and swarm.drones[1].mode_name == "LOITER"
        assert swarm.drones[1].stats["rejected_unsigned"] == 0
        # the hub's signing clock follows real time even if its encoder is old (else: "old timestamp")
        drones.drones[1].encoder.signing.timestamp -= 120 * 100_000
        assert drones.command("drone-1", "mode", ["AUTO"])["accepted"]
        assert swarm.drones[1].stats["rejected_unsigned"] == 0
        assert drones.command("drone-1", "mode", ["LOITER"])["accepted"]

        # forged: unsigned, signed with the wrong key, and a genuine packet replayed
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        plain = signer(None, 1, 1)
        wrong = signer(key_bytes("not the key"), 1, 1)
        unsigned = bytes(plain.statustext_encode(2, b"FORGED unsigned").pack(plain))
        badsig = bytes(wrong.statustext_encode(2, b"FORGED bad signature").pack(wrong))
        sock.sendto(unsigned, ("127.0.0.1", port))
        sock.sendto(badsig, ("127.0.0.1", port))
        sock.sendto(b"\x00\x01 line noise, not MAVLink", ("127.0.0.1", port))
        d1 = drones.drones[1]
        wait_for(lambda: d1.counts["unsigned"] >= 1 and d1.counts["bad_signature"] >= 1, what="drops counted")
        # a genuinely signed packet is accepted once; the same bytes replayed are not
        genuine = signer(key_bytes("field key one"), 1, 1, link_id=7)
        once = bytes(genuine.statustext_encode(6, b"GENUINE once").pack(genuine))
        before = d1.counts["bad_signature"]
        sock.sendto(once, ("127.0.0.1", port))
        time.sleep(0.3)
        sock.sendto(once, ("127.0.0.1", port))
        wait_for(lambda: d1.counts["bad_signature"] == before + 1, what="replay rejected")
        # an unsigned drone next to it is unaffected
        assert drones.drones[2].counts["unsigned"] == 0 and drones.drones[2].key is None
        # a forged LAND injected on the drone link is dropped: not acted on, not relayed
        forged_cmd = bytes(plain.command_long_encode(1, 1, mav.MAV_CMD_NAV_LAND, 0, 0, 0, 0, 0, 0, 0, 0)
                           .pack(plain))
        sock.sendto(forged_cmd, ("127.0.0.1", port))
        sock.close()
        time.sleep(0.5)
        assert swarm.drones[1].mode_name == "LOITER"
    finally:
        swarm.stop()
    wait_for(lambda: not any(d["online"] for d in drones.list()), what="offline after heartbeat timeout")

    recs = records(hub)
    alarms = [r for r in recs if r.kind == "alarm"]
    assert {a.fields["alarm"] for a in alarms} == {"mavlink_unsigned", "mavlink_bad_signature"}
    assert all(a.device_id == "drone-1" and a.priority.label == "alarm" for a in alarms)
    assert all(a.fields["message_zh"] for a in alarms)
    texts = [r.fields["text"] for r in recs if r.kind == "drone_event"]
    assert not any("FORGED" in t for t in texts)
    assert texts.count("GENUINE once") == 1
    assert any(r.kind == "position" and r.device_id == "drone-1" for r in recs)
    presence = [(r.device_id, r.fields["online"]) for r in recs if r.kind == "presence"]
    assert ("drone-1", True) in presence and ("drone-1", False) in presence and ("drone-2", False) in presence
    mode_cmd = [r for r in recs if r.kind == "command"]
    assert [c.fields["detail"] for c in mode_cmd] == ["LOITER", "AUTO", "LOITER"]
    assert all(c.fields["action"] == "mode" and c.priority.label == "command" for c in mode_cmd)
    status = drones.status()
    assert status["dropped_unsigned"] >= 1 and status["dropped_bad_signature"] >= 1
    assert status["bad_frames"] >= 1
    held = list_items(hub.data_dir, source="mavlink", state="held", limit=100)
    reasons = [q["reason"] for q in held]
    assert any(r.startswith("unsigned") for r in reasons) and any(r.startswith("bad_signature") for r in reasons)
    assert any("prefix" in r.lower() for r in reasons)  # the line noise, kept for inspection


def test_wrong_key_on_hub_side_means_no_ack(make_hub) -> None:
    """A drone that signs with another key is dropped entirely, so commands get no ack."""
    port = free_udp_port()
    hub, drones = make_hub(endpoints=[f"udpin:127.0.0.1:{port}"], signing_keys={"drone-1": "hub's idea"},
                           command_timeout=0.2, command_attempts=2)
    swarm = DroneSwarm(1, f"udpout:127.0.0.1:{port}", keys={1: key_bytes("drone's idea")}, gps_loss=False)
    swarm.start()
    try:
        wait_for(lambda: drones.drones.get(1) and drones.drones[1].counts["bad_signature"] > 5, what="drops")
        assert not drones.drones[1].online
        assert drones.drones[1].rx == 0
    finally:
        swarm.stop()


def test_several_endpoints_tcp_both_ways_udpout_and_rate_limits(make_hub) -> None:
    """tcpin, tcp and udpout endpoints at once, several drones per endpoint, positions limited to 2 Hz."""
    tcpin_port = free_port()
    sim_listen = free_port()
    udp_drone = free_udp_port()
    sim_b = DroneSwarm(1, f"tcpin:127.0.0.1:{sim_listen}", sysid_base=7, gps_loss=False, rate_hz=10)
    sim_b.start()
    # a drone listening on UDP (as SITL does) only talks once it has heard the hub's heartbeat
    sim_c = DroneSwarm(1, f"udpin:127.0.0.1:{udp_drone}", sysid_base=9, gps_loss=False)
    sim_c.start()
    hub, drones = make_hub(endpoints=[f"tcpin:127.0.0.1:{tcpin_port}", f"tcp:127.0.0.1:{sim_listen}",
                                      f"udpout:127.0.0.1:{udp_drone}"])
    sim_a = DroneSwarm(2, f"tcp:127.0.0.1:{tcpin_port}", sysid_base=3, gps_loss=False, rate_hz=10)
    sim_a.start()
    try:
        wait_for(lambda: {d["sysid"] for d in drones.list() if d["online"]} == {3, 4, 7, 9}, what="4 drones")
        links = {d["sysid"]: d["link"] for d in drones.list()}
        assert links[3] == links[4] == f"tcpin:127.0.0.1:{tcpin_port}"
        assert links[7] == f"tcp:127.0.0.1:{sim_listen}"
        assert links[9] == f"udpout:127.0.0.1:{udp_drone}"
        assert drones.command("drone-9", "mode", ["BRAKE"])["accepted"]
        assert sim_c.drones[9].mode_name == "BRAKE"
        t0 = time.monotonic()
        time.sleep(3)
        assert drones.command("drone-7", "land")["accepted"]
        assert drones.command("drone-4", "rtl")["accepted"]
        wait_for(lambda: sim_b.drones[7].mode_name == "LAND" and sim_a.drones[4].mode_name == "RTL",
                 what="modes")
        elapsed = time.monotonic() - t0 + 2
    finally:
        sim_a.stop()
        sim_b.stop()
        sim_c.stop()
    recs = records(hub)
    pos = [r for r in recs if r.kind == "position" and r.device_id == "drone-3"]
    raw = drones.drones[3].rx
    # 10 Hz positions came in; at most ~2 Hz went into the log
    assert raw > 10 * len(pos) / 2
    assert 2 <= len(pos) <= 2 * (elapsed + 5)
    assert drones.status()["rate_limited"] > 0


def test_serial_endpoint_over_a_pty(make_hub, pty_pair) -> None:
    """A telemetry radio on a serial port: the drone's bytes come in, the hub's heartbeat goes out."""
    master, path = pty_pair
    hub, drones = make_hub(endpoints=[f"serial:{path}:57600"])
    enc = signer(None, 9, 1)
    stop = threading.Event()

    def radio() -> None:
        while not stop.is_set():
            hb = enc.heartbeat_encode(mav.MAV_TYPE_QUADROTOR, mav.MAV_AUTOPILOT_ARDUPILOTMEGA,
                                      mav.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED, 6, mav.MAV_STATE_ACTIVE)
            os.write(master, bytes(hb.pack(enc)))
            enc.seq = (enc.seq + 1) % 256
            stop.wait(0.2)

    t = threading.Thread(target=radio, daemon=True)
    t.start()
    try:
        wait_for(lambda: any(d["sysid"] == 9 and d["online"] and d["mode"] == "RTL" for d in drones.list()),
                 what="serial drone online in RTL")
        parser = signer(None, 0, 0)
        os.set_blocking(master, False)
        got = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not got:
            try:
                got = [m for m in parser.parse_buffer(os.read(master, 4096)) or ()
                       if m.get_type() == "HEARTBEAT" and m.get_srcSystem() == 254]
            except BlockingIOError:
                time.sleep(0.1)
        assert got
    finally:
        stop.set()
        t.join()


def test_tlog_rotation_stays_bounded_and_replays(tmp_path: Path) -> None:
    store = TlogStore(tmp_path / "tlog", max_file=4096, max_total=16384)
    enc = signer(None, 1, 1)
    t0 = 1_700_000_000_000_000
    for i in range(2000):
        m = enc.global_position_int_encode(i, 305928000 + i, 1143055000, 50000, 25000, 0, 0, 0, 0)
        store.write("uav-01", t0 + i * 100_000, bytes(m.pack(enc)))
    store.close()
    store.enforce_cap()
    files = store.files()
    assert len(files) >= 3 and store.stats["files_deleted"] > 0
    assert sum(p.stat().st_size for p in files) <= 16384 + 4096
    for p in files:
        r = replay_file("mavlink", p)
        assert r["bad_frames"] == 0 and r["frames"] > 0


def test_config_errors_are_clear(tmp_path: Path) -> None:
    from fieldhub.core.errors import ConfigError

    with pytest.raises(ConfigError, match="mavlink.endpoints\\[0\\].*bad endpoint 'udp:1.2.3.4:5'"):
        load_config(None, {"mavlink.endpoints": ["udp:1.2.3.4:5"]}, env={})
    with pytest.raises(ConfigError, match="system id"):
        load_config(None, {"mavlink.drones": {"300": "x"}}, env={})
    with pytest.raises(ConfigError, match="device id '../up'"):
        load_config(None, {"mavlink.drones": {"3": "../up"}}, env={})
    ks = tmp_path / "keys.toml"
    ks.write_text('"drone-1" = ""\n')
    cfg = load_config(None, {"mavlink.keystore": str(ks)}, env={})
    from fieldhub.sources.mavlink.config import load_keys

    with pytest.raises(ConfigError, match="drone-1: empty signing key"):
        load_keys(cfg.mavlink)


def test_drones_from_the_registry(tmp_path: Path) -> None:
    """A drone registered with its transport (sysid, endpoint) needs no [mavlink] config at all."""
    from fieldhub.core.registry import Device, Registry

    port = free_udp_port()
    data = tmp_path / "data"
    data.mkdir()
    reg = Registry(data / "registry.db")
    reg.add(Device("uav-hb-07", "drone", "420102001001", unit="county team",
                   transport={"sysid": 5, "endpoint": f"udpin:127.0.0.1:{port}"}))
    reg.close()
    hub = Hub(load_config(None, {"hub.data_dir": str(data), "store.enabled": False}, env={}))
    hub.start()
    swarm = DroneSwarm(1, f"udpout:127.0.0.1:{port}", sysid_base=5, gps_loss=False)
    swarm.start()
    try:
        drones = next(c for c in hub.components if c.name == "drones")
        wait_for(lambda: any(d["device_id"] == "uav-hb-07" and d["online"] for d in drones.list()),
                 what="registered drone online")
        assert drones.command("uav-hb-07", "land")["accepted"]
    finally:
        swarm.stop()
        recs = records(hub, "position")
        hub.stop()
    assert recs and recs[0].device_id == "uav-hb-07"
    assert recs[0].tags["admin_code"] == "420102001001" and recs[0].tags["level"] == "village"

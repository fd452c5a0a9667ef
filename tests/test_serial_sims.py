"""The hub talks to every simulator through a real pty: records, commands, faults, unplug/replug."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fieldhub.core import control
from fieldhub.core.datadir import REGISTRY_FILE, STORE_FILE
from fieldhub.core.errors import FieldhubError
from fieldhub.core.records import Priority
from fieldhub.core.registry import Device, Registry
from fieldhub.hub import Hub, load_config
from fieldhub.sinks.store import LocalStore
from simulators.dmr import DmrSim
from simulators.gnss import GnssSim
from simulators.ptz import PtzSim
from simulators.rdss import RdssSim
from simulators.tiantong import TiantongSim

ADMIN = "420102001001"


def wait_for(cond: Callable[[], object], timeout: float = 15.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Rig:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.started = time.monotonic()
        self.sims = {"gnss-1": GnssSim(hz=10, seed=3), "bd-1": RdssSim(interval=2),
                     "tt-1": TiantongSim(), "ptz-1": PtzSim(), "dmr-1": DmrSim(period=0.5)}
        drivers = {"gnss-1": "nmea", "bd-1": "beidou_rdss", "tt-1": "tiantong", "ptz-1": "pelco_d", "dmr-1": "dmr"}
        reg = Registry(data_dir / REGISTRY_FILE)
        reg.add(Device("gnss-1", "gnss", ADMIN, model="nmea-quectel-l76k"))
        reg.add(Device("bd-1", "bd_terminal", ADMIN))
        reg.close()
        for s in self.sims.values():
            s.start()
        ports = [{"device_id": d, "driver": drivers[d], "url": s.path} for d, s in self.sims.items()]
        cfg = load_config(None, {"hub.data_dir": str(data_dir), "serial.ports": ports,
                                    "serial.backoff_initial": 0.1, "serial.backoff_max": 0.5,
                                    "serial.quarantine_per_minute": 5}, env={})
        self.hub = Hub(cfg)
        self.hub.start()
        wait_for(lambda: all(p["connected"] for p in self.status().values()), what="all ports open")

    def status(self) -> dict:
        return control.call(self.data_dir, "serial.status")

    def call(self, cmd: str, args: dict) -> dict:
        return control.call(self.data_dir, cmd, args, timeout=60)

    def records(self, kind: str, device: str | None = None) -> list:
        path = self.data_dir / STORE_FILE
        if not path.exists():
            return []
        store = LocalStore(path, readonly=True)
        try:
            return list(store.query(kind, device=device))
        finally:
            store.close()

    def stop(self) -> None:
        self.hub.stop()
        for s in self.sims.values():
            s.stop()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    r = Rig(tmp_path_factory.mktemp("serial") / "data")
    yield r
    r.stop()


def test_gnss_positions_carry_registry_tags(rig: Rig) -> None:
    recs = wait_for(lambda: rig.records("position", "gnss-1"), what="positions")
    r = recs[-1]
    assert r.tags["admin_code"] == ADMIN and r.tags["model"] == "nmea-quectel-l76k" and r.tags["level"] == "village"
    assert r.source == "serial:nmea"
    lat, lon, _ = rig.sims["gnss-1"].position(r.ts / 1e9)
    assert abs(r.fields["lat"] - lat) < 0.001 and abs(r.fields["lon"] - lon) < 0.001
    assert rig.status()["gnss-1"]["profile"] == "nmea-quectel-l76k"  # the registry model picks the profile


def test_unplug_replug_while_data_flows(rig: Rig) -> None:
    sim = rig.sims["gnss-1"]
    before = rig.status()["gnss-1"]
    sim.unplug()
    wait_for(lambda: not rig.status()["gnss-1"]["connected"], what="disconnect noticed")
    time.sleep(0.6)  # data the device produces meanwhile is lost at the device, as with a pulled USB cable
    sim.replug()
    wait_for(lambda: rig.status()["gnss-1"]["connected"], what="reopened")
    after = wait_for(lambda: (s := rig.status()["gnss-1"])["frames"] > before["frames"] + 20 and s, what="data again")
    assert after["opens"] >= before["opens"] + 1 and after["disconnects"] >= before["disconnects"] + 1
    assert after["open_failures"] >= 1  # the link path was gone for a while and the port kept retrying
    presence = wait_for(lambda: (p := [(r.fields["online"], r.priority) for r in rig.records("presence", "gnss-1")])
                        and p[-1][0] and len(p) >= 3 and p, what="presence records")
    assert presence[-3:] == [(True, Priority.TELEMETRY), (False, Priority.ALARM), (True, Priority.TELEMETRY)]


def test_noise_is_counted_and_quarantine_rate_limited(rig: Rig) -> None:
    sim = rig.sims["gnss-1"]
    frames0 = rig.status()["gnss-1"]["frames"]
    sim.noise = 0.5
    try:
        st = wait_for(lambda: (s := rig.status()["gnss-1"])["bad_frames"] >= 15 and s, what="bad frames")
    finally:
        sim.noise = 0.0
    assert st["frames"] > frames0  # good sentences keep flowing between the bad ones
    # a 5-a-minute bucket: at most 5 at once plus the refill since the port opened; the rest only counted
    assert st["quarantined"] <= 5 + 1 + (time.monotonic() - rig.started) / 12
    assert st["quarantine_suppressed"] >= 1 and st["quarantined"] < st["bad_frames"]
    from fieldhub.core.quarantine import list_items

    held = list_items(rig.data_dir, source="serial:nmea")
    assert held and all(i["device_id"] == "gnss-1" for i in held)


def test_rdss_interval_enforced_and_fki_retry(rig: Rig) -> None:
    sim = rig.sims["bd-1"]
    first = rig.call("serial.bd_send", {"dest": "0242286", "text": "一号测试"})
    assert first["attempts"] == 1
    with pytest.raises(FieldhubError, match="interval"):
        rig.call("serial.bd_send", {"dest": "0242286", "text": "x", "no_wait": True})
    second = rig.call("serial.bd_send", {"dest": "0242286", "text": "二号测试", "encoding": "chinese"})
    assert second["waited_s"] >= 1.0 and second["attempts"] == 1
    assert [m["text"] for m in sim.sent[-2:]] == ["一号测试", "二号测试"]
    assert sim.refused == 0  # the hub never sent early
    # another host used the card: the module refuses; the hub retries after the stated wait
    time.sleep(2.1)
    sim.last_tx = time.monotonic()
    third = rig.call("serial.bd_send", {"dest": "0242286", "text": "three", "encoding": "code"})
    assert third["attempts"] == 2 and len(third["refusals"]) == 1 and third["waited_s"] >= 1.0
    assert sim.refused == 1 and sim.sent[-1]["text"] == "three"
    # every message looped back to the card arrives as a record
    texts = wait_for(lambda: {r.fields["text"] for r in rig.records("bd_message", "bd-1")} >= {"一号测试", "二号测试", "three"}
                     and {r.fields["text"] for r in rig.records("bd_message", "bd-1")}, what="TXR records")
    assert texts
    sent = wait_for(lambda: rig.records("bd_sent", "bd-1"), what="bd_sent trail")
    assert {r.fields["text"] for r in sent} >= {"一号测试", "二号测试", "three"}
    assert next(r for r in sent if r.fields["text"] == "three").fields["attempts"] == 2
    card = rig.records("bd_card", "bd-1")[-1]
    assert card.fields["interval_s"] == 2 and card.tags["kind"] == "bd_terminal"


def test_tiantong_sms_short_long_and_retry(rig: Rig) -> None:
    sim = rig.sims["tt-1"]
    short = rig.call("serial.sms_send", {"number": "+8613800000000", "text": "天通短信测试"})
    assert short["mode"] == "text" and short["coding"] == "ucs2"
    assert sim.sent[-1] == {**sim.sent[-1], "number": "+8613800000000", "text": "天通短信测试"}
    long_text = "应急指挥部通知：请沿河各村立即组织转移。" * 8
    res = rig.call("serial.sms_send", {"number": sim.own_number, "text": long_text})
    assert res["mode"] == "pdu" and res["parts"] == 3
    assert sim.sent[-1]["text"] == long_text and sim.sent[-1]["parts"] == 3
    sms = wait_for(lambda: [r for r in rig.records("sms", "tt-1") if r.fields["text"] == long_text],
                   what="long SMS joined")
    assert sms[0].fields["parts"] == 3 and sms[0].fields["sender"] == sim.own_number
    sim.fail_next = 1
    retried = rig.call("serial.sms_send", {"number": "10086", "text": "retry me"})
    assert retried["parts"] == 1 and retried["retries"] == 1 and sim.sent[-1]["text"] == "retry me"
    accents = rig.call("serial.sms_send", {"number": "10086", "text": "café, 5 £\nline two"})
    assert accents["coding"] == "ucs2" and sim.sent[-1]["text"] == "café, 5 £\nline two"
    assert rig.status()["tt-1"]["session"]["sms_retries"] >= 1
    assert rig.records("sat_signal", "tt-1") and rig.records("sat_registration", "tt-1")
    out = wait_for(lambda: rig.records("sms_out", "tt-1"), what="sms_out trail")
    assert any(r.fields["text"] == long_text and r.fields["parts"] == 3 for r in out)


def test_ptz_absolute_position_and_movement(rig: Rig) -> None:
    rig.call("serial.ptz", {"command": {"cmd": "set_pan", "value": 90}})
    assert rig.call("serial.ptz", {"command": {"cmd": "query_pan"}})["value"] == 90.0
    rig.call("serial.ptz", {"command": {"cmd": "right", "speed": 63}})
    time.sleep(0.5)
    rig.call("serial.ptz", {"command": {"cmd": "stop"}})
    moved = rig.call("serial.ptz", {"command": {"cmd": "query_pan"}})["value"]
    assert 100 < moved < 140  # 60 deg/s at full speed for about half a second
    rig.call("serial.ptz", {"command": {"cmd": "set_preset", "preset": 3}})
    rig.call("serial.ptz", {"command": {"cmd": "set_pan", "value": 10}})
    rig.call("serial.ptz", {"command": {"cmd": "goto_preset", "preset": 3}})
    assert rig.call("serial.ptz", {"command": {"cmd": "query_pan"}})["value"] == moved
    assert wait_for(lambda: rig.records("ptz_position", "ptz-1"), what="ptz records")


def test_dmr_positions_and_text(rig: Rig) -> None:
    pos = wait_for(lambda: rig.records("position", "dmr-1"), what="dmr positions")
    protocols = {r.fields["protocol"] for r in pos}
    assert protocols == {"hytera_lp", "lrrp"}
    assert all(abs(r.fields["lat"] - 30.60) < 0.02 and abs(r.fields["lon"] - 114.30) < 0.02 for r in pos)
    rig.call("serial.send", {"device": "dmr-1", "command": {"cmd": "text", "dest": "10.33.16.221",
                                                            "src": "10.0.0.1", "text": "请回报位置"}})
    replies = wait_for(lambda: rig.records("dmr_text", "dmr-1"), what="text reply")
    assert replies[0].fields["text"] == "收到 / received" and replies[0].fields["dest_ip"] == "10.0.0.1"
    assert rig.sims["dmr-1"].texts_in


@pytest.mark.parametrize("device", ["bd-1", "tt-1", "ptz-1", "dmr-1"])
def test_every_family_survives_unplug_replug(rig: Rig, device: str) -> None:
    """After a replug the session starts over (card query, ATE0 + poll, position poll) and data flows."""
    sim = rig.sims[device]
    before = rig.status()[device]
    sim.unplug()
    wait_for(lambda: not rig.status()[device]["connected"], what=f"{device} disconnect noticed")
    sim.replug()
    after = wait_for(lambda: (s := rig.status()[device])["connected"] and s["frames"] > before["frames"] and s,
                     what=f"{device} data after replug")
    assert after["opens"] == before["opens"] + 1
    if device == "ptz-1":
        assert rig.call("serial.ptz", {"command": {"cmd": "query_tilt"}})["axis"] == "tilt"


def test_tiantong_registration_loss_is_an_alarm(tmp_path: Path) -> None:
    from fieldhub.core.log import DurableLog
    from fieldhub.sources.serial.ingest import SerialPortConfig, open_port

    log = DurableLog(tmp_path / "log.db")
    with TiantongSim(loss_every=1.0, loss_for=1.0) as sim:
        port = open_port(SerialPortConfig("tt-9", "tiantong", sim.path), log=log)
        port.start()
        try:
            def states() -> list:
                return [(e.record.fields["registered"], e.record.priority)
                        for e in log.cursor("t").read(1000) if e.record.kind == "sat_registration"]
            seen = wait_for(lambda: (s := states()) and any(not r for r, _ in s) and s[-1][0] and s,
                            timeout=10, what="loss and recovery")
        finally:
            port.stop()
            log.close()
    assert (False, Priority.ALARM) in seen


def test_lrrp_over_udp(tmp_path: Path, fixtures_dir: Path) -> None:
    """Motorola radios send LRRP as UDP datagrams: the dmr port can listen with udp://."""
    import socket

    from fieldhub.core.log import DurableLog
    from fieldhub.sources.serial.ingest import SerialPortConfig, open_port

    docs = [bytes.fromhex(line.rsplit("|", 1)[1].strip()) for line in
            (fixtures_dir / "vectors" / "dmr_location_vectors_ok-dmrlib.txt").read_text().splitlines()
            if line.startswith("lrrp |")]
    log = DurableLog(tmp_path / "log.db")
    port = open_port(SerialPortConfig("radio-7", "dmr", "udp://127.0.0.1:0"), log=log)
    port.start()
    try:
        wait_for(lambda: port.transport.bound_port, what="udp bound")
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for doc in docs:
            tx.sendto(doc, ("127.0.0.1", port.transport.bound_port))
        wait_for(lambda: port.status()["frames"] == len(docs), what="all LRRP documents")
        port.write(bytes.fromhex("0F0622042468ACE0"))  # a stop request goes back to the radio
        tx.settimeout(2)
        assert tx.recvfrom(100)[0] == bytes.fromhex("0F0622042468ACE0")
        tx.close()
    finally:
        port.stop()
    recs = [e.record for e in log.cursor("t").read(100)]
    log.close()
    data = [r for r in recs if r.kind != "presence"]
    assert sum(1 for r in data if r.kind == "position") == 4 and len(data) == len(docs) == 8
    assert [r.fields["online"] for r in recs if r.kind == "presence"] == [True]


def test_dmr_text_and_ptz_from_cli(rig: Rig, cli) -> None:
    n = len(rig.sims["dmr-1"].texts_in)
    proc = cli("dmr", "text", "10.33.16.221", "集合点：村委会", "--device", "dmr-1", "--data-dir", str(rig.data_dir),
               "--json")
    assert proc.returncode == 0, proc.stderr
    wait_for(lambda: len(rig.sims["dmr-1"].texts_in) > n, what="text at the radio")
    assert "集合点：村委会".encode("utf-16-le") in rig.sims["dmr-1"].texts_in[-1]
    proc = cli("ptz", "set_tilt", "--value", "30", "--data-dir", str(rig.data_dir))
    assert proc.returncode == 0, proc.stderr
    import orjson

    q = orjson.loads(cli("ptz", "query_tilt", "--data-dir", str(rig.data_dir), "--json", check=True).stdout)
    assert q["value"] == 30.0
    bad = cli("dmr", "text", "not-an-ip", "x", "--device", "dmr-1", "--data-dir", str(rig.data_dir))
    assert bad.returncode == 1 and "IPv4" in bad.stderr and "Traceback" not in bad.stderr


def test_device_registered_while_running_gets_tags_at_reconnect(rig: Rig) -> None:
    """ptz-1 was not registered when the hub started; after the operator adds it, the next
    (re)connect picks up its tags."""
    reg = Registry(rig.data_dir / REGISTRY_FILE)
    reg.add(Device("ptz-1", "ptz", "420102001000", model="pelco-d-generic"))
    reg.close()
    rig.sims["ptz-1"].unplug()
    wait_for(lambda: not rig.status()["ptz-1"]["connected"], what="ptz down")
    rig.sims["ptz-1"].replug()
    wait_for(lambda: rig.status()["ptz-1"]["connected"], what="ptz up")
    recs = wait_for(lambda: [r for r in rig.records("ptz_position", "ptz-1") if r.tags.get("level") == "township"],
                    what="tagged ptz records")
    assert recs[0].tags["admin_code"] == "420102001000"


def test_capture_replayed_through_pty_in_split_pieces(tmp_path: Path, fixtures_dir: Path) -> None:
    """gpsfake-style: a real capture played into a pty, every sentence written in two random
    pieces; the port decodes exactly what a file replay decodes."""
    from fieldhub.cli.replay import replay_file
    from fieldhub.core.log import DurableLog
    from fieldhub.sources.serial.ingest import SerialPortConfig, open_port

    capture = fixtures_dir / "nmea" / "gpsd_unicore-um621.log"
    expected = replay_file("nmea", capture)
    log = DurableLog(tmp_path / "log.db")
    sim = GnssSim(capture=capture, rate=400, split=True, loop=False, seed=7)
    sim.paused = True  # hold the capture until the port is open
    with sim:
        port = open_port(SerialPortConfig("um621", "nmea", sim.path), log=log)
        port.start()
        try:
            wait_for(lambda: port.connected, what="port open")
            sim.paused = False
            wait_for(lambda: port.status()["frames"] >= expected["frames"] and sim.replayed >= len(sim.lines),
                     timeout=30, what="whole capture")
            time.sleep(0.3)
            st = port.status()
        finally:
            port.stop()
    log.close()
    assert st["frames"] == expected["frames"] == 882 and st["bad_frames"] == 0
    assert st["records"] == expected["records"]


def test_tiantong_call_state(rig: Rig) -> None:
    sim = rig.sims["tt-1"]
    sim.ring("+8613900000000")
    calls = wait_for(lambda: [r.fields for r in rig.records("sat_call", "tt-1") if r.fields.get("number")],
                     what="incoming call records")
    assert calls[0] == {"state": "incoming", "number": "+8613900000000"}
    rig.call("serial.send", {"device": "tt-1", "command": {"at": "ATH"}})
    wait_for(lambda: any(r.fields["state"] == "ended" for r in rig.records("sat_call", "tt-1")), what="call ended")
    assert sim.call is None


def test_tiantong_poll_interval(tmp_path: Path) -> None:
    """Signal and registration are polled on the port's interval (overriding the profile's 30 s)."""
    from fieldhub.core.log import DurableLog
    from fieldhub.sources.serial.ingest import SerialPortConfig, open_port

    log = DurableLog(tmp_path / "log.db")
    with TiantongSim() as sim:
        port = open_port(SerialPortConfig("tt-poll", "tiantong", sim.path, poll_interval=0.3), log=log)
        port.start()
        try:
            def polled() -> list:
                return [e.record for e in log.cursor("t").read(1000) if e.record.kind == "sat_signal"]
            recs = wait_for(lambda: len(p := polled()) >= 6 and p, timeout=15, what="six polls")
        finally:
            port.stop()
    log.close()
    gaps = [(b.ts - a.ts) / 1e9 for a, b in zip(recs, recs[1:])]
    assert all(g >= 0.25 for g in gaps)  # never faster than the interval
    assert all(r.fields["dbm"] == -113 + 2 * r.fields["rssi"] for r in recs)

"""Against a real Mosquitto started from `provision broker-config`: ACLs, ingest, quarantine, presence."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from fieldhub.core.records import Priority
from fieldhub.hub import Hub, load_config
from tests.mqtt_util import ProvisionedBroker, client, mqtt_records, quarantined, run_cli, wait_for

pytestmark = pytest.mark.broker


@pytest.fixture
def broker(tmp_path: Path):
    b = ProvisionedBroker(tmp_path)
    yield b
    b.stop()


def test_broker_config_is_complete(broker: ProvisionedBroker) -> None:
    conf = (broker.dir / "mosquitto.conf").read_text()
    for line in ("persistence true", "autosave_interval 1", "allow_anonymous false",
                 f"password_file {broker.dir.resolve() / 'passwd'}", f"acl_file {broker.dir.resolve() / 'acl'}"):
        assert line in conf
    queued = int(next(l.split()[1] for l in conf.splitlines() if l.startswith("max_queued_messages")))
    assert queued >= 12 * 3600 * 200  # hours of the hub being away, not Mosquitto's default 1000


def test_acl_real_broker_refuses_device_a_publishing_as_b(broker: ProvisionedBroker) -> None:
    pw_a = broker.provision("dev-a")
    broker.provision("dev-b")
    broker.start()
    got: list[tuple[str, bytes]] = []
    hub = client(broker, "fieldhub", broker.info["password"],
                 on_message=lambda c, u, m: got.append((m.topic, m.payload)))
    hub.subscribe("fh/+/up/#", qos=1)
    time.sleep(0.3)
    a = client(broker, "dev-a", pw_a)
    spoof = a.publish("fh/dev-b/up/telemetry", b'{"seq": 1, "fields": {"rain_mm": 99}}', qos=1)
    own = a.publish("fh/dev-a/up/telemetry", b'{"seq": 1, "fields": {"rain_mm": 1}}', qos=1)
    spoof.wait_for_publish(5)
    own.wait_for_publish(5)
    wait_for(lambda: any(t == "fh/dev-a/up/telemetry" for t, _ in got), 5, "A's own message")
    time.sleep(0.5)
    assert [t for t, _ in got] == ["fh/dev-a/up/telemetry"], "the broker let A speak for B"
    # A may not read B's commands, nor anybody's up topics
    subs: dict = {}
    a.on_subscribe = lambda c, u, mid, codes, props: subs.setdefault(mid, codes)
    _, mid = a.subscribe("fh/dev-b/down/#", qos=1)
    wait_for(lambda: mid in subs, 5, "SUBACK")
    hub_cmds: list = []
    b_pw = broker.provision("dev-c")  # after start: a reload applies new accounts
    broker.reload()
    c = client(broker, "dev-c", b_pw, on_message=lambda cl, u, m: hub_cmds.append(m.topic))
    c.subscribe("fh/dev-c/down/#", qos=1)
    a.on_message = lambda cl, u, m: hub_cmds.append(("A saw", m.topic))
    time.sleep(0.3)
    hub.publish("fh/dev-b/down/cmd", b'{"cmd_id": "x"}', qos=1).wait_for_publish(5)
    hub.publish("fh/dev-c/down/cmd", b'{"cmd_id": "y"}', qos=1).wait_for_publish(5)
    wait_for(lambda: "fh/dev-c/down/cmd" in hub_cmds, 5, "hub command to dev-c")
    assert ("A saw", "fh/dev-b/down/cmd") not in hub_cmds
    # a wrong password and anonymous clients are refused at connect
    with pytest.raises(ConnectionRefusedError):
        client(broker, "dev-a", pw_a + "x")
    with pytest.raises(ConnectionRefusedError):
        client(broker, None, None)
    for cl in (hub, a, c):
        cl.disconnect()
        cl.loop_stop()


def _hub(broker: ProvisionedBroker, **extra: str) -> Hub:
    cfg = load_config(broker.config, extra, env={})
    hub = Hub(cfg)
    hub.start()
    wait_for(lambda: hub.components[-1].connected, 10, "hub connected")
    return hub


def test_ingest_quarantine_readmit_clock_and_presence(broker: ProvisionedBroker) -> None:
    pw = broker.provision("rg-1")
    broker.provision("wl-1", "water_level")
    broker.start()
    hub = _hub(broker)
    mq = hub.components[-1]
    try:
        dev = client(broker, "rg-1", pw, cid="rg-1", v5=False)
        now_ms = int(time.time() * 1000)
        msgs = [
            ("fh/rg-1/up/telemetry", {"seq": 1, "ts": now_ms, "fields": {"rain_mm": 1.0}}),
            ("fh/rg-1/up/telemetry", {"seq": 1, "ts": now_ms, "fields": {"rain_mm": 1.0}}),  # duplicate
            ("fh/rg-1/up/telemetry", {"seq": 2, "ts": now_ms - 7200_000, "fields": {"rain_mm": 2.0}}),  # clock
            ("fh/rg-1/up/telemetry", {"seq": 3, "fields": {"rain_mm": -5}}),  # out of range
            ("fh/rg-1/up/alarm", {"seq": 4, "ts": now_ms, "alarm": "gauge blocked", "severity": "minor"}),
        ]
        for topic, body in msgs:
            dev.publish(topic, orjson.dumps(body), qos=1).wait_for_publish(5)
        wait_for(lambda: mq.stats["received"] >= 5, 10, "5 messages at the hub")
        wait_for(lambda: len(mqtt_records(broker.data)) >= 3, 10, "records in the store")
        rows = sorted(mqtt_records(broker.data))
        assert rows == [("rg-1", 1, "rain_gauge"), ("rg-1", 2, "rain_gauge"), ("rg-1", 4, "alarm")]
        assert mq.stats["duplicates"] == 1 and mq.stats["clock_suspect"] == 1
        q = quarantined(broker.data)
        assert [(d, r) for _, d, r in q] == [("rg-1", "field rain_mm=-5 out of range [0, 2000]")]
        from fieldhub.sinks.store import LocalStore

        store = LocalStore(broker.data / "store.db", readonly=True)
        skewed = next(r for r in store.query("rain_gauge") if r.fields["seq"] == 2)
        assert skewed.tags["clock"] == "suspect" and skewed.fields["clock_skew_s"] < -7000
        assert abs(skewed.fields["hub_rx_ns"] - time.time_ns()) < 60e9
        alarm = next(store.query("alarm"))
        assert alarm.priority == Priority.ALARM and alarm.fields["alarm"] == "gauge blocked"

        # unknown device: quarantined as such, re-admitted once registered (hub running)
        pw9 = broker.provision("rg-9x")  # a broker account, but not (any more) in the registry
        run_cli("devices", "remove", "rg-9x", "--config", str(broker.config), check=True)
        broker.reload()
        unknown = client(broker, "rg-9x", pw9, cid="rg-9x")
        unknown.publish("fh/rg-9x/up/telemetry", orjson.dumps({"seq": 1, "ts": now_ms,
                                                               "fields": {"rain_mm": 3.0}}),
                        qos=1).wait_for_publish(5)
        wait_for(lambda: mq.stats["unknown_device"] == 1, 10, "unknown device quarantined")
        listed = orjson.loads(run_cli("quarantine", "list", "--json", "--config", str(broker.config),
                                      check=True).stdout)
        assert {(i["device_id"], i["reason"]) for i in listed} >= {("rg-9x", "unknown device")}
        before = run_cli("quarantine", "readmit", "--reason", "unknown device", "--json",
                         "--config", str(broker.config), check=True)
        assert orjson.loads(before.stdout)["readmitted"] == 0  # still unknown: stays held
        run_cli("devices", "add", "rg-9x", "--kind", "rain_gauge", "--admin-code", "420102001001",
                "--config", str(broker.config), check=True)
        res = orjson.loads(run_cli("quarantine", "readmit", "--reason", "unknown device", "--json",
                                   "--config", str(broker.config), check=True).stdout)
        assert res["readmitted"] == 1 and res["records_added"] == 1
        wait_for(lambda: ("rg-9x", 1, "rain_gauge") in mqtt_records(broker.data), 10, "readmitted record")
        held = orjson.loads(run_cli("quarantine", "list", "--json", "--config", str(broker.config),
                                    check=True).stdout)
        assert "rg-9x" not in {i["device_id"] for i in held}

        status = hub.live_status()["components"]["mqtt"]
        assert status["quarantined"] == 2 and status["unknown_device"] == 1
        unknown.disconnect()
        unknown.loop_stop()
        dev.disconnect()
        dev.loop_stop()
    finally:
        hub.stop()


def test_presence_timeout_raises_alarm(broker: ProvisionedBroker) -> None:
    pw = broker.provision("hh-1", "handheld")
    broker.start()
    hub = _hub(broker, **{"mqtt.offline_after": {"handheld": "1s", "default": "1h"}})
    mq = hub.components[-1]
    try:
        c = client(broker, "hh-1", pw, cid="hh-1")
        c.publish("fh/hh-1/up/position", orjson.dumps({"seq": 1, "fields": {"lat": 30.5, "lon": 114.3}}),
                  qos=1).wait_for_publish(5)
        wait_for(lambda: mq.presence.summary()["online"] == 1, 10, "online")
        wait_for(lambda: mq.stats["offline_alarms"] == 1, 10, "offline after the 1 s handheld timeout")
        rep = mq.presence_report()
        hh = next(d for d in rep["devices"] if d["device_id"] == "hh-1")
        assert hh["online"] is False and hh["reason"] == "timeout" and hh["timeout_s"] == 1.0
        c.publish("fh/hh-1/up/position", orjson.dumps({"seq": 2, "fields": {"lat": 30.5, "lon": 114.3}}),
                  qos=1).wait_for_publish(5)
        wait_for(lambda: mq.presence.summary()["online"] == 1, 10, "back online")
        c.disconnect()
        c.loop_stop()
    finally:
        hub.stop()
    from fieldhub.sinks.store import LocalStore

    recs = list(LocalStore(broker.data / "store.db", readonly=True).query("presence", device="hh-1"))
    assert [r.fields["online"] for r in recs] == [True, False, True]
    assert recs[1].priority == Priority.ALARM and recs[1].fields["reason"] == "timeout"


def test_hub_queue_survives_hub_absence(broker: ProvisionedBroker) -> None:
    """Messages published while the hub is down are delivered when it returns (persistent session)."""
    pw = broker.provision("rg-q")
    broker.start()
    hub = _hub(broker)
    hub.stop()
    c = client(broker, "rg-q", pw, cid="rg-q")
    for seq in range(1, 1501):  # more than Mosquitto's default max_queued_messages 1000
        c.publish("fh/rg-q/up/telemetry", orjson.dumps({"seq": seq, "fields": {"rain_mm": 0.1}}), qos=1)
    wait_for(lambda: len(c._out_messages) == 0, 20, "PUBACKs")
    c.disconnect()
    c.loop_stop()
    broker.broker.restart()  # and a broker restart on top: persistence keeps the queue
    hub = _hub(broker)
    try:
        wait_for(lambda: len(mqtt_records(broker.data)) == 1500, 30, "all 1500 queued messages")
    finally:
        hub.stop()
    assert sorted(s for _, s, _ in mqtt_records(broker.data)) == list(range(1, 1501))


def test_last_will_marks_offline_with_alarm(broker: ProvisionedBroker) -> None:
    pw = broker.provision("wl-7", "water_level")
    broker.start()
    hub = _hub(broker, **{"mqtt.offline_after": {"default": "1h"}})
    mq = hub.components[-1]
    try:
        import paho.mqtt.client as mqtt

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="wl-7")
        c.username_pw_set("wl-7", pw)
        c.will_set("fh/wl-7/up/status", b'{"online": false}', qos=1)
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        c.publish("fh/wl-7/up/telemetry", orjson.dumps({"seq": 1, "fields": {"level_m": 3.2}}),
                  qos=1).wait_for_publish(5)
        wait_for(lambda: mq.presence.summary()["online"] == 1, 10, "online")
        pres = orjson.loads(run_cli("presence", "--json", "--config", str(broker.config), check=True).stdout)
        assert [(d["device_id"], d["online"]) for d in pres["devices"]] == [("wl-7", True)]
        c.loop_stop()
        c.socket().close()  # no DISCONNECT packet: the broker publishes the will
        wait_for(lambda: mq.stats["wills"] == 1, 15, "the last will at the hub")
        pres = orjson.loads(run_cli("presence", "--json", "--offline", "--config", str(broker.config),
                                    check=True).stdout)
        assert [(d["device_id"], d["reason"]) for d in pres["devices"]] == [("wl-7", "last_will")]
        assert hub.live_status()["components"]["mqtt"]["detail"]["presence"] == {"online": 0, "offline": 1}
    finally:
        hub.stop()
    from fieldhub.sinks.store import LocalStore

    recs = list(LocalStore(broker.data / "store.db", readonly=True).query("presence", device="wl-7"))
    assert [(r.fields["online"], r.fields["reason"], r.priority) for r in recs] == [
        (True, "message", Priority.TELEMETRY), (False, "last_will", Priority.ALARM)]


def test_dedupe_survives_log_compaction_and_restart(broker: ProvisionedBroker) -> None:
    pw = broker.provision("rg-d")
    broker.start()
    body = orjson.dumps({"seq": 41, "ts": int(time.time() * 1000), "fields": {"rain_mm": 2.5}})
    dev = client(broker, "rg-d", pw, cid="rg-d")
    for attempt in range(2):  # second time: a fresh hub process state, same data dir
        hub = _hub(broker)
        mq = hub.components[-1]
        try:
            if attempt == 0:
                dev.publish("fh/rg-d/up/telemetry", body, qos=1).wait_for_publish(5)
                wait_for(lambda: ("rg-d", 41, "rain_gauge") in mqtt_records(broker.data), 10, "stored")
                hub.log.compact()
                wait_for(lambda: not [e for e in hub.log.view().read({}, 100_000)
                                      if e.record.device_id == "rg-d" and e.record.kind != "presence"],
                         15, "the record compacted out of the log")
                wait_for(lambda: mq.state_lookup("rg-d", 41) is not None, 5, "dedupe table written")
            appended = hub.log.stats["appended"]
            dev.publish("fh/rg-d/up/telemetry", body, qos=1).wait_for_publish(5)  # a device re-send
            wait_for(lambda: mq.stats["duplicates"] == 1, 10, "duplicate recognised")
            assert hub.log.stats["appended"] == appended  # not appended again
            if attempt == 1:
                changed = orjson.dumps({"seq": 41, "fields": {"rain_mm": 9.9}})
                dev.publish("fh/rg-d/up/telemetry", changed, qos=1).wait_for_publish(5)
                wait_for(lambda: mq.stats["quarantined"] == 1, 10, "reused seq quarantined")
        finally:
            hub.stop()
    assert [r for _, _, r in quarantined(broker.data)] == [
        "seq 41 reused with different content (device counter reset?)"]
    assert [s for d, s, _ in mqtt_records(broker.data) if d == "rg-d"] == [41]
    dev.disconnect()
    dev.loop_stop()

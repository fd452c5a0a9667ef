"""Device ↔ vehicle broker: on a real Mosquitto from `provision broker-config`, a device with valid
credentials cannot take the hub's client id (and wipe its queued session) or another device's
client id (and kick it off, raising a false offline alarm from its will)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fieldhub.hub import Hub, load_config
from fieldhub.sinks.store import LocalStore
from tests.mqtt_util import ProvisionedBroker, mqtt_records, wait_for

pytestmark = pytest.mark.broker


@pytest.fixture
def broker(tmp_path: Path):
    b = ProvisionedBroker(tmp_path)
    yield b
    b.stop()


def _hub(broker: ProvisionedBroker) -> tuple[Hub, Any]:
    hub = Hub(load_config(broker.config, {"mqtt.offline_after": {"default": "1h"}}, env={}))
    hub.start()
    mq = next(c for c in hub.components if c.name == "mqtt")
    wait_for(lambda: mq.connected, 10, "hub connected")
    return hub, mq


def _device(broker: ProvisionedBroker, user: str, password: str, cid: str, *, clean: bool = True,
            will: bool = False) -> tuple[mqtt.Client, dict[str, Any]]:
    """A device's paho client (MQTT 5), connected; ``seen`` records CONNACK and any disconnect."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
    c.username_pw_set(user, password)
    if will:
        c.will_set(f"fh/{user}/up/status", b'{"online": false}', qos=1)
    seen: dict[str, Any] = {"disconnects": 0}

    def on_connect(cl, ud, flags, reason, props) -> None:
        seen["reason"] = reason

    def on_disconnect(cl, ud, flags, reason, props) -> None:
        seen["disconnects"] += 1

    c.on_connect, c.on_disconnect = on_connect, on_disconnect
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    c.connect("127.0.0.1", broker.port, clean_start=clean, properties=props)
    c.loop_start()
    wait_for(lambda: "reason" in seen, 10, f"CONNACK for {user} as {cid}")
    assert not seen["reason"].is_failure, seen["reason"]
    return c, seen


def _close(c: mqtt.Client) -> None:
    c.disconnect()
    c.loop_stop()


def test_config_ties_client_ids_to_usernames(broker: ProvisionedBroker) -> None:
    conf = (broker.dir / "mosquitto.conf").read_text().splitlines()
    assert "use_username_as_clientid true" in conf


def test_device_cannot_wipe_hub_session_or_kick_another_device(broker: ProvisionedBroker) -> None:
    pw_a, pw_b = broker.provision("rg-a"), broker.provision("rg-b")
    broker.start()
    hub, mq = _hub(broker)
    hub_id = hub.config.hub.id
    try:
        # rg-a online, with a last will; rg-b (valid credentials) connects with rg-a's client id
        a, a_seen = _device(broker, "rg-a", pw_a, "rg-a", will=True)
        a.publish("fh/rg-a/up/telemetry", orjson.dumps({"seq": 1, "fields": {"rain_mm": 0.1}}),
                  qos=1).wait_for_publish(5)
        wait_for(lambda: len(mqtt_records(broker.data)) == 1, 15, "rg-a's first message stored")
        b, _ = _device(broker, "rg-b", pw_b, "rg-a")
        a.publish("fh/rg-a/up/telemetry", orjson.dumps({"seq": 2, "fields": {"rain_mm": 0.2}}),
                  qos=1).wait_for_publish(5)
        wait_for(lambda: len(mqtt_records(broker.data)) == 2, 15, "rg-a's second message stored")
        _close(b)
        time.sleep(0.5)  # a will, if the broker had published one, reaches the hub well within this
        assert a_seen["disconnects"] == 0, "rg-b's connection kicked rg-a off the broker"
        assert mq.stats["wills"] == 0 and mq.stats["offline_alarms"] == 0
    finally:
        hub.stop()
    # the hub away: rg-a queues 50 messages for it, then rg-b tries the hub's client ids with clean start
    for seq in range(3, 53):
        a.publish("fh/rg-a/up/telemetry", orjson.dumps({"seq": seq, "fields": {"rain_mm": 0.1}}), qos=1)
    wait_for(lambda: len(a._out_messages) == 0, 20, "PUBACKs for the queued messages")
    for cid in (f"fieldhub-{hub_id}", "fieldhub"):
        b, _ = _device(broker, "rg-b", pw_b, cid, clean=True)
        _close(b)
    assert a_seen["disconnects"] == 0
    _close(a)
    hub, mq = _hub(broker)
    try:
        wait_for(lambda: len(mqtt_records(broker.data)) == 52, 20, "all 50 messages queued for the hub")
    finally:
        hub.stop()
    assert sorted(s for d, s, _ in mqtt_records(broker.data) if d == "rg-a") == list(range(1, 53))
    recs = list(LocalStore(broker.data / "store.db", readonly=True).query("presence", device="rg-a"))
    assert [r.fields["online"] for r in recs] == [True], "a false offline alarm for rg-a"


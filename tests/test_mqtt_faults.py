"""Faults with real parts: kill -9 of the hub and a broker restart under load; fuzzed payloads."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fieldhub.core.log import DurableLog
from fieldhub.hub import Hub, load_config
from tests.mqtt_util import HubProcess, ProvisionedBroker, client, mqtt_records, quarantined, sim_process, wait_for

pytestmark = pytest.mark.broker


def test_kill9_hub_and_broker_restart_every_message_exactly_once(tmp_path: Path) -> None:
    b = ProvisionedBroker(tmp_path)
    creds = b.fleet(20)
    b.start()
    # an extra consumer that never reads: the log keeps every record, so we can count appends too
    log = DurableLog(b.data / "log.db")
    log.register_consumer("audit")
    log.close()
    hub = HubProcess(b.config, tmp_path / "hub.log")
    hub.start()
    hub.wait_ready()
    sim = sim_process(b, creds, "--devices", "20", "--rate", "25", "--seconds", "14", "--duplicates", "0.02")
    try:
        for _ in range(3):
            time.sleep(2.5)
            hub.kill9()
            time.sleep(0.3)
            hub.start()
            hub.wait_ready()
        time.sleep(1.0)
        b.broker.restart()  # persistence on: queued and in-flight messages survive
        out, err = sim.communicate(timeout=180)
        assert sim.returncode == 0, err.decode()
        res = orjson.loads(out)
        assert res["unacked"] == 0 and res["dropped"] == 0 and res["refused"] == 0
        expected = sorted((dev, s) for dev, n in res["last_seq"].items() for s in range(1, n + 1))
        assert len(expected) == res["valid"] > 3000
        wait_for(lambda: len(mqtt_records(b.data)) >= len(expected), 90, "every message in the store")
    finally:
        hub.stop()
        if sim.poll() is None:
            sim.kill()
        b.stop()
    got = sorted((d, s) for d, s, _ in mqtt_records(b.data))
    assert got == expected  # every (device_id, seq) exactly once in the local store
    # and exactly once in the log itself, despite redeliveries after each kill -9
    log = DurableLog(b.data / "log.db")
    try:
        cur = log.cursor("audit")
        appended: Counter = Counter()
        while entries := cur.read(5000):
            appended.update((e.record.device_id, e.record.fields["seq"]) for e in entries
                            if e.record.source == "mqtt" and e.record.kind != "presence")
            cur.commit(entries)
    finally:
        log.close()
    assert sorted(appended) == expected and set(appended.values()) == {1}
    assert "Traceback" not in (tmp_path / "hub.log").read_text()


NASTY: list[tuple[str, bytes]] = [
    ("telemetry", b"\xff\xfe\x00garbage"),
    ("telemetry", b'{"seq": 1, "fields": {"rain_mm": NaN}}'),
    ("telemetry", b'{"seq": 1e400, "fields": {"a": 1}}'),
    ("telemetry", b'{"seq": 18446744073709551616, "fields": {"a": 1}}'),
    ("telemetry", b"[" * 100_000 + b"]" * 100_000),
    ("telemetry", b'{"a":' * 20_000 + b"1" + b"}" * 20_000),
    ("telemetry", b"{" + b" " * 200_000 + b"}"),  # larger than the hub's max_payload
    ("telemetry", orjson.dumps({"seq": 5, "fields": {"雨量": 1}})),
    ("telemetry", orjson.dumps({"seq": 6, "fields": {"note": "x" * 5000}})),
    ("telemetry", orjson.dumps({"seq": 7, "fields": {f"f{i}": i for i in range(500)}})),
    ("telemetry", orjson.dumps({"seq": 8, "fields": None})),
    ("telemetry", orjson.dumps({"seq": "8", "fields": {"a": 1}})),
    ("position", orjson.dumps({"seq": 9, "fields": {"lat": "north", "lon": 0}})),
    ("alarm", orjson.dumps({"seq": 10, "alarm": {"nested": True}})),
    ("ack", orjson.dumps({"seq": 11, "cmd_id": 7, "result": "ok"})),
    ("status", b'{"online": true}'),
    ("telemetry", "{\"seq\": 12, \"fields\": {\"t\": \"\ud800\"}}".encode("utf-8", "surrogatepass")),
    ("telemetry", b"\xa1\x61\x73\x1b\xff\xff\xff\xff\xff\xff\xff\xff"),  # CBOR, seq out of range
    ("telemetry", b"\x9f" * 50_000),  # deeply nested indefinite CBOR arrays
]

payloads = st.one_of(
    st.binary(max_size=2000),
    st.text(max_size=500).map(lambda s: s.encode()),
    st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
                 | st.text(max_size=30),
                 lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
                 max_leaves=30).map(lambda v: orjson.dumps({"seq": v} if not isinstance(v, dict) else v)),
)


@settings(max_examples=2, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(fuzz=st.lists(st.tuples(st.sampled_from(["telemetry", "status", "position", "alarm", "ack"]),
                               payloads), min_size=60, max_size=60))
def test_fuzzed_payloads_never_crash_or_stall_and_are_quarantined_with_a_reason(tmp_path_factory, fuzz) -> None:
    tmp = tmp_path_factory.mktemp("fuzz")
    b = ProvisionedBroker(tmp)
    pw = b.provision("fz-1")
    b.start()
    hub = Hub(load_config(b.config, {}, env={}))
    hub.start()
    mq = hub.components[-1]
    try:
        wait_for(lambda: mq.connected, 10, "hub connected")
        dev = client(b, "fz-1", pw, cid="fz-1")
        cases = NASTY + fuzz
        random.Random(0).shuffle(cases)
        for channel, payload in cases:
            dev.publish(f"fh/fz-1/up/{channel}", payload, qos=1)
        dev.publish("fh/fz-1/up/telemetry", orjson.dumps({"seq": 10**12, "fields": {"rain_mm": 1}}), qos=1)
        n = len(cases) + 1
        wait_for(lambda: mq.stats["received"] == n, 30, f"{n} messages at the hub")
        wait_for(lambda: mq.acks.pending() == 0, 10, "everything durable and acked")
        assert mq._worker.alive
        s = mq.stats
        assert s["stored"] - 1 + s["quarantined"] + s["duplicates"] >= n  # +1: the presence record
        wait_for(lambda: ("fz-1", 10**12, "rain_gauge") in mqtt_records(b.data), 10,
                 "the valid message after the fuzz")
        held = quarantined(b.data)
        assert len(held) == s["quarantined"] >= len(NASTY) - 1
        assert all(reason and dev_id == "fz-1" for _, dev_id, reason in held)
        stored = len(mqtt_records(b.data))
        assert stored + len(held) + s["duplicates"] == n
        dev.disconnect()
        dev.loop_stop()
    finally:
        hub.stop()
        b.stop()

"""MQTT ingest rate (QoS 1, durable, deduped, acked after commit) beside a bare paho subscriber.

Run: .venv/bin/python bench/bench_mqtt_ingest.py [--messages 60000] [--rounds 2] [--latency-seconds 10]

Same broker (a private Mosquitto), same run. Both sides drain a persistent-session queue that
C publishers (mosquitto_pub) preloaded while they were away, so the publisher's speed does not
cap either side. The bare side is a paho-mqtt 2.x MQTT 5 client, QoS 1, auto-ack, doing
nothing with the message. The hub side is the whole hub (MqttIngest + durable log with
synchronous=FULL group commit): every message is parsed, validated, deduped, committed, then
acknowledged; it is measured alone ("ingest") and with the local-store consumer running beside
it in the same process ("with store", what a vehicle runs). Then `fieldhub sim village` (a
separate process, real QoS 1 clients) publishes at half the measured hub rate and the hub
records receive-to-durable latency per message.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fieldhub.core.datadir import REGISTRY_FILE
from fieldhub.core.registry import Device, Registry  # noqa: E402
from fieldhub.hub import Hub, load_config  # noqa: E402
from fieldhub.sources.mqtt.mosquitto import Mosquitto  # noqa: E402
from simulators.village import fleet_ids  # noqa: E402

PUBLISHERS = 4
RECEIVE_MAX = 2000


def preload(broker: Mosquitto, n: int, tag: str) -> None:
    """n QoS 1 messages from PUBLISHERS devices via mosquitto_pub -l (<= 50,000 lines each)."""
    per = n // PUBLISHERS
    ts = int(time.time() * 1000)
    procs = []
    for p in range(PUBLISHERS):
        dev = f"b-{tag}-{p}"
        lines = b"".join(orjson.dumps({"seq": i, "ts": ts, "fields": {"rain_mm": 1.5, "battery_pct": 88.0,
                                                                     "run": tag}}) + b"\n"
                         for i in range(per))
        proc = subprocess.Popen(["mosquitto_pub", "-p", str(broker.port), "-h", "127.0.0.1", "-q", "1",
                                 "-t", f"fh/{dev}/up/telemetry", "-l", "-i", f"pub-{tag}-{p}"],
                                stdin=subprocess.PIPE)
        procs.append((proc, lines))
    for proc, lines in procs:
        proc.communicate(lines, timeout=300)


def end_session(port: int, cid: str) -> None:
    """Remove a persistent session, so it does not keep collecting the next runs' messages."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", port, clean_start=True)
    c.loop_start()
    time.sleep(0.2)
    c.disconnect()
    c.loop_stop()


def bare_session(port: int, cid: str) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = RECEIVE_MAX
    c.connect("127.0.0.1", port, clean_start=False, properties=props)
    return c


def bare_rate(broker: Mosquitto, n: int, round_no: int) -> float:
    cid = f"bare-{round_no}"
    c = bare_session(broker.port, cid)
    c.subscribe("fh/+/up/#", qos=1)
    c.loop_start()
    time.sleep(0.5)
    c.disconnect()
    c.loop_stop()
    per = (n // PUBLISHERS) * PUBLISHERS
    preload(broker, n, f"bare{round_no}")
    got = [0]
    done = threading.Event()

    def on_message(cl, ud, msg) -> None:
        got[0] += 1
        if got[0] >= per:
            done.set()

    c = bare_session(broker.port, cid)
    c.on_message = on_message
    t = time.perf_counter()
    c.loop_start()
    done.wait(300)
    elapsed = time.perf_counter() - t
    c.disconnect()
    c.loop_stop()
    end_session(broker.port, cid)
    return got[0] / elapsed


def make_hub(broker: Mosquitto, data: Path, store: bool = True, cid: str = "bench-hub") -> Hub:
    cfg = load_config(None, {"hub.data_dir": str(data), "mqtt.broker": broker.url, "store.enabled": store,
                                "mqtt.receive_maximum": RECEIVE_MAX, "mqtt.client_id": cid}, env={})
    return Hub(cfg)


def hub_rate(broker: Mosquitto, n: int, round_no: int, work: Path, store: bool) -> float:
    tag = f"hub{round_no}{'s' if store else 'i'}"
    data, cid = work / tag, f"bench-{tag}"
    reg = Registry(data / REGISTRY_FILE)
    for p in range(PUBLISHERS):
        reg.add(Device(f"b-{tag}-{p}", "rain_gauge", "420102001001"))
    reg.close()
    hub = make_hub(broker, data, store, cid)
    hub.start()
    mq = hub.components[-1]
    _wait(lambda: mq.connected, 10)
    time.sleep(0.5)
    hub.stop()
    per = (n // PUBLISHERS) * PUBLISHERS
    preload(broker, n, tag)
    hub = make_hub(broker, data, store, cid)
    mq = hub.components[-1]
    t = time.perf_counter()
    hub.start()
    # every message durable (+1 presence record per device) and acknowledged
    _wait(lambda: mq.stats["stored"] >= per + PUBLISHERS and mq.acks.pending() == 0, 300)
    elapsed = time.perf_counter() - t
    stats = dict(mq.stats)
    hub.stop()
    end_session(broker.port, cid)
    print(f"  hub (store={store}): {stats}", file=sys.stderr, flush=True)
    return per / elapsed


def latency(broker: Mosquitto, rate: float, seconds: float, work: Path, store: bool) -> dict:
    data = work / f"lat-{store}"
    devices = 40
    reg = Registry(data / REGISTRY_FILE)
    for dev_id, kind in fleet_ids(devices, "lat"):
        reg.add(Device(dev_id, kind, "420102001001"))
    reg.close()
    hub = make_hub(broker, data, store=store, cid=f"bench-lat-{store}")
    mq = hub.components[-1]
    hub.start()
    _wait(lambda: mq.connected, 10)
    mq.latencies = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "cli", "sim", "village", "--broker", broker.url,
                          "--devices", str(devices), "--prefix", "lat", "--rate", f"{rate / devices:.3f}",
                          "--seconds", str(seconds), "--json"], cwd=ROOT, env=env, capture_output=True,
                         check=True, timeout=seconds + 120)
    sim = orjson.loads(out.stdout)
    _wait(lambda: mq.acks.pending() == 0 and len(mq._inbox) == 0, 30)
    lat = sorted(mq.latencies)
    hub.stop()
    end_session(broker.port, f"bench-lat-{store}")
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000  # noqa: E731
    return {"offered_msg_s": rate, "achieved_msg_s": sim["rate_msg_s"], "messages": len(lat),
            "p50_ms": round(q(0.50), 1), "p99_ms": round(q(0.99), 1), "max_ms": round(lat[-1] * 1000, 1)}


def _wait(cond, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.01)
    raise TimeoutError("benchmark step timed out")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=60000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--latency-seconds", type=float, default=10.0)
    args = ap.parse_args()
    if not shutil.which("mosquitto_pub"):
        sys.exit("needs mosquitto_pub (Debian: mosquitto-clients)")
    work = Path(tempfile.mkdtemp(prefix="fh-bench-mqtt-"))
    broker = Mosquitto(work / "broker").start()
    try:
        bare, ingest, full = [], [], []
        for r in range(args.rounds):
            bare.append(bare_rate(broker, args.messages, r))
            ingest.append(hub_rate(broker, args.messages, r, work, store=False))
            full.append(hub_rate(broker, args.messages, r, work, store=True))
            print(f"round {r + 1}: bare paho {bare[-1]:,.0f} msg/s, hub ingest {ingest[-1]:,.0f} msg/s, "
                  f"hub with local store {full[-1]:,.0f} msg/s", flush=True)
        # other work on a shared machine moves both sides; the ratio within a round is what holds
        ri = [x / y for x, y in zip(ingest, bare)]
        rh = [x / y for x, y in zip(full, bare)]
        lat_i = latency(broker, statistics.median(ingest) / 2, args.latency_seconds, work, store=False)
        lat_h = latency(broker, statistics.median(full) / 2, args.latency_seconds, work, store=True)
        result = {"messages": args.messages, "rounds": args.rounds,
                  "bare_paho_msg_s": [round(x) for x in bare],
                  "hub_ingest_msg_s": [round(x) for x in ingest],
                  "hub_with_store_msg_s": [round(x) for x in full],
                  "ingest_ratio_median": round(statistics.median(ri), 3),
                  "with_store_ratio_median": round(statistics.median(rh), 3),
                  "latency_at_half_rate_ingest": lat_i,
                  "latency_at_half_rate_with_store": lat_h,
                  "load_average_1m": os.getloadavg()[0]}
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

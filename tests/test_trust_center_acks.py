"""Issue 12, finding 1: a forged ack on the center broker cannot move the uplink cursor or lose the backlog.

Real Mosquitto brokers, a real uplink, a real ``fieldhub center run`` process. The forger has
what any client of the center broker has: it can publish on ``fh/hub/<id>/ack`` and read the
uplink topic (so it knows real batch ids and ranges).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fieldhub.core.log import DurableLog
from fieldhub.core.oplog import OpLog
from fieldhub.core.records import Priority
from fieldhub.sinks.store import LocalStore
from fieldhub.sources.mqtt.mosquitto import stop_process
from fieldhub.uplink.codec import decode_batch
from fieldhub.uplink.config import LinkConfig, UplinkConfig
from fieldhub.uplink.sender import Uplink
from tests import uplink_hubproc as hubproc
from tests.conftest import ROOT, fieldhub_cmd
from tests.mqtt_util import wait_for

HUB = "vehicle-21"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def client(port: int, name: str) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def publish(c: mqtt.Client, topic: str, payload: object) -> None:
    data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    c.publish(topic, data, qos=1).wait_for_publish(5)


def center_ids(center_dir: Path) -> set[str]:
    path = center_dir / "store.db"
    if not path.exists():
        return set()
    store = LocalStore(path, readonly=True)
    try:
        return {r.id for r in store.query()}
    finally:
        store.close()


def test_forged_acks_move_nothing_and_the_backlog_reaches_the_center(tmp_path: Path, mosquitto_factory) -> None:
    main, other = mosquitto_factory(), mosquitto_factory()
    log = DurableLog(tmp_path / "hub" / "log.db")
    recs = [hubproc.record(i) for i in range(3000)]
    log.append(recs)
    cfg = UplinkConfig(enabled=True, batch_records=500, window=2, ack_timeout=3, probe_interval=0.5, links=[
        LinkConfig(name="sat", url=main.url, bandwidth="2mbit", latency=0.01, cost=1),
        LinkConfig(name="cell", url=other.url, bandwidth="2mbit", latency=0.01, cost=5)])
    oplog = OpLog(tmp_path / "oplog.jsonl")
    seen: list = []
    spy = client(main.port, "spy")
    spy.on_message = lambda c, u, m: seen.append(decode_batch(m.payload))
    spy.subscribe(f"fh/hub/{HUB}/uplink", qos=1)
    forger_main, forger_other = client(main.port, "forger"), client(other.port, "forger2")
    up = Uplink(log, cfg, HUB, oplog)
    center = None
    try:
        up.start()
        wait_for(lambda: len(seen) >= 2, timeout=20, what="batches on the center broker")
        real = seen[0]
        ack = f"fh/hub/{HUB}/ack"
        everything = {str(int(p)): [0, 10 ** 12] for p in Priority}
        forged = [
            {"hub": HUB, "ranges": everything},                                   # the finding's payload
            {"hub": HUB, "batch": real.batch_id, "ranges": everything},           # a real batch, inflated
            {"hub": HUB, "batch": real.batch_id + 1_000_000, "ranges": everything},  # never sent
            {"hub": HUB, "batch": (real.batch_id ^ (1 << 40)), "ranges": everything},  # another run's
            {"hub": "vehicle-99", "batch": real.batch_id, "ranges": everything},  # another hub's
            b"\xff not json", [1, 2], {"hub": HUB, "batch": "x", "ranges": []},
        ]
        for f in forged:
            publish(forger_main, ack, f)
        # the exact ack of a real batch, but on a link it was never sent on
        publish(forger_other, ack, {"hub": HUB, "batch": real.batch_id,
                                    "ranges": {str(p): list(r) for p, r in real.ranges.items()}})
        wait_for(lambda: up.stats["acks_ignored"] >= len(forged) and up.stats["acks_other_link"] >= 1,
                 timeout=10, what="every forged ack counted")
        assert all(pos == 0 for pos in up.committed.values()), up.committed
        assert all(pos == 0 for pos in log.positions("uplink").values())
        assert up.status()["backlog_total"] == len(recs)  # nothing lost to the log's compaction
        warnings = [e for e in oplog.recent if e["event"] == "uplink_ack_ignored"]
        assert len(warnings) == 1 and warnings[0]["level"] == "warning"  # rate-limited: one line, counted
        assert "forged" in warnings[0]["message"] and "伪造" in warnings[0]["message_zh"]
        # a genuine center now stores everything and its acks (bound to what was sent) empty the backlog
        center_dir = tmp_path / "center"
        center = subprocess.Popen(fieldhub_cmd("center", "run", "--broker", main.url, "--data-dir",
                                               str(center_dir), "--worker", "c1"),
                                  cwd=ROOT, env=ENV, stderr=subprocess.PIPE, text=True)
        assert center.stderr is not None and "center worker" in center.stderr.readline()
        wait_for(lambda: up.status()["backlog_total"] == 0, timeout=60, what="the backlog acknowledged")
        assert center_ids(center_dir) == {r.id for r in recs}
    finally:
        up.stop()
        log.close()
        for c in (spy, forger_main, forger_other):
            c.loop_stop()
            c.disconnect()
        if center is not None:
            stop_process(center, 15)

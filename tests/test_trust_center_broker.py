"""Issue 12, finding 6: no hub can write as another.

A real Mosquitto runs with the config `fieldhub provision center-broker` writes; a real
`fieldhub center run` logs in with its worker account. A hub with valid credentials of its
own (vehicle-02) tries to file a "dam breach" alarm as vehicle-01 — on vehicle-01's topic (the
broker refuses it) and on its own topic naming vehicle-01 (the center rejects it) — and to
forge vehicle-01's acks (the broker never delivers them). Genuine traffic of both hubs is
stored, each under its own hub.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fieldhub.center.worker import HubRegistry
from fieldhub.core.log import DurableLog
from fieldhub.core.records import Priority, Record
from fieldhub.sinks.store import LocalStore
from fieldhub.sources.mqtt.mosquitto import Mosquitto, free_port, stop_process
from fieldhub.uplink.codec import Batch, encode_batch
from fieldhub.uplink.config import LinkConfig, UplinkConfig
from fieldhub.uplink.sender import Uplink
from tests import uplink_hubproc as hubproc
from tests.conftest import ROOT, fieldhub_cmd, run_cli
from tests.mqtt_util import run_as, wait_for


def login(port: int, user: str, password: str | None) -> tuple[mqtt.Client, int]:
    """A connected client (or the broker's refusal code)."""
    got: list[int] = []
    done = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{user}-{time.monotonic_ns()}")
    if user:
        c.username_pw_set(user, password)

    def on_connect(cl, u, flags, rc, props=None) -> None:
        got.append(rc.value)
        done.set()

    c.on_connect = on_connect
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert done.wait(10), "no CONNACK"
    return c, got[0]


def dam_breach(hub: str) -> bytes:
    rec = Record.make("alarm", "dam-sensor-1", hubproc.T0, {"event": "dam breach", "level": 3},
                      priority=Priority.ALARM, source="mqtt")
    return encode_batch(Batch(hub, 1, hubproc.T0, {0: (0, 1)}, [rec], {}))


def test_a_hub_can_write_only_as_itself(tmp_path: Path) -> None:
    port = free_port()
    bdir = tmp_path / "center-broker"
    out = json.loads(run_cli("provision", "center-broker", "--out", str(bdir), "--hub", "vehicle-01", "--hub",
                             "vehicle-02", "--worker", "w1", "--listen", f"127.0.0.1:{port}", "--run-as", run_as(),
                             "--json", check=True).stdout)
    creds = json.loads(Path(out["credentials"]).read_text())
    assert oct(Path(out["credentials"]).stat().st_mode & 0o777) == "0o600"
    assert run_cli("provision", "center-broker", "--out", str(bdir), "--hub", "bad\n").returncode != 0
    broker = Mosquitto(bdir, port=port, conf_file=Path(out["conf"])).start()
    center_dir = tmp_path / "center"
    pw_file = tmp_path / "w1.pass"
    pw_file.write_text(creds["w1"] + "\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    center = subprocess.Popen(fieldhub_cmd("center", "run", "--broker", broker.url, "--data-dir", str(center_dir),
                                           "--worker", "c1", "--username", "w1", "--password-file", str(pw_file)),
                              cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    assert center.stderr is not None and "center worker" in center.stderr.readline()
    ups: list[tuple[Uplink, DurableLog]] = []
    rogue = None
    try:
        _anon, rc = login(port, "", None)
        _anon.loop_stop()
        assert rc != 0  # no anonymous access
        rogue, rc = login(port, "vehicle-02", creds["vehicle-02"])
        assert rc == 0
        wait_for(lambda: (center_dir / "center.db").exists(), timeout=30, what="the center's registry")
        # vehicle-02 as vehicle-01: on its topic (the broker drops it), on its own topic (the center rejects it)
        rogue.publish("fh/hub/vehicle-01/uplink", dam_breach("vehicle-01"), qos=1).wait_for_publish(5)
        registry = HubRegistry(center_dir / "center.db", readonly=True)

        def forged_and_rejected() -> bool:
            # sent again until the center has subscribed (its registry file exists before it does)
            rogue.publish("fh/hub/vehicle-02/uplink", dam_breach("vehicle-01"), qos=1).wait_for_publish(5)
            return registry.rejected_count() >= 1 or (time.sleep(1.0) or registry.rejected_count() >= 1)

        wait_for(forged_and_rejected, timeout=30, what="the batch naming another hub rejected")
        for hub, recs in (("vehicle-01", [hubproc.record(i) for i in range(500)]),
                          ("vehicle-02", [hubproc.alarm(1)])):
            log = DurableLog(tmp_path / hub / "log.db")
            log.append(recs)
            cfg = UplinkConfig(enabled=True, batch_records=200, window=2, ack_timeout=5, probe_interval=0.5, links=[
                LinkConfig(name="ground", url=broker.url, bandwidth="2mbit", latency=0.01, username=hub,
                           password=creds[hub])])
            up = Uplink(log, cfg, hub)
            ups.append((up, log))
            up.start()
        up1 = ups[0][0]
        wait_for(lambda: up1.stats["batches_sent"] >= 1, timeout=20, what="vehicle-01's first batch")
        # vehicle-02 forges vehicle-01's acks: the broker never delivers them
        everything = {str(int(p)): [0, 10 ** 12] for p in Priority}
        for _ in range(3):
            rogue.publish("fh/hub/vehicle-01/ack", orjson.dumps({"hub": "vehicle-01", "batch": 1,
                                                                 "ranges": everything}), qos=1).wait_for_publish(5)
        wait_for(lambda: all(up.status()["backlog_total"] == 0 for up, _ in ups), timeout=60,
                 what="both hubs' genuine batches acknowledged")
        assert up1.stats["acks_ignored"] == 0  # the forged acks never reached vehicle-01
        store = LocalStore(center_dir / "store.db", readonly=True)
        by_hub: dict[str, set[str]] = {}
        for r in store.query():
            by_hub.setdefault(r.tags["hub"], set()).add(r.id)
        store.close()
        breach = Record.make("alarm", "dam-sensor-1", hubproc.T0, {"event": "dam breach"}, source="mqtt").id
        assert by_hub["vehicle-01"] == {hubproc.record(i).id for i in range(500)}  # no dam breach filed as it
        assert by_hub["vehicle-02"] == {hubproc.alarm(1).id} and breach not in by_hub["vehicle-02"]
        rejected = registry._db.execute("SELECT topic, reason FROM rejected").fetchall()
        assert rejected  # every rejection is the forged batch (sent again until the center listened)
        for rej in rejected:
            assert rej[0] == "fh/hub/vehicle-02/uplink" and "vehicle-01" in rej[1]
    finally:
        for up, log in ups:
            up.stop()
            log.close()
        if rogue is not None:
            rogue.loop_stop()
            rogue.disconnect()
        stop_process(center, 15)
        broker.stop()

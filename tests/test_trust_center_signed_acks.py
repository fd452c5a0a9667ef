"""Issue 12, signed acks: only the center holding a hub's ack key can move that hub's uplink.

A real Mosquitto runs with the config `fieldhub provision center-broker` writes, with a real
`fieldhub center run`. The forger holds a center worker account, so the broker lets it read
every hub's batches and publish acks: its forged acks pass every binding check (this run's
batch, exactly the ranges it carried, on the link it went out on) and only the MAC refuses
them. A center whose key file lacks the hub cannot ack it either; the genuine center can.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fieldhub.core.log import DurableLog
from fieldhub.core.oplog import OpLog
from fieldhub.sinks.store import LocalStore
from fieldhub.sources.mqtt.mosquitto import Mosquitto, free_port, stop_process
from fieldhub.uplink import acksign
from fieldhub.uplink.codec import decode_batch
from fieldhub.uplink.config import LinkConfig, UplinkConfig
from fieldhub.uplink.sender import Uplink
from tests import uplink_hubproc as hubproc
from tests.conftest import ROOT, fieldhub_cmd, run_cli
from tests.mqtt_util import run_as, wait_for

HUB, OTHER = "vehicle-31", "vehicle-32"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def center_ids(center_dir: Path, hub: str) -> set[str]:
    path = center_dir / "store.db"
    if not path.exists():
        return set()
    store = LocalStore(path, readonly=True)
    try:
        return {r.id for r in store.query() if r.tags.get("hub") == hub}
    finally:
        store.close()


def start_center(broker: Mosquitto, center_dir: Path, pw_file: Path, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen(fieldhub_cmd("center", "run", "--broker", broker.url, "--data-dir", str(center_dir),
                                         "--worker", "c1", "--username", "w1", "--password-file", str(pw_file),
                                         *extra), cwd=ROOT, env=ENV, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None and "center worker" in proc.stderr.readline()
    return proc


def test_only_acks_signed_with_the_hubs_key_move_its_uplink(tmp_path: Path) -> None:
    port = free_port()
    bdir = tmp_path / "center-broker"
    args = ("provision", "center-broker", "--out", str(bdir), "--hub", HUB, "--hub", OTHER, "--worker", "w1",
            "--worker", "rogue", "--listen", f"127.0.0.1:{port}", "--run-as", run_as(), "--json")
    out = json.loads(run_cli(*args, check=True).stdout)
    keys_file = Path(out["ack_keys"])
    assert oct(keys_file.stat().st_mode & 0o777) == "0o600"
    keys = json.loads(keys_file.read_text())
    assert set(keys) == {HUB, OTHER} and all(len(bytes.fromhex(k)) == 32 for k in keys.values())
    assert keys[HUB] != keys[OTHER]
    assert json.loads(run_cli(*args, check=True).stdout)["new_ack_keys"] == []  # re-running keeps them
    assert json.loads(keys_file.read_text()) == keys
    creds = json.loads(Path(out["credentials"]).read_text())
    broker = Mosquitto(bdir, port=port, conf_file=Path(out["conf"])).start()
    pw_file = tmp_path / "w1.pass"
    pw_file.write_text(creds["w1"] + "\n")
    partial = tmp_path / "partial-keys.json"  # a center that holds OTHER's key only
    partial.write_text(json.dumps({OTHER: keys[OTHER]}))

    seen: list = []
    rogue = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="rogue-worker")
    rogue.username_pw_set("rogue", creds["rogue"])
    rogue.on_message = lambda c, u, m: seen.append(decode_batch(m.payload))
    rogue.on_connect = lambda c, u, f, rc, p=None: c.subscribe("fh/hub/+/uplink", qos=1)
    rogue.connect("127.0.0.1", port)
    rogue.loop_start()
    wait_for(lambda: rogue.is_connected(), timeout=10, what="the rogue worker connected")

    recs = [hubproc.record(i) for i in range(1000)]
    others = [hubproc.alarm(n) for n in range(50)]
    oplog = OpLog(tmp_path / "oplog.jsonl")
    ups: list[tuple[Uplink, DurableLog]] = []
    for hub, hub_recs, key in ((HUB, recs, keys[HUB]), (OTHER, others, "")):  # OTHER runs without a key
        log = DurableLog(tmp_path / hub / "log.db")
        log.append(hub_recs)
        cfg = UplinkConfig(enabled=True, batch_records=250, window=2, ack_timeout=3, probe_interval=0.5,
                           ack_key=key, links=[LinkConfig(name="sat", url=broker.url, bandwidth="2mbit",
                                                          latency=0.01, username=hub, password=creds[hub])])
        ups.append((Uplink(log, cfg, hub, oplog if hub == HUB else None), log))
    up, log = ups[0]
    up_other = ups[1][0]
    centers: list[subprocess.Popen] = []
    try:
        for u, _ in ups:
            u.start()
        wait_for(lambda: any(b.hub_id == HUB for b in seen), timeout=20, what="a batch of the hub")
        real = next(b for b in seen if b.hub_id == HUB)
        body = orjson.dumps({"hub": HUB, "batch": real.batch_id, "stored": len(real.records), "duplicates": 0,
                             "ranges": {str(p): list(r) for p, r in real.ranges.items()}, "worker": "c1"})
        forged = [
            body,                                                        # exact ack, unsigned
            acksign.sign(body, os.urandom(32)),                          # signed with a key of its own
            acksign.sign(body, bytes.fromhex(keys[OTHER])),              # signed with another hub's key
            body[:-1] + b',"mac":"' + b"0" * 64 + b'"}',                 # MAC zeroed
            body[:-1] + b',"mac":"' + acksign.sign(b'{"a":1}', bytes.fromhex(keys[HUB]))[-66:-2] + b'"}',  # borrowed
        ]
        for f in forged:
            rogue.publish(f"fh/hub/{HUB}/ack", f, qos=1).wait_for_publish(5)
        wait_for(lambda: up.stats["acks_bad_mac"] >= len(forged), timeout=10, what="every forged ack refused")
        assert up.stats["acks_ignored"] >= len(forged)
        assert all(pos == 0 for pos in up.committed.values()), up.committed
        assert up.status()["backlog_total"] == len(recs)
        (warning,) = [e for e in oplog.recent if e["event"] == "uplink_ack_ignored"]
        assert "not signed" in warning["message"] and "签名" in warning["message_zh"]

        # a center without the hub's key stores its batches, but its (unsigned) acks move nothing
        centers.append(start_center(broker, tmp_path / "center", pw_file, "--ack-keys", str(partial)))
        wait_for(lambda: center_ids(tmp_path / "center", HUB) == {r.id for r in recs}, timeout=60,
                 what="the hub's records at the center")
        bad = up.stats["acks_bad_mac"]
        wait_for(lambda: up.stats["acks_bad_mac"] >= bad + 2, timeout=20, what="the unkeyed center's acks refused")
        assert all(pos == 0 for pos in up.committed.values()), up.committed
        assert up.status()["backlog_total"] == len(recs)
        center_log = [json.loads(line) for line in (tmp_path / "center" / "center-c1.jsonl").read_text().splitlines()]
        assert any(e["event"] == "center_ack_unsigned" and e.get("hub") == HUB for e in center_log)
        stop_process(centers.pop(), 15)

        # the genuine center signs with the hub's key: the backlog drains (the hub resends what it
        # held, the center finds it stored and acks it); a hub without a key reads signed acks as before
        t0 = time.monotonic()
        centers.append(start_center(broker, tmp_path / "center", pw_file, "--ack-keys", str(keys_file)))
        wait_for(lambda: up.status()["backlog_total"] == 0 and up_other.status()["backlog_total"] == 0,
                 timeout=60, what="both hubs' backlogs acknowledged")
        print(f"signed acks drained {len(recs)} records in {time.monotonic() - t0:.1f} s")
        assert center_ids(tmp_path / "center", HUB) == {r.id for r in recs}
        assert center_ids(tmp_path / "center", OTHER) == {r.id for r in others}
        assert up_other.stats["acks_bad_mac"] == 0 and not up_other.stats["ack_key_set"]
    finally:
        for u, lg in ups:
            u.stop()
            lg.close()
        rogue.loop_stop()
        rogue.disconnect()
        for c in centers:
            stop_process(c, 15)
        broker.stop()


def test_ack_key_is_checked_at_start_and_at_the_center(tmp_path: Path) -> None:
    bad = tmp_path / "keys.json"
    for content, why in (("{}", "at least one hub"), ('{"vehicle-1": "abcd"}', "at least 16"),
                         ('{"vehicle-1": "zz"}', "not hex"), ("not json", "not JSON")):
        bad.write_text(content)
        proc = run_cli("center", "run", "--broker", "mqtt://127.0.0.1:1", "--data-dir", str(tmp_path / "c"),
                       "--ack-keys", str(bad))
        assert proc.returncode != 0 and why in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    cfg = tmp_path / "fieldhub.toml"
    cfg.write_text('[uplink]\nack_key = "abcd"\n')
    proc = run_cli("uplink", "status", "--config", str(cfg))
    assert proc.returncode != 0 and "uplink.ack_key" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr

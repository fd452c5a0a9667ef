"""Issue 12, finding 5: record ids are hub-scoped at the center.

Two vehicles provisioned alike (``provision fleet`` gives every vehicle the same device ids)
send records with identical ids through a real broker to a real ``fieldhub center run``: the
center keeps all of both. A rogue hub that sends another hub's future ids first (with other
values) changes nothing of that hub's records.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import subprocess
from pathlib import Path

from fieldhub.center.worker import CenterStore, HubRegistry
from fieldhub.core.log import DurableLog
from fieldhub.sinks.store import SCHEMA, LocalStore
from fieldhub.sources.mqtt.mosquitto import stop_process
from fieldhub.uplink.config import LinkConfig, UplinkConfig
from fieldhub.uplink.sender import Uplink
from tests import uplink_hubproc as hubproc
from tests.conftest import ROOT, fieldhub_cmd
from tests.mqtt_util import wait_for


def _uplink(tmp: Path, hub: str, url: str, records: list) -> tuple[Uplink, DurableLog]:
    log = DurableLog(tmp / hub / "log.db")
    log.append(records)
    cfg = UplinkConfig(enabled=True, batch_records=500, window=2, ack_timeout=5, probe_interval=0.5,
                       links=[LinkConfig(name="ground", url=url, bandwidth="2mbit", latency=0.01)])
    return Uplink(log, cfg, hub), log


def _by_hub(center_dir: Path) -> dict[str, dict[str, dict]]:
    store = LocalStore(center_dir / "store.db", readonly=True)
    try:
        out: dict[str, dict[str, dict]] = {}
        for r in store.query():
            out.setdefault(r.tags["hub"], {})[r.id] = dict(r.fields)
        return out
    finally:
        store.close()


def test_two_hubs_with_the_same_ids_keep_all_their_records(tmp_path: Path, mosquitto) -> None:
    center_dir = tmp_path / "center"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    center = subprocess.Popen(fieldhub_cmd("center", "run", "--broker", mosquitto.url, "--data-dir", str(center_dir),
                                           "--worker", "c1"), cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    assert center.stderr is not None and "center worker" in center.stderr.readline()
    recs = [hubproc.record(i) for i in range(2000)]
    # the rogue goes first, with the other hub's ids (its "future" records) and false values
    forged = [dataclasses.replace(r, fields={**r.fields, "water_level_m": 99.9}) for r in recs[:500]]
    rogue, rogue_log = _uplink(tmp_path, "vehicle-66", mosquitto.url, forged)
    a, a_log = _uplink(tmp_path, "vehicle-41", mosquitto.url, recs)
    b, b_log = _uplink(tmp_path, "vehicle-42", mosquitto.url, recs)
    try:
        rogue.start()
        wait_for(lambda: rogue.status()["backlog_total"] == 0, timeout=30, what="the rogue's batches stored")
        a.start()
        b.start()
        wait_for(lambda: a.status()["backlog_total"] == 0 and b.status()["backlog_total"] == 0, timeout=60,
                 what="both hubs' batches acknowledged")
        got = _by_hub(center_dir)
        want = {r.id: dict(r.fields) for r in recs}
        assert got["vehicle-41"] == want and got["vehicle-42"] == want  # every record, the hub's own values
        assert len(got["vehicle-66"]) == 500
        hubs = {h["hub_id"]: h for h in HubRegistry(center_dir / "center.db", readonly=True).hubs()}
        assert hubs["vehicle-41"]["records"] == hubs["vehicle-42"]["records"] == len(recs)
        assert hubs["vehicle-41"]["duplicates"] == hubs["vehicle-42"]["duplicates"] == 0
    finally:
        for up, log in ((rogue, rogue_log), (a, a_log), (b, b_log)):
            up.stop()
            log.close()
        stop_process(center, 15)


def test_a_store_from_before_hub_scoped_ids_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    old = sqlite3.connect(path)
    old.executescript(SCHEMA)
    r = hubproc.record(1)
    old.execute("INSERT INTO points VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (r.id, r.kind, r.device_id, r.ts, int(r.priority), r.source, '{"seq": 1}', '{"hub": "vehicle-41"}'))
    old.commit()
    old.close()
    store = CenterStore(path)
    try:
        assert store.write_counted([r], "vehicle-41") == (0, 1)  # its hub came from its tags
        assert store.write_counted([r], "vehicle-42") == (1, 0)
        assert sorted(x.tags["hub"] for x in store.query()) == ["vehicle-41", "vehicle-42"]
    finally:
        store.close()

"""Issue 13, item 3: a quarantined message has an identity and is held once, however often it comes
(a retained malformed message at every hub restart, redeliveries after a kill -9)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fieldhub.core.log import DurableLog, QuarantineId
from tests.mqtt_util import HubProcess, ProvisionedBroker, client, quarantined, wait_for


def test_identity_keeps_one_item_and_counts_repeats(tmp_path: Path) -> None:
    log = DurableLog(tmp_path / "log.db")
    try:
        a = log.quarantine("mqtt", "bad JSON", b"{x", device_id="d", key=b"fh/d/up/t\x00{x")
        b = log.quarantine("mqtt", "bad JSON", b"{x", device_id="d", key=b"fh/d/up/t\x00{x")
        c = log.quarantine("mqtt", "bad JSON", b"{x", device_id="d", key=b"fh/d/up/status\x00{x")
        d = log.quarantine("serial:nmea", "bad checksum", b"$GP*00")  # no key: every call is kept
        e = log.quarantine("serial:nmea", "bad checksum", b"$GP*00")
        assert isinstance(a, QuarantineId) and isinstance(b, QuarantineId)
        assert a == b and not a.repeat and b.repeat
        assert len({a, c, d, e}) == 4
        counters = log.view().counters()
        assert (counters["quarantined"], counters["quarantine_repeats"]) == (4, 1)
    finally:
        log.close()


def test_old_log_file_gains_identity_and_keeps_its_items(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE quarantine(qid INTEGER PRIMARY KEY, ts INTEGER NOT NULL, source TEXT NOT NULL,"
                     " device_id TEXT, reason TEXT NOT NULL, payload BLOB, meta TEXT,"
                     " state TEXT NOT NULL DEFAULT 'held');"
                     "INSERT INTO quarantine(ts, source, reason, payload) VALUES (1, 'mqtt', 'old', x'00');")
    db.close()
    log = DurableLog(path)
    try:
        log.quarantine("mqtt", "new", b"1", key=b"k")
        log.quarantine("mqtt", "new", b"1", key=b"k")
        assert [i.reason for i in log.view().quarantine(newest_first=False)] == ["old", "new"]
    finally:
        log.close()


def test_retained_malformed_message_quarantined_once_across_restarts(tmp_path: Path) -> None:
    """Real Mosquitto, real hub processes: SIGTERM restart, then kill -9 restart."""
    b = ProvisionedBroker(tmp_path)
    pw = b.provision("rq-1")
    b.start()
    hub = HubProcess(b.config, tmp_path / "hub.log")
    try:
        dev = client(b, "rq-1", pw, cid="rq-1")
        dev.publish("fh/rq-1/up/telemetry", b'{"seq": 1, "fields": {"rain_mm": ', qos=1, retain=True).wait_for_publish(10)
        dev.loop_stop()
        dev.disconnect()
        for restart in ("first start", "after SIGTERM", "after kill -9"):
            hub.start()
            hub.wait_ready()
            wait_for(lambda: (s := hub.status()) and s["components"]["mqtt"]["received"] >= 1
                     and s["components"]["mqtt"]["awaiting_durable"] == 0, 30, f"the retained message ({restart})")
            assert len(quarantined(b.data)) == 1, restart  # before: 1, 2, 3
            if restart == "after SIGTERM":
                hub.kill9()
            else:
                hub.stop()
    finally:
        hub.stop()
        b.stop()
    log = DurableLog(b.data / "log.db")
    try:
        counters = log.view().counters()
    finally:
        log.close()
    assert counters.get("quarantine_repeats", 0) >= 2

"""The log's public read-only view (fieldhub.core.logview), on a running log and on a file
opened alone; and the small public reads other parts now use instead of each other's privates."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from fieldhub.core import body
from fieldhub.core.errors import StorageError
from fieldhub.core.log import DurableLog
from fieldhub.core.logview import Chunk, Entry, LogView, QuarantineItem
from fieldhub.core.records import Priority, Record
from fieldhub.sinks.store import LocalStore
from fieldhub.sources.mqtt.ingest import AckPipeline
from fieldhub.sources.mqtt.state import MqttState
from fieldhub.uplink.config import UplinkConfig
from fieldhub.uplink.links import LinkManager

T0 = 1_700_000_000_000_000_000


def recs(n: int, prio: Priority = Priority.TELEMETRY, start: int = 0) -> list[Record]:
    return [Record.make("m", "d1", T0 + i, {"v": i}, priority=prio, source="t", key=i)
            for i in range(start, start + n)]


@pytest.fixture
def log(tmp_path: Path):
    log = DurableLog(tmp_path / "log.db")
    yield log
    log.close()


def test_view_is_the_logs_and_reads_most_urgent_first(log: DurableLog) -> None:
    log.append(recs(3) + recs(2, Priority.ALARM, start=10))
    view = log.view()
    assert view is log.view()
    got = view.read({}, 4)
    assert all(isinstance(e, Entry) for e in got)
    assert [e.record.priority for e in got] == [Priority.ALARM] * 2 + [Priority.TELEMETRY] * 2
    assert [e.record.fields["v"] for e in got] == [10, 11, 0, 1]
    assert [e.record.fields["v"] for e in view.read({int(Priority.TELEMETRY): got[-1].seq}, 10,
                                                    classes=[Priority.TELEMETRY])] == [2]
    assert view.record_count() == 5


def test_read_raw_gives_stored_bodies_per_class_and_the_last_seq(log: DurableLog) -> None:
    records = recs(3) + recs(1, Priority.ALARM, start=10)
    log.append(records)
    chunks, top = log.view().read_raw({}, 100)
    assert [(c.prio, c.count) for c in chunks] == [(int(Priority.ALARM), 1), (int(Priority.TELEMETRY), 3)]
    assert top == {int(Priority.ALARM): 4, int(Priority.TELEMETRY): 3}
    assert [body.decode(b, p) for p, b in chunks[1].refs()] == records[:3]
    assert chunks[1].bodies == b"\n".join(body.encode(r) for r in records[:3])
    chunks, top = log.view().read_raw({int(Priority.ALARM): 4, int(Priority.TELEMETRY): 1}, 1)
    assert chunks == [Chunk(int(Priority.TELEMETRY), body.encode(records[1]), 1)] and top == {
        int(Priority.TELEMETRY): 2}


def test_consumers_positions_backlog_and_counters(log: DurableLog) -> None:
    log.append(recs(4))
    a = log.cursor("a")
    log.cursor("b", start="latest")
    a.commit(a.read(3))
    log.bump("readmitted", 2)
    log.compact()  # bump does not wait: this queued op returns once the bump is committed too
    view = log.view()
    assert view.consumer_names() == ["a", "b"]
    assert view.positions("a")[int(Priority.TELEMETRY)] == 3 and view.positions("nobody") == {}
    assert view.backlog("a")["telemetry"] == 1 and sum(view.backlog("b").values()) == 0
    assert view.backlog("nobody") == {}
    assert view.counters() == {"readmitted": 2}


def test_quarantine_listing_filters_and_order(log: DurableLog) -> None:
    q1 = log.quarantine("mqtt", "bad JSON at byte 3", b"{\xff", device_id="rg-1", meta={"topic": "fh/rg-1/up"})
    q2 = log.quarantine("mqtt", "clock skew 900 s", b"{}", device_id="rg-2")
    q3 = log.quarantine("influx", "field type conflict", b"m x=1", device_id="rg-1")
    log.set_quarantine_state([q2], "readmitted")
    view = log.view()
    items = view.quarantine()
    assert [i.qid for i in items] == [q3, q1] and all(isinstance(i, QuarantineItem) for i in items)
    first = items[1]
    assert (first.source, first.device_id, first.reason, first.payload, first.meta, first.state) == (
        "mqtt", "rg-1", "bad JSON at byte 3", b"{\xff", {"topic": "fh/rg-1/up"}, "held")
    assert first.ts > 0 and items[0].meta == {}
    assert [i.qid for i in view.quarantine(state="all", newest_first=False)] == [q1, q2, q3]
    assert [i.qid for i in view.quarantine(state="readmitted")] == [q2]
    assert [i.qid for i in view.quarantine(source="mqtt")] == [q1]
    assert [i.qid for i in view.quarantine(state="all", reason="skew")] == [q2]
    assert [i.qid for i in view.quarantine(device="rg-1", qids=[q1, q2])] == [q1]
    assert [i.qid for i in view.quarantine(state="all", limit=2)] == [q3, q2]
    assert view.quarantine_held() == 2


def test_summary_is_what_status_shows(log: DurableLog) -> None:
    log.append(recs(3) + recs(1, Priority.ALARM, start=10))
    c = log.cursor("store")
    c.commit([e for e in c.read(10) if e.record.priority == Priority.ALARM])
    log.quarantine("mqtt", "bad", b"x")
    summary = log.view().summary()
    assert summary["records"] == 4 and summary["quarantine_held"] == 1
    assert summary["consumers"]["store"]["backlog"]["telemetry"] == 3
    assert summary["consumers"]["store"]["backlog_total"] == 3
    assert summary["counters"] == {"quarantined": 1}


def test_open_reads_a_log_file_with_no_hub(tmp_path: Path) -> None:
    log = DurableLog(tmp_path / "log.db")
    log.append(recs(2))
    log.cursor("influx")
    log.quarantine("serial:nmea", "checksum", b"$GPGGA*00")
    log.close()
    with LogView.open(tmp_path / "log.db") as view:
        assert view.record_count() == 2 and view.consumer_names() == ["influx"]
        assert [i.reason for i in view.quarantine()] == ["checksum"]
        assert [e.record.fields["v"] for e in view.read({}, 10)] == [0, 1]
        assert view.summary()["consumers"]["influx"]["backlog_total"] == 2
    assert not (tmp_path / "log.db-wal").exists()  # closed as the hub leaves it
    with pytest.raises(StorageError, match="no log at"):
        LogView.open(tmp_path / "nothing.db")


def test_summary_of_a_file_that_is_no_log_says_why(tmp_path: Path) -> None:
    LocalStore(tmp_path / "other.db").close()  # a SQLite file without the log's tables
    with LogView.open(tmp_path / "other.db") as view:
        assert "no such table" in view.summary()["error"]


# ----------------------------------------------------------------------------- other owners
def test_store_record_count_and_device_states(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s.db")
    now = time.time_ns()
    store.write([Record.make("rain", "a", now, {"mm": 1}, key=1), Record.make("rain", "b", now, {"mm": 1}, key=1)])
    ro = LocalStore(tmp_path / "s.db", readonly=True)
    assert ro.record_count() == 2
    assert ro.device_states(["a", "z"], now) == {"a": "online", "z": "offline"}
    assert ro.device_states(["a"], now + 3600 * 10**9, offline_after_s=60) == {"a": "offline"}
    ro.close()
    store.close()
    DurableLog(tmp_path / "log.db").close()
    not_a_store = LocalStore(tmp_path / "log.db", readonly=True)
    with pytest.raises(StorageError):
        not_a_store.record_count()
    with pytest.raises(StorageError):
        not_a_store.device_states(["a"], now)
    not_a_store.close()


def test_store_upsert_counts_and_replaces_only_summaries(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s.db")
    summary = Record.make("rain", "a", 1, {"mm": 1}, tags={"via": "beidou"}, key=1)
    full = Record(summary.kind, "a", 1, {"mm": 1.25, "rate": 3}, {"county": "420102"}, summary.priority,
                  summary.source, summary.id)
    assert store.upsert([summary], {"hub": "h1"}) == (1, 0)
    assert store.upsert([summary], {"hub": "h1"}) == (0, 1)  # a duplicate changes nothing
    assert store.upsert([full], {"hub": "h1"}) == (1, 0)  # the full record replaces its summary
    assert store.upsert([summary, full]) == (0, 2)
    (stored,) = store.query("rain")
    assert stored.fields == {"mm": 1.25, "rate": 3} and stored.tags == {"county": "420102", "hub": "h1"}
    store.close()


def test_mqtt_state_read_seen_from_another_connection(tmp_path: Path) -> None:
    state = MqttState(tmp_path / "mqtt.db")
    state.add_seen([("rg-1", 41, b"digest")])
    assert MqttState.read_seen(tmp_path / "mqtt.db", "rg-1", 41) == b"digest"
    assert MqttState.read_seen(tmp_path / "mqtt.db", "rg-1", 42) is None
    state.close()


def test_ack_pipeline_has_ready_until_flushed() -> None:
    sent: list = []
    acks = AckPipeline(sent.extend)
    first, second = acks.open([(1, 1, 1)]), acks.open([(2, 2, 1)])
    assert not acks.has_ready()
    acks.done(second)
    assert not acks.has_ready()  # in order: the first is not durable yet
    acks.done(first)
    assert acks.has_ready()
    assert acks.flush() == 2 and sent == [(1, 1, 1), (2, 2, 1)] and not acks.has_ready()


def test_link_rank_prefers_cheap_then_fast_then_near() -> None:
    manager = LinkManager(UplinkConfig(), "hub", lambda _: None)

    def link(cost: float, bps: int, rtt: float | None) -> SimpleNamespace:
        return SimpleNamespace(config=SimpleNamespace(cost=cost, bps=bps), rtt=rtt)

    geo, lte, lte_far, unmeasured = link(1, 512_000, 0.6), link(2, 2_000_000, 0.05), link(2, 2_000_000, 0.3), \
        link(2, 2_000_000, None)
    assert sorted([unmeasured, lte_far, lte, geo], key=manager.rank) == [geo, lte, lte_far, unmeasured]

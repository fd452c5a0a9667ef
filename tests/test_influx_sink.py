"""The InfluxDB sink against real servers: InfluxDB 1.6 (v1 /write) and VictoriaMetrics (v2 API
through influxdb-client); every record read back, through outages and bad points."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from fieldhub.core.log import DurableLog
from fieldhub.core.quarantine import list_items
from fieldhub.core.records import Priority, Record
from fieldhub.sinks.influx.writer import QUARANTINE_COUNTER, InfluxConfig, InfluxSink, InfluxWriter, make_transport
from tests.conftest import run_cli
from tests.influx_servers import InfluxDB1, VictoriaMetrics, influxdb1, victoria  # noqa: F401

TAGS = {"kind": "water_gauge", "model": "wg-100", "admin_code": "420102001001", "level": "village",
        "county": "420102"}


def records(n: int, start: int = 0, t0: int | None = None) -> list[Record]:
    """``n`` water-level records, 1 ms apart, in the recent past, 7 devices; ``seq`` identifies each."""
    t0 = t0 or (time.time_ns() // 1_000_000 - 3_600_000) * 1_000_000
    return [Record.make("water_level", f"wl-{i % 7}", t0 + i * 1_000_000,
                        {"level_m": round(1.0 + i / 1000, 3), "seq": i, "ok": i % 2 == 0, "note": f"n{i}"},
                        tags=TAGS, source="test", key=i, priority=Priority.TELEMETRY)
            for i in range(start, start + n)]


def v1_config(server: InfluxDB1, **kw) -> InfluxConfig:
    base = dict(url=server.url, mode="v1", database="fieldhub", batch_size=500, batch_time=0.05,
                retry_initial=0.05, retry_max=0.5, timeout=3.0)
    return InfluxConfig(**{**base, **kw})


def v2_config(server: VictoriaMetrics, **kw) -> InfluxConfig:
    base = dict(url=server.url, mode="v2", token="any", org="fieldhub", bucket="fieldhub",
                batch_size=500, batch_time=0.05, retry_initial=0.05, retry_max=0.5, timeout=3.0)
    return InfluxConfig(**{**base, **kw})


def drain(writer: InfluxWriter, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if writer.status()["backlog"] == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"influx backlog not drained: {writer.status()}")


def read_back_v1(server: InfluxDB1) -> dict[int, dict]:
    rows = server.rows('SELECT "seq", "level_m", "ok", "note", "device_id", "admin_code", "hub" '
                       "FROM water_level", "fieldhub")
    by_seq: dict[int, dict] = {}
    for row in rows:
        assert row["seq"] not in by_seq, f"seq {row['seq']} written twice: {row}"
        by_seq[row["seq"]] = row
    return by_seq


def check_v1(server: InfluxDB1, expected: list[Record]) -> None:
    got = read_back_v1(server)
    assert len(got) == len(expected)
    count = server.rows("SELECT count(seq) FROM water_level", "fieldhub")[0]["count"]
    assert count == len(expected)
    for r in expected:
        row = got[r.fields["seq"]]
        assert row["level_m"] == r.fields["level_m"] and row["ok"] == r.fields["ok"]
        assert row["note"] == r.fields["note"] and row["device_id"] == r.device_id
        assert row["admin_code"] == "420102001001" and row["hub"] == "veh-test"
        assert row["time"] // 1_000_000 == r.ts // 1_000_000


def check_vm(server: VictoriaMetrics, expected: list[Record]) -> None:
    want_seq = {(r.device_id, r.ts // 1_000_000): r.fields["seq"] for r in expected}
    want_level = {(r.device_id, r.ts // 1_000_000): r.fields["level_m"] for r in expected}
    deadline = time.monotonic() + 20
    while True:  # VictoriaMetrics makes fresh samples searchable within about a second
        seq = server.export('{__name__="water_level_seq"}')
        n = sum(len(s["values"]) for s in seq)
        if n >= len(expected) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    got_seq = {(s["metric"]["device_id"], t): v for s in seq for t, v in zip(s["timestamps"], s["values"])}
    assert n == len(expected) == len(got_seq)
    assert got_seq == want_seq
    level = server.export('{__name__="water_level_level_m"}')
    got_level = {(s["metric"]["device_id"], t): v for s in level for t, v in zip(s["timestamps"], s["values"])}
    assert got_level == want_level
    assert {s["metric"]["county"] for s in level} == {"420102"}


def test_v1_writes_every_record_with_its_values_and_tags(influxdb1: InfluxDB1, tmp_path: Path) -> None:
    log = DurableLog(tmp_path / "log.db")
    recs = records(1200)
    log.append(recs)
    writer = InfluxWriter(log, InfluxSink(make_transport(v1_config(influxdb1)), log, hub_id="veh-test"),
                          v1_config(influxdb1))
    writer.start()
    try:
        drain(writer)
    finally:
        writer.stop()
    check_v1(influxdb1, recs)
    # a replay (the cursor lost after a crash) rewrites the same points, it adds none
    sink = InfluxSink(make_transport(v1_config(influxdb1)), log, hub_id="veh-test")
    sink.write(recs[:700])
    sink.close()
    check_v1(influxdb1, recs)
    log.close()


def test_v2_path_through_influxdb_client(victoria: VictoriaMetrics, tmp_path: Path) -> None:
    log = DurableLog(tmp_path / "log.db")
    recs = records(1500)
    log.append(recs)
    cfg = v2_config(victoria)
    writer = InfluxWriter(log, InfluxSink(make_transport(cfg), log, hub_id="veh-test"), cfg)
    writer.start()
    try:
        drain(writer)
        assert writer.status()["written"] == 1500 and writer.status()["errors"] == 0
    finally:
        writer.stop()
    check_vm(victoria, recs)
    log.close()


@pytest.mark.parametrize("kind", ["influxdb1", "victoria"])
def test_server_outage_mid_stream_every_record_exactly_once(kind: str, tmp_path: Path) -> None:
    server = (InfluxDB1 if kind == "influxdb1" else VictoriaMetrics)(tmp_path / kind).start()
    log = DurableLog(tmp_path / "log.db")
    cfg = v1_config(server) if kind == "influxdb1" else v2_config(server)
    writer = InfluxWriter(log, InfluxSink(make_transport(cfg), log, hub_id="veh-test"), cfg)
    writer.start()
    sent: list[Record] = []
    try:
        t0 = (time.time_ns() // 1_000_000 - 3_600_000) * 1_000_000
        for chunk in range(40):
            batch = records(250, start=chunk * 250, t0=t0)
            log.append(batch)
            sent += batch
            if chunk == 12:
                server.stop()  # the database goes away mid-stream
                deadline = time.monotonic() + 30
                while writer.status()["errors"] < 3 and time.monotonic() < deadline:
                    time.sleep(0.05)
                during = writer.status()
                assert during["state"] == "retrying" and during["last_error"] != "-"
                assert during["backlog"] > 0
            if chunk == 25:
                server.start()  # back on the same port with the same data
            time.sleep(0.01)
        drain(writer)
        status = writer.status()
        assert status["state"] == "ok" and status["errors"] >= 3 and status["quarantined"] == 0
    finally:
        writer.stop()
        server.stop() if kind == "victoria" else None
    if kind == "influxdb1":
        check_v1(server, sent)
        server.stop()
    else:
        server.start()
        try:
            check_vm(server, sent)
        finally:
            server.stop()
    log.close()


def test_type_conflict_quarantines_only_the_bad_points(influxdb1: InfluxDB1, tmp_path: Path) -> None:
    log = DurableLog(tmp_path / "log.db")
    cfg = v1_config(influxdb1, batch_size=1000)
    t0 = (time.time_ns() // 1_000_000 - 60_000) * 1_000_000
    first = Record.make("reading", "rg-1", t0, {"value": 1.5}, source="test", key="first")
    sink = InfluxSink(make_transport(cfg), log, hub_id="veh-test")
    sink.write([first])  # "value" is now a float field
    batch = [Record.make("reading", "rg-1", t0 + (i + 1) * 1_000_000,
                         {"value": 7 if i == 37 else 2.0 + i, "n": i}, source="test", key=i)
             for i in range(100)]
    # and a string where the server holds floats
    batch[80] = Record.make("reading", "rg-1", batch[80].ts, {"value": "high", "n": 80}, source="test", key=80)
    log.append(batch)
    writer = InfluxWriter(log, sink, cfg)
    writer.start()
    try:
        drain(writer)
        status = writer.status()
    finally:
        writer.stop()
    rows = influxdb1.rows('SELECT "n", "value" FROM reading', "fieldhub")
    got = sorted(r["n"] for r in rows if r["n"] is not None)
    assert got == [i for i in range(100) if i not in (37, 80)]
    assert status["quarantined"] == 2 and status["backlog"] == 0
    held = list_items(tmp_path, source="influx")
    assert len(held) == 2
    by_id = {h["meta"]["record_id"]: h for h in held}
    conflict = by_id[batch[37].id]
    assert "field type conflict" in conflict["reason"] and conflict["meta"]["status"] == 400
    assert bytes.fromhex(conflict["payload_hex"]).startswith(b"reading,device_id=rg-1,hub=veh-test value=7i,n=37i")
    assert "is type string, already exists as type float" in by_id[batch[80].id]["reason"]
    assert log.counters()[QUARANTINE_COUNTER] == 2
    log.close()
    # and `fieldhub status` shows them with the hub stopped (read from the data dir)
    proc = run_cli("status", "--json", "--data-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    info = orjson.loads(proc.stdout)["log"]
    assert info["counters"][QUARANTINE_COUNTER] == 2 and info["quarantine_held"] == 2
    assert info["consumers"]["influx"]["backlog_total"] == 0


def test_batches_by_size_and_time_alarms_at_once(influxdb1: InfluxDB1, tmp_path: Path) -> None:
    log = DurableLog(tmp_path / "log.db")
    cfg = v1_config(influxdb1, batch_size=200, batch_time=3.0)
    writer = InfluxWriter(log, InfluxSink(make_transport(cfg), log, hub_id="veh-test"), cfg)
    writer.start()
    try:
        t0 = time.monotonic()
        log.append(records(10))  # a partial batch waits for batch_time
        time.sleep(0.8)
        assert writer.status()["written"] == 0
        deadline = time.monotonic() + 20
        while writer.status()["written"] < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert writer.status()["written"] == 10 and time.monotonic() - t0 >= 3.0
        alarm = Record.make("hub_alarm", "veh-test", time.time_ns(), {"event": "flood"},
                            priority=Priority.ALARM, source="test")
        t1 = time.monotonic()
        log.append([alarm])  # an alarm does not wait
        while writer.status()["written"] < 11 and time.monotonic() - t1 < 20:
            time.sleep(0.01)
        assert writer.status()["written"] == 11 and time.monotonic() - t1 < 2.5
        t2 = time.monotonic()
        log.append(records(200, start=10))  # a full batch does not wait either
        while writer.status()["written"] < 211 and time.monotonic() - t2 < 20:
            time.sleep(0.01)
        assert writer.status()["written"] == 211 and time.monotonic() - t2 < 2.5
    finally:
        writer.stop()
    assert influxdb1.rows("SELECT count(seq) FROM water_level", "fieldhub")[0]["count"] == 210
    assert influxdb1.rows('SELECT "event" FROM hub_alarm', "fieldhub")[0]["event"] == "flood"
    log.close()


def test_retries_through_5xx_and_a_hung_server(influxdb1: InfluxDB1, tmp_path: Path) -> None:
    import os
    import signal

    influxdb1.query("CREATE DATABASE fieldhub")
    log = DurableLog(tmp_path / "log.db")
    cfg = v1_config(influxdb1, retention_policy="later", timeout=0.5, batch_size=300)
    writer = InfluxWriter(log, InfluxSink(make_transport(cfg), log, hub_id="veh-test"), cfg)
    t0 = (time.time_ns() // 1_000_000 - 600_000) * 1_000_000
    first = records(600, t0=t0)
    log.append(first)
    writer.start()
    try:
        deadline = time.monotonic() + 20
        while writer.status()["errors"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        status = writer.status()  # a real 500 from InfluxDB: retention policy not found
        assert "HTTP 500" in status["last_error"] and "retention policy not found" in status["last_error"]
        assert status["written"] == 0 and status["quarantined"] == 0
        influxdb1.query('CREATE RETENTION POLICY "later" ON "fieldhub" DURATION 1d REPLICATION 1')
        drain(writer)
        errors = writer.status()["errors"]
        os.kill(influxdb1.proc.pid, signal.SIGSTOP)  # the server hangs: requests time out
        try:
            second = records(600, start=600, t0=t0)
            log.append(second)
            deadline = time.monotonic() + 20
            while writer.status()["errors"] < errors + 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert "timed out" in writer.status()["last_error"]
        finally:
            os.kill(influxdb1.proc.pid, signal.SIGCONT)
        drain(writer)
        assert writer.status()["state"] == "ok"
    finally:
        writer.stop()
    got = influxdb1.rows('SELECT count(seq) FROM "fieldhub"."later"."water_level"', "fieldhub")
    assert got[0]["count"] == 1200
    log.close()


def test_idle_sink_shows_whether_the_server_is_reachable(influxdb1: InfluxDB1, tmp_path: Path) -> None:
    from fieldhub.sources.mqtt.mosquitto import free_port

    log = DurableLog(tmp_path / "log.db")
    for url, expect in ((f"http://127.0.0.1:{free_port()}", "unreachable: connection refused"),
                        (influxdb1.url, "reachable")):
        cfg = InfluxConfig(url=url, mode="v1")
        writer = InfluxWriter(log, InfluxSink(make_transport(cfg), log), cfg)
        writer.start()
        try:
            deadline = time.monotonic() + 10
            while writer.status()["server"] == "not yet contacted" and time.monotonic() < deadline:
                time.sleep(0.02)
            assert writer.status()["server"].startswith(expect)
        finally:
            writer.stop()
    log.close()


def test_v1_over_https_with_our_ca(tmp_path: Path) -> None:
    server = InfluxDB1(tmp_path / "tls", tls=True).start()
    try:
        log = DurableLog(tmp_path / "log.db")
        recs = records(300)
        log.append(recs)
        cfg = v1_config(server, tls_ca=str(server.cert))
        writer = InfluxWriter(log, InfluxSink(make_transport(cfg), log, hub_id="veh-test"), cfg)
        writer.start()
        try:
            drain(writer)
        finally:
            writer.stop()
        check_v1(server, recs)
        log.close()
    finally:
        server.stop()

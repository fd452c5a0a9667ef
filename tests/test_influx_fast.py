"""The C line-protocol encoder (fieldhub/sinks/influx/_lpenc.c): byte for byte what the Python encoder
writes for the same log rows, and whatever it cannot take is handed back, not lost."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fieldhub.core import body as log_body
from fieldhub.core.datadir import LOG_FILE
from fieldhub.core.log import DurableLog
from fieldhub.core.quarantine import list_items
from fieldhub.core.records import Priority, Record
from fieldhub.sinks.influx import writer as influx
from fieldhub.sinks.influx.writer import QUARANTINE_COUNTER, Chunk, InfluxConfig, InfluxSink, make_transport

TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
# keys and values that need escaping in line protocol or in JSON
AWKWARD = st.sampled_from(["a b", "a,b", "a=b", 'q"q', "back\\", "\\", "tab\tnl\nret\r", "水位", "é", "😀",
                           "\x01ctl", "/", "", "x"])
KEY = st.one_of(TEXT, AWKWARD)
FLOAT = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                  st.sampled_from([0.0, -0.0, 1e16, 1e15, 1e-5, 1e-4, 5e-324, 1.7976931348623157e308,
                                   0.1, 100.0, 123456789012345678.0, -2.5e-7]))
VALUE = st.one_of(FLOAT, st.integers(min_value=-2**63, max_value=2**63 - 1), st.booleans(), KEY,
                  st.lists(st.integers(-9, 9), max_size=2), st.dictionaries(TEXT, st.integers(-9, 9), max_size=2))
TS = st.one_of(st.integers(min_value=-2**62, max_value=2**62),
               st.integers(min_value=0, max_value=2**52).map(lambda v: v * 1000),
               st.integers(min_value=0, max_value=2**42).map(lambda v: v * 1_000_000))
ID = st.one_of(st.text("0123456789abcdef", min_size=20, max_size=20), st.text("0123456789abcdefABCDEF_x ", max_size=14))
# built directly, not through Record.make: the encoder must take whatever the log holds
RECORD = st.builds(lambda kind, device, ts, fields, tags, rid: Record(kind, device, ts, fields, tags,
                                                                     Priority.TELEMETRY, "test", rid),
                   KEY, KEY, TS, st.dictionaries(KEY, VALUE, max_size=6), st.dictionaries(KEY, KEY, max_size=4), ID)


def sink_for(tmp: Path, **kw) -> InfluxSink:
    cfg = InfluxConfig(url="http://127.0.0.1:9", mode="v1", database="x")
    return InfluxSink(make_transport(cfg), DurableLog(tmp / LOG_FILE), hub_id="veh 1", **kw)


def rows_of(records: list[Record]) -> list[tuple[int, bytes]]:
    return [(int(r.priority), log_body.encode(r)) for r in records]


def chunk(rows: list[tuple[int, bytes]]) -> list[Chunk]:
    """What ``LogView.read_raw`` gives the sink for these rows (one class)."""
    return [Chunk(rows[0][0], b"\n".join(body for _, body in rows), len(rows))]


def c_encode(rows: list[tuple[int, bytes]], sink: InfluxSink, nudge: bool = True, skip=None):
    return influx._lpenc.encode(b"\n".join(body for _, body in rows), {}, sink._series_of, nudge, skip)


def python_lines(sink: InfluxSink, rows: list[tuple[int, bytes]]) -> list[bytes]:
    return [line for _, line in sink._encode_refs(rows)]


def test_the_c_encoder_is_built_and_used(tmp_path: Path) -> None:
    # run-tests installs the package, which compiles it; a missing compiler must not pass unseen
    assert influx._lpenc is not None
    assert sink_for(tmp_path).encoder_name == "c"


def handed_back(r: Record, nudge: bool) -> bool:
    """What the C encoder leaves to Python: nested values, nothing writable, a non-hex id it
    would need for the nudge."""
    if any(isinstance(v, (list, dict)) for v in r.fields.values()):
        return True
    if not any(v is not None and not (isinstance(v, float) and not math.isfinite(v)) for v in r.fields.values()):
        return True
    hexdigits = set("0123456789abcdefABCDEF")
    return nudge and r.ts % 1000 == 0 and not (r.id and set(r.id[:12]) <= hexdigits)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(RECORD, min_size=1, max_size=6, unique_by=lambda r: r.id), nudge=st.booleans())
def test_c_lines_equal_python_lines(tmp_path: Path, records: list[Record], nudge: bool) -> None:
    sink = sink_for(tmp_path, same_timestamp="nudge" if nudge else "overwrite")
    rows = rows_of(records)
    c_lines, py_lines = [], []
    for r, row in zip(records, rows):
        body, count, handed = c_encode([row], sink, nudge)
        assert handed == ([0] if handed_back(r, nudge) else []), r
        python = python_lines(sink, [row])
        if handed:
            py_lines += python
        else:
            assert count == 1 and [body] == python, r
            c_lines.append(body)
    payload = sink.encode_rows(chunk(rows))  # the batch: C lines in order, then what Python did
    assert payload.body == b"\n".join(c_lines + py_lines)
    assert payload.lines == len(c_lines) + len(py_lines)
    sink.log.close()


def test_typical_rows_are_all_done_in_c(tmp_path: Path) -> None:
    sink = sink_for(tmp_path)
    records = [Record.make("water_level", f"wl {i % 3}", 1_700_000_000_000_000_000 + i * 1000,
                           {"level_m": 1.25 + i, "seq": i, "ok": True, "note": 'say "hi"\n', "tiny": 1e-5},
                           tags={"county": "420102", "model": ""}, source="t", key=i) for i in range(50)]
    rows = rows_of(records)
    body, count, handed = c_encode(rows, sink)
    assert handed == [] and count == 50
    assert body == b"\n".join(python_lines(sink, rows))
    assert b'note="say \\"hi\\"\n"' in body and b"tiny=1e-05" in body and b"seq=3i" in body
    sink.log.close()


def test_what_c_leaves_is_handed_back_and_encoded_by_python(tmp_path: Path) -> None:
    sink = sink_for(tmp_path)
    good = Record.make("m", "d1", 1_700_000_000_000_000_001, {"x": 1.5}, source="t", key=1)
    # Record.make refuses these; a Record built directly (or an older hub's log) may hold them
    nested = Record("m", "d1", 1_700_000_000_000_000_002, {"x": [1, 2]}, {}, Priority.TELEMETRY, "t", "02")
    only_nan = Record("m", "d1", 1_700_000_000_000_000_003, {"x": math.nan}, {}, Priority.TELEMETRY, "t", "03")
    odd_id = Record("m", "d1", 1_700_000_000_000_000_000, {"x": 2.5}, {}, Priority.TELEMETRY, "t", "not-hex")
    rows = rows_of([good, nested, only_nan, odd_id])
    rows.append((int(Priority.TELEMETRY), b'{"k": "m", "d": "d1", "t": 5, "f": {"x": 1}, "g": {}, "s": "t", "i": "ab"}'))
    _, count, handed = c_encode(rows, sink)
    assert count == 1 and handed == [1, 2, 3, 4]
    payload = sink.encode_rows(chunk(rows))
    lines = set(payload.body.split(b"\n"))
    assert payload.lines == 4 and len(lines) == 4
    assert b'm,device_id=d1,hub=veh\\ 1 x="[1, 2]" 1700000000000000002' in lines
    assert b"m,device_id=d1,hub=veh\\ 1 x=1i 5" in lines
    # the nan-only record has nothing to write: quarantined, not written as a string "None"
    assert next(i["reason"] for i in list_items(sink.log.path.parent)).startswith("no field InfluxDB can store")
    assert sink.quarantined == 1
    sink.log.close()
    reopened = DurableLog(tmp_path / LOG_FILE)
    assert reopened.counters()[QUARANTINE_COUNTER] == 1
    reopened.close()


def test_a_damaged_log_row_is_quarantined_and_the_batch_goes_on(tmp_path: Path) -> None:
    sink = sink_for(tmp_path)
    good = rows_of([Record.make("m", "d1", 1_700_000_000_000_000_001, {"x": 1.5}, source="t", key=1)])
    rows = [good[0], (4, b'{"k":"m","d":"d1","t":1,"f":{"x":1'), (4, b"\x00\xffgarbage"), good[0]]
    payload = sink.encode_rows(chunk(rows))
    assert payload.lines == 2
    items = list_items(sink.log.path.parent)
    assert len(items) == 2 and all("unreadable log record" in i["reason"] for i in items)
    sink.encode_rows(chunk(rows))  # the same batch again (a retry): not quarantined twice
    assert len(list_items(sink.log.path.parent)) == 2
    sink.log.close()


def test_ids_quarantined_earlier_are_skipped_on_a_retry(tmp_path: Path) -> None:
    sink = sink_for(tmp_path)
    records = [Record.make("m", "d1", 1_700_000_000_000_000_001 + i, {"x": i}, source="t", key=i) for i in range(4)]
    sink._recent_bad[records[2].id] = None
    payload = sink.encode_rows(chunk(rows_of(records)))
    assert payload.lines == 3 and b" x=2i " not in payload.body
    sink.log.close()


def test_series_part_is_cached_and_refreshed(tmp_path: Path) -> None:
    calls = []
    sink = sink_for(tmp_path, tags_for=lambda d: calls.append(d) or {"county": "420102"})
    records = [Record.make("m", f"d{i % 2}", 1_700_000_000_000_000_001 + i, {"x": i}, source="t", key=i)
               for i in range(100)]
    body = sink.encode_rows(chunk(rows_of(records))).body
    assert body.count(b"county=420102") == 100 and sorted(calls) == ["d0", "d1"]
    sink._tags_at -= 61  # a minute later the registry's tags are read again
    sink.encode_rows(chunk(rows_of(records)))
    assert sorted(calls) == ["d0", "d0", "d1", "d1"]
    sink.log.close()


def test_read_rows_joins_bodies_and_survives_a_damaged_one(tmp_path: Path) -> None:
    sink = sink_for(tmp_path)
    records = [Record.make("m", "d1", 1_700_000_000_000_000_001 + i, {"x": i}, source="t", key=i,
                           priority=Priority.TELEMETRY) for i in range(4)]
    records.append(Record.make("hub_alarm", "d1", 1_700_000_000_000_000_009, {"x": 9}, source="t", key=9,
                               priority=Priority.ALARM))
    sink.log.append(records)
    chunks, top = sink.log.view().read_raw({}, 100)
    assert [(c.prio, c.count) for c in chunks] == [(int(Priority.ALARM), 1), (int(Priority.TELEMETRY), 4)]
    assert top == {int(Priority.ALARM): 5, int(Priority.TELEMETRY): 4}
    assert sink.log.view().read_raw({int(Priority.TELEMETRY): 2}, 2)[0][1].count == 1  # limit and cursor
    # a body a bad sector mangled, with a raw newline in it: read one by one, quarantined alone
    with sqlite3.connect(sink.log.path) as db:
        db.execute("UPDATE log SET body=? WHERE seq=2", (b'{"k":"m",\n"d":',))
        db.execute("UPDATE log SET body=? WHERE seq=3", ("text\n, not a blob",))
    chunks, top = sink.log.view().read_raw({}, 100)
    assert [c.count for c in chunks] == [1, 1, 1, 1, 1] and top[int(Priority.TELEMETRY)] == 4
    payload = sink.encode_rows(chunks)
    assert payload.lines == 3 and b"x=1i" not in payload.body and b"x=2i" not in payload.body
    items = list_items(sink.log.path.parent)
    assert len(items) == 2 and all("unreadable log record" in i["reason"] for i in items)
    sink.log.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(RECORD, min_size=1, max_size=5, unique_by=lambda r: r.id), data=st.data())
def test_mangled_bodies_never_crash_and_each_is_written_or_quarantined(tmp_path: Path, records: list[Record],
                                                                        data: st.DataObject) -> None:
    """Bodies damaged byte by byte (as a bad sector or a bug might leave them): the C encoder
    must never crash or read past a body, and every record is either a line or quarantined."""
    sink = sink_for(tmp_path)
    bodies = []
    for body in (log_body.encode(r) for r in records):
        for _ in range(data.draw(st.integers(0, 3))):
            at = data.draw(st.integers(0, len(body)))
            body = data.draw(st.sampled_from([body[:at] + body[at + 1:],  # a byte lost
                                              body[:at] + bytes([data.draw(st.integers(0, 255))]) + body[at:],
                                              body[:at]]))  # cut short
        bodies.append(body.replace(b"\n", b" "))  # newlines are covered by the read_raw test
    if len(set(bodies)) < len(bodies):
        return  # identical damaged bodies are quarantined once: not this test's subject
    payload = sink.encode_rows([Chunk(4, b"\n".join(bodies), len(bodies))])
    assert payload.lines + sink.quarantined == len(bodies)
    sink.log.close()

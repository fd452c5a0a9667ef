"""The line-protocol encoder shared by both InfluxDB write modes: escaping, typing, nudging."""

from __future__ import annotations

from fieldhub.core.records import Record
from fieldhub.sinks.influx.lineproto import Encoder, escape_key, format_field, nudge


def rec(fields, ts=1_700_000_000_123_456_789, tags=None, device="dev 1", kind="water_level", key=None):
    return Record.make(kind, device, ts, fields, tags=tags or {}, source="test", key=key)


def test_fields_are_typed() -> None:
    assert format_field(3) == "3i"
    assert format_field(-7) == "-7i"
    assert format_field(2.5) == "2.5"
    assert format_field(2.0) == "2.0"
    assert format_field(True) == "true"
    assert format_field(False) == "false"
    assert format_field('say "hi" \\ bye') == '"say \\"hi\\" \\\\ bye"'
    assert format_field(float("inf")) is None


def test_escaping_of_keys_and_values() -> None:
    assert escape_key("a b,c=d") == r"a\ b\,c\=d"
    assert escape_key("ends\\") == "ends\\ "
    line = Encoder("veh 1").encode(rec({"water level": 1.5}, tags={"county": "420102", "model": "",
                                                                    "unit": "Village, 1"}))
    assert line == (b"water_level,county=420102,device_id=dev\\ 1,hub=veh\\ 1,unit=Village\\,\\ 1 "
                    b"water\\ level=1.5 1700000000123456789")


def test_empty_tags_are_left_out_and_keys_sorted() -> None:
    line = Encoder("h").encode(rec({"x": 1}, tags={"model": "", "level": "village", "admin_code": "420102001001"},
                                   device="d1"))
    assert line.split(b" ")[0] == b"water_level,admin_code=420102001001,device_id=d1,hub=h,level=village"


def test_registry_tags_fill_what_the_record_lacks() -> None:
    enc = Encoder("h", tags_for=lambda d: {"model": "m1", "level": "county", "county": "420102"})
    line = enc.encode(rec({"x": 1}, tags={"level": "village"}))
    assert b"model=m1" in line and b"level=village" in line and b"county=420102" in line


def test_record_with_only_infinite_values_has_no_line() -> None:
    assert Encoder().encode(rec({"x": float("inf")})) is None


def test_nudge_is_stable_and_below_the_timestamp_precision() -> None:
    ns_ts = 1_700_000_000_123_456_789
    assert nudge("abcdef0123456789", ns_ts) == 0
    ms_ts = 1_700_000_000_123_000_000
    a, b = nudge("00000000000a", ms_ts), nudge("00000000000b", ms_ts)
    assert a != b and 0 <= a < 1_000_000 and 0 <= b < 1_000_000
    assert nudge("00000000000a", ms_ts) == a
    us_ts = 1_700_000_000_123_456_000
    assert 0 <= nudge("ffffffffffff", us_ts) < 1000
    assert nudge("not-hex-id", ms_ts) == nudge("not-hex-id", ms_ts)


def test_two_records_same_series_same_second_stay_two_points() -> None:
    ts = 1_700_000_000_000_000_000
    enc = Encoder("h")
    l1 = enc.encode(rec({"alarm": "a"}, ts=ts, key=1))
    l2 = enc.encode(rec({"alarm": "b"}, ts=ts, key=2))
    t1, t2 = int(l1.rsplit(b" ", 1)[1]), int(l2.rsplit(b" ", 1)[1])
    assert t1 != t2 and t1 // 1_000_000 == t2 // 1_000_000 == ts // 1_000_000
    over = Encoder("h", same_timestamp="overwrite")
    assert over.encode(rec({"alarm": "a"}, ts=ts, key=1)).endswith(str(ts).encode())

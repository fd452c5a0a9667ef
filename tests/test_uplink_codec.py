"""Uplink batch format and Beidou short messages: exact round trips, size, bad input."""

from __future__ import annotations

import pytest

from fieldhub.core.errors import ProtocolError, ValidationError
from fieldhub.core.records import Priority, Record
from fieldhub.uplink import shortmsg
from fieldhub.uplink.codec import Batch, decode_batch, encode_batch
from simulators.uplink_load import alarm, drone_positions, village_telemetry

T0 = 1_780_000_000_000_000_000


def _same(a: list[Record], b: list[Record]) -> None:
    a, b = sorted(a, key=lambda r: r.id), sorted(b, key=lambda r: r.id)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x == y
        assert [type(v) for v in x.fields.values()] == [type(v) for v in y.fields.values()]


def test_round_trip_is_exact_for_every_column_type() -> None:
    recs = village_telemetry(5, 30, t0_ns=T0, jitter_ms=40) + drone_positions(1, 10, t0_ns=T0)
    recs += [alarm("geo-1", T0 + 5, 1),
             Record.make("odd", "dev-x", T0 - 10**12, {"pi": 3.141592653589793, "neg": -7, "big": 2**60,
                                                       "ok": True, "msg": "水位超警戒 level>3", "tiny": 1e-300},
                         tags={"unit": "村"}, priority="bulk", source="mqtt", key="k1"),
             Record("custom", "dev-y", T0, {"v": 1.5}, {}, Priority.COMMAND, "x", "not-a-hex-id")]
    # a field that is sometimes an int and sometimes a float keeps its type per record
    recs += [Record.make("gauge", "dev-z", T0 + i * 10**9, {"v": 20 if i % 2 else 20.5}, key=i) for i in range(6)]
    batch = Batch("vehicle-01", 42, T0, {0: (0, 9), 4: (3, 200)}, recs, {"link": "geo"})
    back = decode_batch(encode_batch(batch))
    assert (back.hub_id, back.batch_id, back.ranges, back.meta) == ("vehicle-01", 42, batch.ranges, {"link": "geo"})
    _same(recs, back.records)


def test_steady_telemetry_costs_under_one_byte_per_field_value() -> None:
    recs = village_telemetry(20, 60, t0_ns=T0)
    size = len(encode_batch(Batch("v", 1, T0, {4: (0, len(recs))}, recs)))
    assert size / (len(recs) * 6) <= 1.0


@pytest.mark.parametrize("damage", ["magic", "version", "truncate", "body"])
def test_bad_batches_raise_protocol_errors(damage: str) -> None:
    data = bytearray(encode_batch(Batch("v", 1, T0, {}, village_telemetry(2, 5, t0_ns=T0))))
    if damage == "magic":
        data[0] = ord("X")
    elif damage == "version":
        data[3] = 99
    elif damage == "truncate":
        data = data[:12]
    else:
        data[-5:] = b"\x00" * 5
    with pytest.raises(ProtocolError):
        decode_batch(bytes(data))


def test_alarm_with_position_and_mac_fits_one_level3_message() -> None:
    key = bytes(range(32))
    rec = alarm("geo-monitor-17", T0 + 123_456_789, 7)
    msg = shortmsg.encode(rec, "vehicle-01", key, shortmsg.budget_bytes(3))
    assert len(msg) <= 78
    hub, back = shortmsg.decode(msg, key)
    assert hub == "vehicle-01" and back.id == rec.id and back.priority == Priority.ALARM
    assert back.fields["lat"] == pytest.approx(30.5928, abs=1e-7)
    assert back.fields["lon"] == pytest.approx(114.3055, abs=1e-7)
    assert back.fields["code"] == 301 and back.ts == T0 + 123_000_000
    tampered = bytearray(msg)
    tampered[20] ^= 1
    with pytest.raises(ProtocolError, match="MAC"):
        shortmsg.decode(bytes(tampered), key)
    with pytest.raises(ProtocolError, match="MAC"):
        shortmsg.decode(msg, b"other key")


def test_record_that_cannot_fit_a_short_message_is_refused() -> None:
    rec = Record.make("alarm", "d" * 60, T0, {"x": 1}, priority="alarm")
    with pytest.raises(ValidationError):
        shortmsg.encode(rec, "vehicle-01", b"k", shortmsg.budget_bytes(2))


def test_center_store_dedupes_and_upgrades_a_short_message_summary(tmp_path) -> None:
    from fieldhub.center.worker import CenterStore

    key = b"k" * 32
    full = alarm("geo-monitor-17", T0, 9)
    _, summary = shortmsg.decode(shortmsg.encode(full, "vehicle-01", key, 78), key)
    store = CenterStore(tmp_path / "store.db")
    assert store.write_counted([summary], "vehicle-01") == (1, 0)
    assert store.write_counted([full], "vehicle-01") == (1, 0)  # the full record replaces the summary
    assert store.write_counted([summary, full], "vehicle-01") == (0, 2)  # neither changes anything now
    (got,) = list(store.query("alarm"))
    assert got.id == full.id and got.fields["event"] == "landslide" and "via" not in got.tags
    assert got.tags["hub"] == "vehicle-01"

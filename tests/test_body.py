"""The log body format has one owner (fieldhub/core/body.py); the InfluxDB sink's C encoder
(fieldhub/sinks/influx/_lpenc.c) reads the same bytes and must agree with it."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldhub.core import body
from fieldhub.core.records import Priority, Record
from fieldhub.sinks.influx.lineproto import Encoder

_lpenc = pytest.importorskip("fieldhub.sinks.influx._lpenc")

C_SOURCE = Path(body.__file__).resolve().parent.parent / "sinks" / "influx" / "_lpenc.c"
#: the order of the C module's BODY_KEYS string
C_ORDER = ("KIND", "DEVICE", "TS", "FIELDS", "TAGS", "ID")

TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=10)
SCALAR = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-2**63, 2**63 - 1),
                   st.booleans(), TEXT)
RECORD = st.builds(lambda kind, device, ts, fields, tags, prio, rid: Record(kind, device, ts, fields, tags,
                                                                           prio, "test", rid),
                   TEXT, TEXT, st.integers(0, 2**62), st.dictionaries(TEXT, SCALAR, min_size=1, max_size=5),
                   st.dictionaries(TEXT, TEXT, max_size=3), st.sampled_from(list(Priority)),
                   st.text("0123456789abcdef", min_size=20, max_size=20))


def c_source_keys() -> dict[str, str]:
    """The ``#define BODY_KEY_<NAME> '<c>'`` lines of the C encoder."""
    text = C_SOURCE.read_text()
    return dict(re.findall(r"^#define BODY_KEY_(\w+) '(.)'", text, re.M))


def test_the_c_source_keys_are_body_py_keys() -> None:
    assert c_source_keys() == body.C_KEYS
    # and the walk uses them, not letters of its own
    walk = C_SOURCE.read_text().split("static int walk(", 1)[1].split("\n}\n", 1)[0]
    assert not re.search(r"\*key == '.'", walk)


def test_the_built_c_module_has_body_py_keys() -> None:
    assert _lpenc.BODY_KEYS == "".join(body.C_KEYS[name] for name in C_ORDER)


def test_body_keys_cover_every_record_attribute_once() -> None:
    r = Record.make("m", "d1", 1, {"x": 1}, tags={"a": "b"}, source="s", key=1)
    stored = orjson.loads(body.encode(r))
    assert set(stored) == set(body.KEYS.values()) and len(set(body.KEYS.values())) == len(body.KEYS)
    assert {name: stored[key] for name, key in body.KEYS.items()} == {
        "kind": "m", "device_id": "d1", "ts": 1, "fields": {"x": 1}, "tags": {"a": "b"}, "source": "s", "id": r.id}
    assert set(body.C_KEYS.values()) == set(body.KEYS.values()) - {body.SOURCE}


@settings(max_examples=200, deadline=None)
@given(records=st.lists(RECORD, min_size=1, max_size=6))
def test_encode_decode_round_trip(records: list[Record]) -> None:
    for r in records:
        stored = body.encode(r)
        assert body.decode(stored, int(r.priority)) == r
        assert body.line_parts(stored) == (r.kind, r.device_id, r.ts, r.fields, r.tags, r.id)


@settings(max_examples=200, deadline=None)
@given(records=st.lists(RECORD, min_size=1, max_size=6), nudge=st.booleans())
def test_bodies_from_body_py_through_the_c_encoder_give_the_python_lines(records: list[Record],
                                                                        nudge: bool) -> None:
    """body.encode -> C encoder gives, byte for byte, what the Python encoder writes for the
    Records themselves (no body decoding on the Python side)."""
    enc = Encoder("veh-1", same_timestamp="nudge" if nudge else "overwrite")

    def series(kind: bytes, device_id: bytes, tags: bytes) -> bytes:
        return enc.series_key(orjson.loads(kind), orjson.loads(device_id), orjson.loads(tags)).encode()

    lines, n, handed = _lpenc.encode(b"\n".join(body.encode(r) for r in records), {}, series, enc.nudge, None)
    expected = [enc.line(r.kind, r.device_id, r.ts, r.fields, r.tags, r.id) for r in records]
    # hex ids and scalar fields: the C encoder takes every record with something to write
    assert list(handed) == [i for i, line in enumerate(expected) if line is None]
    assert n == len(records) - len(handed)
    assert lines == b"\n".join(line for line in expected if line is not None)


def test_a_body_with_other_keys_is_handed_back_not_misread() -> None:
    enc = Encoder()
    r = Record.make("m", "d1", 1_700_000_000_000_000_001, {"x": 1.5}, source="t", key=1)
    renamed = orjson.dumps({"kind": r.kind, "d": r.device_id, "t": r.ts, "f": r.fields, "g": r.tags,
                            "s": r.source, "i": r.id})
    _, n, handed = _lpenc.encode(renamed, {}, lambda *a: b"m", enc.nudge, None)
    assert n == 0 and list(handed) == [0]

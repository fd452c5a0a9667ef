"""The MQTT payload spec (pure decoding) and the Mosquitto password hash format."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import time
from datetime import UTC, datetime

import cbor2
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldhub.core.records import Priority
from fieldhub.core.registry import Device
from fieldhub.sources.mqtt.provision import hash_password, verify_password
from fieldhub.sources.mqtt.spec import Rejected, decode, is_will

RG = Device("rg-001", "rain_gauge", "420102001001")
NOW = time.time_ns()
NOW_MS = NOW // 1_000_000


def ok(topic: str, body: dict | bytes, device: Device | None = RG):
    payload = body if isinstance(body, bytes) else orjson.dumps(body)
    return decode(topic, payload, device, NOW)


def reason(topic: str, body, device: Device | None = RG) -> str:
    with pytest.raises(Rejected) as exc:
        ok(topic, body, device)
    return exc.value.reason


def test_telemetry_becomes_record_with_device_tags_and_stable_id() -> None:
    m = ok("fh/rg-001/up/telemetry", {"seq": 7, "ts": NOW_MS, "fields": {"rain_mm": 1.5}})
    r = m.record
    assert (r.kind, r.device_id, r.ts, r.priority, r.source) == ("rain_gauge", "rg-001", NOW_MS * 10**6,
                                                                  Priority.TELEMETRY, "mqtt")
    assert r.fields["rain_mm"] == 1.5 and r.fields["seq"] == 7 and r.fields["hub_rx_ns"] == NOW
    assert r.tags["admin_code"] == "420102001001" and r.tags["level"] == "village"
    again = ok("fh/rg-001/up/telemetry", {"seq": 7, "ts": NOW_MS, "fields": {"rain_mm": 1.5}})
    other = ok("fh/rg-001/up/telemetry", {"seq": 8, "ts": NOW_MS, "fields": {"rain_mm": 1.5}})
    assert again.record.id == r.id != other.record.id
    assert not m.clock_suspect and "clock" not in r.tags


def test_channels_alarm_ack_position_status() -> None:
    a = ok("fh/rg-001/up/alarm", {"seq": 1, "ts": NOW_MS, "alarm": "rain over 50 mm/h", "severity": "critical",
                                  "fields": {"rain_1h_mm": 55.0}}).record
    assert a.kind == "alarm" and a.priority == Priority.ALARM and a.fields["severity"] == "critical"
    k = ok("fh/rg-001/up/ack", {"seq": 2, "ts": NOW_MS, "cmd_id": "c-9", "result": "ok"}).record
    assert k.kind == "cmd_ack" and k.priority == Priority.COMMAND and k.fields["cmd_id"] == "c-9"
    p = ok("fh/rg-001/up/position", {"seq": 3, "ts": "2026-11-30T08:00:00+08:00",
                                     "fields": {"lat": 30.59, "lon": 114.3}}).record
    assert p.kind == "position" and p.ts == int(datetime(2026, 11, 30, tzinfo=UTC).timestamp()) * 10**9
    s = ok("fh/rg-001/up/status", {"seq": 4, "fields": {"battery_pct": 80}}).record
    assert s.kind == "status" and s.tags["clock"] == "hub" and s.ts == NOW


def test_cbor_body_with_short_keys() -> None:
    m = ok("fh/rg-001/up/telemetry", cbor2.dumps({"s": 5, "t": NOW_MS, "f": {"rain_mm": 0.2}}))
    assert m.seq == 5 and m.record.fields["rain_mm"] == 0.2


def test_clock_far_off_is_kept_but_flagged() -> None:
    m = ok("fh/rg-001/up/telemetry", {"seq": 1, "ts": NOW_MS - 3 * 3600 * 1000, "fields": {"rain_mm": 1}})
    assert m.clock_suspect and m.record.tags["clock"] == "suspect"
    assert m.record.fields["clock_skew_s"] == pytest.approx(-10800, abs=1)
    assert m.record.ts == (NOW_MS - 3 * 3600 * 1000) * 10**6 and m.record.fields["hub_rx_ns"] == NOW


@pytest.mark.parametrize("topic, body, expect", [
    ("fh/rg-001/up/telemetry", b"{not json", "not valid UTF-8 JSON"),
    ("fh/rg-001/up/telemetry", b"[1, 2]", "neither a JSON object nor a CBOR map"),
    ("fh/rg-001/up/telemetry", b"", "empty payload"),
    ("fh/rg-001/up/telemetry", {"ts": 1, "fields": {"a": 1}}, "seq must be"),
    ("fh/rg-001/up/telemetry", {"seq": -1, "fields": {"a": 1}}, "seq must be"),
    ("fh/rg-001/up/telemetry", {"seq": True, "fields": {"a": 1}}, "seq must be"),
    ("fh/rg-001/up/telemetry", {"seq": 1, "ts": "yesterday", "fields": {"a": 1}}, "not RFC 3339"),
    ("fh/rg-001/up/telemetry", {"seq": 1, "ts": "2026-11-30T08:00:00", "fields": {"a": 1}}, "no time zone"),
    ("fh/rg-001/up/telemetry", {"seq": 1, "ts": 5, "fields": {"a": 1}}, "between 2000 and 2100"),
    ("fh/rg-001/up/telemetry", {"seq": 1, "fields": {}}, "has no fields"),
    ("fh/rg-001/up/telemetry", {"seq": 1, "fields": {"a": [1]}}, "not a number, string or boolean"),
    ("fh/rg-001/up/telemetry", {"seq": 1, "fields": {"rain_mm": -3}}, "out of range"),
    ("fh/rg-001/up/telemetry", {"seq": 1, "fields": {"rain_mm": "lots"}}, "must be a number"),
    ("fh/rg-001/up/position", {"seq": 1, "fields": {"lat": 91, "lon": 0}}, "out of range"),
    ("fh/rg-001/up/position", {"seq": 1, "fields": {"alt_m": 10}}, "needs fields.lat"),
    ("fh/rg-001/up/alarm", {"seq": 1, "fields": {}}, "needs \"alarm\""),
    ("fh/rg-001/up/alarm", {"seq": 1, "alarm": "x", "severity": "meh"}, "severity must be"),
    ("fh/rg-001/up/ack", {"seq": 1, "cmd_id": "c", "result": "maybe"}, "ack result"),
    ("fh/rg-001/up/gossip", {"seq": 1, "fields": {"a": 1}}, "unknown channel"),
    ("fh/rg-001/down/cmd", {"seq": 1, "fields": {"a": 1}}, "is not fh/"),
])
def test_malformed_is_rejected_with_a_reason(topic, body, expect) -> None:
    assert expect in reason(topic, body)


def test_unknown_device_and_size_limit() -> None:
    assert reason("fh/ghost/up/telemetry", {"seq": 1, "fields": {"a": 1}}, None) == "unknown device"
    with pytest.raises(Rejected, match="too large"):
        decode("fh/rg-001/up/telemetry", b"{" + b" " * 70000 + b"}", RG, NOW)


def test_deep_json_rejected() -> None:
    assert "JSON" in reason("fh/rg-001/up/telemetry", b"{\"a\":" * 5000 + b"1" + b"}" * 5000)


def test_last_will_form() -> None:
    assert is_will("status", b'{"online": false}')
    assert not is_will("status", b'{"online": false, "seq": 3}')
    assert not is_will("telemetry", b'{"online": false}')


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(payload=st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS)),
    st.fixed_dictionaries({"seq": json_values, "ts": json_values, "fields": json_values})
      .map(orjson.dumps),
    st.dictionaries(st.sampled_from(["s", "t", "f", "seq", 1, b"x"]), json_values).map(
        lambda d: cbor2.dumps(d)),
    st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
), channel=st.sampled_from(["telemetry", "status", "position", "alarm", "ack", "x"]))
def test_fuzz_decode_only_ever_rejects_with_a_reason(payload: bytes, channel: str) -> None:
    try:
        m = decode(f"fh/rg-001/up/{channel}", payload, RG, NOW)
    except Rejected as exc:
        assert exc.reason and exc.device_id == "rg-001"
    else:
        assert m.record.fields and m.record.device_id == "rg-001"


def test_password_hash_is_mosquittos_pbkdf2_sha512_format() -> None:
    h = hash_password("s3cret", salt=b"0123456789ab")
    kind, iters, salt, digest = h.split("$")[1:]
    assert (kind, iters) == ("7", "101")
    assert base64.b64decode(salt) == b"0123456789ab"
    assert base64.b64decode(digest) == hashlib.pbkdf2_hmac("sha512", b"s3cret", b"0123456789ab", 101)
    assert verify_password("s3cret", h) and not verify_password("s3cret!", h)


def test_our_verifier_accepts_mosquitto_passwd_output(tmp_path) -> None:
    """Cross-check against Mosquitto's own tool where it is installed (the broker test is the proof)."""
    import shutil

    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd not installed")
    f = tmp_path / "pw"
    subprocess.run([tool, "-c", "-b", str(f), "alice", "pa:ss"], check=True, capture_output=True)
    user, _, hashed = f.read_text().strip().partition(":")
    assert user == "alice" and hashed.startswith("$7$") and verify_password("pa:ss", hashed)

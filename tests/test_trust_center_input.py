"""Issue 12, finding 3: the center never stalls on bad input.

The codec is fuzzed with mutated batches of real records (a Beidou/GPS receiver's capture
and a drone's telemetry log): whatever the bytes, only ``ProtocolError`` escapes, and what
does decode can be stored. Then a real ``fieldhub center run`` on a real broker is fed 100
bad batches (the kinds that used to raise ValueError, UnicodeDecodeError, a JSON error or
fail in the store) and still stores every genuine batch that follows.
"""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import orjson
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fieldhub.center.worker import HubRegistry
from fieldhub.core.errors import ProtocolError
from fieldhub.core.log import DurableLog
from fieldhub.core.records import Priority, Record
from fieldhub.sources.mqtt.mosquitto import stop_process
from fieldhub.uplink.codec import MAGIC, VERSION, Batch, _uv, _zz, decode_batch, encode_batch, encode_body
from fieldhub.uplink.config import LinkConfig, UplinkConfig
from fieldhub.uplink.sender import Uplink
from tests import uplink_hubproc as hubproc
from tests.conftest import ROOT, fieldhub_cmd, run_cli
from tests.mqtt_util import wait_for
from tests.test_trust_center_acks import center_ids, client, publish

HUB = "vehicle-31"
T0 = 1_780_000_000_000_000_000
I64 = 1 << 63


def _nmea_records(path: Path, limit: int) -> list[Record]:
    import drivers
    from drivers.base import ParseContext

    drv = drivers.get("nmea")
    framer, parser = drv.framer(), drv.parser({})
    ctx = ParseContext("gnss-01", T0, tags={"admin_code": "420102001001"}, source="serial:nmea")
    out: list[Record] = []
    for chunk in drv.capture_chunks(path):
        for frame in framer.feed(chunk):
            if frame.ok:
                out.extend(parser.parse(frame, ctx))
    return out[:limit]


def _mavlink_records(path: Path, limit: int) -> list[Record]:
    """Numeric telemetry of a real drone log, as the drone source would file it."""
    from pymavlink import mavutil

    conn = mavutil.mavlink_connection(str(path), robust_parsing=True)
    out: list[Record] = []
    while len(out) < limit:
        m = conn.recv_match(type=["ATTITUDE", "GLOBAL_POSITION_INT", "VFR_HUD", "SYS_STATUS"])
        if m is None:
            break
        fields = {k: getattr(m, k) for k in m.get_fieldnames() if isinstance(getattr(m, k), (int, float))}
        out.append(Record.make(m.get_type().lower(), "drone-1", int(m._timestamp * 1e9), fields,
                               source="mavlink", priority=Priority.POSITION))
    conn.close()
    return out


@pytest.fixture(scope="module")
def real_batches() -> list[tuple[bytes, bytes]]:
    """(framed batch, raw body) pairs of real records, 20-25 records each (small: 10,000 of them run fast)."""
    fixtures = ROOT.parent / "shared" / "fixtures"
    nmea = fixtures / "nmea" / "gpsd_beidou-bd.log"
    tlog = fixtures / "mavlink" / "dronekit_log_upload_test.tlog"
    if not nmea.exists() or not tlog.exists():
        pytest.skip(f"real captures absent ({nmea}, {tlog})")
    sets = [_nmea_records(nmea, 25), _mavlink_records(tlog, 25), [hubproc.record(i) for i in range(20)]]
    out = []
    for n, recs in enumerate(sets):
        assert recs, f"no records from capture {n}"
        batch = Batch(HUB, (7 << 32) | n, T0, {int(r.priority): (0, 100 + n) for r in recs}, recs,
                      {"link": "sat", "backlog": {"telemetry": 5}})
        out.append((encode_batch(batch), encode_body(recs)))
    return out


def _storable(records: list[Record]) -> None:
    for r in records:
        assert -I64 <= r.ts < I64 and isinstance(r.priority, Priority)
        orjson.dumps(r.fields)  # what the center's store and InfluxDB writer do with them
        orjson.dumps(r.tags)
        for v in r.fields.values():
            assert not isinstance(v, int) or -I64 <= v < I64


def _mutate(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    b = bytearray(data)
    for op, pos, val in ops:
        if not b:
            b.append(val)
            continue
        i = pos % len(b)
        if op == 0:
            b[i] ^= 1 << (val % 8)
        elif op == 1:
            b[i] = val
        elif op == 2:
            b.insert(i, val)
        elif op == 3:
            del b[i]
        elif op == 4:
            del b[i:]
        else:  # a varint-looking run: huge counts and lengths
            b[i:i] = bytes([0xFF] * (val % 10) + [0x7F])
    return bytes(b)


_frame_of = zstandard.ZstdCompressor(level=1)


def _with_body(framed: bytes, body: bytes) -> bytes:
    """``framed``'s header with another (compressed) body."""
    from fieldhub.uplink.codec import decode_header

    _b, at = decode_header(framed)
    return framed[:at] + _frame_of.compress(body)


@settings(max_examples=10_000, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 2), layer=st.integers(0, 2), seed=st.integers(0, 1 << 32), n=st.integers(1, 6))
def test_codec_fuzz_only_protocol_errors_escape(real_batches, which: int, layer: int, seed: int, n: int) -> None:
    framed, body = real_batches[which]
    rnd = random.Random(seed)
    ops = [(rnd.randrange(6), rnd.randrange(1 << 20), rnd.randrange(256)) for _ in range(n)]
    if layer == 0:  # past zstd: the columnar decoder itself
        data = _with_body(framed, _mutate(body, ops))
    elif layer == 1:  # the uncompressed header (hub, ranges, meta)
        data = _mutate(framed[:80], ops) + framed[80:]
    else:
        data = _mutate(framed, ops)
    try:
        batch = decode_batch(data)
    except ProtocolError:
        return
    _storable(batch.records)
    assert isinstance(batch.meta, dict)


# ----------------------------------------------------------------------------- a center fed bad batches
def _header(hub: str, count: int, meta: bytes = b"", prio: int = 4) -> bytearray:
    head = bytearray(MAGIC)
    head += bytes([VERSION, 1])
    _uv(head, len(hub))
    head += hub.encode()
    _uv(head, 1)  # batch id
    _uv(head, T0)
    _uv(head, 1)
    head.append(prio)
    _uv(head, 0)
    _uv(head, 10)
    _uv(head, len(meta))
    head += meta
    _uv(head, count)
    return head


def _body(strings: list[bytes], prio: int = 4, ints: tuple[int, ...] = (5,), unit: int = 9) -> bytes:
    """A one-series body: kind, device, source = strings 0..2, one int column named strings[3]."""
    b = bytearray()
    _uv(b, len(strings))
    for s in strings:
        _uv(b, len(s))
        b += s
    _uv(b, _zz(0))
    _uv(b, 1)  # series
    for i in range(3):
        _uv(b, i)
    b.append(prio)
    _uv(b, 0)  # tags
    _uv(b, len(ints))
    b.append(unit)
    for i in range(len(ints)):
        _uv(b, _zz(1 if i == 0 else 0))  # one unit apart
    b.append(2)  # ids as strings: the kind's string
    for _ in ints:
        _uv(b, 0)
    _uv(b, 1)
    _uv(b, 3)
    b.append(0)  # T_INT
    prev = 0
    for k in ints:
        _uv(b, _zz(k - prev))
        prev = k
    return bytes(b)


def bad_batches(hub: str, n: int, genuine: bytes) -> list[tuple[str, bytes]]:
    """``n`` bad batches of the kinds that used to escape as non-protocol errors or fail in the store."""
    z = zstandard.ZstdCompressor()
    ok_strings = [b"hydro", b"village-001", b"soak", b"seq"]
    kinds = [
        bytes(_header(hub, 1, b"{not json")) + z.compress(_body(ok_strings)),               # JSON error
        bytes(_header(hub, 1, b"[1,2]")) + z.compress(_body(ok_strings)),                   # meta not an object
        bytes(_header(hub, 1)) + z.compress(_body(ok_strings, prio=9)),                     # ValueError
        bytes(_header(hub, 1)) + z.compress(_body([b"hydro", b"\xff\xfe", b"soak", b"seq"])),  # UnicodeDecodeError
        bytes(_header(hub, 1)) + z.compress(_body(ok_strings, ints=(1 << 70,))),            # int beyond the store
        bytes(_header(hub, 1)) + z.compress(_body(ok_strings, unit=200)),                   # timestamp beyond 64 bits
        bytes(_header(hub, 1, prio=77)) + z.compress(_body(ok_strings)),                    # range of no class
    ]
    rnd = random.Random(12)
    out = []
    for i in range(n):
        if i % 8 < len(kinds):
            data = kinds[i % 8]
        else:  # a random mutation of a genuine batch that still fails
            while True:
                data = _mutate(genuine, [(rnd.randrange(6), rnd.randrange(1 << 20), rnd.randrange(256))])
                try:
                    decode_batch(data)
                except ProtocolError:
                    break
        out.append((f"fh/hub/{hub}/uplink", data))
    return out


def test_center_fed_100_bad_batches_stores_every_genuine_one(tmp_path: Path, mosquitto) -> None:
    center_dir = tmp_path / "center"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    center = subprocess.Popen(fieldhub_cmd("center", "run", "--broker", mosquitto.url, "--data-dir", str(center_dir),
                                           "--worker", "c1"), cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    assert center.stderr is not None and "center worker" in center.stderr.readline()
    recs = [hubproc.record(i) for i in range(5000)]
    genuine = encode_batch(Batch(HUB, 1, T0, {4: (0, 50)}, recs[:50], {}))
    attacker = client(mosquitto.port, "attacker")
    log = DurableLog(tmp_path / "hub" / "log.db")
    up = Uplink(log, UplinkConfig(enabled=True, batch_records=500, window=2, ack_timeout=5, probe_interval=0.5,
                                  links=[LinkConfig(name="ground", url=mosquitto.url, bandwidth="2mbit",
                                                    latency=0.01)]), HUB)
    try:
        wait_for(lambda: (center_dir / "center.db").exists(), timeout=10, what="the center's registry")
        for topic, data in bad_batches(HUB, 100, genuine):
            publish(attacker, topic, data)
        registry = HubRegistry(center_dir / "center.db", readonly=True)
        wait_for(lambda: registry.rejected_count() >= 100, timeout=30, what="100 bad batches rejected")
        reasons = [r for (r,) in registry._db.execute("SELECT reason FROM rejected")]
        assert len(reasons) == 100 and all(reasons)
        assert not any(r.startswith("internal error") for r in reasons), reasons  # all named protocol errors
        log.append(recs)
        up.start()
        wait_for(lambda: up.status()["backlog_total"] == 0, timeout=60, what="every genuine batch acknowledged")
        assert center_ids(center_dir) == {r.id for r in recs}
    finally:
        up.stop()
        log.close()
        attacker.loop_stop()
        attacker.disconnect()
        stop_process(center, 15)


# ----------------------------------------------------------------------------- finding 7, the center's side
def test_center_refuses_short_message_ports_without_a_mac_key(tmp_path: Path) -> None:
    for port_opt in ("--beidou", "--tiantong"):
        proc = run_cli("center", "run", "--broker", "mqtt://127.0.0.1:1", "--data-dir", str(tmp_path / "c"),
                       port_opt, "/dev/null", env={"FIELDHUB_UPLINK_MAC_KEY": ""})
        assert proc.returncode == 2, proc.stderr
        assert "--mac-key" in proc.stderr and "Traceback" not in proc.stderr


def test_center_data_is_private_whatever_the_umask(tmp_path: Path) -> None:
    from fieldhub.center.worker import CenterWorker

    old = os.umask(0o022)
    try:
        w = CenterWorker("mqtt://127.0.0.1:1", tmp_path / "center")
        w.store.write_counted([hubproc.record(1)], HUB)  # the WAL exists now
    finally:
        os.umask(old)
    try:
        modes = {p.name: oct(p.stat().st_mode & 0o777) for p in (tmp_path / "center").iterdir()}
        assert oct((tmp_path / "center").stat().st_mode & 0o777) == "0o750"
        for name in ("store.db", "store.db-wal", "center.db"):
            assert modes[name] == "0o640", modes
    finally:
        w.store.close()
        w.registry.close()

"""MAVLink replay: every real tlog decodes with pymavlink's own good/bad counts; records make sense."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from pymavlink import mavutil

from drivers.mavlink import MavFramer, new_parser, read_tlog
from fieldhub.cli.replay import replay_file
from tests.conftest import run_cli

TLOGS = ("ardusub_small.tlog", "dronekit_flight_replay_flight.tlog", "dronekit_log_upload_test.tlog",
         "uavlogviewer_vtol_sitl.tlog")


def pymavlink_counts(path: Path) -> tuple[int, int]:
    """pymavlink's own reading of a tlog (mavlogfile, robust parsing): (good, bad)."""
    conn = mavutil.mavlink_connection(str(path), dialect="ardupilotmega", robust_parsing=True)
    good = bad = 0
    try:
        while (m := conn.recv_msg()) is not None:
            if m.get_type() == "BAD_DATA":
                bad += 1
            else:
                good += 1
    finally:
        conn.close()
    return good, bad


@pytest.mark.parametrize("name", TLOGS)
def test_fixture_counts_match_pymavlink(fixtures_dir: Path, name: str) -> None:
    path = fixtures_dir / "mavlink" / name
    good, bad = pymavlink_counts(path)
    result = replay_file("mavlink", path)
    assert (result["frames"], result["bad_frames"]) == (good, bad)
    assert good > 0
    assert result["records"] > 0


def test_bad_crc_counted_not_fatal(fixtures_dir: Path) -> None:
    """The dronekit flight has 1,314 packets of an old msg 142 whose CRC no longer matches."""
    result = replay_file("mavlink", fixtures_dir / "mavlink" / "dronekit_flight_replay_flight.tlog")
    assert result["bad_frames"] == 1314
    assert set(result["errors"]) == {"invalid MAVLink CRC in msgID 142"}
    assert result["by_kind"]["position"] > 1000  # decoding carried on past every bad packet


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_corrupted_tlog_counts_match_pymavlink(fixtures_dir: Path, tmp_path: Path, seed: int) -> None:
    """Flipped bytes (in packets and in timestamps) still give exactly pymavlink's counts."""
    data = bytearray((fixtures_dir / "mavlink" / "dronekit_log_upload_test.tlog").read_bytes())
    rng = random.Random(seed)
    for _ in range(40):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    data += b"\xfe\x09\x00"  # torn final packet
    path = tmp_path / "corrupt.tlog"
    path.write_bytes(bytes(data))
    good, bad = pymavlink_counts(path)
    result = replay_file("mavlink", path)
    assert (result["frames"], result["bad_frames"]) == (good, bad)
    assert bad > 0


def test_chunking_does_not_change_framing(fixtures_dir: Path) -> None:
    path = fixtures_dir / "mavlink" / "ardusub_small.tlog"
    f1, f2 = MavFramer(), MavFramer()
    a = [(f.ok, f.raw, f.ts) for c in read_tlog(path, chunk=65536) for f in f1.feed(c)]
    b = [(f.ok, f.raw, f.ts) for c in read_tlog(path, chunk=7) for f in f2.feed(c)]
    assert a == b
    assert a[0][2] > 1_600_000_000 * 10**9  # tlog timestamps carried onto the frames (2023 flight)


def test_raw_stream_matches_parse_buffer(fixtures_dir: Path) -> None:
    """A raw (untimestamped) stream frames exactly as bare parse_buffer does."""
    frames = [f for c in read_tlog(fixtures_dir / "mavlink" / "dronekit_log_upload_test.tlog")
              for f in MavFramer().feed(c)]
    stream = b"".join(f.raw for f in frames if f.ok) + b"\x00garbage\x00" + frames[5].raw
    bare = new_parser().parse_buffer(stream)
    ours = MavFramer().feed(stream)
    assert [m.get_type() != "BAD_DATA" for m in bare] == [f.ok for f in ours]
    assert sum(not f.ok for f in ours) >= 1


def test_records_from_real_flight(fixtures_dir: Path) -> None:
    records = []
    replay_file("mavlink", fixtures_dir / "mavlink" / "dronekit_flight_replay_flight.tlog",
                device_id="quad", on_record=records.append)
    modes = {r.fields["mode"] for r in records if r.kind == "drone_state"}
    assert {"STABILIZE", "LOITER", "AUTO", "RTL"} <= modes
    pos = [r for r in records if r.kind == "position"]
    assert all(r.device_id == "quad-1" for r in pos)
    assert any(abs(r.fields["lat"] + 35.3623) < 0.01 and abs(r.fields["lon"] - 149.1658) < 0.01 for r in pos)
    texts = [r.fields["text"] for r in records if r.kind == "drone_event"]
    assert any("PreArm: Need 3D Fix" in t for t in texts)
    acks = [r for r in records if r.kind == "command_ack"]
    assert {(a.fields["command"], a.fields["result_name"]) for a in acks} == {(400, "failed")}
    assert any(r.fields["armed"] for r in records if r.kind == "drone_state")
    # rate limit: GLOBAL_POSITION_INT arrives at ~2 Hz here, altitude is limited to 1 Hz
    n_alt = sum(r.kind == "altitude" for r in records)
    assert 0.25 * len(pos) < n_alt < 0.75 * len(pos)
    assert len({r.id for r in records}) == len(records)


def test_ardusub_battery_and_gps(fixtures_dir: Path) -> None:
    records = []
    replay_file("mavlink", fixtures_dir / "mavlink" / "ardusub_small.tlog", on_record=records.append)
    sources = {r.fields["source"] for r in records if r.kind == "battery"}
    assert sources == {"sys_status", "battery_status"}
    gps = [r for r in records if r.kind == "gps"]
    assert {r.fields["fix"] for r in gps} >= {"3d", "no_gps"}
    first = next(r for r in gps if r.fields["fix_type"] >= 3)
    assert abs(first.fields["lat"] - 48.3861) < 0.001 and abs(first.fields["lon"] + 124.6306) < 0.001
    # camera and onboard-computer heartbeats do not masquerade as the vehicle
    assert {r.fields["vehicle_type"] for r in records if r.kind == "drone_state"} == {"submarine"}


def test_cli_replay_summary(fixtures_dir: Path) -> None:
    path = fixtures_dir / "mavlink" / "dronekit_log_upload_test.tlog"
    proc = run_cli("replay", "mavlink", str(path), "--summary", "--json", check=True)
    out = json.loads(proc.stdout)
    assert out["frames"] == 417 and out["bad_frames"] == 0
    assert out["by_kind"]["drone_state"] >= 1
    proc = run_cli("replay", "mavlink", str(path), "--json", check=True)
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert len(lines) == out["records"]
    assert {x["fields"]["mode"] for x in lines if x["kind"] == "drone_state"} == {"MANUAL"}

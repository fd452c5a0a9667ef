"""Issue 13, items 7-12: drivers that lost or invented records. Each case replays a small capture
in ``tests/captures/`` (written from the protocol; see its README) or real bytes through a real
socket, pty and durable log, and fails on the drivers before the fix."""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from drivers import beidou_rdss, dmr, nmea, pelco_d, tiantong
from drivers.base import Frame, ParseContext, read_hex_capture
from fieldhub.cli.replay import replay_file
from fieldhub.core.log import DurableLog
from fieldhub.core.records import Record
from fieldhub.sources.serial.config import SerialPortConfig
from fieldhub.sources.serial.ingest import open_port

CAPTURES = Path(__file__).parent / "captures"


def replay(driver: str, path: Path, **kw: object) -> tuple[dict, list[Record]]:
    recs: list[Record] = []
    result = replay_file(driver, path, on_record=recs.append, **kw)  # type: ignore[arg-type]
    return result, recs


def wait_for(cond: Callable[[], object], timeout: float = 15.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def stored(tmp_path: Path, records: list[Record]) -> int:
    """How many of ``records`` a real durable log keeps (it ignores a second record with one id)."""
    log = DurableLog(tmp_path / "log.db")
    try:
        log.append(records)
        return log.view().record_count()
    finally:
        log.close()


# -- 7: one id per talker -------------------------------------------------------------------
def test_nmea_talkers_of_one_epoch_keep_their_own_records(tmp_path: Path) -> None:
    result, recs = replay("nmea", CAPTURES / "nmea_multitalker.log")
    assert (result["frames"], result["bad_frames"], result["records"]) == (11, 0, 11)
    positions = [r for r in recs if r.kind == "position"]
    assert sorted(r.fields["talker"] for r in positions) == ["BD", "GL", "GP"]
    assert len({r.id for r in recs}) == 11
    assert stored(tmp_path, recs) == 11  # before: 5 (GL and BD GGA, GN RMC, BD GLL, GL GST, GN ZDA lost)


def test_nmea_repeated_sentence_is_still_one_record() -> None:
    """The talker separates constellations; the same sentence twice is still the same event."""
    line = nmea.sentence("GPGGA,120000.00,3036.0000,N,11418.0000,E,1,08,0.9,35.2,M,-12.1,M,,")
    framer, parser = nmea.framer(), nmea.NmeaParser()
    ids = {r.id for f in framer.feed(line + line) for r in parser.parse(f, ParseContext("g", 1))}
    assert len(ids) == 1


def test_every_driver_id_key_keeps_distinct_events_apart(fixtures_dir: Path, tmp_path: Path) -> None:
    """Every real capture: no two records of a replay share an id unless they are the same event."""
    files = [("nmea", p) for p in sorted((fixtures_dir / "nmea").glob("*.log"))]
    files += [("mavlink", p) for p in sorted((fixtures_dir / "mavlink").glob("*.tlog"))]
    files += [("dmr", fixtures_dir / "vectors" / "dmr_location_vectors_ok-dmrlib.txt"),
              ("pelco_d", fixtures_dir / "vectors" / "pelco_vectors_node-ptz-decoder.txt"),
              ("beidou_rdss", fixtures_dir / "vectors" / "rdss_sample_sentences.txt")]
    if not (fixtures_dir / "nmea").exists():
        pytest.skip(f"no real captures at {fixtures_dir}")
    for driver, path in files:
        _, recs = replay(driver, path)
        by_id: dict[str, Record] = {}
        for r in recs:
            other = by_id.setdefault(r.id, r)
            assert other is r or (other.kind, other.ts, other.fields) == (r.kind, r.ts, r.fields), (path.name, r)


# -- 8: no position without a fix ----------------------------------------------------------
def test_mavlink_no_position_before_the_fix() -> None:
    result, recs = replay("mavlink", CAPTURES / "mavlink_nofix.tlog")
    assert result["frames"] == 17 and result["bad_frames"] == 0
    positions = [r.fields for r in recs if r.kind == "position"]
    assert len(positions) == 3  # before: 8, five of them at (0, 0)
    assert all(abs(p["lat"] - 30.6) < 1e-3 and abs(p["lon"] - 114.3) < 1e-3 for p in positions)
    gps = [r.fields for r in recs if r.kind == "gps"]
    assert gps[0]["fix_type"] == 1 and "lat" not in gps[0]
    # altitude and velocity still come from the same messages
    assert sum(1 for r in recs if r.kind == "altitude") == 8


def test_no_replayed_record_sits_at_zero_zero(fixtures_dir: Path) -> None:
    tlogs = sorted((fixtures_dir / "mavlink").glob("*.tlog"))
    if not tlogs:
        pytest.skip(f"no tlogs at {fixtures_dir / 'mavlink'}")
    for path in [*tlogs, CAPTURES / "mavlink_nofix.tlog"]:
        _, recs = replay("mavlink", path)
        zero = [r for r in recs if r.fields.get("lat") == 0 and r.fields.get("lon") == 0]
        assert not zero, (path.name, len(zero))  # before: 86 in dronekit's flight, 7 in its bench log
    others = [("nmea", p) for p in sorted((fixtures_dir / "nmea").glob("*.log"))]
    others += [("dmr", fixtures_dir / "vectors" / "dmr_location_vectors_ok-dmrlib.txt"),
               ("beidou_rdss", fixtures_dir / "vectors" / "rdss_sample_sentences.txt"),
               ("dmr", CAPTURES / "dmr_lrrp_enveloped.txt"), ("nmea", CAPTURES / "nmea_multitalker.log")]
    for driver, path in others:
        _, recs = replay(driver, path)
        assert not [r for r in recs if r.fields.get("lat") == 0 and r.fields.get("lon") == 0], path.name


# -- 9: the last sentence without a line end; framers flushed at end of input ---------------
def test_last_sentence_without_newline_is_replayed() -> None:
    result, recs = replay("nmea", CAPTURES / "nmea_no_final_newline.log")
    assert (result["frames"], result["records"]) == (3, 3)  # before: 2
    assert recs[-1].kind == "gnss_rmc"


@pytest.mark.parametrize("make,data,good,bad", [
    (nmea.framer, b"$GPGGA,1*00\r\n" + nmea.sentence("GPZDA,120000.00,02,12,2026,00,00")[:-2], 1, 1),
    (beidou_rdss.framer, beidou_rdss.encode({"cmd": "ica"})[:-2], 1, 0),
    (tiantong.AtFramer, b"AT+CSQ\r\n+CSQ: 17,99", 2, 0),
    (dmr.DmrFramer, dmr.encode({"cmd": "locate", "radio": "10.0.0.1"})[:-3], 0, 1),
    (pelco_d.PelcoFramer, pelco_d.frame_d(1, 0, 2, 32, 0)[:5], 0, 1),
])
def test_every_framer_flushes_what_it_holds(make: Callable, data: bytes, good: int, bad: int) -> None:
    framer = make()
    frames = framer.feed(data) + framer.flush()
    assert (sum(f.ok for f in frames), sum(not f.ok for f in frames)) == (good, bad)
    assert framer.buffered == 0 and framer.flush() == []


def test_serial_port_flushes_when_the_device_goes_away(pty_pair: tuple[int, str], tmp_path: Path) -> None:
    """A receiver unplugged right after a sentence, before its line end: the sentence is kept."""
    master, path = pty_pair
    log = DurableLog(tmp_path / "log.db")
    port = open_port(SerialPortConfig("gnss-1", "nmea", path), log=log)
    port.start()
    try:
        wait_for(lambda: port.transport.connected.is_set(), what="pty open")
        os.write(master, nmea.sentence("GPGGA,120000.00,3036.0000,N,11418.0000,E,1,08,0.9,35.2,M,-12.1,M,,")
                 + nmea.sentence("GPRMC,120001.00,A,3036.0000,N,11418.0000,E,0.1,45.0,021226,,,A")[:-2])
        wait_for(lambda: port.status()["frames"] == 1 and port.framer.buffered > 0, what="first sentence")
        os.close(master)  # unplugged
        wait_for(lambda: port.status()["frames"] == 2, what="the last sentence")  # before: stayed at 1
    finally:
        port.stop()
    kinds = [e.record.kind for e in log.cursor("t").read(100)]
    log.close()
    assert kinds.count("position") == 1 and kinds.count("gnss_rmc") == 1


def test_mavlink_raw_stream_partial_packet_counted_at_end(fixtures_dir: Path, tmp_path: Path) -> None:
    from drivers.mavlink import MavFramer, new_parser

    mav = new_parser(7, 1)
    from pymavlink.dialects.v20 import ardupilotmega as m2

    pkt = m2.MAVLink_heartbeat_message(2, 3, 81, 0, 3, 3).pack(mav)
    path = tmp_path / "cut.mav"
    path.write_bytes(pkt + pkt[:7])
    result, _ = replay("mavlink", path)
    assert (result["frames"], result["bad_frames"]) == (1, 1)
    assert result["errors"] == {"truncated packet at end of input": 1}
    assert MavFramer().flush() == []


# -- 10: the DMR framer's misread length ----------------------------------------------------
def _datagrams() -> list[bytes]:
    return list(read_hex_capture(CAPTURES / "dmr_lrrp_enveloped.txt"))


def test_dmr_report_behind_an_envelope_comes_out_with_its_datagram() -> None:
    framer = dmr.DmrFramer()
    for dg in _datagrams():
        frames = framer.feed(dg)
        assert [f.ok for f in frames] == [True]  # before: [] here, the report came datagrams late
        assert frames[0].raw == dg[5:]
    result, recs = replay("dmr", CAPTURES / "dmr_lrrp_enveloped.txt")
    assert (result["frames"], result["bad_frames"]) == (4, 0)  # before: the last one never decoded
    assert [r.kind for r in recs] == ["position"] * 4
    assert abs(recs[2].fields["lat"] + 8.55) < 1e-6 and abs(recs[2].fields["lon"] - 115.2) < 1e-6


def test_dmr_udp_each_datagram_decoded_at_once(tmp_path: Path) -> None:
    """Through a real UDP socket and log: every report is stored before the next datagram is sent."""
    log = DurableLog(tmp_path / "log.db")
    port = open_port(SerialPortConfig("radio-7", "dmr", "udp://127.0.0.1:0"), log=log)
    port.start()
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        wait_for(lambda: port.transport.bound_port, what="udp bound")
        for n, dg in enumerate(_datagrams(), 1):
            tx.sendto(dg, ("127.0.0.1", port.transport.bound_port))
            wait_for(lambda n=n: port.status()["frames"] == n, timeout=5, what=f"report {n}")
        assert port.status()["bad_frames"] == 0
    finally:
        tx.close()
        port.stop()
    recs = [e.record for e in log.cursor("t").read(100)]
    log.close()
    assert sum(1 for r in recs if r.kind == "position") == 4


# -- 11: a Beidou message that does not decode is kept -------------------------------------
def test_rdss_undecodable_message_is_kept_raw_with_a_tag(tmp_path: Path) -> None:
    result, recs = replay("beidou_rdss", CAPTURES / "rdss_txr_undecodable.log")
    assert (result["frames"], result["bad_frames"], result["records"]) == (3, 0, 3)  # before: 1, 2, 1
    ok, mixed, code = recs
    assert ok.fields["text"] == "请求支援" and "decode_error" not in ok.tags
    assert mixed.tags["decode_error"] == "content" and mixed.fields["raw"] == "A4C7EBC7F3help at bridge"
    assert "not A4+hex" in mixed.fields["decode_error"] and mixed.fields["sender"] == "0242286"
    assert code.tags["decode_error"] == "content" and code.fields["raw"] == "48454C50zz"
    assert stored(tmp_path, recs) == 3


# -- 12: random bytes are not records -------------------------------------------------------
def test_random_udp_datagrams_make_no_dmr_records(tmp_path: Path) -> None:
    rnd = random.Random(13)
    datagrams = [rnd.randbytes(rnd.randint(20, 1400)) for _ in range(300)]
    framer, parser = dmr.DmrFramer(), dmr.DmrParser()
    records = [r for dg in datagrams for f in framer.feed(dg) + framer.flush() if f.ok
               for r in parser.parse(f, ParseContext("r", 1))]
    assert records == []  # before: 132 dmr_status records from these 300 datagrams
    # the genuine documents still pass, one datagram each
    _, recs = replay("dmr", Path(__file__).parent / "captures" / "dmr_lrrp_enveloped.txt")
    assert len(recs) == 4


def test_random_serial_bytes_make_no_ptz_records(pty_pair: tuple[int, str], tmp_path: Path) -> None:
    """2 MiB of noise on a real pty into a PTZ port (camera address 1 from its profile)."""
    master, path = pty_pair
    log = DurableLog(tmp_path / "log.db")
    port = open_port(SerialPortConfig("ptz-1", "pelco_d", path, poll_interval=0), log=log)
    noise = random.Random(12).randbytes(2 << 20)
    camera = pelco_d.frame_d(1, 0, 0x59, 0x11, 0x94)  # a genuine pan reply at the end
    port.start()
    try:
        wait_for(lambda: port.transport.connected.is_set(), what="pty open")
        data = noise + camera
        for i in range(0, len(data), 4096):
            os.write(master, data[i:i + 4096])
        wait_for(lambda: port.status()["frames"] >= 1 and port.framer.buffered == 0, timeout=60,
                 what="the camera's reply")
    finally:
        port.stop()
    recs = [e.record for e in log.cursor("t").read(100000)]
    log.close()
    data_recs = [r for r in recs if r.kind.startswith("ptz_")]
    # before: 35 ptz_command records out of this noise (a one-byte checksum passes 1 in 256)
    assert [(r.kind, r.fields["address"]) for r in data_recs] == [("ptz_position", 1)]


def test_pelco_parser_refuses_unknown_camera_addresses() -> None:
    parser = pelco_d.PelcoParser({"ptz": {"address": 3}})
    ctx = ParseContext("ptz", 1)
    assert parser.parse(Frame(pelco_d.frame_d(3, 0, 0x02, 0x20, 0)), ctx)[0].fields["command"] == "right"
    from fieldhub.core.errors import ProtocolError

    with pytest.raises(ProtocolError, match="address 9"):
        parser.parse(Frame(pelco_d.frame_d(9, 0, 0x02, 0x20, 0)), ctx)
    # without a profile (replay of a capture) every address is taken
    assert pelco_d.PelcoParser().parse(Frame(pelco_d.frame_d(9, 0, 0x02, 0x20, 0)), ctx)

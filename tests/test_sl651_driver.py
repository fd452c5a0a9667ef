"""SL 651-2014 driver: replay of the vectors against an independent CRC + length walk, values, confirms, fuzz."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import drivers
from drivers import sl651
from drivers.base import ParseContext
from fieldhub.cli.replay import replay_file
from fieldhub.core.errors import ProtocolError
from fieldhub.core.records import Priority
from tests.conftest import run_cli

VECTORS = Path(__file__).with_name("test_sl651_vectors.txt")


def _modbus(data: bytes) -> int:
    """CRC-16/MODBUS bit by bit, written from the standard's note H.3.2 (preset FFFF, shift right, XOR A001)."""
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def independent_walk(stream: bytes) -> tuple[int, int]:
    """(good, bad) frames by start + plausible header + length + end char + CRC, independent of the driver."""
    good = bad = 0
    i = 0
    while i < len(stream):
        if stream[i:i + 2] == b"\x7e\x7e" and i + 14 <= len(stream):
            word = int.from_bytes(stream[i + 11:i + 13], "big")
            n = word & 0xFFF
            if word >> 12 in (0, 8) and stream[i + 13] in (2, 0x16) and n:
                fr = stream[i:i + n + 17]
                if len(fr) == n + 17:
                    if fr[-3] in (3, 0x17, 5, 4, 6, 0x1B, 0x15) and _modbus(fr[:-2]) == int.from_bytes(fr[-2:], "big"):
                        good += 1
                        i += n + 17
                        continue
                    bad += 1
        elif stream[i] == 1 and i + 24 <= len(stream):
            head = stream[i + 1:i + 23]
            if all(c in b"0123456789ABCDEF" for c in head) and stream[i + 23] in (2, 0x16):
                n = int(head[18:22], 16) & 0xFFF
                fr = stream[i:i + n + 29]
                if len(fr) == n + 29:
                    if _modbus(fr[:-4]) == int(fr[-4:], 16):
                        good += 1
                        i += n + 29
                        continue
                    bad += 1
        i += 1
    return good, bad


def vector_bytes() -> bytes:
    return b"".join(drivers.get("sl651").capture_chunks(VECTORS))


def test_crc_check_value() -> None:
    assert sl651.crc16(b"123456789") == 0x4B37 == _modbus(b"123456789")
    # a keep-alive published with its CRC (6BCA, high byte first)
    raw = bytes.fromhex("7E7E01001234567812342F0008020003591011155111036BCA")
    assert sl651.crc16(raw[:-2]).to_bytes(2, "big") == raw[-2:]


def test_replay_counts_equal_an_independent_walk() -> None:
    good, bad = independent_walk(vector_bytes())
    result = replay_file("sl651", VECTORS)
    assert (result["frames"], result["bad_frames"]) == (good, bad) == (17, 3)
    assert result["records"] == 28
    assert result["by_kind"] == {"hydro": 23, "sl651_downlink": 1, "sl651_packet": 3, "sl651_report": 1}


def test_byte_by_byte_feed_finds_the_same_frames() -> None:
    data = vector_bytes()
    whole = [f.raw for f in sl651.Sl651Framer().feed(data) if f.ok]
    framer = sl651.Sl651Framer()
    pieces = [f.raw for i in range(len(data)) for f in framer.feed(data[i:i + 1]) if f.ok]
    assert pieces == whole and len(whole) == 17


def _records(match: str) -> list:
    parser = sl651.Sl651Parser()
    out = []
    for f in sl651.Sl651Framer().feed(vector_bytes()):
        if f.ok and match in f.raw.hex().upper():
            out += parser.parse(f, ParseContext("st-1", 1_752_537_605_000_000_000))
    return out


def test_values_from_the_standard() -> None:
    # 34 hourly, serial 7E08: F4 rain series (0.1 mm, FF invalid), F5 levels (0.01 m, FFFF invalid)
    (hourly,) = _records("027E08")
    f = hourly.fields
    assert f["DRP_mm_01"] == 0.1 and f["DRP_mm_05"] == 0.5 and "DRP_mm_06" not in f
    assert f["DRZ1_m_01"] == 12.34 and "DRZ1_m_04" not in f and f["DRZ1_m_12"] == 12.46
    assert f["PT_mm"] == 1234.5 and f["Z_m"] == 12.46 and f["VT_V"] == 12.15 and f["no_data"] == 2
    assert hourly.tags["station"] == "0012345678" and hourly.tags["station_type"] == "P"
    # 33 added report: FF negative sign; an alarm-class record
    (added,) = _records("02027E")
    assert added.fields["Z_m"] == -0.123 and added.fields["E76"] == -1.72
    assert added.priority == Priority.ALARM
    # 31 uniform interval: one record per 5-minute slot, the missing one left out
    series = [r for r in _records("0418000005")]
    assert [r.fields["Z_m"] for r in series] == [1.0, 1.001, 1.002, 1.003, 1.005, 1.006, 1.007, 1.008,
                                                 1.009, 1.01, 1.011]
    assert series[4].ts - series[0].ts == 5 * 300 * 10**9
    # a real vendor frame: Z, status bits, user-defined FFxx kept raw, an all-F voltage left out
    (vendor,) = _records("0010220001")
    assert vendor.fields["Z_m"] == 513.0 and vendor.fields["status_bits"] == 0x400
    assert vendor.fields["FF01"] == "FFFFFFFFFF" and "VT_V" not in vendor.fields
    # two F0F0 groups: two records at their own times
    two = _records("2507150900")
    assert [r.fields.get("PJ_mm") for r in two] == [12.5, 13.0] and two[1].ts - two[0].ts == 3600 * 10**9
    # times are Beijing time: 2025-07-15 08:00 +08:00
    assert hourly.ts == 1_752_537_600 * 10**9


def test_ascii_mode_and_m3() -> None:
    asc = [r for r in _records(b"ST 0012345678".hex().upper()) if r.tags["fc"] == "32"]
    assert asc[0].fields["Z_m"] == 12.345 and asc[0].fields["VT_V"] == 12.1 and asc[0].fields["no_data"] == 1
    assert asc[0].tags["encoding"] == "ascii"
    interval = [r for r in _records(b"DRN05".hex().upper())]
    assert [r.fields["Z_m"] for r in interval] == [1.01, 1.02, 1.04]
    packets = [r for r in _records("") if r.kind == "sl651_packet"]
    assert [(r.fields["seq"], r.fields["total"]) for r in packets] == [(1, 3), (2, 3), (3, 3)]
    jpeg = b"".join(bytes.fromhex(str(r.fields["data"])) for r in packets)
    assert jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9" and len(jpeg) == 516


def test_confirm_same_function_and_serial() -> None:
    for f in sl651.Sl651Framer().feed(vector_bytes()):
        if not f.ok:
            continue
        hdr = sl651.decode_header(f.raw)
        if not hdr.uplink or hdr.fc not in sl651.CONFIRMED:
            continue
        for end, char in (("EOT", sl651.EOT), ("ESC", sl651.ESC)):
            reply = sl651.encode({"cmd": "confirm", "frame": f.raw, "end": end})
            (back,) = [x for x in sl651.Sl651Framer().feed(reply) if x.ok]
            down = sl651.decode_header(back.raw)
            assert not down.uplink and down.fc == hdr.fc and down.end == char
            assert down.station == hdr.station and down.center == hdr.center
            if hdr.encoding == "hex":
                assert down.body[:2] == hdr.body[:2] and len(reply) == (25 if hdr.start == sl651.STX else 28)
                # downlink layout: the RTU address comes before the center address
                assert reply[2:7] == bytes.fromhex(hdr.station) and reply[7] == hdr.center
            else:
                assert down.body[:4] == hdr.body[:4]


def test_resend_has_the_same_record_ids_whatever_its_serial() -> None:
    """A station that reboots restarts its serial; a resend may be restamped: ids come from the content."""
    body = bytes.fromhex("0005250715080005F1F1001234567850F0F025071508002019000125")
    a = sl651.build_frame(center=1, station="0012345678", password=0, fc=0x32, body=body, end=sl651.ETX)
    b = sl651.build_frame(center=1, station="0012345678", password=0, fc=0x32,
                          body=bytes.fromhex("0001250715080107") + body[8:], end=sl651.ETX)
    p = sl651.Sl651Parser()
    ctx = ParseContext("st-1", 0, source="sl651")
    ra = p.parse(sl651.Sl651Framer().feed(a)[0], ctx)
    rb = p.parse(sl651.Sl651Framer().feed(b)[0], ctx)
    assert [r.id for r in ra] == [r.id for r in rb]
    other = bytes.fromhex("0005250715080005F1F1001234567850F0F025071508002019000126")
    c = sl651.build_frame(center=1, station="0012345678", password=0, fc=0x32, body=other, end=sl651.ETX)
    assert p.parse(sl651.Sl651Framer().feed(c)[0], ctx)[0].id != ra[0].id


def test_cli_replay(tmp_path: Path) -> None:
    proc = run_cli("replay", "sl651", str(VECTORS), "--summary", "--json", check=True)
    out = json.loads(proc.stdout)
    assert (out["frames"], out["bad_frames"], out["records"]) == (17, 3, 28)
    raw = tmp_path / "capture.bin"
    raw.write_bytes(b"\x00noise" + vector_bytes() + b"\x7e")
    out = json.loads(run_cli("replay", "sl651", str(raw), "--summary", "--json", check=True).stdout)
    assert (out["frames"], out["bad_frames"]) == (17, 3)


# --------------------------------------------------------------------------------------------------
# fuzz

GOOD = [f.raw for f in sl651.Sl651Framer().feed(vector_bytes()) if f.ok]
BOUND = sl651.MAX_FRAME


def _run(chunks: list[bytes]) -> None:
    framer, parser = sl651.Sl651Framer(), sl651.Sl651Parser()
    ctx = ParseContext("fuzz", 1_700_000_000_000_000_000)
    for chunk in chunks:
        for frame in framer.feed(chunk):
            if frame.ok:
                try:
                    parser.parse(frame, ctx)
                except ProtocolError:
                    pass
        assert framer.buffered <= BOUND + len(chunk)


fast = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(st.lists(st.binary(max_size=700), max_size=12))
def test_random_bytes(chunks: list[bytes]) -> None:
    _run(chunks)


@fast
@given(st.lists(st.tuples(st.sampled_from(GOOD), st.integers(0, 400), st.integers(0, 255), st.binary(max_size=20)),
                min_size=1, max_size=8))
def test_mutated_frames(items: list[tuple[bytes, int, int, bytes]]) -> None:
    """Valid frames with a byte changed and noise between them: never anything but ProtocolError."""
    chunks = []
    for raw, pos, val, noise in items:
        b = bytearray(raw)
        b[pos % len(b)] = val
        chunks += [bytes(b), noise]
    _run(chunks)


@fast
@given(st.lists(st.sampled_from(GOOD), min_size=1, max_size=6), st.binary(max_size=30))
def test_body_mutations_parse_or_raise_protocol_error(frames: list[bytes], junk: bytes) -> None:
    """Frames with a valid CRC around garbage bodies: the parser raises only ProtocolError."""
    parser = sl651.Sl651Parser()
    for raw in frames:
        hdr = sl651.decode_header(raw)
        body = (hdr.body[:8] + junk) if hdr.encoding == "hex" else hdr.body[:16] + junk
        if not body:
            continue
        fr = sl651.build_frame(center=hdr.center, station=hdr.station, password=hdr.password, fc=hdr.fc,
                               body=body, end=hdr.end, uplink=hdr.uplink, ascii_mode=hdr.encoding == "ascii")
        (frame,) = sl651.Sl651Framer().feed(fr)
        assert frame.ok
        try:
            parser.parse(frame, ParseContext("fuzz", 0))
        except ProtocolError:
            pass


def test_memory_bounded_under_a_false_start() -> None:
    """A stray 7E7E claiming 4095 bytes does not hold back a valid frame behind it."""
    framer = sl651.Sl651Framer()
    fake = bytes.fromhex("7E7E0100123456781234320FFF02")
    got = framer.feed(fake + GOOD[1])
    assert [f.raw for f in got if f.ok] == [GOOD[1]]
    for _ in range(100):
        framer.feed(b"\x7e" * 97)
        assert framer.buffered <= BOUND + 97


@pytest.mark.parametrize("text", ["7E7E", "not hex at all", ""])
def test_odd_lines_are_not_frames(tmp_path: Path, text: str) -> None:
    p = tmp_path / "x.txt"
    p.write_text(f"# comment\n{text}\n")
    out = replay_file("sl651", p)
    assert out["frames"] == 0 and out["records"] == 0


def test_flush_at_end_of_input_counts_a_frame_cut_short() -> None:
    framer = drivers.get("sl651").framer()
    assert framer.flush() == []
    assert framer.feed(bytes.fromhex("7E7E0012345678")) == []  # a frame's start, never finished
    (bad,) = framer.flush()
    assert not bad.ok and "input ended inside a frame" in (bad.error or "")
    assert framer.flush() == []  # empty afterwards

"""Fuzzing every serial framer: random bytes, truncated and concatenated frames, oversized lines."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import drivers
import drivers.pelco_d
from drivers.base import Frame, ParseContext
from drivers.sentence import sentence
from fieldhub.core.errors import ProtocolError
from firmware_profiles import FAMILIES as SERIAL_FAMILIES

FAMILIES = list(SERIAL_FAMILIES)
GOOD = {
    "nmea": [sentence("GNGGA,074150.00,3035.5680,N,11418.3300,E,1,14,0.8,35.0,M,-10.2,M,,"),
             sentence("GBGSV,1,1,02,201,45,120,42,209,30,210,38,1")],
    "beidou_rdss": [sentence("BDICI,0242286,00242286,0000011,6,60,3,N,0"),
                    sentence("BDTXR,1,0179773,2,,A468656C6C6F"), sentence("BDFKI,TXA,N,N,0,0040")],
    "tiantong": [b"+CSQ: 17,99\r\n", b"+CREG: 0,1\r\n", b'+CMTI: "SM",3\r\n', b"OK\r\n"],
    "dmr": [drivers.get("dmr").encoder({"cmd": "text", "dest": "10.0.0.8", "src": "10.0.0.1", "text": "hi"}),
            bytes.fromhex("0D0F22042468ACE066118ECD8D118AD47B")],
    "pelco_d": [bytes.fromhex("FF010004200025"), drivers.pelco_d.frame_d(1, 0, 0x59, 0x30, 0x39)],
}
#: what a framer may hold while waiting for the rest of a frame
BOUND = {"nmea": 256 + 2, "beidou_rdss": 4096 + 2, "tiantong": 1024 + 2, "dmr": 1024, "pelco_d": 8}


def run(family: str, chunks: list[bytes]) -> tuple[int, int]:
    drv = drivers.get(family)
    framer, parser = drv.framer(), drv.parser({})
    ctx = ParseContext("fuzz", 1_700_000_000_000_000_000)
    good = bad = 0
    for chunk in chunks:
        for frame in framer.feed(chunk):
            if not frame.ok:
                bad += 1
                continue
            try:
                parser.parse(frame, ctx)
                good += 1
            except ProtocolError:
                bad += 1
        assert framer.buffered <= BOUND[family], f"{family} holds {framer.buffered} bytes"
    return good, bad


fast = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("family", FAMILIES)
@fast
@given(data=st.lists(st.binary(max_size=600), max_size=12))
def test_random_bytes_never_raise(family: str, data: list[bytes]) -> None:
    run(family, data)


@pytest.mark.parametrize("family", FAMILIES)
@fast
@given(picks=st.lists(st.tuples(st.integers(0, 10), st.integers(0, 200), st.binary(max_size=20)), max_size=15),
       cut=st.integers(1, 64))
def test_truncated_and_concatenated_frames(family: str, picks: list, cut: int) -> None:
    """Good frames, some cut short, glued with garbage, then split at arbitrary points."""
    stream = b""
    whole = 0
    for idx, trunc, junk in picks:
        frame = GOOD[family][idx % len(GOOD[family])]
        if trunc % 3 == 0:
            frame = frame[: max(1, trunc % len(frame))]
        else:
            whole += 1
        stream += junk + frame
    chunks = [stream[i:i + cut] for i in range(0, len(stream), cut)]
    run(family, chunks)


@pytest.mark.parametrize("family", FAMILIES)
def test_good_frames_survive_garbage(family: str) -> None:
    """Frames after a burst of line noise are still decoded: the framer resynchronises."""
    noise = bytes(range(256)) * 3
    good, _ = run(family, [noise + b"\r\n" + b"".join(GOOD[family])])
    assert good >= len(GOOD[family]) - 1
    good2, _ = run(family, [b"".join(GOOD[family])])
    assert good2 == len(GOOD[family])


@pytest.mark.parametrize("family", ["nmea", "beidou_rdss", "tiantong"])
def test_oversized_lines_are_bounded(family: str) -> None:
    drv = drivers.get(family)
    framer = drv.framer()
    bad = 0
    for _ in range(50):  # 50 x 64 KiB of a line that never ends
        for f in framer.feed(b"$" + b"A" * 65535):
            bad += not f.ok
        assert framer.buffered <= BOUND[family]
    assert bad >= 1
    out = framer.feed(b"\r\n" + GOOD[family][0])
    assert any(f.ok for f in out)


# --------------------------------------------------------------------------- structured fuzzing
# Frames with valid checksums and random contents reach the parsers, which may only answer with
# records or a ProtocolError.
_field = st.one_of(st.text(alphabet="0123456789.-+ENSWAVMKT", max_size=12), st.just(""),
                   st.binary(max_size=8).map(lambda b: b.hex()))


@fast
@given(talker=st.sampled_from(["GP", "GL", "GA", "BD", "GB", "GN", "GY", "P"]),
       stype=st.sampled_from(["GGA", "GNS", "RMC", "GSA", "GSV", "VTG", "ZDA", "GLL", "GST", "TXT", "XYZ"]),
       fields=st.lists(_field, max_size=22))
def test_nmea_parser_on_random_valid_sentences(talker: str, stype: str, fields: list[str]) -> None:
    frame = sentence(",".join([talker + stype, *fields]))
    run("nmea", [frame])


@fast
@given(stype=st.sampled_from(["ICI", "ICP", "TXR", "FKI", "BSI", "TXA", "SNR"]),
       prefix=st.sampled_from(["BD", "CC"]), fields=st.lists(_field, max_size=24))
def test_rdss_parser_on_random_valid_sentences(stype: str, prefix: str, fields: list[str]) -> None:
    run("beidou_rdss", [sentence(",".join([prefix + stype, *fields]))])


@fast
@given(lines=st.lists(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80)
                      .map(lambda t: t.encode()), max_size=10),
       heads=st.lists(st.sampled_from([b"+CSQ: ", b"+CREG: ", b"+CMTI: ", b'+CMGR: "REC READ","1",,"x"',
                                       b"+CMGR: 0,,", b"+CLCC: ", b"+CLIP: ", b"+CMGS: "]), max_size=10))
def test_tiantong_parser_on_random_lines(lines: list[bytes], heads: list[bytes]) -> None:
    stream = b"".join(h + ln + b"\r\n" for h, ln in zip(heads, lines + [b""] * len(heads)))
    run("tiantong", [stream])


@fast
@given(header=st.sampled_from([0x08, 0x09, 0x02, 0x11]), opcode=st.sampled_from([0xA002, 0xB002, 0xC003, 0x00A1, 0x1234]),
       payload=st.binary(max_size=80), lrrp=st.binary(max_size=40), doc=st.sampled_from([0x07, 0x0D, 0x13, 0x09]))
def test_dmr_parser_on_random_valid_frames(header: int, opcode: int, payload: bytes, lrrp: bytes, doc: int) -> None:
    from drivers.dmr import hdap_message

    body = b"\x22\x01\x01" + lrrp
    run("dmr", [hdap_message(header, opcode, payload), bytes((doc, len(body))) + body])


@fast
@given(frames=st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255),
                                 st.integers(0, 255), st.integers(0, 255)), max_size=20))
def test_pelco_parser_on_random_valid_frames(frames: list) -> None:
    from drivers.pelco_d import frame_d

    good, bad = run("pelco_d", [b"".join(frame_d(*f) for f in frames)])
    assert good + bad >= len(frames)


def test_parser_state_is_bounded() -> None:
    """GSV groups that never complete and long-SMS parts that never arrive do not pile up."""
    drv = drivers.get("nmea")
    framer, parser = drv.framer(), drv.parser({})
    ctx = ParseContext("g", 1)
    for _ in range(2000):
        for f in framer.feed(sentence("GPGSV,3,2,12,01,40,083,46,02,17,308,41,12,07,344,39,14,22,228,45")):
            parser.parse(f, ctx)
    assert sum(len(v) for v in parser._gsv_groups.values()) <= 68
    from drivers.sms_pdu import deliver_pdus

    tt = drivers.get("tiantong").parser({})
    for ref in range(300):  # first halves of 300 long messages whose second halves never come
        pdu = deliver_pdus("+8610000000000", "长" * 100, ref=ref)[0]
        for line in (b"+CMGR: 0,,%d" % (len(pdu) // 2 - 1), pdu.encode()):
            tt.parse(Frame(line), ctx)
    assert len(tt._parts) <= tt.max_parts_pending

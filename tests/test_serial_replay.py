"""Replay every real capture and vector file through its driver; counts cross-checked independently."""

from __future__ import annotations

import functools
import operator
import re
from pathlib import Path

import orjson
import pytest

from fieldhub.cli.replay import replay_file

# MANIFEST.txt sentence counts (a plain XOR check by the fixture collector); gpsd_beidou-bd.log also
# has one sentence behind a leading space (" $GNRMC"), which the manifest did not count.
MANIFEST = {"gpsd_beidou-bd.log": 78, "gpsd_beidou-gb.log": 68, "gpsd_quectel-l76k-nmea.log": 2280,
            "gpsd_unicore-um621.log": 882, "gpsd_ublox-neo-m9n-nmea.log": 1403}
NMEA_FILES = sorted(MANIFEST)
_SENT = re.compile(rb"^\s*(\$[^*]*)\*([0-9A-Fa-f]{2})\s*$")


def independent_counts(path: Path) -> tuple[int, int]:
    """(valid, bad-checksum) sentences by a line regex and functools.reduce XOR — not our framer."""
    good = bad = 0
    for line in path.read_bytes().splitlines():
        if line.startswith(b"#"):
            continue
        m = _SENT.match(line)
        if not m:
            continue
        body = m.group(1)[1:]
        if functools.reduce(operator.xor, body, 0) == int(m.group(2), 16):
            good += 1
        else:
            bad += 1
    return good, bad


@pytest.mark.parametrize("name", NMEA_FILES)
def test_nmea_capture_every_sentence_decoded(fixtures_dir: Path, name: str) -> None:
    path = fixtures_dir / "nmea" / name
    good, bad = independent_counts(path)
    spaced = sum(1 for line in path.read_bytes().splitlines() if line.startswith(b" $"))
    assert good == MANIFEST[name] + spaced
    result = replay_file("nmea", path)
    assert result["frames"] == good
    assert result["bad_frames"] == bad == 0
    assert result["records"] > 0 and "position" in result["by_kind"] or name == "gpsd_beidou-gb.log" \
        or result["by_kind"].get("gnss_nofix")


def test_nmea_fields_and_beidou_prns(fixtures_dir: Path) -> None:
    recs: list = []
    replay_file("nmea", fixtures_dir / "nmea" / "gpsd_beidou-gb.log", on_record=recs.append)
    sky = [r.fields for r in recs if r.kind == "gnss_sky" and r.fields["constellation"] == "beidou"]
    # GBGSV prints BeiDou PRNs as 201-209; records carry satellite numbers 1-64
    assert sky and all(0 < int(p) <= 64 for s in sky for p in s["prns"].split(",") if p)
    recs = []
    replay_file("nmea", fixtures_dir / "nmea" / "gpsd_unicore-um621.log", on_record=recs.append)
    pos = [r for r in recs if r.kind == "position"]
    assert pos and abs(pos[0].fields["lat"] - 44.0688) < 0.001 and abs(pos[0].fields["lon"] + 121.3141) < 0.001
    assert pos[0].fields["alt_m"] == 1109.2
    raw = {r.fields["sentence"] for r in recs if r.kind == "nmea_raw"}
    assert {"GYOACC", "SNRSTAT"} <= raw  # vendor sentences kept as raw records, not errors


def test_nmea_bad_checksum_counted(tmp_path: Path, fixtures_dir: Path) -> None:
    src = (fixtures_dir / "nmea" / "gpsd_quectel-l76k-nmea.log").read_bytes().splitlines(keepends=True)
    lines = [ln for ln in src if ln.startswith(b"$")][:200]
    def corrupt(ln: bytes) -> bytes:
        star = ln.rindex(b"*")
        wrong = b"00" if ln[star + 1:star + 3] != b"00" else b"01"
        return ln[:star + 1] + wrong + ln[star + 3:]

    broken = [corrupt(ln) if i % 10 == 0 else ln for i, ln in enumerate(lines)]
    f = tmp_path / "broken.log"
    f.write_bytes(b"".join(broken))
    good, bad = independent_counts(f)
    assert bad == 20
    result = replay_file("nmea", f)
    assert (result["frames"], result["bad_frames"]) == (good, bad)
    assert result["errors"] == {"bad checksum": 20}


def test_rdss_vectors(fixtures_dir: Path) -> None:
    path = fixtures_dir / "vectors" / "rdss_sample_sentences.txt"
    rows = [ln for ln in path.read_text().splitlines() if not ln.startswith("#") and "|" in ln]
    assert len(rows) == 25
    recs: list = []
    result = replay_file("beidou_rdss", path, on_record=recs.append)
    assert result["bad_frames"] == sum(1 for r in rows if r.startswith("BAD")) == 1
    assert result["frames"] == 24
    cards = [r.fields for r in recs if r.kind == "bd_card"]
    assert {(c["card"], c["interval_s"]) for c in cards if c["present"]} >= {("0242286", 60), ("0166166", 40)}
    assert any(not c["present"] for c in cards)  # the all-zeros "no card" answer
    msgs = {r.fields["sender"]: r.fields for r in recs if r.kind == "bd_message"}
    assert msgs["0179773"]["text"] == "hello" and msgs["0179773"]["encoding"] == 2
    assert msgs["0166166"]["text"] == "12343335" and msgs["0166166"]["hex"] == "3132333433333335"
    fki = [r.fields for r in recs if r.kind == "bd_feedback"]
    assert [f["executed"] for f in fki] == [False, True, True] and fki[1]["wait_s"] == 40
    assert fki[2]["style"] == "bd3"
    beams = [r.fields for r in recs if r.kind == "bd_beam"]
    assert beams[0]["resp_beam"] == 1 and beams[0]["p1"] == 3 and beams[0]["max_power"] == 3


def test_rdss_gbk_txr_roundtrip() -> None:
    from drivers import beidou_rdss
    from drivers.base import ParseContext
    from drivers.sentence import sentence

    parser = beidou_rdss.RdssParser()
    ctx = ParseContext("bd", 1)
    framer = beidou_rdss.framer()
    for enc in (0, 1, 2):
        content = beidou_rdss.encode_content("请求支援", enc)
        frames = framer.feed(sentence(b"BDTXR,1,0242286,%d,1200,%s" % (enc, content)))
        assert len(frames) == 1 and frames[0].ok
        (rec,) = parser.parse(frames[0], ctx)
        assert rec.fields["text"] == "请求支援", enc


def test_pelco_vectors(fixtures_dir: Path) -> None:
    path = fixtures_dir / "vectors" / "pelco_vectors_node-ptz-decoder.txt"
    rows = [ln.split("|") for ln in path.read_text().splitlines() if not ln.startswith("#") and "|" in ln]
    valid = sum(1 for r in rows if r[1].strip() == "valid")
    invalid = sum(1 for r in rows if r[1].strip() == "INVALID")
    recs: list = []
    result = replay_file("pelco_d", path, on_record=recs.append)
    # stream rows: split pan-left (1 frame), pan-left+stop (2), garbage+stop twice (2)
    assert result["frames"] == valid + 5
    assert result["bad_frames"] == invalid == 2
    names = [r.fields["command"] for r in recs]
    assert names[:5] == ["left", "right", "up", "down", "stop"]
    assert "goto_preset" in names and names.count("stop") >= 4


def test_dmr_vectors(fixtures_dir: Path) -> None:
    path = fixtures_dir / "vectors" / "dmr_location_vectors_ok-dmrlib.txt"
    recs: list = []
    result = replay_file("dmr", path, on_record=recs.append)
    assert result["frames"] == 9 and result["bad_frames"] == 0
    lrrp = [r.fields for r in recs if r.fields.get("protocol") == "lrrp"]
    first = lrrp[0]
    assert first["info_time"] == "2003-06-30T07:30:00Z"
    assert abs(first["lat"] - 12.345345) < 1e-5 and abs(first["lon"] - 24.668866) < 1e-5
    assert abs(first["radius_m"] - 0.77) < 0.01 and abs(first["speed_ms"] - 0.04688) < 0.001
    assert lrrp[1]["result"] == 5
    assert lrrp[2]["interval_s"] == 60
    lp = [r.fields for r in recs if r.fields.get("protocol") == "hytera_lp"][0]
    assert lp["radio_ip"] == "10.33.16.221" and lp["course_deg"] == 121 and lp["speed_kn"] == 0.1
    assert abs(lp["lat"] - (47 + 18.8051 / 60)) < 1e-6 and abs(lp["lon"] - (18 + 54.4387 / 60)) < 1e-6


def test_dmr_text_roundtrip_and_bad_checksum() -> None:
    from drivers import dmr
    from drivers.base import ParseContext

    data = dmr.encode({"cmd": "text", "dest": "10.0.0.80", "src": "10.0.0.1", "text": "撤离路线已确认"})
    framer = dmr.DmrFramer()
    frames = framer.feed(b"\x00\xff" + data[:7]) + framer.feed(data[7:])
    assert [f.ok for f in frames] == [True]
    (rec,) = dmr.DmrParser().parse(frames[0], ParseContext("r", 1))
    assert rec.kind == "dmr_text" and rec.fields["text"] == "撤离路线已确认" and rec.fields["dest_ip"] == "10.0.0.80"
    broken = data[:-2] + bytes(((data[-2] + 1) & 0xFF,)) + data[-1:]
    assert [f.ok for f in dmr.DmrFramer().feed(broken)] == [False]


def test_replay_cli_summary_json(cli, fixtures_dir: Path) -> None:
    proc = cli("replay", "beidou_rdss", str(fixtures_dir / "vectors" / "rdss_sample_sentences.txt"),
               "--summary", "--json", check=True)
    out = orjson.loads(proc.stdout)
    assert (out["frames"], out["bad_frames"], out["records"]) == (24, 1, 24)
    assert out["by_kind"]["bd_message"] == 3

"""Encoders against published vectors, AT parsing, RDSS limits, SMS PDUs, [serial] config errors."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from drivers import beidou_rdss, pelco_d, tiantong
from drivers.base import Frame, ParseContext
from drivers.sms_pdu import decode_deliver, decode_submit, submit_pdus
from fieldhub.core.errors import ConfigError, ValidationError
from fieldhub.core.records import Priority
from fieldhub.hub import load_config


def test_pelco_encoder_matches_vectors(fixtures_dir: Path) -> None:
    rows = {r.split("|")[2].strip(): bytes.fromhex(r.split("|")[3])
            for r in (fixtures_dir / "vectors" / "pelco_vectors_node-ptz-decoder.txt").read_text().splitlines()
            if r.startswith("pelco-d |")}
    assert pelco_d.encode({"cmd": "left", "speed": 0x20}) == rows["cam1 pan left speed 0x20"]
    assert pelco_d.encode({"cmd": "right", "speed": 0x20}) == rows["cam1 pan right speed 0x20"]
    assert pelco_d.encode({"cmd": "up", "speed": 0x20}) == rows["cam1 tilt up speed 0x20"]
    assert pelco_d.encode({"cmd": "stop"}) == rows["cam1 stop"]
    assert pelco_d.encode({"cmd": "zoom_in"}) == rows["cam1 zoom in (tele)"]
    assert pelco_d.encode({"cmd": "set_preset", "preset": 1}) == rows["cam1 set preset 1"]
    assert pelco_d.encode({"cmd": "goto_preset", "preset": 1}) == rows["cam1 goto preset 1"]
    assert pelco_d.encode({"cmd": "clear_preset", "preset": 1}) == rows["cam1 clear preset 1"]
    # absolute position: 123.45 deg in 0.01 units = 12345 = 0x3039
    assert pelco_d.encode({"cmd": "set_pan", "value": 123.45}) == bytes.fromhex("FF01004B3039") + bytes((0xB5,))  # 01+00+4B+30+39
    with pytest.raises(ValidationError):
        pelco_d.encode({"cmd": "goto_preset", "preset": 0})


def test_rdss_encoder_matches_vectors(fixtures_dir: Path) -> None:
    text = (fixtures_dir / "vectors" / "rdss_sample_sentences.txt").read_text()
    assert beidou_rdss.encode({"cmd": "ica"}).strip().decode() in text
    assert beidou_rdss.encode({"cmd": "txa", "dest": "0179773", "text": "hello", "encoding": "mixed"}) \
        == b"$CCTXA,0179773,1,2,A468656C6C6F*7A\r\n"
    assert beidou_rdss.encode({"cmd": "txa", "dest": "0166166", "text": "12343335", "encoding": "code"}) \
        == b"$CCTXA,0166166,1,1,3132333433333335*7F\r\n"
    assert beidou_rdss.encode({"cmd": "bsi", "period": 10}) == b"$CCRMO,BSI,2,10*17\r\n"


def test_rdss_limits_and_bad_text() -> None:
    with pytest.raises(ValidationError, match="GBK"):
        beidou_rdss.encode({"cmd": "txa", "dest": "1", "text": "🚒", "encoding": "mixed"})
    with pytest.raises(ValidationError, match="Chinese mode"):
        beidou_rdss.encode({"cmd": "txa", "dest": "1", "text": "a,b", "encoding": "chinese"})
    with pytest.raises(ValidationError, match="7 digits"):
        beidou_rdss.encode({"cmd": "txa", "dest": "12345678", "text": "x"})
    # level-3 card: 628 bits = 78 Chinese characters in mixed mode (8-bit A4 marker)
    assert beidou_rdss.content_bits("汉" * 39, beidou_rdss.ENC_MIXED) == 39 * 16 + 8
    from fieldhub.sources.serial.sessions import RdssSession

    class _Port:
        device_id = "bd"
        connected = True

        def write(self, data: bytes) -> None:  # never reached: the length check comes first
            raise AssertionError("sent a message over the card's limit")

    from fieldhub.core import profiles

    session = RdssSession(_Port(), profiles.load("rdss-bd2-level3"))
    with pytest.raises(ValidationError, match="628"):
        session.send("0242286", "汉" * 80)


def _parse_lines(lines: list[bytes]) -> list:
    framer, parser = tiantong.AtFramer(), tiantong.TiantongParser()
    ctx = ParseContext("tt", time.time_ns())
    out = []
    for f in framer.feed(b"\r\n".join(lines) + b"\r\n"):
        if f.ok:
            out.extend(parser.parse(f, ctx))
    return out


def test_tiantong_at_parsing() -> None:
    recs = _parse_lines([b"+CSQ: 99,99", b"OK", b"+CREG: 2", b'+CREG: 2,5,"1A2B","00C3"', b"RING",
                         b'+CLIP: "+8613800000000",145', b'+CLCC: 1,1,4,0,0,"+8613800000000",145',
                         b"NO CARRIER", b'+CMTI: "SM",7',
                         b'+CMGR: "REC UNREAD","+8613800000000",,"26/11/30,10:00:00+32"', b"4F60597D", b"OK"])
    kinds = [r.kind for r in recs]
    assert kinds == ["sat_signal", "sat_registration", "sat_registration", "sat_call", "sat_call", "sat_call",
                     "sat_call", "sms_notice", "sms"]
    assert recs[0].fields == {"rssi": 99, "ber": 99, "known": False}
    lost = recs[1]
    assert lost.fields["registered"] is False and lost.priority == Priority.ALARM
    assert recs[2].fields["state"] == "roaming" and recs[2].fields["lac"] == "1A2B"
    assert recs[4].fields == {"state": "incoming", "number": "+8613800000000"}
    assert recs[5].fields["state"] == "incoming" and recs[5].fields["direction"] == "incoming"
    assert recs[6].fields["state"] == "ended"
    assert recs[8].fields["text"] == "你好" and recs[8].fields["sender"] == "+8613800000000"


def test_tiantong_long_pdu_joined_out_of_order() -> None:
    text = "山洪预警：请立即撤离到安置点。" * 10
    from drivers.sms_pdu import deliver_pdus

    pdus = deliver_pdus("+8617400000009", text, ref=42)
    assert len(pdus) == 3
    lines: list[bytes] = []
    for pdu in reversed(pdus):
        lines += [b"+CMGR: 0,,%d" % (len(pdu) // 2 - 1), pdu.encode(), b"OK"]
    recs = _parse_lines(lines)
    assert [r.kind for r in recs] == ["sms"] and recs[0].fields["text"] == text and recs[0].fields["parts"] == 3


def test_submit_pdu_split_and_gsm7() -> None:
    long_ascii = "Water level 3.2m at gauge 7, evacuate zone B now. " * 5
    pdus = submit_pdus("+8613800000000", long_ascii, ref=9)
    parts = [decode_submit(p) for p in pdus]
    assert len(pdus) == 2 and "".join(p[1] for p in parts) == long_ascii
    assert {(p[2], p[3]) for p in parts} == {(9, 2)}
    # a known SMS-DELIVER from the 3GPP examples: "hellohello" in 7-bit
    assert decode_deliver("07917283010010F5040BC87238880900F10000993092516195800AE8329BFD4697D9EC37").text == "hellohello"


def test_serial_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="serial.ports\\[0\\].driver|driver 'zigbee'"):
        load_config(None, {"serial.ports": [{"device_id": "x", "driver": "zigbee", "url": "/dev/null"}]}, env={})
    with pytest.raises(ConfigError, match="ports\\[0\\].baud"):
        load_config(None, {"serial.ports": [{"device_id": "x", "driver": "nmea", "url": "/dev/x",
                                                 "baud": "fast"}]}, env={})
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(None, {"serial.ports": [{"device_id": "x", "driver": "nmea", "path": "/dev/x"}]}, env={})


def test_run_with_bad_profile_is_one_line(cli, tmp_path: Path) -> None:
    cfg = tmp_path / "f.toml"
    cfg.write_text(f'[hub]\ndata_dir = "{tmp_path / "d"}"\n[serial]\n'
                   'ports = [{device_id = "g", driver = "nmea", url = "/dev/null", profile = "rdss-bd3"}]\n')
    proc = cli("run", "--config", str(cfg), timeout=30)
    assert proc.returncode != 0 and "is for driver beidou_rdss" in proc.stderr and "Traceback" not in proc.stderr


def test_parser_errors_are_quarantinable() -> None:
    """A TXR with an unknown encoding is a ProtocolError the port counts and quarantines."""
    from fieldhub.core.errors import ProtocolError

    parser = beidou_rdss.RdssParser()
    with pytest.raises(ProtocolError):
        parser.parse(Frame(b"$BDTXR,1,0242286,7,,ABCD*00"), ParseContext("bd", 1))

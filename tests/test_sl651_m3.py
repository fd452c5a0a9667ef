"""M3 multi-packet transfers (function 36 pictures) on real sockets: reassembled into one
``sl651_picture`` bulk record with the picture's bytes, one confirm for the set only after it is
durable, a NAK naming a corrupted or missing packet, the resent packet completing the set."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from drivers import sl651
from fieldhub.core.datadir import LOG_FILE
from fieldhub.core.logview import LogView
from fieldhub.core.registry import Device
from fieldhub.hub import Hub, load_config
from tests.test_sl651_source import Dtu

STATION = "0012345678"


def picture(n: int = 3313, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    return b"\xff\xd8" + bytes(rng.randrange(256) for _ in range(n - 4)) + b"\xff\xd9"


def packets(pic: bytes, serial: int = 0x0102, chunk: int = 256) -> list[bytes]:
    """The set as an RTU sends it (Table 22): packet 1 = serial, send time, F1F1, F0F0, F3F3 + the first
    chunk; later packets raw continuation bytes; ETB on all but the last (ETX)."""
    head = (serial.to_bytes(2, "big") + bytes.fromhex("250716080530") + bytes.fromhex("F1F1" + STATION + "48")
            + bytes.fromhex("F0F02507160805F3F3"))
    chunks = [pic[i:i + chunk] for i in range(0, len(pic), chunk)]
    total = len(chunks)
    return [sl651.build_frame(center=1, station=STATION, password=0, fc=0x36, body=(head if k == 0 else b"") + c,
                              end=sl651.ETX if k == total - 1 else sl651.ETB, packet=(total, k + 1))
            for k, c in enumerate(chunks)]


def resent(frame: bytes) -> bytes:
    """A NAK'd packet as the RTU resends it: the same packet, ending ETX."""
    hdr = sl651.decode_header(frame)
    return sl651.build_frame(center=hdr.center, station=hdr.station, password=hdr.password, fc=hdr.fc,
                             body=hdr.body, end=sl651.ETX, packet=(hdr.total, hdr.seq))


@pytest.fixture
def hub(tmp_path: Path):
    cfg = load_config(None, {"hub.data_dir": str(tmp_path / "data"), "store.enabled": False, "sl651.enabled": True,
                             "sl651.listen": "127.0.0.1:0"}, env={})
    h = Hub(cfg)
    h.registry.add(Device("cam-1", "water_level", "420102001001", transport={"sl651": STATION}))
    h.start()
    yield h
    h.stop()


def _server(hub: Hub):
    return next(c for c in hub.components if c.name == "sl651")


def _kinds(hub: Hub) -> list:
    with LogView.open(hub.data_dir / LOG_FILE) as view:
        return [e.record for e in view.read({}, limit=10_000)]


def test_set_reassembled_one_record_one_confirm_after_durability(hub: Hub) -> None:
    pic = picture()
    frames = packets(pic)
    assert len(frames) == 13
    dtu = Dtu(_server(hub).address)
    view = LogView.open(hub.data_dir / LOG_FILE)
    try:
        for f in frames[:-1]:
            dtu.send(f)
        assert dtu.reply(timeout=1.0) is None          # nothing until the set is complete
        assert view.record_count() == 0
        dtu.send(frames[-1])
        reply = dtu.reply()
        assert reply is not None and view.record_count() == 1      # confirmed once durable
        down = sl651.decode_header(reply)
        assert (down.uplink, down.fc, down.end, down.total, down.seq, down.body[:2]) == \
            (False, 0x36, sl651.EOT, 13, 13, b"\x01\x02")
        assert dtu.reply(timeout=0.5) is None          # one confirm for the set
        # the confirm was lost: the station sends the whole set again; confirmed, stored once
        for f in frames:
            dtu.send(f)
        assert dtu.reply() is not None
    finally:
        dtu.close()
        view.close()
    recs = _kinds(hub)
    assert [r.kind for r in recs] == ["sl651_picture"]
    r = recs[0]
    assert bytes.fromhex(r.fields["data"]) == pic and r.fields["bytes"] == len(pic) and r.fields["packets"] == 13
    assert r.fields["format"] == "jpeg" and r.priority == 5 and r.device_id == "cam-1"
    st = _server(hub).status()
    assert (st["m3_sets"], st["m3_packets"], st["duplicates"], st["m3_naks"]) == (2, 26, 1, 0)


def test_corrupted_and_missing_packets_are_naked_by_number(hub: Hub) -> None:
    pic = picture(5000, seed=2)
    frames = packets(pic, serial=7)
    total = len(frames)
    dtu = Dtu(_server(hub).address)
    try:
        bad = bytearray(frames[2])
        bad[40] ^= 0xFF                                  # packet 3: CRC fails
        for k, f in enumerate(frames):
            if k == 2:
                dtu.send(bytes(bad))
                nak = dtu.reply()
                assert nak is not None
                h = sl651.decode_header(nak)
                assert (h.uplink, h.end, h.fc, h.total, h.seq, h.body[:2]) == (False, sl651.NAK, 0x36, total, 3,
                                                                                b"\x00\x07")
            elif k == 5:
                continue                                 # packet 6 lost on the way
            else:
                dtu.send(f)
        # the last packet shows the gap: NAK 6 (packet 3 was already asked for)
        nak = dtu.reply()
        assert nak is not None and sl651.decode_header(nak).seq == 6 and sl651.decode_header(nak).end == sl651.NAK
        assert dtu.reply(timeout=0.5) is None
        dtu.send(resent(frames[2]))
        assert dtu.reply(timeout=0.5) is None            # still missing 6
        dtu.send(resent(frames[5]))
        ok = dtu.reply()
        assert ok is not None and sl651.decode_header(ok).end == sl651.EOT and sl651.decode_header(ok).seq == total
    finally:
        dtu.close()
    (r,) = _kinds(hub)
    assert r.kind == "sl651_picture" and bytes.fromhex(r.fields["data"]) == pic
    st = _server(hub).status()
    assert st["m3_naks"] == 2 and st["bad_frames"] == 1 and st["m3_sets"] == 1


def test_unknown_station_set_quarantined_whole(hub: Hub) -> None:
    pic = picture(2000, seed=3)
    frames = [sl651.build_frame(center=1, station="0099999999", password=0, fc=0x36, body=h.body, end=h.end,
                                packet=(h.total, h.seq)) for h in map(sl651.decode_header, packets(pic))]
    dtu = Dtu(_server(hub).address)
    try:
        for f in frames:
            dtu.send(f)
        assert dtu.reply() is not None                 # confirmed once the quarantine entry is durable
    finally:
        dtu.close()
    with LogView.open(hub.data_dir / LOG_FILE) as view:
        (item,) = view.quarantine(source="sl651")
        assert not [e for e in view.read({}, limit=100)]
    assert item.reason == "unknown station" and item.meta["m3_packets"] == len(frames)
    assert item.payload.endswith(pic) and bytes.fromhex(item.meta["records"][0]["fields"]["data"]) == pic

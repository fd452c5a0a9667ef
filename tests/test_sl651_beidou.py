"""SL651 reports carried as Beidou short messages: the RDSS simulator on a real pty, the hub's serial
source logs the messages, the sl651 consumer decodes them like TCP frames, through a hub restart."""

from __future__ import annotations

import socket
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

from drivers import sl651
from fieldhub.core import control
from fieldhub.core.datadir import LOG_FILE, REGISTRY_FILE
from fieldhub.core.logview import LogView
from fieldhub.core.registry import Device, Registry
from fieldhub.hub import Hub, load_config
from simulators.rdss import RdssSim
from simulators.sl651 import CST, SimOptions, Sl651Fleet, beidou_txr, station_address

STATIONS = 5


def _wait(cond, timeout: float = 20.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _hub(data: Path, link: str) -> Hub:
    cfg = load_config(None, {"hub.data_dir": str(data), "store.enabled": False, "sl651.enabled": True,
                             "sl651.listen": "127.0.0.1:0",
                             "serial.ports": [{"device_id": "bd-1", "driver": "beidou_rdss", "url": link}],
                             "serial.backoff_initial": 0.1, "serial.backoff_max": 0.5}, env={})
    h = Hub(cfg)
    h.start()
    _wait(lambda: control.call(data, "serial.status")["bd-1"]["connected"], what="the RDSS port open")
    return h


def _records(data: Path) -> tuple[list, list, list]:
    with LogView.open(data / LOG_FILE) as view:
        entries = [e.record for e in view.read({}, limit=100_000)]
        q = view.quarantine(source="sl651")
    return ([r for r in entries if r.kind == "hydro"], [r for r in entries if r.kind == "bd_message"], q)


def test_sl651_over_beidou_stored_like_tcp(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    reg = Registry(data / REGISTRY_FILE)
    reg.add(Device("bd-1", "bd_terminal", "420102001001"))
    for i in range(STATIONS):
        reg.add(Device(f"rg-{i}", "rain_gauge", "420102001001", transport={"sl651": station_address(i)}))
    reg.close()
    rdss = RdssSim().start()
    hub = _hub(data, rdss.path)
    try:
        fleet = Sl651Fleet(SimOptions(stations=STATIONS, rate=4.0, beidou=rdss, corrupt=0.0,
                                      start=datetime(2025, 7, 15, 0, 0, tzinfo=CST))).start()
        time.sleep(2.0)
        fleet.stop_generating()
        time.sleep(0.3)
        fleet.stop()
        n = fleet.summary()["beidou_sent"]
        assert n == len(fleet.generated) >= STATIONS * 4
        # a corrupted frame, a frame from an unknown station, an ordinary text message on the same card,
        # and one report that arrives over Beidou and then again over TCP
        bad = bytearray(_frame_of(1))
        bad[30] ^= 0x11
        rdss.emit(beidou_txr("300001", bytes(bad)))
        rdss.emit(beidou_txr("399999", _frame_of(99)))
        rdss.inject_message("300002", "站点正常 ok")
        rdss.emit(beidou_txr("300000", _frame_of(0)))
        _wait(lambda: len(_records(data)[0]) >= n + 1, what="hydro records from Beidou")
        _wait(lambda: len(_records(data)[2]) >= 2, what="the bad frame and the unknown station quarantined")
        srv = next(c for c in hub.components if c.name == "sl651")
        with socket.create_connection(srv.address, timeout=10) as s:
            s.sendall(_frame_of(0))
            s.settimeout(10)
            assert sl651.Sl651Framer().feed(s.recv(100))[0].ok          # confirmed over TCP...
        assert srv.status()["duplicates"] == 1                        # ...and not stored twice
    finally:
        hub.stop()
        rdss.stop()
    hydro, msgs, q = _records(data)
    expected = Counter((a, fc, int(t.timestamp()) * 10**9) for a, fc, t in fleet.generated)
    expected[(station_address(0), 0x32, int(datetime(2025, 7, 16, 8, 0, tzinfo=CST).timestamp()) * 10**9)] += 1
    got = Counter((r.tags["station"], int(r.tags["fc"], 16), r.ts) for r in hydro)
    assert got == expected                                   # every Beidou report once, nothing else
    assert all(r.tags["channel"] == "beidou" and r.tags["bd_sender"].startswith("3000")
               and r.device_id.startswith("rg-") and r.tags["admin_code"] == "420102001001" for r in hydro)
    assert len(msgs) == n + 4 and rdss.stats["dropped"] == 0
    assert sorted(i.reason.split(":")[0] for i in q) == ["bad frame over Beidou", "unknown station"]
    unknown = next(i for i in q if i.reason == "unknown station")
    assert unknown.meta["station"] == station_address(99) and unknown.meta["records"][0]["fields"]["Z_m"] == 14.42


def _frame_of(n: int) -> bytes:
    st = station_address(n)
    body = (bytes.fromhex("0001250716080000") + bytes.fromhex("F1F1" + st + "50F0F0" + "2507160800")
            + bytes.fromhex("201900012339230001442038121215"))
    return sl651.build_frame(center=1, station=st, password=0, fc=0x32, body=body, end=sl651.ETX)

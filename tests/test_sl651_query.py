"""`fieldhub sl651 query`: the center-initiated real-time query (37) through the running hub, on real
sockets, answered by the station simulator with its current values; clear errors otherwise."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from drivers import sl651
from fieldhub.core.datadir import LOG_FILE
from fieldhub.core.logview import LogView
from fieldhub.core.registry import Device
from fieldhub.hub import Hub, load_config
from simulators.sl651 import SimOptions, Sl651Fleet, station_address
from tests.conftest import run_cli
from tests.test_sl651_source import Dtu, report


@pytest.fixture
def hub(tmp_path: Path):
    cfg = load_config(None, {"hub.data_dir": str(tmp_path / "data"), "store.enabled": False, "sl651.enabled": True,
                             "sl651.listen": "127.0.0.1:0"}, env={})
    h = Hub(cfg)
    for i in range(2):
        h.registry.add(Device(f"wl-{i}", "water_level", "420102001001", transport={"sl651": station_address(i)}))
    h.registry.add(Device("wl-away", "water_level", "420102001001", transport={"sl651": "0000000099"}))
    h.registry.add(Device("wl-mute", "water_level", "420102001001", transport={"sl651": "0000000055"}))
    h.start()
    yield h
    h.stop()


def _query(hub: Hub, *args: str):
    return run_cli("sl651", "query", *args, "--data-dir", str(hub.data_dir), env={"COLUMNS": "200"})


def test_query_answered_with_the_stations_current_values(hub: Hub) -> None:
    srv = next(c for c in hub.components if c.name == "sl651")
    fleet = Sl651Fleet(SimOptions(port=srv.address[1], stations=2, rate=5.0, corrupt=0.0, picture_every=0,
                                  keepalive=3600)).start()
    try:
        end = time.monotonic() + 20
        while fleet.summary()["confirmed"] < 2 or fleet.summary()["connected"] < 2:
            assert time.monotonic() < end, fleet.summary()
            time.sleep(0.1)
        assert fleet.drain(20)                       # values stay put from here on
        st = fleet.stations[1]
        proc = _query(hub, "wl-1", "--json")
        assert proc.returncode == 0, proc.stderr
        res = json.loads(proc.stdout)
        assert (res["station"], res["device_id"], res["missing"]) == (st.address, "wl-1", [])
        assert res["elements"] == {"PJ_mm": st.rain, "PT_mm": st.pt, "Z_m": st.level, "VT_V": st.volts}
        assert res["observed_ns"] == int(st.clock.timestamp() * 1e9)
        # by address, only some elements; the text form names them with their units
        proc = _query(hub, station_address(0), "--elements", "z,VT", "--elements", "PN05", "--json")
        res = json.loads(proc.stdout)
        assert set(res["elements"]) == {"Z_m", "VT_V"} and res["missing"] == ["PN05"]
        assert res["elements"]["Z_m"] == fleet.stations[0].level
        text = _query(hub, "wl-0", "--elements", "Z")
        assert text.returncode == 0 and "Z" in text.stdout and f"{fleet.stations[0].level:g}" in text.stdout
        assert fleet.summary()["queries_answered"] == 3
        # the answers are stored like any report (the same observation twice: kept once)
        view = LogView.open(hub.data_dir / LOG_FILE)
        try:
            got = [e.record for e in view.read({}, limit=100_000) if e.record.tags.get("fc") == "37"]
        finally:
            view.close()
        assert len(got) == 2 and {r.device_id for r in got} == {"wl-0", "wl-1"}
        status = srv.status()
        assert (status["queries"], status["query_answers"], status["query_timeouts"]) == (3, 3, 0)
    finally:
        fleet.stop()


def test_query_errors_are_clear_and_bilingual(hub: Hub, tmp_path: Path) -> None:
    srv = next(c for c in hub.components if c.name == "sl651")
    proc = _query(hub, "9999999999")                         # no such station
    assert proc.returncode == 1 and "unknown station" in proc.stderr and "未登记" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _query(hub, "wl-away")                            # registered, never connected
    assert proc.returncode == 1 and "not connected" in proc.stderr and "未在线" in proc.stderr
    proc = _query(hub, "wl-0", "--elements", "NOPE")
    assert proc.returncode == 1 and "NOPE" in proc.stderr
    # connected, but its DTU does not answer queries
    dtu = Dtu(srv.address)
    try:
        dtu.send(report("0000000055", 1, 0, 100))
        assert dtu.reply() is not None
        t0 = time.monotonic()
        proc = _query(hub, "wl-mute", "--timeout", "1")
        assert proc.returncode == 1 and "did not answer" in proc.stderr and "未应答" in proc.stderr
        assert time.monotonic() - t0 < 8
        down = dtu.reply(timeout=2)                          # the query did reach the station
        assert down is not None
        hdr = sl651.decode_header(down)
        assert (hdr.fc, hdr.uplink, hdr.end, hdr.station) == (0x37, False, sl651.ENQ, "0000000055")
    finally:
        dtu.close()
    assert srv.status()["query_timeouts"] == 1
    proc = run_cli("sl651", "query", "wl-0", "--data-dir", str(tmp_path / "nohub"))
    assert proc.returncode == 3 and "no hub is running" in proc.stderr

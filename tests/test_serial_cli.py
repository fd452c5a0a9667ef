"""From the command line: a Beidou message and a Tiantong SMS through the hub and directly to a port."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import serial

from fieldhub.core import control
from fieldhub.core.errors import HubNotRunning
from simulators.rdss import RdssSim
from simulators.tiantong import TiantongSim

from .conftest import ROOT, fieldhub_cmd


@pytest.fixture
def hub_with_sims(tmp_path: Path) -> Iterator[tuple[Path, RdssSim, TiantongSim]]:
    rdss = RdssSim(interval=4).start()  # long enough that a CLI start-up under load stays inside it
    tt = TiantongSim().start()
    data = tmp_path / "data"
    cfg = tmp_path / "fieldhub.toml"
    cfg.write_text(f"""
[hub]
data_dir = "{data}"
[serial]
backoff_initial = "100ms"
ports = [
  {{device_id = "bd-1", driver = "beidou_rdss", url = "{rdss.path}"}},
  {{device_id = "tt-1", driver = "tiantong", url = "{tt.path}", profile = "tiantong-pdu"}},
]
""", encoding="utf-8")
    proc = subprocess.Popen(fieldhub_cmd("run", "--config", str(cfg)), cwd=str(ROOT), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                st = control.call(data, "serial.status")
                if all(p["connected"] for p in st.values()) and st["bd-1"]["session"]["card"]:
                    break
            except HubNotRunning:
                pass
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "hub did not start"
            time.sleep(0.1)
        yield data, rdss, tt
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        rdss.stop()
        tt.stop()


def test_bd_and_sms_from_cli_through_hub(cli, hub_with_sims) -> None:
    data, rdss, tt = hub_with_sims
    first = cli("bd", "send", "0242286", "水位超警戒，请求支援", "--encoding", "mixed", "--data-dir", str(data), "--json")
    assert first.returncode == 0, first.stderr
    assert orjson.loads(first.stdout)["attempts"] == 1
    early = cli("bd", "send", "0242286", "too soon", "--no-wait", "--data-dir", str(data))
    assert early.returncode == 1 and "interval" in early.stderr and "Traceback" not in early.stderr
    second = cli("bd", "send", "0242286", "second", "--data-dir", str(data), "--json")
    res = orjson.loads(second.stdout)
    assert res["waited_s"] > 0 and rdss.refused == 0
    assert [m["text"] for m in rdss.sent] == ["水位超警戒，请求支援", "second"]
    assert rdss.sent[1]["at"] - rdss.sent[0]["at"] >= 4.0 - 0.05  # the card's interval, kept by the hub
    long_text = "天通卫星短信：指挥车已抵达灾区，北斗与天通链路正常，请各乡镇每小时报告一次。" * 3
    sms = cli("tiantong", "send", tt.own_number, long_text, "--data-dir", str(data), "--json")
    assert sms.returncode == 0, sms.stderr
    out = orjson.loads(sms.stdout)
    assert out["mode"] == "pdu" and out["parts"] == 2
    assert tt.sent[-1]["text"] == long_text
    # the loopback arrives in the inbox, the hub reads both parts and stores one joined SMS
    deadline = time.monotonic() + 30
    while True:
        q = cli("query", "sms", "--data-dir", str(data), "--json")
        texts = [orjson.loads(line)["fields"]["text"] for line in q.stdout.splitlines() if line.strip()]
        if long_text in texts:
            break
        assert time.monotonic() < deadline, q.stdout + q.stderr
        time.sleep(0.3)


@pytest.mark.parametrize("profile", ["rdss-bd2-level3", "rdss-bd3"])
def test_direct_port_retry_after_fki(cli, profile: str) -> None:
    """No hub: the CLI opens the port itself; the module refuses (card used recently) and the
    CLI retries after the wait stated in $BDFKI (BD-2 and BD-3 feedback forms)."""
    with RdssSim(interval=2, profile=profile) as rdss:
        rdss.last_tx = time.monotonic()
        proc = cli("bd", "send", "0166166", "direct", "--port", rdss.path, "--profile", profile, "--json",
                   timeout=60)
        assert proc.returncode == 0, proc.stderr
        res = orjson.loads(proc.stdout)
        assert res["attempts"] == 2 and res["refusals"][0]["wait_s"] >= 1
        if profile == "rdss-bd3":
            assert "频度未到" in res["refusals"][0]["text"]  # the profile's FKI reason code
        assert rdss.refused == 1 and rdss.sent[-1]["text"] == "direct" and rdss.sent[-1]["dest"] == "0166166"


def test_direct_sms_and_missing_port(cli, tmp_path: Path) -> None:
    with TiantongSim() as tt:
        tt.fail_next = 1  # the first submission fails (+CMS ERROR 332, network timeout): retried
        proc = cli("tiantong", "send", "10086", "hello from the vehicle", "--port", tt.path, "--json", timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert orjson.loads(proc.stdout)["retries"] == 1
        assert tt.sent[-1] == {**tt.sent[-1], "number": "10086", "text": "hello from the vehicle"}
        assert len(tt.sent) == 1
    gone = cli("tiantong", "send", "10086", "x", "--port", str(tmp_path / "nope"))
    assert gone.returncode == 1 and "cannot open" in gone.stderr and "Traceback" not in gone.stderr


def test_sim_serial_prints_a_path_that_serves_nmea(tmp_path: Path) -> None:
    link = tmp_path / "gnss0"
    proc = subprocess.Popen(fieldhub_cmd("sim", "serial", "gnss", "--link", str(link), "--seconds", "20"),
                            cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        path = proc.stdout.readline().strip()
        assert path == str(link)
        with serial.serial_for_url(path, baudrate=9600, timeout=0.5) as port:
            buf = b""
            deadline = time.monotonic() + 10
            # read until both are seen: the port may open just after an epoch's GSV lines
            while not (b"$GNGGA" in buf and b"$BDGSV" in buf) and time.monotonic() < deadline:
                buf += port.read(port.in_waiting or 1)
        assert b"$GNGGA" in buf and b"$BDGSV" in buf
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
    assert not link.exists()


def test_demo_includes_serial_devices(cli, tmp_path: Path) -> None:
    proc = cli("demo", "--seconds", "8", "--json", "--data-dir", str(tmp_path / "demo"), timeout=180)
    assert proc.returncode == 0, proc.stderr
    summary = orjson.loads(proc.stdout)
    stored = summary["stored_by_kind"]
    for kind in ("position", "gnss_sky", "bd_card", "bd_message", "sms", "sat_signal", "ptz_position"):
        assert stored.get(kind, 0) > 0, (kind, stored)
    serial_sum = summary["simulators"]["serial"]
    assert serial_sum["actions"] == "bd_send ok, sms_send ok, ptz ok"
    assert serial_sum["bd messages sent"] == 1 and serial_sum["sms sent"] == 1

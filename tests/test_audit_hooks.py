"""The events that exist today land in the audit log, one line each where they happen, and the
actions behave as before (same exit codes, same output)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from fieldhub.core import audit
from fieldhub.core.log import DurableLog
from tests.conftest import ROOT, fieldhub_cmd, run_cli
from tests.test_log import recs


def _entries(data_dir: Path) -> list[dict]:
    return json.loads(run_cli("audit", "show", "--data-dir", str(data_dir), "--json", check=True).stdout)


def test_hub_start_stop_and_consumer_drop_are_audited(data_dir: Path) -> None:
    dd = ["--data-dir", str(data_dir)]
    proc = subprocess.Popen(fieldhub_cmd("run", *dd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=str(ROOT), env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 30
    while not (data_dir / "hub.sock").exists():
        assert proc.poll() is None, proc.stderr.read()  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "hub did not open its control socket"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert run_cli("consumers", "drop", "store", *dd, check=True).returncode == 0
    rows = _entries(data_dir)
    assert [e["action"] for e in rows] == ["hub.start", "hub.stop", "consumer.drop"]
    start = rows[0]
    assert start["actor"] == "hub" and "store" in start["detail"]["components"]
    assert len(start["detail"]["config_sha256"]) == 64 and start["detail"]["data_dir"] == str(data_dir)
    assert rows[2]["subject"] == "store" and rows[2]["actor"].startswith("cli:")
    assert run_cli("audit", "verify", *dd).returncode == 0


def test_provisioning_readmit_and_device_commands_are_audited(data_dir: Path, tmp_path: Path) -> None:
    dd = ["--data-dir", str(data_dir)]
    out = run_cli("provision", "device", "rg-001", "--kind", "rain_gauge", "--admin-code", "420102001001",
                  "--broker-dir", str(tmp_path / "broker"), "--json", *dd, check=True)
    password = json.loads(out.stdout)["password"]
    run_cli("provision", "fleet", "--count", "3", "--admin-code", "420102001001", "--credentials",
            str(tmp_path / "fleet.json"), "--broker-dir", str(tmp_path / "broker"), *dd, check=True)
    readmit = run_cli("quarantine", "readmit", "--reason", "unknown device", *dd)
    assert readmit.returncode == 0, readmit.stderr
    # no hub runs: the commands fail as before (exit 3, one line), and the attempt is on record
    for args in (["drone", "uav-01", "rtl"], ["ptz", "goto_preset", "--preset", "4"],
                 ["bd", "send", "0242286", "请求支援"], ["tiantong", "send", "+8617400000001", "已到达"],
                 ["dmr", "text", "10.33.16.221", "请回报", "--device", "dmr-1"]):
        p = run_cli(*args, *dd)
        assert p.returncode == 3 and "Traceback" not in p.stderr, (args, p.stderr)
    rows = _entries(data_dir)
    assert [e["action"] for e in rows] == ["provision.device", "provision.fleet", "quarantine.readmit", "drone.rtl",
                                           "ptz.goto_preset", "bd.send", "tiantong.send", "dmr.text"]
    assert rows[0]["subject"] == "rg-001" and rows[0]["detail"]["admin_code"] == "420102001001"
    assert password not in (data_dir / audit.AUDIT_FILE).read_text()
    assert rows[1]["detail"]["count"] == 3
    assert rows[2]["detail"]["reason"] == "unknown device"
    assert rows[4]["detail"]["preset"] == 4 and rows[5]["detail"]["text"] == "请求支援"
    assert rows[6]["subject"] == "+8617400000001" and rows[7]["subject"] == "10.33.16.221"
    assert run_cli("audit", "verify", *dd).returncode == 0


def test_disk_cap_eviction_is_audited(tmp_path: Path) -> None:
    log = DurableLog(tmp_path / "log.db", disk_cap=300_000, hub_id="v1")
    log.cursor("store")  # never reads: only eviction makes room
    for i in range(30):
        log.append(recs(100, prio="bulk", start=i * 100, size=200))
    log.close()
    rows = audit.entries(audit.read_lines(tmp_path / audit.AUDIT_FILE))
    assert rows and all(e["action"] == "log.evict" and e["actor"] == "hub" for e in rows)
    assert sum(e["detail"]["evicted"]["bulk"] for e in rows) == log.stats["evicted"]
    assert rows[0]["detail"]["disk_cap"] == 300_000
    assert audit.verify_dir(tmp_path).ok

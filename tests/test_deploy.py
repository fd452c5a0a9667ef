"""The service units and the logrotate file in deploy/ are valid for the tools that read them,
and what their command lines ask of fieldhub exists (issue 15, item 8)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from fieldhub.hub import load_config
from tests.conftest import ROOT, run_cli

DEPLOY = ROOT / "deploy"
FIELDHUB = Path(sys.executable).parent / "fieldhub"


def _verify(unit: Path, tmp_path: Path, name: str) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` on a copy whose ExecStart names this checkout's fieldhub."""
    copy = tmp_path / name
    copy.write_text(unit.read_text().replace("/opt/fieldhub/.venv/bin/fieldhub", str(FIELDHUB)))
    return subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)


def test_the_hub_unit_verifies_cleanly(tmp_path: Path) -> None:
    assert shutil.which("systemd-analyze"), "systemd-analyze (Debian: systemd) is installed by scripts/bootstrap.sh"
    proc = _verify(DEPLOY / "systemd" / "fieldhub.service", tmp_path, "fieldhub.service")
    assert proc.returncode == 0 and proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stderr
    text = (DEPLOY / "systemd" / "fieldhub.service").read_text()
    for hardening in ("NoNewPrivileges=yes", "ProtectSystem=strict", "User=fieldhub", "Restart=on-failure"):
        assert hardening in text


def test_a_broken_unit_is_caught(tmp_path: Path) -> None:
    """The check above would see a mistake: a value systemd cannot parse is reported."""
    broken = tmp_path / "broken.service"
    broken.write_text((DEPLOY / "systemd" / "fieldhub.service").read_text().replace(
        "Restart=on-failure", "Restart=sometimes"))
    proc = _verify(broken, tmp_path, "broken.service")
    assert "restart specifier" in proc.stderr and "sometimes" in proc.stderr


def test_the_center_worker_template_verifies_cleanly(tmp_path: Path) -> None:
    proc = _verify(DEPLOY / "systemd" / "fieldhub-center@.service", tmp_path, "fieldhub-center@w1.service")
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def test_what_the_units_ask_of_fieldhub_exists(tmp_path: Path) -> None:
    # the hub unit moves the data dir by environment, whatever the config file says
    cfg = load_config(None, {}, env={"FIELDHUB_HUB_DATA_DIR": str(tmp_path / "state")})
    assert cfg.data_dir == tmp_path / "state"
    helps = run_cli("center", "run", "--help", check=True).stdout
    assert all(opt in helps for opt in ("--broker", "--data-dir", "--worker"))
    assert "--config" in run_cli("run", "--help", check=True).stdout


def test_logrotate_accepts_the_file_and_rotates_the_operator_log(tmp_path: Path) -> None:
    assert shutil.which("logrotate"), "logrotate (Debian: logrotate) is installed by scripts/bootstrap.sh"
    log = tmp_path / "oplog.jsonl"
    log.write_text('{"level": "info"}\n' * 10)
    user = os.environ.get("USER") or "root"
    conf = tmp_path / "fieldhub.logrotate"
    conf.write_text((DEPLOY / "logrotate" / "fieldhub").read_text()
                    .replace("/var/lib/fieldhub/oplog.jsonl /var/lib/fieldhub-center/oplog.jsonl", str(log))
                    .replace("create 0640 fieldhub fieldhub", f"create 0640 {user} {user}"))
    proc = subprocess.run(["logrotate", "--force", "--state", str(tmp_path / "state"), str(conf)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "oplog.jsonl.1").exists()  # rotated (compressed on the next round: delaycompress)
    assert log.exists() and log.stat().st_size == 0 and oct(log.stat().st_mode & 0o777) == "0o640"

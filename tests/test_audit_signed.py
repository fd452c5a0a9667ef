"""The audit log's heads are signed with the hub's own key once it has one (`fieldhub keys init`):
a clean stop seals the log, and `fieldhub audit verify` checks the heads with the hub's key."""

from __future__ import annotations

import json
from pathlib import Path

from fieldhub.core import audit
from fieldhub.hub import Hub, load_config
from tests.conftest import run_cli


def _run_hub_once(data: Path) -> None:
    hub = Hub(load_config(None, {"hub.data_dir": str(data)}, env={}))
    hub.start()
    hub.stop()


def test_a_hub_with_a_key_signs_its_audit_log_and_verify_checks_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run_cli("keys", "init", "--data-dir", str(data), "--admin-code", "420102000000", check=True)
    _run_hub_once(data)
    heads = [json.loads(line) for line in (data / audit.HEADS_FILE).read_text().splitlines()]
    entries = (data / audit.AUDIT_FILE).read_text().splitlines()
    assert heads and heads[-1]["size"] == len(entries) >= 2  # the stop sealed everything (start, stop)
    report = json.loads(run_cli("audit", "verify", "--json", "--data-dir", str(data), check=True).stdout)
    assert report["ok"] and report["signatures_checked"] and report["heads_checked"] >= 1
    # an entry edited afterwards is caught, the signed head no longer fits
    lines = (data / audit.AUDIT_FILE).read_text().splitlines()
    lines[0] = lines[0].replace("hub.start", "hub.stArt")
    (data / audit.AUDIT_FILE).write_text("\n".join(lines) + "\n")
    bad = run_cli("audit", "verify", "--json", "--data-dir", str(data))
    assert bad.returncode == 1 and not json.loads(bad.stdout)["ok"]


def test_without_a_key_the_log_is_a_chain_and_verify_says_so(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _run_hub_once(data)
    assert not (data / audit.HEADS_FILE).exists() or not (data / audit.HEADS_FILE).read_text().strip()
    proc = run_cli("audit", "verify", "--data-dir", str(data), check=True)
    assert "no signed heads yet" in proc.stdout

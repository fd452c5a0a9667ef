"""The fieldhub command as operators and scripts call it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from fieldhub.core.log import DurableLog
from fieldhub.core.records import Record
from tests.conftest import ROOT, fieldhub_cmd, run_cli


def test_every_command_has_help_with_an_example() -> None:
    import click

    from fieldhub.cli.main import main

    def walk(group: click.Group, path: list[str]):
        for name, cmd in group.commands.items():
            if isinstance(cmd, click.Group):
                yield from walk(cmd, path + [name])
            else:
                yield path + [name], cmd

    missing = [" ".join(p) for p, cmd in walk(main, []) if "Example" not in (cmd.help or "")]
    assert not missing, f"commands without an example in --help: {missing}"
    out = run_cli("devices", "add", "--help", check=True).stdout
    assert "Example:" in out and "--admin-code" in out


def test_commands_are_plain_functions_of_fieldhub_cli_and_nothing_imports_cli_py() -> None:
    """cli.py only assembles: every command lives at module level in fieldhub/cli/, and no module
    (fieldhub, tests, simulators, bench, scripts) imports the top-level ``cli``."""
    import ast

    import click

    from fieldhub.cli.main import main

    def walk(cmd: click.Command):
        yield cmd
        if isinstance(cmd, click.Group):
            for sub in cmd.commands.values():
                yield from walk(sub)

    for cmd in walk(main):
        assert cmd.callback is not None, cmd.name
        assert cmd.callback.__module__.startswith("fieldhub.cli."), (cmd.name, cmd.callback.__module__)
        assert "<locals>" not in cmd.callback.__qualname__, (cmd.name, cmd.callback.__qualname__)
    importers = []
    for folder in ("fieldhub", "drivers", "simulators", "tests", "bench", "scripts"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
                if "cli" in names:
                    importers.append(str(path.relative_to(ROOT)))
    assert not importers, f"modules importing cli.py: {importers}"


def test_init_writes_a_config_that_run_accepts(tmp_path: Path) -> None:
    conf = tmp_path / "fh.toml"
    run_cli("init", "--config", str(conf), check=True)
    assert "[log]" in conf.read_text()
    again = run_cli("init", "--config", str(conf))
    assert again.returncode != 0 and "exists" in again.stderr


def test_bad_config_is_one_line_without_traceback(tmp_path: Path) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text('[log]\ndisk_cap = "lots"\n')
    proc = run_cli("status", "--config", str(conf))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert str(conf) in proc.stderr and "log.disk_cap" in proc.stderr and "expected" in proc.stderr
    proc = run_cli("status", "--set", "log.nope=1", "--data-dir", str(tmp_path))
    assert proc.returncode == 2 and "log.nope" in proc.stderr
    proc = run_cli("status", "--data-dir", str(tmp_path), env={"FIELDHUB_STORE_RETENTION": "forever"})
    assert proc.returncode == 2 and "FIELDHUB_STORE_RETENTION" in proc.stderr


def test_unwritable_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "file").write_text("x")
    proc = run_cli("devices", "add", "a", "--kind", "gnss", "--admin-code", "420102001001",
                   "--data-dir", str(ro / "file" / "sub"))
    assert proc.returncode == 1 and "not writable" in proc.stderr and "Traceback" not in proc.stderr


def test_devices_commands(data_dir: Path, tmp_path: Path) -> None:
    dd = ["--data-dir", str(data_dir)]
    run_cli("devices", "add", "rg-1", "--kind", "rain_gauge", "--admin-code", "420102001001", *dd, check=True)
    bad = run_cli("devices", "add", "rg-2", "--kind", "rain_gauge", "--admin-code", "4201", *dd)
    assert bad.returncode == 1 and "12 digits" in bad.stderr
    out = json.loads(run_cli("devices", "show", "rg-1", "--json", *dd, check=True).stdout)
    assert out["level"] == "village" and out["admin_code"] == "420102001001"
    csv_file = tmp_path / "d.csv"
    csv_file.write_text("id,kind,admin_code,unit\ngn-1,gnss,420102000000,县应急局\nsp-1,sat_phone,420000000000,省厅\n",
                        encoding="utf-8")
    run_cli("devices", "import", str(csv_file), *dd, check=True)
    listed = json.loads(run_cli("devices", "list", "--json", *dd, check=True).stdout)
    assert {d["id"]: d["level"] for d in listed} == {"rg-1": "village", "gn-1": "county", "sp-1": "province"}
    exported = run_cli("devices", "export", *dd, check=True).stdout
    assert "县应急局" in exported and exported.splitlines()[0].startswith("id,kind,admin_code")
    run_cli("devices", "remove", "sp-1", *dd, check=True)
    assert run_cli("devices", "show", "sp-1", *dd).returncode == 1


def _start_hub(data_dir: Path, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen(fieldhub_cmd("run", "--data-dir", str(data_dir), *extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT),
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 30
    while not (data_dir / "hub.sock").exists():
        assert proc.poll() is None, proc.stderr.read()  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "hub did not open its control socket"
        time.sleep(0.05)
    return proc


def test_run_status_query_and_clean_shutdown(data_dir: Path) -> None:
    dd = ["--data-dir", str(data_dir)]
    run_cli("devices", "add", "gn-1", "--kind", "gnss", "--admin-code", "420102001001", *dd, check=True)
    run_cli("devices", "add", "gn-2", "--kind", "gnss", "--admin-code", "420102000000", *dd, check=True)
    stopped = json.loads(run_cli("status", "--json", *dd, check=True).stdout)
    assert stopped["running"] is False and stopped["devices"]["total"] == 2
    hub = _start_hub(data_dir)
    try:
        running = json.loads(run_cli("status", "--json", *dd, check=True).stdout)
        assert running["running"] is True and running["pid"] == hub.pid
        assert "store" in running["log"]["consumers"]
        # a second hub on the same data dir is refused clearly
        second = run_cli("run", *dd, timeout=30)
        assert second.returncode == 1 and "is running with data dir" in second.stderr
        busy = run_cli("consumers", "drop", "store", *dd)
        assert busy.returncode == 1 and "stop it first" in busy.stderr
    finally:
        hub.send_signal(signal.SIGTERM)
        assert hub.wait(30) == 0
    assert "stopped cleanly" in hub.stderr.read()  # type: ignore[union-attr]
    assert not (data_dir / "hub.sock").exists()
    evs = [json.loads(x) for x in run_cli("events", "--json", *dd, check=True).stdout.splitlines()]
    assert [e["event"] for e in evs][-2:] == ["hub_started", "hub_stopped"]
    assert "已正常停止" in run_cli("events", *dd, check=True).stdout
    # records appended to the log reach the store when the hub runs again
    now = time.time_ns()
    log = DurableLog(data_dir / "log.db")
    log.append([Record.make("position", "gn-1", now - i * 1_000_000_000, {"lat": 30.5 + i / 1000, "lon": 114.3},
                            priority="position", source="test", key=i) for i in range(30)])
    log.append([Record.make("position", "gn-2", now, {"lat": 30.6, "lon": 114.2}, priority="position",
                            source="test", key=1)])
    log.close()
    hub = _start_hub(data_dir)
    try:
        deadline = time.monotonic() + 20
        while True:
            st = json.loads(run_cli("status", "--json", *dd, check=True).stdout)
            if st["log"]["consumers"]["store"]["backlog_total"] == 0:
                break
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert st["devices"]["by_level"]["village"]["online"] == 1
        assert st["devices"]["by_level"]["county"]["online"] == 1
    finally:
        hub.send_signal(signal.SIGINT)
        assert hub.wait(30) == 0
    since, until = f"{(now - 9.5e9) / 1e9:.3f}", f"{(now - 1.5e9) / 1e9:.3f}"  # epoch seconds
    lines = run_cli("query", "position", "--device", "gn-1", "--since", since, "--until", until, "--json",
                    *dd, check=True).stdout.splitlines()
    got = [orjson.loads(line) for line in lines]
    assert len(got) == 8 and all(r["device_id"] == "gn-1" for r in got)  # i = 2..9
    recent = run_cli("query", "position", "--since", "1h", "--json", *dd, check=True).stdout.splitlines()
    assert len(recent) == 31
    assert got[0]["ts"] <= got[-1]["ts"] and got[0]["fields"]["lon"] == 114.3
    csv_out = run_cli("query", "position", "--csv", *dd, check=True).stdout.splitlines()
    assert csv_out[0].startswith("id,kind,device_id,ts,time_utc") and len(csv_out) == 32
    table = run_cli("query", "position", "--limit", "3", *dd, check=True).stdout
    assert "3 records" in table


def test_consumers_list_and_drop(data_dir: Path) -> None:
    log = DurableLog(data_dir / "log.db")
    log.cursor("store")
    log.cursor("influx")
    log.append([Record.make("t", "d", i, {"v": i}, key=i) for i in range(5)])
    log.close()
    listed = json.loads(run_cli("consumers", "list", "--json", "--data-dir", str(data_dir), check=True).stdout)
    assert listed["influx"]["backlog_total"] == 5
    run_cli("consumers", "drop", "influx", "--data-dir", str(data_dir), check=True)
    listed = json.loads(run_cli("consumers", "list", "--json", "--data-dir", str(data_dir), check=True).stdout)
    assert set(listed) == {"store"}
    bad = run_cli("consumers", "drop", "nope", "--data-dir", str(data_dir))
    assert bad.returncode == 1 and "no consumer 'nope'" in bad.stderr


def test_run_broker_flag_overrides_the_config(data_dir: Path, tmp_path: Path, mosquitto) -> None:
    conf = tmp_path / "fh.toml"
    conf.write_text('[mqtt]\nbroker = "mqtt://127.0.0.1:1"\n')  # nothing listens there
    hub = _start_hub(data_dir, "--config", str(conf), "--broker", mosquitto.url)
    try:
        deadline = time.monotonic() + 20
        while True:
            mqtt = json.loads(run_cli("status", "--json", "--data-dir", str(data_dir),
                                      check=True).stdout)["components"]["mqtt"]
            if mqtt["connected"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert mqtt["broker"] == mosquitto.url and mqtt["connected"] is True
    finally:
        hub.send_signal(signal.SIGTERM)
        assert hub.wait(30) == 0


def test_commands_that_need_the_hub_say_so(data_dir: Path) -> None:
    from fieldhub.core import control
    from fieldhub.core.errors import HubNotRunning

    with pytest.raises(HubNotRunning, match="no hub is running"):
        control.call(data_dir, "status")


def test_quarantine_list(data_dir: Path) -> None:
    log = DurableLog(data_dir / "log.db")
    log.quarantine("mqtt", "malformed JSON at byte 3", b"{\"a\":\xff", device_id="rg-9")
    log.close()
    items = json.loads(run_cli("quarantine", "list", "--json", "--data-dir", str(data_dir), check=True).stdout)
    assert items[0]["reason"] == "malformed JSON at byte 3" and items[0]["device_id"] == "rg-9"
    assert items[0]["payload_hex"].endswith("ff")


def test_replay_unknown_driver_is_clear(tmp_path: Path) -> None:
    f = tmp_path / "x.log"
    f.write_bytes(b"junk")
    proc = run_cli("replay", "nosuch", str(f))
    assert proc.returncode == 1 and "unknown driver" in proc.stderr


def test_demo_runs_and_summarises(tmp_path: Path) -> None:
    proc = run_cli("demo", "--seconds", "3", "--json", "--data-dir", str(tmp_path / "demo"), timeout=180)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert sum(summary["stored_by_kind"].values()) > 0
    assert summary["stored_by_kind"].get("vehicle_power", 0) >= 5
    # status of a stopped hub's data dir names the hub that ran there
    st = json.loads(run_cli("status", "--json", "--data-dir", summary["data_dir"], check=True).stdout)
    assert st["hub_id"] == "demo-vehicle" and st["running"] is False

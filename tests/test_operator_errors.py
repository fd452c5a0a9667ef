"""Operator frictions from issue 15 ("errors that say what to do"): each case a real CLI run that
failed or misled before and now gives one clear, bilingual line."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from fieldhub.core.datadir import STORE_FILE
from fieldhub.core.records import Record
from fieldhub.sinks.store import LocalStore
from tests.conftest import run_cli
from tests.test_cli import _start_hub


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """A data dir whose local store holds two telemetry records of rg-1."""
    data = tmp_path / "data"
    data.mkdir()
    store = LocalStore(data / STORE_FILE)
    now = time.time_ns()
    store.write([Record.make("telemetry", "rg-1", now - i * 10**9, {"rain_mm": 1.5}, source="test", key=i)
                 for i in range(2)])
    store.close()
    return data


def test_a_time_beyond_the_store_is_a_usage_error_not_a_traceback(store_dir: Path) -> None:
    proc = run_cli("query", "--data-dir", str(store_dir), "--since", "99999999999999999999")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "between 1970 and 9999" in proc.stderr and "时间超出范围" in proc.stderr


def test_until_before_since_is_refused(store_dir: Path) -> None:
    proc = run_cli("query", "--data-dir", str(store_dir), "--since", "1h", "--until", "2h")
    assert proc.returncode == 2 and "is not after --since" in proc.stderr


def test_a_kind_the_store_never_held_is_named(store_dir: Path) -> None:
    proc = run_cli("query", "rain", "--data-dir", str(store_dir), "--json")
    assert proc.returncode == 0 and proc.stdout == ""  # scripts still get an empty result
    assert "no records of kind 'rain'" in proc.stderr and "telemetry" in proc.stderr
    ok = run_cli("query", "telemetry", "--data-dir", str(store_dir), "--json")
    assert ok.returncode == 0 and len(ok.stdout.splitlines()) == 2 and ok.stderr == ""


def test_status_of_a_data_dir_that_does_not_exist_says_so(tmp_path: Path) -> None:
    proc = run_cli("status", "--data-dir", str(tmp_path / "typo"))
    assert proc.returncode == 1 and "does not exist" in proc.stderr and "数据目录不存在" in proc.stderr
    assert not (tmp_path / "typo").exists()  # status did not create it


def test_a_hub_with_no_device_source_says_it_will_receive_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    hub = _start_hub(data)
    try:
        # a part that is not configured answers in words, not with the socket's internal names
        proc = run_cli("uplink", "status", "--data-dir", str(data))
        assert proc.returncode == 1 and "runs without uplink: it is not configured" in proc.stderr
        assert "known:" not in proc.stderr and "mqtt.presence" not in proc.stderr
    finally:
        hub.send_signal(signal.SIGINT)
        _, err = hub.communicate(timeout=30)
    assert "no device source is configured" in err and "收不到数据" in err


@pytest.mark.parametrize("args, expect", [
    (["set_pan"], "set_pan needs --value"),
    (["set_pan", "--value", "9999"], "outside 0 to 360"),
    (["set_tilt", "--value", "-120"], "outside -90 to 90"),
])
def test_ptz_absolute_moves_need_a_value_in_range(tmp_path: Path, args: list[str], expect: str) -> None:
    """Refused before anything is sent (no hub needed): a camera is never panned to 0° by default."""
    proc = run_cli("ptz", *args, "--data-dir", str(tmp_path))
    assert proc.returncode == 2 and expect in proc.stderr, proc.stderr
    assert "no hub is running" not in proc.stderr


def test_ptz_in_range_goes_to_the_hub(tmp_path: Path) -> None:
    proc = run_cli("ptz", "set_pan", "--value", "90", "--data-dir", str(tmp_path))
    assert proc.returncode == 3 and "no hub is running" in proc.stderr  # validated, then sent


def test_an_unreachable_broker_is_said_once_on_the_console_then_recovery(tmp_path: Path) -> None:
    """`fieldhub run --broker` at a port where nothing listens: a warning on the console and in the
    events within seconds, once (not one per retry), and a recovery line when the broker appears."""
    import json

    from fieldhub.sources.mqtt.mosquitto import Mosquitto, free_port
    from tests.mqtt_util import wait_for

    port = free_port()
    data = tmp_path / "data"
    hub = _start_hub(data, "--broker", f"mqtt://127.0.0.1:{port}")
    broker = None

    def events(name: str) -> list[dict]:
        path = data / "oplog.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [e for e in map(json.loads, lines) if e["event"] == name]

    try:
        wait_for(lambda: events("mqtt_unreachable"), 10, "the unreachable warning")
        time.sleep(4)  # paho retries meanwhile (1 s, then 2 s ...): no new line for each
        unreachable = events("mqtt_unreachable")
        assert len(unreachable) == 1 and unreachable[0]["level"] == "warning"
        assert "无法连接 MQTT 代理" in unreachable[0]["message_zh"]
        broker = Mosquitto(tmp_path / "broker", port=port).start()
        recovered = wait_for(lambda: events("mqtt_recovered"), 45, "the recovery line")
        assert recovered[0]["attempts"] >= 2
    finally:
        hub.send_signal(signal.SIGINT)
        _, err = hub.communicate(timeout=30)
        if broker is not None:
            broker.stop()
    warnings = [line for line in err.splitlines() if "[warning] cannot reach MQTT broker" in line]
    assert len(warnings) == 1 and "无法连接 MQTT 代理" in warnings[0]  # on the console, both languages

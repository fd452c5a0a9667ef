"""``fieldhub influx check`` diagnoses real servers: up, down, bad credentials, no write permission."""

from __future__ import annotations

import orjson

from fieldhub.sources.mqtt.mosquitto import free_port
from tests.conftest import run_cli
from tests.influx_servers import InfluxDB1, VictoriaMetrics, influxdb1, influxdb1_auth, victoria  # noqa: F401


def check(*sets: str, as_json: bool = True):
    args = ["influx", "check", "--set", "hub.id=veh-test"]
    for s in sets:
        args += ["--set", s]
    proc = run_cli(*args, *(["--json"] if as_json else []))
    return proc, (orjson.loads(proc.stdout) if as_json and proc.stdout.strip() else None)


def test_check_ok_writes_a_point(influxdb1: InfluxDB1) -> None:
    proc, report = check(f"influx.url={influxdb1.url}", "influx.mode=v1")
    assert proc.returncode == 0, proc.stderr
    assert report["ok"] and [s["name"] for s in report["steps"]] == ["connect", "credentials", "write"]
    assert report["server_version"].startswith("1.6")
    rows = influxdb1.rows("SELECT ok, hub FROM fieldhub_check", "fieldhub")
    assert len(rows) == 1 and rows[0]["hub"] == "veh-test"


def test_check_down_server_is_diagnosed() -> None:
    proc, _ = check(f"influx.url=http://127.0.0.1:{free_port()}", "influx.mode=v1", as_json=False)
    assert proc.returncode == 1
    assert "PROBLEM: server unreachable" in proc.stdout and "connection refused" in proc.stdout
    assert "无法连接" in proc.stdout and "Traceback" not in proc.stderr


def test_check_bad_credentials_and_missing_write_permission(influxdb1_auth: InfluxDB1) -> None:
    url = f"influx.url={influxdb1_auth.url}"
    proc, report = check(url, "influx.mode=v1", "influx.username=admin", "influx.password=wrong")
    assert proc.returncode == 1 and not report["ok"]
    assert report["diagnosis"].startswith("credentials refused")
    assert report["steps"][-1] == {"name": "credentials", "ok": False, "detail": report["steps"][-1]["detail"]}

    proc, report = check(url, "influx.mode=v1", "influx.username=reader", "influx.password=readerpw")
    assert proc.returncode == 1 and report["diagnosis"].startswith("no write permission")
    assert report["steps"][-1]["name"] == "write" and not report["steps"][-1]["ok"]

    proc, report = check(url, "influx.mode=v1")  # auth on, none given
    assert proc.returncode == 1 and report["diagnosis"].startswith("credentials refused")

    proc, report = check(url, "influx.mode=v1", "influx.username=admin", "influx.password=adminpw")
    assert proc.returncode == 0 and report["ok"], report


def test_check_v2_api(victoria: VictoriaMetrics) -> None:
    proc, report = check(f"influx.url={victoria.url}", "influx.mode=v2", "influx.token=t", "influx.org=o")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report["ok"] and report["steps"][-1]["name"] == "write"


def test_check_without_url_says_what_to_set() -> None:
    proc, report = check()
    assert proc.returncode == 1 and "set [influx] url" in report["diagnosis"]


def test_https_with_our_ca_and_without(tmp_path) -> None:
    influx = InfluxDB1(tmp_path / "tls-influx", tls=True).start()
    vm = VictoriaMetrics(tmp_path / "tls-vm", tls=True).start()
    try:
        assert influx.url.startswith("https://")
        proc, report = check(f"influx.url={influx.url}", "influx.mode=v1", f"influx.tls_ca={influx.cert}")
        assert proc.returncode == 0 and report["ok"], report
        proc, report = check(f"influx.url={vm.url}", "influx.mode=v2", f"influx.tls_ca={vm.cert}")
        assert proc.returncode == 0 and report["ok"], report
        proc, report = check(f"influx.url={influx.url}", "influx.mode=v1")  # system CAs: not trusted
        assert proc.returncode == 1 and "TLS certificate not trusted" in report["diagnosis"]
        proc, report = check(f"influx.url={influx.url.replace('https', 'http')}", "influx.mode=v1")
        assert proc.returncode == 1 and "unreachable" in report["diagnosis"]
    finally:
        influx.stop()
        vm.stop()

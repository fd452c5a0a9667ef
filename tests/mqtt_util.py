"""Helpers for the MQTT tests: a real Mosquitto from `provision broker-config`, hub processes, waits."""

from __future__ import annotations

import getpass
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fieldhub.sources.mqtt.mosquitto import Mosquitto, free_port
from tests.conftest import ROOT, fieldhub_cmd, run_cli

ADMIN = "420102001001"


def run_as() -> str:
    # as root Mosquitto drops to this user; pytest's temp dirs are private, so stay root in tests
    return "root" if os.geteuid() == 0 else getpass.getuser()


class ProvisionedBroker:
    """Config, accounts and a running Mosquitto, all written by the `fieldhub provision` commands."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.dir = tmp / "broker"
        self.data = tmp / "data"
        self.port = free_port()
        out = run_cli("provision", "broker-config", "--out", str(self.dir), "--listen",
                      f"127.0.0.1:{self.port}", "--run-as", run_as(), "--autosave", "1", "--json",
                      check=True)
        self.info = orjson.loads(out.stdout)
        self.url = self.info["broker"]
        self.config = tmp / "fieldhub.toml"
        self.config.write_text((self.dir / "fieldhub-mqtt.toml").read_text()
                               + "offline_after = {default = \"3s\"}\n"
                               + f'\n[hub]\ndata_dir = "{self.data}"\n\n[log]\ncompact_interval = "1s"\n')
        self.broker = Mosquitto(self.dir, port=self.port, conf_file=self.dir / "mosquitto.conf")

    def provision(self, device_id: str, kind: str = "rain_gauge") -> str:
        out = run_cli("provision", "device", device_id, "--kind", kind, "--admin-code", ADMIN,
                      "--config", str(self.config), "--broker-dir", str(self.dir), "--json", check=True)
        return orjson.loads(out.stdout)["password"]

    def fleet(self, n: int, prefix: str = "v") -> Path:
        creds = self.tmp / f"fleet-{prefix}.json"
        run_cli("provision", "fleet", "--count", str(n), "--prefix", prefix, "--admin-code", ADMIN,
                "--credentials", str(creds), "--config", str(self.config), "--broker-dir",
                str(self.dir), check=True)
        return creds

    def start(self) -> ProvisionedBroker:
        self.broker.start()
        return self

    def reload(self) -> None:
        assert self.broker.proc is not None
        self.broker.proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)

    def stop(self) -> None:
        self.broker.stop()


def client(b: ProvisionedBroker, user: str | None, password: str | None, *, cid: str | None = None,
           v5: bool = True, on_message: Callable | None = None) -> mqtt.Client:
    """A connected paho client (loop running); raises if the broker refuses it."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid or f"t-{user}-{time.monotonic_ns()}",
                    protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
    if user:
        c.username_pw_set(user, password)
    result: dict[str, Any] = {}
    c.on_connect = lambda cl, ud, flags, reason, props: result.setdefault("reason", reason)
    if on_message:
        c.on_message = on_message
    c.connect("127.0.0.1", b.port)
    c.loop_start()
    wait_for(lambda: "reason" in result, 10, "CONNACK")
    if result["reason"].is_failure:
        c.loop_stop()
        raise ConnectionRefusedError(str(result["reason"]))
    return c


def wait_for(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class HubProcess:
    """`fieldhub run --config ...` as a real process (so it can be kill -9ed)."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.logpath = config, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self._out = open(self.logpath, "ab")
        self.proc = subprocess.Popen(fieldhub_cmd("run", "--config", str(self.config)), cwd=str(ROOT),
                                     env=env, stdout=self._out, stderr=subprocess.STDOUT)

    def status(self) -> dict | None:
        from fieldhub.core import control
        from fieldhub.core.errors import FieldhubError

        data_dir = Path(self._data_dir())
        try:
            return control.call(data_dir, "status", timeout=10)
        except (FieldhubError, OSError, ValueError):
            return None

    def _data_dir(self) -> str:
        import tomllib

        return tomllib.loads(self.config.read_text())["hub"]["data_dir"]

    def wait_ready(self, timeout: float = 30) -> dict:
        return wait_for(lambda: (s := self.status()) and s["components"]["mqtt"]["connected"] and s,
                        timeout, "hub connected to the broker")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._out.close()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


def sim_process(b: ProvisionedBroker, creds: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(fieldhub_cmd("sim", "village", "--broker", b.url, "--credentials", str(creds),
                                         "--json", *args), cwd=str(ROOT), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def mqtt_records(data_dir: Path) -> list[tuple[str, int, str]]:
    """(device_id, seq, kind) of every device message in the local store (presence excluded)."""
    import sqlite3

    db = sqlite3.connect(data_dir / "store.db")
    try:
        rows = db.execute("SELECT device_id, json_extract(fields, '$.seq'), kind FROM points "
                          "WHERE source='mqtt' AND kind != 'presence'").fetchall()
    finally:
        db.close()
    return rows


def quarantined(data_dir: Path) -> list[tuple[int, str | None, str]]:
    import sqlite3

    db = sqlite3.connect(data_dir / "log.db")
    try:
        return db.execute("SELECT qid, device_id, reason FROM quarantine WHERE source='mqtt'").fetchall()
    finally:
        db.close()


__all__ = ["ProvisionedBroker", "client", "wait_for", "HubProcess", "sim_process", "mqtt_records",
           "quarantined", "sys"]

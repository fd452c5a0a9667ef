"""Safe defaults on the vehicle: full-match device ids, CSV export without formulas, loopback UDP
binds, one-way GCS forwarding, private data dirs — each on real processes, sockets and brokers."""

from __future__ import annotations

import csv
import io
import socket
import time
from pathlib import Path

import orjson
import pytest
from pymavlink import mavutil

from drivers.mavlink import mav, new_parser
from drivers.transport import DatagramTransport
from fieldhub.core.records import Record
from fieldhub.core.registry import Device
from fieldhub.core.worker import Worker
from fieldhub.hub import Hub, load_config
from fieldhub.sources.mqtt.spec import Rejected, decode
from simulators.drone import DroneSwarm, free_udp_port
from tests.conftest import run_cli
from tests.mqtt_util import ProvisionedBroker, client


@pytest.mark.broker
def test_device_id_with_trailing_newline_is_refused_everywhere(tmp_path: Path) -> None:
    """`$` matched before a trailing newline: "rg-1\\n" passed, and broke passwd/acl so Mosquitto
    refused to start. Now every entry point refuses it with one line, and the broker starts."""
    b = ProvisionedBroker(tmp_path)
    passwd_before = (b.dir / "passwd").read_text()
    bad = run_cli("provision", "device", "rg-1\n", "--kind", "rain_gauge", "--admin-code", "420102001001",
                  "--config", str(b.config), "--broker-dir", str(b.dir))
    assert bad.returncode == 1 and "device id" in bad.stderr and "Traceback" not in bad.stderr
    assert (b.dir / "passwd").read_text() == passwd_before
    add = run_cli("devices", "add", "rg-2\n", "--kind", "rain_gauge", "--admin-code", "420102001001",
                  "--data-dir", str(b.data))
    assert add.returncode == 1 and "device id" in add.stderr and "Traceback" not in add.stderr
    serial = run_cli("run", "--data-dir", str(b.data), "--set", 'serial.ports=[{device_id = "g\\n", '
                     'driver = "nmea", url = "/dev/null"}]')
    assert serial.returncode == 2 and "device_id" in serial.stderr
    # the broker starts with the files as they are, and a well-named device works
    pw = b.provision("rg-4")
    b.start()
    try:
        c = client(b, "rg-4", pw, cid="rg-4")
        c.disconnect()
        c.loop_stop()
    finally:
        b.stop()
    from fieldhub.core.errors import ValidationError
    from fieldhub.sources.mqtt.provision import BrokerFiles

    with pytest.raises(ValidationError):
        BrokerFiles(b.dir).set_passwords({"rg-5\n": "x"})


def test_mqtt_field_name_with_trailing_newline_is_rejected() -> None:
    dev = Device("rg-1", "rain_gauge", "420102001001")
    ok = decode("fh/rg-1/up/telemetry", orjson.dumps({"seq": 1, "fields": {"rain_mm": 1.0}}), dev, 0)
    assert isinstance(ok.record, Record) and ok.record.fields["rain_mm"] == 1.0
    with pytest.raises(Rejected):
        decode("fh/rg-1/up/telemetry", orjson.dumps({"seq": 2, "fields": {"rain_mm\n": 1.0}}), dev, 0)
    with pytest.raises(Rejected):
        decode("fh/rg-1/up/telemetry\n", orjson.dumps({"seq": 3, "fields": {"rain_mm": 1.0}}), dev, 0)


def test_devices_export_escapes_formula_cells_and_reimports_unchanged(tmp_path: Path) -> None:
    data = tmp_path / "data"
    evil = '=HYPERLINK("http://evil.example/x","click")'
    run_cli("devices", "add", "rg-1", "--kind", "rain_gauge", "--admin-code", "420102001001", "--unit", evil,
            "--contact", "+86 138 0000 0000", "--data-dir", str(data), check=True)
    run_cli("devices", "add", "rg-2", "--kind", "rain_gauge", "--admin-code", "420102001001", "--unit",
            "Village 2", "--contact", "@SUM(1+1)", "--data-dir", str(data), check=True)
    out = tmp_path / "devices.csv"
    run_cli("devices", "export", "--out", str(out), "--data-dir", str(data), check=True)
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    cells = [c for r in rows for c in r.values()]
    assert not any(c.startswith(("=", "+", "-", "@", "\t", "\r")) for c in cells), cells
    assert rows[0]["unit"] == "'" + evil and rows[0]["contact"] == "'+86 138 0000 0000"
    assert rows[1]["unit"] == "Village 2" and rows[1]["contact"] == "'@SUM(1+1)"
    run_cli("devices", "import", str(out), "--replace", "--data-dir", str(data), check=True)
    shown = orjson.loads(run_cli("devices", "show", "rg-1", "--json", "--data-dir", str(data), check=True).stdout)
    assert shown["unit"] == evil and shown["contact"] == "+86 138 0000 0000"


def _non_loopback_ip() -> str | None:
    """This machine's address on its default route, if it has one (to knock from outside loopback)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent, the kernel only picks a route
        ip = s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()
    return None if ip.startswith("127.") else ip


def test_udp_endpoints_without_a_host_bind_to_loopback(tmp_path: Path) -> None:
    """MAVLink drone and GCS endpoints and the DMR/LRRP datagram port listen on loopback unless a
    host is configured; a datagram to the machine's LAN address does not reach them."""
    drone_port, gcs_port, lrrp_port = free_udp_port(), free_udp_port(), free_udp_port()
    hub = Hub(load_config(None, {"hub.data_dir": str(tmp_path / "data"), "store.enabled": False,
                                 "mavlink.endpoints": [f"udpin::{drone_port}"],
                                 "mavlink.forward": [f"udpin::{gcs_port}"]}, env={}))
    hub.start()
    lrrp = DatagramTransport(f"udp://:{lrrp_port}")
    got: list[bytes] = []
    worker = Worker("lrrp-test", lambda stop: lrrp.run(got.append))
    worker.start()
    try:
        drones = next(c for c in hub.components if c.name == "drones")
        bound = [ep.sock.getsockname() for ep in drones.endpoints + drones.gcs]
        assert bound == [("127.0.0.1", drone_port), ("127.0.0.1", gcs_port)]
        assert lrrp.connected.wait(5) and lrrp._sock is not None
        assert lrrp._sock.getsockname() == ("127.0.0.1", lrrp_port)
        ip = _non_loopback_ip()
        if ip is not None:  # from outside loopback: refused at the socket layer, nothing arrives
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"\x00" * 8, (ip, lrrp_port))
                s.sendto(b"\xfd" + b"\x00" * 20, (ip, drone_port))
            time.sleep(0.3)
            assert got == [] and drones.stats["bad_frames"] == 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # and loopback still works
            s.sendto(b"\x00" * 8, ("127.0.0.1", lrrp_port))
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got == [b"\x00" * 8]
    finally:
        lrrp.stop()
        worker.stop(5)
        hub.stop()


def test_gcs_forward_is_one_way_unless_forward_commands(tmp_path: Path) -> None:
    """With the README's setup (a drone link and a GCS forward), unsigned COMMAND_LONGs sent into
    the forward port reach no drone: 0 of 5 (they did: 5 of 5). Telemetry still flows out."""
    hub_port, gcs_port = free_udp_port(), free_udp_port()
    gcs = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gcs.bind(("127.0.0.1", gcs_port))
    gcs.settimeout(0.5)
    hub = Hub(load_config(None, {"hub.data_dir": str(tmp_path / "data"), "store.enabled": False,
                                 "mavlink.endpoints": [f"udpin:127.0.0.1:{hub_port}"],
                                 "mavlink.forward": [f"udpout:127.0.0.1:{gcs_port}"]}, env={}))
    hub.start()
    swarm = DroneSwarm(1, f"udpout:127.0.0.1:{hub_port}", gps_loss=False, rate_hz=10)
    swarm.start()
    try:
        drones = next(c for c in hub.components if c.name == "drones")
        chunk, hub_addr = gcs.recvfrom(65535)  # telemetry is forwarded to the ground station
        assert chunk
        mode_before = swarm.drones[1].mode_name
        attacker = new_parser(255, 190)
        for confirmation in range(5):
            gcs.sendto(bytes(attacker.command_long_encode(
                1, 1, mav.MAV_CMD_DO_SET_MODE, confirmation, 1, mavutil.mode_mapping_byname(2)["LAND"],
                0, 0, 0, 0, 0).pack(attacker)), hub_addr)
            gcs.sendto(bytes(attacker.command_long_encode(
                1, 1, mav.MAV_CMD_COMPONENT_ARM_DISARM, confirmation, 0, 21196, 0, 0, 0, 0, 0)
                .pack(attacker)), hub_addr)
        deadline = time.monotonic() + 5
        while drones.stats.get("dropped_from_gcs", 0) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert swarm.drones[1].mode_name == mode_before and swarm.drones[1].stats["commands"] == 0
        assert drones.stats["dropped_from_gcs"] == 10 and drones.stats["from_gcs"] == 0
        assert drones.status()["dropped_from_gcs"] == 10
    finally:
        swarm.stop()
        gcs.close()
        hub.stop()
    events = [line for line in (tmp_path / "data").rglob("oplog.jsonl") for line in
              line.read_text(encoding="utf-8", errors="replace").splitlines() if "gcs_one_way" in line]
    assert len(events) == 1 and "forward_commands" in events[0]


def test_data_dir_is_0750_and_its_databases_0640(tmp_path: Path) -> None:
    """A real hub process with the usual umask 022, on a data dir an older version left 0755 with
    a world-readable hub.json: afterwards the dir is 0750 and every file in it 0640 at most."""
    import os
    import signal
    import stat
    import subprocess

    from fieldhub.core import control
    from fieldhub.core.errors import FieldhubError
    from tests.conftest import ROOT, fieldhub_cmd

    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    (data / "hub.json").write_text("{}")
    (data / "hub.json").chmod(0o644)
    run_cli("devices", "add", "rg-1", "--kind", "rain_gauge", "--admin-code", "420102001001",
            "--data-dir", str(data), check=True)
    proc = subprocess.Popen(fieldhub_cmd("run", "--data-dir", str(data)), cwd=str(ROOT),
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=lambda: os.umask(0o022))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                control.call(data, "ping", timeout=2)
                break
            except (FieldhubError, OSError):
                assert proc.poll() is None and time.monotonic() < deadline, "hub did not start"
                time.sleep(0.1)
        modes = {p.name: stat.S_IMODE(p.lstat().st_mode) for p in [data, *data.iterdir()]
                 if not p.is_socket()}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert modes[data.name] == 0o750
    assert {"log.db", "log.db-wal", "registry.db", "hub.json", "oplog.jsonl"} <= set(modes)
    loose = {name: oct(m) for name, m in modes.items() if m & 0o027}
    assert not loose, loose

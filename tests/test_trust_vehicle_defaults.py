"""Safe defaults on the vehicle: full-match device ids, CSV export without formulas, loopback UDP
binds, one-way GCS forwarding, private data dirs — each on real processes, sockets and brokers."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import orjson
import pytest

from fieldhub.core.records import Record
from fieldhub.core.registry import Device
from fieldhub.sources.mqtt.spec import Rejected, decode
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

"""Provisioning commands: operator errors, password rotation, and the TLS listener on a real Mosquitto."""

from __future__ import annotations

import datetime
import ipaddress
import time
from pathlib import Path

import orjson
import pytest

from fieldhub.hub import Hub, load_config
from fieldhub.sources.mqtt.mosquitto import Mosquitto, free_port
from fieldhub.sources.mqtt.provision import verify_password
from tests.mqtt_util import ADMIN, ProvisionedBroker, mqtt_records, run_as, run_cli, wait_for


def test_provision_errors_are_one_line(tmp_path: Path) -> None:
    b = ProvisionedBroker(tmp_path)
    bad = run_cli("provision", "device", "rg-1", "--kind", "rain_gauge", "--admin-code", "12345",
                  "--config", str(b.config), "--broker-dir", str(b.dir))
    assert bad.returncode == 1 and "12 digits" in bad.stderr and "Traceback" not in bad.stderr
    first = b.provision("rg-1")
    again = run_cli("provision", "device", "rg-1", "--kind", "rain_gauge", "--admin-code", ADMIN,
                    "--config", str(b.config), "--broker-dir", str(b.dir))
    assert again.returncode == 1 and "--rotate" in again.stderr
    rotated = orjson.loads(run_cli("provision", "device", "rg-1", "--kind", "rain_gauge", "--admin-code",
                                   ADMIN, "--rotate", "--json", "--config", str(b.config), "--broker-dir",
                                   str(b.dir), check=True).stdout)["password"]
    line = next(l for l in (b.dir / "passwd").read_text().splitlines() if l.startswith("rg-1:"))
    hashed = line.split(":", 1)[1]
    assert rotated != first and verify_password(rotated, hashed) and not verify_password(first, hashed)
    hub_user = run_cli("provision", "device", "fieldhub", "--kind", "rain_gauge", "--admin-code", ADMIN,
                       "--config", str(b.config), "--broker-dir", str(b.dir))
    assert hub_user.returncode == 1 and "hub's own account" in hub_user.stderr
    tls = run_cli("provision", "broker-config", "--out", str(tmp_path / "b2"), "--tls-cert", "/nonexistent.pem",
                  "--tls-key", "/nonexistent.key")
    assert tls.returncode == 1 and "does not exist" in tls.stderr
    # re-running broker-config keeps device accounts and the hub's password
    again_cfg = orjson.loads(run_cli("provision", "broker-config", "--out", str(b.dir), "--listen",
                                     f"127.0.0.1:{b.port}", "--run-as", run_as(), "--json", check=True).stdout)
    assert again_cfg["password"] == b.info["password"] and "rg-1:" in (b.dir / "passwd").read_text()
    assert "user rg-1" in (b.dir / "acl").read_text()


def _certs(d: Path) -> tuple[Path, Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fieldhub test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    d.mkdir(parents=True, exist_ok=True)
    paths = d / "ca.pem", d / "server.pem", d / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@pytest.mark.broker
def test_tls_listener_starts_and_hub_ingests_over_tls(tmp_path: Path) -> None:
    ca, cert, key = _certs(tmp_path / "tls")
    port, tls_port = free_port(), free_port()
    out = orjson.loads(run_cli("provision", "broker-config", "--out", str(tmp_path / "broker"), "--listen",
                               f"127.0.0.1:{port}", "--tls-cert", str(cert), "--tls-key", str(key),
                               "--tls-port", str(tls_port), "--run-as", run_as(), "--json", check=True).stdout)
    conf = Path(out["conf"]).read_text()
    assert f"listener {tls_port} 127.0.0.1" in conf and f"certfile {cert}" in conf
    broker = Mosquitto(tmp_path / "broker", port=tls_port, conf_file=Path(out["conf"])).start()
    data = tmp_path / "data"
    try:
        pw = orjson.loads(run_cli("provision", "device", "rg-t", "--kind", "rain_gauge", "--admin-code", ADMIN,
                                  "--data-dir", str(data), "--broker-dir", str(tmp_path / "broker"), "--json",
                                  check=True).stdout)["password"]
        broker.restart()
        cfg = load_config(None, {"hub.data_dir": str(data), "mqtt.broker": f"mqtts://127.0.0.1:{tls_port}",
                                    "mqtt.tls_ca": str(ca), "mqtt.username": "fieldhub",
                                    "mqtt.password": out["password"]}, env={})
        hub = Hub(cfg)
        hub.start()
        try:
            mq = hub.components[-1]
            wait_for(lambda: mq.connected, 15, "hub connected over TLS")
            import paho.mqtt.client as mqtt

            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="rg-t")
            c.tls_set(ca_certs=str(ca))
            c.username_pw_set("rg-t", pw)
            c.connect("127.0.0.1", tls_port)
            c.loop_start()
            c.publish("fh/rg-t/up/telemetry", orjson.dumps({"seq": 1, "ts": int(time.time() * 1000),
                                                           "fields": {"rain_mm": 4.0}}), qos=1).wait_for_publish(10)
            wait_for(lambda: ("rg-t", 1, "rain_gauge") in mqtt_records(data), 15, "record over TLS")
            c.disconnect()
            c.loop_stop()
        finally:
            hub.stop()
    finally:
        broker.stop()

"""The uplink over TLS with client certificates, to a real Mosquitto that requires them."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fieldhub.core.log import DurableLog
from fieldhub.sources.mqtt.mosquitto import free_port
from fieldhub.uplink.config import LinkConfig, UplinkConfig
from fieldhub.uplink.sender import Uplink
from tests import uplink_hubproc as hubproc
from tests.test_uplink_flow import center_ids, center_worker, stop, wait_until


def _cert(name: str, issuer_key, issuer_name, key, *, ca: bool = False, server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
         .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                          x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                            critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def make_pki(d: Path) -> dict[str, Path]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fieldhub test CA")])
    ca = _cert("fieldhub test CA", ca_key, ca_name, ca_key, ca=True)
    out = {"ca": d / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name, server in (("server", True), ("vehicle", False), ("center", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(name, ca_key, ca_name, key, server=server)
        out[f"{name}_cert"], out[f"{name}_key"] = d / f"{name}.pem", d / f"{name}.key"
        out[f"{name}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{name}_key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return out


@pytest.fixture
def pki_dir():
    """Outside pytest's private tmp dir: mosquitto drops to its own user and must read the files."""
    d = Path(tempfile.mkdtemp(prefix="fh-pki-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_uplink_over_tls_with_client_certificates(tmp_path: Path, pki_dir: Path, mosquitto_factory) -> None:
    pki = make_pki(pki_dir)
    for f in pki.values():
        f.chmod(0o644)
    port = free_port()
    broker = mosquitto_factory(port=port, extra_conf="\n".join([
        f"cafile {pki['ca']}", f"certfile {pki['server_cert']}", f"keyfile {pki['server_key']}",
        "require_certificate true"]))
    url = f"mqtts://127.0.0.1:{port}"
    center_dir = tmp_path / "center"
    worker = center_worker(url, center_dir, "w1", "--ca-file", str(pki["ca"]), "--cert-file",
                           str(pki["center_cert"]), "--key-file", str(pki["center_key"]))
    good = LinkConfig(name="geo", url=url, ca_file=str(pki["ca"]), cert_file=str(pki["vehicle_cert"]),
                      key_file=str(pki["vehicle_key"]), latency=0.01)
    no_cert = LinkConfig(name="nocert", url=url, ca_file=str(pki["ca"]), latency=0.01, cost=0)
    log = DurableLog(tmp_path / "hub" / "log.db")
    up = Uplink(log, UplinkConfig(enabled=True, probe_interval=0.3, links=[good, no_cert]), "vehicle-11")
    try:
        up.start()
        recs = [hubproc.record(i) for i in range(3000)]
        log.append(recs)
        wait_until(lambda: len(center_ids(center_dir)) == len(recs), 30, "records over TLS", 0.2)
        assert set(center_ids(center_dir)) == {r.id for r in recs}
        time.sleep(1)
        links = {l["name"]: l for l in up.report()["links"]}
        assert links["geo"]["state"] == "up" and links["geo"]["bytes_sent"] > 0
        # the cheaper link without a client certificate is refused by the broker, never used
        assert links["nocert"]["state"] == "down" and links["nocert"]["bytes_sent"] == 0
        assert broker.proc.poll() is None
    finally:
        up.stop()
        log.close()
        stop(worker)

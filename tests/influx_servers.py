"""Real InfluxDB-protocol servers for tests and benchmarks: Debian's influxd 1.6 and VictoriaMetrics.

Each runs on a free loopback port with its own temporary data dir, is ready when its health
endpoint answers, and can be stopped and restarted on the same port and data (outage tests).
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from fieldhub.sources.mqtt.mosquitto import free_port, stop_process


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (PEM cert, PEM key), made with ``cryptography``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fieldhub-test-influx")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


class _Server:
    binary = ""
    health = "/ping"

    def __init__(self, workdir: Path, port: int | None = None, *, tls: bool = False) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self._log = None
        self.tls = tls
        self.cert, self.key = self_signed(self.workdir) if tls else (None, None)
        self._ctx = ssl.create_default_context(cafile=str(self.cert)) if tls else None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> _Server:
        if shutil.which(self.binary) is None:
            pytest.fail(f"{self.binary} is not installed (Debian: apt-get install influxdb victoria-metrics)")
        self._log = open(self.workdir / "server.log", "ab")
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.binary} exited with {self.proc.returncode}; see "
                                   f"{self.workdir / 'server.log'}")
            try:
                with urllib.request.urlopen(self.url + self.health, timeout=0.5, context=self._ctx) as resp:
                    if resp.status in (200, 204):
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.binary} not ready on port {self.port} after {timeout}s")

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        stop_process(self.proc, 20, kill=kill)
        self.proc = None
        if self._log:
            self._log.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    # ------------------------------------------------------------------ raw HTTP helpers
    def http(self, method: str, path: str, params: dict[str, str] | None = None,
             body: bytes | None = None, headers: dict[str, str] | None = None,
             timeout: float = 30.0) -> tuple[int, bytes]:
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self._ctx) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


class InfluxDB1(_Server):
    """``influxd`` 1.6 from Debian's ``influxdb`` package; optionally with auth enabled."""

    binary = "influxd"

    def __init__(self, workdir: Path, port: int | None = None, *, auth: bool = False,
                 tls: bool = False) -> None:
        super().__init__(workdir, port, tls=tls)
        self.auth = auth
        self.rpc_port = free_port()

    def command(self) -> list[str]:
        d = self.workdir
        conf = d / "influxdb.conf"
        conf.write_text(f"""reporting-disabled = true
bind-address = "127.0.0.1:{self.rpc_port}"
[meta]
  dir = "{d}/meta"
  logging-enabled = false
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:{self.port}"
  auth-enabled = {'true' if self.auth else 'false'}
  log-enabled = false
  https-enabled = {'true' if self.tls else 'false'}
  https-certificate = "{self.cert or ''}"
  https-private-key = "{self.key or ''}"
[continuous_queries]
  enabled = false
[subscriber]
  enabled = false
[logging]
  level = "warn"
""")
        return [self.binary, "-config", str(conf)]

    def query(self, q: str, db: str | None = None, user: str | None = None,
              password: str | None = None) -> dict[str, Any]:
        """Run InfluxQL over /query; returns the decoded JSON (raises on an error)."""
        params = {"q": q, "epoch": "ns"}
        if db:
            params["db"] = db
        if user:
            params.update(u=user, p=password or "")
        status, body = self.http("POST", "/query", params)
        data = orjson.loads(body)
        if status != 200 or any("error" in r for r in data.get("results", [])) or "error" in data:
            raise RuntimeError(f"InfluxQL {q!r}: {status} {body[:300]!r}")
        return data

    def rows(self, q: str, db: str, **auth: str) -> list[dict[str, Any]]:
        """Every row of every series of a SELECT, as dicts (tags included)."""
        out: list[dict[str, Any]] = []
        for result in self.query(q, db, **auth)["results"]:
            for series in result.get("series", []):
                cols = series["columns"]
                for values in series["values"]:
                    row = dict(zip(cols, values))
                    row.update(series.get("tags") or {})
                    row["_measurement"] = series["name"]
                    out.append(row)
        return out


class VictoriaMetrics(_Server):
    """Debian's ``victoria-metrics``: implements ``/api/v2/write``; read back through ``/api/v1/export``.

    Started with ``-dedup.minScrapeInterval=1ms`` so that, like InfluxDB, the same series at
    the same timestamp is one sample (a rewrite replaces, it does not add).
    """

    binary = "victoria-metrics"
    health = "/health"

    def command(self) -> list[str]:
        tls = ["-tls", f"-tlsCertFile={self.cert}", f"-tlsKeyFile={self.key}"] if self.tls else []
        return [self.binary, f"-httpListenAddr=127.0.0.1:{self.port}",
                f"-storageDataPath={self.workdir / 'data'}", "-dedup.minScrapeInterval=1ms",
                "-retentionPeriod=100y", "-loggerLevel=ERROR", "-search.disableCache", *tls]

    def export(self, match: str) -> list[dict[str, Any]]:
        """Raw samples of every series matching ``match`` (``{"metric", "values", "timestamps"}``)."""
        self.http("GET", "/internal/force_flush")
        status, body = self.http("POST", "/api/v1/export", {"match[]": match})
        if status != 200:
            raise RuntimeError(f"export {match}: {status} {body[:300]!r}")
        return [orjson.loads(line) for line in body.splitlines() if line.strip()]


@pytest.fixture
def influxdb1(tmp_path: Path) -> Iterator[InfluxDB1]:
    """A real InfluxDB 1.6 on a free loopback port, no auth, temporary data dir."""
    server = InfluxDB1(tmp_path / "influxdb").start()
    yield server
    server.stop()


@pytest.fixture
def influxdb1_auth(tmp_path: Path) -> Iterator[InfluxDB1]:
    """InfluxDB 1.6 with auth enabled: admin ``admin``/``adminpw``, read-only ``reader``/``readerpw`` on ``fieldhub``."""
    server = InfluxDB1(tmp_path / "influxdb-auth", auth=True).start()
    server.query("CREATE USER admin WITH PASSWORD 'adminpw' WITH ALL PRIVILEGES")
    auth = {"user": "admin", "password": "adminpw"}
    server.query("CREATE DATABASE fieldhub", **auth)
    server.query("CREATE USER reader WITH PASSWORD 'readerpw'", **auth)
    server.query("GRANT READ ON fieldhub TO reader", **auth)
    yield server
    server.stop()


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    """A real VictoriaMetrics on a free loopback port, temporary data dir."""
    server = VictoriaMetrics(tmp_path / "victoria").start()
    yield server
    server.stop()

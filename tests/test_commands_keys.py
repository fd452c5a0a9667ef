"""`fieldhub keys`: the hub key (0600, never overwritten), issuers, revocation — through the real CLI."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import orjson
import pytest

from fieldhub.core.errors import StorageError
from fieldhub.core.keys import HUB_KEY_FILE, KEYS_FILE, hub_signing_key
from tests.conftest import run_cli

HMAC_HEX = "00112233445566778899aabbccddeeff0011"


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_init_creates_0600_key_registers_hub_and_never_overwrites(tmp_path: Path) -> None:
    d = str(tmp_path / "data")
    first = run_cli("keys", "init", "--data-dir", d, "--admin-code", "610404000000", "--json", check=True)
    doc = orjson.loads(first.stdout)
    assert doc["created"] and len(doc["public_key"]) == 64
    assert doc["issuer"]["name"] == "hub" and doc["issuer"]["admin_code"] == "610404000000"
    key_file, keys_db = Path(d) / HUB_KEY_FILE, Path(d) / KEYS_FILE
    assert _mode(key_file) == 0o600 and _mode(keys_db) == 0o600
    # the same key signs for other parts (the audit log's tree heads)
    key = hub_signing_key(d)
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    assert key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex() == doc["public_key"]
    again = run_cli("keys", "init", "--data-dir", d, check=True)
    assert doc["public_key"] in again.stdout and "exists" in again.stdout
    # a key file others can read is refused, not used
    os.chmod(key_file, 0o644)
    with pytest.raises(StorageError, match="chmod 600"):
        hub_signing_key(d)


def test_add_list_revoke(tmp_path: Path) -> None:
    d = str(tmp_path / "data")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    pub = Ed25519PrivateKey.generate().public_key()
    pem = tmp_path / "county.pem"
    pem.write_bytes(pub.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    run_cli("keys", "add", "weicheng", "--public-key", str(pem), "--admin-code", "610404000000",
            "--role", "commander", "--unit", "渭城区应急管理局", "--data-dir", d, check=True)
    raw_hex = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    run_cli("keys", "add", "township", "--public-key", raw_hex, "--admin-code", "610404001000",
            "--data-dir", d, check=True)
    run_cli("keys", "add", "center-bd", "--hmac-key", HMAC_HEX, "--admin-code", "610000000000",
            "--data-dir", d, check=True)
    listing = orjson.loads(run_cli("keys", "list", "--json", "--data-dir", d, check=True).stdout)
    by = {k["name"]: k for k in listing["keys"]}
    assert by["weicheng"]["public_key"] == pub.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    assert by["weicheng"]["role"] == "commander" and by["weicheng"]["level"] == "county"
    assert by["township"]["role"] == "operator" and by["township"]["level"] == "township"
    assert by["center-bd"]["kind"] == "hmac" and by["center-bd"]["public_key"] is None
    assert HMAC_HEX not in run_cli("keys", "list", "--json", "--data-dir", d).stdout  # never a secret
    table = run_cli("keys", "list", "--data-dir", d, check=True, env={"COLUMNS": "200"}).stdout
    assert "weicheng" in table and "center-bd" in table

    run_cli("keys", "revoke", "township", "--data-dir", d, check=True)
    listing = orjson.loads(run_cli("keys", "list", "--json", "--data-dir", d, check=True).stdout)
    assert {k["name"]: k["state"] for k in listing["keys"]}["township"] == "revoked"


@pytest.mark.parametrize("args, needle", [
    (["add", "x", "--public-key", "abcd", "--admin-code", "610404000000"], "64 hex"),
    (["add", "x", "--hmac-key", "0011", "--admin-code", "610404000000"], "at least 16 bytes"),
    (["add", "x", "--admin-code", "610404000000"], "exactly one"),
    (["add", "x", "--hmac-key", HMAC_HEX, "--admin-code", "6104"], "12 digits"),
    (["add", "x", "--hmac-key", HMAC_HEX, "--admin-code", "610404000000", "--role", "god"], "god"),
    (["revoke", "nobody"], "no key named"),
])
def test_operator_errors_are_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    proc = run_cli("keys", *args, "--data-dir", str(tmp_path / "data"))
    assert proc.returncode != 0 and needle in proc.stderr and "Traceback" not in proc.stderr


def test_duplicate_name_refused(tmp_path: Path) -> None:
    d = str(tmp_path / "data")
    run_cli("keys", "add", "a", "--hmac-key", HMAC_HEX, "--admin-code", "610404000000", "--data-dir", d, check=True)
    proc = run_cli("keys", "add", "a", "--hmac-key", HMAC_HEX + "22", "--admin-code", "610000000000",
                   "--data-dir", d)
    assert proc.returncode == 1 and "exists" in proc.stderr

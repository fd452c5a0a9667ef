"""The key store: who may issue commands (their keys, admin codes, roles) and the hub's own key.

Both live in the data dir with mode 0600: ``keys.db`` (SQLite: issuers, the replay state the
verifier persists, its rejection counts) and ``hub.key`` (the hub's Ed25519 private key, raw
32 bytes as hex). An issuer is either an Ed25519 public key (IP paths) or an HMAC secret
(narrowband paths: Beidou, Tiantong SMS), never both.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fieldhub.core.db import connect
from fieldhub.core.errors import StorageError, ValidationError
from fieldhub.core.registry import AdminCode

KEYS_FILE = "keys.db"  #: issuers, replay state, verdict counts
HUB_KEY_FILE = "hub.key"  #: the hub's Ed25519 private key (hex), 0600
HUB_ISSUER = "hub"  #: the key name under which the hub's own key is registered as an issuer
ROLES = ("commander", "operator")
KINDS = ("ed25519", "hmac")
MIN_HMAC_KEY = 16  #: bytes

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,63}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS issuers (
    name TEXT PRIMARY KEY, kind TEXT NOT NULL, material BLOB NOT NULL, kid BLOB NOT NULL,
    admin_code TEXT NOT NULL, role TEXT NOT NULL, unit TEXT NOT NULL DEFAULT '',
    created INTEGER NOT NULL, revoked INTEGER);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, last INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY, issuer TEXT NOT NULL, until INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS verdicts (reason TEXT PRIMARY KEY, n INTEGER NOT NULL);
"""


def key_id(name: str) -> bytes:
    """The 4-byte issuer id a compact (narrowband) envelope carries instead of the name."""
    return hashlib.sha256(b"fieldhub-kid\x00" + name.encode()).digest()[:4]


@dataclass(frozen=True)
class Issuer:
    """One registered issuer."""

    name: str
    kind: str  #: "ed25519" or "hmac"
    material: bytes  #: Ed25519 public key (32 bytes) or the HMAC secret
    admin_code: str
    role: str
    unit: str = ""
    created: int = 0  #: ns UTC
    revoked: int | None = None  #: ns UTC when revoked

    def public_view(self) -> dict[str, Any]:
        """What ``keys list`` shows: never an HMAC secret."""
        d = asdict(self)
        d.pop("material")
        d["public_key"] = self.material.hex() if self.kind == "ed25519" else None
        d["key_id"] = key_id(self.name).hex()
        d["level"] = AdminCode(self.admin_code).level
        d["state"] = "revoked" if self.revoked else "active"
        return d


def _private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if missing, and tighten it if it exists."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


def parse_public_key(value: str) -> bytes:
    """``HEX`` (64 hex digits) or a FILE holding hex or a PEM public key -> 32 raw bytes."""
    text = value.strip()
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        path = Path(value)
        if not path.is_file():
            raise ValidationError(f"--public-key {value[:40]!r}: neither 64 hex digits nor a readable file "
                                  f"/ 公钥须为64位十六进制或公钥文件")
        text = path.read_text(errors="replace").strip()
        if "BEGIN PUBLIC KEY" in text:
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

            try:
                pub = serialization.load_pem_public_key(text.encode())
            except ValueError as exc:
                raise ValidationError(f"{path}: not a PEM public key: {exc} / 公钥文件格式错误") from None
            if not isinstance(pub, Ed25519PublicKey):
                raise ValidationError(f"{path}: not an Ed25519 public key / 不是 Ed25519 公钥")
            return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
            raise ValidationError(f"{path}: expected 64 hex digits or a PEM Ed25519 public key "
                                  f"/ 公钥文件须为64位十六进制或 PEM")
    return bytes.fromhex(text)


def parse_hmac_key(value: str) -> bytes:
    text = value.strip()
    if not re.fullmatch(r"(?:[0-9a-fA-F]{2})+", text) or len(text) // 2 < MIN_HMAC_KEY:
        raise ValidationError(f"--hmac-key must be at least {MIN_HMAC_KEY} bytes as hex "
                              f"({2 * MIN_HMAC_KEY}+ hex digits) / HMAC 密钥至少{MIN_HMAC_KEY}字节（十六进制）")
    return bytes.fromhex(text)


class KeyStore:
    """``keys.db`` in a data dir: issuers, and the verifier's persisted replay state."""

    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir)
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            path = self.data_dir / KEYS_FILE
            _private(path)
            self.conn = connect(path)
            self.conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"key store {self.data_dir / KEYS_FILE}: {exc} / 密钥库无法打开") from None
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                os.chmod(side, 0o600)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE): committed on exit, rolled back on error."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # ------------------------------------------------------------------ issuers
    def add(self, name: str, *, kind: str, material: bytes, admin_code: str, role: str = "operator",
            unit: str = "", replace: bool = False) -> Issuer:
        if not _NAME_RE.fullmatch(name):
            raise ValidationError(f"key name {name!r}: 1-64 letters, digits, '_', '.', '@', '-' "
                                  f"/ 密钥名称不合法")
        if kind not in KINDS:
            raise ValidationError(f"key kind {kind!r}: one of {', '.join(KINDS)}")
        if role not in ROLES:
            raise ValidationError(f"role {role!r}: one of {', '.join(ROLES)} / 角色须为 commander 或 operator")
        if kind == "ed25519" and len(material) != 32:
            raise ValidationError("an Ed25519 public key is 32 bytes / Ed25519 公钥为32字节")
        if kind == "hmac" and len(material) < MIN_HMAC_KEY:
            raise ValidationError(f"an HMAC key is at least {MIN_HMAC_KEY} bytes")
        code = AdminCode.parse(admin_code).code
        kid = key_id(name)
        with self.transaction() as c:
            old = c.execute("SELECT name FROM issuers WHERE name=?", (name,)).fetchone()
            if old and not replace:
                raise ValidationError(f"key {name!r} exists; revoke it and add it under a new name "
                                      f"/ 密钥 {name} 已存在")
            clash = c.execute("SELECT name FROM issuers WHERE kid=? AND name<>?", (kid, name)).fetchone()
            if clash:
                raise ValidationError(f"key name {name!r} has the same 4-byte key id as {clash[0]!r}; "
                                      f"choose another name / 密钥编号冲突，请换名")
            c.execute("INSERT OR REPLACE INTO issuers (name, kind, material, kid, admin_code, role, unit, "
                      "created, revoked) VALUES (?,?,?,?,?,?,?,?,NULL)",
                      (name, kind, material, kid, code, role, unit, time.time_ns()))
        issuer = self.get(name)
        assert issuer is not None
        return issuer

    def revoke(self, name: str) -> bool:
        """Revoke ``name``; False if no such key. A revoked key stays listed (and refused)."""
        with self.transaction() as c:
            c.execute("UPDATE issuers SET revoked=? WHERE name=? AND revoked IS NULL", (time.time_ns(), name))
            found = c.execute("SELECT 1 FROM issuers WHERE name=?", (name,)).fetchone()
        return found is not None

    def get(self, name: str) -> Issuer | None:
        row = self.conn.execute("SELECT name, kind, material, admin_code, role, unit, created, revoked "
                                "FROM issuers WHERE name=?", (name,)).fetchone()
        return Issuer(*row) if row else None

    def by_key_id(self, kid: bytes) -> Issuer | None:
        row = self.conn.execute("SELECT name FROM issuers WHERE kid=?", (kid,)).fetchone()
        return self.get(row[0]) if row else None

    def all(self) -> list[Issuer]:
        rows = self.conn.execute("SELECT name, kind, material, admin_code, role, unit, created, revoked "
                                 "FROM issuers ORDER BY name").fetchall()
        return [Issuer(*r) for r in rows]

    # ------------------------------------------------------------------ verifier state
    def last_counter(self, name: str) -> int | None:
        row = self.conn.execute("SELECT last FROM counters WHERE name=?", (name,)).fetchone()
        return None if row is None else int(row[0])

    def verdict_counts(self) -> dict[str, int]:
        """How many envelopes were accepted, and rejected per reason, since the store was made."""
        return {r: int(n) for r, n in self.conn.execute("SELECT reason, n FROM verdicts ORDER BY reason")}


# ---------------------------------------------------------------------- the hub's own key
def init_hub_key(data_dir: Path | str) -> tuple[bytes, bool]:
    """Create the hub's Ed25519 key (0600) if missing -> (public key, created)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    path = Path(data_dir) / HUB_KEY_FILE
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    if path.exists():
        return hub_signing_key(data_dir).public_key().public_bytes(Encoding.Raw, _raw_pub()), False
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, raw.hex().encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.link(tmp, path)  # fails if another init won the race: never overwrite a hub key
    os.unlink(tmp)
    return key.public_key().public_bytes(Encoding.Raw, _raw_pub()), True


def _raw_pub() -> Any:
    from cryptography.hazmat.primitives.serialization import PublicFormat

    return PublicFormat.Raw


def hub_signing_key(data_dir: Path | str) -> Any:
    """The hub's Ed25519 private key (``cryptography`` Ed25519PrivateKey), for signing commands
    issued at the vehicle and the audit log's tree heads. StorageError if there is none."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(data_dir) / HUB_KEY_FILE
    try:
        mode = path.stat().st_mode & 0o777
        text = path.read_text().strip()
    except FileNotFoundError:
        raise StorageError(f"no hub key in {data_dir}; run `fieldhub keys init` / 尚未生成本车密钥") from None
    except OSError as exc:
        raise StorageError(f"hub key {path}: {exc.strerror or exc} / 本车密钥无法读取") from None
    if mode & 0o077:
        raise StorageError(f"hub key {path} is readable by others (mode {mode:o}); chmod 600 it "
                           f"/ 本车密钥权限过宽，须为 600")
    try:
        return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(text))
    except ValueError:
        raise StorageError(f"hub key {path} is damaged (expected 64 hex digits) / 本车密钥文件损坏") from None

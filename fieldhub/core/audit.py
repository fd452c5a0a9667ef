"""The tamper-evident audit log: an append-only RFC 6962 Merkle tree of operator actions, with signed heads.

Files in the data dir: ``audit.jsonl`` (one canonical JSON entry per line; the line's bytes without
the newline are the leaf) and ``audit_heads.jsonl`` (signed tree heads: size, root, time, signature).
Hashing is RFC 6962's: leaf = SHA-256(0x00 || entry), node = SHA-256(0x01 || left || right).

Each entry carries ``seq`` (its index) and ``prev`` (the tree root before it), so a local check can
name the first entry that was edited, deleted or moved; what makes a rewrite *provable* is the signed
heads held elsewhere (the center): a rewritten file no longer has a consistency proof to them.

Durability: every ``append`` writes its line with one ``write`` on an ``O_APPEND`` fd and fsyncs it
before returning (``append_many`` fsyncs once for the batch). Appends from several processes (the hub,
CLI commands) are serialised by ``flock`` on the file, and each appender catches up on lines the
others wrote before adding its own.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from fieldhub.core.errors import StorageError

AUDIT_FILE = "audit.jsonl"  #: the entries
HEADS_FILE = "audit_heads.jsonl"  #: the signed tree heads
HEAD_CONTEXT = b"fieldhub-audit-tree-head-v1\n"  #: prefix of the signed bytes (domain separation)
EXPORT_MAGIC = "fieldhub-audit-export-v1"
EMPTY_ROOT = hashlib.sha256(b"").digest()
ENTRY_KEYS = ("seq", "ts", "actor", "action", "subject", "detail", "prev")

Signer = Callable[[bytes], bytes]


# ------------------------------------------------------------------ RFC 6962 hashing and proofs
def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1)."""
    k = 1
    while k << 1 < n:
        k <<= 1
    return k


def tree_root(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over leaf *hashes* (RFC 6962 §2.1)."""
    return _Compact.of(leaves).root()


def _mth(leaves: Sequence[bytes]) -> bytes:
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = _split(n)
    return node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 6962 §2.1.1, over leaf hashes."""
    if not 0 <= index < len(leaves):
        raise ValueError(f"index {index} outside a tree of {len(leaves)}")

    def path(m: int, d: Sequence[bytes]) -> list[bytes]:
        n = len(d)
        if n == 1:
            return []
        k = _split(n)
        if m < k:
            return path(m, d[:k]) + [_mth(d[k:])]
        return path(m - k, d[k:]) + [_mth(d[:k])]
    return path(index, leaves)


def consistency_proof(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) of RFC 6962 §2.1.2, over leaf hashes."""
    n = len(leaves)
    if not 0 < m <= n:
        raise ValueError(f"no consistency proof from size {m} to {n}")

    def subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
        n = len(d)
        if m == n:
            return [] if b else [_mth(d)]
        k = _split(n)
        if m <= k:
            return subproof(m, d[:k], b) + [_mth(d[k:])]
        return subproof(m - k, d[k:], False) + [_mth(d[:k])]
    return subproof(m, leaves, True)


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2: does ``leaf`` (a leaf hash) sit at ``index`` of the tree ``root`` of ``size``?"""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(m: int, n: int, root_m: bytes, root_n: bytes, proof: Sequence[bytes]) -> bool:
    """RFC 9162 §2.1.4.2: is the tree of size ``n`` an append-only extension of the one of size ``m``?"""
    if not 0 < m <= n:
        return False
    if m == n:
        return not proof and root_m == root_n
    path = list(proof)
    if m & (m - 1) == 0:  # m is a power of two: the old root is the first node
        path.insert(0, root_m)
    if not path:
        return False
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == root_m and sr == root_n and sn == 0


@dataclass
class _Compact:
    """The roots of the perfect subtrees covering D[n], left to right: O(log n) appends and roots."""

    stack: list[tuple[int, bytes]] = field(default_factory=list)
    size: int = 0

    @classmethod
    def of(cls, leaves: Iterable[bytes]) -> _Compact:
        c = cls()
        for lh in leaves:
            c.add(lh)
        return c

    def add(self, lh: bytes) -> None:
        width, h = 1, lh
        while self.stack and self.stack[-1][0] == width:
            w, left = self.stack.pop()
            h, width = node_hash(left, h), width + w
        self.stack.append((width, h))
        self.size += 1

    def root(self) -> bytes:
        if not self.stack:
            return EMPTY_ROOT
        h = self.stack[-1][1]
        for _, left in reversed(self.stack[:-1]):
            h = node_hash(left, h)
        return h


# ------------------------------------------------------------------ signed tree heads
def head_message(size: int, root: bytes, ts: int) -> bytes:
    """The exact bytes a tree head's signature covers."""
    return HEAD_CONTEXT + orjson.dumps({"root": root.hex(), "size": size, "ts": ts},
                                       option=orjson.OPT_SORT_KEYS)


def make_head(size: int, root: bytes, ts: int, sign: Signer) -> dict[str, Any]:
    return {"size": size, "root": root.hex(), "ts": ts, "sig": sign(head_message(size, root, ts)).hex()}


def check_head_signature(head: dict[str, Any], public_key: bytes) -> bool:
    """Ed25519 signature of a head by the hub key ``public_key`` (32 raw bytes)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        msg = head_message(int(head["size"]), bytes.fromhex(head["root"]), int(head["ts"]))
        Ed25519PublicKey.from_public_bytes(public_key).verify(bytes.fromhex(head["sig"]), msg)
    except (InvalidSignature, KeyError, TypeError, ValueError):
        return False
    return True


# ------------------------------------------------------------------ the log
def canonical(entry: dict[str, Any]) -> bytes:
    return orjson.dumps(entry, option=orjson.OPT_SORT_KEYS, default=str)


class AuditLog:
    """Append-only audit log in ``data_dir``; ``sign`` makes a head every ``head_every`` entries or
    ``head_interval`` seconds (checked at each append and by ``sign_head``)."""

    def __init__(self, data_dir: Path, *, sign: Signer | None = None, head_every: int = 100,
                 head_interval: float = 300.0) -> None:
        self.path = Path(data_dir) / AUDIT_FILE
        self.heads_path = Path(data_dir) / HEADS_FILE
        self.sign, self.head_every, self.head_interval = sign, head_every, head_interval
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as exc:
            raise StorageError(f"audit log {self.path}: {exc.strerror or exc} / 审计日志无法打开") from None
        self._offset = 0
        self._tree = _Compact()
        self._last_head_size, self._last_head_mono = self._last_signed_size(), time.monotonic()

    def _last_signed_size(self) -> int:
        """The size of the newest head on file, so a new process does not re-sign what is signed."""
        try:
            with open(self.heads_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
                last = f.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
            return int(orjson.loads(last)["size"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def size(self) -> int:
        return self._tree.size

    def root(self) -> bytes:
        return self._tree.root()

    def _catch_up(self) -> None:
        """Under the lock: take in lines other processes appended; cut a torn (never fsynced) tail."""
        end = os.fstat(self._fd).st_size
        if end < self._offset:  # shrunk under us: start over, verify will say why
            self._offset, self._tree = 0, _Compact()
        if end == self._offset:
            return
        data = os.pread(self._fd, end - self._offset, self._offset)
        cut = data.rfind(b"\n") + 1
        for line in data[:cut].splitlines():
            self._tree.add(leaf_hash(line))
        self._offset += cut
        if cut < len(data):  # a line whose write never completed: it was never acknowledged
            os.ftruncate(self._fd, self._offset)

    def append(self, actor: str, action: str, subject: str = "", /, **detail: Any) -> dict[str, Any]:
        """Append one entry durably (fsynced before return); returns it."""
        return self.append_many([(actor, action, subject, detail)])[0]

    def append_many(self, items: Iterable[tuple[str, str, str, dict[str, Any]]]) -> list[dict[str, Any]]:
        """Append several entries with one write and one fsync."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            self._catch_up()
            out, buf = [], bytearray()
            for actor, action, subject, detail in items:
                entry = {"seq": self._tree.size, "ts": time.time_ns(), "actor": actor, "action": action,
                         "subject": subject, "detail": detail, "prev": self._tree.root().hex()}
                line = canonical(entry)
                self._tree.add(leaf_hash(line))
                buf += line + b"\n"
                out.append(entry)
            try:
                os.write(self._fd, bytes(buf))
                os.fsync(self._fd)
            except OSError as exc:
                self._offset, self._tree = 0, _Compact()  # re-read on the next append
                raise StorageError(f"audit log {self.path}: {exc.strerror or exc} / 审计日志写入失败") from None
            self._offset += len(buf)
            self._maybe_head()
            return out
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _maybe_head(self) -> None:
        due = (self._tree.size - self._last_head_size >= self.head_every
               or time.monotonic() - self._last_head_mono >= self.head_interval)
        if self.sign is not None and due and self._tree.size > self._last_head_size:
            self._write_head()

    def _write_head(self) -> dict[str, Any]:
        assert self.sign is not None
        head = make_head(self._tree.size, self._tree.root(), time.time_ns(), self.sign)
        fd = os.open(self.heads_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, canonical(head) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        self._last_head_size, self._last_head_mono = self._tree.size, time.monotonic()
        return head

    def sign_head(self) -> dict[str, Any] | None:
        """Sign a head over everything now in the file (at hub stop, on a timer); None without a signer."""
        if self.sign is None:
            return None
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            self._catch_up()
            return self._write_head()
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)


def hub_signer(data_dir: Path) -> Signer | None:
    """The hub key's signing function (``fieldhub keys init``), or None while the hub has no key:
    then the log is a hash chain without signed heads, and ``audit verify`` says so."""
    from fieldhub.core.keys import HUB_KEY_FILE, hub_signing_key

    if not (Path(data_dir) / HUB_KEY_FILE).exists():
        return None
    try:
        key = hub_signing_key(data_dir)
    except StorageError:
        return None
    sign: Signer = key.sign
    return sign


def record(data_dir: Path, actor: str, action: str, subject: str = "", /, **detail: Any) -> bool:
    """One line for a hook: append one entry to ``data_dir``'s audit log (signing a tree head with the
    hub key when one is due); False (never raises) on failure, so wiring the audit log into an
    existing action changes nothing else about it."""
    try:
        with AuditLog(Path(data_dir), sign=hub_signer(Path(data_dir))) as log:
            log.append(actor, action, subject, **detail)
    except (StorageError, OSError, ValueError):
        return False
    return True


def seal(data_dir: Path) -> bool:
    """Sign a tree head over everything in the log now (the hub does at a clean stop); False without
    a hub key or on failure."""
    sign = hub_signer(Path(data_dir))
    if sign is None:
        return False
    try:
        with AuditLog(Path(data_dir), sign=sign) as log:
            return log.sign_head() is not None
    except (StorageError, OSError, ValueError):
        return False


def config_summary(config: Any, components: Iterable[Any]) -> dict[str, Any]:
    """What a hub start records: the config file, the parts running, and a digest of every effective
    setting (file, environment and flags together), so a config change between starts shows."""
    sections = vars(config).get("_sections", {})
    blob = orjson.dumps(sections, default=str, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return {"config_file": str(getattr(config, "path", "") or ""), "components": [c.name for c in components],
            "config_sha256": hashlib.sha256(blob).hexdigest(), "data_dir": str(config.hub.data_dir)}


def operator() -> str:
    """The actor of a CLI action: ``cli:<user>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"


# ------------------------------------------------------------------ reading and verifying
@dataclass
class Problem:
    """The first thing wrong: the entry (seq, 0-based line index) and why."""

    index: int | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "reason": self.reason}


@dataclass
class Report:
    ok: bool
    entries: int
    root: str
    heads_checked: int
    problem: Problem | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "entries": self.entries, "root": self.root, "heads_checked": self.heads_checked,
                "first_bad": self.problem.as_dict() if self.problem else None}


def read_lines(path: Path) -> list[bytes]:
    """The entry lines of an audit file (a last line without newline is kept: verify reports it)."""
    return snapshot(path, None)[0]


def snapshot(path: Path, heads_path: Path | None) -> tuple[list[bytes], list[dict[str, Any]]]:
    """Entry lines (and heads) read under a shared lock, so an append in progress is never seen half
    written, nor a head newer than the entries read."""
    for attempt in range(2):
        try:
            with open(path, "rb") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_SH)
                data = f.read()
                heads = read_heads(heads_path) if heads_path is not None else []
            break
        except FileNotFoundError:
            heads = read_heads(heads_path) if heads_path is not None else []
            if not heads or attempt:  # heads but no file: it was created meanwhile, or deleted
                return [], heads
        except OSError as exc:
            raise StorageError(f"{path}: {exc.strerror or exc}") from None
    lines = data.split(b"\n")[:-1] + ([data.rsplit(b"\n", 1)[-1]] if not data.endswith(b"\n") and data else [])
    return lines, heads


def read_heads(path: Path) -> list[dict[str, Any]]:
    """Signed heads from a JSON-lines file or a JSON array (what ``audit heads --json`` prints)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StorageError(f"{path}: {exc.strerror or exc}") from None
    try:
        if data.lstrip().startswith(b"["):
            heads = orjson.loads(data)
        else:
            heads = [orjson.loads(line) for line in data.splitlines() if line.strip()]
    except orjson.JSONDecodeError as exc:
        raise StorageError(f"{path}: not signed tree heads ({exc}) / 不是签名树头文件") from None
    if not all(isinstance(h, dict) and {"size", "root", "ts", "sig"} <= h.keys() for h in heads):
        raise StorageError(f"{path}: every head needs size, root, ts and sig / 树头缺少字段")
    return list(heads)


def entries(lines: Iterable[bytes]) -> list[dict[str, Any]]:
    out = []
    for line in lines:
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            out.append({"seq": None, "action": "<unreadable>", "raw": line[:200].decode(errors="replace")})
    return out


def verify_lines(lines: Sequence[bytes], heads: Sequence[dict[str, Any]] = (),
                 public_key: bytes | None = None) -> Report:
    """Check an audit file's lines: each entry well formed, in sequence and chained to the tree before
    it; then every signed head: signature (when ``public_key`` is given), size within the file, and a
    consistency proof from the head to the file's tree. The first problem found is reported."""
    tree, leaves = _Compact(), []
    problem: Problem | None = None
    for i, line in enumerate(lines):
        try:
            e = orjson.loads(line)
            ok_shape = isinstance(e, dict) and set(e) == set(ENTRY_KEYS)
        except orjson.JSONDecodeError:
            e, ok_shape = None, False
        if not ok_shape:
            why = "not a whole entry (truncated or damaged line)" if not line.endswith(b"}") else \
                "not an audit entry (unreadable JSON or wrong fields)"
            problem = problem or Problem(i, why)
        elif e["seq"] != i:
            problem = problem or Problem(i, f"entry {i} carries seq {e['seq']}: an entry before it was "
                                            f"deleted or entries were reordered")
        elif e["prev"] != tree.root().hex():
            problem = problem or Problem(i - 1, f"entry {i} does not chain to the entries before it: "
                                            f"entry {i - 1} was edited, or entries were replaced")
        elif canonical(e) != line:
            problem = problem or Problem(i, f"entry {i} is not in canonical form: edited by hand")
        lh = leaf_hash(line)
        leaves.append(lh)
        tree.add(lh)
    n, root = tree.size, tree.root()
    checked, proven = 0, 0
    for h in sorted(heads, key=lambda h: (int(h.get("size", -1)), int(h.get("ts", 0)))):
        if problem:
            break
        checked += 1
        size = int(h.get("size", -1))
        if public_key is not None and not check_head_signature(h, public_key):
            problem = Problem(None, f"signed head of size {size} at ts {h.get('ts')}: bad signature for the "
                                    f"given hub key")
        elif size > n:
            problem = Problem(n, f"the file holds {n} entries but a signed head covers {size}: the tail "
                                 f"(entries {n}..{size - 1}) was truncated")
        elif size > 0:
            proof = consistency_proof(size, leaves)
            if not verify_consistency(size, n, bytes.fromhex(h["root"]), root, proof):
                problem = Problem(proven, f"no consistency proof from the signed head of size {size} "
                                  f"(ts {h.get('ts')}) to this file: one of entries {proven}..{size - 1} was "
                                  f"changed, removed or reordered, or the file was rewritten")
            proven = max(proven, size)
    return Report(problem is None, n, root.hex(), checked, problem)


def verify_dir(data_dir: Path, public_key: bytes | None = None) -> Report:
    d = Path(data_dir)
    return verify_lines(*snapshot(d / AUDIT_FILE, d / HEADS_FILE), public_key)


def export(data_dir: Path, out: Path, hub_id: str = "") -> dict[str, Any]:
    """Write the entries verbatim after a header line (hub id, size, root, the heads held here)."""
    d = Path(data_dir)
    lines, heads = snapshot(d / AUDIT_FILE, d / HEADS_FILE)
    header = {"format": EXPORT_MAGIC, "hub_id": hub_id, "size": len(lines),
              "root": tree_root([leaf_hash(x) for x in lines]).hex(), "heads": heads}
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(canonical(header) + b"\n")
        for line in lines:
            f.write(line + b"\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    return {k: header[k] for k in ("hub_id", "size", "root")} | {"heads": len(heads), "file": str(out)}


def read_export(path: Path) -> tuple[dict[str, Any], list[bytes]]:
    lines = read_lines(path)
    try:
        header = orjson.loads(lines[0]) if lines else None
    except orjson.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("format") != EXPORT_MAGIC:
        raise StorageError(f"{path}: not an audit export (made by `fieldhub audit export`) / 不是审计导出文件")
    return header, lines[1:]


def verify_export(path: Path, heads: Sequence[dict[str, Any]], public_key: bytes | None = None) -> Report:
    """The center's check: the export against heads received *earlier* from the hub (not the export's
    own), each proven consistent; each signature checked too when the hub's key is given (without it,
    the heads are trusted as the center's own record of what it received)."""
    _, lines = read_export(path)
    if not heads:
        raise StorageError("no signed heads to check the export against / 没有可用于核对的签名树头")
    return verify_lines(lines, heads, public_key)

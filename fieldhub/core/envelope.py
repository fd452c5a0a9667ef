"""The command envelope (JSON + Ed25519 on IP paths, compact binary + truncated HMAC on narrowband
paths) and the one verifier every command passes before it may run. Format: ``docs/commands.md``."""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import cbor2
import orjson

from fieldhub.core.errors import ValidationError
from fieldhub.core.keys import Issuer, KeyStore, key_id
from fieldhub.core.registry import AdminCode

VERSION = 1
SIG_DOMAIN = b"fieldhub-cmd-v1\n"  #: prefixed to the canonical bytes an Ed25519 signature covers
MAC_DOMAIN = b"FHC1"  #: prefixed to the compact bytes the HMAC covers
COMPACT_MAGIC = 0xC1  #: first byte of a compact envelope (version 1)
MAC_LEN = 8  #: bytes of HMAC-SHA256 kept on narrowband paths
BEIDOU_L3_BYTES, SMS_BYTES = 78, 140

#: Actions by compact code. Append only: a code, once given, keeps its meaning.
ACTIONS = ("ptz.preset", "ptz.move", "ptz.stop", "drone.rtl", "drone.land", "drone.arm", "drone.disarm",
           "drone.mode", "drone.goto", "bd.send", "tiantong.send", "dmr.text", "siren.on", "siren.off",
           "device.cmd")
#: what an ``operator`` key may do; a ``commander`` may do anything. Unlisted actions and
#: broadcasts (``kind:…@prefix`` targets) are the commander's.
OPERATOR_ACTIONS = frozenset({"ptz.preset", "ptz.move", "ptz.stop", "drone.rtl", "drone.land", "bd.send",
                              "tiantong.send", "dmr.text", "siren.off"})
REASONS = ("malformed", "unsigned", "bad_signature", "unknown_key", "revoked_key", "expired", "replayed",
           "issued_at_window", "out_of_area", "unknown_target", "role")

_ACTION_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}(\.[a-z][a-z0-9_]{0,31})?$")
_BROADCAST_RE = re.compile(r"^kind:([a-z][a-z0-9_]{0,31})@(\d{2,12})$")
_PREFIX_LEN = {"province": 2, "city": 4, "county": 6, "township": 9, "village": 12}


@dataclass(frozen=True)
class Envelope:
    """One command. Times are whole seconds UTC; ``auth`` is the signature or MAC (b"" = unsigned)."""

    id: str
    key: str  #: the issuer's key name
    admin_code: str  #: the issuer's 12-digit admin code
    targets: tuple[str, ...]  #: device ids, or ``kind:KIND@ADMINPREFIX`` broadcasts
    action: str
    args: dict[str, Any]
    issued_at: int
    expires_at: int
    counter: int
    unit: str = ""
    person: str = ""
    alg: str = "ed25519"  #: "ed25519" (IP) or "hmac" (narrowband, compact form)
    auth: bytes = field(default=b"", repr=False)
    #: the compact bytes the HMAC covers; set only by ``from_compact``, which derives every
    #: other field from them (a JSON envelope can never pass as HMAC-authenticated)
    compact_body: bytes = field(default=b"", repr=False)

    @classmethod
    def new(cls, *, key: str, admin_code: str, targets: Sequence[str], action: str,
            args: dict[str, Any] | None = None, counter: int, ttl_s: int = 600, unit: str = "",
            person: str = "", now: float | None = None) -> Envelope:
        issued = int(now if now is not None else time.time())
        return cls(id=uuid.uuid4().hex, key=key, admin_code=admin_code, targets=tuple(targets),
                   action=action, args=dict(args or {}), issued_at=issued, expires_at=issued + ttl_s,
                   counter=counter, unit=unit, person=person)

    # ------------------------------------------------------------------ IP form
    def body(self) -> dict[str, Any]:
        """Everything the signature covers."""
        return {"v": VERSION, "id": self.id, "issuer": {"key": self.key, "unit": self.unit, "person": self.person},
                "admin_code": self.admin_code, "targets": list(self.targets), "action": self.action,
                "args": self.args, "issued_at": self.issued_at, "expires_at": self.expires_at,
                "counter": self.counter}

    def signed_bytes(self) -> bytes:
        return SIG_DOMAIN + orjson.dumps(self.body(), option=orjson.OPT_SORT_KEYS)

    def sign(self, private_key: Any) -> Envelope:
        """Signed with a ``cryptography`` Ed25519PrivateKey (e.g. ``keys.hub_signing_key``)."""
        return replace(self, alg="ed25519", auth=private_key.sign(self.signed_bytes()))

    def to_json(self) -> bytes:
        doc = self.body()
        if self.auth:
            doc["sig"] = {"alg": self.alg, "value": self.auth.hex()}
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, data: bytes | str) -> Envelope:
        """Parse the IP form; ValidationError (reason ``malformed``) on anything off-format."""
        try:
            doc = orjson.loads(data)
            if not isinstance(doc, dict) or doc.get("v") != VERSION:
                raise ValueError(f"not a version-{VERSION} envelope")
            issuer = doc["issuer"]
            sig = doc.get("sig") or {}
            env = cls(id=_s(doc["id"]), key=_s(issuer["key"]), unit=_s(issuer.get("unit", "")),
                      person=_s(issuer.get("person", "")), admin_code=_s(doc["admin_code"]),
                      targets=tuple(_s(t) for t in doc["targets"]), action=_s(doc["action"]),
                      args=dict(doc.get("args") or {}), issued_at=_i(doc["issued_at"]),
                      expires_at=_i(doc["expires_at"]), counter=_i(doc["counter"]),
                      alg=_s(sig.get("alg", "ed25519")), auth=bytes.fromhex(_s(sig.get("value", ""))))
        except (ValueError, KeyError, TypeError, AttributeError, orjson.JSONDecodeError) as exc:
            raise ValidationError(f"malformed command envelope: {exc} / 指令格式错误") from None
        return env

    # ------------------------------------------------------------------ narrowband form
    def to_compact(self, hmac_key: bytes) -> bytes:
        """The compact binary form with its truncated HMAC (layout in ``docs/commands.md``)."""
        try:
            code = ACTIONS.index(self.action) + 1
            action = bytes([code])
        except ValueError:
            action = b"\x00" + _lp(self.action.encode())
        if not 0 <= self.counter < 2**32 or not 0 <= self.issued_at < 2**32:
            raise ValidationError("counter and issued-at must fit 32 bits in the compact form")
        ttl = self.expires_at - self.issued_at
        if not 0 < ttl < 2**24:
            raise ValidationError("expiry must be 1 s to 194 days after issue in the compact form")
        if not 1 <= len(self.targets) <= 255:
            raise ValidationError("1 to 255 targets")
        args = cbor2.dumps(self.args, canonical=True) if self.args else b""
        out = bytearray([COMPACT_MAGIC])
        out += key_id(self.key)
        out += int(AdminCode.parse(self.admin_code).code).to_bytes(5, "big")
        out += struct.pack(">II", self.counter, self.issued_at) + ttl.to_bytes(3, "big")
        out += bytes([len(self.targets)]) + b"".join(_lp(t.encode()) for t in self.targets)
        out += action + _lp(args) + _lp(self.person.encode())
        return bytes(out) + compact_mac(hmac_key, bytes(out))

    @classmethod
    def from_compact(cls, data: bytes, store: KeyStore) -> Envelope:
        """Parse the compact form; the issuer's name and unit come from ``store`` by key id (an
        unknown key id gives an envelope whose key is ``kid:HEX``, which the verifier refuses)."""
        try:
            if len(data) < 1 + 4 + 5 + 11 + 1 + MAC_LEN or data[0] != COMPACT_MAGIC:
                raise ValueError("not a version-1 compact envelope")
            body, mac = data[:-MAC_LEN], data[-MAC_LEN:]
            kid = body[1:5]
            admin = f"{int.from_bytes(body[5:10], 'big'):012d}"
            counter, issued = struct.unpack(">II", body[10:18])
            ttl = int.from_bytes(body[18:21], "big")
            pos = 21
            n = body[pos]
            pos += 1
            targets = []
            for _ in range(n):
                raw, pos = _take(body, pos)
                targets.append(raw.decode())
            code = body[pos]
            pos += 1
            if code:
                action = ACTIONS[code - 1]
            else:
                raw, pos = _take(body, pos)
                action = raw.decode()
            raw_args, pos = _take(body, pos)
            args = cbor2.loads(raw_args) if raw_args else {}
            raw_person, pos = _take(body, pos)
            if pos != len(body) or not isinstance(args, dict):
                raise ValueError("trailing bytes")
        except (ValueError, IndexError, struct.error, cbor2.CBORDecodeError, UnicodeDecodeError) as exc:
            raise ValidationError(f"malformed compact command: {exc} / 短报文指令格式错误") from None
        issuer = store.by_key_id(kid)
        name = issuer.name if issuer else "kid:" + kid.hex()
        return cls(id=f"{name}#{counter}", key=name, admin_code=admin, targets=tuple(targets), action=action,
                   args=args, issued_at=issued, expires_at=issued + ttl, counter=counter,
                   unit=issuer.unit if issuer else "", person=raw_person.decode(errors="replace"),
                   alg="hmac", auth=mac, compact_body=body)


def compact_mac(hmac_key: bytes, body: bytes) -> bytes:
    return hmac.new(hmac_key, MAC_DOMAIN + body, hashlib.sha256).digest()[:MAC_LEN]


def _lp(raw: bytes) -> bytes:
    if len(raw) > 255:
        raise ValidationError("a field of a compact command is longer than 255 bytes")
    return bytes([len(raw)]) + raw


def _take(buf: bytes, pos: int) -> tuple[bytes, int]:
    n = buf[pos]
    end = pos + 1 + n
    if end > len(buf):
        raise ValueError("field runs past the end")
    return buf[pos + 1:end], end


def _s(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {type(v).__name__}")
    return v


def _i(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError(f"expected an integer, got {type(v).__name__}")
    return v


# ---------------------------------------------------------------------- authority
def within(issuer_code: str, code_or_prefix: str) -> bool:
    """True if every device under ``code_or_prefix`` (a 12-digit code, or a 2-12 digit prefix)
    lies inside the issuer's area: the province all its codes, a county its townships' and
    villages', never a neighbour's."""
    own = AdminCode.parse(issuer_code)
    prefix = own.code[:_PREFIX_LEN[own.level]]
    if len(code_or_prefix) == 12:
        code = AdminCode.parse(code_or_prefix)
        return code.code.startswith(prefix)
    return len(code_or_prefix) >= len(prefix) and code_or_prefix.startswith(prefix)


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str  #: "accepted" or one of REASONS
    detail: str
    envelope: Envelope | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "reason": self.reason, "detail": self.detail,
                "id": self.envelope.id if self.envelope else None,
                "issuer": self.envelope.key if self.envelope else None}


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class Verifier:
    """Accepts or rejects an envelope against the key store, with the reason, counting each.

    An accepted envelope's id and counter are committed to ``keys.db`` before ``verify``
    returns, so a replay is refused even after a crash or restart.
    ``resolve(device_id)`` gives a target device's admin code (None: unknown device)."""

    def __init__(self, store: KeyStore, resolve: Callable[[str], str | None], *,
                 future_skew_s: int = 300, max_age_s: int = 86_400,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.resolve, self.clock = store, resolve, clock
        self.future_skew_s, self.max_age_s = future_skew_s, max_age_s

    def verify(self, env: Envelope) -> Verdict:
        try:
            self._check(env)
        except _Reject as rej:
            self._count(rej.reason)
            return Verdict(False, rej.reason, rej.detail, env)
        return Verdict(True, "accepted", "", env)

    def verify_json(self, data: bytes | str) -> Verdict:
        try:
            env = Envelope.from_json(data)
        except ValidationError as exc:
            self._count("malformed")
            return Verdict(False, "malformed", str(exc))
        return self.verify(env)

    def verify_compact(self, data: bytes) -> Verdict:
        try:
            env = Envelope.from_compact(data, self.store)
        except ValidationError as exc:
            self._count("malformed")
            return Verdict(False, "malformed", str(exc))
        return self.verify(env)

    # ------------------------------------------------------------------ the checks, in order
    def _check(self, env: Envelope) -> None:
        if not env.auth:
            raise _Reject("unsigned", "the command carries no signature / 指令未签名")
        issuer = self.store.get(env.key)
        if issuer is None:
            raise _Reject("unknown_key", f"no key named {env.key!r} / 未知密钥")
        if issuer.revoked:
            raise _Reject("revoked_key", f"key {env.key!r} is revoked / 密钥已吊销")
        self._authenticate(env, issuer)
        now = int(self.clock())
        if env.expires_at <= env.issued_at:
            raise _Reject("malformed", "expires-at is not after issued-at / 失效时间早于签发时间")
        if now >= env.expires_at:
            raise _Reject("expired", f"expired {now - env.expires_at} s ago / 指令已过期")
        if env.issued_at > now + self.future_skew_s or env.issued_at < now - self.max_age_s:
            raise _Reject("issued_at_window", f"issued-at is {env.issued_at - now:+d} s from now; allowed "
                                              f"-{self.max_age_s}..+{self.future_skew_s} s / 签发时间超出允许范围")
        self._authorise(env, issuer)
        self._claim(env)

    def _authenticate(self, env: Envelope, issuer: Issuer) -> None:
        if env.alg != issuer.kind:
            raise _Reject("bad_signature", f"key {issuer.name!r} is a {issuer.kind} key, the command "
                                           f"carries {env.alg} / 签名类型与密钥不符")
        if issuer.kind == "ed25519":
            from cryptography.exceptions import InvalidSignature
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

            try:
                Ed25519PublicKey.from_public_bytes(issuer.material).verify(env.auth, env.signed_bytes())
            except InvalidSignature:
                raise _Reject("bad_signature", "Ed25519 signature does not verify / 签名验证失败") from None
        else:
            if not env.compact_body or not hmac.compare_digest(compact_mac(issuer.material, env.compact_body),
                                                               env.auth):
                raise _Reject("bad_signature", "HMAC does not verify / 消息认证码验证失败")

    def _authorise(self, env: Envelope, issuer: Issuer) -> None:
        if env.admin_code != issuer.admin_code:
            raise _Reject("out_of_area", f"command claims admin code {env.admin_code}, key {issuer.name!r} "
                                         f"holds {issuer.admin_code} / 区划代码与密钥不符")
        if not _ACTION_RE.fullmatch(env.action) or not env.targets:
            raise _Reject("malformed", "action or targets missing / 缺少动作或目标")
        broadcast = False
        for target in env.targets:
            m = _BROADCAST_RE.fullmatch(target)
            if m:
                broadcast, code = True, m.group(2)
            else:
                found = self.resolve(target)
                if found is None:
                    raise _Reject("unknown_target", f"no device {target!r} / 设备不存在")
                code = found
            if not within(issuer.admin_code, code):
                raise _Reject("out_of_area", f"target {target} ({code}) lies outside {issuer.name}'s area "
                                             f"{issuer.admin_code} / 目标不在签发方辖区内")
        if issuer.role != "commander" and (broadcast or env.action not in OPERATOR_ACTIONS):
            what = "broadcast" if broadcast else env.action
            raise _Reject("role", f"role {issuer.role} may not {what} / 角色 {issuer.role} 无权执行此动作")

    def _claim(self, env: Envelope) -> None:
        """Persist id and counter before the command may run: a replay is refused from here on."""
        now = int(self.clock())
        with self.store.transaction() as c:
            if c.execute("SELECT 1 FROM seen WHERE id=?", (env.id,)).fetchone():
                raise _Reject("replayed", f"command id {env.id} was already received / 指令重复（编号已见）")
            row = c.execute("SELECT last FROM counters WHERE name=?", (env.key,)).fetchone()
            if row is not None and env.counter <= row[0]:
                raise _Reject("replayed", f"counter {env.counter} is not above {env.key}'s last {row[0]} "
                                          f"/ 计数器未递增（疑似重放）")
            c.execute("INSERT OR REPLACE INTO counters (name, last) VALUES (?, ?)", (env.key, env.counter))
            c.execute("INSERT INTO seen (id, issuer, until) VALUES (?, ?, ?)", (env.id, env.key, env.expires_at))
            c.execute("DELETE FROM seen WHERE until < ?", (now - self.max_age_s,))
            c.execute("INSERT INTO verdicts (reason, n) VALUES ('accepted', 1) "
                      "ON CONFLICT(reason) DO UPDATE SET n = n + 1")

    def _count(self, reason: str) -> None:
        with self.store.transaction() as c:
            c.execute("INSERT INTO verdicts (reason, n) VALUES (?, 1) ON CONFLICT(reason) DO UPDATE SET n = n + 1",
                      (reason,))

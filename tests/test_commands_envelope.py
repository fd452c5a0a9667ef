"""The command envelope and the verifier: every rejection with its reason, the narrowband byte
budget, and the attacks (replay, counter rollback across a killed process, a neighbour county's key)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fieldhub.core.envelope import BEIDOU_L3_BYTES, SMS_BYTES, Envelope, Verifier, within
from fieldhub.core.keys import KeyStore
from fieldhub.core.registry import Device, Registry

ROOT = Path(__file__).resolve().parents[1]
HMAC_KEY = bytes.fromhex("8f1e2d3c4b5a69788796a5b4c3d2e1f0")
# 咸阳市 610400; 渭城区 610404 and its neighbour 秦都区 610402
DEVICES = [("ptz-wc01", "ptz", "610404001001"), ("siren-wc02", "siren", "610404002003"),
           ("drone-wc03", "drone", "610404000000"), ("ptz-qd01", "ptz", "610402001001")]
ISSUERS = [("weicheng", "610404000000", "commander"), ("wc-op", "610404000000", "operator"),
           ("xianyang", "610400000000", "commander"), ("shaanxi", "610000000000", "commander"),
           ("qindu", "610402000000", "commander")]


class World:
    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir
        self.registry = Registry(data_dir / "registry.db")
        for dev_id, kind, code in DEVICES:
            self.registry.add(Device(id=dev_id, kind=kind, admin_code=code))
        self.store = KeyStore(data_dir)
        self.priv: dict[str, Any] = {}
        for name, code, role in ISSUERS:
            self.priv[name] = Ed25519PrivateKey.generate()
            pub = self.priv[name].public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            self.store.add(name, kind="ed25519", material=pub, admin_code=code, role=role)
        self.store.add("center-bd", kind="hmac", material=HMAC_KEY, admin_code="610000000000", role="commander")
        self.verifier = self.make_verifier()
        self.counter = 100

    def make_verifier(self) -> Verifier:
        return Verifier(self.store, lambda d: (dev.admin_code if (dev := self.registry.get(d)) else None))

    def env(self, key: str = "weicheng", *, targets: tuple[str, ...] = ("ptz-wc01",), action: str = "ptz.preset",
            args: dict[str, Any] | None = None, counter: int | None = None, **kw: Any) -> Envelope:
        self.counter += 1
        code = dict((n, c) for n, c, _ in ISSUERS).get(key, "610000000000")
        return Envelope.new(key=key, admin_code=kw.pop("admin_code", code), targets=targets, action=action,
                            args={"preset": 3} if args is None else args,
                            counter=self.counter if counter is None else counter, **kw)

    def signed(self, key: str = "weicheng", **kw: Any) -> Envelope:
        return self.env(key, **kw).sign(self.priv[key])


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    yield w
    w.store.close()
    w.registry.close()


def _reason(world: World, env: Envelope) -> str:
    verdict = world.verifier.verify_json(env.to_json())  # always through the wire form
    return verdict.reason


def test_accepted_and_counted(world: World) -> None:
    assert _reason(world, world.signed()) == "accepted"
    assert _reason(world, world.signed("xianyang")) == "accepted"  # the city commands its county's device
    assert _reason(world, world.signed("shaanxi", targets=("ptz-qd01",))) == "accepted"  # the province, all
    assert world.store.verdict_counts() == {"accepted": 3}


def test_each_rejection_has_its_reason(world: World) -> None:
    now = int(time.time())
    cases = {
        "unsigned": world.env(),
        "bad_signature": _tampered(world),
        "unknown_key": world.env("nobody").sign(Ed25519PrivateKey.generate()),
        "expired": world.signed(now=now - 700, ttl_s=600),
        "issued_at_window": world.signed(now=now + 3600),
        "unknown_target": world.signed(targets=("ptz-nowhere",)),
        "role": world.signed("wc-op", action="drone.arm", targets=("drone-wc03",), args={}),
    }
    for reason, env in cases.items():
        verdict = world.verifier.verify_json(env.to_json())
        assert (verdict.reason, verdict.accepted) == (reason, False), (reason, verdict)
        assert verdict.detail
    # signed by a key other than the one named
    forged = world.env("weicheng").sign(world.priv["qindu"])
    assert _reason(world, forged) == "bad_signature"
    # too old to be in the window though not yet expired (a 3-day expiry issued 2 days ago)
    assert _reason(world, world.signed(now=now - 2 * 86400, ttl_s=3 * 86400)) == "issued_at_window"
    world.store.revoke("weicheng")
    assert _reason(world, world.signed()) == "revoked_key"
    counts = world.store.verdict_counts()
    assert counts["bad_signature"] == 2 and counts["issued_at_window"] == 2 and counts["revoked_key"] == 1
    assert "accepted" not in counts
    assert world.verifier.verify_json(b'{"v":1,"id":').reason == "malformed"


def _tampered(world: World) -> Envelope:
    env = world.signed()
    doc = env.to_json().replace(b'"preset":3', b'"preset":9')
    return Envelope.from_json(doc)


def test_operator_role_limits(world: World) -> None:
    assert _reason(world, world.signed("wc-op")) == "accepted"  # PTZ: an operator may
    assert _reason(world, world.signed("wc-op", action="drone.rtl", targets=("drone-wc03",), args={})) == "accepted"
    bcast = world.signed("wc-op", action="siren.off", targets=("kind:siren@610404",), args={})
    assert _reason(world, bcast) == "role"  # a broadcast is the commander's
    assert _reason(world, world.signed(action="siren.on", targets=("kind:siren@610404",),
                                       args={"duration_s": 300})) == "accepted"


def test_attack_replayed_envelope(world: World) -> None:
    env = world.signed()
    assert world.verifier.verify_json(env.to_json()).accepted
    again = world.verifier.verify_json(env.to_json())
    assert (again.accepted, again.reason) == (False, "replayed") and "already received" in again.detail


def test_attack_neighbour_county(world: World) -> None:
    # 秦都区's key commanding 渭城区's camera, and the reverse
    assert _reason(world, world.signed("qindu", targets=("ptz-wc01",))) == "out_of_area"
    assert _reason(world, world.signed("weicheng", targets=("ptz-qd01",))) == "out_of_area"
    # a broadcast wider than the issuer's county, or into the neighbour's
    assert _reason(world, world.signed(action="siren.on", targets=("kind:siren@6104",))) == "out_of_area"
    assert _reason(world, world.signed(action="siren.on", targets=("kind:siren@610402",))) == "out_of_area"
    # a county key claiming the province's code in a validly signed envelope
    assert _reason(world, world.signed(targets=("ptz-qd01",), admin_code="610000000000")) == "out_of_area"
    # one bad target spoils the command
    assert _reason(world, world.signed("qindu", targets=("ptz-qd01", "ptz-wc01"))) == "out_of_area"
    assert _reason(world, world.signed("qindu", targets=("ptz-qd01",))) == "accepted"


def test_within_five_levels() -> None:
    assert within("610000000000", "650102001001") is False
    assert within("610000000000", "610402001001") and within("610400000000", "610404002003")
    assert within("610404001000", "610404001001") and not within("610404001000", "610404002001")
    assert within("610404001001", "610404001001") and not within("610404001001", "610404001002")
    assert within("610404000000", "610404") and not within("610404000000", "6104")


_KILLED_HELPER = """
import os, signal, sys
from fieldhub.core.envelope import Verifier
from fieldhub.core.keys import KeyStore
from fieldhub.core.registry import Registry
reg = Registry(sys.argv[1] + "/registry.db")
v = Verifier(KeyStore(sys.argv[1]), lambda d: (x.admin_code if (x := reg.get(d)) else None))
verdict = v.verify_json(open(sys.argv[2], "rb").read())
print(verdict.reason, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # the hub dies before executing (or closing anything)
"""


def _in_process(world: World, env: Envelope) -> subprocess.CompletedProcess:
    path = world.dir / f"env-{env.id}.json"
    path.write_bytes(env.to_json())
    return subprocess.run([sys.executable, "-c", _KILLED_HELPER, str(world.dir), str(path)], capture_output=True,
                          text=True, timeout=60, cwd=str(ROOT), env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_attack_counter_rollback_after_hub_restart(world: World) -> None:
    first = world.signed(counter=500)
    proc = _in_process(world, first)
    assert proc.returncode == -9 and proc.stdout.strip() == "accepted", proc.stderr
    # a new hub process: the same envelope again, then a fresh id with an older counter
    assert _in_process(world, first).stdout.strip() == "replayed"
    assert _in_process(world, world.signed(counter=499)).stdout.strip() == "replayed"
    assert _in_process(world, world.signed(counter=500)).stdout.strip() == "replayed"
    assert _in_process(world, world.signed(counter=501)).stdout.strip() == "accepted"
    assert world.store.last_counter("weicheng") == 501


# ---------------------------------------------------------------------- narrowband
def test_compact_fits_beidou_level3_and_one_sms(world: World) -> None:
    cases = [
        world.env("center-bd", action="siren.on", targets=("kind:siren@610404",), args={"duration_s": 300},
                  person="李建国"),
        world.env("center-bd", action="ptz.preset", targets=("ptz-wc01",), args={"preset": 3}),
        world.env("center-bd", action="drone.goto", targets=("drone-wc03",),
                  args={"lat": 34.3721, "lon": 108.7264, "alt": 120}),
    ]
    for env in cases:
        wire = env.to_compact(HMAC_KEY)
        assert len(wire) <= BEIDOU_L3_BYTES <= SMS_BYTES, (env.action, len(wire))
        verdict = world.verifier.verify_compact(wire)
        assert verdict.accepted, verdict
        got = verdict.envelope
        assert got is not None and (got.key, got.action, got.args, got.targets, got.counter) == \
            ("center-bd", env.action, env.args, env.targets, env.counter)
    # the figures docs/commands.md gives
    assert [len(e.to_compact(HMAC_KEY)) for e in cases] == [75, 51, 77]


def test_compact_rejections(world: World) -> None:
    wire = world.env("center-bd").to_compact(HMAC_KEY)
    flipped = bytearray(wire)
    flipped[12] ^= 0x01  # the counter
    assert world.verifier.verify_compact(bytes(flipped)).reason == "bad_signature"
    wrong_key = world.env("center-bd").to_compact(bytes(16))
    assert world.verifier.verify_compact(wrong_key).reason == "bad_signature"
    assert world.verifier.verify_compact(wire).accepted
    assert world.verifier.verify_compact(wire).reason == "replayed"
    assert world.verifier.verify_compact(world.env("nobody").to_compact(HMAC_KEY)).reason == "unknown_key"
    assert world.verifier.verify_compact(wire[:20]).reason == "malformed"
    # an HMAC issuer's name on a JSON envelope can never pass: JSON carries no compact body
    forged = Envelope.from_json(world.env("center-bd").to_json())
    forged = Envelope(**{**forged.__dict__, "alg": "hmac", "auth": wire[-8:]})
    assert world.verifier.verify_json(forged.to_json()).reason == "bad_signature"

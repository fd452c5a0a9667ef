"""The audit log: RFC 6962 hashing and proofs, durable appends from several processes, signed heads,
and `fieldhub audit verify` catching an edited, deleted, reordered, truncated or rewritten log."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fieldhub.core import audit
from tests.conftest import ROOT, run_cli


def _key() -> tuple[Ed25519PrivateKey, str]:
    k = Ed25519PrivateKey.generate()
    return k, k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def _fill(data_dir: Path, n: int, key: Ed25519PrivateKey, every: int = 5) -> None:
    with audit.AuditLog(data_dir, sign=key.sign, head_every=every) as log:
        for i in range(n):
            log.append("cli:op", "ptz.preset", f"ptz-{i % 3}", preset=i)


def _verify(data_dir: Path, pub: str) -> tuple[int, dict]:
    p = run_cli("audit", "verify", "--data-dir", str(data_dir), "--public-key", pub, "--json")
    return p.returncode, json.loads(p.stdout)


def _lines(data_dir: Path) -> list[bytes]:
    return (data_dir / audit.AUDIT_FILE).read_bytes().splitlines()


def _write(data_dir: Path, lines: list[bytes]) -> None:
    (data_dir / audit.AUDIT_FILE).write_bytes(b"".join(x + b"\n" for x in lines))


# ------------------------------------------------------------------ RFC 6962
def test_rfc6962_hashing_known_values():
    # the Certificate Transparency reference values: empty tree, empty leaf
    assert audit.tree_root([]).hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert audit.leaf_hash(b"").hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    a, b = audit.leaf_hash(b"a"), audit.leaf_hash(b"b")
    assert audit.tree_root([a, b]) == hashlib.sha256(b"\x01" + a + b).digest()


@pytest.mark.parametrize("n", list(range(1, 34)))
def test_proofs_verify_and_reject(n):
    leaves = [audit.leaf_hash(b"e%d" % i) for i in range(n)]
    root = audit.tree_root(leaves)
    assert root == audit._mth(leaves)
    for i in range(n):
        proof = audit.inclusion_proof(i, leaves)
        assert audit.verify_inclusion(i, n, leaves[i], proof, root)
        assert not audit.verify_inclusion(i, n, audit.leaf_hash(b"x"), proof, root)
    for m in range(1, n + 1):
        root_m = audit.tree_root(leaves[:m])
        proof = audit.consistency_proof(m, leaves)
        assert audit.verify_consistency(m, n, root_m, root, proof)
        if m < n:  # a different old tree does not fit
            bad_old = audit.tree_root([audit.leaf_hash(b"x")] + leaves[1:m])
            assert not audit.verify_consistency(m, n, bad_old, root, proof)


# ------------------------------------------------------------------ appends
def test_appends_from_several_processes_all_land_in_one_tree(data_dir):
    code = ("import sys; from pathlib import Path; from fieldhub.core import audit\n"
            "log = audit.AuditLog(Path(sys.argv[1]))\n"
            "for i in range(200): log.append('p' + sys.argv[2], 'x', str(i))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(data_dir), str(p)], env=env) for p in range(4)]
    assert [p.wait(60) for p in procs] == [0] * 4
    report = audit.verify_dir(data_dir)
    assert report.ok, report.problem
    assert report.entries == 800
    seqs = [orjson.loads(x)["seq"] for x in _lines(data_dir)]
    assert seqs == list(range(800))


def test_torn_tail_of_an_unacknowledged_write_is_cut_on_next_append(data_dir):
    key, pub = _key()
    _fill(data_dir, 3, key)
    with open(data_dir / audit.AUDIT_FILE, "ab") as f:
        f.write(b'{"action":"half')  # power cut in the middle of a write: never fsynced nor returned
    assert audit.verify_dir(data_dir).problem.index == 3
    assert audit.record(data_dir, "hub", "hub.start", "hub-1")
    rc, out = _verify(data_dir, pub)
    assert rc == 0 and out["entries"] == 4


def test_heads_signed_every_n_and_on_demand(data_dir):
    key, pub = _key()
    _fill(data_dir, 12, key, every=5)
    heads = audit.read_heads(data_dir / audit.HEADS_FILE)
    assert [h["size"] for h in heads] == [5, 10]
    with audit.AuditLog(data_dir, sign=key.sign) as log:
        assert log.sign_head()["size"] == 12
    assert all(audit.check_head_signature(h, bytes.fromhex(pub)) for h in audit.read_heads(data_dir / audit.HEADS_FILE))
    rc, out = _verify(data_dir, pub)
    assert (rc, out["ok"], out["entries"], out["heads_checked"]) == (0, True, 12, 3)


# ------------------------------------------------------------------ tampering
def test_verify_catches_an_edited_entry(data_dir):
    key, pub = _key()
    _fill(data_dir, 12, key)
    lines = _lines(data_dir)
    lines[6] = lines[6].replace(b'"preset":6', b'"preset":7')
    _write(data_dir, lines)
    rc, out = _verify(data_dir, pub)
    assert rc == 1 and out["first_bad"]["index"] == 6 and "edited" in out["first_bad"]["reason"]
    p = run_cli("audit", "verify", "--data-dir", str(data_dir))
    assert p.returncode == 1 and "entry 6" in p.stderr and "Traceback" not in p.stderr


def test_verify_catches_an_edit_of_the_last_entry_by_the_signed_head(data_dir):
    key, pub = _key()
    _fill(data_dir, 10, key)  # heads at 5 and 10: nothing follows entry 9 to chain it
    lines = _lines(data_dir)
    lines[9] = lines[9].replace(b'"preset":9', b'"preset":8')
    _write(data_dir, lines)
    rc, out = _verify(data_dir, pub)
    assert rc == 1 and out["first_bad"]["index"] == 5 and "consistency proof" in out["first_bad"]["reason"]


def test_verify_catches_a_deleted_entry(data_dir):
    key, pub = _key()
    _fill(data_dir, 12, key)
    lines = _lines(data_dir)
    del lines[4]
    _write(data_dir, lines)
    rc, out = _verify(data_dir, pub)
    assert rc == 1 and out["first_bad"]["index"] == 4 and "deleted" in out["first_bad"]["reason"]


def test_verify_catches_a_reordered_pair(data_dir):
    key, pub = _key()
    _fill(data_dir, 12, key)
    lines = _lines(data_dir)
    lines[7], lines[8] = lines[8], lines[7]
    _write(data_dir, lines)
    rc, out = _verify(data_dir, pub)
    assert rc == 1 and out["first_bad"]["index"] == 7 and "reordered" in out["first_bad"]["reason"]


def test_verify_catches_a_truncated_tail(data_dir):
    key, pub = _key()
    _fill(data_dir, 10, key)
    _write(data_dir, _lines(data_dir)[:8])
    rc, out = _verify(data_dir, pub)
    assert rc == 1 and out["first_bad"]["index"] == 8 and "truncated" in out["first_bad"]["reason"]


def test_verify_catches_a_forged_head_signature(data_dir):
    key, pub = _key()
    _fill(data_dir, 10, key)
    other, other_pub = _key()
    rc, out = _verify(data_dir, other_pub)
    assert rc == 1 and "bad signature" in out["first_bad"]["reason"]


def test_center_catches_a_wholly_rewritten_and_resigned_log(data_dir, tmp_path):
    """The hub (holding its key) rewrites history and re-signs every head: its own verify is happy,
    the center's earlier heads are not."""
    key, pub = _key()
    _fill(data_dir, 10, key)
    center_heads = tmp_path / "heads.json"
    p = run_cli("audit", "heads", "--data-dir", str(data_dir), "--json", check=True)
    center_heads.write_text(p.stdout)  # what the center received before
    honest = tmp_path / "honest.jsonl"
    run_cli("audit", "export", "--data-dir", str(data_dir), "--out", str(honest), check=True)
    p = run_cli("audit", "verify", "--file", str(honest), "--heads", str(center_heads), "--public-key", pub, "--json")
    assert p.returncode == 0, p.stdout + p.stderr

    # the rewrite: same key, entry 2 removed, everything after renumbered and re-chained, heads re-signed
    old = [orjson.loads(x) for x in _lines(data_dir)]
    (data_dir / audit.AUDIT_FILE).unlink()
    (data_dir / audit.HEADS_FILE).unlink()
    with audit.AuditLog(data_dir, sign=key.sign, head_every=5) as log:
        for e in old[:2] + old[3:]:
            log.append(e["actor"], e["action"], e["subject"], **e["detail"])
        log.sign_head()
    assert run_cli("audit", "verify", "--data-dir", str(data_dir), "--public-key", pub).returncode == 0
    forged = tmp_path / "forged.jsonl"
    run_cli("audit", "export", "--data-dir", str(data_dir), "--out", str(forged), check=True)
    p = run_cli("audit", "verify", "--file", str(forged), "--heads", str(center_heads), "--public-key", pub, "--json")
    assert p.returncode == 1
    out = json.loads(p.stdout)
    assert out["first_bad"]["index"] == 0 and "consistency proof" in out["first_bad"]["reason"]


def test_center_check_accepts_a_log_that_grew_since_the_heads(data_dir, tmp_path):
    key, pub = _key()
    _fill(data_dir, 7, key)
    heads = tmp_path / "heads.jsonl"
    heads.write_bytes((data_dir / audit.HEADS_FILE).read_bytes())
    _fill(data_dir, 20, key)
    exp = tmp_path / "e.jsonl"
    run_cli("audit", "export", "--data-dir", str(data_dir), "--out", str(exp), check=True)
    p = run_cli("audit", "verify", "--file", str(exp), "--heads", str(heads), "--public-key", pub, "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["entries"] == 27


# ------------------------------------------------------------------ operator surface
def test_show_since_json_and_errors(data_dir, tmp_path):
    audit.record(data_dir, "cli:op", "consumer.drop", "influx")
    p = run_cli("audit", "show", "--data-dir", str(data_dir), "--json", check=True)
    rows = json.loads(p.stdout)
    assert rows[0]["action"] == "consumer.drop" and rows[0]["subject"] == "influx"
    p = run_cli("audit", "show", "--data-dir", str(data_dir), check=True)
    assert "consumer.drop" in p.stdout
    p = run_cli("audit", "show", "--data-dir", str(data_dir), "--since", "2099-01-01", "--json", check=True)
    assert json.loads(p.stdout) == []
    p = run_cli("audit", "verify", "--data-dir", str(data_dir), "--public-key", "zz")
    assert p.returncode == 1 and "public-key" in p.stderr and "Traceback" not in p.stderr
    bad = tmp_path / "x.jsonl"
    bad.write_text("hello\n")
    p = run_cli("audit", "verify", "--file", str(bad), "--heads", str(bad), "--public-key", "00" * 32)
    assert p.returncode == 1 and "Traceback" not in p.stderr


def test_a_new_process_signs_from_the_last_head_on_file(data_dir):
    key, _ = _key()
    _fill(data_dir, 12, key, every=5)  # heads at 5 and 10
    with audit.AuditLog(data_dir, sign=key.sign, head_every=5) as log:
        log.append("cli:op", "x")  # 13: not yet 5 past the last head
        assert [h["size"] for h in audit.read_heads(data_dir / audit.HEADS_FILE)] == [5, 10]
        log.append("cli:op", "x")
        log.append("cli:op", "x")  # 15
    assert [h["size"] for h in audit.read_heads(data_dir / audit.HEADS_FILE)] == [5, 10, 15]


def test_center_check_without_the_key_trusts_its_heads_and_still_catches_a_rewrite(data_dir, tmp_path):
    key, _ = _key()
    _fill(data_dir, 6, key)
    heads = tmp_path / "heads.jsonl"
    heads.write_bytes((data_dir / audit.HEADS_FILE).read_bytes())
    exp = tmp_path / "e.jsonl"
    run_cli("audit", "export", "--data-dir", str(data_dir), "--out", str(exp), check=True)
    assert run_cli("audit", "verify", "--file", str(exp), "--heads", str(heads)).returncode == 0
    lines = exp.read_bytes().splitlines()
    lines[2] = lines[2].replace(b'"preset":1', b'"preset":2')
    exp.write_bytes(b"".join(x + b"\n" for x in lines))
    p = run_cli("audit", "verify", "--file", str(exp), "--heads", str(heads), "--json")
    assert p.returncode == 1 and json.loads(p.stdout)["first_bad"]["index"] == 1
    assert run_cli("audit", "verify", "--file", str(exp)).returncode == 2  # usage: --heads missing


def test_verify_while_another_process_appends_never_false_alarms(data_dir):
    """A reader sees whole entries and no head newer than the entries it read."""
    code = ("import sys; from pathlib import Path; from fieldhub.core import audit\n"
            "from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey\n"
            "log = audit.AuditLog(Path(sys.argv[1]), sign=Ed25519PrivateKey.generate().sign, head_every=1)\n"
            "for i in range(1500): log.append('hub', 'x', str(i), pad='p' * 3000)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(data_dir)], env={**os.environ, "PYTHONPATH": str(ROOT)})
    checks = 0
    while proc.poll() is None:
        report = audit.verify_dir(data_dir)
        assert report.ok, report.problem
        checks += 1
    assert proc.returncode == 0 and checks > 5
    assert audit.verify_dir(data_dir).entries == 1500

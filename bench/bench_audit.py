"""Audit log appends per second, with its fsync policy, beside bare hashlib SHA-256 + write + fsync.

Run: .venv/bin/python bench/bench_audit.py [--entries 3000] [--runs 3]
Policy measured: ``append`` fsyncs every entry before returning (what every hook does);
``append_many`` fsyncs once per batch of 100. The baseline hashes the same entry bytes with
SHA-256 and appends them to a plain file with the same fsync cadence, in the same run and disk,
in alternating segments of 300 entries (so both see the same disk moments), with no JSON, no Merkle
tree, no lock and no signed heads. Signed heads (Ed25519, every 100 entries) are on.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fieldhub.core.audit import AuditLog

DETAIL = {"preset": 3, "device": "ptz-01", "admin_code": "420102001001"}


LINE = b'{"action":"ptz.preset","actor":"cli:operator","detail":{"admin_code":"420102001001","device":' \
       b'"ptz-01","preset":3},"prev":"' + b"0" * 64 + b'","seq":0,"subject":"ptz-0","ts":0}'


def interleaved(d: Path, n: int, batch: int, segment: int = 300) -> tuple[float, float]:
    """Both sides in alternating segments of ``segment`` entries, so they see the same disk moments."""
    key = Ed25519PrivateKey.generate()
    spent = {"audit": 0.0, "bare": 0.0}
    fd = os.open(d / "bare.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    with AuditLog(d, sign=key.sign, head_every=100) as log:
        for start in range(0, n, segment):
            t = time.perf_counter()
            for i in range(start, start + segment, batch):
                if batch == 1:
                    log.append("cli:operator", "ptz.preset", f"ptz-{i}", **DETAIL)
                else:
                    log.append_many([("cli:operator", "ptz.preset", f"ptz-{j}", DETAIL) for j in range(i, i + batch)])
            spent["audit"] += time.perf_counter() - t
            t = time.perf_counter()
            for _ in range(start, start + segment, batch):
                buf = b""
                for _j in range(batch):
                    hashlib.sha256(b"\x00" + LINE).digest()
                    buf += LINE + b"\n"
                os.write(fd, buf)
                os.fsync(fd)
            spent["bare"] += time.perf_counter() - t
    os.close(fd)
    return n / spent["audit"], n / spent["bare"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--entries", type=int, default=3000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", help="directory on the disk to measure (default: a temp dir)")
    args = ap.parse_args()
    print(f"{args.entries} entries, median of {args.runs} runs, load {os.getloadavg()[0]:.1f}")
    for batch in (1, 100):
        a, b = [], []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory(dir=args.dir) as t1:
                ra, rb = interleaved(Path(t1), args.entries, batch)
            a.append(ra)
            b.append(rb)
        am, bm = statistics.median(a), statistics.median(b)
        print(f"fsync every {batch:>3}: audit {am:>10,.0f} appends/s   bare sha256+write+fsync {bm:>10,.0f}/s"
              f"   ratio {am / bm:.2f}")


if __name__ == "__main__":
    main()

"""NMEA sentences/s decoded by fieldhub's driver beside pynmea2, on the same input in the same run.

Input: every sentence of ../shared/fixtures/nmea/*.log (gpsd metadata lines dropped), repeated
to --sentences. fieldhub: bytes in 4 KiB reads -> framer (checksum) -> parser -> Record objects
(stable ids, validated). pynmea2: ``pynmea2.parse(line, check=True)`` per line, given already
split str lines (it has no stream framer), i.e. less work than ours. Median of --runs.

    .venv/bin/python bench/bench_nmea.py --sentences 100000 --runs 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pynmea2  # noqa: E402

import drivers  # noqa: E402
from drivers.base import ParseContext  # noqa: E402

FIXTURES = ROOT.parent / "shared" / "fixtures" / "nmea"


def load(n: int) -> list[bytes]:
    lines = []
    for f in sorted(FIXTURES.glob("*.log")):
        for line in f.read_bytes().splitlines():
            s = line.strip()
            if s.startswith(b"$"):
                lines.append(s + b"\r\n")
    out = []
    while len(out) < n:
        out.extend(lines)
    return out[:n]


def run_ours(blob: bytes) -> tuple[float, int, int]:
    drv = drivers.get("nmea")
    framer, parser = drv.framer(), drv.parser({})
    ctx = ParseContext("bench", time.time_ns(), {"admin_code": "420102001001"}, {}, "serial:nmea")
    frames = records = 0
    t0 = time.perf_counter()
    for i in range(0, len(blob), 4096):
        for fr in framer.feed(blob[i:i + 4096]):
            if fr.ok:
                frames += 1
                records += len(parser.parse(fr, ctx))
    return time.perf_counter() - t0, frames, records


def run_framer(blob: bytes) -> float:
    """Framing and checksum only (what pynmea2's parse() does besides splitting fields)."""
    framer = drivers.get("nmea").framer()
    t0 = time.perf_counter()
    for i in range(0, len(blob), 4096):
        framer.feed(blob[i:i + 4096])
    return time.perf_counter() - t0


def run_pynmea2(lines: list[str], decode: bool) -> tuple[float, int, int]:
    """``decode``: read every named field (pynmea2 converts lazily, on attribute access), plus
    latitude/longitude where the sentence has them — the work our parser does eagerly."""
    ok = bad = 0
    t0 = time.perf_counter()
    for line in lines:
        try:
            msg = pynmea2.parse(line, check=True)
        except pynmea2.ParseError:
            bad += 1
            continue
        ok += 1
        if decode:
            try:
                for field in msg.fields:
                    getattr(msg, field[1])
                if isinstance(msg, pynmea2.LatLonFix):
                    _ = (msg.latitude, msg.longitude)  # decode, as the hub does
            except (ValueError, TypeError, AttributeError, IndexError):
                pass  # an empty or odd field: counted as decoded as far as it goes
    return time.perf_counter() - t0, ok, bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    lines = load(args.sentences)
    blob = b"".join(lines)
    text = [ln.decode("ascii").strip() for ln in lines]
    ours, lazy, full, framing = [], [], [], []
    for _ in range(args.runs):
        framing.append(len(lines) / run_framer(blob))
        t, frames, records = run_ours(blob)
        ours.append(len(lines) / t)
        t2, ok, bad = run_pynmea2(text, decode=True)
        full.append(len(lines) / t2)
        t3, _, _ = run_pynmea2(text, decode=False)
        lazy.append(len(lines) / t3)
    o, f, z = statistics.median(ours), statistics.median(full), statistics.median(lazy)
    print(f"input: {len(lines)} sentences ({len(blob)} bytes) from {FIXTURES}")
    print(f"fieldhub nmea driver (frame+checksum+decode+Record): {o:,.0f} sentences/s "
          f"({frames} frames, {records} records)")
    print(f"pynmea2 {pynmea2.version} parse + read every field:       {f:,.0f} sentences/s "
          f"({ok} parsed, {bad} errors)")
    print(f"pynmea2 {pynmea2.version} parse only (fields unconverted): {z:,.0f} sentences/s")
    print(f"fieldhub framer alone (resync + checksum, no decode): {statistics.median(framing):,.0f} sentences/s")
    print(f"ratio fieldhub / pynmea2 decoded: {o / f:.2f}x;  fieldhub / pynmea2 parse-only: {o / z:.2f}x "
          f"(median of {args.runs} runs, Python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()

"""SL651 frames/s decoded by fieldhub's driver beside a bare CRC-16 + length walk over the same
bytes, in the same run.

Input: the HEX frames that pass their CRC in tests/test_sl651_vectors.txt (the standard's examples
and published frames) plus the station simulator's reports (32 timed, 33 alarm, 34 hourly with
F4/F5 series), repeated to --frames and concatenated into one byte stream (no garbage between
frames). Three passes over the same bytes, in 4 KiB reads:

* ``decode``: framer (start + plausible header + length + CRC) -> header -> body parser ->
  ``Record`` objects with stable ids — what the server does per frame, less the log.
* ``framer``: the framer alone.
* ``walk``: the floor: at each frame start read the length word, CRC-16 the frame (the same
  table-driven CRC), step over it. It cannot resynchronise, check a header or decode a value.

Median of --runs.

    .venv/bin/python bench/bench_sl651.py --frames 100000 --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drivers import sl651  # noqa: E402
from drivers.base import ParseContext  # noqa: E402
from simulators.sl651 import CST, SimOptions, Sl651Fleet  # noqa: E402

VECTORS = ROOT / "tests" / "test_sl651_vectors.txt"


def corpus() -> list[bytes]:
    frames = []
    for raw in sl651.read_capture(VECTORS):
        for f in sl651.Sl651Framer().feed(raw):
            if f.ok and f.raw[:2] == sl651.HEX_START and sl651.decode_header(f.raw).uplink:
                frames.append(f.raw)
    fleet = Sl651Fleet(SimOptions(stations=20, corrupt=0.0, start=datetime(2025, 7, 15, tzinfo=CST)))
    for st in fleet.stations:
        for _ in range(24):
            fleet._generate(st)
        frames.extend(p.frame for p in st.queue)
    return frames


def run_decode(blob: bytes) -> tuple[float, int, int]:
    framer, parser = sl651.Sl651Framer(), sl651.Sl651Parser()
    ctx = ParseContext("bench", time.time_ns(), {"admin_code": "420102001001"}, {}, "sl651")
    frames = records = 0
    t0 = time.perf_counter()
    for i in range(0, len(blob), 4096):
        for fr in framer.feed(blob[i:i + 4096]):
            if fr.ok:
                frames += 1
                records += len(parser.parse(fr, ctx))
    return time.perf_counter() - t0, frames, records


def run_framer(blob: bytes) -> tuple[float, int]:
    framer = sl651.Sl651Framer()
    n = 0
    t0 = time.perf_counter()
    for i in range(0, len(blob), 4096):
        n += sum(1 for fr in framer.feed(blob[i:i + 4096]) if fr.ok)
    return time.perf_counter() - t0, n


def run_walk(blob: bytes) -> tuple[float, int]:
    crc16 = sl651.crc16
    n = p = 0
    end = len(blob)
    mv = memoryview(blob)
    t0 = time.perf_counter()
    while p + 17 <= end:
        total = (((blob[p + 11] << 8) | blob[p + 12]) & 0xFFF) + 17
        if crc16(mv[p:p + total - 2]) == (blob[p + total - 2] << 8) | blob[p + total - 1]:
            n += 1
        p += total
    return time.perf_counter() - t0, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    base = corpus()
    frames = (base * (args.frames // len(base) + 1))[:args.frames]
    blob = b"".join(frames)
    res: dict[str, list[float]] = {"decode": [], "framer": [], "walk": []}
    counts = {}
    for _ in range(args.runs):
        t, nf, nr = run_decode(blob)
        res["decode"].append(t)
        counts["decode"] = (nf, nr)
        t, n = run_framer(blob)
        res["framer"].append(t)
        counts["framer"] = (n, 0)
        t, n = run_walk(blob)
        res["walk"].append(t)
        counts["walk"] = (n, 0)
    assert counts["decode"][0] == counts["framer"][0] == counts["walk"][0] == len(frames), counts
    print(f"{len(frames)} frames ({len(base)} distinct, {len(blob) / len(frames):.0f} B average, "
          f"{len(blob) / 1e6:.1f} MB), {counts['decode'][1]} records; median of {args.runs}:")
    for name in ("decode", "framer", "walk"):
        med = statistics.median(res[name])
        print(f"  {name:7s} {len(frames) / med:10,.0f} frames/s  {len(blob) / med / 1e6:6.2f} MB/s")
    ratio = statistics.median(res["walk"]) / statistics.median(res["decode"])
    print(f"  decode runs at {ratio:.0%} of the bare CRC + length walk")


if __name__ == "__main__":
    main()

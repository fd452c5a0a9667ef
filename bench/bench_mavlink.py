"""MAVLink ingest rate: the hub's drone path beside bare pymavlink ``parse_buffer`` on the same bytes.

Usage: .venv/bin/python bench/bench_mavlink.py [--file X.tlog] [--runs 3] [--json]

The recorded stream is a real flight log with its tlog timestamps stripped (the bytes a
radio would deliver). "bare" is ``MAVLink.parse_buffer`` in 4 KiB pieces; "hub" is
``DroneHub.on_data`` on the same pieces: parsing, per-drone state and signing checks,
telemetry records (rate-limited as configured) appended to a real durable log, and the
raw stream written to a rotating tlog. Each run times bare and hub back to back; the
ratio reported is the median of the per-run ratios (the machine is shared), rates are medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drivers.mavlink import MavFramer, new_parser, read_tlog  # noqa: E402
from fieldhub.core.log import DurableLog  # noqa: E402
from fieldhub.sources.mavlink.config import MavlinkConfig  # noqa: E402
from fieldhub.sources.mavlink.drones import DroneHub  # noqa: E402

DEFAULT_FILE = ROOT.parent / "shared" / "fixtures" / "mavlink" / "ardusub_small.tlog"
CHUNK = 4096


def stream_bytes(path: Path) -> tuple[bytes, int]:
    framer = MavFramer()
    good = [f.raw for c in read_tlog(path) for f in framer.feed(c) if f.ok]
    return b"".join(good), len(good)


def chunks(data: bytes) -> list[bytes]:
    return [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]


def bare(pieces: list[bytes]) -> tuple[float, int]:
    p = new_parser()
    n = 0
    t0 = time.perf_counter()
    for c in pieces:
        n += len(p.parse_buffer(c) or ())
    return time.perf_counter() - t0, n


def hub(pieces: list[bytes], workdir: Path, rates: dict[str, float] | None) -> tuple[float, int, int]:
    log = DurableLog(workdir / "log.db")
    cfg = MavlinkConfig(endpoints=["udpin:127.0.0.1:0"], **({"rates": rates} if rates is not None else {}))
    drones = DroneHub(cfg, log, tlog_dir=workdir / "tlog")
    ep = drones.endpoints[0]
    t0 = time.perf_counter()
    for c in pieces:
        drones.on_data(ep, c, ("127.0.0.1", 14550))
    drones.tlogs.flush()
    _drain(log)
    elapsed = time.perf_counter() - t0
    n, recs = drones.stats["messages"], drones.stats["records"]
    drones.tlogs.close()
    log.close()
    return elapsed, n, recs


def _drain(log: DurableLog) -> None:
    """Block until every queued append is durable (a synchronous append queues behind them)."""
    from fieldhub.core.records import Record

    log.append([Record.make("bench_barrier", "bench", time.time_ns(), {"x": 1})])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", type=Path, default=DEFAULT_FILE)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    data, n_good = stream_bytes(args.file)
    pieces = chunks(data)
    results: dict[str, list[float]] = {"bare": [], "hub": [], "hub_all_records": []}
    records: dict[str, int] = {}
    for _ in range(args.runs):
        t, n = bare(pieces)
        assert n == n_good, (n, n_good)
        results["bare"].append(n / t)
        for name, rates in (("hub", None), ("hub_all_records", {k: 0.0 for k in (
                "position", "altitude", "velocity", "attitude", "airdata", "battery", "gps", "drone_state")})):
            with tempfile.TemporaryDirectory(prefix="bench-mav-") as d:
                t, n, recs = hub(pieces, Path(d), rates)
            assert n == n_good, (n, n_good)
            results[name].append(n / t)
            records[name] = recs
    med = {k: statistics.median(v) for k, v in results.items()}
    # each run measures bare and hub back to back, so its ratio is the least disturbed figure
    ratio = {k: statistics.median(h / b for h, b in zip(results[k], results["bare"]))
             for k in ("hub", "hub_all_records")}
    out = {"file": args.file.name, "messages": n_good, "bytes": len(data), "runs": args.runs,
           "bare_msgs_per_s": round(med["bare"]), "hub_msgs_per_s": round(med["hub"]),
           "hub_ratio": round(ratio["hub"], 3), "hub_records": records["hub"],
           "hub_all_records_msgs_per_s": round(med["hub_all_records"]),
           "hub_all_records_ratio": round(ratio["hub_all_records"], 3),
           "hub_all_records_records": records["hub_all_records"]}
    if args.json:
        import json

        print(json.dumps(out, indent=2))
        return
    print(f"{out['file']}: {n_good} messages, {len(data)} bytes, median of {args.runs} paired runs")
    print(f"  bare pymavlink parse_buffer (4 KiB): {out['bare_msgs_per_s']:>9,} msg/s")
    print(f"  hub ingest, default rate limits    : {out['hub_msgs_per_s']:>9,} msg/s  "
          f"ratio {out['hub_ratio']:.2f}  ({out['hub_records']} records)")
    print(f"  hub ingest, every message a record : {out['hub_all_records_msgs_per_s']:>9,} msg/s  "
          f"ratio {out['hub_all_records_ratio']:.2f}  ({out['hub_all_records_records']} records)")


if __name__ == "__main__":
    main()

"""InfluxDB sink throughput beside raw line-protocol HTTP posts of the same points, same server, same run.

Run: .venv/bin/python bench/bench_influx.py [--records 200000] [--runs 3] [--server influxdb1|victoria]

The raw baseline posts the already-encoded line protocol of the same points to ``/write`` (v1,
InfluxDB 1.6) or ``/api/v2/write`` (VictoriaMetrics) in batches of 5,000 from one thread with
no log, no cursor and no retries. The sink reads the same records from the durable log through
its cursor, encodes them, posts batches of 5,000 (v1 mode for InfluxDB 1.6, influxdb-client v2
for VictoriaMetrics) and commits the cursor after each accepted batch; the clock stops when its
backlog is zero. Both sides write into fresh databases (or fresh measurements), without gzip
(loopback). The medians of ``--runs`` alternating rounds are reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import urllib3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fieldhub.influx import InfluxConfig, InfluxSink, InfluxWriter, make_transport  # noqa: E402
from fieldhub.lineproto import Encoder  # noqa: E402
from fieldhub.log import DurableLog  # noqa: E402
from fieldhub.records import Record  # noqa: E402
from tests.influx_servers import InfluxDB1, VictoriaMetrics  # noqa: E402

BATCH = 5000
TAGS = {"kind": "water_gauge", "model": "wg-100", "admin_code": "420102001001", "level": "village",
        "county": "420102"}


def make_records(n: int, measurement: str) -> list[Record]:
    """Water-level style points: 200 devices, 6 typed fields, 1 ms apart in the recent past."""
    t0 = (time.time_ns() // 1_000_000 - 2 * 3_600_000) * 1_000_000
    return [Record.make(measurement, f"wl-{i % 200:03d}", t0 + i * 1_000_000,
                        {"level_m": 1.0 + (i % 997) / 1000, "flow_m3s": 12.5 + (i % 89) / 10,
                         "battery_v": 3.6 + (i % 7) / 100, "rssi": -70 - i % 30, "seq": i,
                         "ok": i % 5 != 0},
                        tags=TAGS, source="bench", key=i) for i in range(n)]


def raw_posts(server, lines: list[bytes], mode: str, db: str) -> float:
    http = urllib3.PoolManager(retries=False, timeout=60)
    if mode == "v1":
        server.query(f'CREATE DATABASE "{db}"')
        url = f"{server.url}/write?db={db}&precision=ns"
    else:
        url = f"{server.url}/api/v2/write?org=o&bucket={db}&precision=ns"
    bodies = [b"\n".join(lines[i:i + BATCH]) for i in range(0, len(lines), BATCH)]
    t = time.perf_counter()
    for body in bodies:
        resp = http.request("POST", url, body=body, headers={"Content-Type": "text/plain; charset=utf-8"})
        if resp.status not in (200, 204):
            raise RuntimeError(f"raw post failed: {resp.status} {resp.data[:200]!r}")
    elapsed = time.perf_counter() - t
    http.clear()
    return len(lines) / elapsed


def sink_run(server, records: list[Record], mode: str, db: str, workdir: Path, *, gzip: bool = False,
             concurrency: int = 2) -> float:
    log = DurableLog(workdir / f"log-{db}.db")
    log.append(records)
    if mode == "v1":
        cfg = InfluxConfig(url=server.url, mode="v1", database=db, batch_size=BATCH, gzip=gzip,
                           concurrency=concurrency, timeout=60)
        server.query(f'CREATE DATABASE "{db}"')
    else:
        cfg = InfluxConfig(url=server.url, mode="v2", token="t", org="o", bucket=db, batch_size=BATCH,
                           gzip=gzip, concurrency=concurrency, timeout=60)
    writer = InfluxWriter(log, InfluxSink(make_transport(cfg), log, hub_id="bench"), cfg)
    t = time.perf_counter()
    writer.start()
    while writer.written < len(records):
        time.sleep(0.002)
        if writer.errors:
            raise RuntimeError(f"sink errors: {writer.status()}")
    elapsed = time.perf_counter() - t
    writer.stop()
    log.close()
    return len(records) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--server", choices=["influxdb1", "victoria"], default="influxdb1")
    ap.add_argument("--gzip", action="store_true", help="Also measure the sink with gzip on.")
    args = ap.parse_args()
    mode = "v1" if args.server == "influxdb1" else "v2"
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        server = (InfluxDB1 if mode == "v1" else VictoriaMetrics)(work / "server").start()
        try:
            results: dict[str, list[float]] = {"raw": [], "sink": [], "sink_gzip": []}
            for run in range(args.runs):
                # each side gets its own measurement name, so neither overwrites the other's points
                raw_records = make_records(args.records, f"bench_raw_{run}")
                enc = Encoder("bench")
                lines = [enc.encode(r) for r in raw_records]
                results["raw"].append(raw_posts(server, lines, mode, f"raw{run}"))
                results["sink"].append(sink_run(server, make_records(args.records, f"bench_sink_{run}"),
                                                mode, f"sink{run}", work))
                if args.gzip:
                    results["sink_gzip"].append(sink_run(server, make_records(args.records, f"bench_gz_{run}"),
                                                         mode, f"gz{run}", work, gzip=True))
                print(f"run {run + 1}: raw {results['raw'][-1]:,.0f} points/s, "
                      f"sink {results['sink'][-1]:,.0f} points/s", flush=True)
        finally:
            server.stop()
    raw = statistics.median(results["raw"])
    sink = statistics.median(results["sink"])
    name = "InfluxDB 1.6 /write (v1 mode)" if mode == "v1" else "VictoriaMetrics /api/v2/write (influxdb-client)"
    print(f"server: {name}; {args.records:,} points per run, batches of {BATCH:,}, {args.runs} runs (medians)")
    print(f"raw line-protocol posts, one thread: {raw:,.0f} points/s")
    print(f"fieldhub influx sink (log -> cursor -> encode -> post -> commit): {sink:,.0f} points/s "
          f"= {sink / raw:.0%} of raw")
    if args.gzip:
        gz = statistics.median(results["sink_gzip"])
        print(f"fieldhub influx sink with gzip level 6: {gz:,.0f} points/s = {gz / raw:.0%} of raw")


if __name__ == "__main__":
    main()

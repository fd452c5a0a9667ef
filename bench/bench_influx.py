"""InfluxDB sink throughput beside raw line-protocol HTTP posts of the same points, same server, same run.

Run: .venv/bin/python bench/bench_influx.py [--records 100000] [--runs 5] [--server influxdb1|victoria]

The raw baseline posts the already-encoded line protocol of the same points to ``/write`` (v1,
InfluxDB 1.6) or ``/api/v2/write`` (VictoriaMetrics) in batches of 5,000 from one thread with
no log, no cursor and no retries (the issue's baseline). A second baseline does the same but
encodes the Records to line protocol (the Python encoder) inside the timed loop, as a plain
script writing to InfluxDB would; a third posts the ready-made lines two requests at a time,
as the sink does (its default ``concurrency = 2``). The sink reads the same records from the durable log through
its cursor, encodes them, posts batches of 5,000 (v1 mode for InfluxDB 1.6, influxdb-client v2
for VictoriaMetrics) and commits the cursor after each accepted batch; the clock stops when its
backlog is zero. Both sides write into fresh databases (or fresh measurements), without gzip
(loopback). The sides take turns within each round, in an order that rotates from round to
round, each starting once the server is idle again (its background compaction of the previous
side's points done). The medians over ``--runs`` rounds and the median of the per-round
ratios are reported, with the CPU each side cost per point.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import urllib3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fieldhub.core.log import DurableLog  # noqa: E402
from fieldhub.core.records import Record  # noqa: E402
from fieldhub.sinks.influx.lineproto import Encoder  # noqa: E402
from fieldhub.sinks.influx.writer import InfluxConfig, InfluxSink, InfluxWriter, make_transport  # noqa: E402
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


def raw_posts(server, lines: list[bytes] | list[Record], mode: str, db: str,
              inflight: int = 1) -> tuple[float, float, float]:
    """Posts in batches of 5,000 from one thread (or ``inflight`` threads, lines ready-made);
    Records are encoded inside the timed loop. Points/s, and the client's and the server's CPU
    seconds while the clock ran."""
    http = urllib3.PoolManager(retries=False, timeout=60, maxsize=inflight)
    if mode == "v1":
        server.query(f'CREATE DATABASE "{db}"')
        url = f"{server.url}/write?db={db}&precision=ns"
    else:
        url = f"{server.url}/api/v2/write?org=o&bucket={db}&precision=ns"
    encode = isinstance(lines[0], Record)
    bodies = [] if encode else [b"\n".join(lines[i:i + BATCH]) for i in range(0, len(lines), BATCH)]
    enc = Encoder("bench")

    def post(body: bytes) -> None:
        resp = http.request("POST", url, body=body, headers={"Content-Type": "text/plain; charset=utf-8"})
        if resp.status not in (200, 204):
            raise RuntimeError(f"raw post failed: {resp.status} {resp.data[:200]!r}")

    c, s = own_cpu(), cpu_seconds(server.proc.pid)
    t = time.perf_counter()
    if inflight > 1:
        with ThreadPoolExecutor(inflight) as pool:
            list(pool.map(post, bodies))
    else:
        for i in range(0, len(lines), BATCH):
            post(b"\n".join([enc.encode(r) for r in lines[i:i + BATCH]]) if encode else bodies[i // BATCH])
    elapsed = time.perf_counter() - t
    c, s = own_cpu() - c, cpu_seconds(server.proc.pid) - s
    http.clear()
    return len(lines) / elapsed, c, s


def sink_run(server, records: list[Record], mode: str, db: str, workdir: Path, *, gzip: bool = False,
             concurrency: int = 2) -> tuple[float, float, float]:
    """Points/s through the sink, and its own and the server's CPU seconds while the clock ran."""
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
    settle(server)  # the server is idle again after the log was filled
    c, s = own_cpu(), cpu_seconds(server.proc.pid)
    t = time.perf_counter()
    writer.start()
    while writer.written < len(records):
        time.sleep(0.002)
        if writer.errors:
            raise RuntimeError(f"sink errors: {writer.status()}")
    elapsed = time.perf_counter() - t
    c, s = own_cpu() - c, cpu_seconds(server.proc.pid) - s
    writer.stop()
    log.close()
    return len(records) / elapsed, c, s


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (the server), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(server, idle: float = 0.05, longest: float = 10.0) -> None:
    """Wait until the server has used under ``idle`` of a core over 0.2 s (its background work
    for earlier writes is done), at most ``longest`` seconds."""
    deadline = time.monotonic() + longest
    while time.monotonic() < deadline:
        c = cpu_seconds(server.proc.pid)
        time.sleep(0.2)
        if cpu_seconds(server.proc.pid) - c < idle * 0.2:
            return


def own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", type=int, default=100_000, help="Points per round and side.")
    ap.add_argument("--runs", type=int, default=5, help="Rounds; the sides take turns within each, in an "
                    "order that rotates from round to round.")
    ap.add_argument("--server", choices=["influxdb1", "victoria"], default="influxdb1")
    ap.add_argument("--gzip", action="store_true", help="Also measure the sink with gzip on.")
    ap.add_argument("--concurrency", type=int, default=2, help="The sink's requests in flight (its default: 2).")
    args = ap.parse_args()
    mode = "v1" if args.server == "influxdb1" else "v2"
    results: dict[str, list[float]] = {"raw": [], "raw_enc": [], "raw2": [], "sink": [], "sink_gzip": [],
                                       "ratio": [], "ratio_enc": [], "ratio2": []}
    cpu: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        server = (InfluxDB1 if mode == "v1" else VictoriaMetrics)(work / "server").start()
        try:
            for run in range(args.runs):
                # each side gets its own database and measurement: neither overwrites the other
                enc = Encoder("bench")
                lines = [enc.encode(r) for r in make_records(args.records, f"bench_raw_{run}")]
                lines2 = [enc.encode(r) for r in make_records(args.records, f"bench_raw2_{run}")]
                enc_records = make_records(args.records, f"bench_enc_{run}")
                records = make_records(args.records, f"bench_sink_{run}")
                phases = [
                    ("raw", lambda: raw_posts(server, lines, mode, f"raw{run}")),
                    ("raw_enc", lambda: raw_posts(server, enc_records, mode, f"enc{run}")),
                    ("raw2", lambda: raw_posts(server, lines2, mode, f"rawtwo{run}", inflight=2)),
                    ("sink", lambda: sink_run(server, records, mode, f"sink{run}", work,
                                              concurrency=args.concurrency)),
                ]
                if args.gzip:
                    gz_records = make_records(args.records, f"bench_gz_{run}")
                    phases.append(("sink_gzip", lambda: sink_run(server, gz_records, mode, f"gz{run}", work,
                                                                 gzip=True)))
                # the order rotates from round to round, and each side starts once the server has
                # finished the background work (compaction, merges) of the one before it
                k = run % len(phases)
                got: dict[str, float] = {}
                for name, phase in phases[k:] + phases[:k]:
                    settle(server)
                    got[name], client_cpu, server_cpu = phase()
                    cpu.setdefault(f"{name}_server", []).append(server_cpu / args.records * 1e6)
                    cpu.setdefault(f"{name}_client", []).append(client_cpu / args.records * 1e6)
                for name, value in got.items():
                    results[name].append(value)
                raw, raw_enc, raw2, sink = got["raw"], got["raw_enc"], got["raw2"], got["sink"]
                results["ratio"].append(sink / raw)
                results["ratio_enc"].append(sink / raw_enc)
                results["ratio2"].append(sink / raw2)
                print(f"round {run + 1}: raw {raw:,.0f}, raw+encode {raw_enc:,.0f}, raw 2 in flight {raw2:,.0f}, "
                      f"sink {sink:,.0f} points/s ({sink / raw:.0%} / {sink / raw_enc:.0%} / {sink / raw2:.0%})",
                      flush=True)
        finally:
            server.stop()
    med = {k: statistics.median(v) for k, v in results.items() if v}
    name = "InfluxDB 1.6 /write (v1 mode)" if mode == "v1" else "VictoriaMetrics /api/v2/write (influxdb-client)"
    print(f"server: {name}; {args.records:,} points per side per round, batches of {BATCH:,}, "
          f"{args.runs} rounds (medians); load average at the end: {os.getloadavg()[0]:.2f}")
    print(f"raw line-protocol posts, one thread, lines ready-made: {med['raw']:,.0f} points/s")
    print(f"raw posts encoding the same Records to line protocol in the loop: {med['raw_enc']:,.0f} points/s")
    print(f"raw posts, lines ready-made, two in flight (as the sink posts): {med['raw2']:,.0f} points/s")
    print(f"fieldhub influx sink (log -> cursor -> encode -> post -> commit): {med['sink']:,.0f} points/s")
    print(f"sink / raw (ready-made lines), median of per-round ratios: {med['ratio']:.0%}")
    print(f"sink / raw (encoding in the loop), median of per-round ratios: {med['ratio_enc']:.0%}")
    print(f"sink / raw (ready-made, two in flight), median of per-round ratios: {med['ratio2']:.0%}")
    print("CPU per point while the clock ran, medians (server / client process):")
    for name in ("raw", "raw_enc", "raw2", "sink", "sink_gzip"):
        if cpu.get(f"{name}_server"):
            print(f"  {name}: {statistics.median(cpu[name + '_server']):.1f} us / "
                  f"{statistics.median(cpu[name + '_client']):.1f} us")
    if args.gzip:
        print(f"fieldhub influx sink with gzip level 6: {med['sink_gzip']:,.0f} points/s "
              f"= {med['sink_gzip'] / med['raw']:.0%} of raw")


if __name__ == "__main__":
    main()

"""Durable log append throughput (group commit, synchronous=FULL) beside raw SQLite inserts.

Run: .venv/bin/python bench/bench_log.py [--records 200000]
Both sides are durable (WAL, synchronous=FULL) and insert the same serialized rows; the raw
baseline commits every 1,000 rows from one thread with no queueing, ids or callbacks.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path

from fieldhub.core import body
from fieldhub.core.log import DurableLog
from simulators.loadgen import vehicle_records


def raw_sqlite(path: Path, rows: list[tuple], batch: int = 1000) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE log(seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, prio INTEGER, body BLOB)")
    db.execute("CREATE UNIQUE INDEX log_id ON log(id)")
    t = time.perf_counter()
    for i in range(0, len(rows), batch):
        db.execute("BEGIN")
        db.executemany("INSERT INTO log(id, prio, body) VALUES (?, ?, ?)", rows[i:i + batch])
        db.execute("COMMIT")
    elapsed = time.perf_counter() - t
    db.close()
    return len(rows) / elapsed


def hub_append(path: Path, records: list, per_append: int, producers: int = 4) -> tuple[float, list[float]]:
    """Producers append ``per_append`` records at a time and wait for the durable callback."""
    log = DurableLog(path)
    latencies: list[float] = []
    chunks = [records[i:i + per_append] for i in range(0, len(records), per_append)]
    todo = iter(chunks)
    lock = threading.Lock()
    window = threading.BoundedSemaphore(2000)

    def produce() -> None:
        while True:
            with lock:
                chunk = next(todo, None)
            if chunk is None:
                return
            window.acquire()
            t0 = time.perf_counter()

            def done(result, error, t0=t0):
                latencies.append(time.perf_counter() - t0)
                window.release()
            log.append(chunk, callback=done)

    t = time.perf_counter()
    threads = [threading.Thread(target=produce) for _ in range(producers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for _ in range(2000):
        window.acquire()
    elapsed = time.perf_counter() - t
    log.close()
    return len(records) / elapsed, latencies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    records = vehicle_records("bench", 0, args.records)
    rows = [(r.id, int(r.priority), body.encode(r)) for r in records]
    results: dict[str, list[float]] = {"raw": [], "hub_1": [], "hub_100": []}
    p99: dict[str, list[float]] = {"hub_1": [], "hub_100": []}
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as d:
            results["raw"].append(raw_sqlite(Path(d) / "raw.db", rows))
            for per in (1, 100):
                rate, lat = hub_append(Path(d) / f"hub{per}.db", records, per)
                results[f"hub_{per}"].append(rate)
                p99[f"hub_{per}"].append(statistics.quantiles(lat, n=100)[98] * 1000)
    raw = statistics.median(results["raw"])
    print(f"records per run: {args.records}, runs: {args.runs} (medians)")
    print(f"raw SQLite inserts (WAL, FULL, commit/1000, one thread): {raw:,.0f} records/s")
    for per in (1, 100):
        rate = statistics.median(results[f"hub_{per}"])
        print(f"hub DurableLog, {per:>3} record(s) per append, 4 producers: {rate:,.0f} records/s "
              f"= {rate / raw:.0%} of raw; p99 append-to-durable {statistics.median(p99[f'hub_{per}']):.1f} ms")


if __name__ == "__main__":
    main()

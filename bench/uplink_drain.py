"""Backlog drain rate over an emulated 512 kbit/s GEO link, as a fraction of the link's bandwidth.

    python bench/uplink_drain.py [--records 200000] [--bandwidth 512kbit] [--latency 300ms]

A hub log holding a telemetry backlog drains through the link emulator to a real Mosquitto
and a center worker; measured from the link being up to the center's last ack. Baseline in
the same run: one bulk TCP transfer through the same emulator (what the link can carry).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fieldhub.config import parse_duration  # noqa: E402
from fieldhub.log import DurableLog  # noqa: E402
from fieldhub.mosquitto import Mosquitto, free_port  # noqa: E402
from fieldhub.uplink import Uplink  # noqa: E402
from fieldhub.uplink_config import LinkConfig, UplinkConfig, parse_rate  # noqa: E402
from simulators.link import LinkEmulator, LinkSpec  # noqa: E402
from simulators.uplink_load import village_telemetry  # noqa: E402


def raw_tcp_rate(spec: LinkSpec, nbytes: int) -> float:
    """Bits per second one bulk TCP transfer gets through the emulator (the baseline)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    done = threading.Event()

    def sink() -> None:
        conn, _ = srv.accept()
        got = 0
        while got < nbytes:
            got += len(conn.recv(65536))
        done.set()

    threading.Thread(target=sink, daemon=True).start()
    with LinkEmulator(free_port(), srv.getsockname(), spec) as em:
        c = socket.create_connection(em.listen)
        t = time.monotonic()
        c.sendall(b"\x00" * nbytes)
        done.wait(120)
        return nbytes * 8 / (time.monotonic() - t - spec.latency)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--bandwidth", default="512kbit")
    ap.add_argument("--latency", default="300ms")
    ap.add_argument("--batch-time", type=float, default=0.5)
    ap.add_argument("--window", type=int, default=6)
    a = ap.parse_args()
    bps, lat = parse_rate(a.bandwidth), float(parse_duration(a.latency))
    spec = LinkSpec(latency=lat, bandwidth=bps)
    tmp = Path(tempfile.mkdtemp(prefix="fh-bench-drain-"))
    broker = Mosquitto(tmp / "broker").start()
    # the center is on the far side of the link: its own process, as in the field
    worker = subprocess.Popen([sys.executable, "-m", "cli", "center", "run", "--broker", broker.url,
                               "--data-dir", str(tmp / "center"), "--worker", "bench"],
                              cwd=ROOT, stderr=subprocess.DEVNULL)
    log = DurableLog(tmp / "hub" / "log.db")
    stations = 20
    recs = village_telemetry(stations, a.records // stations, t0_ns=1_780_000_000_000_000_000)
    for i in range(0, len(recs), 20_000):
        log.append(recs[i:i + 20_000])
    em = LinkEmulator(free_port(), ("127.0.0.1", broker.port), spec).start()
    cfg = UplinkConfig(enabled=True, links=[LinkConfig(name="geo", url=f"mqtt://127.0.0.1:{em.listen[1]}",
                                                       bandwidth=a.bandwidth, latency=lat)],
                       batch_time=a.batch_time, window=a.window)
    up = Uplink(log, cfg, "bench-hub")
    up.start()
    while not up.manager.links[0].up():
        time.sleep(0.01)
    t0, b0 = time.monotonic(), em.stats.bytes_up
    while up.status()["backlog_total"] > 0:
        time.sleep(0.1)
    elapsed = time.monotonic() - t0
    wire = (em.stats.bytes_up - b0) * 8 / elapsed
    payload = up.stats["bytes_sent"] * 8 / elapsed
    up.stop()
    log.close()
    worker.terminate()
    worker.wait()
    em.stop()
    broker.stop()
    raw = raw_tcp_rate(spec, 256_000)
    print(f"{len(recs)} records backlog over {bps / 1000:.0f} kbit/s, {lat * 1000:.0f} ms one way: "
          f"drained in {elapsed:.1f} s = {len(recs) / elapsed:,.0f} records/s")
    print(f"  wire bytes through the link: {wire / 1000:.0f} kbit/s = {wire / bps:.0%} of the link bandwidth, "
          f"{wire / raw:.0%} of a bulk TCP transfer ({raw / 1000:.0f} kbit/s) through the same emulator")
    print(f"  batch payload (goodput): {payload / 1000:.0f} kbit/s = {payload / bps:.0%} of the link bandwidth; "
          f"{up.stats['bytes_sent'] / len(recs):.2f} bytes/record, {up.stats['batches_sent']} batches, "
          f"{up.stats['resent_batches']} resent")


if __name__ == "__main__":
    main()

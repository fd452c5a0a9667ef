"""Hub memory (RSS) with a 1,000,000-record uplink backlog, draining over an emulated GEO link.

    python bench/uplink_rss.py [--records 1000000] [--seconds 30]

Fills a hub's log with the backlog, then runs ``fieldhub run`` (uplink enabled, link through
the emulator to a real broker and a center worker) and samples the hub's RSS; asks
``fieldhub uplink status`` meanwhile. Baseline in the same run: the same hub and backlog
with the uplink disabled.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fieldhub.core.log import DurableLog  # noqa: E402
from fieldhub.sources.mqtt.mosquitto import Mosquitto, free_port  # noqa: E402
from simulators.link import LinkEmulator, LinkSpec  # noqa: E402
from simulators.uplink_load import village_telemetry  # noqa: E402


def fill(data_dir: Path, n: int) -> None:
    log = DurableLog(data_dir / "log.db")
    stations, per = 50, 20_000
    t0 = 1_780_000_000_000_000_000
    done = 0
    while done < n:
        recs = village_telemetry(stations, per // stations, t0_ns=t0 + done // stations * 10**9, seed=done)
        log.append(recs[: n - done])
        done += len(recs[: n - done])
    log.close()


def rss_kb(pid: int) -> tuple[int, int]:
    text = Path(f"/proc/{pid}/status").read_text()
    vals = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return int(vals["VmRSS"].split()[0]), int(vals["VmHWM"].split()[0])


def run_hub(tmp: Path, name: str, uplink: bool, link_port: int, seconds: float, records: int) -> dict:
    data = tmp / name
    data.mkdir()
    t = time.monotonic()
    fill(data, records)
    fill_s = time.monotonic() - t
    cfg = tmp / f"{name}.toml"
    cfg.write_text(f"""
[hub]
id = "rss-{name}"
data_dir = "{data}"
[uplink]
enabled = {"true" if uplink else "false"}
[[uplink.links]]
name = "geo"
url = "mqtt://127.0.0.1:{link_port}"
bandwidth = "512kbit"
latency = "300ms"
""")
    hub = subprocess.Popen([sys.executable, "-m", "cli", "run", "--config", str(cfg)], cwd=ROOT,
                           stderr=subprocess.DEVNULL)
    peak = 0
    status = None
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.5)
        peak = max(peak, rss_kb(hub.pid)[1])
        if uplink and status is None and time.monotonic() > end - seconds / 2:
            out = subprocess.run([sys.executable, "-m", "cli", "uplink", "status", "--json", "--config", str(cfg)],
                                 cwd=ROOT, capture_output=True, text=True)
            status = out.stdout
    peak = max(peak, rss_kb(hub.pid)[1])
    hub.terminate()
    hub.wait(60)
    backlog = None
    if status:
        import orjson

        backlog = orjson.loads(status)["backlog_total"]
    return {"peak_rss_mb": peak / 1024, "fill_s": fill_s, "backlog_seen": backlog}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=30)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fh-bench-rss-"))
    broker = Mosquitto(tmp / "broker").start()
    center = subprocess.Popen([sys.executable, "-m", "cli", "center", "run", "--broker", broker.url,
                               "--data-dir", str(tmp / "center")], cwd=ROOT, stderr=subprocess.DEVNULL)
    em = LinkEmulator(free_port(), ("127.0.0.1", broker.port), LinkSpec(latency=0.3, bandwidth=512_000)).start()
    try:
        base = run_hub(tmp, "baseline", False, em.listen[1], a.seconds, a.records)
        withup = run_hub(tmp, "uplink", True, em.listen[1], a.seconds, a.records)
    finally:
        center.terminate()
        center.wait()
        em.stop()
        broker.stop()
    print(f"hub with a {a.records:,}-record backlog, {a.seconds:.0f} s each (log filled in {base['fill_s']:.0f} s):")
    print(f"  uplink disabled (baseline): peak RSS {base['peak_rss_mb']:.0f} MB")
    print(f"  uplink draining over 512 kbit/s GEO: peak RSS {withup['peak_rss_mb']:.0f} MB "
          f"({withup['peak_rss_mb'] / base['peak_rss_mb']:.2f}x baseline); backlog seen by "
          f"`uplink status`: {withup['backlog_seen']:,}")


if __name__ == "__main__":
    main()

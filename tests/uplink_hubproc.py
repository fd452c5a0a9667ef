"""Test helper: a real hub (with its uplink) fed by a deterministic telemetry source, as a killable process.

``python -m tests.uplink_hubproc CONFIG TOTAL RATE``. Record ``i`` is always the same record
(same id), so a restarted source re-appends idempotently; the control command
``test.alarm`` appends alarms and returns how far the source has got.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from fieldhub.core.records import Priority, Record
from fieldhub.hub import Hub, load_config

T0 = 1_780_000_000_000_000_000


def record(i: int) -> Record:
    return Record.make("hydro", f"village-{i % 20:03d}", T0 + (i // 20) * 1_000_000_000,
                       {"water_level_m": round(2 + (i % 97) / 1000, 3), "seq": i},
                       priority=Priority.TELEMETRY, source="soak", key=i)


def alarm(n: int) -> Record:
    return Record.make("alarm", "geo-monitor-1", T0 + n * 1_000_000, {"code": 301, "n": n,
                       "lat": 30.59, "lon": 114.3}, priority=Priority.ALARM, source="soak", key=f"alarm-{n}")


class Source:
    name = "testgen"
    command_prefix = "test"

    def __init__(self, ctx, total: int, rate: float) -> None:
        self.ctx, self.total, self.rate = ctx, total, rate
        self.progress_file = Path(ctx.data_dir) / "gen.progress"
        text = self.progress_file.read_text().strip() if self.progress_file.exists() else ""
        self.done = int(text) if text else 0
        self._stop = threading.Event()

    def commands(self) -> dict:
        return {"alarm": self.alarm}

    def alarm(self, args: dict) -> dict:
        self.ctx.log.append([alarm(int(n)) for n in args["ids"]])
        return {"progress": self.done}

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        chunk = 100
        while self.done < self.total and not self._stop.wait(chunk / self.rate):
            n = min(chunk, self.total - self.done)
            self.ctx.log.append([record(i) for i in range(self.done, self.done + n)])
            self.done += n
            tmp = self.progress_file.with_suffix(".tmp")  # atomic: the process may be killed here
            tmp.write_text(str(self.done))
            os.replace(tmp, self.progress_file)

    def stop(self) -> None:
        self._stop.set()

    def status(self) -> dict:
        return {"done": self.done}


def main() -> None:
    cfg_path, total, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    cfg = load_config(cfg_path, env={})
    hub = Hub(cfg, extra=(lambda ctx: Source(ctx, total, rate),))
    print("ready", flush=True)
    hub.run()


if __name__ == "__main__":
    main()

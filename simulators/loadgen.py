"""A synthetic in-process source for the demo, benchmarks and crash tests: vehicle self-telemetry."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from fieldhub.core.records import Priority, Record


def vehicle_records(hub_id: str, start_seq: int, n: int, ts0: int | None = None) -> list[Record]:
    """``n`` records of the vehicle's own sensors (power, temperature), one per seq number."""
    ts0 = ts0 or time.time_ns()
    out = []
    for seq in range(start_seq, start_seq + n):
        phase = seq / 600.0
        out.append(Record.make(
            "vehicle_power", hub_id, ts0 + (seq - start_seq) * 1000,
            {"battery_v": round(24.0 + math.sin(phase), 3), "load_a": round(12 + 3 * math.cos(phase), 2),
             "cabin_c": round(21 + 2 * math.sin(phase / 3), 2), "seq": seq},
            priority=Priority.TELEMETRY, source="loadgen", key=seq))
    return out


class DemoLoad:
    """Appends the vehicle's own power telemetry at 5 Hz while the demo runs."""

    name = "vehicle"

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.sent = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def setup(self) -> None:
        self.ctx.add_device(self.ctx.hub_id, "vehicle", self.ctx.admin_code)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="demo-vehicle", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        log = self.ctx.hub.log
        while not self._stop.wait(0.2):
            log.append(vehicle_records(self.ctx.hub_id, self.sent, 1))
            self.sent += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def summary(self) -> dict[str, Any]:
        return {"vehicle records sent": self.sent}

"""Demo: the uplink over an emulated GEO satellite link to a center worker (same private broker)."""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlparse

from fieldhub.sources.mqtt.mosquitto import free_port
from simulators.link import LinkEmulator, LinkSpec


class DemoUplink:
    """A 512 kbit/s, 300 ms link emulator in front of the broker, and a center worker behind it."""

    name = "uplink"
    needs_broker = True

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.em: LinkEmulator | None = None
        self.worker: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def setup(self) -> None:
        broker = urlparse(self.ctx.broker)
        self.em = LinkEmulator(free_port(), (broker.hostname, broker.port), LinkSpec(latency=0.3, bandwidth=512_000))
        self.em.start()
        self.ctx.overrides.update({
            "uplink.enabled": True, "uplink.probe_interval": "1s",
            "uplink.links": [{"name": "geo", "kind": "mqtt", "url": f"mqtt://127.0.0.1:{self.em.listen[1]}",
                              "bandwidth": "512kbit", "latency": "300ms"}]})

    def start(self) -> None:
        from fieldhub.center.worker import CenterWorker

        self.worker = CenterWorker(self.ctx.broker, self.ctx.workdir / "center", worker="demo-center")
        self._thread = threading.Thread(target=self.worker.run, args=(self._stop,), name="demo-center", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self.em is not None:
            self.em.stop()

    def summary(self) -> dict[str, Any]:
        st = self.worker.stats if self.worker else {}
        return {"center records": st.get("records", 0), "center batches": st.get("batches", 0),
                "link bytes up": self.em.stats.bytes_up if self.em else 0}

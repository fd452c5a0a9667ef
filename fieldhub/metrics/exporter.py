"""The Prometheus endpoint: the hub's live status, turned into metrics at each scrape.

Nothing is counted twice: each scrape asks the hub for the same status ``fieldhub status --json``
shows and translates it, so a new component appears here by itself (its state and its numeric
status values) and the figures never drift from what the operator sees.

Metrics (all gauges unless ``_total``):

* ``fieldhub_info{hub_id,version}`` 1; ``fieldhub_uptime_seconds``
* ``fieldhub_devices{level,state}`` registry devices online/offline per administrative level
* ``fieldhub_log_bytes``, ``fieldhub_log_disk_cap_bytes``, ``fieldhub_log_records``,
  ``fieldhub_log_quarantine_held``, ``fieldhub_store_records``
* ``fieldhub_log_backlog_records{consumer,class}`` what each consumer has still to deliver
* ``fieldhub_log_operations_total{op}`` appended, duplicates, commits, evicted, compacted, errors
* ``fieldhub_log_counter{name}`` the log's persisted counters (quarantined by source, ...)
* ``fieldhub_component_state{component,state}`` 1 for the component's current state
* ``fieldhub_component_value{component,key}`` every numeric value on the component's status line
* ``fieldhub_link_up{link}``, ``fieldhub_link_value{link,key}`` each uplink bearer (RTT, loss, bytes)
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from fieldhub import __version__
from fieldhub.core.component import STATES, Command, HubContext, make_status
from fieldhub.core.errors import ConfigError
from fieldhub.core.worker import ServerLoop
from fieldhub.metrics.config import MetricsConfig

Status = Callable[[], Mapping[str, Any]]
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


class StatusCollector:
    """A prometheus-client collector over a status snapshot."""

    def __init__(self, status: Status) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        s = self._status()
        info = GaugeMetricFamily("fieldhub_info", "The hub and its version", labels=["hub_id", "version"])
        info.add_metric([str(s.get("hub_id", "")), __version__], 1)
        yield info
        yield GaugeMetricFamily("fieldhub_uptime_seconds", "Seconds since the hub started",
                                value=float(s.get("uptime_s") or 0))
        devices = GaugeMetricFamily("fieldhub_devices", "Registry devices by administrative level and state",
                                    labels=["level", "state"])
        for level, counts in (s.get("devices", {}).get("by_level") or {}).items():
            for state in ("online", "offline"):
                devices.add_metric([level, state], counts.get(state, 0))
        yield devices
        yield from self._log(s.get("log") or {})
        store = s.get("store") or {}
        if "records" in store:
            yield GaugeMetricFamily("fieldhub_store_records", "Records in the local store",
                                    value=store["records"])
        yield from self._components(s.get("components") or {})

    def _log(self, log: Mapping[str, Any]) -> Iterator[Metric]:
        for key, name, text in (("bytes", "fieldhub_log_bytes", "Size of the durable log on disk (with its WAL)"),
                                ("disk_cap", "fieldhub_log_disk_cap_bytes", "The log's disk cap (0 = none)"),
                                ("records", "fieldhub_log_records", "Records held by the durable log"),
                                ("quarantine_held", "fieldhub_log_quarantine_held",
                                 "Quarantined items waiting for an operator")):
            value = _number(log.get(key))
            if value is not None:
                yield GaugeMetricFamily(name, text, value=value)
        backlog = GaugeMetricFamily("fieldhub_log_backlog_records",
                                    "Records a consumer has still to deliver, by priority class",
                                    labels=["consumer", "class"])
        for consumer, info in (log.get("consumers") or {}).items():
            for cls, n in (info.get("backlog") or {}).items():
                backlog.add_metric([consumer, cls], n)
        yield backlog
        ops = CounterMetricFamily("fieldhub_log_operations", "Durable log operations since the hub started",
                                  labels=["op"])
        for op, n in (log.get("stats") or {}).items():
            ops.add_metric([op], n)
        yield ops
        counters = GaugeMetricFamily("fieldhub_log_counter", "The log's persisted counters", labels=["name"])
        for name, n in (log.get("counters") or {}).items():
            counters.add_metric([name], n)
        yield counters

    def _components(self, components: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
        state = GaugeMetricFamily("fieldhub_component_state", "1 for each component's current state",
                                  labels=["component", "state"])
        values = GaugeMetricFamily("fieldhub_component_value", "Numeric values of each component's status",
                                   labels=["component", "key"])
        link_up = GaugeMetricFamily("fieldhub_link_up", "1 when an uplink bearer is up", labels=["link"])
        link_values = GaugeMetricFamily("fieldhub_link_value", "Numeric values of each uplink bearer",
                                        labels=["link", "key"])
        for name, st in components.items():
            for candidate in STATES:
                state.add_metric([name, candidate], 1.0 if st.get("state") == candidate else 0.0)
            for key, value in st.items():
                number = _number(value)
                if number is not None and key != "state":
                    values.add_metric([name, key], number)
            for link in (st.get("detail") or {}).get("links") or []:
                if not isinstance(link, Mapping) or "name" not in link:
                    continue
                link_up.add_metric([str(link["name"])], 1.0 if link.get("state") == "up" else 0.0)
                for key, value in link.items():
                    number = _number(value)
                    if number is not None:
                        link_values.add_metric([str(link["name"]), key], number)
        yield from (state, values, link_up, link_values)


class MetricsExporter:
    """The ``metrics`` component: serves ``GET /metrics`` on ``[metrics] listen``."""

    name = "metrics"

    def __init__(self, listen: str, status: Status) -> None:
        host, _, port = listen.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatusCollector(status))
        self.scrapes = 0
        self.errors = 0
        self.last_error = ""
        self._loop: ServerLoop | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        exporter = self

        class _Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server name
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "only /metrics here")
                    return
                body = exporter.render()
                self.send_response(200 if body is not None else 500)
                self.send_header("Content-Type", CONTENT_TYPE)
                payload = body if body is not None else f"# error: {exporter.last_error}\n".encode()
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the http.server name
                pass  # scrapes are counted, not logged

        try:
            server = http.server.ThreadingHTTPServer((self.host, self.port), _Handler)
        except OSError as exc:
            raise ConfigError(f"cannot serve /metrics on {self.host}:{self.port}: {exc.strerror or exc} "
                              f"/ 无法监听指标端口", key="metrics.listen") from None
        self._loop = ServerLoop("metrics", server)

    def render(self) -> bytes | None:
        """One scrape: the exposition text, or None (and the reason kept) when the status failed."""
        try:
            body = generate_latest(self.registry)
        except Exception as exc:  # noqa: BLE001 - a failing scrape must not take the endpoint down
            with self._lock:
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
            return None
        with self._lock:
            self.scrapes += 1
        return body

    def stop(self, timeout: float = 2.0) -> None:
        """Stop serving within ``timeout``; idempotent."""
        if self._loop is not None:
            self._loop.stop(timeout)
            self._loop = None

    def status(self) -> dict[str, Any]:
        return make_status("ok" if self._loop is not None else "off", listen=f"{self.host}:{self.port}",
                           scrapes=self.scrapes, errors=self.errors, last_error=self.last_error or None)

    def commands(self) -> dict[str, Command]:
        return {}


def build(ctx: HubContext, cfg: MetricsConfig) -> MetricsExporter | None:
    """Hub component builder: the endpoint when ``[metrics] listen`` is set."""
    if not cfg.listen or ctx.live_status is None:
        return None
    return MetricsExporter(cfg.listen, ctx.live_status)

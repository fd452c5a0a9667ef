"""The Grafana dashboard's InfluxQL runs against what the sink writes (real InfluxDB 1.6)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from fieldhub.core.log import DurableLog
from fieldhub.core.records import Priority, Record
from fieldhub.sinks.influx.writer import InfluxSink, make_transport
from tests.conftest import ROOT
from tests.influx_servers import InfluxDB1, influxdb1  # noqa: F401
from tests.test_influx_sink import v1_config

DASHBOARD = ROOT / "deploy" / "grafana" / "fieldhub-influxdb.json"


def grafana_macros(q: str) -> str:
    return (q.replace("$timeFilter", "time > now() - 1h").replace("$__interval", "1m")
            .replace("/^$county$/", "/^(420102)$/"))


def test_every_dashboard_query_returns_data_for_the_sink_schema(influxdb1: InfluxDB1, tmp_path: Path) -> None:
    now = time.time_ns() - 5_000_000_000
    place = {"admin_code": "420102001001", "level": "village", "county": "420102", "model": "m"}
    recs = [
        Record.make("water_level", "wl-1", now, {"level_m": 2.3}, tags={**place, "kind": "water_gauge"}, key=1),
        Record.make("position", "uav-1", now, {"lat": 30.5, "lon": 114.3, "alt_m": 120.0},
                    tags={**place, "kind": "drone", "level": "county"}, priority=Priority.POSITION, key=2),
        Record.make("link_state", "vehicle-01", now, {"up": True, "rtt_ms": 610.0},
                    tags={**place, "kind": "vehicle", "link": "satcom"}, key=3),
        Record.make("hub_alarm", "vehicle-01", now, {"event": "log_eviction", "message": "x"},
                    tags={**place, "kind": "vehicle"}, priority=Priority.ALARM, key=4),
    ]
    log = DurableLog(tmp_path / "log.db")
    sink = InfluxSink(make_transport(v1_config(influxdb1)), log, hub_id="vehicle-01")
    sink.write(recs)
    sink.close()
    log.close()
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = [t["query"] for p in dash["panels"] for t in p["targets"]]
    queries += [v["query"] for v in dash["templating"]["list"]]
    assert len(queries) >= 8
    for q in queries:
        result = influxdb1.query(grafana_macros(q), "fieldhub")["results"][0]
        assert result.get("series"), f"no data for dashboard query {q!r}"
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for subject in ("devices", "link", "alarms", "drone", "water"):
        assert subject in titles

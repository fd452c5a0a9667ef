"""The ``[influx]`` config section (imports nothing heavy: loading the config must not pull in
influxdb-client)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from fieldhub.core.config import Duration
from fieldhub.sinks.influx.lineproto import SAME_TS_POLICIES


@dataclass(frozen=True)
class InfluxConfig:
    """[influx] the InfluxDB sink (schema in docs/influxdb.md); an empty url disables it."""

    #: server URL, e.g. http://127.0.0.1:8086 ("" = no InfluxDB sink)
    url: str = ""
    #: "v2": the v2 write API via influxdb-client (InfluxDB 2.x/3.x, 1.8+, VictoriaMetrics);
    #: "v1": POST /write (InfluxDB 1.x)
    mode: str = "v2"
    #: v2: API token
    token: str = ""
    #: v2: organisation
    org: str = ""
    #: v2: bucket
    bucket: str = "fieldhub"
    #: v1: database
    database: str = "fieldhub"
    #: v1: retention policy ("" = the database's default)
    retention_policy: str = ""
    #: v1: user name ("" = no authentication)
    username: str = ""
    #: v1: password
    password: str = ""
    #: v1: create the database when the server says it does not exist
    create_database: bool = True
    #: points per write request
    batch_size: int = 5000
    #: a partial batch is written once its oldest record waited this long (alarms go at once)
    batch_time: Duration = Duration(1.0)
    #: write requests in flight at once
    concurrency: int = 2
    #: gzip request bodies (worth it over satellite links; costs CPU on a local server)
    gzip: bool = True
    #: gzip level 1 (fast) .. 9 (small)
    gzip_level: int = 6
    #: per-request timeout
    timeout: Duration = Duration(10.0)
    #: first retry delay after a failed write (doubles, with jitter, up to retry_max)
    retry_initial: Duration = Duration(0.5)
    #: longest retry delay
    retry_max: Duration = Duration(60.0)
    #: two records of one series at the same timestamp: "nudge" keeps both (offset below the
    #: timestamp's precision), "overwrite" keeps the last
    same_timestamp: str = "nudge"
    #: where a new influx cursor starts: "earliest" (everything in the log) or "latest"
    start: str = "earliest"
    #: https: CA certificate file (PEM) to trust ("" = the system's CAs)
    tls_ca: str = ""
    #: https: verify the server's certificate (false only for testing)
    tls_verify: bool = True

    def validate(self) -> None:
        if self.mode not in ("v1", "v2"):
            raise ValueError(f"mode {self.mode!r}: expected v1 or v2")
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url {self.url!r}: expected http://HOST:PORT or https://HOST:PORT")
        if self.mode == "v2" and self.url and not self.bucket:
            raise ValueError("mode v2 needs a bucket")
        if self.mode == "v1" and self.url and not self.database:
            raise ValueError("mode v1 needs a database")
        if self.batch_size < 1 or self.concurrency < 1:
            raise ValueError("batch_size and concurrency must be at least 1")
        if not 1 <= self.gzip_level <= 9:
            raise ValueError("gzip_level must be 1..9")
        if self.same_timestamp not in SAME_TS_POLICIES:
            raise ValueError(f"same_timestamp {self.same_timestamp!r}: expected nudge or overwrite")
        if self.start not in ("earliest", "latest"):
            raise ValueError(f"start {self.start!r}: expected earliest or latest")
        if self.tls_ca and not os.path.isfile(self.tls_ca):
            raise ValueError(f"tls_ca {self.tls_ca!r}: no such file")

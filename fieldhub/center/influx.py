"""The center's optional InfluxDB 1.x output, through the InfluxDB feature's line-protocol encoder and transport."""

from __future__ import annotations

from collections.abc import Sequence

from fieldhub.core.errors import StorageError
from fieldhub.core.records import Record
from fieldhub.sinks.influx.http import InfluxWriteError, V1Transport
from fieldhub.sinks.influx.lineproto import Encoder


class CenterInflux:
    """Writes a batch (tagged with its hub) before the center acks it; raises StorageError so it is not acked."""

    def __init__(self, url: str, database: str, *, username: str = "", password: str = "") -> None:
        self.transport = V1Transport(url, database, username=username, password=password, timeout=30,
                                     create_database=True)
        self.encoder = Encoder()

    def write(self, records: Sequence[Record], hub_id: str) -> None:
        lines = [self.encoder.line(r.kind, r.device_id, r.ts, r.fields, {**r.tags, "hub": hub_id}, r.id)
                 for r in records]
        body = b"\n".join(line for line in lines if line)
        if not body:
            return
        try:
            self.transport.post(body)
        except InfluxWriteError as exc:
            raise StorageError(f"InfluxDB {self.transport.base}: {exc}") from None

    def close(self) -> None:
        self.transport.close()

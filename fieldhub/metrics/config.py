"""The ``[metrics]`` config section (imports nothing heavy: prometheus-client loads only when on)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricsConfig:
    """[metrics] a Prometheus /metrics endpoint for the hub's state (off unless listen is set)."""

    #: HOST:PORT to serve /metrics on, e.g. "127.0.0.1:9108" (keep it on loopback or a management
    #: network: it tells who is online); "" = off
    listen: str = ""

    def validate(self) -> None:
        if self.listen:
            host, sep, port = self.listen.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"listen {self.listen!r}: expected HOST:PORT, e.g. 127.0.0.1:9108")


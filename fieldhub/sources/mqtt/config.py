"""The ``[mqtt]`` config section (imports nothing heavy: loading the config must not pull in paho)."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlparse

from fieldhub.core.config import Duration, Size


@dataclass(frozen=True)
class MqttConfig:
    """[mqtt] the broker the hub ingests from and dispatches to."""

    #: mqtt://HOST:PORT or mqtts://HOST:PORT; "" disables MQTT
    broker: str = ""
    #: the hub's own broker account (written by `fieldhub provision broker-config`)
    username: str = ""
    password: str = ""
    #: client id of the hub's persistent session ("" = fieldhub-<hub id>); a broker configured by
    #: `fieldhub provision broker-config` ties client ids to user names, so there it is the username
    client_id: str = ""
    #: CA certificate for mqtts:// ("" = system CAs)
    tls_ca: str = ""
    #: messages the broker may have in flight to the hub, unacknowledged (MQTT 5 Receive Maximum)
    receive_maximum: int = 2000
    #: how long the broker keeps the hub's session (and queues for it) while the hub is away
    session_expiry: Duration = Duration(7 * 86400)
    #: larger payloads are quarantined
    max_payload: Size = Size(65536)
    #: a device timestamp further than this from hub time is kept but flagged clock=suspect
    max_clock_skew: Duration = Duration(300)
    #: how long (device_id, seq) pairs are remembered for dedupe after the log compacted them
    dedupe_horizon: Duration = Duration(86400)
    #: silence after which a device is offline, per device kind ("default" for the rest)
    offline_after: dict[str, Duration] = field(default_factory=lambda: {"default": Duration(600)})
    #: where `fieldhub provision` keeps mosquitto.conf, password_file and acl_file ("" = <data_dir>/broker)
    broker_dir: str = ""
    #: the hub process's Python thread switch interval while MQTT runs ("0" keeps Python's 5ms).
    #: paho's receive thread, the ingest worker and the log writer hand each message over; a
    #: shorter interval cuts how long each waits for the interpreter lock (p99 latency, see BENCHMARKS.md)
    switch_interval: Duration = Duration(0.001)

    def validate(self) -> None:
        if self.broker:
            u = urlparse(self.broker)
            if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not u.hostname:
                raise ValueError(f"broker {self.broker!r}: expected mqtt://HOST:PORT or mqtts://HOST:PORT")
        if not 1 <= self.receive_maximum <= 65535:
            raise ValueError("receive_maximum must be 1..65535")


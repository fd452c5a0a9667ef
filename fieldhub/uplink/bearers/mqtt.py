"""The IP bearer: one MQTT connection to the center's broker (TLS with client certificates)."""

from __future__ import annotations

import ssl
import threading
import time
import uuid
from collections import deque
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fieldhub.core.errors import ConfigError, TransportError
from fieldhub.uplink.bearers.base import PROBE_WINDOW, AckHandler
from fieldhub.uplink.config import LinkConfig


def mqtt_client(url: str, client_id: str, *, protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv311, ca_file: str = "",
                cert_file: str = "", key_file: str = "", username: str = "", password: str = "",
                **kw: Any) -> tuple[mqtt.Client, str, int]:
    """A paho 2.x client for ``mqtt://`` / ``mqtts://`` with optional client-certificate TLS."""
    u = urlparse(url)
    if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not u.hostname:
        raise ConfigError(f"broker URL {url!r}", expected="mqtt://HOST:PORT or mqtts://HOST:PORT")
    tls = u.scheme in ("mqtts", "ssl") or bool(cert_file)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, **kw)
    if tls:
        try:
            client.tls_set(ca_certs=ca_file or None, certfile=cert_file or None, keyfile=key_file or None,
                           cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"TLS files for {url}: {exc}") from None
    if username:
        client.username_pw_set(username, password or None)
    client.reconnect_delay_set(0.5, 10)  # type: ignore[arg-type]  # paho declares int seconds; it waits any float
    return client, u.hostname, u.port or (8883 if tls else 1883)


class MqttBearer:
    """An IP link: one MQTT connection to the center's broker, probed by QoS 1 round trips."""

    def __init__(self, config: LinkConfig, hub_id: str, on_ack: AckHandler,
                 probe_timeout: float = 5.0) -> None:
        self.name, self.config, self.hub_id = config.name, config, hub_id
        self.on_ack = on_ack
        self.uplink_topic = f"fh/hub/{hub_id}/uplink"
        self.ack_topic = f"fh/hub/{hub_id}/ack"
        self.probe_topic = f"fh/hub/{hub_id}/probe/{config.name}"
        self.probe_timeout = probe_timeout
        self.client, self.host, self.port = mqtt_client(
            config.url, f"fh-{hub_id}-{config.name}-{uuid.uuid4().hex[:6]}", ca_file=config.ca_file,
            cert_file=config.cert_file, key_file=config.key_file, username=config.username,
            password=config.password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.max_queued_messages_set(0)
        self._connected = False
        self._lock = threading.Lock()
        self._running = False
        self._probes: dict[int, float] = {}
        self._results: deque[float | None] = deque(maxlen=PROBE_WINDOW)
        self._fails = 0
        self.rtt: float | None = None
        self.bytes_sent = 0
        self.batches_sent = 0
        self.connects = 0
        self.last_error = ""
        self.since = time.time_ns()

    # ------------------------------------------------------------------ paho callbacks
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            self.last_error = f"connect refused: {rc}"
            return
        client.subscribe(self.ack_topic, qos=1)
        with self._lock:
            self._connected = True
            self._fails = 0
            self._probes.clear()
            self.connects += 1
            self.since = time.time_ns()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        with self._lock:
            if self._connected:
                self.since = time.time_ns()
            self._connected = False
            self.last_error = f"disconnected: {rc}"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.ack_topic:
            self.on_ack(self.name, bytes(msg.payload))  # paho's payload is bytes; bytes() of bytes is itself

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: Any = None, props: Any = None) -> None:
        with self._lock:
            t0 = self._probes.pop(mid, None)
            if t0 is not None:
                rtt = time.monotonic() - t0
                self.rtt = rtt if self.rtt is None else 0.7 * self.rtt + 0.3 * rtt
                self._results.append(rtt)
                self._fails = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._running = True
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()

    def stop(self, timeout: float = 5.0) -> None:
        """Idempotent. The network thread is paho's own (``loop_start``); after ``disconnect``
        it ends at its next select (at most about a second)."""
        if not self._running:
            return
        self._running = False
        self.client.disconnect()
        self.client.loop_stop()

    # ------------------------------------------------------------------ link state
    def up(self) -> bool:
        with self._lock:
            return self._connected and self._fails < 2

    def probe(self) -> None:
        """Expire overdue probes (counted lost), then send a new one if connected."""
        now = time.monotonic()
        with self._lock:
            for mid, t0 in list(self._probes.items()):
                if now - t0 > self.probe_timeout:
                    del self._probes[mid]
                    self._results.append(None)
                    self._fails += 1
                    if self._fails == 2:
                        self.since = time.time_ns()
            connected = self._connected
        if not connected:
            return
        info = self.client.publish(self.probe_topic, b"", qos=1)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            with self._lock:
                if info.mid not in self._probes and not info.is_published():
                    self._probes[info.mid] = now

    @property
    def loss(self) -> float | None:
        with self._lock:
            if not self._results:
                return None
            return sum(1 for r in self._results if r is None) / len(self._results)

    def send(self, payload: bytes) -> None:
        """Publish one batch (QoS 1); the center's ack, not the PUBACK, completes it."""
        if not self.up():
            raise TransportError(f"link {self.name} is down")
        info = self.client.publish(self.uplink_topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise TransportError(f"link {self.name}: publish failed ({mqtt.error_string(info.rc)})")
        self.bytes_sent += len(payload)
        self.batches_sent += 1

    def status(self) -> dict[str, Any]:
        loss = self.loss
        return {"name": self.name, "kind": self.config.kind, "url": self.config.url,
                "state": "up" if self.up() else ("stalled" if self._connected else "down"),
                "since_ns": self.since, "rtt_ms": round(self.rtt * 1000, 1) if self.rtt is not None else None,
                "loss": round(loss, 3) if loss is not None else None, "bytes_sent": self.bytes_sent,
                "batches_sent": self.batches_sent, "connects": self.connects, "cost": self.config.cost,
                "classes": list(self.config.classes), "last_error": self.last_error}

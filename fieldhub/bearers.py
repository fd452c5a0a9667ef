"""Bearers: how bytes reach the center over one link (MQTT over an IP link; Beidou RDSS short messages).

A bearer is small on purpose (``start, stop, up, send, probe, status``); the link manager
(``links.py``) decides which one carries what. The Beidou bearer speaks the RDSS text
protocol 2.1 (``$CCTXA`` / ``$BDFKI`` / ``$CCICA``) through pyserial's ``serial_for_url``,
so it drives a real terminal, a pseudo-terminal or ``socket://`` alike.
"""

from __future__ import annotations

import ssl
import threading
import time
import uuid
from collections import deque
from typing import Any, Callable, Protocol
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from drivers import beidou_rdss
from drivers.sentence import SentenceFramer, sentence, split_fields

from .errors import ConfigError, TransportError
from .uplink_config import LinkConfig

AckHandler = Callable[[bytes], None]
PROBE_WINDOW = 20


class Bearer(Protocol):
    """One link to the center."""

    name: str
    config: LinkConfig

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def up(self) -> bool: ...

    def status(self) -> dict[str, Any]: ...


def mqtt_client(url: str, client_id: str, *, protocol: int = mqtt.MQTTv311, ca_file: str = "",
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
    client.reconnect_delay_set(0.5, 10)
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
            self.on_ack(msg.payload)

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
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()

    def stop(self) -> None:
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


# ----------------------------------------------------------------------------- Beidou RDSS
def txa(dest_card: str, payload: bytes) -> bytes:
    """``$CCTXA,<dest>,1,1,<HEX>*hh``: a normal (not express) message in code mode carrying raw bytes.

    The RDSS driver's own TXA encoder carries GBK text; the uplink's payload is binary, so it
    goes in code mode as hex, framed by the driver's ``sentence``.
    """
    return sentence(f"CCTXA,{dest_card.zfill(7)},1,{beidou_rdss.ENC_CODE},{payload.hex().upper()}")


def rdss_fields(frame: Any) -> list[str]:
    return [x.decode("ascii", "replace") for x in split_fields(frame.raw)]


class BeidouBearer:
    """Beidou RDSS short messages: one ``$CCTXA`` per card interval, confirmed by ``$BDFKI``."""

    def __init__(self, config: LinkConfig, hub_id: str, *, on_line: Callable[[list[str]], None] | None = None) -> None:
        self.name, self.config, self.hub_id = config.name, config, hub_id
        self.on_line = on_line
        self._port: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._fki: deque[dict[str, Any]] = deque(maxlen=8)
        self.bad_frames = 0
        self._fki_event = threading.Event()
        self.card: dict[str, Any] = {}
        self.last_send = 0.0
        self.last_heard = 0.0
        self.bytes_sent = 0
        self.messages_sent = 0
        self.refused = 0
        self.last_error = ""
        self.since = time.time_ns()
        self.rtt: float | None = None
        self._query_sent = 0.0

    @property
    def interval(self) -> float:
        iv = self.card.get("interval") or 0
        return max(float(self.config.card_interval), float(iv))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"beidou-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._close()

    def _close(self) -> None:
        if self._port is not None:
            try:
                self._port.close()
            except OSError:
                pass
            self._port = None

    def _open(self) -> None:
        import serial

        try:
            self._port = serial.serial_for_url(self.config.url, baudrate=115200, timeout=0.2)
        except (serial.SerialException, OSError, ValueError) as exc:
            self.last_error = f"cannot open {self.config.url}: {exc}"
            self._port = None

    def _run(self) -> None:
        framer = beidou_rdss.framer()
        next_query = 0.0
        while not self._stop.is_set():
            if self._port is None:
                self._open()
                if self._port is None:
                    self._stop.wait(2)
                    continue
            now = time.monotonic()
            try:
                if now >= next_query:  # card query doubles as the link probe
                    self._port.write(beidou_rdss.encode({"cmd": "ica"}))
                    self._query_sent = now
                    next_query = now + 10
                data = self._port.read(self._port.in_waiting or 1)
            except OSError as exc:
                self.last_error = f"serial: {exc}"
                self._close()
                continue
            if not data:
                continue
            for frame in framer.feed(data):
                if frame.ok:
                    self._handle(frame)
                else:
                    self.bad_frames += 1

    def _handle(self, frame: Any) -> None:
        self.last_heard = time.monotonic()
        raw = split_fields(frame.raw)
        kind = raw[0][2:]
        if kind in (b"ICI", b"ICP"):
            info = beidou_rdss.card_info(raw) if kind == b"ICI" else beidou_rdss.card_info_bd3(raw)
            self.rtt = time.monotonic() - self._query_sent
            self.card = {"card": info["card"], "interval": info["interval_s"], "level": info["comm_level"],
                         "present": info["present"]}
        elif kind == b"FKI":
            self._fki.append(beidou_rdss.feedback(raw))
            self._fki_event.set()
        if self.on_line is not None:
            self.on_line(rdss_fields(frame))

    def up(self) -> bool:
        return (self._port is not None and bool(self.card.get("present"))
                and time.monotonic() - self.last_heard < 30)

    def ready(self) -> bool:
        """Up and the card interval has passed since the last send."""
        return self.up() and time.monotonic() - self.last_send >= self.interval

    def send(self, payload: bytes, timeout: float = 5.0) -> None:
        """Send one short message (code mode, hex content); raises TransportError if refused."""
        if not self.up():
            raise TransportError(f"link {self.name}: no Beidou card/terminal")
        self._fki.clear()
        self._fki_event.clear()
        line = txa(self.config.dest_card, payload)
        try:
            self._port.write(line)
        except (OSError, AttributeError) as exc:
            raise TransportError(f"link {self.name}: serial write failed: {exc}") from None
        self.last_send = time.monotonic()
        if not self._fki_event.wait(timeout):
            raise TransportError(f"link {self.name}: no $BDFKI feedback within {timeout:.0f}s")
        fki = self._fki[-1]  # BD-2 ($BDFKI,TXA,...) and BD-3 ($BDFKI,hhmmss,TCQ,...) forms, via the driver
        if not fki["executed"]:
            self.refused += 1
            self.last_error = f"send refused: {fki}"
            raise TransportError(f"link {self.name}: terminal refused the send (wait {fki['wait_s']} s)")
        self.bytes_sent += len(payload)
        self.messages_sent += 1

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "beidou", "url": self.config.url,
                "state": "up" if self.up() else "down", "since_ns": self.since,
                "rtt_ms": round(self.rtt * 1000, 1) if self.rtt is not None else None, "loss": None,
                "bytes_sent": self.bytes_sent, "messages_sent": self.messages_sent, "refused": self.refused,
                "card": self.card, "interval_s": self.interval, "cost": self.config.cost,
                "classes": list(self.config.classes), "last_error": self.last_error}

"""The village fleet: N simulated devices as real MQTT clients, each with its own credentials.

All clients share one thread and one epoll selector (paho's external-loop hooks), so
thousands of devices fit in one process. Each device publishes QoS 1 on its own
``fh/<id>/up/<channel>`` topics with a last will, plausible values (diurnal rain and
temperature, a flood wave on water levels, draining batteries), and optional misbehaviour:
malformed payloads, duplicate publishes, skewed clocks, bursts, CBOR bodies and disconnect
storms. ``sent`` counts messages the broker acknowledged (PUBACK), by category.
"""

from __future__ import annotations

import heapq
import math
import random
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import cbor2
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

KINDS = ("rain_gauge", "water_level", "handheld", "sat_phone", "checkin", "ptz")
WILL = b'{"online": false}'


@dataclass
class FleetOptions:
    broker: str
    devices: int = 10
    #: messages per second per device
    rate: float = 1.0
    seconds: float = 10.0
    #: [{"id", "password", "kind"}]; None = anonymous clients named <prefix>NNNN
    credentials: list[dict[str, str]] | None = None
    prefix: str = "v"
    malformed: float = 0.0
    duplicates: float = 0.0
    clock_skew: float = 0.0
    bursts: float = 0.0
    storm_every: float = 0.0
    storm_fraction: float = 0.2
    cbor: float = 0.0
    seed: int = 1
    drain_timeout: float = 60.0


@dataclass
class SimDevice:
    id: str
    kind: str
    password: str | None
    client: mqtt.Client | None = None
    seq: int = 0
    battery: float = 100.0
    skew_ms: int = 0
    use_cbor: bool = False
    connected: bool = False
    pending: dict[int, str] = field(default_factory=dict)
    last_payload: tuple[str, bytes] | None = None
    down_until: float = 0.0


def fleet_ids(n: int, prefix: str = "v") -> list[tuple[str, str]]:
    """Device ids and kinds the anonymous fleet uses (``provision fleet`` makes the same)."""
    return [(f"{prefix}{i:04d}", KINDS[i % len(KINDS)]) for i in range(n)]


class Fleet:
    """Runs the fleet until ``seconds`` pass (0 = until stop()); ``result()`` has the counts."""

    def __init__(self, opts: FleetOptions) -> None:
        self.o = opts
        self.rng = random.Random(opts.seed)
        u = urlparse(opts.broker)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 1883
        self.sel = selectors.DefaultSelector()
        creds = opts.credentials or [{"id": i, "kind": k} for i, k in fleet_ids(opts.devices, opts.prefix)]
        if len(creds) < opts.devices:
            raise ValueError(f"{opts.devices} devices asked, credentials for {len(creds)} only")
        self.devices = [SimDevice(c["id"], c.get("kind") or KINDS[i % len(KINDS)], c.get("password"))
                        for i, c in enumerate(creds[:opts.devices])]
        self.counts = {"valid": 0, "malformed": 0, "duplicates": 0, "dropped": 0,
                       "disconnects": 0, "reconnects": 0, "refused": 0, "published": 0}
        self.by_channel: dict[str, int] = {}
        self._stop = threading.Event()
        self.started = 0.0
        self.elapsed = 0.0
        for d in self.devices:
            if self.rng.random() < opts.clock_skew:
                d.skew_ms = self.rng.choice((-1, 1)) * self.rng.randint(600, 7200) * 1000
            d.use_cbor = self.rng.random() < opts.cbor
            d.battery = self.rng.uniform(40, 100)

    # ---------------------------------------------------------------- client plumbing
    def _client(self, d: SimDevice) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=d.id, clean_session=False,
                        protocol=mqtt.MQTTv311, userdata=d)
        if d.password is not None:
            c.username_pw_set(d.id, d.password)
        c.will_set(f"fh/{d.id}/up/status", WILL, qos=1)
        c.max_inflight_messages_set(50)
        c.max_queued_messages_set(0)
        c.on_socket_open = self._sock_open
        c.on_socket_close = self._sock_close
        c.on_socket_register_write = self._sock_want_write
        c.on_socket_unregister_write = self._sock_read_only
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        return c

    def _sock_open(self, cl, ud, sock) -> None:
        self.sel.register(sock, selectors.EVENT_READ, cl)

    def _sock_want_write(self, cl, ud, sock) -> None:
        self.sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, cl)

    def _sock_read_only(self, cl, ud, sock) -> None:
        self.sel.modify(sock, selectors.EVENT_READ, cl)

    def _sock_close(self, cl, ud, sock) -> None:
        try:
            self.sel.unregister(sock)
        except (KeyError, ValueError):
            pass

    def _on_connect(self, cl, d: SimDevice, flags, reason, props) -> None:
        if reason.is_failure:
            self.counts["refused"] += 1
            d.connected = False
            return
        d.connected = True

    def _on_disconnect(self, cl, d: SimDevice, flags, reason, props) -> None:
        d.connected = False

    def _on_publish(self, cl, d: SimDevice, mid, reason, props) -> None:
        cat = d.pending.pop(mid, None)
        if cat is not None:
            self.counts[cat] += 1

    def _connect(self, d: SimDevice) -> None:
        if d.client is None:
            d.client = self._client(d)
            d.client.connect(self.host, self.port, keepalive=60)
        else:
            d.client.reconnect()

    # ---------------------------------------------------------------- payloads
    def _values(self, d: SimDevice, t: float) -> tuple[str, dict[str, Any]]:
        day = 2 * math.pi * ((t / 86400.0) % 1.0)
        flood = max(0.0, math.sin((t % 3600) / 3600 * math.pi))  # an hourly flood wave
        d.battery = max(0.0, d.battery - self.rng.uniform(0.0, 0.02))
        base = {"battery_pct": round(d.battery, 1)}
        if d.seq % 7 == 3:
            return "status", {**base, "rssi_dbm": round(self.rng.uniform(-110, -60), 1),
                              "temp_c": round(18 + 8 * math.sin(day) + self.rng.gauss(0, 0.5), 1)}
        if d.kind in ("handheld", "checkin") and d.seq % 3 == 1:
            return "position", {"lat": round(30.59 + self.rng.uniform(-0.05, 0.05), 6),
                                "lon": round(114.30 + self.rng.uniform(-0.05, 0.05), 6),
                                "alt_m": round(self.rng.uniform(20, 60), 1)}
        if d.kind == "rain_gauge":
            return "telemetry", {**base, "rain_mm": round(abs(self.rng.gauss(2 + 20 * flood, 1)), 2)}
        if d.kind == "water_level":
            level = round(2.0 + 4.0 * flood + self.rng.gauss(0, 0.05), 3)
            if level > 5.8 and d.seq % 11 == 0:
                return "alarm", {"level_m": level, "_alarm": "water level above warning line"}
            return "telemetry", {**base, "level_m": level, "flow_m3s": round(50 + 300 * flood, 1)}
        if d.kind == "sat_phone":
            return "telemetry", {**base, "csq": self.rng.randint(5, 31), "registered": True}
        if d.kind == "checkin":
            return "telemetry", {**base, "people": 120, "missing": max(0, int(8 - 8 * flood))}
        if d.kind == "ptz":
            return "telemetry", {**base, "pan_deg": round(self.rng.uniform(0, 359), 1),
                                 "tilt_deg": round(self.rng.uniform(-30, 30), 1)}
        return "telemetry", {**base, "uptime_s": int(t) % 100000}

    def _message(self, d: SimDevice, now: float) -> tuple[str, bytes, str]:
        d.seq += 1
        ts = int(now * 1000) + d.skew_ms
        if self.rng.random() < self.o.malformed:
            bad = self.rng.choice((
                b'{"seq": ' + str(d.seq).encode() + b', "fields": {"rain_mm": }',
                orjson.dumps({"ts": ts, "fields": {"x": 1}}),
                orjson.dumps({"seq": "seven", "ts": ts, "fields": {"x": 1}}),
                orjson.dumps({"seq": d.seq, "ts": ts, "fields": {"lat": 123.0, "lon": 0}}),
                bytes(self.rng.getrandbits(8) for _ in range(24)),
            ))
            channel = "position" if b'"lat"' in bad else "telemetry"
            return f"fh/{d.id}/up/{channel}", bad, "malformed"
        channel, fields = self._values(d, now)
        body: dict[str, Any] = {"seq": d.seq, "ts": ts}
        if channel == "alarm":
            body["alarm"] = fields.pop("_alarm")
            body["severity"] = "major"
        body["fields"] = fields
        self.by_channel[channel] = self.by_channel.get(channel, 0) + 1
        if d.use_cbor:
            payload = cbor2.dumps({"s": body.pop("seq"), "t": body.pop("ts"), "f": body.pop("fields"), **body})
        else:
            payload = orjson.dumps(body)
        return f"fh/{d.id}/up/{channel}", payload, "valid"

    def _publish(self, d: SimDevice, topic: str, payload: bytes, cat: str) -> None:
        assert d.client is not None
        info = d.client.publish(topic, payload, qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            self.counts["dropped"] += 1  # e.g. MQTT_ERR_QUEUE_SIZE: paho refused it; not sent
            return
        d.pending[info.mid] = cat
        self.counts["published"] += 1
        if cat == "valid":
            d.last_payload = (topic, payload)

    def _send(self, d: SimDevice, now: float) -> None:
        topic, payload, cat = self._message(d, now)
        self._publish(d, topic, payload, cat)
        if d.last_payload and self.rng.random() < self.o.duplicates:
            self._publish(d, *d.last_payload, "duplicates")

    # ---------------------------------------------------------------- the loop
    def stop(self) -> None:
        self._stop.set()

    def run(self) -> dict[str, Any]:
        o = self.o
        self.started = time.monotonic()
        errors: list[OSError] = []
        for d in self.devices:
            try:
                self._connect(d)
            except OSError as exc:
                self.counts["refused"] += 1
                errors.append(exc)
        if errors and len(errors) == len(self.devices):
            raise OSError(f"no device could connect: {errors[0]}")
        period = 1.0 / o.rate if o.rate > 0 else math.inf
        heap = [(self.started + self.rng.uniform(0, min(period, 5.0)), i) for i in range(len(self.devices))]
        heapq.heapify(heap)
        end = self.started + o.seconds if o.seconds > 0 else math.inf
        next_misc = self.started + 1.0
        next_storm = self.started + o.storm_every if o.storm_every > 0 else math.inf
        next_burst = self.started + 2.0 if o.bursts > 0 else math.inf
        while not self._stop.is_set() and time.monotonic() < end:
            now = time.monotonic()
            wall = time.time()
            while heap and heap[0][0] <= now:
                due, i = heapq.heappop(heap)
                d = self.devices[i]
                if d.client is not None and now >= d.down_until:
                    self._send(d, wall)
                heapq.heappush(heap, (max(due + period, now - 1.0), i))
            if now >= next_burst:
                for d in self.rng.sample(self.devices, max(1, int(len(self.devices) * o.bursts))):
                    for _ in range(20):
                        self._send(d, wall)
                next_burst = now + 2.0
            if now >= next_storm:
                self._storm(now)
                next_storm = now + o.storm_every
            if now >= next_misc:
                self._misc(now)
                next_misc = now + 1.0
            timeout = max(0.0, min((heap[0][0] if heap else now + 0.05) - now, 0.05))
            self._poll(timeout)
        self.elapsed = time.monotonic() - self.started
        self._drain()
        return self.result()

    def _poll(self, timeout: float) -> None:
        for key, mask in self.sel.select(timeout):
            cl: mqtt.Client = key.data
            if mask & selectors.EVENT_READ:
                cl.loop_read()
            if mask & selectors.EVENT_WRITE:
                cl.loop_write()

    def _misc(self, now: float) -> None:
        for d in self.devices:
            if d.client is None:
                continue
            d.client.loop_misc()
            if not d.connected and now >= d.down_until and d.client.socket() is None:
                try:
                    d.client.reconnect()
                    self.counts["reconnects"] += 1
                except OSError:
                    d.down_until = now + 1.0

    def _storm(self, now: float) -> None:
        """Drop a share of the fleet's connections abruptly (their wills fire), back in 0.5-3 s."""
        for d in self.rng.sample(self.devices, max(1, int(len(self.devices) * self.o.storm_fraction))):
            sock = d.client.socket() if d.client else None
            if not isinstance(sock, socket.socket):  # None while down (a TLS socket is one too)
                continue
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            d.down_until = now + self.rng.uniform(0.5, 3.0)
            self.counts["disconnects"] += 1

    def _drain(self) -> None:
        """Wait for every PUBACK (reconnecting as needed), then disconnect cleanly (no wills)."""
        deadline = time.monotonic() + self.o.drain_timeout
        while time.monotonic() < deadline and any(d.pending for d in self.devices):
            now = time.monotonic()
            self._poll(0.05)
            if now >= getattr(self, "_drain_misc", 0):
                for d in self.devices:
                    d.down_until = 0
                self._misc(now)
                self._drain_misc = now + 0.5
        for d in self.devices:
            if d.client is not None and d.connected:
                d.client.disconnect()
        end = time.monotonic() + 2.0
        while time.monotonic() < end and self.sel.get_map():
            self._poll(0.05)
        for d in self.devices:
            if d.client is not None and d.client.socket() is not None:
                d.client.loop_write()

    def result(self) -> dict[str, Any]:
        c = self.counts
        unacked = sum(len(d.pending) for d in self.devices)
        return {"devices": len(self.devices), "seconds": round(self.elapsed, 1),
                "sent": c["valid"] + c["malformed"], "valid": c["valid"], "malformed": c["malformed"],
                "duplicates": c["duplicates"], "unacked": unacked, "dropped": c["dropped"],
                "disconnects": c["disconnects"], "reconnects": c["reconnects"], "refused": c["refused"],
                "by_channel": dict(sorted(self.by_channel.items())),
                "last_seq": {d.id: d.seq for d in self.devices},
                "rate_msg_s": round((c["valid"] + c["malformed"] + c["duplicates"]) / self.elapsed, 1)
                if self.elapsed else 0.0}


class DemoVillage:
    """`fieldhub demo`: 24 village devices over the demo's private broker, a little misbehaviour."""

    name = "village"
    needs_broker = True

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.fleet: Fleet | None = None
        self._thread: threading.Thread | None = None
        self._result: dict[str, Any] = {}

    def setup(self) -> None:
        for dev_id, kind in fleet_ids(24, "demo-v"):
            self.ctx.add_device(dev_id, kind, self.ctx.admin_code)

    def start(self) -> None:
        self.fleet = Fleet(FleetOptions(self.ctx.broker, devices=24, rate=1.0, seconds=0, prefix="demo-v",
                                        malformed=0.02, duplicates=0.02, clock_skew=0.1, cbor=0.2,
                                        drain_timeout=5.0))
        self._thread = threading.Thread(target=self._run, name="demo-village", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self.fleet is not None
        self._result = self.fleet.run()

    def stop(self) -> None:
        if self.fleet is not None:
            self.fleet.stop()
        if self._thread is not None:
            self._thread.join()

    def summary(self) -> dict[str, Any]:
        if self._result:
            r = self._result
            return {"sent": r["sent"], "malformed": r["malformed"], "duplicates": r["duplicates"]}
        c = self.fleet.counts if self.fleet else {}
        return {"sent": c.get("valid", 0) + c.get("malformed", 0)}

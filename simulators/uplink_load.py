"""Realistic synthetic uplink load: village sensor telemetry and drone positions, with noise."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

from fieldhub.core.records import Priority, Record

VILLAGE_TAGS = {"kind": "hydro_station", "model": "rtu-v2", "admin_code": "420102001001",
                "level": "village", "county": "420102"}


def village_telemetry(n_devices: int, seconds: int, *, t0_ns: int, period_s: float = 1.0,
                      seed: int = 1, jitter_ms: int = 0) -> list[Record]:
    """Hydrological/weather stations: 6 fields each, sensor-resolution values with noise."""
    rng = random.Random(seed)
    out: list[Record] = []
    state = [{"water": 2.0 + rng.random(), "rain": 0.0, "temp": 18 + 4 * rng.random(),
              "hum": 60 + 20 * rng.random(), "bat": 12.6, "rssi": -70 - rng.randint(0, 20)}
             for _ in range(n_devices)]
    steps = int(seconds / period_s)
    for step in range(steps):
        for i, s in enumerate(state):
            s["water"] += rng.gauss(0, 0.002)
            if rng.random() < 0.05:
                s["rain"] += 0.2
            s["temp"] += rng.gauss(0, 0.03)
            s["hum"] = min(100.0, max(0.0, s["hum"] + rng.gauss(0, 0.1)))
            s["bat"] -= 0.0001
            jitter = rng.randint(-jitter_ms, jitter_ms) * 1_000_000 if jitter_ms else 0
            ts = t0_ns + int(step * period_s * 1e9) + jitter
            out.append(Record.make(
                "hydro", f"village-{i:03d}", ts,
                {"water_level_m": round(s["water"], 3), "rain_mm": round(s["rain"], 1),
                 "temp_c": round(s["temp"], 2), "humidity_pct": round(s["hum"], 1),
                 "battery_v": round(s["bat"], 2), "rssi_dbm": s["rssi"] + rng.randint(-1, 1)},
                tags={**VILLAGE_TAGS, "station": f"village-{i:03d}"}, priority=Priority.TELEMETRY,
                source="mqtt"))
    return out


def drone_positions(n_drones: int, seconds: int, *, t0_ns: int, rate_hz: int = 5,
                    seed: int = 2) -> list[Record]:
    """MAVLink GLOBAL_POSITION_INT-like positions (1e-7 deg, mm, cm/s, cdeg) with GNSS noise."""
    rng = random.Random(seed)
    out: list[Record] = []
    for d in range(n_drones):
        lat, lon, alt = 30.5928 + d * 0.01, 114.3055 + d * 0.01, 120.0
        hdg = rng.uniform(0, 360)
        for step in range(seconds * rate_hz):
            hdg = (hdg + rng.gauss(0, 1.5)) % 360
            speed = 8 + rng.gauss(0, 0.3)
            lat += speed * math.cos(math.radians(hdg)) / rate_hz / 111_320
            lon += speed * math.sin(math.radians(hdg)) / rate_hz / 96_000
            alt += rng.gauss(0, 0.05)
            ts = t0_ns + step * (1_000_000_000 // rate_hz)
            out.append(Record.make(
                "position", f"drone-{d}", ts,
                {"lat": round(lat + rng.gauss(0, 2e-6), 7), "lon": round(lon + rng.gauss(0, 2e-6), 7),
                 "alt_m": round(alt, 3), "vx_cms": int(speed * 100 * math.cos(math.radians(hdg))),
                 "vy_cms": int(speed * 100 * math.sin(math.radians(hdg))),
                 "hdg_cdeg": int(hdg * 100)},
                tags={"kind": "drone", "model": "px4", "admin_code": "420102000000", "level": "county"},
                priority=Priority.POSITION, source="mavlink"))
    return out


def alarm(device_id: str, ts_ns: int, n: int = 0, *, lat: float = 30.5928, lon: float = 114.3055) -> Record:
    """A landslide alarm with position (what goes over a Beidou short message)."""
    return Record.make("alarm", device_id, ts_ns,
                       {"code": 301, "severity": 2, "lat": lat, "lon": lon, "alt_m": 35.2,
                        "event": "landslide"},
                       tags={"kind": "geo_monitor", "level": "village"},
                       priority=Priority.ALARM, source="mqtt", key=f"alarm-{n}")


def stream(n: int, *, t0_ns: int, seed: int = 3) -> Iterator[Record]:
    """An endless-ish mix for soaks: telemetry from 20 stations at 1 Hz, indexed by key."""
    rng = random.Random(seed)
    for i in range(n):
        dev = i % 20
        yield Record.make("hydro", f"village-{dev:03d}", t0_ns + (i // 20) * 1_000_000_000,
                          {"water_level_m": round(2 + rng.random() / 10, 3), "seq": i},
                          priority=Priority.TELEMETRY, source="soak", key=i)

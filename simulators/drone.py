"""Simulated ArduCopter drones over real MAVLink sockets: missions, battery, GPS loss, commands with acks."""

from __future__ import annotations

import math
import random
import socket
import threading
import time
from typing import Any

from pymavlink import mavutil

from drivers.mavlink import check_signature, mav, new_parser, signer, sync_signing_clock
from fieldhub.sources.mavlink.endpoints import Endpoint, make_endpoint

EARTH_R = 6378137.0
COPTER = mavutil.mode_mapping_acm  # number -> name
COPTER_BY_NAME = {v: k for k, v in COPTER.items()}
TICK_S = 0.1
HOME = (30.5928, 114.3055)  # Wuhan


class SimDrone:
    """One ArduCopter-like quad: flies a square mission, obeys RTL/LAND/mode/goto/arm, drains its battery."""

    def __init__(self, sysid: int, home: tuple[float, float], *, key: bytes | None = None,
                 rng: random.Random | None = None, gps_loss: bool = True, lossy: bool = False) -> None:
        self.sysid = sysid
        self.home = home
        self.key = key
        self.rng = rng or random.Random(sysid)
        self.enc = signer(key, sysid, 1)
        self.verifier = signer(key, sysid, 1) if key else None
        self.gps_loss, self.lossy = gps_loss, lossy
        self.n = self.e = 0.0   # metres from home
        self.alt = 0.0          # metres above home
        self.vn = self.ve = self.vu = 0.0
        self.yaw = 0.0
        self.armed = True
        self.mode = COPTER_BY_NAME["AUTO"]
        self.battery = 100.0 - self.rng.uniform(0, 15)
        self.gps_ok_until = time.monotonic() + self.rng.uniform(40, 120)
        self.gps_bad_until = 0.0
        side = self.rng.uniform(80, 160)
        self.mission = [(side, 0.0, 40.0), (side, side, 40.0), (0.0, side, 40.0), (0.0, 0.0, 40.0)]
        self.wp = 0
        self.target: tuple[float, float, float] | None = None
        self.landed_since: float | None = None
        self.rtl_phase = ""
        self.t = 0.0
        self.seen_confirm0: set[int] = set()
        self.pending_acks: list[tuple[float, int, int, tuple[int, int]]] = []  # (due, command, result, to)
        self.reply_to = (254, 190)
        self.texts: list[tuple[int, str]] = [(6, f"ArduCopter V4.5.7 sim {sysid}"), (6, "Mission: 1 WP")]
        self.battery_warned = False
        self.stats = {"commands": 0, "acks": 0, "rejected_unsigned": 0}

    # ---------------------------------------------------------------- physics
    @property
    def mode_name(self) -> str:
        return COPTER.get(self.mode, str(self.mode))

    def _goal(self) -> tuple[float, float, float] | None:
        name = self.mode_name
        if name == "AUTO":
            return self.mission[self.wp]
        if name == "GUIDED":
            return self.target
        if name == "RTL":
            if self.rtl_phase == "climb":
                return (self.n, self.e, max(self.alt, 30.0))
            if self.rtl_phase == "return":
                return (0.0, 0.0, max(self.alt, 30.0))
            return (0.0, 0.0, -1.0)
        if name == "LAND":
            return (self.n, self.e, -1.0)
        return (self.n, self.e, self.alt)  # LOITER, ALT_HOLD, BRAKE...: hold

    def step(self, dt: float) -> None:
        self.t += dt
        now = time.monotonic()
        if self.gps_loss and now > self.gps_ok_until and not self.gps_bad_until:
            self.gps_bad_until = now + self.rng.uniform(3, 6)
            self.texts.append((3, "GPS Glitch"))
        if self.gps_bad_until and now > self.gps_bad_until:
            self.gps_bad_until = 0.0
            self.gps_ok_until = now + self.rng.uniform(60, 180)
            self.texts.append((6, "GPS Glitch cleared"))
        if not self.armed:
            self.vn = self.ve = self.vu = 0.0
            self._on_ground(now)
            return
        goal = self._goal()
        if goal is not None:
            gn, ge, ga = goal
            dn, de, da = gn - self.n, ge - self.e, ga - self.alt
            dist = math.hypot(dn, de)
            speed = min(10.0, dist * 0.5)
            want_n, want_e = (dn / dist * speed, de / dist * speed) if dist > 0.01 else (0.0, 0.0)
            want_u = max(-1.5 if self.mode_name in ("LAND", "RTL") else -2.5, min(3.0, da))
            acc = 3.0 * dt
            self.vn += max(-acc, min(acc, want_n - self.vn))
            self.ve += max(-acc, min(acc, want_e - self.ve))
            self.vu += max(-acc, min(acc, want_u - self.vu))
            if dist > 1:
                self.yaw = math.atan2(de, dn)
            self._progress(dist, abs(da))
        self.n += self.vn * dt
        self.e += self.ve * dt
        self.alt = max(0.0, self.alt + self.vu * dt)
        speed = math.hypot(self.vn, self.ve)
        self.battery = max(0.0, self.battery - dt * (0.03 + 0.004 * speed))
        if self.battery < 25 and not self.battery_warned:
            self.battery_warned = True
            self.texts.append((2, "Battery Failsafe: RTL"))
            self._set_mode("RTL")
        if self.alt <= 0.05 and self.vu <= 0 and self.mode_name in ("LAND", "RTL") and self.rtl_phase != "climb":
            self.armed = False
            self.alt = 0.0
            self.texts.append((6, "Land complete, disarming"))

    def _progress(self, dist: float, dalt: float) -> None:
        name = self.mode_name
        if name == "AUTO" and dist < 3 and dalt < 2:
            self.wp = (self.wp + 1) % len(self.mission)
            self.texts.append((6, f"Reached waypoint #{self.wp + 1}"))
        elif name == "RTL":
            if self.rtl_phase == "climb" and dalt < 1:
                self.rtl_phase = "return"
            elif self.rtl_phase == "return" and dist < 2:
                self.rtl_phase = "land"

    def _on_ground(self, now: float) -> None:
        """Back on the ground: swap the battery if low, then take off on the mission again."""
        if self.landed_since is None:
            self.landed_since = now
        if now - self.landed_since > 15 and self.mode_name not in ("LAND",):
            if self.battery < 40:
                self.battery = 100.0
                self.battery_warned = False
            self.landed_since = None
            self.armed = True
            self.wp = 0
            self._set_mode("AUTO")
            self.texts.append((6, "Arming motors"))

    def _set_mode(self, name: str) -> None:
        self.mode = COPTER_BY_NAME[name]
        if name == "RTL":
            self.rtl_phase = "climb"

    # ---------------------------------------------------------------- messages out
    def latlon(self) -> tuple[float, float]:
        lat = self.home[0] + math.degrees(self.n / EARTH_R)
        lon = self.home[1] + math.degrees(self.e / (EARTH_R * math.cos(math.radians(self.home[0]))))
        return lat, lon

    def messages(self, tick: int, rate_hz: float) -> list[Any]:
        out: list[Any] = []
        e = self.enc
        every = max(1, round(1 / (rate_hz * TICK_S)))
        lat, lon = self.latlon()
        base = mav.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED | mav.MAV_MODE_FLAG_STABILIZE_ENABLED | \
            (mav.MAV_MODE_FLAG_SAFETY_ARMED if self.armed else 0)
        if tick % 10 == 0:
            out.append(e.heartbeat_encode(mav.MAV_TYPE_QUADROTOR, mav.MAV_AUTOPILOT_ARDUPILOTMEGA, base,
                                          self.mode, mav.MAV_STATE_ACTIVE if self.armed else mav.MAV_STATE_STANDBY))
            volt = 12.0 + 4.6 * self.battery / 100
            cur = int((8 + 2 * math.hypot(self.vn, self.ve)) * 100) if self.armed else 50
            out.append(e.sys_status_encode(0, 0, 0, 500, int(volt * 1000), cur, int(self.battery), 0, 0, 0, 0, 0, 0))
            cells = [int(volt * 250)] * 4 + [65535] * 6
            out.append(e.battery_status_encode(0, mav.MAV_BATTERY_FUNCTION_ALL, mav.MAV_BATTERY_TYPE_LIPO,
                                               2500, cells, cur, int((100 - self.battery) * 50), -1,
                                               int(self.battery)))
        ms = int(self.t * 1000) & 0xFFFFFFFF
        if tick % every == 0:
            hdg = int((math.degrees(self.yaw) % 360) * 100)
            out.append(e.global_position_int_encode(ms, int(lat * 1e7), int(lon * 1e7),
                                                    int((self.alt + 25.0) * 1000), int(self.alt * 1000),
                                                    int(self.vn * 100), int(self.ve * 100), int(-self.vu * 100), hdg))
            out.append(e.attitude_encode(ms, 0.05 * self.vn / 10, -0.05 * self.ve / 10, self.yaw, 0, 0, 0))
        if tick % 5 == 0:
            spd = math.hypot(self.vn, self.ve)
            out.append(e.vfr_hud_encode(spd, spd, int(math.degrees(self.yaw) % 360), 45 if self.armed else 0,
                                        self.alt + 25.0, self.vu))
            fix = 1 if self.gps_bad_until else 3
            sats = 4 if fix == 1 else 14 + self.rng.randrange(4)
            out.append(e.gps_raw_int_encode(int(self.t * 1e6), fix, int(lat * 1e7), int(lon * 1e7),
                                            int((self.alt + 25.0) * 1000), 90 if fix == 3 else 900,
                                            120, int(spd * 100), 65535, sats))
        while self.texts:
            sev, text = self.texts.pop(0)
            out.append(e.statustext_encode(sev, text.encode()[:50]))
        now = time.monotonic()
        due = [a for a in self.pending_acks if a[0] <= now]
        self.pending_acks = [a for a in self.pending_acks if a[0] > now]
        for _, cmd, result, to in due:
            out.append(self._ack(cmd, result, to=to))
        return out

    def _ack(self, command: int, result: int, progress: int = 0, to: tuple[int, int] | None = None) -> Any:
        self.stats["acks"] += 1
        to_sys, to_comp = to or self.reply_to
        return self.enc.command_ack_encode(command, result, progress, 0, to_sys, to_comp)

    # ---------------------------------------------------------------- commands in
    def accepts(self, m: Any) -> bool:
        """With a key, only validly signed commands count (as ArduPilot with signing on)."""
        if self.verifier is None:
            return True
        h = m._header
        if h.incompat_flags & mav.MAVLINK_IFLAG_SIGNED and \
                check_signature(self.verifier, m._msgbuf, h.srcSystem, h.srcComponent):
            return True
        self.stats["rejected_unsigned"] += 1
        return False

    def on_command(self, m: Any) -> list[Any]:
        """Acks to send now (others may follow later from ``pending_acks``)."""
        cmd = m.command
        self.reply_to = (m._header.srcSystem, m._header.srcComponent)
        is_long = m.get_msgId() == mav.MAVLINK_MSG_ID_COMMAND_LONG
        if self.lossy and is_long and m.confirmation == 0 and (cmd not in self.seen_confirm0):
            self.seen_confirm0.add(cmd)
            return []  # the first copy is "lost on the radio": the hub must resend
        self.stats["commands"] += 1
        R = mav
        if cmd == R.MAV_CMD_NAV_RETURN_TO_LAUNCH:
            if not self.armed:
                return [self._ack(cmd, R.MAV_RESULT_DENIED)]
            self._set_mode("RTL")
            self.texts.append((6, "RTL"))
            return [self._ack(cmd, R.MAV_RESULT_ACCEPTED)]
        if cmd == R.MAV_CMD_NAV_LAND:
            self._set_mode("LAND")
            return [self._ack(cmd, R.MAV_RESULT_ACCEPTED)]
        if cmd == R.MAV_CMD_DO_SET_MODE:
            number = int(m.param2)
            if number not in COPTER:
                return [self._ack(cmd, R.MAV_RESULT_FAILED)]
            self._set_mode(COPTER[number])
            if COPTER[number] == "GUIDED" and self.target is None:
                self.target = (self.n, self.e, self.alt)
            return [self._ack(cmd, R.MAV_RESULT_ACCEPTED)]
        if cmd == R.MAV_CMD_COMPONENT_ARM_DISARM:
            if m.param1 >= 0.5:
                if self.gps_bad_until:
                    self.texts.append((3, "PreArm: Need 3D Fix"))
                    return [self._ack(cmd, R.MAV_RESULT_FAILED)]
                self.armed = True
                self.landed_since = None
                return [self._ack(cmd, R.MAV_RESULT_ACCEPTED)]
            if self.alt > 0.5 and int(m.param2) != 21196:
                self.texts.append((3, "Disarm: vehicle is flying"))
                return [self._ack(cmd, R.MAV_RESULT_FAILED)]
            self.armed = False
            return [self._ack(cmd, R.MAV_RESULT_ACCEPTED)]
        if cmd == R.MAV_CMD_DO_REPOSITION and not is_long:
            lat, lon = m.x / 1e7, m.y / 1e7
            n = math.radians(lat - self.home[0]) * EARTH_R
            e = math.radians(lon - self.home[1]) * EARTH_R * math.cos(math.radians(self.home[0]))
            self.target = (n, e, float(m.z))
            self._set_mode("GUIDED")
            # the long-running kind: IN_PROGRESS first, the final result a moment later
            self.pending_acks.append((time.monotonic() + 0.3, cmd, R.MAV_RESULT_ACCEPTED, self.reply_to))
            return [self._ack(cmd, R.MAV_RESULT_IN_PROGRESS, 0)]
        return [self._ack(cmd, R.MAV_RESULT_UNSUPPORTED)]


class DroneSwarm:
    """N simulated drones sharing one MAVLink endpoint (several system ids on one link)."""

    def __init__(self, count: int = 2, connect: str = "udpout:127.0.0.1:14550", *, sysid_base: int = 1,
                 keys: dict[int, bytes] | None = None, rate_hz: float = 5.0, lossy: bool = False,
                 gps_loss: bool = True, seed: int = 7, home: tuple[float, float] = HOME) -> None:
        rng = random.Random(seed)
        keys = keys or {}
        self.drones = {}
        for i in range(count):
            sysid = sysid_base + i
            h = (home[0] + rng.uniform(-0.01, 0.01), home[1] + rng.uniform(-0.01, 0.01))
            self.drones[sysid] = SimDrone(sysid, h, key=keys.get(sysid), rng=random.Random(seed * 1000 + sysid),
                                          gps_loss=gps_loss, lossy=lossy)
        self.rate_hz = rate_hz
        self.endpoint: Endpoint = make_endpoint(connect, self._on_data, "sim", "--connect")
        self._parser = new_parser()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent = 0

    def start(self) -> None:
        self.endpoint.start()
        self._thread = threading.Thread(target=self._run, name="sim-drones", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        self.endpoint.stop()

    def _run(self) -> None:
        tick = 0
        next_t = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                batches = []
                for d in self.drones.values():
                    d.step(TICK_S)
                    msgs = d.messages(tick, self.rate_hz)
                    batches.append(b"".join(self._pack(d, m) for m in msgs))
            for b in batches:
                if b and self.endpoint.send(b):
                    self.sent += 1
            tick += 1
            next_t += TICK_S
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    @staticmethod
    def _pack(d: SimDrone, m: Any) -> bytes:
        sync_signing_clock(d.enc)
        buf = bytes(m.pack(d.enc))
        d.enc.seq = (d.enc.seq + 1) % 256
        return buf

    def _on_data(self, ep: Endpoint, data: bytes, peer: Any) -> None:
        replies: list[bytes] = []
        with self._lock:
            for m in self._parser.parse_buffer(data) or ():
                mid = m.get_msgId()
                if mid not in (mav.MAVLINK_MSG_ID_COMMAND_LONG, mav.MAVLINK_MSG_ID_COMMAND_INT):
                    continue
                d = self.drones.get(m.target_system)
                if d is None or not d.accepts(m):
                    continue
                replies += [self._pack(d, a) for a in d.on_command(m)]
        if replies:
            ep.send(b"".join(replies), peer)

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {f"sysid {s}": f"{d.mode_name} {'armed' if d.armed else 'disarmed'} "
                                  f"alt {d.alt:.0f} m batt {d.battery:.0f}%" for s, d in self.drones.items()}


def free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class DemoDrones:
    """Two drones for ``fieldhub demo``, over real UDP to the hub's udpin endpoint."""

    name = "drones"

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.port = free_udp_port()
        self.swarm: DroneSwarm | None = None

    def setup(self) -> None:
        self.ctx.overrides["mavlink.endpoints"] = [f"udpin:127.0.0.1:{self.port}"]
        self.ctx.overrides["mavlink.drones"] = {"1": "uav-01", "2": "uav-02"}
        for i in (1, 2):
            self.ctx.add_device(f"uav-0{i}", "drone", self.ctx.admin_code, unit=f"county drone team, sysid {i}")

    def start(self) -> None:
        self.swarm = DroneSwarm(2, f"udpout:127.0.0.1:{self.port}")
        self.swarm.start()

    def stop(self) -> None:
        if self.swarm:
            self.swarm.stop()

    def summary(self) -> dict[str, Any]:
        return self.swarm.summary() if self.swarm else {}

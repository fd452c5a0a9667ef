"""The MAVLink command protocol: COMMAND_LONG/INT, ack matched by command id, resend, IN_PROGRESS."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from drivers.mavlink import MAV_RESULT, command_name, mav, mode_number

from .errors import FieldhubError, ValidationError

RESULT_IN_PROGRESS = mav.MAV_RESULT_IN_PROGRESS
ACTIONS = ("rtl", "land", "arm", "disarm", "mode", "goto")


@dataclass(frozen=True)
class CommandSpec:
    """One command to one drone; ``use_int`` sends COMMAND_INT (positions as 1e-7 degrees)."""

    action: str
    command: int
    params: tuple[float, ...] = (0, 0, 0, 0, 0, 0, 0)
    use_int: bool = False
    frame: int = mav.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT
    detail: str = ""

    def encode(self, encoder: Any, sysid: int, compid: int, confirmation: int) -> Any:
        p = self.params
        if self.use_int:
            # COMMAND_INT has no confirmation field; a resend is the same message again
            return encoder.command_int_encode(sysid, compid, self.frame, self.command, 0, 0,
                                              p[0], p[1], p[2], p[3], int(p[4]), int(p[5]), p[6])
        return encoder.command_long_encode(sysid, compid, self.command, confirmation & 0xFF, *p)


def build(action: str, args: list[str], autopilot: int | None, vehicle_type: int | None) -> CommandSpec:
    """The command for an operator action; ValidationError says what was expected."""
    if action == "rtl":
        return CommandSpec(action, mav.MAV_CMD_NAV_RETURN_TO_LAUNCH)
    if action == "land":
        return CommandSpec(action, mav.MAV_CMD_NAV_LAND)
    if action in ("arm", "disarm"):
        return CommandSpec(action, mav.MAV_CMD_COMPONENT_ARM_DISARM,
                           (1.0 if action == "arm" else 0.0, 0, 0, 0, 0, 0, 0))
    if action == "mode":
        if len(args) != 1:
            raise ValidationError("mode needs one NAME, e.g. RTL, LOITER, GUIDED / 需要一个模式名")
        if autopilot is None or vehicle_type is None:
            raise FieldhubError("no HEARTBEAT from this drone yet, so its mode table is unknown "
                                "/ 尚未收到该无人机心跳，无法确定模式表")
        try:
            base, main, sub = mode_number(autopilot, vehicle_type, args[0])
        except KeyError as exc:
            raise ValidationError(f"unknown mode {args[0]!r} for this autopilot; known: {exc.args[0]} "
                                  f"/ 未知飞行模式") from None
        return CommandSpec(action, mav.MAV_CMD_DO_SET_MODE, (float(base), float(main), float(sub), 0, 0, 0, 0),
                           detail=args[0].upper())
    if action == "goto":
        try:
            lat, lon, alt = (float(a) for a in args)
        except ValueError:
            raise ValidationError("goto needs LAT LON ALT (degrees, degrees, metres above home) "
                                  "/ 需要 纬度 经度 高度") from None
        if not (-90 <= lat <= 90 and -180 <= lon <= 180 and -100 <= alt <= 10000):
            raise ValidationError(f"goto {lat} {lon} {alt}: out of range / 坐标超出范围")
        return CommandSpec(action, mav.MAV_CMD_DO_REPOSITION,
                           (-1.0, float(mav.MAV_DO_REPOSITION_FLAGS_CHANGE_MODE), 0, math.nan,
                            round(lat * 1e7), round(lon * 1e7), alt), use_int=True,
                           detail=f"{lat:.7f},{lon:.7f},{alt:g}")
    raise ValidationError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")


@dataclass
class _Pending:
    event: threading.Event = field(default_factory=threading.Event)
    acks: list[Any] = field(default_factory=list)


class CommandRunner:
    """Sends a command and waits for its final COMMAND_ACK, resending with confirmation+1 on timeout."""

    def __init__(self, send: Callable[[Any, CommandSpec, int], None], *, timeout: float = 1.0,
                 attempts: int = 5, progress_timeout: float = 30.0, system_id: int = 254) -> None:
        self.send = send
        self.timeout = timeout
        self.attempts = attempts
        self.progress_timeout = progress_timeout
        self.system_id = system_id
        self._pending: dict[tuple[int, int], _Pending] = {}
        self._lock = threading.Lock()
        self.stats = {"sent": 0, "resent": 0, "acks": 0, "unmatched_acks": 0, "no_ack": 0}

    def on_ack(self, sysid: int, msg: Any) -> bool:
        """Hand a COMMAND_ACK to the command waiting for it; False if none is (e.g. a GCS's command)."""
        target = getattr(msg, "target_system", 0)
        if target not in (0, self.system_id):
            return False
        with self._lock:
            p = self._pending.get((sysid, msg.command))
            if p is None:
                self.stats["unmatched_acks"] += 1
                return False
            p.acks.append(msg)
        self.stats["acks"] += 1
        p.event.set()
        return True

    def execute(self, drone: Any, spec: CommandSpec) -> dict[str, Any]:
        key = (drone.sysid, spec.command)
        p = _Pending()
        with self._lock:
            if key in self._pending:
                raise FieldhubError(f"a {command_name(spec.command)} command to {drone.device_id} is "
                                    f"still waiting for its ack / 上一条同类指令仍在等待应答")
            self._pending[key] = p
        t0 = time.monotonic()
        sent = 0
        result: int | None = None
        progress = -1
        in_progress = False
        try:
            deadline = 0.0
            while result is None:
                now = time.monotonic()
                if now >= deadline:
                    if in_progress or sent >= self.attempts:
                        break
                    self.send(drone, spec, sent)
                    self.stats["sent" if sent == 0 else "resent"] += 1
                    sent += 1
                    deadline = time.monotonic() + self.timeout
                p.event.wait(max(0.0, deadline - time.monotonic()))
                with self._lock:
                    acks, p.acks = p.acks, []
                    p.event.clear()
                for ack in acks:
                    if ack.result == RESULT_IN_PROGRESS:
                        in_progress = True
                        progress = getattr(ack, "progress", 255)
                        deadline = time.monotonic() + self.progress_timeout
                    else:
                        result = ack.result
                        break
        finally:
            with self._lock:
                self._pending.pop(key, None)
        if result is None:
            self.stats["no_ack"] += 1
        name = MAV_RESULT.get(result, str(result)) if result is not None else \
            ("in_progress_timeout" if in_progress else "no_ack")
        out: dict[str, Any] = {
            "drone": drone.device_id, "sysid": drone.sysid, "action": spec.action,
            "command": spec.command, "command_name": command_name(spec.command),
            "result": -1 if result is None else result, "result_name": name,
            "accepted": result == 0, "attempts": sent, "in_progress_seen": in_progress,
            "latency_ms": round((time.monotonic() - t0) * 1000, 1)}
        if progress >= 0 and progress != 255:
            out["progress_pct"] = progress
        if spec.detail:
            out["detail"] = spec.detail
        return out

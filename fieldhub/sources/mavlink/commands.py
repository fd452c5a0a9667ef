"""The MAVLink command protocol: COMMAND_LONG/INT, ack matched by command id, resend, IN_PROGRESS."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from drivers.mavlink import MAV_RESULT, CommandSpec, command_name, mav
from fieldhub.core.errors import FieldhubError

RESULT_IN_PROGRESS = mav.MAV_RESULT_IN_PROGRESS
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

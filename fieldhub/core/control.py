"""The control socket: a Unix socket in the data dir speaking one JSON object per line.

Request ``{"cmd": "status", "args": {...}}``; reply ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "..."}``. Handlers are plain functions registered by name: the hub
registers each component's ``commands()`` as ``<name>.<command>`` (``drone.command``,
``uplink.status``...), so nothing here changes when a part adds one.
"""

from __future__ import annotations

import os
import socket
import socketserver
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from fieldhub.core.errors import FieldhubError, HubNotRunning
from fieldhub.core.worker import ServerLoop

Handler = Callable[[dict[str, Any]], Any]
SOCKET_NAME = "hub.sock"


class ControlServer:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.handlers: dict[str, Handler] = {}
        self._loop: ServerLoop | None = None

    def register(self, name: str, handler: Handler) -> None:
        if name in self.handlers:
            raise ValueError(f"control command {name} registered twice")
        self.handlers[name] = handler

    def start(self) -> None:
        handlers = self.handlers

        class _Conn(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                for line in self.rfile:
                    if not line.strip():
                        continue
                    reply = _dispatch(handlers, line)
                    self.wfile.write(orjson.dumps(reply, default=str) + b"\n")
                    self.wfile.flush()

        if self.path.exists() or self.path.is_socket():
            self.path.unlink()
        old = os.umask(0o117)  # owner and group only
        try:
            server = socketserver.ThreadingUnixStreamServer(str(self.path), _Conn)
        finally:
            os.umask(old)
        self._loop = ServerLoop("control", server)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop accepting (the accept loop is joined for at most ``timeout``), remove the socket. Idempotent."""
        if self._loop is not None:
            self._loop.stop(timeout)
            self._loop = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def _dispatch(handlers: dict[str, Handler], line: bytes) -> dict[str, Any]:
    try:
        req = orjson.loads(line)
        cmd = req["cmd"]
        args = req.get("args") or {}
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return {"ok": False, "error": "bad request: expected {\"cmd\": ..., \"args\": {...}}"}
    handler = handlers.get(cmd)
    if handler is None:
        part = cmd.partition(".")[0] if isinstance(cmd, str) else ""
        if part and not any(name.startswith(part + ".") for name in handlers):
            return {"ok": False, "error": f"this hub runs without {part}: it is not configured (see its section "
                                          f"in `fieldhub init`'s sample config) / 该 hub 未启用 {part}（未配置）"}
        return {"ok": False, "error": f"the hub does not know the request {cmd!r} (a newer or older fieldhub?) "
                                      f"/ hub 不认识该请求"}
    try:
        return {"ok": True, "result": handler(args)}
    except FieldhubError as exc:
        return {"ok": False, "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a failing handler must not take the socket down
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def call(data_dir: Path | str, cmd: str, args: dict[str, Any] | None = None,
         timeout: float = 30.0) -> Any:
    """Send one request to the running hub; raises HubNotRunning if none answers."""
    path = Path(data_dir) / SOCKET_NAME
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise HubNotRunning(f"no hub is running with data dir {data_dir} "
                            f"(no answer on {path}) / 该数据目录没有运行中的 hub") from None
    try:
        sock.sendall(orjson.dumps({"cmd": cmd, "args": args or {}}) + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise HubNotRunning("the hub closed the control connection")
            buf += chunk
    except TimeoutError:
        raise FieldhubError(f"the hub did not answer {cmd!r} within {timeout:.0f}s") from None
    finally:
        sock.close()
    reply = orjson.loads(buf)
    if not reply.get("ok"):
        raise FieldhubError(reply.get("error", "hub error"))
    return reply.get("result")

"""The component contract: what every long-lived part of the hub is, and how it reports.

A component (a source, a sink, the uplink, later alarms, drills, imagery) has

* ``name`` — also its config section and its prefix on the control socket;
* ``start()`` — raises (with a one-line message) when it cannot start;
* ``stop(timeout)`` — idempotent, never waits longer than ``timeout`` seconds in all;
* ``status()`` — one shape for all: ``{"state": "ok"|"retrying"|"down"|"off", <scalars>,
  "detail": {...}}``: top-level values are numbers, strings, booleans or None that a script
  can read and a screen can show on one line; everything nested lives under ``detail``;
* ``commands()`` — ``{"presence": fn, ...}``, registered on the control socket as
  ``<name>.presence``; each ``fn(args: dict) -> JSON-able`` result. A component whose socket
  commands predate its name sets ``command_prefix`` (the drones answer ``drone.list``).

``ComponentSpec`` names one part for the hub's list (``fieldhub.hub.COMPONENTS``): its name,
its config section and class (as ``"module:Class"``, imported only when config is loaded,
and the class's module imports nothing heavy), and its builder (``"module:function"``,
imported only when a hub is built). A builder is typed on its own section and lives in its
part (which never imports ``fieldhub.hub``)::

    def build(ctx: HubContext, cfg: MqttConfig) -> MqttIngest | None:   # None = not configured
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from fieldhub.core.config import Config
from fieldhub.core.log import DurableLog
from fieldhub.core.oplog import OpLog
from fieldhub.core.registry import Registry

State = Literal["ok", "retrying", "down", "off"]
STATES: tuple[str, ...] = ("ok", "retrying", "down", "off")
Command = Callable[[dict[str, Any]], Any]
Scalar = (str, int, float, bool, type(None))


@runtime_checkable
class Component(Protocol):
    """A long-lived part of the hub."""

    name: str

    def start(self) -> None: ...

    def stop(self, timeout: float = 5.0) -> None: ...

    def status(self) -> dict[str, Any]: ...

    def commands(self) -> Mapping[str, Command]: ...


def command_prefix(component: Component) -> str:
    """The prefix of a component's control-socket commands: ``command_prefix`` if set, else its name."""
    prefix: str = getattr(component, "command_prefix", "") or component.name
    return prefix


def make_status(state: str, detail: Mapping[str, Any] | None = None, **scalars: Any) -> dict[str, Any]:
    """A status in the common shape; nested values among ``scalars`` move into ``detail``."""
    if state not in STATES:
        raise ValueError(f"state {state!r}: one of {', '.join(STATES)}")
    out: dict[str, Any] = {"state": state}
    extra: dict[str, Any] = dict(detail or {})
    for key, value in scalars.items():
        if isinstance(value, Scalar):
            out[key] = value
        else:
            extra[key] = value
    out["detail"] = extra
    return out


def check_status(name: str, status: Mapping[str, Any]) -> list[str]:
    """What is wrong with a status's shape (empty when it follows the contract)."""
    problems = []
    if status.get("state") not in STATES:
        problems.append(f"{name}: state {status.get('state')!r} is not one of {', '.join(STATES)}")
    if not isinstance(status.get("detail"), dict):
        problems.append(f"{name}: no 'detail' object")
    for key, value in status.items():
        if key != "detail" and not isinstance(value, Scalar):
            problems.append(f"{name}: {key} is {type(value).__name__}, not a scalar (belongs in detail)")
    return problems


def load_object(ref: str) -> Any:
    """``"package.module:attribute"`` -> the attribute (imported now)."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class ComponentSpec:
    """One entry of the hub's component list."""

    name: str
    #: config section; "" for a component without one
    section: str
    #: "module:Class" of the section's frozen dataclass
    config: str
    #: "module:function" taking (HubContext, section config) and returning a component or None
    builder: str


@dataclass
class HubContext:
    """What a component builder may use; builders pass on only what their part needs."""

    config: Config
    data_dir: Path
    hub_id: str
    log: DurableLog
    registry: Registry
    oplog: OpLog
    #: set when the hub is stopping; long-running parts may wait on it
    stopping: threading.Event = field(default_factory=threading.Event)
    #: the hub's live status (what ``fieldhub status --json`` shows), for parts that report on the
    #: whole hub (the metrics endpoint); None outside a running hub
    live_status: Callable[[], dict[str, Any]] | None = None


#: a builder: (context, its own config section, or None for a component without one) -> component or None
Builder = Callable[[HubContext, Any], Component | None]

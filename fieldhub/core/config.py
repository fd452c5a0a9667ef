"""Typed configuration: one TOML file, overridable by ``FIELDHUB_*`` variables and flags.

Each component owns a frozen dataclass whose fields are its TOML keys. This module knows only
its own sections ([hub], [log]); the caller passes the others as ``{section: "module:Class"}``
(the hub derives them from its component list, ``fieldhub.hub.SECTIONS``); a class is imported
when loading, and its module imports nothing heavy. Precedence: ``--set``/flags,
then environment (``FIELDHUB_<SECTION>_<KEY>``, e.g. ``FIELDHUB_LOG_DISK_CAP=2GiB``), then
the file, then the dataclass default. Every error names the file, the key path and what
was expected.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fieldhub.core.errors import ConfigError


class Duration(float):
    """Seconds; written in TOML as a number or ``"500ms"``, ``"10s"``, ``"5m"``, ``"2h"``, ``"90d"``."""


class Size(int):
    """Bytes; written as a number or ``"512KiB"``, ``"2GiB"``, ``"100MB"``."""


_DUR = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
         "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4, "k": 1024, "m": 1024**2,
         "g": 1024**3}


def parse_duration(value: Any) -> Duration:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Duration(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h|d|w)?\s*", str(value))
    if not m:
        raise ValueError(f"{value!r} is not a duration")
    return Duration(float(m.group(1)) * _DUR[m.group(2) or "s"])


def parse_size(value: Any) -> Size:
    if isinstance(value, int) and not isinstance(value, bool):
        return Size(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _SIZE:
        raise ValueError(f"{value!r} is not a size")
    return Size(int(float(m.group(1)) * _SIZE[m.group(2).lower()]))


# ----------------------------------------------------------------------------- core sections
def default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "fieldhub")


@dataclass(frozen=True)
class HubConfig:
    """[hub] who this hub is and where it keeps its data."""

    id: str = "vehicle-01"
    data_dir: str = field(default_factory=default_data_dir)
    #: administrative code (12 digits) of the unit owning the vehicle, "" if unset
    admin_code: str = ""


@dataclass(frozen=True)
class LogConfig:
    """[log] the durable log."""

    #: group commit: commit at most this long after the first pending append
    commit_interval: Duration = Duration(0.01)
    #: group commit: commit once this many records are pending
    commit_max: int = 2000
    #: disk cap for the log; past it the lowest-priority oldest records are evicted ("0" = none)
    disk_cap: Size = Size(2 * 1024**3)
    #: how often records every consumer has passed are deleted
    compact_interval: Duration = Duration(5.0)


#: the sections this module owns; a component's section comes from the hub's component list
CORE_SECTIONS: dict[str, str] = {
    "hub": "fieldhub.core.config:HubConfig",
    "log": "fieldhub.core.config:LogConfig",
}


def all_sections(sections: Mapping[str, str] | None = None) -> dict[str, str]:
    """The core sections, then ``sections`` (name -> "module:Class") in their order."""
    out = dict(CORE_SECTIONS)
    for name, ref in (sections or {}).items():
        if name in out and out[name] != ref:
            raise ValueError(f"config section [{name}] declared twice ({out[name]}, {ref})")
        out[name] = ref
    return out


def section_class(ref: str) -> type:
    """``"module:Class"`` -> the config class (imported now)."""
    module, _, cls = ref.partition(":")
    klass: type = getattr(importlib.import_module(module), cls)
    return klass


class Config:
    """The loaded configuration: ``config.section("log").disk_cap`` or ``config.log.disk_cap``."""

    def __init__(self, sections: dict[str, Any], path: Path | None) -> None:
        self._sections = sections
        self.path = path

    def section(self, name: str) -> Any:
        return self._sections[name]

    @property
    def hub(self) -> HubConfig:
        section: HubConfig = self._sections["hub"]
        return section

    @property
    def log(self) -> LogConfig:
        section: LogConfig = self._sections["log"]
        return section

    def __getattr__(self, name: str) -> Any:
        try:
            return self._sections[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def data_dir(self) -> Path:
        return Path(self._sections["hub"].data_dir)

    def as_dict(self) -> dict[str, Any]:
        return {k: dataclasses.asdict(v) for k, v in self._sections.items()}


def find_config(explicit: str | None) -> Path | None:
    """The config file to read: ``--config``, ``$FIELDHUB_CONFIG``, ./fieldhub.toml, /etc/fieldhub/fieldhub.toml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("FIELDHUB_CONFIG")
    if env:
        return Path(env)
    for candidate in (Path("fieldhub.toml"), Path("/etc/fieldhub/fieldhub.toml")):
        if candidate.exists():
            return candidate
    return None


def load(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
         env: Mapping[str, str] | None = None, sections: Mapping[str, str] | None = None) -> Config:
    """Load and validate the config. ``overrides`` maps ``section.key`` to values from flags;
    ``sections`` names the components' sections (``fieldhub.hub.load_config`` passes them all)."""
    known = all_sections(sections)
    file = find_config(str(path) if path else None)
    where = str(file) if file else "<defaults>"
    raw: dict[str, Any] = {}
    if file is not None:
        try:
            with open(file, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError("config file not found", file=str(file)) from None
        except PermissionError:
            raise ConfigError("config file not readable (permission denied)", file=str(file)) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"not valid TOML: {exc}", file=str(file)) from None
    for name in raw:
        if name not in known:
            raise ConfigError(f"unknown section [{name}]", file=where, key=name,
                              expected="one of " + ", ".join(sorted(known)))
        if not isinstance(raw[name], dict):
            raise ConfigError("must be a table", file=where, key=name, expected=f"[{name}]")
    layered: dict[str, dict[str, tuple[Any, str]]] = {
        name: {k: (v, where) for k, v in raw.get(name, {}).items()} for name in known}
    for var, value in (os.environ if env is None else env).items():
        if not var.startswith("FIELDHUB_") or var == "FIELDHUB_CONFIG":
            continue
        rest = var[len("FIELDHUB_"):].lower()
        section, _, key = rest.partition("_")
        if section not in known or not key:
            continue
        layered[section][key] = (value, f"environment {var}")
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if section not in known or not key:
            raise ConfigError(f"unknown setting {dotted!r}", file="command line", key=dotted,
                              expected="section.key, sections: " + ", ".join(sorted(known)))
        layered[section][key] = (value, "command line")
    built = {name: _build(section_class(known[name]), layered[name], name) for name in known}
    return Config(built, file)


def _build(cls: type, values: Mapping[str, tuple[Any, str]], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, (value, origin) in values.items():
        if key not in known:
            raise ConfigError("unknown key", file=origin, key=f"{prefix}.{key}",
                              expected="one of " + ", ".join(sorted(known)))
        kwargs[key] = _coerce(hints[key], value, origin, f"{prefix}.{key}")
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc), file=values and next(iter(values.values()))[1] or "<defaults>",
                          key=prefix) from None
    check = getattr(obj, "validate", None)
    if check is not None:
        try:
            check()
        except ValueError as exc:
            raise ConfigError(str(exc), file=next(iter(values.values()))[1] if values else "<defaults>",
                              key=prefix) from None
    return obj


def _coerce(tp: Any, value: Any, origin: str, key: str) -> Any:
    """Turn a TOML/env/flag value into the declared type, or say what was expected."""
    origin_type = typing.get_origin(tp)
    args = typing.get_args(tp)
    try:
        if origin_type in (typing.Union, types.UnionType):
            non_none = [a for a in args if a is not type(None)]
            if value is None or value == "":
                return None
            return _coerce(non_none[0], value, origin, key)
        if tp is Duration:
            return parse_duration(value)
        if tp is Size:
            return parse_size(value)
        if tp is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
        if origin_type in (list, tuple):
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list):
                raise ValueError
            items = [_coerce(args[0], v, origin, f"{key}[{i}]") for i, v in enumerate(value)]
            return tuple(items) if origin_type is tuple else items
        if origin_type is dict:
            if not isinstance(value, dict):
                raise ValueError
            return {str(k): _coerce(args[1], v, origin, f"{key}.{k}") for k, v in value.items()}
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ValueError
            return _build(tp, {k: (v, origin) for k, v in value.items()}, key)
    except ConfigError:
        raise
    except (ValueError, TypeError):
        raise ConfigError(f"bad value {value!r}", file=origin, key=key,
                          expected=_describe(tp)) from None
    return value


def _describe(tp: Any) -> str:
    if tp is Duration:
        return "a duration such as 30s, 5m, 2h or a number of seconds"
    if tp is Size:
        return "a size such as 512MiB, 2GiB or a number of bytes"
    if typing.get_origin(tp) in (list, tuple):
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return f"a table [{tp.__name__}]"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _field_docs(cls: type) -> dict[str, str]:
    """``#:`` comments above each field in the class source (what ``fieldhub init`` prints)."""
    import inspect

    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    pending: list[str] = []
    for line in lines:
        text = line.strip()
        if text.startswith("#:"):
            pending.append(text[2:].strip())
            continue
        m = re.match(r"([a-z_][a-z0-9_]*)\s*:", text)
        if m and pending:
            docs[m.group(1)] = " ".join(pending)
        pending = []
    return docs


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Duration):
        v = float(value)
        for unit, secs in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
            if v >= secs and (v / secs).is_integer():
                return f'"{int(v / secs)}{unit}"'
        return f'"{int(v * 1000)}ms"'
    if isinstance(value, Size):
        v = int(value)
        for unit, n in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
            if v >= n and v % n == 0:
                return f'"{v // n}{unit}"'
        return str(v)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def sample_config(sections: Mapping[str, str] | None = None) -> str:
    """A sample TOML file documenting every key above its commented-out default (the core
    sections, then ``sections``)."""
    out = ["# fieldhub configuration. Every key is shown with its default, commented out.",
           "# Each key can also be set by environment (FIELDHUB_<SECTION>_<KEY>) or by",
           "# `--set section.key=value` on the command line.", ""]
    for name, ref in all_sections(sections).items():
        cls = section_class(ref)
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        out.append(f"# {doc}" if doc else f"# [{name}]")
        out.append(f"[{name}]")
        docs = _field_docs(cls)
        default = cls()
        for f in dataclasses.fields(cls):
            if f.name in docs:
                out.append(f"# {docs[f.name]}")
            value = getattr(default, f.name)
            if dataclasses.is_dataclass(value) or (isinstance(value, list) and value
                                                   and dataclasses.is_dataclass(value[0])):
                out.append(f"# {f.name} = (see docs)")
            else:
                out.append(f"# {f.name} = {_toml_value(value)}")
        out.append("")
    return "\n".join(out)

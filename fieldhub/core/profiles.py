"""Firmware profiles: one TOML file per device model in ``firmware_profiles/``, with ``extends =``."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from fieldhub.core.errors import ConfigError
from firmware_profiles import FAMILIES as _FAMILIES

PROFILE_DIR = Path(__file__).resolve().parents[2] / "firmware_profiles"
#: the serial families, in the one table that names them (see firmware_profiles/__init__.py)
FAMILIES: tuple[str, ...] = tuple(_FAMILIES)
_TOP = {"family": str, "description": str, "device_kind": str, "extends": str, "init": list,
        "serial": dict, "quirks": dict, "rdss": dict, "tiantong": dict, "dmr": dict, "ptz": dict,
        "units": dict}
_SERIAL = {"baud": (int, (300, 4_000_000)), "bytesize": (int, (5, 8)), "stopbits": (int, (1, 2)),
           "parity": (str, ("N", "E", "O", "M", "S"))}


def names(directory: Path = PROFILE_DIR) -> list[str]:
    """Every profile name (file stem), sorted."""
    return sorted(p.stem for p in directory.glob("*.toml"))


def _read(name: str, directory: Path) -> dict[str, Any]:
    path = directory / f"{name}.toml"
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"no firmware profile {name!r} (known: {', '.join(names(directory))})",
                          file=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=str(path)) from None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load(name: str, directory: Path = PROFILE_DIR) -> dict[str, Any]:
    """The profile with its ``extends`` chain merged (child wins), validated; ``name`` is added."""
    chain: list[str] = []
    merged: dict[str, Any] = {}
    current: str | None = name
    while current:
        if current in chain:
            raise ConfigError(f"extends loop: {' -> '.join(chain + [current])}",
                              file=str(directory / f"{name}.toml"), key="extends")
        chain.append(current)
        raw = _read(current, directory)
        merged = _merge(raw, merged) if merged else raw
        current = raw.get("extends")
    merged.pop("extends", None)
    merged["name"] = name
    merged["chain"] = chain
    validate(merged, str(directory / f"{name}.toml"))
    return merged


def validate(profile: dict[str, Any], file: str) -> None:
    """Types and ranges of the keys every family shares; raises ConfigError naming the key."""
    for key, value in profile.items():
        if key in ("name", "chain"):
            continue
        if key not in _TOP:
            raise ConfigError("unknown key", file=file, key=key, expected="one of " + ", ".join(sorted(_TOP)))
        if not isinstance(value, _TOP[key]):
            raise ConfigError(f"bad value {value!r}", file=file, key=key, expected=_TOP[key].__name__)
    if profile.get("family") not in FAMILIES:
        raise ConfigError(f"bad family {profile.get('family')!r}", file=file, key="family",
                          expected="one of " + ", ".join(FAMILIES))
    if not profile.get("description"):
        raise ConfigError("missing", file=file, key="description", expected="a one-line description")
    serial = profile.get("serial", {})
    for key, (tp, allowed) in _SERIAL.items():
        if key not in serial:
            raise ConfigError("missing", file=file, key=f"serial.{key}", expected=tp.__name__)
        v = serial[key]
        if tp is int:
            lo, hi = allowed
            ok = isinstance(v, int) and not isinstance(v, bool) and int(lo) <= v <= int(hi)
        else:
            ok = isinstance(v, str) and v in allowed
        if not ok:
            raise ConfigError(f"bad value {v!r}", file=file, key=f"serial.{key}",
                              expected=f"{tp.__name__} in {allowed}")
    for item in profile.get("init", []):
        if not isinstance(item, str) or any(c in item for c in "\r\n"):
            raise ConfigError(f"bad init command {item!r}", file=file, key="init", expected="one-line strings")
    fam = profile["family"]
    section = _FAMILIES[fam].section
    numbers = {"rdss": ("service_interval_s", "max_message_bits", "feedback_timeout_s", "max_retries"),
               "tiantong": ("poll_interval_s", "command_timeout_s", "sms_timeout_s"),
               "ptz": ("address", "poll_interval_s", "reply_timeout_s", "max_speed_dps")}
    if section:
        sec = profile.get(section)
        if not isinstance(sec, dict):
            raise ConfigError("missing", file=file, key=section, expected=f"a [{section}] table")
        for key in numbers[section]:
            v = sec.get(key)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"bad value {v!r}", file=file, key=f"{section}.{key}",
                                  expected="a number >= 0")
    if fam == "tiantong" and profile["tiantong"].get("sms_mode") not in ("text", "pdu"):
        raise ConfigError("bad value", file=file, key="tiantong.sms_mode", expected="text or pdu")
    if fam == "beidou_rdss" and profile["rdss"].get("default_encoding") not in ("chinese", "code", "mixed"):
        raise ConfigError("bad value", file=file, key="rdss.default_encoding", expected="chinese, code or mixed")


def for_port(family: str, name: str = "") -> dict[str, Any]:
    """The profile a port uses: the named one (checked to match the driver), else the family default."""
    profile = load(name or _FAMILIES[family].default)
    if profile["family"] != family:
        raise ConfigError(f"profile {name!r} is for driver {profile['family']}, not {family}", key="profile")
    return profile


def load_all(directory: Path = PROFILE_DIR) -> dict[str, dict[str, Any]]:
    return {n: load(n, directory) for n in names(directory)}

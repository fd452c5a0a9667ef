"""The ``[mavlink]`` config section and MAVLink 2 signing keys (inline or from a keystore file)."""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from fieldhub.core.config import Duration, Size
from fieldhub.core.errors import ConfigError

#: per-kind records per second into the log, as ``drivers.mavlink.DEFAULT_RATES`` (a test keeps
#: the two equal; the copy lets the config load without pymavlink)
DEFAULT_RATES: dict[str, float] = {
    "position": 2.0, "altitude": 1.0, "velocity": 1.0, "attitude": 1.0, "airdata": 1.0,
    "battery": 0.2, "gps": 0.2, "drone_state": 0.1, "drone_event": 0.0, "command_ack": 0.0,
}


def _default_rates() -> dict[str, float]:
    return dict(DEFAULT_RATES)


KINDS = ("udpin", "udpout", "tcp", "tcpin", "serial")
#: where an endpoint without a host binds (or connects): only this machine
LOOPBACK = "127.0.0.1"
DEFAULT_BAUD = 57600


@dataclass(frozen=True)
class EndpointSpec:
    """``udpin:HOST:PORT``, ``udpout:HOST:PORT``, ``tcp:HOST:PORT``, ``tcpin:HOST:PORT`` or ``serial:PATH[:BAUD]``."""

    kind: str
    host: str
    port: int
    text: str

    @classmethod
    def parse(cls, text: str, key: str = "mavlink.endpoints") -> EndpointSpec:
        kind, _, rest = text.partition(":")
        expected = ("udpin:HOST:PORT, udpout:HOST:PORT, tcp:HOST:PORT, tcpin:HOST:PORT or "
                    "serial:/dev/ttyUSB0[:BAUD]")
        if kind not in KINDS or not rest:
            raise ConfigError(f"bad endpoint {text!r}", key=key, expected=expected)
        if kind == "serial":
            path, _, baud = rest.rpartition(":") if rest.rsplit(":", 1)[-1].isdigit() else (rest, "", "")
            return cls(kind, path, int(baud) if baud else DEFAULT_BAUD, text)
        host, _, port = rest.rpartition(":")
        if not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError(f"bad endpoint {text!r}: port must be 0-65535", key=key, expected=expected)
        # no host: loopback. Listening on every interface must be asked for ("udpin:0.0.0.0:14550")
        return cls(kind, host.strip("[]") or LOOPBACK, int(port), text)


@dataclass(frozen=True)
class MavlinkConfig:
    """[mavlink] drones over MAVLink: endpoints, ground-station forwarding, signing, tlogs, commands."""

    #: where drones are: "udpin:0.0.0.0:14550", "udpout:HOST:PORT", "tcp:HOST:5760",
    #: "tcpin:0.0.0.0:5760", "serial:/dev/ttyUSB0:57600" (several allowed; [] = MAVLink off);
    #: without a host ("udpin::14550") an endpoint binds to loopback only
    endpoints: list[str] = field(default_factory=list)
    #: ground stations the raw stream is forwarded to (e.g. "udpout:192.168.1.20:14550",
    #: "udpin:0.0.0.0:14551"); one-way unless forward_commands is true
    forward: list[str] = field(default_factory=list)
    #: let what the forward endpoints send (COMMAND_LONG, missions, parameters...) go back to the
    #: drones. Off: a forward port is telemetry out only, so whoever can reach it cannot fly a drone
    forward_commands: bool = False
    #: system id -> device id, e.g. {1 = "uav-wuhan-01"}; unlisted drones are "drone-<sysid>"
    drones: dict[str, str] = field(default_factory=dict)
    #: device id -> MAVLink 2 signing key: 64 hex digits, or a passphrase (SHA-256, as MAVProxy/QGC);
    #: such drones must sign everything
    signing_keys: dict[str, str] = field(default_factory=dict)
    #: TOML file with more "device id = key" lines (keep keys out of the main config; mode 0600)
    keystore: str = ""
    #: a drone is offline when no HEARTBEAT came for this long
    heartbeat_timeout: Duration = Duration(5.0)
    #: records per second per kind into the log (0 = every message); the raw stream always goes to the tlog
    rates: dict[str, float] = field(default_factory=_default_rates)
    #: where the rotating .tlog files go ("" = <data_dir>/tlog)
    tlog_dir: str = ""
    #: start a new tlog file past this size
    tlog_max_file: Size = Size(16 * 1024**2)
    #: delete the oldest tlogs past this total
    tlog_max_total: Size = Size(512 * 1024**2)
    #: the hub's own MAVLink system id (commands come from it; 255 is usually the pilot's GCS)
    system_id: int = 254
    #: wait this long for a COMMAND_ACK before resending with confirmation+1
    command_timeout: Duration = Duration(1.0)
    #: total sends of a command before giving up
    command_attempts: int = 5
    #: after IN_PROGRESS, wait this long for the final result
    command_progress_timeout: Duration = Duration(30.0)

    def validate(self) -> None:
        for i, e in enumerate(self.endpoints):
            EndpointSpec.parse(e, f"mavlink.endpoints[{i}]")
        for i, e in enumerate(self.forward):
            EndpointSpec.parse(e, f"mavlink.forward[{i}]")
        for sysid, device in self.drones.items():
            if not sysid.isdigit() or not 1 <= int(sysid) <= 255:
                raise ValueError(f"drones: system id {sysid!r} must be 1-255")
            if not _DEVICE_ID.fullmatch(device):
                raise ValueError(f"drones.{sysid}: device id {device!r} must be letters, digits, '_', '.', '-'")
        if not 1 <= self.system_id <= 255:
            raise ValueError("system_id must be 1-255")
        if self.command_attempts < 1:
            raise ValueError("command_attempts must be at least 1")
        for kind, hz in self.rates.items():
            if hz < 0:
                raise ValueError(f"rates.{kind} must be >= 0")


_HEX64 = re.compile(r"\A[0-9a-fA-F]{64}\Z")
_DEVICE_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")  # as the registry; also the tlog folder name


def key_bytes(text: str) -> bytes:
    """A signing key: 64 hex digits as they are, anything else a passphrase hashed with SHA-256."""
    text = text.strip()
    if _HEX64.fullmatch(text):
        return bytes.fromhex(text)
    if not text:
        raise ValueError("empty signing key")
    return hashlib.sha256(text.encode()).digest()


def load_keys(cfg: MavlinkConfig) -> tuple[dict[str, bytes], list[str]]:
    """(device id -> 32-byte key, warnings), from the config and the keystore file (the keystore wins)."""
    warnings: list[str] = []
    raw: dict[str, tuple[str, str]] = {k: (v, "mavlink.signing_keys") for k, v in cfg.signing_keys.items()}
    if cfg.keystore:
        path = Path(cfg.keystore)
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError("keystore file not found", file=str(path), key="mavlink.keystore") from None
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"keystore unreadable: {exc}", file=str(path), key="mavlink.keystore") from None
        if os.stat(path).st_mode & 0o077:
            warnings.append(f"keystore {path} is readable by group/others; chmod 600 it")
        for k, v in data.items():
            if not isinstance(v, str):
                raise ConfigError("must be a string key", file=str(path), key=k,
                                  expected="64 hex digits or a passphrase")
            raw[k] = (v, str(path))
    out = {}
    for device, (text, origin) in raw.items():
        try:
            out[device] = key_bytes(text)
        except ValueError as exc:
            raise ConfigError(str(exc), file=origin, key=device) from None
    return out, warnings

"""The ``[serial]`` config section: the ports and their reopen/quarantine settings (nothing heavy imported)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fieldhub.core import profiles
from fieldhub.core.config import Duration
from fieldhub.core.registry import valid_id


@dataclass(frozen=True)
class SerialPortConfig:
    """One serial device."""

    #: registry id of the device; its records carry the device's registry tags
    device_id: str = ""
    #: protocol driver: nmea, beidou_rdss, tiantong, dmr, pelco_d
    driver: str = ""
    #: pyserial URL or path: /dev/ttyUSB0, /dev/serial/by-id/..., a pty path, socket://host:port;
    #: udp://0.0.0.0:4001 listens for datagrams (Motorola LRRP) on every interface; udp://:4001 on loopback only
    url: str = ""
    #: firmware profile ("" = the device's registry model, else the driver's generic profile)
    profile: str = ""
    #: baud rate (0 = the profile's)
    baud: int = 0
    #: how often to poll the device (Tiantong CSQ/CREG, PTZ position); 0 = the profile's
    poll_interval: Duration = Duration(0)
    enabled: bool = True


@dataclass(frozen=True)
class SerialConfig:
    """[serial] serial field devices: GNSS, Beidou RDSS, Tiantong, DMR gateway, PTZ ball."""

    #: the ports, e.g. ports = [{device_id = "bd-1", driver = "beidou_rdss", url = "/dev/ttyUSB0"}]
    ports: list[SerialPortConfig] = field(default_factory=list)
    #: first wait before reopening a port that went away (doubles, with jitter)
    backoff_initial: Duration = Duration(0.5)
    #: longest wait between reopen attempts
    backoff_max: Duration = Duration(30.0)
    #: at most this many bad frames per port per minute go to quarantine (the rest are only counted)
    quarantine_per_minute: int = 30

    def validate(self) -> None:
        seen = set()
        for i, p in enumerate(self.ports):
            if p.driver not in profiles.FAMILIES:
                raise ValueError(f"ports[{i}].driver {p.driver!r}: one of {', '.join(profiles.FAMILIES)}")
            if not p.device_id or not p.url:
                raise ValueError(f"ports[{i}]: device_id and url are required")
            if not valid_id(p.device_id):
                raise ValueError(f"ports[{i}]: device_id {p.device_id!r}: 1-64 letters, digits, '_', '.', '-'")
            if p.device_id in seen:
                raise ValueError(f"ports[{i}]: device {p.device_id} listed twice")
            seen.add(p.device_id)


"""The ``[sl651]`` config section: where station DTUs connect, and how they are answered (nothing heavy imported)."""

from __future__ import annotations

from dataclasses import dataclass

from fieldhub.core.config import Duration

CONFIRM_ENDS = ("EOT", "ESC", "none")


@dataclass(frozen=True)
class Sl651Config:
    """[sl651] SL 651-2014 hydrological telemetry stations (rain gauges, water levels) over TCP."""

    #: run the station server
    enabled: bool = False
    #: address station DTUs connect to (host:port); loopback unless the vehicle's network is meant to reach it
    listen: str = "127.0.0.1:5651"
    #: how a report is confirmed unless the station's registry transport says otherwise
    #: ({"sl651": "0012345678", "confirm": "ESC"}): EOT (station may hang up), ESC (stays online), none (M1)
    confirm: str = "EOT"
    #: close a connection silent this long (stations send a 2F keep-alive every 40 s by default)
    idle_timeout: Duration = Duration(300.0)
    #: most simultaneous connections; more are closed on accept and counted
    max_connections: int = 1024
    #: at most this many bad frames a minute go to quarantine (the rest are only counted)
    quarantine_per_minute: int = 60
    #: hours east of UTC of the stations' clocks (Beijing time: 8)
    utc_offset_hours: float = 8.0

    def validate(self) -> None:
        if self.confirm not in CONFIRM_ENDS:
            raise ValueError(f"confirm {self.confirm!r}: one of {', '.join(CONFIRM_ENDS)}")
        host, sep, port = self.listen.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"listen {self.listen!r}: host:port")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")

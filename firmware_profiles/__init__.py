"""Device models: one TOML file per model/firmware (read by ``fieldhub.core.profiles``).

``FAMILIES`` is the one list of the serial protocol families these profiles are for: its keys
are driver names (``drivers/<family>.py``); each says which profile a port of that family uses
when it names none, which table of a profile holds the family's own numbers, and what
``fieldhub sim serial KIND`` calls its simulator. A new serial family is one line here (plus
its driver module and a session in ``fieldhub/sources/serial/sessions.py``); a new device
model of a known family is one TOML file and no code.
"""

from __future__ import annotations

from typing import NamedTuple


class Family(NamedTuple):
    #: the profile a port uses when it names none
    default: str
    #: the profile table with the family's settings ("" = none)
    section: str
    #: the simulator's name in ``fieldhub sim serial KIND``
    sim: str


FAMILIES: dict[str, Family] = {
    "nmea": Family("nmea-generic", "", "gnss"),
    "beidou_rdss": Family("rdss-bd2-level3", "rdss", "rdss"),
    "tiantong": Family("tiantong-generic", "tiantong", "tiantong"),
    "dmr": Family("dmr-hytera-gateway", "", "dmr"),
    "pelco_d": Family("pelco-d-generic", "ptz", "ptz"),
}

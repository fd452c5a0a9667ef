"""Device protocol drivers: one module per protocol family, listed in ``DRIVERS`` below.

A driver is three layers (see STYLE.md): a framer (``feed(bytes) -> list[Frame]``, no I/O,
resynchronises on garbage), a pure parser (``parse(frame, ctx) -> list[Record]``) and a
transport binding. Each module exports one ``DRIVER = Driver(...)``; this registry names
them explicitly (no folder scanning, no import side effects).
"""

from __future__ import annotations

import importlib

from firmware_profiles import FAMILIES

from .base import Driver, Frame, Framer, ParseContext, Parser

#: driver name -> module. A new protocol family adds one line.
DRIVERS: dict[str, str] = {

    # serial families (issue 4): the one list is firmware_profiles.FAMILIES
    **{n: f"drivers.{n}" for n in FAMILIES},

    # mavlink (issue 5)
    "mavlink": "drivers.mavlink",

    # SL 651-2014 hydrological stations (issue 21)
    "sl651": "drivers.sl651",
}


def get(name: str) -> Driver:
    """The driver called ``name``; KeyError names the known ones."""
    try:
        module = DRIVERS[name]
    except KeyError:
        raise KeyError(f"unknown driver {name!r}; known: {', '.join(sorted(DRIVERS)) or 'none'}") from None
    return importlib.import_module(module).DRIVER


__all__ = ["DRIVERS", "Driver", "Frame", "Framer", "ParseContext", "Parser", "get"]

"""Simulators: one per device family, the link emulator, the village fleet.

``DEMO`` lists what ``fieldhub demo`` starts, as "module:Class"; each class takes a
``DemoContext`` and has ``setup()`` (register devices, add hub settings), ``start()``,
``stop()`` and ``summary() -> dict``. A new simulator adds one line.
"""

from __future__ import annotations

DEMO: tuple[str, ...] = (
    "simulators.loadgen:DemoLoad",

    # village fleet over MQTT (issue 3)
    "simulators.village:DemoVillage",

    # serial devices behind ptys (issue 4)
    "simulators.serial_demo:SerialDemo",

    # drones (issue 5)
    "simulators.drone:DemoDrones",

    # links (issue 7)
    "simulators.uplink_demo:DemoUplink",
)

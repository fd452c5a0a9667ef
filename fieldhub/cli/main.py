"""The ``fieldhub`` group, assembled from the command modules of fieldhub/cli/.

A new command group is a module here with plain click commands and one line below. Groups
that several modules add to (``sim``, ``quarantine``) are defined here, once."""

from __future__ import annotations

import click

from fieldhub import __version__
from fieldhub.cli import audit as auditcmds
from fieldhub.cli import demo, devices, hubcmds, influx, mavlink, mqtt, quarantine, query, replay, serial, sl651, uplink
from fieldhub.cli import keys as keycmds
from fieldhub.cli.common import EPILOG_WIDTH, HubGroup


@click.group(cls=HubGroup, context_settings={"help_option_names": ["-h", "--help"],
                                            "max_content_width": EPILOG_WIDTH})
@click.version_option(__version__, prog_name="fieldhub")
def main() -> None:
    """fieldhub — telemetry and comms hub of an emergency satellite command vehicle.

    Ingests MQTT, serial and MAVLink devices into a durable log, stores them locally and in
    InfluxDB, relays them to the provincial center. 应急卫星指挥车 现场设备通信枢纽。

    \b
    Example:
      fieldhub init --config fieldhub.toml
      fieldhub run --config fieldhub.toml
      fieldhub status --json
    """


@main.group("quarantine")
def quarantine_group() -> None:
    """The dead-letter area: what could not be admitted, and why (隔离区)."""


@main.group("sim")
def sim() -> None:
    """Device and link simulators (real MQTT clients, real pseudo-terminals, real sockets)."""


# the hub and its data dir
for _cmd in (hubcmds.init, hubcmds.run, hubcmds.status, hubcmds.events, hubcmds.consumers, devices.devices,
             query.query, replay.replay, demo.demo):
    main.add_command(_cmd)
quarantine_group.add_command(quarantine.quarantine_list)
# MQTT: presence, provision, quarantine readmit, sim village (issue 3)
main.add_command(mqtt.presence)
main.add_command(mqtt.provision)
quarantine_group.add_command(mqtt.quarantine_readmit)
sim.add_command(mqtt.sim_village)
# serial: profiles, bd/tiantong send, dmr text, ptz, sim serial (issue 4)
for _cmd in (serial.profiles, serial.bd, serial.tiantong, serial.dmr, serial.ptz):
    main.add_command(_cmd)
sim.add_command(serial.sim_serial)
# drones: drone, drones, sim drone (issue 5)
main.add_command(mavlink.drone)
main.add_command(mavlink.drones)
sim.add_command(mavlink.sim_drone)
# InfluxDB: influx check (issue 6)
main.add_command(influx.influx)
# uplink: uplink status, center, sim link (issue 7)
main.add_command(uplink.uplink)
main.add_command(sl651.sl651)
sim.add_command(sl651.sim_sl651)
main.add_command(uplink.center)
mqtt.provision.add_command(uplink.provision_center_broker)
sim.add_command(uplink.sim_link)
# command keys and authority (issue 14)
main.add_command(keycmds.keys)
# the audit log: show, verify, export, heads (issue 14)
main.add_command(auditcmds.audit)

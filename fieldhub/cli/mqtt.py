"""CLI for MQTT: quarantine readmit, provision (device, fleet, broker-config), presence, sim village."""

from __future__ import annotations

from pathlib import Path

import click
import orjson

from fieldhub.cli.common import emit_json, example, hub_options, json_option, local_time, open_registry
from fieldhub.core import audit
from fieldhub.core.config import Config
from fieldhub.core.errors import FieldhubError, HubNotRunning, ValidationError


def _broker_dir(cfg: Config, explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    return Path(cfg.mqtt.broker_dir) if cfg.mqtt.broker_dir else cfg.data_dir / "broker"


# ------------------------------------------------------------------ quarantine readmit
@click.command("readmit")
@click.argument("qids", nargs=-1, type=int)
@click.option("--reason", help="All held MQTT items whose reason contains this text, e.g. 'unknown device'.")
@click.option("--device", help="All held MQTT items from this device id.")
@hub_options
@json_option
@example("fieldhub devices add rg-077 --kind rain_gauge --admin-code 420102001001\n"
         "fieldhub quarantine readmit --reason 'unknown device' --device rg-077")
def quarantine_readmit(cfg: Config, qids: tuple[int, ...], reason: str | None, device: str | None,
                       as_json: bool) -> None:
    """Re-admit held MQTT messages after fixing the cause (e.g. registering the device).

    Each item runs through ingest validation again; those that now pass are appended to
    the log and marked readmitted, the rest stay held with their current reason. Works with
    the hub running (via its control socket) or stopped.
    """
    from fieldhub.core import control

    args = {"qids": list(qids) or None, "reason": reason, "device": device}
    if not (qids or reason or device):
        raise FieldhubError("say what to re-admit: QID..., --reason TEXT or --device ID "
                            "/ 请指定要重新接收的条目")
    try:
        result = control.call(cfg.data_dir, "mqtt.readmit", args)
    except HubNotRunning:
        from fieldhub.sources.mqtt.readmit import readmit_offline

        result = readmit_offline(cfg.data_dir, qids=args["qids"], reason=reason, device=device,
                                 max_payload=int(cfg.mqtt.max_payload),
                                 max_skew_s=float(cfg.mqtt.max_clock_skew))
    except FieldhubError as exc:
        if "unknown command" not in str(exc):
            raise
        raise FieldhubError("the running hub has no MQTT ingest ([mqtt] broker unset); "
                            "stop it or configure MQTT / 运行中的 hub 未启用 MQTT") from None
    audit.record(cfg.data_dir, audit.operator(), "quarantine.readmit", device or "", qids=list(qids), reason=reason,
                 matched=result["matched"], readmitted=result["readmitted"])
    if as_json:
        emit_json(result)
        return
    click.echo(f"re-admitted {result['readmitted']} of {result['matched']} "
               f"({result['records_added']} new records) / 已重新接收 {result['readmitted']} 条")
    for item in result["still_held"]:
        click.echo(f"  still held 仍隔离 #{item['qid']} {item['device_id'] or '-'}: {item['reason']}")


# ------------------------------------------------------------------ presence
@click.command("presence")
@click.option("--offline", "only_offline", is_flag=True, help="Only devices that are offline.")
@hub_options
@json_option
@example("fieldhub presence --offline --json")
def presence(cfg: Config, only_offline: bool, as_json: bool) -> None:
    """Online/offline per MQTT device (last message, last will, per-kind timeout)."""
    from fieldhub.core import control

    rep = control.call(cfg.data_dir, "mqtt.presence")
    devs = [d for d in rep["devices"] if not only_offline or d["online"] is False]
    if as_json:
        emit_json({"summary": rep["summary"], "devices": devs})
        return
    from fieldhub.cli.render import table

    state = {True: "online 在线", False: "OFFLINE 离线", None: "never seen 未上线"}
    table(["device", "kind", "state", "last seen (local)", "silent s", "reason"],
          [[d["device_id"], d["kind"], state[d["online"]], local_time(d["last_seen_ns"]),
            d["silent_s"] if d["silent_s"] is not None else "-", d["reason"]] for d in devs],
          title=f"{rep['summary']['online']} online, {rep['summary']['offline']} offline")


# ------------------------------------------------------------------ provision
@click.group("provision")
def provision() -> None:
    """Broker accounts and configuration for MQTT devices (Mosquitto)."""


@provision.command("device")
@click.argument("device_id")
@click.option("--kind", required=True, help="Device kind, e.g. rain_gauge, water_level, handheld.")
@click.option("--admin-code", required=True, help="12-digit administrative division code.")
@click.option("--model", default="", help="Firmware profile name.")
@click.option("--unit", default="", help="Owning unit (village committee...).")
@click.option("--rotate", is_flag=True, help="Device exists already: issue a new password.")
@click.option("--broker-dir", type=click.Path(file_okay=False),
              help="Where passwd/acl live (default: [mqtt] broker_dir or <data_dir>/broker).")
@hub_options
@json_option
@example("fieldhub provision device rg-001 --kind rain_gauge --admin-code 420102001001 --json")
def provision_device(cfg: Config, device_id: str, kind: str, admin_code: str, model: str, unit: str, rotate: bool,
                     broker_dir: str | None, as_json: bool) -> None:
    """Register a device and give it a broker account that may only use its own topics.

    Writes the password (Mosquitto $7$ PBKDF2-SHA512 hash) and ACL entries; the device may
    publish only under fh/ID/up/# and read only fh/ID/down/#. Reload the broker to apply
    (systemctl reload mosquitto, or SIGHUP).
    """
    from fieldhub.core.registry import Device
    from fieldhub.sources.mqtt.ingest import HUB_USER
    from fieldhub.sources.mqtt.provision import BrokerFiles, new_password

    if device_id == HUB_USER:
        raise ValidationError(f"{HUB_USER} is the hub's own account / 该名称为 hub 保留")
    reg = open_registry(cfg)
    existing = reg.get(device_id)
    if existing is not None and not rotate:
        raise ValidationError(f"device {device_id} exists; --rotate issues a new password "
                              f"/ 设备已存在，使用 --rotate 更换密码")
    if existing is None:
        dev = reg.add(Device(device_id, kind, admin_code, model, unit))
    else:
        dev = existing
    password = new_password()
    files = BrokerFiles(_broker_dir(cfg, broker_dir))
    files.set_passwords({device_id: password})
    audit.record(cfg.data_dir, audit.operator(), "provision.device", device_id, kind=dev.kind,
                 admin_code=dev.admin_code, rotate=rotate)  # never the password
    out = {"id": dev.id, "kind": dev.kind, "admin_code": dev.admin_code, "level": dev.level,
           "username": device_id, "password": password, "publish": f"fh/{device_id}/up/#",
           "subscribe": f"fh/{device_id}/down/#", "password_file": str(files.passwd),
           "acl_file": str(files.acl)}
    if as_json:
        emit_json(out)
        return
    click.echo(f"provisioned {device_id} ({dev.kind}, {dev.level} {dev.admin_code})")
    click.echo(f"  username 用户名: {device_id}\n  password 密码:   {password}   (shown once / 仅显示一次)")
    click.echo(f"  publish  fh/{device_id}/up/{{telemetry,status,position,alarm,ack}}")
    click.echo(f"  subscribe fh/{device_id}/down/cmd")
    click.echo("  reload the broker to apply / 重新加载代理生效: systemctl reload mosquitto")


@provision.command("fleet")
@click.option("--count", required=True, type=click.IntRange(1, 100000), help="How many devices.")
@click.option("--prefix", default="v", show_default=True, help="Ids are PREFIX0000, PREFIX0001...")
@click.option("--admin-code", required=True, help="12-digit administrative division code.")
@click.option("--credentials", "cred_file", required=True, type=click.Path(dir_okay=False),
              help="Write ids, kinds and passwords here (JSON, mode 600) for `sim village`.")
@click.option("--broker-dir", type=click.Path(file_okay=False))
@hub_options
@json_option
@example("fieldhub provision fleet --count 2000 --admin-code 420102001001 --credentials fleet.json")
def provision_fleet(cfg: Config, count: int, prefix: str, admin_code: str, cred_file: str, broker_dir: str | None,
                    as_json: bool) -> None:
    """Provision many simulated village devices at once (mixed kinds), for drills and soaks."""
    import os

    from fieldhub.core.registry import Device
    from fieldhub.sources.mqtt.provision import BrokerFiles, new_password
    from simulators.village import fleet_ids

    reg = open_registry(cfg)
    creds, devices = [], []
    for dev_id, kind in fleet_ids(count, prefix):
        creds.append({"id": dev_id, "kind": kind, "password": new_password()})
        devices.append(Device(dev_id, kind, admin_code, unit="simulated village fleet"))
    csv_text = "id,kind,admin_code,model,unit,contact,transport\n" + "".join(
        f"{d.id},{d.kind},{d.admin_code},,{d.unit},," + "\n" for d in devices)
    reg.import_csv(csv_text, replace=True, source="provision fleet")
    BrokerFiles(_broker_dir(cfg, broker_dir)).set_passwords({c["id"]: c["password"] for c in creds})
    audit.record(cfg.data_dir, audit.operator(), "provision.fleet", f"{prefix}*", count=count, admin_code=admin_code)
    fd = os.open(cred_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(orjson.dumps(creds))
    out = {"devices": count, "credentials": cred_file, "broker_dir": str(_broker_dir(cfg, broker_dir))}
    if as_json:
        emit_json(out)
    else:
        click.echo(f"provisioned {count} devices {prefix}0000.. ; credentials in {cred_file} "
                   f"/ 已开通 {count} 台设备")


@provision.command("broker-config")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for mosquitto.conf, passwd, acl, data/ and fieldhub-mqtt.toml.")
@click.option("--listen", default="0.0.0.0:1883", show_default=True, metavar="HOST:PORT")
@click.option("--queue-hours", default=12.0, show_default=True,
              help="Hours the hub may be away with nothing dropped.")
@click.option("--expected-rate", default=200.0, show_default=True,
              help="Messages per second arriving for the hub (sizes max_queued_messages).")
@click.option("--autosave", default=5, show_default=True, help="Seconds between persistence saves.")
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="Enable a TLS listener with this certificate.")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="Its private key.")
@click.option("--tls-ca", type=click.Path(dir_okay=False), help="CA file (optional).")
@click.option("--tls-port", default=8883, show_default=True)
@click.option("--run-as", default="mosquitto", show_default=True,
              help="User the broker drops to when started as root.")
@click.option("--rotate-hub", is_flag=True, help="Issue a new password for the hub's account.")
@json_option
@example("fieldhub provision broker-config --out /etc/mosquitto/fieldhub\n"
         "mosquitto -c /etc/mosquitto/fieldhub/mosquitto.conf")
def broker_config(out_dir: str, listen: str, queue_hours: float, expected_rate: float, autosave: int,
                  tls_cert: str | None, tls_key: str | None, tls_ca: str | None, tls_port: int, run_as: str,
                  rotate_hub: bool, as_json: bool) -> None:
    """Write a complete Mosquitto configuration that `mosquitto -c` starts as is.

    Persistence on with a short autosave, queues sized for hours of the hub being away,
    no anonymous access, password and ACL files (with the hub's own account), optional
    TLS listener. Also writes fieldhub-mqtt.toml with the hub's [mqtt] settings.
    """
    from fieldhub.sources.mqtt.provision import BrokerOptions, write_broker_config

    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValidationError(f"--listen {listen!r}: expected HOST:PORT, e.g. 0.0.0.0:1883")
    opts = BrokerOptions(listen_host=host, port=int(port), queue_hours=queue_hours,
                         expected_rate=expected_rate, autosave_interval=autosave,
                         tls_port=tls_port, certfile=tls_cert or "", keyfile=tls_key or "",
                         cafile=tls_ca or "", run_as=run_as)
    out = write_broker_config(Path(out_dir), opts, rotate_hub=rotate_hub)
    if as_json:
        emit_json(out)
        return
    click.echo(f"wrote {out['conf']} (max_queued_messages {out['max_queued_messages']})")
    click.echo(f"start it:  mosquitto -c {out['conf']}")
    click.echo(f"hub settings for fieldhub.toml 写入配置: {out['hub_config']}")


# ------------------------------------------------------------------ sim village
@click.command("village")
@click.option("--broker", required=True, metavar="mqtt://HOST:PORT")
@click.option("--devices", default=10, show_default=True, type=click.IntRange(1, 100000))
@click.option("--rate", default=1.0, show_default=True, help="Messages per second per device.")
@click.option("--seconds", default=10.0, show_default=True, help="How long to publish (0 = until Ctrl-C).")
@click.option("--credentials", "cred_file", type=click.Path(exists=True, dir_okay=False),
              help="JSON from `provision fleet` (default: anonymous clients PREFIX0000...).")
@click.option("--prefix", default="v", show_default=True)
@click.option("--malformed", default=0.0, help="Share of messages that are malformed (0..1).")
@click.option("--duplicates", default=0.0, help="Share of messages published twice (0..1).")
@click.option("--clock-skew", default=0.0, help="Share of devices whose clock is off by 10 min to 2 h.")
@click.option("--bursts", default=0.0, help="Share of devices sending a burst of 20 every 2 s.")
@click.option("--storm-every", default=0.0, help="Every N s drop 20%% of connections abruptly (0 = never).")
@click.option("--cbor", default=0.0, help="Share of devices sending CBOR bodies.")
@click.option("--seed", default=1, show_default=True)
@json_option
@example("fieldhub sim village --broker mqtt://127.0.0.1:1883 --devices 2000 --rate 0.5 \\\n"
         "    --seconds 300 --credentials fleet.json --malformed 0.01 --duplicates 0.02 --json")
def sim_village(broker: str, devices: int, rate: float, seconds: float, cred_file: str | None, prefix: str,
                malformed: float, duplicates: float, clock_skew: float, bursts: float, storm_every: float,
                cbor: float, seed: int, as_json: bool) -> None:
    """Run N simulated village devices as real MQTT clients; prints how many it sent.

    sent = messages the broker acknowledged (valid + malformed); duplicates are extra
    copies of valid messages. With --json: one object with every count.
    """
    from simulators.village import Fleet, FleetOptions

    creds = orjson.loads(Path(cred_file).read_bytes()) if cred_file else None
    try:
        fleet = Fleet(FleetOptions(broker, devices=devices, rate=rate, seconds=seconds,
                                   credentials=creds, prefix=prefix, malformed=malformed,
                                   duplicates=duplicates, clock_skew=clock_skew, bursts=bursts,
                                   storm_every=storm_every, cbor=cbor, seed=seed))
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    try:
        result = fleet.run()
    except KeyboardInterrupt:
        fleet.stop()
        result = fleet.result()
    except OSError as exc:
        raise FieldhubError(f"broker {broker}: {exc}") from None
    if as_json:
        emit_json(result)
        return
    click.echo(f"sent {result['sent']} messages 已发送 (valid {result['valid']}, malformed "
               f"{result['malformed']}) + {result['duplicates']} duplicates from {result['devices']} "
               f"devices in {result['seconds']} s; unacked {result['unacked']}, refused {result['refused']}")

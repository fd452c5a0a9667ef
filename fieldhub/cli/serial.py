"""CLI for serial devices: profiles, pty simulators, Beidou and Tiantong messages, PTZ commands."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import click

from fieldhub.cli.common import emit_json, example, hub_options, json_option
from fieldhub.core import audit
from fieldhub.core.config import Config
from fieldhub.core.errors import FieldhubError, TransportError
from firmware_profiles import FAMILIES

#: simulator kind (`fieldhub sim serial KIND`) -> driver name, from the one list of serial families
KIND_DRIVER = {family.sim: name for name, family in FAMILIES.items()}


class _NullLog:
    """Where a direct (hub-less) port puts records: counted, not kept — the hub is the durable path."""

    def __init__(self) -> None:
        self.records: list[Any] = []
        self.quarantined = 0

    def append(self, records: Any, callback: Callable[..., Any] | None = None) -> None:
        self.records.extend(records)
        if callback is not None:
            callback(None, None)

    def quarantine(self, *args: Any, callback: Callable[..., Any] | None = None, **kw: Any) -> None:
        self.quarantined += 1


def _direct(driver: str, url: str, profile: str, device: str, fn: Callable[[Any], Any],
            connect_timeout: float = 10.0) -> Any:
    """Open ``url`` ourselves (no hub), run ``fn(session)``, close."""
    from fieldhub.sources.serial.ingest import SerialPortConfig, open_port

    port = open_port(SerialPortConfig(device_id=device or f"direct-{driver}", driver=driver, url=url,
                                      profile=profile), log=_NullLog(), settings=None)
    port.start()
    try:
        deadline = time.monotonic() + connect_timeout
        while not port.transport.connected.wait(0.05):
            if port.transport.stats["open_failures"] or time.monotonic() > deadline:
                raise TransportError(f"cannot open {url}: {port.transport.last_error or 'timeout'} / 无法打开串口")
        time.sleep(0.3)  # let the session's init (card query, ATE0...) go first
        return fn(port.session)
    finally:
        port.stop()


# ------------------------------------------------------------------ profiles
@click.group("profiles")
@example("fieldhub profiles list\nfieldhub profiles show tiantong-pdu --json")
def profiles() -> None:
    """Firmware profiles: one file per device model (固件配置), with `extends =`."""


@profiles.command("list")
@json_option
@example("fieldhub profiles list --json")
def profiles_list(as_json: bool) -> None:
    """List every firmware profile with its driver family and description."""
    from fieldhub.core import profiles as prof

    items = [prof.load(n) for n in prof.names()]
    if as_json:
        emit_json([{"name": p["name"], "family": p["family"], "description": p["description"],
                    "extends": p["chain"][1] if len(p["chain"]) > 1 else "",
                    "baud": p["serial"]["baud"]} for p in items])
        return
    from fieldhub.cli.render import table

    table(["name", "driver", "baud", "extends", "description"],
          [[p["name"], p["family"], str(p["serial"]["baud"]), p["chain"][1] if len(p["chain"]) > 1 else "",
            p["description"]] for p in items], title=f"{len(items)} firmware profiles")


@profiles.command("show")
@click.argument("name")
@json_option
@example("fieldhub profiles show rdss-bd3 --json")
def profiles_show(name: str, as_json: bool) -> None:
    """Show one profile with its `extends` chain merged."""
    from fieldhub.core import profiles as prof

    p = prof.load(name)
    if as_json:
        emit_json(p)
        return
    click.echo(f"{p['name']}  ({p['family']}; {' <- '.join(p['chain'])})\n  {p['description']}")
    for key, value in p.items():
        if key in ("name", "family", "description", "chain"):
            continue
        if isinstance(value, dict):
            click.echo(f"  [{key}]")
            for k, v in value.items():
                click.echo(f"    {k} = {v}")
        else:
            click.echo(f"  {key} = {value}")


# ------------------------------------------------------------------ sim serial
@click.command("serial")
@click.argument("kind", type=click.Choice(sorted(KIND_DRIVER)))
@click.option("--profile", default="", help="Firmware profile the simulated device follows.")
@click.option("--link", type=click.Path(dir_okay=False),
              help="Stable path to create for the pty (default: a temp path).")
@click.option("--capture", type=click.Path(exists=True, dir_okay=False), help="gnss: replay this NMEA capture.")
@click.option("--rate", default=50.0, show_default=True, help="gnss replay: lines per second.")
@click.option("--interval", type=float, help="rdss: the card's service interval in seconds.")
@click.option("--loss-every", default=0.0, help="tiantong: lose registration every N seconds (for 5 s).")
@click.option("--noise", default=0.0, show_default=True, help="Probability of garbage or a flipped byte per frame.")
@click.option("--split", is_flag=True, help="Write frames in two random pieces.")
@click.option("--unplug-every", default=0.0, help="Unplug the device every N seconds (replug 2 s later).")
@click.option("--seconds", default=0.0, help="Stop after N seconds (0 = until Ctrl-C).")
@json_option
@example("fieldhub sim serial rdss --interval 10\n"
         "fieldhub sim serial gnss --capture ../shared/fixtures/nmea/gpsd_beidou-bd.log --noise 0.05")
def sim_serial(kind: str, profile: str, link: str | None, capture: str | None, rate: float, interval: float | None,
               loss_every: float, noise: float, split: bool, unplug_every: float, seconds: float,
               as_json: bool) -> None:
    """Run a serial device simulator behind a real pseudo-terminal; prints the path to open.

    The first line of output is the path (a stable symlink to the pty, like
    /dev/serial/by-id/...); point a [serial] port's url at it.
    """
    import importlib

    import drivers

    module, _, cls = drivers.get(KIND_DRIVER[kind]).simulator.partition(":")
    kw: dict[str, Any] = {"noise": noise, "split": split}
    if profile:
        from fieldhub.core import profiles as prof

        if prof.load(profile)["family"] != KIND_DRIVER[kind]:
            raise FieldhubError(f"profile {profile} is not for a {kind} device / 配置与设备类型不符")
        kw["profile"] = profile
    if kind == "gnss":
        kw.update(capture=capture, rate=rate)
    if kind == "rdss" and interval is not None:
        kw["interval"] = interval
    if kind == "tiantong" and loss_every:
        kw["loss_every"] = loss_every
    device = getattr(importlib.import_module(module), cls)(link, **kw).start()
    if as_json:
        emit_json({"kind": kind, "path": device.path, "pty": device.pty_path, "driver": KIND_DRIVER[kind]})
    else:
        click.echo(device.path)
        click.echo(f"{kind} simulator on {device.pty_path} (link {device.path}); driver {KIND_DRIVER[kind]}. "
                   "Ctrl-C to stop. / 模拟器已启动", err=True)
    sys.stdout.flush()
    try:
        _run_sim(device, seconds, unplug_every)
    except KeyboardInterrupt:
        pass
    finally:
        device.stop()
    click.echo(f"{kind} simulator stopped: {device.summary()}", err=True)


def _run_sim(device: Any, seconds: float, unplug_every: float) -> None:
    """Until ``seconds`` pass (0 = for ever), unplugging the device every ``unplug_every`` s for 2 s."""
    stop = threading.Event()
    end = time.monotonic() + seconds if seconds else None
    next_unplug = time.monotonic() + unplug_every if unplug_every else None
    while not stop.wait(0.2):
        now = time.monotonic()
        if end and now >= end:
            break
        if next_unplug and now >= next_unplug:
            device.unplug()
            stop.wait(2.0)
            device.replug()
            next_unplug = time.monotonic() + unplug_every


# ------------------------------------------------------------------ bd send
@click.group("bd")
@example("fieldhub bd send 0242286 '请求支援' --json")
def bd() -> None:
    """Beidou RDSS short messages (北斗短报文)."""


@bd.command("send")
@click.argument("dest")
@click.argument("text")
@click.option("--encoding", type=click.Choice(["mixed", "chinese", "code"]), default=None,
              help="TXA encoding (default: the profile's, usually mixed = A4+hex of GBK).")
@click.option("--express", is_flag=True, help="Express (urgent) message category.")
@click.option("--device", default="", help="Which Beidou port of the hub (if it has several).")
@click.option("--port", "url", default="", help="Talk to this serial port directly instead of the hub.")
@click.option("--profile", default="", help="With --port: the module's firmware profile.")
@click.option("--no-wait", is_flag=True, help="Fail instead of waiting for the card's service interval.")
@hub_options
@json_option
@example("fieldhub bd send 0242286 '水位超警戒，请求支援'\n"
         "fieldhub bd send 0242286 'test' --port /dev/ttyUSB1 --json")
def bd_send(cfg: Config, dest: str, text: str, encoding: str | None, express: bool, device: str, url: str,
            profile: str, no_wait: bool, as_json: bool) -> None:
    """Send a Beidou short message through the running hub, or directly to a port.

    The card's service interval is enforced (waits unless --no-wait); a refusal ($BDFKI
    with N) is retried after the wait the module states.
    """
    from fieldhub.core import control

    args = {"dest": dest, "text": text, "encoding": encoding, "express": express, "device": device,
            "no_wait": no_wait}
    audit.record(cfg.data_dir, audit.operator(), "bd.send", dest, **args, port=url)
    if url:
        res = _direct("beidou_rdss", url, profile, device,
                      lambda s: s.send(dest, text, encoding or "", express, wait=not no_wait))
    else:
        res = control.call(cfg.data_dir, "serial.bd_send", args, timeout=600)
    if as_json:
        emit_json(res)
    else:
        click.echo(f"sent to {res['dest']} ({res['bits']} bits, {res['attempts']} attempt(s), "
                   f"waited {res['waited_s']}s) / 已发送")


# ------------------------------------------------------------------ tiantong send
@click.group("tiantong")
@example("fieldhub tiantong send +8617400000001 '已到达现场'")
def tiantong() -> None:
    """Tiantong-1 satellite terminal (天通卫星终端): SMS."""


@tiantong.command("send")
@click.argument("number")
@click.argument("text")
@click.option("--mode", type=click.Choice(["text", "pdu"]), default=None,
              help="SMS mode (default: the profile's; long messages always go as concatenated PDUs).")
@click.option("--device", default="", help="Which Tiantong port of the hub (if it has several).")
@click.option("--port", "url", default="", help="Talk to this serial port directly instead of the hub.")
@click.option("--profile", default="", help="With --port: the terminal's firmware profile.")
@hub_options
@json_option
@example("fieldhub tiantong send +8617400000001 '已到达现场，通信正常'")
def tiantong_send(cfg: Config, number: str, text: str, mode: str | None, device: str, url: str, profile: str,
                  as_json: bool) -> None:
    """Send an SMS through the Tiantong terminal (via the hub, or directly with --port).

    Chinese text goes as UCS2; a message too long for one SMS is split into
    concatenated PDUs that the receiver joins. A failed submission is retried.
    """
    from fieldhub.core import control

    audit.record(cfg.data_dir, audit.operator(), "tiantong.send", number, text=text, mode=mode, device=device, port=url)
    if url:
        res = _direct("tiantong", url, profile, device, lambda s: s.send_sms(number, text, mode or ""))
    else:
        res = control.call(cfg.data_dir, "serial.sms_send",
                           {"number": number, "text": text, "mode": mode, "device": device}, timeout=600)
    if as_json:
        emit_json(res)
    else:
        click.echo(f"sent to {res['number']} ({res['parts']} part(s), {res['mode']} mode) / 已发送")


# ------------------------------------------------------------------ dmr
@click.group("dmr")
@example("fieldhub dmr text 10.33.16.221 '请回报位置' --device dmr-1")
def dmr() -> None:
    """DMR radios (Hytera HDAP, Motorola LRRP): text messages."""


@dmr.command("text")
@click.argument("dest")
@click.argument("text")
@click.option("--src", default="0.0.0.0", show_default=True, help="Our radio address (Hytera id as IPv4).")
@click.option("--device", required=True, help="The hub's DMR port (device id).")
@hub_options
@json_option
@example("fieldhub dmr text 10.33.16.221 '请回报位置' --device dmr-1")
def dmr_text(cfg: Config, dest: str, text: str, src: str, device: str, as_json: bool) -> None:
    """Send a text message to a radio through the hub's DMR gateway port (Hytera TMP)."""
    from fieldhub.core import control

    audit.record(cfg.data_dir, audit.operator(), "dmr.text", dest, text=text, src=src, device=device)
    res = control.call(cfg.data_dir, "serial.send", {"device": device, "command": {
        "cmd": "text", "dest": dest, "src": src, "text": text}})
    if as_json:
        emit_json(res)
    else:
        click.echo(f"sent {res['bytes']} bytes to {dest} via {res['device']} / 已发送")


# ------------------------------------------------------------------ ptz
#: what each absolute set command accepts: pan and tilt in degrees, zoom as the raw 16-bit position
PTZ_RANGES: dict[str, tuple[float, float]] = {"set_pan": (0.0, 360.0), "set_tilt": (-90.0, 90.0),
                                             "set_zoom": (0.0, 65535.0)}


@click.command("ptz")
@click.argument("command", type=click.Choice(
    ["left", "right", "up", "down", "zoom_in", "zoom_out", "stop", "set_preset", "clear_preset",
     "goto_preset", "set_pan", "set_tilt", "set_zoom", "query_pan", "query_tilt", "query_zoom"]))
@click.option("--speed", default=32, show_default=True, help="Pan/tilt speed 0-63.")
@click.option("--preset", default=1, show_default=True, help="Preset number.")
@click.option("--value", type=float, help="Degrees for set_pan (0-360) / set_tilt (-90-90), raw for set_zoom "
              "(0-65535); required by the set_ commands.")
@click.option("--device", default="", help="Which PTZ port of the hub.")
@hub_options
@json_option
@example("fieldhub ptz set_pan --value 90\nfieldhub ptz query_pan --json")
def ptz(cfg: Config, command: str, speed: int, preset: int, value: float | None, device: str,
        as_json: bool) -> None:
    """Drive the PTZ control ball (布控球) through the running hub."""
    from fieldhub.core import control

    if command in PTZ_RANGES:
        lo, hi = PTZ_RANGES[command]
        if value is None:
            raise click.UsageError(f"{command} needs --value ({lo:g} to {hi:g}) / 需要 --value 参数")
        if not lo <= value <= hi:
            raise click.BadParameter(f"{value:g} is outside {lo:g} to {hi:g} for {command} / 超出范围",
                                     param_hint="--value")

    audit.record(cfg.data_dir, audit.operator(), f"ptz.{command}", device, speed=speed, preset=preset, value=value)
    res = control.call(cfg.data_dir, "serial.ptz", {"device": device, "command": {
        "cmd": command, "speed": speed, "preset": preset, "value": value}})
    if as_json:
        emit_json(res)
    else:
        click.echo(" ".join(f"{k}={v}" for k, v in res.items()))

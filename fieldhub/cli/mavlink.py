"""CLI for drones: ``fieldhub drone ID ACTION``, ``fieldhub drones``, ``fieldhub sim drone``."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from fieldhub.cli.common import emit_json, example, hub_options, json_option
from fieldhub.core import audit
from fieldhub.core.config import Config
from fieldhub.core.errors import FieldhubError, HubNotRunning

ACTION_HELP = "rtl | land | arm | disarm | mode NAME | goto LAT LON ALT"
RESULT_ZH = {"accepted": "已接受", "temporarily_rejected": "暂时拒绝", "denied": "拒绝",
             "unsupported": "不支持", "failed": "失败", "cancelled": "已取消", "no_ack": "无应答",
             "in_progress_timeout": "执行中超时"}


def _call(data_dir: Path, cmd: str, args: dict[str, Any], timeout: float = 30.0) -> Any:
    """Ask the running hub; a hub without MAVLink says so in one clear line."""
    from fieldhub.core import control

    try:
        return control.call(data_dir, cmd, args, timeout=timeout)
    except HubNotRunning:
        raise
    except FieldhubError as exc:
        if str(exc).startswith(f"unknown command {cmd!r}"):
            raise FieldhubError("MAVLink is not enabled on the running hub: set [mavlink] endpoints "
                                "/ 运行中的 hub 未启用 MAVLink（请配置 [mavlink] endpoints）") from None
        raise


@click.command("drone", context_settings={"ignore_unknown_options": True})
@click.argument("drone_id")
@click.argument("action", type=click.Choice(["rtl", "land", "arm", "disarm", "mode", "goto"]))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@hub_options
@json_option
@example("fieldhub drone uav-01 rtl\n"
         "fieldhub drone uav-01 mode LOITER --json\n"
         "fieldhub drone 2 goto 30.5931 114.3062 40")
def drone(cfg: Config, drone_id: str, action: str, args: tuple[str, ...], as_json: bool) -> None:
    """Command a drone (by device id or system id) and wait for its final COMMAND_ACK.

    ACTION is rtl | land | arm | disarm | mode NAME | goto LAT LON ALT (ALT in metres above
    home). Sent by the running hub with the MAVLink command protocol (resent with
    confirmation+1 on timeout); the outcome is recorded in the `command` class.
    Exit status 0 only when the drone accepted. 向无人机发送指令并等待最终应答。
    """
    if action == "mode" and len(args) != 1:
        raise click.UsageError("mode needs one NAME, e.g. `fieldhub drone uav-01 mode LOITER`")
    if action == "goto" and len(args) != 3:
        raise click.UsageError("goto needs LAT LON ALT, e.g. `fieldhub drone uav-01 goto 30.59 114.30 40`")
    if action not in ("mode", "goto") and args:
        raise click.UsageError(f"{action} takes no arguments")
    m = cfg.mavlink
    wait = m.command_timeout * m.command_attempts + m.command_progress_timeout + 10
    audit.record(cfg.data_dir, audit.operator(), f"drone.{action}", drone_id, args=list(args))
    result = _call(cfg.data_dir, "drone.command",
                   {"drone": drone_id, "action": action, "args": list(args)}, timeout=wait)
    if as_json:
        emit_json(result)
    else:
        name = result["result_name"]
        detail = f" {result['detail']}" if result.get("detail") else ""
        click.echo(f"{result['drone']} (sysid {result['sysid']}) {action}{detail} "
                   f"[{result['command_name'].upper()}]: {name.upper()} / {RESULT_ZH.get(name, name)} "
                   f"after {result['attempts']} attempt(s), {result['latency_ms']:.0f} ms"
                   + (" (was IN_PROGRESS)" if result.get("in_progress_seen") else ""))
    if not result["accepted"]:
        sys.exit(1)


@click.command("drones")
@hub_options
@json_option
@example("fieldhub drones --json")
def drones(cfg: Config, as_json: bool) -> None:
    """Drones the running hub sees: online, mode, armed, battery, position, signing drops."""
    items = _call(cfg.data_dir, "drone.list", {})
    if as_json:
        emit_json(items)
        return
    from fieldhub.cli.render import table

    table(["drone", "sys", "link 链路", "mode 模式", "armed", "batt", "position 位置", "gps", "signing"],
          [[d["device_id"], d["sysid"], "online 在线" if d["online"] else "OFFLINE 离线", d["mode"],
            "armed" if d["armed"] else "-", f"{d['battery_pct']}%" if "battery_pct" in d else "-",
            _position(d), d.get("gps_fix", "-"), _signing(d)] for d in items],
          title=f"{len(items)} drones 无人机")


def _position(d: dict[str, Any]) -> str:
    if "lat" not in d:
        return "-"
    return f"{d['lat']:.5f},{d['lon']:.5f} {d.get('rel_alt_m', 0):.0f}m"


def _signing(d: dict[str, Any]) -> str:
    dropped = d["unsigned"] + d["bad_signature"]
    return ("signed" if d["signed"] else "-") + (f", {dropped} dropped" if dropped else "")


@click.command("drone")
@click.option("--count", default=2, show_default=True, type=click.IntRange(1, 250), help="Number of drones.")
@click.option("--connect", default="udpout:127.0.0.1:14550", show_default=True,
              help="Endpoint to talk over: udpout:HOST:PORT, udpin:..., tcp:..., tcpin:..., serial:PATH[:BAUD].")
@click.option("--sysid-base", default=1, show_default=True, type=click.IntRange(1, 250),
              help="System id of the first drone; the others follow.")
@click.option("--key", "keys", multiple=True, metavar="[SYSID=]KEY",
              help="Sign with this key (64 hex digits or a passphrase); SYSID=KEY for one drone (repeatable).")
@click.option("--rate", default=5.0, show_default=True, help="Position/attitude messages per second per drone.")
@click.option("--lossy", is_flag=True, help="Ignore the first copy of every command (tests resends).")
@click.option("--no-gps-loss", is_flag=True, help="Never lose the GPS fix.")
@click.option("--seconds", default=0.0, help="Stop after this long (0 = until Ctrl-C).")
@example("fieldhub sim drone --count 3 --connect udpout:127.0.0.1:14550\n"
         "fieldhub sim drone --count 2 --key 1=secret-passphrase")
def sim_drone(count: int, connect: str, sysid_base: int, keys: tuple[str, ...], rate: float, lossy: bool,
              no_gps_loss: bool, seconds: float) -> None:
    """Simulated ArduCopter drones flying square missions over real MAVLink sockets.

    Battery drains (failsafe RTL at 25%), GPS is lost now and then, and RTL / LAND /
    mode / goto / arm / disarm commands are honoured with proper COMMAND_ACKs.
    模拟无人机：任务飞行、电量消耗、偶发 GPS 丢失、响应指令。
    """
    from fieldhub.sources.mavlink.config import key_bytes
    from simulators.drone import DroneSwarm

    key_map: dict[int, bytes] = {}
    for k in keys:
        sysid, sep, text = k.partition("=")
        if sep and sysid.isdigit():
            key_map[int(sysid)] = key_bytes(text)
        else:
            key_map.update({s: key_bytes(k) for s in range(sysid_base, sysid_base + count)})
    swarm = DroneSwarm(count, connect, sysid_base=sysid_base, keys=key_map, rate_hz=rate,
                       lossy=lossy, gps_loss=not no_gps_loss)
    swarm.start()
    click.echo(f"{count} simulated drones (sysid {sysid_base}-{sysid_base + count - 1}) on {connect}"
               f"{', signing ' + ','.join(map(str, sorted(key_map))) if key_map else ''}; Ctrl-C to stop",
               err=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait(seconds if seconds > 0 else None)
    except KeyboardInterrupt:
        pass
    finally:
        swarm.stop()
    for k, v in swarm.summary().items():
        click.echo(f"{k}: {v}", err=True)

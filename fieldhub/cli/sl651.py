"""CLI for SL 651-2014 hydrological stations: ``fieldhub sl651 stations``."""

from __future__ import annotations

import click

from fieldhub.cli.common import emit_json, example, hub_options, json_option, local_time
from fieldhub.core.config import Config
from fieldhub.core.errors import FieldhubError, HubNotRunning


@click.group("sl651")
def sl651() -> None:
    """SL 651-2014 hydrological stations (水文遥测站) reporting over TCP."""


@sl651.command("stations")
@hub_options
@json_option
@example("fieldhub sl651 stations --json")
def stations(cfg: Config, as_json: bool) -> None:
    """Stations the running hub has heard since it started: device, channel, last report,
    battery voltage, reports, stored, duplicates, confirms, keep-alives and bad frames."""
    from fieldhub.core import control

    try:
        rows = control.call(cfg.data_dir, "sl651.stations", {})
    except HubNotRunning:
        raise HubNotRunning("no hub is running: station counters live in the running hub "
                            "(start it with `fieldhub run`) / hub 未运行，测站状态仅在运行中的 hub 内") from None
    except FieldhubError as exc:
        if "unknown command" not in str(exc):
            raise
        raise FieldhubError("the running hub has no SL651 server ([sl651] enabled = false) "
                            "/ 运行中的 hub 未启用 SL651") from None
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no SL651 station has reported yet / 尚无测站上报")
        return
    from fieldhub.cli.render import table

    table(["station", "device", "channel", "last report", "battery V", "reports", "stored", "dup",
           "confirms", "keep-alive", "bad"],
          [[r["station"], r["device_id"] or "(unknown)", r["channel"], local_time(r["last_report_ns"]),
            "-" if r["battery_v"] is None else r["battery_v"], r["reports"], r["stored"], r["duplicates"],
            r["confirms"], r["keepalives"], r["bad_frames"]] for r in rows])


@sl651.command("query")
@click.argument("station")
@click.option("--elements", "elements", multiple=True, metavar="ID[,ID...]",
              help="Only these SL651 element identifiers (Z, PJ, PT, VT, ...); repeatable or comma-separated.")
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(0.5, 60.0),
              help="Seconds to wait for the station's answer.")
@hub_options
@json_option
@example("fieldhub sl651 query wl-001\n"
         "fieldhub sl651 query 0012345678 --elements Z,PJ --json")
def query(cfg: Config, station: str, elements: tuple[str, ...], timeout: float, as_json: bool) -> None:
    """Ask a station for its current values now (real-time query, function 37) and print them.

    STATION is a device id or the 10-digit station address of a registered station. The running
    hub sends the query over the station's open TCP connection and waits for the answer, which is
    also stored like any report. Exit 0 with an answer; 1 when the station is unknown, not
    connected or silent; 3 when no hub runs. 实时查询测站当前数据（功能码 37）。
    """
    from fieldhub.core import control

    wanted = [e.strip().upper() for item in elements for e in item.split(",") if e.strip()]
    try:
        res = control.call(cfg.data_dir, "sl651.query", {"station": station, "elements": wanted,
                                                          "timeout": timeout}, timeout=timeout + 10)
    except HubNotRunning:
        raise HubNotRunning("no hub is running: a query goes through the running hub "
                            "(start it with `fieldhub run`) / hub 未运行，实时查询需经运行中的 hub") from None
    except FieldhubError as exc:
        if "not configured" not in str(exc) and "unknown command" not in str(exc):
            raise
        raise FieldhubError("the running hub has no SL651 server ([sl651] enabled = false) "
                            "/ 运行中的 hub 未启用 SL651") from None
    if as_json:
        emit_json(res)
        return
    click.echo(f"station {res['station']} ({res['device_id']}) at {res['peer']} answered in "
               f"{res['elapsed_ms']} ms, observed {local_time(res['observed_ns'])} / 测站已应答")
    from fieldhub.cli.render import table

    table(["element", "value", "unit"],
          [[k.split("_")[0], v, k.split("_", 1)[1] if "_" in k else ""] for k, v in sorted(res["elements"].items())])
    if res["missing"]:
        click.echo(f"not in the answer / 应答中无: {', '.join(res['missing'])}")


# ------------------------------------------------------------------ sim sl651
@click.command("sl651")
@click.option("--stations", default=10, show_default=True, type=click.IntRange(1, 100000))
@click.option("--rate", default=0.2, show_default=True, type=click.FloatRange(min=0.001),
              help="Reports per second per station (the simulated clock advances 5 minutes per report).")
@click.option("--hub", "hub_addr", default="127.0.0.1:5651", show_default=True, metavar="HOST:PORT",
              help="The hub's [sl651] listen address.")
@click.option("--seconds", default=10.0, show_default=True, help="How long to report (0 = until Ctrl-C).")
@click.option("--keepalive", default=40.0, show_default=True, help="Seconds idle before a 2F keep-alive.")
@click.option("--confirm-timeout", default=10.0, show_default=True, help="Resend an unconfirmed report after N s.")
@click.option("--corrupt", default=0.01, show_default=True, type=click.FloatRange(0, 1),
              help="Share of reports preceded by a corrupted copy (bad CRC).")
@click.option("--picture-every", default=24, show_default=True, type=click.IntRange(min=0),
              help="Every N reports a station sends a picture (36) as an M3 multi-packet set (0 = never).")
@click.option("--first", default=0, show_default=True, help="First station number (address 00 + 8 digits).")
@click.option("--drain", default=30.0, show_default=True, help="After --seconds, wait up to N s for confirms.")
@click.option("--beidou", "beidou_link", metavar="PORT", type=click.Path(dir_okay=False),
              help="Report as Beidou short messages instead: a simulated RDSS module appears at PORT "
                   "(a pty link; point a [serial] beidou_rdss port at it). Station cards from 300000.")
@click.option("--seed", default=651, show_default=True)
@json_option
@example("fieldhub sim sl651 --stations 200 --rate 0.5 --hub 127.0.0.1:5651 --seconds 60 --json\n"
         "fieldhub sim sl651 --stations 5 --rate 0.1 --beidou /tmp/ttyBD --seconds 120")
def sim_sl651(stations: int, rate: float, hub_addr: str, seconds: float, keepalive: float, confirm_timeout: float,
              corrupt: float, picture_every: int, first: int, drain: float, beidou_link: str | None, seed: int,
              as_json: bool) -> None:
    """Run N simulated SL651 stations (TCP DTUs, M2 confirm mode) against the hub.

    Timed (32), hourly (34, with F4/F5 series) and added/alarm (33) reports, a rain-burst pattern,
    pictures (36) as M3 multi-packet sets, keep-alives (2F), occasional corrupt frames (a NAKed
    picture packet is resent); an unconfirmed report is resent. Register the
    stations first: their addresses are 00 + 8 digits from --first (0000000000, 0000000001, ...).
    """
    import time

    from simulators.sl651 import SimOptions, Sl651Fleet

    host, sep, port = hub_addr.rpartition(":")
    if not sep or not port.isdigit():
        raise click.BadParameter(f"{hub_addr!r}: HOST:PORT / 格式应为 主机:端口", param_hint="--hub")
    rdss = None
    if beidou_link:
        from simulators.rdss import RdssSim

        try:
            rdss = RdssSim(beidou_link).start()
        except OSError as exc:
            raise FieldhubError(f"cannot create the Beidou module at {beidou_link}: {exc.strerror or exc} "
                                f"/ 无法创建北斗模块 {beidou_link}") from None
        if not as_json:
            click.echo(f"simulated RDSS module at {rdss.path} 北斗模块已就绪")
    fleet = Sl651Fleet(SimOptions(host=host or "127.0.0.1", port=int(port), stations=stations, rate=rate,
                                  seconds=seconds, keepalive=keepalive, confirm_timeout=confirm_timeout,
                                  corrupt=0.0 if rdss else corrupt, picture_every=picture_every, first=first,
                                  seed=seed, beidou=rdss)).start()
    try:
        while seconds <= 0 or fleet.summary()["generated"] == 0 or fleet.generating:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    drained = fleet.drain(drain)
    result = {**fleet.summary(), "drained": drained}
    fleet.stop()
    if rdss is not None:
        time.sleep(0.5)                        # let the module's last messages reach the hub
        rdss.stop()
    if result["connects"] == 0 and rdss is None:
        click.echo(f"no hub answered at {hub_addr} (is [sl651] enabled and listening there?) "
                   f"/ {hub_addr} 无 hub 应答", err=True)
    if as_json:
        emit_json(result)
        return
    click.echo(f"{result['stations']} stations generated {result['generated']} reports 已生成 (timed "
               f"{result['timed']}, hourly {result['hourly']}, alarm {result['alarms']}, pictures "
               f"{result['pictures']}); confirmed "
               f"{result['confirmed']} 已确认, unconfirmed {result['unconfirmed']}, resends {result['resends']}, "
               f"corrupt {result['corrupt_sent']}, keep-alives {result['keepalives']}, "
               f"connect failures {result['connect_failures']}")

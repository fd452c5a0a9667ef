"""CLI for the uplink: ``uplink status``, ``sim link``, ``center run`` and ``center hubs``."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import click

from fieldhub.cli.common import emit_json, example, hub_options, json_option, local_time
from fieldhub.core.config import Config
from fieldhub.core.errors import ConfigError, FieldhubError


def _center_dir(data_dir: str | None) -> Path:
    if data_dir:
        return Path(data_dir)
    from fieldhub.core.config import default_data_dir

    return Path(default_data_dir() + "-center")


def _age(ns: int | None) -> str:
    if not ns:
        return "-"
    s = max(0, (time.time_ns() - ns) / 1e9)
    return f"{s:.0f}s ago" if s < 120 else (f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.1f}h ago")


@click.group("uplink")
def uplink() -> None:
    """The uplink to the provincial center (上行至省级指挥中心)."""


@uplink.command("status")
@hub_options
@json_option
@example("fieldhub uplink status --data-dir /var/lib/fieldhub --json")
def uplink_status(cfg: Config, as_json: bool) -> None:
    """Each link's state, RTT, loss and bytes sent; backlog per class; age of the oldest unsent record.

    Asks the running hub over its control socket.
    """
    from fieldhub.core import control

    data = control.call(cfg.data_dir, "uplink.status")
    if as_json:
        emit_json(data)
        return
    from fieldhub.cli.render import table

    table(["link 链路", "kind", "state 状态", "since", "RTT ms", "loss 丢包", "bytes sent", "classes"],
          [[ln["name"], ln["kind"], ln["state"], local_time(ln.get("since_ns")),
            ln["rtt_ms"] if ln["rtt_ms"] is not None else "-",
            f"{ln['loss'] * 100:.0f}%" if ln.get("loss") is not None else "-", ln["bytes_sent"],
            ",".join(ln["classes"])] for ln in data["links"]],
          title=f"uplink of hub {data['hub_id']}: {data['in_flight']} batches in flight")
    oldest = data["oldest_unsent_s"]
    table(["class 类别", "backlog 积压", "oldest unsent 最早未发", "route 当前链路"],
          [[c, n, f"{oldest[c]:.0f}s" if c in oldest else "-", data["routes"].get(c) or "held 暂存"]
           for c, n in data["backlog"].items()], title=f"backlog {data['backlog_total']} records")


# ------------------------------------------------------------------ sim link
@click.command("link")
@click.option("--listen", "listen_port", type=int, required=True, help="Local port to accept on.")
@click.option("--to", "target", required=True, metavar="HOST:PORT", help="Where to forward (e.g. the broker).")
@click.option("--latency", default="300ms", show_default=True, help="One-way latency.")
@click.option("--bandwidth", default="512kbit", show_default=True, help="Link rate per direction (0 = unlimited).")
@click.option("--loss", default="0%", show_default=True, help="Segment loss; shows as retransmission stalls.")
@click.option("--outage-every", default="0s", help="Scheduled outage period (0 = none).")
@click.option("--outage-for", default="0s", help="Length of each scheduled outage.")
@click.option("--outage-mode", type=click.Choice(["stall", "drop"]), default="stall", show_default=True,
              help="stall: bytes wait (rain fade); drop: connections reset and refused (carrier lost).")
@click.option("--control", "control_port", type=int, help="Port for commands: down [SECONDS], up, set KEY=V, status.")
@click.option("--seed", type=int, help="Random seed for loss.")
@example("fieldhub sim link --listen 18830 --to 127.0.0.1:1883 --latency 300ms --bandwidth 512kbit \\\n"
         "    --loss 1% --outage-every 10m --outage-for 2m --control 18839\n"
         "echo 'down 60' | nc 127.0.0.1 18839      # a commanded one-minute outage")
def sim_link(listen_port: int, target: str, latency: str, bandwidth: str, loss: str, outage_every: str,
             outage_for: str, outage_mode: str, control_port: int | None, seed: int | None) -> None:
    """Emulate a satellite/4G link: a real TCP proxy with latency, bandwidth, loss and outages.

    SIGUSR1 toggles a commanded outage. Prints the link's counters every 10 s.
    """
    from fieldhub.core.config import parse_duration
    from fieldhub.uplink.config import parse_rate
    from simulators.link import LinkEmulator, LinkSpec, parse_loss, serve_control

    host, _, port = target.rpartition(":")
    if not port.isdigit():
        raise ConfigError(f"--to {target!r}", file="command line", expected="HOST:PORT, e.g. 127.0.0.1:1883")
    try:
        spec = LinkSpec(latency=float(parse_duration(latency)), bandwidth=parse_rate(bandwidth),
                        loss=parse_loss(loss), outage_every=float(parse_duration(outage_every)),
                        outage_for=float(parse_duration(outage_for)), outage_mode=outage_mode)
        dest = (host or "127.0.0.1", int(port))
    except ValueError as exc:
        raise ConfigError(str(exc), file="command line") from None
    em = LinkEmulator(listen_port, dest, spec, seed=seed)
    try:
        em.start()
    except OSError as exc:
        raise FieldhubError(f"cannot listen on port {listen_port}: {exc.strerror or exc}") from None
    server = serve_control(em, control_port) if control_port else None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: em.restore() if em.is_down else em.outage())
    click.echo(f"link emulator: 127.0.0.1:{listen_port} -> {dest[0]}:{dest[1]}, latency {spec.latency * 1000:.0f} ms, "
               f"{spec.bandwidth / 1000:.0f} kbit/s, loss {spec.loss:.1%}"
               + (f", control port {control_port}" if control_port else "") + " / 链路仿真已启动", err=True)
    while not stop.wait(10):
        st = em.status()
        click.echo(f"{'DOWN' if st['down'] else 'up'}: {st['active']} conns, up {st['bytes_up']} B, "
                   f"down {st['bytes_down']} B, stalls {st['stalls']}, outages {st['outages']}", err=True)
    if server is not None:
        server.shutdown()
    em.stop()


# ------------------------------------------------------------------ center
@click.group("center")
def center() -> None:
    """The provincial center's side: ingest workers and the registry of hubs (省级中心)."""


@center.command("run")
@click.option("--broker", required=True, metavar="mqtt://HOST:PORT", help="The center's MQTT broker (MQTT 5).")
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="Center data: store.db (query it with `fieldhub query --data-dir`), center.db.")
@click.option("--worker", help="Worker name (default: host-pid).")
@click.option("--influx", metavar="URL", help="Also write to InfluxDB, e.g. http://127.0.0.1:8086.")
@click.option("--influx-db", default="fieldhub", show_default=True, help="InfluxDB 1.x database.")
@click.option("--beidou", "beidou_port", metavar="PORT", help="The center's Beidou RDSS terminal (serial port or URL).")
@click.option("--tiantong", "tiantong_port", metavar="PORT", help="The center's Tiantong terminal (SMS in).")
@click.option("--mac-key", default="", envvar="FIELDHUB_UPLINK_MAC_KEY", help="Hex key for short-message MACs.")
@click.option("--ca-file", default="", help="TLS CA file (mqtts://).")
@click.option("--cert-file", default="", help="TLS client certificate.")
@click.option("--key-file", default="", help="TLS client key.")
@click.option("--username", default="", envvar="FIELDHUB_CENTER_USERNAME",
              help="The worker's account on the center broker (see `fieldhub provision center-broker`).")
@click.option("--password", default="", envvar="FIELDHUB_CENTER_PASSWORD",
              help="Its password (better: --password-file or FIELDHUB_CENTER_PASSWORD).")
@click.option("--password-file", default="", help="A file whose first line is the password.")
@click.option("--ack-keys", "ack_keys_file", default="", metavar="FILE",
              help="Sign each hub's acks with its key from this file (ack-keys.json, written by "
                   "`fieldhub provision center-broker`); without it acks go out unsigned.")
@example("fieldhub center run --broker mqtt://127.0.0.1:1883 --data-dir /var/lib/fieldhub-center\n"
         "fieldhub center run --broker mqtt://127.0.0.1:1883 --data-dir /var/lib/fieldhub-center --worker w2 \\\n"
         "    --username w2 --password-file /etc/fieldhub/center-w2.pass --ack-keys /etc/fieldhub/ack-keys.json")
def center_run(broker: str, data_dir: str | None, worker: str | None, influx: str | None, influx_db: str,
               beidou_port: str | None, tiantong_port: str | None, mac_key: str, ca_file: str, cert_file: str,
               key_file: str, username: str, password: str, password_file: str, ack_keys_file: str) -> None:
    """Run one ingest worker (start several: they share the stream via $share/center/...)."""
    from fieldhub.center.broker import read_ack_keys, read_password_file
    from fieldhub.center.worker import CenterWorker

    try:
        key = bytes.fromhex(mac_key)
    except ValueError:
        raise ConfigError("--mac-key is not hex", file="command line") from None
    if (beidou_port or tiantong_port) and not key:
        raise ConfigError("--beidou and --tiantong need --mac-key (hex, the key the hubs' uplink.mac_key holds): "
                          "without it anyone could forge a hub's short messages / 北斗与天通短报文需要 --mac-key",
                          file="command line")
    if password_file:
        if password:
            raise ConfigError("give --password or --password-file, not both", file="command line")
        password = read_password_file(password_file)
    if password and not username:
        raise ConfigError("--password needs --username", file="command line")
    ack_keys = read_ack_keys(ack_keys_file) if ack_keys_file else None
    sink = None
    if influx:
        from fieldhub.center.influx import CenterInflux

        sink = CenterInflux(influx, influx_db)
    tls = {"ca_file": ca_file, "cert_file": cert_file, "key_file": key_file, "username": username,
           "password": password}
    w = CenterWorker(broker, _center_dir(data_dir), worker=worker, influx=sink, beidou_port=beidou_port,
                     tiantong_port=tiantong_port, mac_key=key, tls=tls, ack_keys=ack_keys)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    click.echo(f"center worker {w.worker}: {broker} -> {w.data_dir} / 中心工作进程已启动", err=True)
    w.run(stop)
    click.echo(f"stopped: {w.stats}", err=True)


@center.command("hubs")
@click.option("--data-dir", type=click.Path(file_okay=False), help="The center's data dir.")
@json_option
@example("fieldhub center hubs --data-dir /var/lib/fieldhub-center --json")
def center_hubs(data_dir: str | None, as_json: bool) -> None:
    """Hubs the center has heard from: last contact, backlog they report, links in use."""
    from fieldhub.center.worker import CENTER_FILE, HubRegistry

    reg = HubRegistry(_center_dir(data_dir) / CENTER_FILE, readonly=True)
    hubs = reg.hubs()
    if as_json:
        emit_json(hubs)
        return
    from fieldhub.cli.render import table

    table(["hub 指挥车", "last contact 最近联系", "records 记录", "dups 重复", "short msgs 短报文",
           "backlog 积压", "last link 链路", "links"],
          [[h["hub_id"], f"{local_time(h['last_ns'])} ({_age(h['last_ns'])})", h["records"], h["duplicates"],
            h["short_messages"], h["backlog_total"], h["last_link"],
            " ".join(f"{k}:{v}" for k, v in h["links"].items())] for h in hubs],
          title=f"{len(hubs)} hubs")


# ------------------------------------------------------------------ provision center-broker
@click.command("center-broker")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for mosquitto.conf, passwd, acl, credentials.json, ack-keys.json.")
@click.option("--hub", "hubs", multiple=True, required=True, help="A hub id (repeat for each vehicle).")
@click.option("--worker", "workers", multiple=True, help="A center worker account (repeat; default: center).")
@click.option("--listen", default="0.0.0.0:1883", show_default=True, metavar="HOST:PORT",
              help="Where the broker listens.")
@click.option("--run-as", default="mosquitto", show_default=True, help="System user Mosquitto drops to as root.")
@click.option("--rotate", multiple=True, metavar="NAME", help="Give this account a new password (repeat).")
@json_option
@example("fieldhub provision center-broker --out /etc/mosquitto/center --hub vehicle-01 --hub vehicle-02 "
         "--worker w1 --worker w2\nmosquitto -c /etc/mosquitto/center/mosquitto.conf")
def provision_center_broker(out_dir: str, hubs: tuple[str, ...], workers: tuple[str, ...], listen: str, run_as: str,
                            rotate: tuple[str, ...], as_json: bool) -> None:
    """The center's broker: one account per hub and per worker, and an ACL where hub H may publish
    only fh/hub/H/uplink and read only fh/hub/H/ack and fh/hub/H/cmd (中心代理：每车一账号，主题隔离).

    Passwords go to credentials.json and each hub's ack key to ack-keys.json (both mode 0600);
    re-running keeps them unless --rotate names one (for a hub, --rotate replaces both).
    """
    from fieldhub.center.broker import CenterBrokerOptions, write_center_broker

    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        raise ConfigError(f"--listen {listen!r}", file="command line", expected="HOST:PORT, e.g. 0.0.0.0:1883")
    out = write_center_broker(out_dir, CenterBrokerOptions(
        hubs=list(hubs), workers=list(workers) or ["center"], port=int(port), listen_host=host or "0.0.0.0",
        run_as=run_as, rotate=list(rotate)))
    if as_json:
        emit_json(out)
        return
    click.echo(f"center broker for {len(out['hubs'])} hubs, {len(out['workers'])} workers: mosquitto -c {out['conf']}")
    new = ", ".join(out["new_passwords"]) or "none"
    click.echo(f"passwords in {out['credentials']} (0600); new: {new} / 账号密码已写入 {out['credentials']}")
    click.echo(f"ack keys in {out['ack_keys']} (0600): give each hub its own as [uplink] ack_key, and the file to "
               f"`center run --ack-keys`; new: {', '.join(out['new_ack_keys']) or 'none'} / "
               f"确认密钥已写入 {out['ack_keys']}")

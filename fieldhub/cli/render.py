"""Terminal output for operators (rich tables; local time on screen)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text


def console() -> Console:
    return Console(highlight=False, soft_wrap=False)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> None:
    t = Table(title=title or None, title_justify="left")
    for h in headers:
        t.add_column(h)
    for row in rows:
        t.add_row(*[str(c) for c in row])
    console().print(t)


def _local(ts_ns: int | None) -> str:
    if not ts_ns:
        return "-"
    return datetime.fromtimestamp(ts_ns / 1e9, tz=UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _bytes(n: int | None) -> str:
    n = int(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


#: colour of a component's state on screen
STATE_STYLE = {"ok": "green", "retrying": "yellow", "down": "red", "off": "dim"}


def print_status(s: dict[str, Any]) -> None:
    c = console()
    state = f"[green]running[/] (pid {s.get('pid')}, up {s.get('uptime_s', 0):.0f}s)" if s.get("running") \
        else "[yellow]not running[/] (read from data dir / 未运行，读取数据目录)"
    c.print(f"hub [bold]{s['hub_id']}[/] — {state}")
    c.print(f"data dir {s['data_dir']} — {_local(s.get('time_utc_ns'))} local")
    dev = s.get("devices", {})
    t = Table(title=f"devices 设备: {dev.get('total', 0)}", title_justify="left")
    t.add_column("level 级别")
    t.add_column("online 在线", justify="right")
    t.add_column("offline 离线", justify="right")
    for level in ("province", "city", "county", "township", "village"):
        v = dev.get("by_level", {}).get(level)
        if v:
            t.add_row(level, str(v["online"]), str(v["offline"]))
    for kind, v in sorted(dev.get("by_kind", {}).items()):
        t.add_row(f"kind {kind}", str(v["online"]), str(v["offline"]))
    c.print(t)
    log = s.get("log", {})
    cap = log.get("disk_cap")
    c.print(f"log 日志: {log.get('records', 0)} records, {_bytes(log.get('bytes'))}"
            f"{' of cap ' + _bytes(cap) if cap else ''}; quarantined 隔离: {log.get('quarantine_held', 0)}; "
            f"evicted 淘汰: {log.get('counters', {}).get('evicted', 0)}")
    if "store" in s:
        c.print(f"local store 本地存储: {s['store']['records']} records, {_bytes(s['store']['bytes'])}")
    t = Table(title="consumers 消费者 (backlog by class 按优先级积压)", title_justify="left")
    t.add_column("consumer")
    classes = ("alarm", "command", "drill", "position", "telemetry", "bulk")
    for k in classes:
        t.add_column(k, justify="right")
    t.add_column("total", justify="right")
    for name, info in sorted(log.get("consumers", {}).items()):
        b = info["backlog"]
        t.add_row(name, *[str(b.get(k, 0)) for k in classes], str(info.get("backlog_total", 0)))
    c.print(t)
    for name, comp in sorted(s.get("components", {}).items()):
        # the common shape: state, then the one-line scalars (nested values live under detail)
        brief = ", ".join(f"{k}={v}" for k, v in comp.items()
                          if isinstance(v, (int, float, str)) and k not in ("consumer", "state"))
        state = comp.get("state")
        mark = f"[{STATE_STYLE.get(state, 'white')}]{state}[/] " if state else ""
        c.print(f"[bold]{name}[/]: {mark}{brief}")
    errors = s.get("recent_errors") or []
    if errors:
        c.print("recent problems 最近问题:")
        for e in errors[-10:]:
            c.print(f"  {_local(e.get('ts'))} [{e.get('level')}] {e.get('message')}")


def _brief(comp: dict[str, Any], width: int) -> str:
    """A component's status line in words: its scalars, the ones that say most first, cut to width."""
    skip = {"consumer", "state", "last_success_ns", "last_error_ns"}
    parts = [f"{k} {v}" for k, v in comp.items()
             if k not in skip and isinstance(v, (int, float, str)) and not isinstance(v, bool) and v not in ("", "-")]
    text = ", ".join(parts)
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def status_frame(s: dict[str, Any], width: int = 80, height: int = 24) -> Group:
    """One screen of the live view (``fieldhub status --watch``), at most ``width`` x ``height``:
    the hub, devices by level with the silent ones named, the log and each consumer's backlog,
    one line per component, and the latest problems to fill what is left."""
    lines: list[Text] = []
    run = (f"running, pid {s.get('pid')}, up {s.get('uptime_s', 0):.0f}s" if s.get("running")
           else "NOT RUNNING (data dir) / 未运行")
    lines.append(Text.assemble((f"fieldhub {s.get('hub_id', '?')}", "bold"), f" — {run} — "
                               f"{_local(s.get('time_utc_ns'))}"))
    dev = s.get("devices", {})
    levels = [(lvl, v) for lvl in ("province", "city", "county", "township", "village")
              if (v := dev.get("by_level", {}).get(lvl))]
    online = sum(v["online"] for _, v in levels)
    lines.append(Text(f"devices 设备 {dev.get('total', 0)}: {online} online 在线, "
                      f"{dev.get('total', 0) - online} offline 离线  " +
                      "  ".join(f"{lvl} {v['online']}/{v['online'] + v['offline']}" for lvl, v in levels)))
    silent = dev.get("silent") or []
    if silent:
        lines.append(Text(f"  silent 无响应: {', '.join(silent)}", style="yellow"))
    log = s.get("log", {})
    cap = log.get("disk_cap")
    used = f"{_bytes(log.get('bytes'))}" + (f" of {_bytes(cap)} ({100 * (log.get('bytes') or 0) / cap:.0f}%)"
                                            if cap else "")
    lines.append(Text(f"log 日志 {log.get('records', 0)} records, {used}; quarantined 隔离 "
                      f"{log.get('quarantine_held', 0)}; evicted 淘汰 {log.get('counters', {}).get('evicted', 0)}"))
    for name, info in sorted((log.get("consumers") or {}).items()):
        b = info.get("backlog") or {}
        waiting = ", ".join(f"{k} {v}" for k, v in b.items() if v)
        lines.append(Text(f"  backlog {name}: {info.get('backlog_total', 0)}" + (f" ({waiting})" if waiting else "")))
    for name, comp in sorted((s.get("components") or {}).items()):
        state = str(comp.get("state", "?"))
        head = f"{name} {state}: "
        lines.append(Text.assemble((name, "bold"), " ", (state, STATE_STYLE.get(state, "white")), ": ",
                                   _brief(comp, width - len(head))))
    problems = s.get("recent_errors") or []
    room = height - len(lines) - 1
    if problems and room > 0:
        lines.append(Text("recent problems 最近问题:", style="bold"))
        for e in problems[-(room - 1):] if room > 1 else []:
            lines.append(Text(f"  {_local(e.get('ts'))[11:]} {e.get('message_zh') or e.get('message')}",
                              style="red" if e.get("level") == "error" else "yellow"))
    for line in lines:
        line.truncate(width, overflow="ellipsis")
        line.no_wrap = True
    return Group(*lines[:height])

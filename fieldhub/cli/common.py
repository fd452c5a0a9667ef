"""What every command group shares: the error-to-exit-code group, --config/--data-dir/--set, --json,
the Example section of --help, local time on screen and --since/--until parsing."""

from __future__ import annotations

import functools
import inspect
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click
import orjson

from fieldhub.core import config as configmod
from fieldhub.core.errors import ConfigError, FieldhubError, HubNotRunning

if TYPE_CHECKING:
    from fieldhub.core.registry import Registry

F = TypeVar("F", bound=Callable[..., Any])

EPILOG_WIDTH = 100

#: command flags that are shorthands for a config key (declared on the command itself)
FLAG_KEYS = {"broker": "mqtt.broker"}


class HubGroup(click.Group):
    """Turns the hub's own errors into one clear line and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            click.echo(f"fieldhub: config error: {exc}", err=True)
            sys.exit(2)
        except HubNotRunning as exc:
            click.echo(f"fieldhub: {exc}", err=True)
            sys.exit(3)
        except FieldhubError as exc:
            click.echo(f"fieldhub: error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


def example(text: str) -> Callable[[F], F]:
    """Append an 'Example' section to a command's help."""

    def deco(f: F) -> F:
        f.__doc__ = inspect.cleandoc(f.__doc__ or "") + "\n\n\b\nExample:\n" + "\n".join(
            "  " + line for line in text.strip().splitlines())
        return f
    return deco


def parse_set(values: Iterable[str]) -> dict[str, str]:
    """``--set section.key=value`` items -> {"section.key": "value"}."""
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}", file="command line", key=item,
                              expected="section.key=value")
        out[key.strip()] = value.strip()
    return out


def hub_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--config, --data-dir and --set on a command; passes ``cfg`` (loaded Config).

    A shorthand flag from ``FLAG_KEYS`` declared on the command (``run --broker``) is
    layered with --set and --data-dir, above the environment and the file."""

    @click.option("--config", "config_path", type=click.Path(dir_okay=False),
                  help="TOML config file (default: $FIELDHUB_CONFIG, ./fieldhub.toml, /etc/fieldhub/fieldhub.toml).")
    @click.option("--data-dir", type=click.Path(file_okay=False),
                  help="Data directory (log, store, registry, control socket). [hub.data_dir]")
    @click.option("--set", "settings", multiple=True, metavar="SECTION.KEY=VALUE",
                  help="Override any config key, e.g. --set log.disk_cap=1GiB (repeatable).")
    @functools.wraps(f)
    def wrapper(*args: Any, config_path: str | None, data_dir: str | None,
                settings: tuple[str, ...], **kwargs: Any) -> Any:
        overrides: dict[str, Any] = dict(parse_set(settings))
        if data_dir:
            overrides["hub.data_dir"] = data_dir
        for flag, key in FLAG_KEYS.items():
            value = kwargs.pop(flag, None)
            if value:
                overrides[key] = value
        from fieldhub.hub import load_config

        kwargs["cfg"] = load_config(config_path, overrides)
        return f(*args, **kwargs)
    return wrapper


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(f)


def emit_json(obj: Any) -> None:
    click.echo(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS, default=str).decode())


def emit_json_lines(objs: Iterable[bytes]) -> None:
    """One JSON document per line on stdout (``query --json``, ``events --json``)."""
    out = sys.stdout.buffer
    for line in objs:
        out.write(line + b"\n")
    out.flush()


def local_time(ts_ns: int | None) -> str:
    """Timestamps are UTC inside; operators read local time."""
    if not ts_ns:
        return "-"
    return datetime.fromtimestamp(ts_ns / 1e9, tz=UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S%z")


#: the times a query can name: 1970 up to the year 9999 (timestamps are ns in a signed 64-bit column)
_TIME_RANGE_NS = (0, 253_402_300_799 * 10**9)


def parse_time(value: str | None, *, now_ns: int | None = None) -> int | None:
    """'1h', '30m', '2d' (ago), epoch seconds, or an ISO 8601 time (local if no zone) -> ns UTC."""
    if value is None:
        return None
    now_ns = now_ns or time.time_ns()
    try:
        ns = now_ns - int(configmod.parse_duration(value) * 1e9) if value[-1].isalpha() else \
            int(float(value) * 1e9)
    except (ValueError, OverflowError):
        pass
    else:
        if not _TIME_RANGE_NS[0] <= ns <= _TIME_RANGE_NS[1]:
            raise click.BadParameter(f"{value!r} is not a time between 1970 and 9999 "
                                     f"/ 时间超出范围（1970–9999 年）")
        return ns
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r}: use a duration ago (1h, 30m, 2d), epoch seconds or "
                                 "an ISO time (2026-11-30T08:00, local unless a zone is given)") from None
    if dt.tzinfo is None:
        dt = dt.astimezone()
    return int(dt.timestamp() * 1e9)


def open_registry(cfg: configmod.Config) -> Registry:
    """The device registry of ``cfg``'s data dir (created if missing)."""
    from fieldhub.core.datadir import REGISTRY_FILE, prepare_data_dir
    from fieldhub.core.profiles import names as known_models
    from fieldhub.core.registry import Registry

    return Registry(prepare_data_dir(cfg.data_dir) / REGISTRY_FILE, known_models())

"""``fieldhub keys``: the hub's own key and the issuers allowed to command devices (docs/commands.md)."""

from __future__ import annotations

import click

from fieldhub.cli.common import emit_json, example, hub_options, json_option, local_time
from fieldhub.core.config import Config
from fieldhub.core.errors import ValidationError

_ROLE = click.Choice(["commander", "operator"])


@click.group("keys")
def keys() -> None:
    """Command keys: the hub's own key, issuers' keys, admin codes and roles (指令密钥)."""


@keys.command("init")
@click.option("--admin-code", help="The vehicle's 12-digit admin code. [hub.admin_code]")
@click.option("--role", type=_ROLE, default="commander", show_default=True,
              help="Role of the vehicle's own key as an issuer.")
@hub_options
@json_option
@example("fieldhub keys init --config fieldhub.toml")
def keys_init(cfg: Config, admin_code: str | None, role: str, as_json: bool) -> None:
    """Create the hub's Ed25519 key (mode 0600) and print its public key.

    The key signs commands given at the vehicle and the audit log's tree heads; it is
    registered as issuer "hub" with the vehicle's admin code. Never overwrites a key."""
    from fieldhub.core.keys import HUB_ISSUER, HUB_KEY_FILE, KeyStore, init_hub_key

    code = admin_code or cfg.hub.admin_code
    pub, created = init_hub_key(cfg.data_dir)
    registered = False
    with KeyStore(cfg.data_dir) as store:
        if code and store.get(HUB_ISSUER) is None:
            store.add(HUB_ISSUER, kind="ed25519", material=pub, admin_code=code, role=role, unit=cfg.hub.id)
            registered = True
        issuer = store.get(HUB_ISSUER)
    if as_json:
        emit_json({"public_key": pub.hex(), "created": created, "file": str(cfg.data_dir / HUB_KEY_FILE),
                   "issuer": issuer.public_view() if issuer else None})
        return
    click.echo(("created" if created else "exists (kept) / 已存在，未覆盖") + f": {cfg.data_dir / HUB_KEY_FILE}")
    click.echo(f"hub public key / 本车公钥: {pub.hex()}")
    if registered:
        click.echo(f"registered as issuer {HUB_ISSUER!r}, admin code {code}, role {role}")
    elif issuer is None:
        click.echo("not registered as an issuer: no admin code; set [hub] admin_code or pass --admin-code "
                   "/ 未设区划代码，本车密钥尚不能签发指令", err=True)


@keys.command("add")
@click.argument("name")
@click.option("--public-key", metavar="HEX|FILE", help="Ed25519 public key: 64 hex digits, or a file (hex or PEM).")
@click.option("--hmac-key", metavar="HEX", help="Shared HMAC secret (>= 16 bytes, hex) of a narrowband issuer.")
@click.option("--admin-code", required=True, help="The issuer's 12-digit admin code: it commands devices within it.")
@click.option("--role", type=_ROLE, default="operator", show_default=True)
@click.option("--unit", default="", help="The issuer's unit, e.g. '渭城区应急管理局'.")
@hub_options
@json_option
@example("fieldhub keys add weicheng-cmd --public-key 3b6a27bc...e1 --admin-code 610404000000 --role commander\n"
         "fieldhub keys add center-bd --hmac-key 00112233445566778899aabbccddeeff --admin-code 610000000000")
def keys_add(cfg: Config, name: str, public_key: str | None, hmac_key: str | None, admin_code: str,
             role: str, unit: str, as_json: bool) -> None:
    """Register an issuer: an Ed25519 key (IP paths) or an HMAC key (Beidou/Tiantong)."""
    from fieldhub.core.keys import KeyStore, parse_hmac_key, parse_public_key

    if bool(public_key) == bool(hmac_key):
        raise ValidationError("give exactly one of --public-key and --hmac-key / 须且只能给出一种密钥")
    kind, material = (("ed25519", parse_public_key(public_key)) if public_key
                      else ("hmac", parse_hmac_key(hmac_key or "")))
    with KeyStore(cfg.data_dir) as store:
        issuer = store.add(name, kind=kind, material=material, admin_code=admin_code, role=role, unit=unit)
    view = issuer.public_view()
    if as_json:
        emit_json(view)
        return
    click.echo(f"added {name}: {kind}, admin code {issuer.admin_code} ({view['level']}), role {role}, "
               f"key id {view['key_id']} / 已添加")


@keys.command("list")
@hub_options
@json_option
@example("fieldhub keys list --json")
def keys_list(cfg: Config, as_json: bool) -> None:
    """List issuers (never a secret) and the verifier's counts per verdict."""
    from fieldhub.core.keys import KeyStore

    with KeyStore(cfg.data_dir) as store:
        issuers = [i.public_view() for i in store.all()]
        counts = store.verdict_counts()
    if as_json:
        emit_json({"keys": issuers, "verdicts": counts})
        return
    from fieldhub.cli.render import table

    table(["name", "kind", "admin code", "level", "role", "unit", "state", "added (local)"],
          [[i["name"], i["kind"], i["admin_code"], i["level"], i["role"], i["unit"] or "-",
            i["state"] if not i["revoked"] else f"revoked {local_time(i['revoked'])}", local_time(i["created"])]
           for i in issuers], title=f"{len(issuers)} keys")
    if counts:
        click.echo("verdicts / 验证结果: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


@keys.command("revoke")
@click.argument("name")
@hub_options
@json_option
@example("fieldhub keys revoke weicheng-cmd")
def keys_revoke(cfg: Config, name: str, as_json: bool) -> None:
    """Revoke a key: every command it signs from now on is refused (it stays listed)."""
    from fieldhub.core.keys import KeyStore

    with KeyStore(cfg.data_dir) as store:
        if not store.revoke(name):
            raise ValidationError(f"no key named {name!r} / 无此密钥")
    if as_json:
        emit_json({"name": name, "state": "revoked"})
        return
    click.echo(f"revoked {name} / 已吊销")

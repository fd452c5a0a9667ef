"""``fieldhub audit show|verify|export|heads``: the tamper-evident audit log (审计日志)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from fieldhub.cli.common import emit_json, example, hub_options, json_option, local_time, parse_time
from fieldhub.core import audit as auditmod
from fieldhub.core.config import Config
from fieldhub.core.errors import ValidationError


@click.group("audit")
def audit() -> None:
    """The audit log: every operator action, command and provisioning, in a Merkle tree whose signed
    heads make any later edit provable (审计日志，防篡改)."""


def _own_public_key(data_dir: Path) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from fieldhub.core.keys import hub_signing_key

    raw: bytes = hub_signing_key(data_dir).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return raw


def _public_key(value: str | None) -> bytes | None:
    """An Ed25519 public key as 64 hex digits, or a file holding hex, 32 raw bytes or PEM."""
    if not value:
        return None
    path = Path(value)
    data = path.read_bytes() if path.is_file() else value.encode()
    if data.lstrip().startswith(b"-----BEGIN"):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

        key = load_pem_public_key(data)
        if not isinstance(key, Ed25519PublicKey):
            raise ValidationError(f"{value}: not an Ed25519 public key / 不是 Ed25519 公钥")
        return key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    if len(data) == 32 and path.is_file():
        return data
    try:
        raw = bytes.fromhex(data.decode(errors="replace").strip())
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ValidationError(f"--public-key {value!r}: expected 64 hex digits or a file with the hub's "
                              f"Ed25519 public key (hex, raw or PEM) / 公钥格式错误")
    return raw


@audit.command("show")
@hub_options
@click.option("--since", help="Only entries since this time (1h, 2d, epoch s or ISO time).")
@click.option("--limit", type=click.IntRange(min=1), help="Only the last N entries.")
@json_option
@example("fieldhub audit show --since 1d\nfieldhub audit show --json | jq .action")
def audit_show(cfg: Config, since: str | None, limit: int | None, as_json: bool) -> None:
    """The audit entries (oldest first): time, actor, action, subject, detail."""
    since_ns = parse_time(since)
    rows = auditmod.entries(auditmod.read_lines(cfg.data_dir / auditmod.AUDIT_FILE))
    if since_ns is not None:
        rows = [e for e in rows if isinstance(e.get("ts"), int) and e["ts"] >= since_ns]
    if limit:
        rows = rows[-limit:]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no audit entries / 无审计记录")
        return
    for e in rows:
        detail = " ".join(f"{k}={v}" for k, v in (e.get("detail") or {}).items())
        click.echo(f"{e.get('seq', '?'):>6}  {local_time(e.get('ts'))}  {e.get('actor', '')!s:<16} "
                   f"{e.get('action', '')!s:<22} {e.get('subject', '')!s:<16} {detail}".rstrip())


@audit.command("verify")
@hub_options
@click.option("--file", "export_file", type=click.Path(dir_okay=False, exists=True),
              help="Check this export (from `audit export`) instead of the data dir (the center's check).")
@click.option("--heads", "heads_file", type=click.Path(dir_okay=False, exists=True),
              help="Signed heads received earlier from the hub (JSON array or JSON lines); with --file.")
@click.option("--public-key", help="The hub's Ed25519 public key (hex or file): head signatures are checked "
              "(without it, heads are trusted as given).")
@json_option
@example("fieldhub audit verify\n"
         "fieldhub audit verify --file hub7-audit.jsonl --heads hub7-heads.json --public-key hub7.pub")
def audit_verify(cfg: Config, export_file: str | None, heads_file: str | None, public_key: str | None,
                 as_json: bool) -> None:
    """Exit 0 when the audit log is intact; otherwise exit 1 with the first bad entry and why.

    Without --file: the data dir's log against its own signed heads. With --file and --heads: an
    export against heads the center received before, by consistency proofs — a file rewritten and
    re-signed as a whole no longer fits them. 校验审计日志是否被篡改。"""
    key = _public_key(public_key)
    if export_file:
        if not heads_file:
            raise click.UsageError("--file needs --heads (the signed heads the center received before)")
        report = auditmod.verify_export(Path(export_file), auditmod.read_heads(Path(heads_file)), key)
        what = export_file
    elif heads_file:
        raise click.UsageError("--heads goes with --file EXPORT")
    else:
        if key is None and auditmod.hub_signer(cfg.data_dir) is not None:
            key = _own_public_key(cfg.data_dir)  # the hub's own heads are checked with its own key
        report = auditmod.verify_dir(cfg.data_dir, key)
        what = str(cfg.data_dir / auditmod.AUDIT_FILE)
    out: dict[str, Any] = report.as_dict() | {"file": what, "signatures_checked": key is not None}
    if as_json:
        emit_json(out)
    elif report.ok:
        sig = "" if key is not None else " (head signatures not checked: give --public-key)"
        if report.heads_checked == 0:
            sig = " (no signed heads yet: only the chain of entries is checked / 尚无签名树头，仅校验链)"
        click.echo(f"audit log intact: {report.entries} entries, {report.heads_checked} signed heads "
                   f"consistent{sig} / 审计日志完整")
    else:
        assert report.problem is not None
        at = f"entry {report.problem.index}: " if report.problem.index is not None else ""
        click.echo(f"AUDIT LOG TAMPERED OR DAMAGED / 审计日志被篡改或损坏: {at}{report.problem.reason}", err=True)
    sys.exit(0 if report.ok else 1)


@audit.command("export")
@hub_options
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="File to write.")
@json_option
@example("fieldhub audit export --out /media/usb/hub7-audit.jsonl")
def audit_export(cfg: Config, out: str, as_json: bool) -> None:
    """Write the audit log (entries verbatim, after a header with the heads held here) for the center."""
    info = auditmod.export(cfg.data_dir, Path(out), cfg.hub.id)
    if as_json:
        emit_json(info)
    else:
        click.echo(f"exported {info['size']} audit entries and {info['heads']} signed heads to {out} "
                   f"/ 已导出审计日志")


@audit.command("heads")
@hub_options
@json_option
@example("fieldhub audit heads --json > hub7-heads.json")
def audit_heads(cfg: Config, as_json: bool) -> None:
    """The signed tree heads this hub made (size, root, time, signature)."""
    heads = auditmod.read_heads(cfg.data_dir / auditmod.HEADS_FILE)
    if as_json:
        emit_json(heads)
        return
    if not heads:
        click.echo("no signed heads yet / 尚无签名树头")
    for h in heads:
        click.echo(f"{h['size']:>8}  {local_time(h['ts'])}  {h['root']}")

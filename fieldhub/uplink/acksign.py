"""Signed acks: the center's MAC over the exact ack bytes it publishes, verified by the hub.

Every hub has its own ack key (32 random bytes, written by ``fieldhub provision
center-broker`` into ``ack-keys.json``; the hub holds it as ``[uplink] ack_key``, the center
reads the file with ``center run --ack-keys``). The center builds an ack as a JSON object ``B``
and publishes ``B`` with one more member appended, ``,"mac":"<64 hex>"}`` in place of its
closing brace, where the MAC is HMAC-SHA256(key, ``"fieldhub-ack-v1\\0"`` + ``B``). A hub without
a key reads it as before (the extra member is ignored); a hub with a key recomputes the MAC
over the bytes before the suffix plus ``}``, compares in constant time and parses only those
signed bytes, so nothing outside the MAC is ever read.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from fieldhub.core.errors import ValidationError

DOMAIN = b"fieldhub-ack-v1\0"
KEY_BYTES = 32
MIN_KEY_BYTES = 16
_SUFFIX = re.compile(rb',"mac":"([0-9a-f]{64})"\}\Z')


def parse_key(text: str, what: str = "ack key") -> bytes:
    """A hex ack key as bytes; ValidationError unless it is hex of at least 16 bytes."""
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ValidationError(f"{what}: not hex / 不是十六进制") from None
    if len(key) < MIN_KEY_BYTES:
        raise ValidationError(f"{what}: {len(key)} bytes; at least {MIN_KEY_BYTES} "
                              f"(`fieldhub provision center-broker` writes {KEY_BYTES}) / 密钥过短")
    return key


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, DOMAIN + body, hashlib.sha256).digest()


def sign(body: bytes, key: bytes) -> bytes:
    """``body`` (a non-empty JSON object's bytes) with its MAC appended as a last member."""
    if not (body.startswith(b"{") and body.endswith(b"}") and len(body) > 2):
        raise ValueError("an ack is a non-empty JSON object")
    return body[:-1] + b',"mac":"' + _mac(key, body).hex().encode() + b'"}'


def verify(payload: bytes, key: bytes) -> bytes | None:
    """The signed ack bytes if ``payload`` carries a MAC that verifies under ``key``, else None."""
    m = _SUFFIX.search(payload)
    if m is None:
        return None
    body = payload[:m.start()] + b"}"
    if not hmac.compare_digest(_mac(key, body), bytes.fromhex(m.group(1).decode())):
        return None
    return body

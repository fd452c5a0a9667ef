"""Types of the C line-protocol encoder (``_lpenc.c``), so mypy checks its callers."""

from collections.abc import Callable, Collection

#: the body keys the module was built with, in the order of ``fieldhub.core.body.C_KEYS``
BODY_KEYS: str

def encode(bodies: bytes, cache: dict[bytes, bytes], series: Callable[[bytes, bytes, bytes], bytes | None],
           nudge: bool, skip: Collection[str] | None, /) -> tuple[bytes, int, list[int]]:
    """Log bodies joined by newlines to line protocol: ``(lines joined, how many, indexes handed back)``."""

"""Identity primitives every layer uses: ids, the clock, secret digests. Imports nothing of
modelfab, so any layer may import it."""

from __future__ import annotations

import hashlib
import secrets
import time


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def now() -> float:
    """UNIX seconds, the unit of every timestamp in the state store."""
    return time.time()


def hash_secret(secret: str) -> str:
    # Keys and job tokens are 256-bit random strings, so a plain digest is enough
    # (no password stretching).
    return hashlib.sha256(secret.encode()).hexdigest()

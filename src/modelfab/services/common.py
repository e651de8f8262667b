"""Small helpers shared by the services: names and the caller's identity."""

from __future__ import annotations

import re
from dataclasses import dataclass

from modelfab.errors import InvalidRequest
from modelfab.schemas.limits import NAME_PATTERN

NAME_RE = re.compile(NAME_PATTERN)


def check_name(name: str, param: str = "name") -> str:
    """Names are lower-case slugs so that they are safe in URLs, paths and shells."""
    if not NAME_RE.match(name):
        raise InvalidRequest(
            f"{param} {name!r} is not valid: use 1-63 lower-case letters, digits, '.', '_' "
            "or '-', starting with a letter or digit",
            param=param,
        )
    return name


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant and the role of the key used."""

    tenant_id: str
    tenant_name: str
    role: str
    key_id: str
    rate_limit_rps: float | None = None  # per key, enforced by the endpoint gateway
    expires_at: float | None = None  # UNIX seconds; caches of the principal must not outlive it
    tokens_per_minute: int | None = None  # per key, enforced by the gateway's token routes
    tokens_budget: int | None = None  # tokens in + out over the tenant's life
    tokens_used: int = 0
    """The tenant's metered tokens when loaded (only by `gateway_caller`, when it has a budget)."""

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

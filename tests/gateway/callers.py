"""A caller as the gateway's injected `authenticate` answers it, for gateway tests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    """Tenant t_1's key k_1, without limits unless a test sets them."""

    tenant_id: str = "t_1"
    key_id: str = "k_1"
    rate_limit_rps: float | None = None
    expires_at: float | None = None
    tokens_per_minute: int | None = None
    tokens_budget: int | None = None
    tokens_used: int = 0

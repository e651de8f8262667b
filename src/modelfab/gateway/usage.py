"""What an answered request used, journalled off the hot path."""

from __future__ import annotations

from modelfab.gateway.types import Forwarded, UsageSink


def record(sink: UsageSink | None, tenant_id: str, endpoint_id: str, answer: Forwarded) -> None:
    """Journal one request and its items when the replica answered 2xx; errors are free.
    Never waits on the database (the sink writes in batches)."""
    if sink is None or not 200 <= answer.status < 300:
        return
    sink.add(tenant_id, "endpoint", endpoint_id, requests=1, items=answer.items)


def record_tokens(
    sink: UsageSink | None, tenant_id: str, endpoint_id: str, *, items: int, tokens_in: int
) -> None:
    """Journal one answered request of a language-model route with its items and input
    tokens, in one entry (so a request is never metered in part)."""
    if sink is None:
        return
    sink.add(tenant_id, "endpoint", endpoint_id, requests=1, items=items, tokens_in=tokens_in)

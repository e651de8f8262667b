"""The `Idempotency-Key` header of create routes, as a dependency: checked (422) before
any body is read, scoped to the caller's tenant, handed to the service's create."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from modelfab.api.deps import Caller, Ctx
from modelfab.services.idempotency import HEADER, Idempotency, check_key


def idempotency(
    request: Request,
    ctx: Ctx,
    principal: Caller,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=HEADER,
            description="A fresh random value (a UUID) per create: a retry with the same key "
            "and body answers as the first request did and does nothing again; the same key "
            "with another body is 409 idempotency_key_reused. Kept per tenant for "
            "`idempotency_ttl_s` (24 h by default).",
        ),
    ] = None,
) -> Idempotency | None:
    if idempotency_key is None:
        return None
    return Idempotency(
        tenant_id=principal.tenant_id,
        key=check_key(idempotency_key),
        route=f"{request.method} {request.url.path}",
        ttl_s=ctx.settings.idempotency_ttl_s,
    )


IdemKey = Annotated[Idempotency | None, Depends(idempotency)]

"""Dependencies: the app context, the caller's principal, and the admin check."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from modelfab.api.context import AppContext
from modelfab.errors import Forbidden, Unauthenticated
from modelfab.gateway.auth import parse_bearer
from modelfab.services.auth import authenticate
from modelfab.services.common import Principal


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


def bearer(authorization: Annotated[str | None, Header()] = None) -> str | None:
    return parse_bearer(authorization)


Ctx = Annotated[AppContext, Depends(get_ctx)]
Token = Annotated[str | None, Depends(bearer)]


def get_principal(ctx: Ctx, token: Token) -> Principal:
    return authenticate(ctx.factory, token)


def get_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    if not principal.is_admin:
        raise Forbidden("this needs an admin key")
    return principal


def job_token(token: Token) -> str:
    if not token:
        raise Unauthenticated("missing job token")
    return token


Caller = Annotated[Principal, Depends(get_principal)]
Admin = Annotated[Principal, Depends(get_admin)]
JobToken = Annotated[str, Depends(job_token)]

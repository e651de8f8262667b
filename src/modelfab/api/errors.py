"""One place maps errors to HTTP: ModelfabError -> its status and code; validation errors
-> 422 naming the field; anything else -> a logged traceback and a generic 500."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from modelfab.errors import ModelfabError

logger = logging.getLogger(__name__)


def _error(
    status: int,
    code: str,
    message: str,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"error": {"code": code, "message": message, "param": param}},
        headers=headers,
    )


async def _modelfab_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ModelfabError)
    # 429 and 503 say when to come back (errors that know carry `retry_after_s`).
    seconds = getattr(exc, "retry_after_s", None)
    headers = None if seconds is None else {"Retry-After": str(max(1, math.ceil(seconds)))}
    return JSONResponse(status_code=exc.status, content=exc.to_dict(), headers=headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
    param = ".".join(loc) or None
    return _error(422, "invalid_request", f"{param or 'request'}: {err.get('msg')}", param)


HTTP_CODES = {400: "invalid_body", 404: "not_found", 405: "method_not_allowed"}
"""`code` of the errors the framework raises itself (a body it cannot parse, no such route,
a method the route does not take)."""


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = HTTP_CODES.get(exc.status_code, "http_error")
    # the framework's headers stay: `Allow` on 405 says which methods the path takes
    return _error(exc.status_code, code, str(exc.detail), headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error(500, "internal_error", "internal error; the server log has the details")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ModelfabError, _modelfab_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)

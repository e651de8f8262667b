"""One place maps errors to HTTP: ModelfabError -> its status and code; validation errors
-> 422 naming the field; anything else -> a logged traceback and a generic 500."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from modelfab.errors import ModelfabError, error_body

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
        content=error_body(status, code, message, param),
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


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = HTTP_CODES.get(exc.status_code, "http_error")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(_allowed_methods(request, headers.pop("Allow", None)))
    return _error(exc.status_code, code, str(exc.detail), headers=headers)


def _allowed_methods(request: Request, framework: str | None) -> list[str]:
    """Every method the OpenAPI document gives `request`'s path, and those the framework
    named (`framework`, its `Allow`: only the first route that matched the path, while GET
    /v1/jobs and POST /v1/jobs are two routes)."""
    methods = {m.strip().upper() for m in (framework or "").split(",") if m.strip()}
    path = request.url.path
    for template, operations in request.app.openapi()["paths"].items():
        if re.fullmatch(re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template)), path):
            methods |= {m.upper() for m in operations if m.upper() in _HTTP_METHODS}
    return sorted(methods)


_HTTP_METHODS = frozenset({"GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE"})


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error(500, "internal_error", "internal error; the server log has the details")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ModelfabError, _modelfab_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)

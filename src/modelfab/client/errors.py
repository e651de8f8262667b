"""The SDK's errors: `ApiError` (the server's answer: status, code, message, param) and
`Unreachable` (no answer), both ModelfabErrors, so the CLI prints them as it prints any."""

from __future__ import annotations

import httpx

from modelfab.errors import ModelfabError


class ApiError(ModelfabError):
    def __init__(self, status: int, code: str, message: str, param: str | None = None):
        super().__init__(message, param=param, code=code)
        self.status = status


class Unreachable(ModelfabError):
    code = "unreachable"


def api_error(resp: httpx.Response) -> ApiError:
    """The error of a 4xx/5xx answer (read already), from its `{"error": ...}` body or, for
    a body of another shape, its status and first bytes."""
    try:
        err = resp.json()["error"]
        return ApiError(resp.status_code, err["code"], err["message"], err.get("param"))
    except (ValueError, KeyError, TypeError):
        return ApiError(
            resp.status_code, "http_error", f"HTTP {resp.status_code}: {resp.text[:200]}"
        )

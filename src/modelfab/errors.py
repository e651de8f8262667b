"""The one error hierarchy of modelfab.

Every error a user can cause is a `ModelfabError` with a stable `code`, a message that
says what to do, and the offending `param` where there is one. The API maps them to
HTTP statuses in one handler; the CLI prints them and exits non-zero.
"""

from __future__ import annotations

from typing import Any


class ModelfabError(Exception):
    """Root of all expected errors. `status` is the HTTP status the API answers with."""

    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, Any]:
        return error_body(self.status, self.code, self.message, self.param)


def error_type(status: int) -> str:
    """OpenAI's error `type` for an HTTP status, so that OpenAI's clients read ours."""
    return "server_error" if status >= 500 else "invalid_request_error"


def error_body(status: int, code: str, message: str, param: str | None) -> dict[str, Any]:
    """The body of every error answer: `{"error": {code, message, param, type}}` (OpenAI's
    shape, plus a stable `code` on every error)."""
    error = {"code": code, "message": message, "param": param, "type": error_type(status)}
    return {"error": error}


class InvalidRequest(ModelfabError):
    status = 422
    code = "invalid_request"


class DatasetInvalid(InvalidRequest):
    """A dataset failed validation; `param` is the offending file, relative to its root."""

    code = "dataset_invalid"


class ChatModelInvalid(InvalidRequest):
    """A language-model folder, tokenizer or GGUF file cannot be used; `param` is the input
    that holds it (the upload's "file" by default)."""

    code = "chat_model_invalid"


class Unauthenticated(ModelfabError):
    status = 401
    code = "unauthenticated"


class Forbidden(ModelfabError):
    status = 403
    code = "forbidden"


class NotFound(ModelfabError):
    """Also what another tenant's resource looks like, so that names do not leak."""

    status = 404
    code = "not_found"


class Conflict(ModelfabError):
    status = 409
    code = "conflict"


class QuotaExceeded(ModelfabError):
    status = 429
    code = "quota_exceeded"


class Unschedulable(ModelfabError):
    """A job asks for more than the pool or the tenant's quota could ever give it."""

    status = 422
    code = "unschedulable"


class UnsupportedMediaType(ModelfabError):
    status = 415
    code = "unsupported_media_type"


class PayloadTooLarge(ModelfabError):
    status = 413
    code = "payload_too_large"

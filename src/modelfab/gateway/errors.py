"""The gateway's errors: what a predict request answers when it cannot be forwarded."""

from __future__ import annotations

from modelfab.errors import ModelfabError, QuotaExceeded


class Unavailable(ModelfabError):
    """503: no replica can take the request now; `retry_after_s` says when to try again."""

    status = 503
    code = "unavailable"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, code: str | None = None):
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class GatewayTimeout(ModelfabError):
    status = 504
    code = "replica_timeout"


class RateLimited(QuotaExceeded):
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BadRequest(ModelfabError):
    """400 naming the param: what OpenAI's API answers for a bad parameter (the rest of
    the API answers 422 for those)."""

    status = 400
    code = "invalid_request"

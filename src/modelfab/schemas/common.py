"""What every answer shares: the model bases, the list envelope, the error body, health."""

from __future__ import annotations

import re
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from modelfab.schemas import limits

T = TypeVar("T")


class WireModel(BaseModel):
    """An object of the API. Unknown fields are ignored when parsing, so an SDK keeps
    working against a newer server that answers more."""

    model_config = ConfigDict(extra="ignore")


class RequestModel(WireModel):
    """A request body: besides each field's bounds, no float may be infinite or NaN (JSON
    parsers take `Infinity` and `NaN`; pydantic would keep them)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


def _on_step(value: float) -> float:
    """`value` rounded to the resource step it already is a multiple of (Field's
    `multiple_of` checked that), so sums of requests stay on the grid."""
    return round(round(value / limits.RESOURCE_STEP) * limits.RESOURCE_STEP, 2)


def _gpus_step(value: float) -> float:
    # `multiple_of` lets values far below one step through (its tolerance is relative)
    if 0 < value < limits.RESOURCE_STEP:
        raise ValueError(f"must be 0 or at least {limits.RESOURCE_STEP:g}, got {value:g}")
    return _on_step(value)


Cpus = Annotated[
    float,
    Field(ge=limits.RESOURCE_STEP, le=limits.MAX_CPUS, multiple_of=limits.RESOURCE_STEP),
    AfterValidator(_on_step),
]
"""CPU slots a request asks for: a multiple of `limits.RESOURCE_STEP`, at least one step."""
Gpus = Annotated[
    float,
    Field(ge=0, le=limits.MAX_GPUS, multiple_of=limits.RESOURCE_STEP),
    AfterValidator(_gpus_step),
]
"""GPUs a request asks for: 0, or a multiple of `limits.RESOURCE_STEP` of at least one step
(a fraction below 1 or a whole number: the services check that)."""
MemoryBytes = Annotated[int, Field(ge=0, le=limits.MAX_SIZE_BYTES)]
"""Bytes of memory a request asks for; 0 means no memory request."""


def _slug(value: str) -> str:
    if not re.fullmatch(limits.NAME_PATTERN, value):
        raise ValueError(
            f"must be a lower-case name of 1-63 characters (a-z, 0-9, '.', '_', '-', starting "
            f"with a letter or digit), got {value[:80]!r}"
        )
    return value


Name = Annotated[
    str, AfterValidator(_slug), Field(json_schema_extra={"pattern": limits.NAME_PATTERN})
]
"""A tenant, dataset, model, alias or endpoint name (`limits.NAME_PATTERN`), checked with a
message that says what a name may hold."""


class OpenModel(BaseModel):
    """An object whose unknown fields pass through (kept when parsed and answered as given):
    for answers still built as dicts by services that may add fields, and free-form parts."""

    model_config = ConfigDict(extra="allow")


class List(WireModel, Generic[T]):
    """`{"object": "list", "data": [...]}`: every collection the API answers."""

    object: Literal["list"] = "list"
    data: list[T]


class ErrorDetail(WireModel):
    code: str = Field(description="Stable, machine-readable, e.g. not_found, quota_exceeded.")
    message: str = Field(description="What went wrong and what to do about it.")
    param: str | None = Field(default=None, description="The offending field, when one is.")
    type: str | None = Field(
        default=None,
        description="OpenAI's error type (invalid_request_error, server_error), so that "
        "OpenAI's clients read the error too.",
    )


class ErrorResponse(WireModel):
    """The body of every 4xx and 5xx answer."""

    error: ErrorDetail


Responses = dict[int | str, dict[str, Any]]

ERROR_TEXT: dict[int, str] = {
    400: "The body could not be parsed (not UTF-8, or not the media type sent)",
    401: "Missing or invalid key (or job token)",
    403: "Not allowed for this key (e.g. it needs an admin key)",
    404: "No such resource, or not this tenant's",
    405: "Method not allowed; the Allow header lists those that are",
    409: "Conflict with the current state; the message says whether to retry",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Invalid request: the named param is wrong",
    429: "Quota or rate limit reached; Retry-After says when to come back",
    503: "Not available now; retry after a while",
    504: "A replica did not answer in time",
}
"""Every error status the API answers, with what it means."""


def errors(*statuses: int) -> Responses:
    """`responses=` documenting the error body on each of `statuses` (of `ERROR_TEXT`)."""
    return {
        status: {"model": ErrorResponse, "description": ERROR_TEXT[status]} for status in statuses
    }


ERRORS: Responses = errors(401, 422)
"""`responses=` for routers: what every authenticated operation may answer. Each operation
adds the statuses it can answer besides (`errors(...)`)."""

BODY = errors(400)
"""Of an operation that parses a JSON body."""


class Health(WireModel):
    status: Literal["ok"] = "ok"
    version: str

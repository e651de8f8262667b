"""Tenants, their quotas and keys, and who is calling."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic.json_schema import JsonDict

from modelfab.schemas import limits
from modelfab.schemas.common import RequestModel, WireModel
from modelfab.schemas.limits import MAX_KEY_LIFETIME_S, NAME_PATTERN

ROLES = ("admin", "member")
_ROLE: JsonDict = {"enum": list(ROLES)}
"""A role in the schema; the services check it with a message that says which are."""

_NAME: JsonDict = {"pattern": NAME_PATTERN}  # documented; the service checks it, naming the param


class TenantCreate(RequestModel):
    """A new tenant; a quota left out (or null) is unlimited, a given one is finite."""

    name: str = Field(description="Lower-case slug, unique.", json_schema_extra=_NAME)
    max_gpus: float | None = Field(
        default=None, ge=0, le=limits.MAX_QUOTA, description="Concurrent GPUs (sum of fractions)."
    )
    max_cpus: float | None = Field(
        default=None, ge=0, le=limits.MAX_QUOTA, description="Concurrent CPU slots."
    )
    gpu_hours_budget: float | None = Field(
        default=None,
        ge=0,
        le=limits.MAX_QUOTA,
        description="GPU hours; new GPU jobs are refused (429) once spent.",
    )
    weight: float = Field(
        default=1.0, ge=limits.MIN_WEIGHT, le=limits.MAX_WEIGHT, description="Fair-share weight."
    )
    rate_limit_rps: float | None = Field(
        default=None,
        ge=limits.MIN_RATE_LIMIT_RPS,
        le=limits.MAX_RATE_LIMIT_RPS,
        description="Endpoint requests per second per key (429 beyond).",
    )
    tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=limits.MAX_TOKENS_PER_MINUTE,
        description="Language-model tokens (prompt + completion) per minute per key (429 beyond).",
    )
    tokens_budget: int | None = Field(
        default=None,
        ge=0,
        le=limits.MAX_TOKENS_BUDGET,
        description="Tokens in + out over the tenant's life; language-model requests are "
        "refused (429) once metered.",
    )
    role: str = Field(
        default="member",
        description="Role of the first key: admin or member.",
        json_schema_extra=_ROLE,
    )


class TenantUpdate(RequestModel):
    max_gpus: float | None = Field(default=None, ge=0, le=limits.MAX_QUOTA)
    max_cpus: float | None = Field(default=None, ge=0, le=limits.MAX_QUOTA)
    gpu_hours_budget: float | None = Field(default=None, ge=0, le=limits.MAX_QUOTA)
    weight: float | None = Field(default=None, ge=limits.MIN_WEIGHT, le=limits.MAX_WEIGHT)
    rate_limit_rps: float | None = Field(
        default=None, ge=limits.MIN_RATE_LIMIT_RPS, le=limits.MAX_RATE_LIMIT_RPS
    )
    tokens_per_minute: int | None = Field(default=None, ge=1, le=limits.MAX_TOKENS_PER_MINUTE)
    tokens_budget: int | None = Field(default=None, ge=0, le=limits.MAX_TOKENS_BUDGET)


class KeyCreate(RequestModel):
    """A new key of a tenant. Give at most one of `expires_at` and `expires_in_s`."""

    name: str | None = Field(
        default=None, description="For people: what the key is for.", json_schema_extra=_NAME
    )
    role: str = Field(
        default="member",
        description="admin or member (members may create member keys only).",
        json_schema_extra=_ROLE,
    )
    expires_at: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="UNIX seconds; in the future."
    )
    expires_in_s: float | None = Field(
        default=None,
        gt=0,
        le=MAX_KEY_LIFETIME_S,
        allow_inf_nan=False,
        description="Seconds from now until the key stops working.",
    )


class Tenant(WireModel):
    id: str
    object: Literal["tenant"] = "tenant"
    name: str
    max_gpus: float | None
    max_cpus: float | None
    gpu_hours_budget: float | None
    weight: float
    rate_limit_rps: float | None
    tokens_per_minute: int | None = None
    tokens_budget: int | None = None
    created_at: float = Field(description="UNIX seconds.")


class TenantCreated(Tenant):
    api_key: str = Field(description="The first key; shown in this answer and never again.")


class ApiKey(WireModel):
    """A key of a tenant, as listed: never its secret nor the secret's hash."""

    id: str
    object: Literal["api_key"] = "api_key"
    tenant: str
    name: str | None
    role: str = Field(json_schema_extra=_ROLE)
    prefix: str = Field(description="The key's first characters, to recognise it.")
    created_at: float = Field(description="UNIX seconds.")
    expires_at: float | None = Field(description="UNIX seconds; null: never expires.")
    revoked_at: float | None = Field(description="UNIX seconds; null: not revoked.")


class ApiKeyCreated(ApiKey):
    """A new key; its secret is shown in this answer and never again."""

    api_key: str = Field(description="The secret: send it as 'Authorization: Bearer <key>'.")


class Me(WireModel):
    """Who the key belongs to."""

    object: Literal["principal"] = "principal"
    tenant: str
    role: str = Field(json_schema_extra=_ROLE)

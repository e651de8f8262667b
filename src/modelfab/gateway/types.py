"""The gateway's own types. Light on purpose: the services that build the route table
import them, so this module imports nothing of modelfab."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class ReplicaRoute:
    """A replica: its job, where its server answers, and the secret it requires (None
    only for a replica that announced before replicas had secrets). The route table lists
    the ready ones; the endpoint controller probes and warms any announced one."""

    job_id: str
    url: str
    secret: str | None = field(repr=False)  # never in a log line


def replica_headers(secret: str | None) -> dict[str, str]:
    """The header that lets a request through a replica's `RequireSecret`: the gateway
    sends it with every forward, the endpoint controller with every probe and warm."""
    return {} if secret is None else {"Authorization": f"Bearer {secret}"}


@dataclass(frozen=True)
class Route:
    """What the gateway needs to forward one endpoint's requests (no database on the way).
    Endpoints being deleted have no route."""

    endpoint_id: str
    tenant_id: str
    name: str
    version_id: str
    max_batch_size: int
    max_wait_ms: float
    replicas: tuple[ReplicaRoute, ...] = field(default_factory=tuple)
    task: str | None = None
    """The task of the endpoint's model: the OpenAI-compatible routes answer only for the
    endpoints of their task (None: unknown, as in tests that build routes by hand)."""


RouteTable = dict[tuple[str, str], Route]
"""Routes by (tenant id, endpoint name)."""


@dataclass(frozen=True)
class Forwarded:
    """A replica's answer, read whole."""

    status: int
    content: bytes
    content_type: str
    items: int


class Caller(Protocol):
    """What the gateway reads of an authenticated principal."""

    @property
    def tenant_id(self) -> str: ...

    @property
    def key_id(self) -> str: ...

    @property
    def rate_limit_rps(self) -> float | None: ...

    @property
    def expires_at(self) -> float | None:
        """When the key stops being valid (UNIX seconds), or None."""

    @property
    def tokens_per_minute(self) -> int | None:
        """The key's token rate limit on the language-model routes (None: unlimited)."""

    @property
    def tokens_budget(self) -> int | None:
        """The tenant's lifetime token budget, tokens in + out (None: unlimited)."""

    @property
    def tokens_used(self) -> int:
        """The tenant's metered tokens when this caller was loaded (0 without a budget)."""


class UsageSink(Protocol):
    """Where the usage of answered requests goes (the `UsageJournal`)."""

    def add(self, tenant_id: str, ref_type: str, ref_id: str, /, **quantities: float) -> None: ...

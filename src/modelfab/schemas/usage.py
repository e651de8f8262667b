"""Metered usage as `GET /v1/usage` answers it, one row shape per grouping."""

from __future__ import annotations

from pydantic import Field

from modelfab.schemas.common import WireModel

GROUPINGS = ("meter", "job", "tenant", "endpoint")


class UsageRow(WireModel):
    """Totals of one tenant and meter (`by=meter` or `by=tenant`)."""

    tenant: str
    meter: str = Field(description="gpu_seconds, cpu_seconds, requests, items, replica_seconds.")
    quantity: float
    records: int


class JobUsageRow(UsageRow):
    """`by=job`: per job (or other metered ref)."""

    ref_type: str
    ref_id: str


class EndpointUsageRow(UsageRow):
    """`by=endpoint`: endpoint usage only."""

    endpoint: str = Field(description="Its name, or its id once deleted.")
    endpoint_id: str


AnyUsageRow = EndpointUsageRow | JobUsageRow | UsageRow

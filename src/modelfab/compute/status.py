"""Checking a job's status change against the transitions `schemas.jobs` declares once
(the wire format names the statuses; clients read `TERMINAL` there too).

Pure, without the database: the worker reports its outcome in these terms, and
`compute.lifecycle` applies every transition (inside the control plane's transaction).
"""

from __future__ import annotations

from modelfab.errors import Conflict
from modelfab.schemas.jobs import ACTIVE, TERMINAL, TRANSITIONS, JobStatus

__all__ = [
    "ACTIVE",
    "LEASE_EXPIRED",
    "TERMINAL",
    "TRANSITIONS",
    "IllegalTransition",
    "JobStatus",
    "check_transition",
]

LEASE_EXPIRED = "lease_expired"
"""Error code of an attempt whose worker stopped itself after it could not reach the control
plane for its whole lease: the control plane's absence, not the job's fault, so no attempt
is spent on it (as for a worker lost in a control-plane restart). Only the worker's report
says so: its exit status alone (3) could be a recipe's own."""


class IllegalTransition(Conflict):
    """A job was asked to move where `TRANSITIONS` allows no move (a race lost, or a bug)."""

    code = "illegal_transition"


def check_transition(old: str, new: JobStatus) -> None:
    """Raise IllegalTransition unless `TRANSITIONS` allows `old` -> `new`."""
    if new not in TRANSITIONS[JobStatus(old)]:
        raise IllegalTransition(f"a {old} job cannot become {new}", param="status")

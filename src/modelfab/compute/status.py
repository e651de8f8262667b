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
    "TERMINAL",
    "TRANSITIONS",
    "IllegalTransition",
    "JobStatus",
    "check_transition",
]


class IllegalTransition(Conflict):
    """A job was asked to move where `TRANSITIONS` allows no move (a race lost, or a bug)."""

    code = "illegal_transition"


def check_transition(old: str, new: JobStatus) -> None:
    """Raise IllegalTransition unless `TRANSITIONS` allows `old` -> `new`."""
    if new not in TRANSITIONS[JobStatus(old)]:
        raise IllegalTransition(f"a {old} job cannot become {new}", param="status")

"""Job statuses and the transitions allowed between them, declared once.

Pure data, without the database: the worker reports its outcome in these terms, and
`compute.lifecycle` applies every transition (inside the control plane's transaction).
"""

from __future__ import annotations

from enum import StrEnum

from modelfab.errors import Conflict


class JobStatus(StrEnum):
    """A job's status; the values are what the database and the API hold."""

    VALIDATING = "validating"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


_S = JobStatus
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    _S.VALIDATING: frozenset({_S.QUEUED, _S.CANCELLED}),
    _S.QUEUED: frozenset({_S.RUNNING, _S.CANCELLED}),
    _S.RUNNING: frozenset({_S.SUCCEEDED, _S.FAILED, _S.CANCELLED, _S.QUEUED}),
    _S.SUCCEEDED: frozenset(),
    _S.FAILED: frozenset(),
    _S.CANCELLED: frozenset(),
}
"""status -> the statuses it may move to. A status with no way out is terminal."""

TERMINAL = frozenset(s for s, out in TRANSITIONS.items() if not out)
ACTIVE = frozenset(s for s, out in TRANSITIONS.items() if out)


class IllegalTransition(Conflict):
    """A job was asked to move where `TRANSITIONS` allows no move (a race lost, or a bug)."""

    code = "illegal_transition"


def check_transition(old: str, new: JobStatus) -> None:
    """Raise IllegalTransition unless `TRANSITIONS` allows `old` -> `new`."""
    if new not in TRANSITIONS[JobStatus(old)]:
        raise IllegalTransition(f"a {old} job cannot become {new}", param="status")

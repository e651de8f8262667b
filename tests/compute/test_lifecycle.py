"""The job state machine: the transition table, and that `lifecycle` refuses moves outside it."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from modelfab.compute import lifecycle
from modelfab.compute.lifecycle import IllegalTransition, JobStatus
from modelfab.compute.status import ACTIVE, TERMINAL, TRANSITIONS, check_transition
from modelfab.db.engine import transaction
from modelfab.db.models import Job
from modelfab.ids import new_id
from modelfab.services.tenants import Quota, create_tenant

ALLOWED = {
    ("validating", "queued"),
    ("validating", "cancelled"),
    ("queued", "running"),
    ("queued", "cancelled"),
    ("running", "succeeded"),
    ("running", "failed"),
    ("running", "cancelled"),
    ("running", "queued"),
}


def test_statuses_keep_their_stored_strings() -> None:
    assert [s.value for s in JobStatus] == [
        "validating", "queued", "running", "succeeded", "failed", "cancelled",
    ]  # fmt: skip
    assert lifecycle.QUEUED is JobStatus.QUEUED and lifecycle.QUEUED == "queued"
    assert tuple(JobStatus) == lifecycle.STATUSES
    assert {"succeeded", "failed", "cancelled"} == TERMINAL
    assert {"validating", "queued", "running"} == ACTIVE


@pytest.mark.parametrize("old", list(JobStatus))
@pytest.mark.parametrize("new", list(JobStatus))
def test_the_table_allows_exactly_the_designed_moves(old: JobStatus, new: JobStatus) -> None:
    assert set(TRANSITIONS) == set(JobStatus)
    if (old.value, new.value) in ALLOWED:
        check_transition(old, new)
        check_transition(old.value, new)  # the plain string a row holds works the same
    else:
        with pytest.raises(IllegalTransition):
            check_transition(old, new)


def _job(factory: sessionmaker[Session], status: JobStatus) -> str:
    tenant = create_tenant(factory, name="lc" + new_id("t")[-6:].lower(), quota=Quota())
    job_id = new_id("job")
    with transaction(factory) as session:
        session.add(
            Job(
                id=job_id, tenant_id=tenant.id, recipe="sleep", params={}, gpus=0.0,
                cpus=1.0, memory_bytes=0, priority=0, max_attempts=3, status=status,
                attempt=0, failures=0, cancel_requested=False, created_at=1.0,
            )
        )  # fmt: skip
    return job_id


def _claim(session: Session, job_id: str) -> int | None:
    return lifecycle.claim(
        session, job_id, node_id="node_x", cuda_visible_devices=None, devices=[],
        token_hash="h", at=2.0,
    )  # fmt: skip


def test_a_job_walks_the_happy_path(factory: sessionmaker[Session]) -> None:
    job_id = _job(factory, JobStatus.VALIDATING)
    with transaction(factory) as session:
        job = session.get(Job, job_id)
        assert job is not None
        lifecycle.admit(session, job, at=1.5)
        assert (job.status, job.queued_at) == ("queued", 1.5)
    with transaction(factory) as session:
        assert _claim(session, job_id) == 1
        assert _claim(session, job_id) is None  # claimed already: the second decision loses
    with transaction(factory) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "running"
        ended = lifecycle.end_attempt(session, job, outcome="succeeded", at=3.0)
        assert ended is JobStatus.SUCCEEDED and job.status == "succeeded"


def test_illegal_moves_raise_and_change_nothing(factory: sessionmaker[Session]) -> None:
    job_id = _job(factory, JobStatus.QUEUED)
    with transaction(factory) as session:
        job = session.get(Job, job_id)
        assert job is not None
        with pytest.raises(IllegalTransition):
            lifecycle.end_attempt(session, job, outcome="succeeded", at=3.0)  # never ran
        with pytest.raises(IllegalTransition):
            lifecycle.admit(session, job, at=3.0)  # queued already
        with pytest.raises(IllegalTransition):
            lifecycle.request_cancel(session, job, at=3.0)  # no attempt to signal
        assert job.status == "queued"
        lifecycle.cancel_queued(session, job, at=3.0)
        with pytest.raises(IllegalTransition):
            lifecycle.cancel_queued(session, job, at=4.0)  # ended already
        assert (job.status, job.finished_at) == ("cancelled", 3.0)


def test_an_attempt_cannot_end_queued(factory: sessionmaker[Session]) -> None:
    job_id = _job(factory, JobStatus.QUEUED)
    with transaction(factory) as session:
        assert _claim(session, job_id) == 1
    with transaction(factory) as session:
        job = session.get(Job, job_id)
        assert job is not None
        with pytest.raises(IllegalTransition):
            lifecycle.end_attempt(session, job, outcome="queued", at=3.0)
        assert lifecycle.requeue_lost(session, job, at=3.0) is JobStatus.QUEUED
        assert (job.status, job.failures, job.node_id) == ("queued", 0, None)

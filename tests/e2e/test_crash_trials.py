"""The crash-trial script, small: two SIGKILLs of `modelfab up` under load, then the audit
(no job lost, duplicated or stuck, usage neither missing, doubled nor inflated), and one
replica kill at one and at two replicas. `python -m tests.e2e.crash_trials --trials 20`
runs it large."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.e2e.crash_trials import run

pytestmark = pytest.mark.e2e


def test_sigkills_under_load_lose_duplicate_and_misbill_nothing(
    db_url: str, factory: sessionmaker[Session], tmp_path: Path
) -> None:
    audit, kills = run(db_url, tmp_path, trials=2, replica_kill_count=1, seed=7)
    assert audit.jobs > 0 and audit.requests_metered > 0  # there was load to lose
    assert audit.failures() == 0, audit
    one, two = kills
    assert one.requests > one.failed  # it served again after the replacement
    assert two.failed == 0, two  # the gateway retried the other replica

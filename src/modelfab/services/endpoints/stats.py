"""Replicas' latest reports, in memory: the controller's probe writes what each replica's
`/health` answered (`ReplicaStatsBook.put`), `endpoint_view` reads it (`get`).

Not in the database: the figures change every probe and are worth nothing after a
restart. `modelfab up` runs the API and the controller in one process, so they share one
book; a report older than `max_age_s` reads as none (the probe stopped reaching the
replica, or the controller is busy warming a model).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelfab.db.models import Model, ModelVersion
from modelfab.ids import now
from modelfab.schemas.endpoints import ModelStats, ReplicaStats


class ReplicaStatsBook:
    """The latest report of each replica job. Thread-safe."""

    def __init__(self, *, max_age_s: float, clock: Callable[[], float] = now):
        self.max_age_s = max_age_s
        self.clock = clock
        self._lock = threading.Lock()
        self._latest: dict[str, ReplicaStats] = {}

    def put(self, job_id: str, stats: ReplicaStats) -> None:
        with self._lock:
            self._latest[job_id] = stats

    def get(self, job_id: str) -> ReplicaStats | None:
        """The job's latest report; None when there is none or it is older than
        `max_age_s`."""
        with self._lock:
            stats = self._latest.get(job_id)
        if stats is None or self.clock() - stats.reported_at > self.max_age_s:
            return None
        return stats

    def keep_only(self, job_ids: Collection[str]) -> None:
        """Forget the reports of every other job (replicas no longer probed)."""
        with self._lock:
            for gone in self._latest.keys() - set(job_ids):
                del self._latest[gone]


def named_reports(
    session: Session, tenant_id: str, reports: Mapping[str, ReplicaStats]
) -> dict[str, ReplicaStats]:
    """`reports` (by job id) as the tenant sees them: each model and adapter named
    NAME:VERSION (one query for all). Versions that are not the tenant's are left out (an
    engine may hold other tenants' adapters of a shared base; their ids are not this
    tenant's to see)."""
    ids = {m.version_id for r in reports.values() for m in r.models}
    ids |= {a.name for r in reports.values() for m in r.models for a in m.adapters}
    names = _version_names(session, tenant_id, ids)
    return {
        job_id: r.model_copy(
            update={"models": [_named_model(m, names) for m in r.models if m.version_id in names]}
        )
        for job_id, r in reports.items()
    }


def _named_model(m: ModelStats, names: Mapping[str, str]) -> ModelStats:
    adapters = [
        a.model_copy(update={"model": names[a.name]}) for a in m.adapters if a.name in names
    ]
    return m.model_copy(update={"model": names[m.version_id], "adapters": adapters})


def _version_names(session: Session, tenant_id: str, ids: Collection[str]) -> dict[str, str]:
    """NAME:VERSION of each of `ids` that is a version of the tenant's models."""
    if not ids:
        return {}
    rows = session.execute(
        select(ModelVersion.id, Model.name, ModelVersion.version)
        .join(Model, Model.id == ModelVersion.model_id)
        .where(ModelVersion.id.in_(list(ids)), Model.tenant_id == tenant_id)
    ).all()
    return {version_id: f"{name}:{version}" for version_id, name, version in rows}

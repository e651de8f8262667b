"""The endpoint controller: keeps each endpoint's replica jobs in line with its row.

One pass loads the endpoints and their replica jobs, decides (a pure function), then
applies each endpoint's changes in its own transaction; health probes run between
transactions, never inside one. Replicas whose jobs died are replaced (the scheduler
retries an attempt; the controller replaces a job whose attempts ran out, and stops after
`failed_replicas_limit` failures since the endpoint last changed). Replicas with outdated
resources are stopped one by one as their successors become ready. A model change rolls:
the target version is loaded on each ready replica, then the endpoint switches to it.

Its tuning (periods, timeouts, limits) is a `ControllerSettings`, passed in.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import httpx
from pydantic import ValidationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from modelfab import metering
from modelfab.compute.lifecycle import FAILED, QUEUED, RUNNING, TERMINAL, VALIDATING
from modelfab.db.engine import transaction
from modelfab.db.models import Endpoint, EndpointReplica, Job
from modelfab.errors import ModelfabError
from modelfab.gateway.types import ReplicaRoute, replica_headers
from modelfab.ids import now
from modelfab.schemas.endpoints import ReplicaHealth, ReplicaStats
from modelfab.services.endpoints import ACTIVE, DELETING, SERVE_RECIPE, EndpointService
from modelfab.services.endpoints.rows import (
    cancel_replica,
    is_ready,
    ready_replicas,
    replicas_with_jobs,
)
from modelfab.settings import ControllerSettings

logger = logging.getLogger(__name__)

METER_WINDOW_S = 10.0  # replica_seconds are metered in windows this long


@dataclass
class Plan:
    """What one endpoint needs: replicas to add, jobs to stop, an error to set."""

    add: int = 0
    stop: list[str] = field(default_factory=list)
    error: dict[str, str] | None = None


def plan_endpoint(
    e: Endpoint, jobs: list[tuple[EndpointReplica, Job]], *, failed_limit: int
) -> Plan:
    """Decide one endpoint's changes from its row and its replica jobs (no I/O): the
    endpoint fails once `failed_limit` replica jobs failed since it last changed."""
    live = [(r, j) for r, j in jobs if j.status in (VALIDATING, QUEUED, RUNNING)]
    live = [(r, j) for r, j in live if not j.cancel_requested]
    current = [(r, j) for r, j in live if _matches(e, j)]
    outdated = [(r, j) for r, j in live if not _matches(e, j)]
    plan = Plan()
    failed = [j for _, j in jobs if j.status == FAILED and (j.finished_at or 0) > e.updated_at]
    if len(current) < e.replicas:
        if len(failed) >= failed_limit:
            last = max(failed, key=lambda j: j.finished_at or 0)
            reason = (last.error or {}).get("message", "no reason given")
            plan.error = {
                "code": "replicas_failing",
                "message": f"{len(failed)} replica jobs failed (last: {reason}); see "
                f"`modelfab jobs logs {last.id}`, fix it, then `modelfab endpoints update`",
            }
        else:
            plan.add = e.replicas - len(current)
    elif len(current) > e.replicas:
        # Stop the newest first: the oldest are the most likely to be ready and warm.
        plan.stop += [j.id for _, j in current[e.replicas :]]
    ready_current = sum(1 for r, j in current if is_ready(r, j))
    keep_outdated = max(0, e.replicas - ready_current)
    plan.stop += [j.id for _, j in outdated[keep_outdated:]]
    return plan


def _matches(e: Endpoint, j: Job) -> bool:
    return j.cpus == e.cpus and j.gpus == e.gpus and j.memory_bytes == e.memory_bytes


class EndpointController:
    def __init__(
        self,
        factory: sessionmaker[Session],
        endpoints: EndpointService,
        *,
        settings: ControllerSettings | None = None,
        clock: Callable[[], float] = now,
        warm: Callable[[ReplicaRoute, str], str | None] | None = None,
    ):
        """`warm(replica, version id)` loads a version on a replica: None when loaded,
        else the reason; raises httpx.HTTPError when the replica does not answer (the
        default POSTs `/models/{version}/load` with the replica's secret; tests inject
        one)."""
        self.factory = factory
        self.endpoints = endpoints
        self.settings = s = settings if settings is not None else ControllerSettings()
        self.clock = clock
        self._http = httpx.Client(timeout=s.probe_timeout_s)
        self._warm_http = httpx.Client(timeout=s.warm_timeout_s)
        self._warm_fn = warm if warm is not None else partial(warm_one, self._warm_http)
        self._probe_failures: dict[str, int] = {}
        self._metered: dict[tuple[str, int], int] = {}

    def run(self, stop: threading.Event) -> None:
        """Pass every `interval_s` until `stop` is set; a failing pass is logged, not fatal."""
        while not stop.wait(self.settings.interval_s):
            try:
                self.run_once()
            except Exception:
                logger.exception("endpoint controller pass failed")
        self._http.close()
        self._warm_http.close()

    def run_once(self) -> None:
        with self.factory() as session:
            endpoints = session.scalars(select(Endpoint)).all()
            session.expunge_all()
        for e in endpoints:
            if e.status == ACTIVE and e.target_version_id is not None:
                self._roll(e.id, e.target_version_id)
            if e.status == ACTIVE and not e.error:
                self._reconcile(e.id)
            elif (
                e.status == DELETING
                and self.clock() - e.updated_at > self.settings.delete_timeout_s
            ):
                self.endpoints.finish_delete(e.id)
        self._probe()
        self._meter_replica_seconds()
        self._prune()

    def _reconcile(self, endpoint_id: str) -> None:
        with transaction(self.factory) as session:
            e = session.get(Endpoint, endpoint_id, with_for_update=True)
            if e is None or e.status != ACTIVE or e.error:
                return
            jobs = replicas_with_jobs(session, e.id)
            plan = plan_endpoint(e, jobs, failed_limit=self.settings.failed_replicas_limit)
            if not (plan.add or plan.stop or plan.error):
                return
            at = self.clock()
            for job_id in plan.stop:
                job = session.get(Job, job_id)
                if job is not None:
                    cancel_replica(session, job, at)
            try:
                for _ in range(plan.add):
                    self.endpoints.add_replica(session, e)
            except ModelfabError as exc:  # quota or capacity changed under the endpoint
                plan.error = {"code": exc.code, "message": exc.message}
            if plan.error:
                e.error = plan.error
                logger.warning("endpoint %s failed: %s", e.name, plan.error["message"])
        self.endpoints.jobs.on_change()

    def _probe(self) -> None:
        """GET /health on every announced replica and keep its report (the latest per job,
        in `endpoints.replica_stats`). A new one (or one back from failing) first loads the
        endpoint's model, then takes traffic; after `unhealthy_after` failed probes in a row
        a replica takes none until it answers again."""
        with self.factory() as session:
            rows = session.execute(
                select(
                    EndpointReplica.job_id,
                    EndpointReplica.url,
                    EndpointReplica.secret,
                    EndpointReplica.ready_at,
                    Endpoint.id,
                    Endpoint.model_version_id,
                )
                .join(Job, Job.id == EndpointReplica.job_id)
                .join(Endpoint, Endpoint.id == EndpointReplica.endpoint_id)
                .where(
                    Job.status == RUNNING,
                    Job.attempt == EndpointReplica.attempt,
                    EndpointReplica.url.is_not(None),
                )
            ).all()
        self.endpoints.replica_stats.keep_only([row.job_id for row in rows])
        for job_id, url, secret, ready_at, endpoint_id, version_id in rows:
            assert url is not None  # filtered above
            replica = ReplicaRoute(job_id, url, secret)
            healthy, health = self._health(replica)
            if health is not None:
                report = ReplicaStats(
                    reported_at=self.clock(), outstanding=health.outstanding, models=health.stats
                )
                self.endpoints.replica_stats.put(job_id, report)
            failures = 0 if healthy else self._probe_failures.get(job_id, 0) + 1
            self._probe_failures[job_id] = failures
            if healthy and ready_at is None:
                self._warm(replica, endpoint_id, version_id)
            elif failures == self.settings.unhealthy_after and ready_at is not None:
                logger.warning("replica %s at %s stopped answering", job_id, url)
                self._set_ready(job_id, None)

    def _warm(self, replica: ReplicaRoute, endpoint_id: str, version_id: str) -> None:
        """Load the model on the replica; ready when it loaded. A model that cannot load
        fails the endpoint (every replica would fail the same way)."""
        try:
            problem = self._warm_fn(replica, version_id)
        except httpx.HTTPError as exc:
            logger.warning("replica %s did not load its model yet: %s", replica.job_id, exc)
            return
        if problem is None:
            self._set_ready(replica.job_id, self.clock())
            return
        with transaction(self.factory) as session:
            endpoint = session.get(Endpoint, endpoint_id)
            if endpoint is not None and endpoint.model_version_id == version_id:
                endpoint.error = {"code": "model_load_failed", "message": problem}
        logger.warning("endpoint %s cannot load its model: %s", endpoint_id, problem)

    # -- rollouts ----------------------------------------------------------------------------

    def _roll(self, endpoint_id: str, target: str) -> None:
        """Load `target` on each ready replica, one after another, recording progress;
        then switch the endpoint to it. A replica that answers it cannot load the version
        ends the rollout with `rollout_error` and the old version keeps serving; a replica
        that does not answer is skipped (it is replaced, and its successor loads the
        version on first use). Blocks this loop while replicas load."""
        with self.factory() as session:
            replicas = [
                ReplicaRoute(r.job_id, r.url, r.secret)
                for r in ready_replicas(session, endpoint_id)
                if r.url is not None
            ]
        for warmed in range(len(replicas) + 1):
            if not self._progress(endpoint_id, target, warmed, len(replicas)):
                return  # another update replaced the target, or the endpoint went
            if warmed == len(replicas):
                break
            try:
                problem = self._warm_fn(replicas[warmed], target)
            except httpx.HTTPError as exc:
                logger.warning("could not warm %s on %s: %s", target, replicas[warmed].url, exc)
                continue
            if problem is not None:
                error = {
                    "code": "model_load_failed",
                    "message": f"a replica could not load the new model: {problem}; the "
                    "endpoint keeps serving its current model",
                }
                self._end_rollout(endpoint_id, target, error)
                return
        self._end_rollout(endpoint_id, target, None)

    def _progress(self, endpoint_id: str, target: str, warmed: int, of: int) -> bool:
        """Record `warmed` of `of`; False when the endpoint no longer rolls to `target`."""
        with transaction(self.factory) as session:
            e = session.get(Endpoint, endpoint_id, with_for_update=True)
            if e is None or e.status != ACTIVE or e.target_version_id != target:
                return False
            e.rollout = {"warmed": warmed, "of": of}
            return True

    def _end_rollout(self, endpoint_id: str, target: str, error: dict[str, str] | None) -> None:
        """Switch to `target` (error None) or keep the current version and record why not."""
        with transaction(self.factory) as session:
            e = session.get(Endpoint, endpoint_id, with_for_update=True)
            if e is None or e.status != ACTIVE or e.target_version_id != target:
                return
            if error is None:
                assert e.target_ref is not None  # set with the target
                e.model_ref, e.model_version_id = e.target_ref, target
                e.error = None
                e.updated_at = self.clock()
            else:
                logger.warning("endpoint %s keeps its model: %s", e.name, error["message"])
            e.rollout_error = error
            e.target_ref = e.target_version_id = e.rollout = None
        self.endpoints.on_routes_change()

    def _health(self, replica: ReplicaRoute) -> tuple[bool, ReplicaHealth | None]:
        """Whether the replica answers its /health to our secret (a 401 means whatever
        answers at that address is not this replica), and its answer when that parses."""
        try:
            resp = self._http.get(f"{replica.url}/health", headers=replica_headers(replica.secret))
        except httpx.HTTPError:
            return False, None
        if resp.status_code != 200:
            return False, None
        try:
            return True, ReplicaHealth.model_validate_json(resp.content)
        except ValidationError:  # alive all the same; an older replica, say
            logger.debug("replica %s answered /health without its stats", replica.job_id)
            return True, None

    def _set_ready(self, job_id: str, at: float | None) -> None:
        with transaction(self.factory) as session:
            replica = session.get(EndpointReplica, job_id)
            if replica is not None:
                replica.ready_at = at

    def _meter_replica_seconds(self) -> None:
        """Meter running replicas in whole METER_WINDOW_S windows (the last partial window
        is metered when the attempt ends; see `lifecycle`)."""
        at = self.clock()
        with transaction(self.factory) as session:
            jobs = session.scalars(
                select(Job).where(Job.recipe == SERVE_RECIPE, Job.status == RUNNING)
            ).all()
            for job in jobs:
                windows = int((at - (job.started_at or at)) // METER_WINDOW_S)
                start = self._metered.get((job.id, job.attempt), 0)
                for k in range(start, windows):
                    metering.record(
                        session,
                        tenant_id=job.tenant_id,
                        meter="replica_seconds",
                        quantity=METER_WINDOW_S,
                        ref_type="endpoint",
                        ref_id=str(job.params.get("endpoint_id")),
                        key=f"replica:{job.id}:{job.attempt}:{k}",
                        at=at,
                    )
                self._metered[(job.id, job.attempt)] = max(start, windows)

    def _prune(self) -> None:
        """Forget replica rows of jobs that ended long ago (the jobs stay in the history)."""
        cutoff = self.clock() - self.settings.prune_after_s
        with transaction(self.factory) as session:
            old = select(Job.id).where(Job.status.in_(TERMINAL), Job.finished_at < cutoff)
            session.execute(delete(EndpointReplica).where(EndpointReplica.job_id.in_(old)))


def warm_one(http: httpx.Client, replica: ReplicaRoute, version_id: str) -> str | None:
    """Load `version_id` on `replica` (presenting its secret): None when loaded, else the
    reason. Raises httpx.HTTPError when the replica does not answer."""
    resp = http.post(
        f"{replica.url}/models/{version_id}/load", headers=replica_headers(replica.secret)
    )
    if resp.status_code == 401:  # not this replica at that address: as if none answered
        resp.raise_for_status()
    if resp.status_code < 400:
        return None
    try:
        return str(resp.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {resp.status_code}: {resp.text[:200]}"

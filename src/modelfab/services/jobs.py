"""Jobs as tenants see them: create (validated, then queued), list, show, cancel, events, logs."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from modelfab.compute import lifecycle
from modelfab.compute.executors.base import Executor
from modelfab.compute.lifecycle import STATUSES, TERMINAL, JobStatus
from modelfab.compute.scheduler.policy import (
    PendingJob,
    TenantState,
    never_fits,
    validate_gpu_request,
)
from modelfab.compute.scheduler.snapshot import load_nodes
from modelfab.db.engine import transaction
from modelfab.db.models import Job, JobEvent, Node, Tenant, UsageRecord
from modelfab.errors import Forbidden, InvalidRequest, NotFound, QuotaExceeded, Unschedulable
from modelfab.hub.chat import chat_availability, get_chat_entry
from modelfab.ids import new_id, now
from modelfab.recipes.base import RecipeSpec, get_recipe, is_registry_ref, list_recipes
from modelfab.schemas import jobs as wire
from modelfab.schemas import limits
from modelfab.schemas.datasets import DatasetVersion
from modelfab.services import idempotency, registry
from modelfab.services.common import Principal
from modelfab.services.datasets import resolve_version, version_by_id, version_view
from modelfab.services.idempotency import Idempotency


@dataclass(frozen=True)
class JobRequest:
    recipe: str
    params: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None  # NAME or NAME:VERSION
    gpus: float = 0.0
    cpus: float = 1.0
    memory_bytes: int = 0
    priority: int = 0
    max_attempts: int = limits.DEFAULT_MAX_ATTEMPTS


def job_view(job: Job, dataset: DatasetVersion | None = None) -> wire.Job:
    """The job as the API shows it; `dataset` is its dataset version, when the caller
    read it (listings leave it None)."""
    return wire.Job(
        id=job.id,
        recipe=job.recipe,
        params=job.params,
        dataset=dataset,
        status=JobStatus(job.status),
        resources=wire.Resources(gpus=job.gpus, cpus=job.cpus, memory_bytes=job.memory_bytes),
        priority=job.priority,
        attempt=job.attempt,
        max_attempts=job.max_attempts,
        failures=job.failures,
        cancel_requested=job.cancel_requested,
        node=job.node_id,
        cuda_visible_devices=job.cuda_visible_devices,
        error=job.error,
        result=job.result,
        created_at=job.created_at,
        queued_at=job.queued_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


class JobService:
    def __init__(
        self,
        factory: sessionmaker[Session],
        executor: Executor | None,
        *,
        node_ids: list[str],
        on_change: Callable[[], None] = lambda: None,
        path_roots: Sequence[Path] = (),
        hub_dir: Path | None = None,
    ):
        self.factory = factory
        self.hub_dir = hub_dir
        self.executor = executor
        self.node_ids = node_ids
        self.on_change = on_change
        self.path_roots = [Path(os.path.realpath(r)) for r in path_roots]

    def create(
        self, principal: Principal, request: JobRequest, *, idem: Idempotency | None = None
    ) -> wire.Job:
        """Validate and queue a job. Raises InvalidRequest/NotFound for bad input and
        Unschedulable when no capacity or quota could ever run it. With `idem`, a repeat
        answers the first job (queuing nothing) and a reused key is Conflict."""
        idem = idem.for_body(dataclasses.asdict(request)) if idem else None
        with transaction(self.factory) as session:
            first = idempotency.replay(session, idem, wire.Job)
            if first is not None:
                return first
            out = self.create_in(session, principal, request)
            idempotency.record(session, idem, 201, out)
        self.on_change()
        return out

    def create_in(self, session: Session, principal: Principal, request: JobRequest) -> wire.Job:
        """`create` inside the caller's transaction (which must call `on_change` after
        commit), for services that add their own rows beside the job. Raises as `create`."""
        spec = get_recipe(request.recipe)
        if spec.internal:
            raise InvalidRequest(
                f"recipe {spec.name!r} is run by the platform itself; {spec.description}",
                param="recipe",
            )
        version = None
        if request.dataset:
            version = resolve_version(session, principal.tenant_id, request.dataset)
            _check_task(spec.tasks, version[0].task)
        elif spec.needs_dataset:
            raise InvalidRequest(f"recipe {spec.name!r} needs --dataset", param="dataset")
        params = spec.validate_params(request.params)
        _check_server_paths(spec, principal, params, self.path_roots)
        model_tasks = _pin_registered_models(session, spec, principal.tenant_id, params)
        if spec.check_inputs is not None:
            spec.check_inputs(request.params, version[0].task if version else None, model_tasks)
        hub_ids = [name for name, task in model_tasks.items() if task is None]
        _check_hub_models(spec, params, self.hub_dir, names=(*spec.hub_models, *hub_ids))
        if spec.needs_model:
            _pin_model(session, spec, principal.tenant_id, params)
        request = replace(request, params=params)
        job = self.queue(
            session,
            principal.tenant_id,
            request,
            dataset_version_id=version[1].id if version else None,
        )
        return job_view(job, version_view(*version) if version else None)

    def queue(
        self,
        session: Session,
        tenant_id: str,
        request: JobRequest,
        *,
        dataset_version_id: str | None = None,
    ) -> Job:
        """Validate `request` and add it, queued, inside the caller's transaction (which
        must call `on_change` after commit). Raises InvalidRequest or Unschedulable."""
        spec = get_recipe(request.recipe)
        params = spec.validate_params(request.params)
        _check_resources(request)
        self.check_fits(session, tenant_id, request)
        at = now()
        job = Job(
            id=new_id("job"),
            tenant_id=tenant_id,
            recipe=spec.name,
            params=params,
            dataset_version_id=dataset_version_id,
            gpus=request.gpus,
            cpus=request.cpus,
            memory_bytes=request.memory_bytes,
            priority=request.priority,
            max_attempts=request.max_attempts,
            status=JobStatus.VALIDATING,
            attempt=0,
            failures=0,
            cancel_requested=False,
            created_at=at,
        )
        session.add(job)
        lifecycle.add_event(
            session, job, "Validating job", at=at, data={"status": JobStatus.VALIDATING}
        )
        lifecycle.admit(session, job, at)
        return job

    def check_fits(self, session: Session, tenant_id: str, request: JobRequest) -> None:
        """Raise Unschedulable (or QuotaExceeded) when `request` could never run."""
        tenant = session.get(Tenant, tenant_id)
        assert tenant is not None
        if request.gpus > 0 and tenant.gpu_hours_budget is not None:
            _check_budget(session, tenant)
        node_ids = self.node_ids or list(session.scalars(select(Node.id)))
        nodes = load_nodes(session, node_ids, [], full=True)
        # Named by tenant name, not id, since the reason is shown to the user.
        job = PendingJob("new", tenant.name, request.gpus, request.cpus, request.memory_bytes, 0, 0)
        state = TenantState(tenant.name, tenant.max_gpus, tenant.max_cpus, tenant.weight, 0, 0, 0)
        reason = never_fits(job, nodes, state)
        if reason is not None:
            raise Unschedulable(reason, param="gpus" if "GPU" in reason else "resources")

    def list_jobs(
        self,
        principal: Principal,
        *,
        status: str | None = None,
        limit: int = limits.DEFAULT_LIST_JOBS,
    ) -> list[wire.Job]:
        if status is not None and status not in STATUSES:
            raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}", param="status")
        stmt = select(Job).where(Job.tenant_id == principal.tenant_id)
        if status:
            stmt = stmt.where(Job.status == status)
        stmt = stmt.order_by(Job.created_at.desc(), Job.id).limit(
            _clamp(limit, limits.MAX_LIST_JOBS)
        )
        with self.factory() as session:
            return [job_view(j) for j in session.scalars(stmt)]

    def get(self, principal: Principal, job_id: str) -> wire.Job:
        with self.factory() as session:
            job = _own(session, principal, job_id)
            return job_view(job, version_by_id(session, job.dataset_version_id))

    def cancel(self, principal: Principal, job_id: str) -> wire.Job:
        """Queued jobs end at once; running ones are signalled (SIGTERM, then SIGKILL after
        the grace period) and end as `cancelled` when their process is gone."""
        with transaction(self.factory) as session:
            job = _own(session, principal, job_id, lock=True)
            if job.status in (JobStatus.VALIDATING, JobStatus.QUEUED):
                lifecycle.cancel_queued(session, job, now())
            elif job.status == JobStatus.RUNNING:
                lifecycle.request_cancel(session, job, now())
            out = job_view(job)
        self.on_change()
        return out

    def events(
        self,
        principal: Principal,
        job_id: str,
        *,
        after: int = 0,
        limit: int = limits.DEFAULT_EVENTS_PAGE,
    ) -> list[wire.JobEvent]:
        with self.factory() as session:
            _own(session, principal, job_id)
            rows = session.scalars(
                select(JobEvent)
                .where(JobEvent.job_id == job_id, JobEvent.id > after)
                .order_by(JobEvent.id)
                .limit(_clamp(limit, limits.MAX_EVENTS_PAGE))
            )
            return [_event_view(e) for e in rows]

    def logs(
        self, principal: Principal, job_id: str, *, attempt: int | None, offset: int, limit: int
    ) -> wire.JobLogs:
        """A chunk of the attempt's log (the current attempt when `attempt` is None), at
        most `limits.MAX_LOG_CHUNK` bytes from `offset`. Raises NotFound (param "attempt")
        for an attempt the job has not had."""
        with self.factory() as session:
            job = _own(session, principal, job_id)
            if attempt is not None and not 1 <= attempt <= job.attempt:
                raise _no_such_attempt(job_id, attempt, job.attempt)
            attempt = attempt or job.attempt
            done = job.status in TERMINAL or attempt < job.attempt
        if self.executor is None or attempt < 1:
            return wire.JobLogs(
                attempt=attempt, text="", offset=offset, next_offset=offset, eof=done
            )
        chunk = self.executor.logs(job_id, attempt, offset, _clamp(limit, limits.MAX_LOG_CHUNK))
        return wire.JobLogs(
            attempt=attempt,
            text=chunk.text,
            offset=chunk.offset,
            next_offset=chunk.next_offset,
            eof=done and chunk.next_offset == chunk.offset,
        )


def recipes() -> list[wire.Recipe]:
    """The recipes tenants can run, with their params' JSON schema."""
    return [
        wire.Recipe(
            name=r.name,
            version=r.version,
            description=r.description,
            needs_dataset=r.needs_dataset,
            params=r.params.model_json_schema(),
        )
        for r in list_recipes()
    ]


def _no_such_attempt(job_id: str, attempt: int, had: int) -> NotFound:
    if had == 0:
        why = "it has not started yet"
    else:
        why = f"it has had {had} attempt{'s' if had > 1 else ''}, numbered from 1"
    return NotFound(
        f"job {job_id} has no attempt {attempt}: {why}; leave attempt out for the latest",
        param="attempt",
    )


def _clamp(limit: int, most: int) -> int:
    """A page size the caller asked for, within 1..`most`."""
    return max(1, min(limit, most))


def _check_resources(r: JobRequest) -> None:
    problem = validate_gpu_request(r.gpus)
    if problem:
        raise InvalidRequest(problem, param="gpus")
    if not (r.cpus > 0 and math.isfinite(r.cpus)):
        raise InvalidRequest(f"cpus must be > 0, got {r.cpus}", param="cpus")
    if r.memory_bytes < 0:
        raise InvalidRequest("memory must be >= 0", param="memory_bytes")
    if not 1 <= r.max_attempts <= limits.MAX_ATTEMPTS:
        raise InvalidRequest(
            f"max_attempts must be between 1 and {limits.MAX_ATTEMPTS}", param="max_attempts"
        )


def _check_budget(session: Session, tenant: Tenant) -> None:
    """Refuse new GPU work once the tenant's metered GPU hours reach its budget."""
    spent_s = session.scalar(
        select(func.coalesce(func.sum(UsageRecord.quantity), 0.0)).where(
            UsageRecord.tenant_id == tenant.id, UsageRecord.meter == "gpu_seconds"
        )
    )
    assert tenant.gpu_hours_budget is not None
    if float(spent_s or 0.0) / 3600 >= tenant.gpu_hours_budget:
        raise QuotaExceeded(
            f"tenant {tenant.name!r} has used its budget of {tenant.gpu_hours_budget:g} GPU hours; "
            "ask an admin to raise gpu_hours_budget, or run on CPU (--gpus 0)",
            param="gpus",
        )


def _check_task(tasks: tuple[str, ...], task: str) -> None:
    if tasks and task not in tasks:
        raise InvalidRequest(
            f"this recipe takes {' or '.join(tasks)} datasets, not {task}", param="dataset"
        )


def _own(session: Session, principal: Principal, job_id: str, lock: bool = False) -> Job:
    job = session.get(Job, job_id, with_for_update=lock)
    if job is None or job.tenant_id != principal.tenant_id:
        raise NotFound(f"no job {job_id!r}", param="job_id")
    return job


def _event_view(e: JobEvent) -> wire.JobEvent:
    return wire.JobEvent(
        id=e.id,
        attempt=e.attempt,
        created_at=e.created_at,
        level=e.level,
        type=e.type,
        message=e.message,
        data=e.data,
    )


def _check_hub_models(
    spec: RecipeSpec, params: dict[str, Any], hub_dir: Path | None, names: Sequence[str] = ()
) -> None:
    """Each param of `spec.hub_models` (or of `names`) names a chat model of the hub that
    is usable now. Raises NotFound or InvalidRequest naming `params.<name>` and what to do."""
    for name in names or spec.hub_models:
        value = params.get(name)
        if not isinstance(value, str):
            continue
        if hub_dir is None:
            raise InvalidRequest("this server has no hub folder", param=f"params.{name}")
        try:
            entry = get_chat_entry(hub_dir, value)
        except NotFound as exc:
            raise NotFound(exc.message, param=f"params.{name}") from exc
        usable, how = chat_availability(entry, hub_dir)
        if not usable:
            raise InvalidRequest(
                f"hub model {value!r} is not usable on this server: {how}", param=f"params.{name}"
            )


def _check_server_paths(
    spec: RecipeSpec, principal: Principal, params: dict[str, Any], roots: Sequence[Path]
) -> None:
    """Node paths in `params` must be absolute, and under `roots` unless an admin asks.
    Raises InvalidRequest or Forbidden naming the param."""
    for name in spec.server_paths:
        raw = params.get(name)
        if raw is None:
            continue
        if not Path(str(raw)).is_absolute():
            raise InvalidRequest(
                f"params.{name} must be an absolute path on the server, got {raw!r}",
                param=f"params.{name}",
            )
        real = Path(os.path.realpath(str(raw)))  # no escaping a root through .. or a link
        if not principal.is_admin and not any(real.is_relative_to(r) for r in roots):
            allowed = ", ".join(str(r) for r in roots) or "none are configured"
            raise Forbidden(
                f"params.{name}={raw!r} is outside the folders this tenant may use "
                f"({allowed}); ask an admin to add a path root (modelfab up --path-root)",
                param=f"params.{name}",
            )


def _pin_registered_models(
    session: Session, spec: RecipeSpec, tenant_id: str, params: dict[str, Any]
) -> dict[str, str | None]:
    """For each param of `spec.registered_models`: a registry ref (NAME:VERSION or
    NAME@ALIAS) is resolved to the tenant's version of one of the recipe's tasks and pinned
    in params.<name>_version_id; anything else is a hub id (pinned as None), which the
    caller checks as `hub_models` are. Returns {param: the pinned version's task, None for
    a hub id}. Raises InvalidRequest or NotFound naming params.<name>."""
    tasks: dict[str, str | None] = {}
    for name in spec.registered_models:
        value = str(params.get(name) or "")
        params[f"{name}_version_id"] = tasks[name] = None
        if not is_registry_ref(value):
            continue
        try:
            model, version = registry.registered_model(session, tenant_id, value, spec.tasks)
        except (InvalidRequest, NotFound) as exc:
            exc.param = f"params.{name}"
            raise
        params[f"{name}_version_id"] = version.id
        tasks[name] = model.task
    return tasks


def _pin_model(session: Session, spec: RecipeSpec, tenant_id: str, params: dict[str, Any]) -> None:
    """Resolve params.model to a servable version of the tenant, pinned in
    params.model_version_id. Raises InvalidRequest or NotFound naming params.model."""
    ref = params.get("model")
    if not ref:
        raise InvalidRequest(
            f"recipe {spec.name!r} needs --param model=NAME[:VERSION|@ALIAS]", param="params.model"
        )
    try:
        _, version = registry.servable(session, tenant_id, str(ref))
    except (InvalidRequest, NotFound) as exc:
        exc.param = "params.model"
        raise
    params["model_version_id"] = version.id

"""The OpenAI fine-tuning API over `llm-finetune` jobs.

A fine-tuning job is a modelfab job of the recipe `llm-finetune`, shown in OpenAI's shape:
no table of its own. `ftjob-<hex>` is the job `job_<hex>`; the training file is the job's
dataset (a fine-tune file is the chat dataset named after its id); the hyperparameters are
the recipe's `epochs`, `batch_size` and `lr` (`learning_rate_multiplier` times the recipe's
auto lr, `AUTO_LR`), resolved from the recipe's config event once it ran; the fine-tuned
model is the version the job registered; events and checkpoints are the job's events. What
OpenAI asks that the job does not hold (its metadata) is kept in an event of the job,
written in the create's transaction. Another tenant's job answers NotFound, like a missing
one; so does a job of another recipe.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, sessionmaker

from modelfab.compute import lifecycle
from modelfab.db.engine import transaction
from modelfab.db.models import Dataset, DatasetVersion, Job, JobEvent, Model, ModelVersion
from modelfab.db.models import File as FileRow
from modelfab.errors import InvalidRequest, ModelfabError, NotFound
from modelfab.ids import now
from modelfab.recipes.llm_finetune import AUTO_LR
from modelfab.recipes.llm_finetune import RECIPE as LLM_FINETUNE
from modelfab.schemas import fine_tuning as wire
from modelfab.schemas import limits
from modelfab.services import idempotency
from modelfab.services.common import Principal
from modelfab.services.idempotency import Idempotency
from modelfab.services.jobs import JobRequest, JobService

logger = logging.getLogger(__name__)

JOB_PREFIX, FT_PREFIX = "job_", "ftjob-"
EVENT_PREFIX, CHECKPOINT_PREFIX = "ftevent-", "ftckpt-"
REQUEST_EVENT = "Created through the OpenAI fine-tuning API"
"""The message of the event that keeps what the job does not (`data.openai`)."""

PARAMS = {
    "dataset": "training_file",
    "params.base_model": "model",
    "params.epochs": "hyperparameters.n_epochs",
    "params.batch_size": "hyperparameters.batch_size",
    "params.lr": "hyperparameters.learning_rate_multiplier",
    "params.model_name": "suffix",
    "params.seed": "seed",
}
"""The recipe's names of what went wrong -> OpenAI's request's."""

STATUSES: dict[str, wire.FineTuningStatus] = {
    "validating": "validating_files",
    "queued": "queued",
    "running": "running",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
}
ENDED = ("succeeded", "failed", "cancelled")
LEVELS = {"warning": "warn", "error": "error"}


def ft_id(job_id: str) -> str:
    """ftjob-<hex> of the job job_<hex>."""
    return FT_PREFIX + job_id.removeprefix(JOB_PREFIX)


def job_id_of(fine_tuning_job_id: str) -> str | None:
    """job_<hex> of ftjob-<hex>; None for anything else."""
    if not fine_tuning_job_id.startswith(FT_PREFIX):
        return None
    return JOB_PREFIX + fine_tuning_job_id.removeprefix(FT_PREFIX)


@contextmanager
def openai_params() -> Iterator[None]:
    """Errors raised inside name OpenAI's params (`model`, `training_file`...), not the
    recipe's."""
    try:
        yield
    except ModelfabError as exc:
        exc.param = PARAMS.get(exc.param or "", exc.param)
        raise


def hyperparameters_of(body: wire.FineTuningJobCreate) -> wire.Hyperparameters:
    """The hyperparameters asked, from `method` or the older top-level field. Raises
    InvalidRequest naming `method.type` for a method other than supervised, or
    `hyperparameters` when both forms are sent."""
    if body.method is None:
        return body.hyperparameters or wire.Hyperparameters()
    if body.method.type != "supervised":
        raise InvalidRequest(
            f"method {body.method.type!r} is not trained here; send method.type 'supervised' "
            "(a chat file of conversations to imitate)",
            param="method.type",
        )
    inner = body.method.supervised.hyperparameters if body.method.supervised else None
    if inner is not None and body.hyperparameters is not None:
        raise InvalidRequest(
            "hyperparameters were sent twice; send them only in method.supervised.hyperparameters",
            param="hyperparameters",
        )
    return inner or body.hyperparameters or wire.Hyperparameters()


def recipe_params(body: wire.FineTuningJobCreate, seed: int) -> dict[str, Any]:
    """The `llm-finetune` params an OpenAI create asks for (LoRA, the rest "auto")."""
    hp = hyperparameters_of(body)
    mult = hp.learning_rate_multiplier
    params: dict[str, Any] = {
        "base_model": body.model,
        "method": "lora",
        "epochs": hp.n_epochs,
        "batch_size": hp.batch_size,
        "lr": "auto" if mult == "auto" else mult * AUTO_LR["lora"],
        "seed": seed,
    }
    if body.suffix is not None:
        params["model_name"] = body.suffix
    return params


class FineTuningService:
    def __init__(self, factory: sessionmaker[Session], jobs: JobService):
        self.factory = factory
        self.jobs = jobs

    def create(
        self,
        principal: Principal,
        body: wire.FineTuningJobCreate,
        *,
        idem: Idempotency | None = None,
    ) -> wire.FineTuningJob:
        """Queue an `llm-finetune` job for the request. Raises NotFound naming
        `training_file` (no such file of the tenant) or `model` (not in the hub),
        InvalidRequest naming the param (validation_file, method.type, suffix,
        hyperparameters.*), Unschedulable or QuotaExceeded as any job. With `idem`, a repeat
        answers the first job and queues nothing."""
        idem = idem.for_body(body.model_dump(mode="json")) if idem else None
        if body.validation_file is not None:
            raise InvalidRequest(
                "validation_file is not taken: llm-finetune holds out a reproducible 10% of "
                "training_file to validate on; leave validation_file out (or add its "
                "conversations to training_file)",
                param="validation_file",
            )
        seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
        with openai_params():
            params = recipe_params(body, seed)
            with transaction(self.factory) as session:
                if (first := idempotency.replay(session, idem, wire.FineTuningJob)) is not None:
                    return first
                dataset = _file_dataset(session, principal, body.training_file)
                request = JobRequest(
                    recipe=LLM_FINETUNE.name,
                    params=params,
                    dataset=dataset,
                    gpus=body.resources.gpus,
                    cpus=body.resources.cpus,
                    memory_bytes=body.resources.memory_bytes,
                )
                created = self.jobs.create_in(session, principal, request)
                job = session.get(Job, created.id)
                assert job is not None
                openai = {"training_file": body.training_file, "metadata": body.metadata}
                lifecycle.add_event(session, job, REQUEST_EVENT, data={"openai": openai}, at=now())
                session.flush()
                out = _view(session, job)
                idempotency.record(session, idem, 200, out)
        self.jobs.on_change()
        logger.info("fine-tuning job %s on %s", out.id, body.training_file)
        return out

    def list_jobs(
        self,
        principal: Principal,
        *,
        after: str | None = None,
        limit: int = limits.DEFAULT_LIST_FINE_TUNING,
    ) -> wire.FineTuningJobList:
        """The tenant's fine-tuning jobs, newest first, those after the job `after`, at most
        `limit`. Raises InvalidRequest (param "after") when `after` is none of them."""
        with self.factory() as session:
            stmt = select(Job).where(
                Job.tenant_id == principal.tenant_id, Job.recipe == LLM_FINETUNE.name
            )
            if after is not None:
                anchor = _own(session, principal, after, param="after", exc=InvalidRequest)
                stmt = stmt.where(
                    or_(
                        Job.created_at < anchor.created_at,
                        and_(Job.created_at == anchor.created_at, Job.id > anchor.id),
                    )
                )
            stmt = stmt.order_by(Job.created_at.desc(), Job.id).limit(limit + 1)
            rows = list(session.scalars(stmt))
            data = [_view(session, j) for j in rows[:limit]]
        return wire.FineTuningJobList(data=data, has_more=len(rows) > limit)

    def get(self, principal: Principal, fine_tuning_job_id: str) -> wire.FineTuningJob:
        """Raises NotFound (param "fine_tuning_job_id")."""
        with self.factory() as session:
            return _view(session, _own(session, principal, fine_tuning_job_id))

    def cancel(self, principal: Principal, fine_tuning_job_id: str) -> wire.FineTuningJob:
        """A waiting job ends at once; a running one is signalled and shows `cancelled`
        once its worker is gone (until then `running`). An ended job is left as it is.
        Raises NotFound (param "fine_tuning_job_id")."""
        with self.factory() as session:
            job_id = _own(session, principal, fine_tuning_job_id).id
        self.jobs.cancel(principal, job_id)
        return self.get(principal, fine_tuning_job_id)

    def events(
        self,
        principal: Principal,
        fine_tuning_job_id: str,
        *,
        after: str | None = None,
        limit: int = limits.DEFAULT_LIST_FINE_TUNING,
    ) -> wire.FineTuningJobEventList:
        """The job's events, newest first, those older than the event `after`. Raises
        NotFound, or InvalidRequest (param "after") for an id not of the form ftevent-N."""
        with self.factory() as session:
            job = _own(session, principal, fine_tuning_job_id)
            rows = _events_page(session, job.id, None, _event_no(after, EVENT_PREFIX), limit)
        page = [_event_view(e) for e in rows[:limit]]
        return wire.FineTuningJobEventList(data=page, has_more=len(rows) > limit)

    def checkpoints(
        self,
        principal: Principal,
        fine_tuning_job_id: str,
        *,
        after: str | None = None,
        limit: int = limits.DEFAULT_LIST_FINE_TUNING,
    ) -> wire.FineTuningJobCheckpointList:
        """One checkpoint per epoch the job ran, newest first, those older than `after`.
        Raises as `events` (`after` is ftckpt-N)."""
        with self.factory() as session:
            job = _own(session, principal, fine_tuning_job_id)
            no = _event_no(after, CHECKPOINT_PREFIX)
            rows = _events_page(session, job.id, "checkpoint", no, limit)
        page = [_checkpoint_view(job.id, e) for e in rows[:limit]]
        return wire.FineTuningJobCheckpointList(
            data=page,
            has_more=len(rows) > limit,
            first_id=page[0].id if page else None,
            last_id=page[-1].id if page else None,
        )


# --------------------------------------------------------------------------- reading


def _file_dataset(session: Session, principal: Principal, file_id: str) -> str:
    """The dataset version ref (NAME:VERSION) the tenant's file became. Raises NotFound
    naming training_file."""
    row = session.get(FileRow, file_id)
    version = session.get(DatasetVersion, row.dataset_version_id) if row else None
    dataset = session.get(Dataset, version.dataset_id) if version else None
    if row is None or row.tenant_id != principal.tenant_id or version is None or not dataset:
        raise NotFound(
            f"no file {file_id[:80]!r}; upload the chat JSONL with POST /v1/files (purpose "
            "fine-tune) and pass its id, or list yours with GET /v1/files",
            param="training_file",
        )
    return f"{dataset.name}:{version.version}"


def _own(
    session: Session,
    principal: Principal,
    fine_tuning_job_id: str,
    *,
    param: str = "fine_tuning_job_id",
    exc: type[InvalidRequest] | type[NotFound] = NotFound,
) -> Job:
    job_id = job_id_of(fine_tuning_job_id)
    job = session.get(Job, job_id) if job_id else None
    if job is None or job.tenant_id != principal.tenant_id or job.recipe != LLM_FINETUNE.name:
        raise exc(
            f"no fine-tuning job {fine_tuning_job_id[:80]!r}; list yours with GET "
            "/v1/fine_tuning/jobs",
            param=param,
        )
    return job


def _event_no(after: str | None, prefix: str) -> int | None:
    if after is None:
        return None
    digits = after.removeprefix(prefix)
    if not after.startswith(prefix) or not digits.isdigit() or len(digits) > 18:
        raise InvalidRequest(
            f"after must be an id of this list ({prefix}N), got {after[:80]!r}", param="after"
        )
    return int(digits)


def _events_page(
    session: Session, job_id: str, type_: str | None, before: int | None, limit: int
) -> list[JobEvent]:
    """Up to `limit` + 1 events of the job (of `type_`), newest first, older than `before`."""
    stmt = select(JobEvent).where(JobEvent.job_id == job_id)
    if type_ is not None:
        stmt = stmt.where(JobEvent.type == type_)
    if before is not None:
        stmt = stmt.where(JobEvent.id < before)
    return list(session.scalars(stmt.order_by(JobEvent.id.desc()).limit(limit + 1)))


def _view(session: Session, job: Job) -> wire.FineTuningJob:
    """The job as OpenAI's `fine_tuning.job` (a few reads: its dataset, registered version
    and message events)."""
    params = job.params
    notes = _notes(session, job.id)
    openai = notes.get("openai") or {}
    error = None
    if job.status == "failed" and job.error:
        error = wire.FineTuningError(
            code=str(job.error.get("code", "failed")),
            message=str(job.error.get("message", "")),
            param=PARAMS.get(job.error.get("param") or "", job.error.get("param")),
        )
    used = _hyperparameters(params, notes.get("config"))
    result = job.result or {}
    tokens = result.get("tokens_trained")
    return wire.FineTuningJob(
        id=ft_id(job.id),
        created_at=int(job.created_at),
        finished_at=int(job.finished_at) if job.finished_at and job.status in ENDED else None,
        model=str(params.get("base_model", "")),
        fine_tuned_model=_registered(session, job.id),
        organization_id=job.tenant_id,
        status=STATUSES[job.status],
        hyperparameters=used,
        training_file=openai.get("training_file") or _dataset_name(session, job),
        result_files=[],
        trained_tokens=int(tokens) if job.status == "succeeded" and tokens is not None else None,
        error=error,
        seed=int(params.get("seed", 0)),
        estimated_finish=_estimated_finish(session, job.id) if job.status == "running" else None,
        metadata=openai.get("metadata"),
        method=wire.MethodUsed(supervised=wire.SupervisedUsed(hyperparameters=used)),
        job=job.id,
    )


def _notes(session: Session, job_id: str) -> dict[str, Any]:
    """`openai` (what the create asked) and `config` (the recipe's resolved config, from
    the latest attempt) out of the job's message events."""
    notes: dict[str, Any] = {}
    stmt = select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == "message")
    for data in session.scalars(stmt.order_by(JobEvent.id)):
        for key in ("openai", "config"):
            if isinstance(data, dict) and isinstance(data.get(key), dict):
                notes[key] = data[key]
    return notes


def _hyperparameters(
    params: dict[str, Any], config: dict[str, Any] | None
) -> wire.HyperparametersUsed:
    """As resolved by the recipe (`config`) once known, else as asked."""
    source = config or params
    lr, method = source.get("lr", "auto"), str(source.get("method", "lora"))
    mult = lr if lr == "auto" else round(float(lr) / AUTO_LR.get(method, AUTO_LR["lora"]), 6)
    return wire.HyperparametersUsed(
        n_epochs=source.get("epochs", "auto"),
        batch_size=source.get("batch_size", "auto"),
        learning_rate_multiplier=mult,
    )


def _registered(session: Session, job_id: str) -> str | None:
    row = session.execute(
        select(Model.name, ModelVersion.version)
        .join(Model, Model.id == ModelVersion.model_id)
        .where(ModelVersion.job_id == job_id)
    ).first()
    return f"{row[0]}:{row[1]}" if row else None


def _dataset_name(session: Session, job: Job) -> str:
    """The job's dataset name (a file's id when it came from a file)."""
    name = session.scalar(
        select(Dataset.name)
        .join(DatasetVersion, DatasetVersion.dataset_id == Dataset.id)
        .where(DatasetVersion.id == job.dataset_version_id)
    )
    return name or ""


def _estimated_finish(session: Session, job_id: str) -> int | None:
    """When the last step's ETA says the job will end (UNIX seconds)."""
    stmt = (
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.type == "metrics")
        .order_by(JobEvent.id.desc())
        .limit(5)
    )
    for event in session.scalars(stmt):
        eta = (event.data or {}).get("eta_s")
        if isinstance(eta, int | float):
            return int(event.created_at + eta)
    return None


def _event_view(e: JobEvent) -> wire.FineTuningJobEvent:
    return wire.FineTuningJobEvent(
        id=f"{EVENT_PREFIX}{e.id}",
        created_at=int(e.created_at),
        level=LEVELS.get(e.level, "info"),  # type: ignore[arg-type]  # LEVELS holds Literals
        message=e.message,
        type="metrics" if e.type == "metrics" else "message",
        data=e.data,
    )


def _checkpoint_view(job_id: str, e: JobEvent) -> wire.FineTuningJobCheckpoint:
    data = e.data or {}
    step = int(data.get("step", 0))

    def number(key: str) -> float | None:
        value = data.get(key)
        return float(value) if isinstance(value, int | float) else None

    return wire.FineTuningJobCheckpoint(
        id=f"{CHECKPOINT_PREFIX}{e.id}",
        created_at=int(e.created_at),
        fine_tuned_model_checkpoint=f"{ft_id(job_id)}:ckpt-step-{step}",
        fine_tuning_job_id=ft_id(job_id),
        metrics=wire.CheckpointMetrics(
            step=float(step),
            train_loss=number("train_loss"),
            valid_loss=number("val_loss"),
            valid_mean_token_accuracy=number("val_token_accuracy"),
            full_valid_loss=number("val_loss"),
            full_valid_mean_token_accuracy=number("val_token_accuracy"),
        ),
        step_number=step,
    )

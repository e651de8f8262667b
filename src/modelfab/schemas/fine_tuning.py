"""The OpenAI fine-tuning API (`/v1/fine_tuning/jobs`): OpenAI's requests and objects with
their field names and states, so the `openai` client drives it unchanged. A fine-tuning job
is an `llm-finetune` job seen through OpenAI's eyes: `ftjob-<hex>` is `job_<hex>`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, PlainValidator, WithJsonSchema

from modelfab.schemas import limits
from modelfab.schemas.common import RequestModel, WireModel
from modelfab.schemas.jobs import ResourceRequest

Auto = Literal["auto"]

FineTuningStatus = Literal[
    "validating_files", "queued", "running", "succeeded", "failed", "cancelled"
]

MetadataKey = Annotated[str, Field(max_length=limits.MAX_METADATA_KEY)]
MetadataValue = Annotated[str, Field(max_length=limits.MAX_METADATA_VALUE)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=limits.MAX_METADATA_PAIRS)]


@dataclass(frozen=True)
class _AutoOr:
    """ "auto" or a number of `kind` within [low, high] (above `low` when `open_low`),
    checked as one type so that an error names the field alone (a union's error would name
    its member too)."""

    kind: type[int] | type[float]
    low: float
    high: float
    open_low: bool = False

    def check(self, value: Any) -> Any:
        if value == "auto":
            return value
        number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
        if self.kind is int and isinstance(number, float):
            number = int(number) if number.is_integer() else None
        low, high = self.low, self.high
        if number is None or not math.isfinite(number) or not low <= number <= high:
            raise ValueError(f"{self._expected()}, got {str(value)[:40]!r}")
        if self.open_low and number == low:
            raise ValueError(f"{self._expected()}, got {value!r}")
        return self.kind(number)

    def _expected(self) -> str:
        name = "an integer" if self.kind is int else "a number"
        low = f"above {self.low:g}" if self.open_low else f"from {self.low:g}"
        return f'must be "auto" or {name} {low} to {self.high:g}'

    def schema(self) -> dict[str, Any]:
        bound = {"exclusiveMinimum": self.low} if self.open_low else {"minimum": self.low}
        number = {
            "type": "integer" if self.kind is int else "number",
            **bound,
            "maximum": self.high,
        }
        return {"anyOf": [number, {"type": "string", "const": "auto"}]}


_EPOCHS = _AutoOr(int, 1, 100)
_BATCH = _AutoOr(int, 1, 512)
_LR_MULT = _AutoOr(float, 0, limits.MAX_LR_MULTIPLIER, open_low=True)
Epochs = Annotated[int | Auto, PlainValidator(_EPOCHS.check), WithJsonSchema(_EPOCHS.schema())]
BatchSize = Annotated[int | Auto, PlainValidator(_BATCH.check), WithJsonSchema(_BATCH.schema())]
LrMultiplier = Annotated[
    float | Auto, PlainValidator(_LR_MULT.check), WithJsonSchema(_LR_MULT.schema())
]


class Hyperparameters(RequestModel):
    """Each "auto" (the recipe chooses from the data) or a number."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    n_epochs: Epochs = Field(
        default="auto",
        description="Upper bound on epochs; early stopping may end sooner (llm-finetune "
        "`epochs`; auto: 3 below 2,000 conversations, 2 below 20,000, else 1).",
    )
    batch_size: BatchSize = Field(
        default="auto", description="Conversations per step (auto: 8, 16 on a GPU)."
    )
    learning_rate_multiplier: LrMultiplier = Field(
        default="auto",
        description="Times the recipe's base learning rate: 2e-4 (LoRA, what this API "
        "trains), so 0.5 means lr 1e-4.",
    )


class SupervisedMethod(RequestModel):
    hyperparameters: Hyperparameters | None = None


class Method(RequestModel):
    """`supervised` is the one type trained here (dpo and reinforcement are refused)."""

    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: dict[str, Any] | None = None
    reinforcement: dict[str, Any] | None = None


class FineTuningJobCreate(RequestModel):
    model: str = Field(
        max_length=128, description="A chat model of the hub (`modelfab hub list`), e.g. tiny-chat."
    )
    training_file: str = Field(
        max_length=64, description="A file id from POST /v1/files (purpose fine-tune)."
    )
    validation_file: str | None = Field(
        default=None,
        max_length=64,
        description="Not taken: a reproducible share of training_file is held out instead.",
    )
    hyperparameters: Hyperparameters | None = Field(
        default=None, description="OpenAI's older form of method.supervised.hyperparameters."
    )
    method: Method | None = None
    suffix: str | None = Field(
        default=None,
        max_length=64,
        description="The registry name of the fine-tuned model (default: the training file's "
        "id, which is also its dataset's name).",
    )
    seed: int | None = Field(
        default=None, ge=0, le=limits.MAX_SEED, description="Random when left out."
    )
    metadata: Metadata | None = None
    integrations: list[dict[str, Any]] | None = Field(
        default=None, max_length=0, description="None are supported; leave it out or empty."
    )
    resources: ResourceRequest = Field(
        default_factory=ResourceRequest,
        description="modelfab's own: what the job asks of the pool (the openai client sends "
        'it as extra_body={"resources": {"gpus": 1}}); one CPU slot by default.',
    )


class FineTuningError(WireModel):
    code: str
    message: str
    param: str | None = None


class HyperparametersUsed(WireModel):
    """As asked while the job waits; as resolved once the recipe chose its "auto"s."""

    batch_size: int | Auto | None = None
    learning_rate_multiplier: float | Auto | None = None
    n_epochs: int | Auto | None = None


class SupervisedUsed(WireModel):
    hyperparameters: HyperparametersUsed


class MethodUsed(WireModel):
    type: Literal["supervised"] = "supervised"
    supervised: SupervisedUsed


class FineTuningJob(WireModel):
    """OpenAI's `fine_tuning.job`, plus `job`: the modelfab job behind it."""

    id: str = Field(description="ftjob-<hex>, the job job_<hex>.")
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int = Field(description="UNIX seconds.")
    finished_at: int | None = None
    model: str = Field(description="The base model (a hub chat model id).")
    fine_tuned_model: str | None = Field(
        default=None, description="The registered version, NAME:VERSION, once succeeded."
    )
    organization_id: str = Field(description="The tenant's id.")
    status: FineTuningStatus
    hyperparameters: HyperparametersUsed
    training_file: str = Field(description="The file id (the name of the job's dataset).")
    validation_file: str | None = None
    result_files: list[str] = Field(default_factory=list)
    trained_tokens: int | None = Field(default=None, description="Once succeeded.")
    error: FineTuningError | None = None
    seed: int
    estimated_finish: int | None = Field(
        default=None, description="While running: UNIX seconds, from the last step's ETA."
    )
    integrations: list[dict[str, Any]] = Field(default_factory=list)
    metadata: dict[str, str] | None = None
    method: MethodUsed
    job: str = Field(description="The modelfab job (GET /v1/jobs/{id}).")


class FineTuningJobList(WireModel):
    """A page, newest first; the next one is `after=` the last id."""

    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool


class FineTuningJobEvent(WireModel):
    id: str = Field(description="ftevent-<the job event's id>.")
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"] = Field(
        description="metrics: step or epoch metrics in `data` (step, train_loss, val_loss, "
        "tokens_per_s, lr, eta_s...)."
    )
    data: dict[str, Any] | None = None


class FineTuningJobEventList(WireModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobEvent]
    has_more: bool


class CheckpointMetrics(WireModel):
    step: float | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None


class FineTuningJobCheckpoint(WireModel):
    """One epoch's checkpoint (the recipe keeps the best one and registers it)."""

    id: str = Field(description="ftckpt-<the checkpoint event's id>.")
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str = Field(
        description="Names the checkpoint (FTJOB:ckpt-step-N); not servable: the best epoch "
        "is registered as fine_tuned_model."
    )
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int


class FineTuningJobCheckpointList(WireModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobCheckpoint]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None

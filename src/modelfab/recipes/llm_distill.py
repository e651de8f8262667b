"""`llm-distill`: distil a teacher into smaller students, each registered beside a report
that puts it next to its teacher. Two kinds of teacher, one recipe:

- chat: a hub chat model or a registered chat model of the tenant, on a chat dataset. One
  student per size asked; each starts as a copy of the teacher keeping evenly spaced
  decoder layers and learns the teacher's token distributions on the dataset's answers (or
  on answers the teacher writes). Worker: `modelfab.recipes.llm.job:run_distill`.
- image: a registered image-classification model, on an image-classification dataset
  (labelled) or an `images` one (unlabelled). The student is a hub image model learning
  the teacher's softened class probabilities (plus the labels, when there are some).
  Worker: `modelfab.recipes.vision.distill_job:run`.

Which params apply to which kind is `CHAT_ONLY` / `IMAGE_ONLY`; giving one to the other
kind is refused at create (`check_inputs`). This module is the light half the control
plane imports; `run` picks the worker half by the pinned teacher's task and imports it
only then, in the worker."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator

from modelfab.errors import InvalidRequest, ModelfabError
from modelfab.recipes.base import (
    FetchesModelArtifacts,
    RecipeContext,
    RecipeSpec,
    is_registry_ref,
    known_hub_model,
)
from modelfab.recipes.llm_finetune import DEFAULT_BASE_MODEL
from modelfab.schemas.common import Name
from modelfab.schemas.limits import MAX_SEED
from modelfab.tasks import CHAT, IMAGE_CLASSIFICATION, IMAGES

Auto = Literal["auto"]

MAX_STUDENTS = 8
MAX_LAYERS = 512
STUDENT_SUFFIX_CHARS = 5
"""Room a student's name needs after `model_name`: "-<layers>l"."""
DEFAULT_STUDENT_MODEL = "tiny-cnn"
"""The image student when `student_model` is not given: the one hub image model every
server has (random init, no weights to import); name a pretrained one for real work."""
IMAGE_STUDENT_SUFFIX = "-student"
"""An image student's default name: `<teacher name>-student`."""

CHAT_ONLY = frozenset(
    {"student_layers", "loss", "teacher_answers", "max_length", "samples", "answer_tokens"}
)
"""Params that apply to chat teachers only."""
IMAGE_ONLY = frozenset({"student_model", "image_size"})
"""Params that apply to image-classification teachers only."""
DATASETS_BY_TEACHER: dict[str, tuple[str, ...]] = {
    CHAT: (CHAT,),
    IMAGE_CLASSIFICATION: (IMAGE_CLASSIFICATION, IMAGES),
}
"""Teacher task -> the dataset tasks it distils on."""
WORKERS: dict[str, str] = {
    CHAT: "modelfab.recipes.llm.job:run_distill",
    IMAGE_CLASSIFICATION: "modelfab.recipes.vision.distill_job:run",
}
"""Teacher task -> the worker half ("module:function") that distils it."""


def student_name(model_name: str, layers: int) -> str:
    """The registry name of the student of `layers` layers: `<model_name>-<layers>l`."""
    return f"{model_name}-{layers}l"


class Params(BaseModel):
    model_config = {"extra": "forbid"}

    teacher: str = Field(
        default=DEFAULT_BASE_MODEL,
        description="The model to distil: a chat model id of `modelfab hub list`, or a "
        "registered chat or image-classification model of yours as NAME:VERSION or "
        "NAME@ALIAS (an image teacher needs an image-classification or images dataset).",
    )
    teacher_version_id: str | None = Field(
        default=None,
        description="Set by the platform at create: the registered version `teacher` "
        "named then, so every attempt distils the same one (None for a hub teacher).",
    )
    student_layers: list[Annotated[int, Field(ge=1, le=MAX_LAYERS)]] = Field(
        default_factory=lambda: [2],
        min_length=1,
        max_length=MAX_STUDENTS,
        description="Chat only: decoder layers of each student, one student per size (each "
        "fewer than the teacher's); repeat the param for several sizes.",
    )
    loss: Literal["forward_kl", "jsd"] = Field(
        default="forward_kl",
        description="Chat only: how far the student's token distribution is from the "
        "teacher's: forward KL (teacher || student) or Jensen-Shannon divergence (image "
        "students always learn forward KL).",
    )
    temperature: float = Field(
        default=2.0, gt=0, le=20, description="Softens both distributions; the loss is x T²."
    )
    alpha: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Weight of the plain loss on the data's own answers (next tokens; an "
        "image's class label); the distillation loss weighs 1 - alpha. Unlabelled images "
        "learn the distillation loss alone.",
    )
    teacher_answers: bool = Field(
        default=False,
        description="Chat only: train on the teacher's own greedy answers to the training "
        "prompts instead of the dataset's (the held-out answers stay the dataset's).",
    )
    epochs: Annotated[int, Field(ge=1, le=100)] | Auto = Field(
        default="auto",
        description="Upper bound on epochs; early stopping on the held-out distillation "
        "loss (chat) or agreement with the teacher (image) may end sooner (auto: chat 3 "
        "below 2,000 conversations, 2 below 20,000, else 1; image as image-classification).",
    )
    lr: Annotated[float, Field(gt=0, le=1)] | Auto = Field(
        default="auto",
        description="AdamW peak learning rate (auto: chat 1e-4; image as image-classification).",
    )
    batch_size: Annotated[int, Field(ge=1, le=512)] | Auto = Field(
        default="auto",
        description="Conversations (chat: auto 8, 16 on a GPU) or images (image: auto as "
        "image-classification) per step.",
    )
    max_length: Annotated[int, Field(ge=16, le=32768)] | Auto = Field(
        default="auto",
        description="Chat only: tokens per conversation (auto: the 99th percentile of the "
        "data, a multiple of 64, within the model's context).",
    )
    val_fraction: float = Field(
        default=0.1,
        gt=0,
        lt=0.5,
        description="Share of conversations or images held out to evaluate (images: per class "
        "when labelled).",
    )
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="Seed of the split.")
    patience: int = Field(
        default=2, ge=1, le=100, description="Epochs without a lower held-out loss to stop."
    )
    samples: int = Field(
        default=16,
        ge=1,
        le=200,
        description="Chat only: held-out prompts both answer greedily: answer agreement and "
        "tokens/s.",
    )
    answer_tokens: int = Field(
        default=128,
        ge=1,
        le=2048,
        description="Chat only: most tokens of each greedy answer: the held-out ones "
        "(agreement, tokens/s) and, with teacher_answers, the teacher's training answers.",
    )
    model_name: Name | None = Field(
        default=None,
        description="Chat: registry name stem (default: the teacher's name); each student is "
        "registered as <model_name>-<layers>l. Image: the student's registry name (default: "
        "<teacher name>-student).",
    )
    student_model: str | None = Field(
        default=None,
        description="Image only: the student, an image-classification model id of `modelfab "
        f"hub list`, trained from its hub weights (default {DEFAULT_STUDENT_MODEL}).",
    )
    image_size: Annotated[int, Field(ge=16, le=1024)] | Auto = Field(
        default="auto",
        description="Image only: the student's square input side in pixels (auto: the teacher's).",
    )

    @field_validator("teacher")
    @classmethod
    def _teacher(cls, value: str) -> str:
        if not is_registry_ref(value) and not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,62}", value):
            raise ValueError(
                "must be a hub chat model id or a registered model as NAME:VERSION or "
                f"NAME@ALIAS, got {value[:80]!r}"
            )
        return value

    @field_validator("student_model")
    @classmethod
    def _image_student(cls, value: str | None) -> str | None:
        return None if value is None else known_hub_model(value, IMAGE_CLASSIFICATION)

    @field_validator("student_layers", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, int | str) else value

    @field_validator("student_layers")
    @classmethod
    def _distinct(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"sizes must differ, got {value}")
        return sorted(value, reverse=True)

    @field_validator("model_name")
    @classmethod
    def _room_for_suffix(cls, value: str | None) -> str | None:
        if value is not None and len(value) > 63 - STUDENT_SUFFIX_CHARS:
            raise ValueError(
                f"at most {63 - STUDENT_SUFFIX_CHARS} characters, to leave room for the "
                "students' -<layers>l"
            )
        return value


def check_inputs(
    given: Mapping[str, Any], dataset_task: str | None, model_tasks: Mapping[str, str | None]
) -> None:
    """Refuse, at create, a dataset the teacher cannot be distilled on and params of the
    other kind of teacher. `given`: the params as the user sent them; `model_tasks`: the
    pinned teacher's task (None for a hub id: a chat model). Raises InvalidRequest naming
    params.teacher, or the first param that does not apply."""
    teacher_task = model_tasks.get("teacher") or CHAT
    datasets = DATASETS_BY_TEACHER.get(teacher_task)
    if datasets is None:
        raise InvalidRequest(
            f"teacher {given.get('teacher')!r} is a {teacher_task} model; llm-distill distils "
            f"{' and '.join(DATASETS_BY_TEACHER)} models",
            param="params.teacher",
        )
    if dataset_task is not None and dataset_task not in datasets:
        teacher = str(given.get("teacher") or DEFAULT_BASE_MODEL)
        raise InvalidRequest(
            f"teacher {teacher!r} is a {teacher_task} model, which distils on "
            f"{' or '.join(datasets)} datasets, not this {dataset_task} one; "
            f"{_teacher_hint(dataset_task)}",
            param="params.teacher",
        )
    refused = CHAT_ONLY if teacher_task != CHAT else IMAGE_ONLY
    wrong = sorted(refused & set(given))
    if wrong:
        kind = "image-classification" if teacher_task == CHAT else "chat"
        raise InvalidRequest(
            f"param {wrong[0]!r} applies to {kind} teachers only, and teacher "
            f"{given.get('teacher')!r} is a {teacher_task} model; remove it",
            param=f"params.{wrong[0]}",
        )


def _teacher_hint(dataset_task: str) -> str:
    for teacher_task, datasets in DATASETS_BY_TEACHER.items():
        if dataset_task in datasets:
            return f"give a registered {teacher_task} model as --param teacher=NAME:VERSION"
    return "use a dataset of a task this recipe takes"


def teacher_task(ctx: RecipeContext, params: Params) -> str:
    """The task of the teacher `params` pinned: chat for a hub id, else the registered
    version's. Blocks (asks the control plane). Raises ModelfabError when this worker cannot
    fetch registered models."""
    if params.teacher_version_id is None:
        return CHAT
    if not isinstance(ctx, FetchesModelArtifacts):
        raise ModelfabError(
            "this worker cannot fetch registered models; use a hub teacher",
            code="teacher_unavailable",
            param="params.teacher",
        )
    return str(ctx.model_artifacts(params.teacher_version_id).get("task") or CHAT)


def run(ctx: RecipeContext, params: Params) -> dict[str, Any] | None:
    """The recipe's entrypoint (worker side): hand the job to the worker half of the
    teacher's task (`WORKERS`), imported now. Raises InvalidRequest for a teacher of a task
    no worker half distils."""
    task = teacher_task(ctx, params)
    target = WORKERS.get(task)
    if target is None:
        raise InvalidRequest(
            f"teacher {params.teacher!r} is a {task} model; llm-distill distils "
            f"{' and '.join(WORKERS)} models",
            param="params.teacher",
        )
    module, function = target.split(":")
    worker: Callable[[RecipeContext, Params], dict[str, Any] | None] = getattr(
        importlib.import_module(module), function
    )
    return worker(ctx, params)


RECIPE = RecipeSpec(
    name="llm-distill",
    version="1",
    description="Distil a chat model (hub or registered) into smaller students, one per "
    "size, or a registered image classifier into a smaller hub image model, on labelled or "
    "unlabelled images; register each beside its teacher's quality and speed.",
    params=Params,
    entrypoint="modelfab.recipes.llm_distill:run",
    needs_dataset=True,
    tasks=(CHAT, IMAGE_CLASSIFICATION, IMAGES),
    registered_models=("teacher",),
    meters=("tokens_trained",),
    check_inputs=check_inputs,
    weights_param="student_model",
)

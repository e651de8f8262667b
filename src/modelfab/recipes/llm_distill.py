"""`llm-distill`: distil a chat model (the teacher: a hub model or a registered chat model of
the tenant) into smaller students, one per size asked. Each student starts as a copy of the
teacher keeping evenly spaced decoder layers, learns the teacher's token distributions on
the dataset's answers (or on answers the teacher writes), and is registered as its own
version beside a report that puts it next to its teacher.

This module is the light half the control plane imports to validate params; the training
lives in `modelfab.recipes.llm.distill` and is imported only by the worker."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator

from modelfab.recipes.base import RecipeSpec, is_registry_ref
from modelfab.recipes.llm_finetune import DEFAULT_BASE_MODEL
from modelfab.schemas.common import Name
from modelfab.schemas.limits import MAX_SEED
from modelfab.tasks import CHAT

Auto = Literal["auto"]

MAX_STUDENTS = 8
MAX_LAYERS = 512
STUDENT_SUFFIX_CHARS = 5
"""Room a student's name needs after `model_name`: "-<layers>l"."""


def student_name(model_name: str, layers: int) -> str:
    """The registry name of the student of `layers` layers: `<model_name>-<layers>l`."""
    return f"{model_name}-{layers}l"


class Params(BaseModel):
    model_config = {"extra": "forbid"}

    teacher: str = Field(
        default=DEFAULT_BASE_MODEL,
        description="The model to distil: a chat model id of `modelfab hub list`, or a "
        "registered chat model of yours as NAME:VERSION or NAME@ALIAS.",
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
        description="Decoder layers of each student, one student per size (each fewer than "
        "the teacher's); repeat the param for several sizes.",
    )
    loss: Literal["forward_kl", "jsd"] = Field(
        default="forward_kl",
        description="How far the student's token distribution is from the teacher's: "
        "forward KL (teacher || student) or Jensen-Shannon divergence.",
    )
    temperature: float = Field(
        default=2.0, gt=0, le=20, description="Softens both distributions; the loss is x T²."
    )
    alpha: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Weight of the plain next-token loss on the data's answers; the "
        "distillation loss weighs 1 - alpha.",
    )
    teacher_answers: bool = Field(
        default=False,
        description="Train on the teacher's own greedy answers to the training prompts "
        "instead of the dataset's (the held-out answers stay the dataset's).",
    )
    epochs: Annotated[int, Field(ge=1, le=100)] | Auto = Field(
        default="auto",
        description="Upper bound on epochs; early stopping on the held-out distillation "
        "loss may end sooner (auto: 3 below 2,000 conversations, 2 below 20,000, else 1).",
    )
    lr: Annotated[float, Field(gt=0, le=1)] | Auto = Field(
        default="auto", description="AdamW peak learning rate (auto: 1e-4)."
    )
    batch_size: Annotated[int, Field(ge=1, le=512)] | Auto = Field(
        default="auto", description="Conversations per step (auto: 8, 16 on a GPU)."
    )
    max_length: Annotated[int, Field(ge=16, le=32768)] | Auto = Field(
        default="auto",
        description="Tokens per conversation (auto: the 99th percentile of the data, a "
        "multiple of 64, within the model's context).",
    )
    val_fraction: float = Field(
        default=0.1, gt=0, lt=0.5, description="Share of conversations held out to evaluate."
    )
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="Seed of the split.")
    patience: int = Field(
        default=2, ge=1, le=100, description="Epochs without a lower held-out loss to stop."
    )
    samples: int = Field(
        default=16,
        ge=1,
        le=200,
        description="Held-out prompts both answer greedily: answer agreement and tokens/s.",
    )
    answer_tokens: int = Field(
        default=128,
        ge=1,
        le=2048,
        description="Most tokens of each greedy answer: the held-out ones (agreement, "
        "tokens/s) and, with teacher_answers, the teacher's training answers.",
    )
    model_name: Name | None = Field(
        default=None,
        description="Registry name stem (default: the teacher's name); each student is "
        "registered as <model_name>-<layers>l.",
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


RECIPE = RecipeSpec(
    name="llm-distill",
    version="1",
    description="Distil a chat model (hub or registered) into smaller students, one per "
    "size; register each beside its teacher's quality and speed.",
    params=Params,
    entrypoint="modelfab.recipes.llm.job:run_distill",
    needs_dataset=True,
    tasks=(CHAT,),
    registered_models=("teacher",),
    meters=("tokens_trained",),
)

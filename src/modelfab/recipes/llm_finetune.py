"""`llm-finetune`: fine-tune a chat model from the hub on a chat dataset, with LoRA (peft)
or all its weights, on the shared training loop; evaluate it before and after on a held-out
split; gate and register it.

This module is the light half the control plane imports to validate params; the training
lives in `modelfab.recipes.llm` and is imported only by the worker."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from modelfab.recipes.base import RecipeSpec
from modelfab.schemas.common import Name
from modelfab.schemas.limits import MAX_SEED
from modelfab.tasks import CHAT

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"

Auto = Literal["auto"]

AUTO_LR: dict[str, float] = {"lora": 2e-4, "full": 2e-5}
"""`lr` when "auto", by `method`: the base that OpenAI's `learning_rate_multiplier` scales."""


class Params(BaseModel):
    model_config = {"extra": "forbid"}

    base_model: Name = Field(
        default=DEFAULT_BASE_MODEL,
        description="Chat model id from `modelfab hub list` (catalog or imported).",
    )
    method: Literal["lora", "full"] = Field(
        default="lora",
        description="lora: train low-rank adapters on every linear layer (small artifact, "
        "the base model frozen); full: train every weight.",
    )
    epochs: Annotated[int, Field(ge=1, le=100)] | Auto = Field(
        default="auto",
        description="Upper bound on epochs; early stopping on the held-out loss may end "
        "sooner (auto: 3 below 2,000 conversations, 2 below 20,000, else 1).",
    )
    lr: Annotated[float, Field(gt=0, le=1)] | Auto = Field(
        default="auto",
        description="AdamW peak learning rate (auto: 2e-4 LoRA, 2e-5 full: `AUTO_LR`).",
    )
    batch_size: Annotated[int, Field(ge=1, le=512)] | Auto = Field(
        default="auto", description="Conversations per step (auto: 8, 16 on a GPU)."
    )
    lora_rank: Annotated[int, Field(ge=1, le=256)] | Auto = Field(
        default="auto", description="LoRA rank (auto: 16, 32 from 20,000 conversations)."
    )
    max_length: Annotated[int, Field(ge=16, le=32768)] | Auto = Field(
        default="auto",
        description="Tokens per conversation; longer ones keep their whole turns that fit "
        "(auto: the 99th percentile of the data, a multiple of 64, within the model's context).",
    )
    val_fraction: float = Field(
        default=0.1, gt=0, lt=0.5, description="Share of conversations held out to evaluate."
    )
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="Seed of the split and init.")
    patience: int = Field(
        default=2, ge=1, le=100, description="Epochs without a lower held-out loss to stop."
    )
    gradient_checkpointing: bool | Auto = Field(
        default="auto",
        description="Recompute activations in the backward pass to save memory (auto: on a "
        "GPU when the batch would take more than half its memory).",
    )
    samples: int = Field(
        default=3, ge=0, le=20, description="Held-out prompts answered before and after."
    )
    min_eval_loss_drop: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="Acceptance gate: fail the job, registering nothing, unless the held-out "
        "loss fell by at least this share of its value before fine-tuning (0.2: 20%).",
    )
    model_name: Name | None = Field(
        default=None, description="Registry name (default: the dataset's name)."
    )


RECIPE = RecipeSpec(
    name="llm-finetune",
    version="1",
    description="Fine-tune a chat model (LoRA or full) on a chat dataset; evaluate, gate, "
    "register.",
    params=Params,
    entrypoint="modelfab.recipes.llm.job:run_finetune",
    needs_dataset=True,
    tasks=(CHAT,),
    hub_models=("base_model",),
    meters=("tokens_trained",),
)

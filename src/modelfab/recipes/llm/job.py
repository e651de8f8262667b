"""The worker side of the `llm-finetune` recipe: train, gate, upload, register."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelfab.errors import InvalidRequest, ModelfabError
from modelfab.hub.chat import chat_model_folder
from modelfab.recipes.base import HasHub, RecipeContext
from modelfab.recipes.llm.data import read_conversations
from modelfab.recipes.llm.finetune import MODEL_JSON, FinetuneOutput, finetune
from modelfab.recipes.llm_finetune import CHAT, Params

GATE_FIELDS = {"min_eval_loss_drop", "model_name", "base_model"}
FORMATS = {".json": "json", ".jinja": "text", ".safetensors": "safetensors"}
"""Artifact format by file suffix; anything else is stored as "text"."""


def base_model_folder(ctx: RecipeContext, model_id: str) -> Path:
    """The chat-model folder of hub model `model_id` on this node, converted on first use."""
    hub_dir = ctx.hub_dir if isinstance(ctx, HasHub) else None
    if hub_dir is None:
        raise ModelfabError(
            "this worker has no hub folder to load chat models from",
            code="base_model_unavailable",
            param="params.base_model",
        )
    return chat_model_folder(hub_dir, model_id)


def run_finetune(ctx: RecipeContext, params: Params) -> dict[str, Any]:
    """Fine-tune and register a chat model. Raises ModelfabError `acceptance_failed` when
    the held-out loss fell by less than `min_eval_loss_drop` (nothing is registered)."""
    if ctx.dataset_path is None or ctx.dataset is None:
        raise InvalidRequest("llm-finetune needs --dataset", param="dataset")
    folder = base_model_folder(ctx, params.base_model)
    base = {"hub": params.base_model}
    out = finetune(
        read_conversations(ctx.dataset_path),
        folder,
        params.model_dump(exclude=GATE_FIELDS),
        workdir=ctx.workdir,
        reporter=ctx,
        base_model=base,
    )
    if ctx.cancelled():
        return {"cancelled": True}
    _acceptance_gate(out, params.min_eval_loss_drop)
    files = sorted(p for p in out.folder.iterdir() if p.is_file())
    ctx.event("Uploading artifacts", data={"files": [p.name for p in files]})
    artifacts = [
        ctx.upload_artifact(p, name=p.name, format=FORMATS.get(p.suffix, "text")) for p in files
    ]
    ctx.register_model(
        {
            "name": params.model_name or ctx.dataset["name"],
            "task": CHAT,
            "artifacts": artifacts,
            "metrics": out.metrics,
            "base_model": params.base_model,
            "extra": {"samples": out.samples, "config": vars(out.config), "contract": MODEL_JSON},
        }
    )
    return _summary(out)


def _acceptance_gate(out: FinetuneOutput, min_drop: float | None) -> None:
    drop = float(out.metrics["eval_loss_drop"])
    if min_drop is not None and not drop >= min_drop:
        raise ModelfabError(
            f"the held-out loss fell by {drop:.1%} (from {out.metrics['eval_loss_before']:.4f} "
            f"to {out.metrics['eval_loss']:.4f}), less than min_eval_loss_drop {min_drop:.1%}; "
            "the model was not registered. Add or clean conversations, raise --param epochs "
            "or --param lr, or try --param method=full",
            code="acceptance_failed",
            param="params.min_eval_loss_drop",
        )


def _summary(out: FinetuneOutput) -> dict[str, Any]:
    keys = ("eval_loss", "eval_loss_before", "token_accuracy", "token_accuracy_before",
            "eval_loss_drop", "tokens_trained", "tokens_per_s")  # fmt: skip
    return {
        **{k: out.metrics[k] for k in keys},
        "epochs_run": out.fit.epochs_run,
        "epochs_done": out.fit.epochs_done,
        "steps_run": out.fit.steps_run,
        "best_epoch": out.fit.best_epoch,
        "resumed_from_epoch": out.fit.resumed_from_epoch,
        "method": out.config.method,
        "max_length": out.config.max_length,
    }

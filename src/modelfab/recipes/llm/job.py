"""The worker side of the language-model recipes: `llm-finetune` (train, gate, upload,
register) and `llm-distill` (load the teacher, distil, upload and register each student)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from modelfab.artifacts import fetch_folder
from modelfab.errors import InvalidRequest, ModelfabError
from modelfab.hub.chat import chat_model_folder
from modelfab.llm.models import load_chat_model
from modelfab.llm.tokenizer import ChatTokenizer
from modelfab.recipes import llm_distill
from modelfab.recipes.base import FetchesModelArtifacts, HasHub, RecipeContext
from modelfab.recipes.llm.data import read_conversations
from modelfab.recipes.llm.distill import DistillOutput, distill
from modelfab.recipes.llm.finetune import MODEL_JSON, FinetuneOutput, finetune
from modelfab.recipes.llm.registered import load_registered
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
    ctx.register_model(
        {
            "name": params.model_name or ctx.dataset["name"],
            "task": CHAT,
            "artifacts": upload_folder(ctx, out.folder),
            "metrics": out.metrics,
            "base_model": params.base_model,
            "extra": {"samples": out.samples, "config": vars(out.config), "contract": MODEL_JSON},
        }
    )
    return _summary(out)


def upload_folder(ctx: RecipeContext, folder: Path) -> list[dict[str, Any]]:
    """Upload every file of `folder`; the records for a model's `artifacts`. Blocks."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    ctx.event("Uploading artifacts", data={"files": [p.name for p in files]})
    return [
        ctx.upload_artifact(p, name=p.name, format=FORMATS.get(p.suffix, "text")) for p in files
    ]


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


# --------------------------------------------------------------------------- llm-distill


def load_teacher(
    ctx: RecipeContext, params: llm_distill.Params, device: torch.device
) -> tuple[PreTrainedModel, ChatTokenizer, dict[str, Any]]:
    """The teacher's model, tokenizer and lineage reference: the registered version the
    control plane pinned (`teacher_version_id`), or the hub model `teacher` names."""
    if params.teacher_version_id is None:
        folder = base_model_folder(ctx, params.teacher)
        model, tokenizer = load_chat_model(folder, device=device)
        return model, tokenizer, {"hub": params.teacher}
    if not isinstance(ctx, FetchesModelArtifacts):
        raise ModelfabError(
            "this worker cannot fetch registered models; use a hub teacher",
            code="teacher_unavailable",
            param="params.teacher",
        )
    files = ctx.model_artifacts(params.teacher_version_id)
    folder = fetch_folder(files, ctx.workdir / "teacher")
    hub_dir = ctx.hub_dir if isinstance(ctx, HasHub) else None
    model, tokenizer, _ = load_registered(
        folder, hub_dir=hub_dir, device=device, param="params.teacher"
    )
    return model, tokenizer, {"model": params.teacher, "version_id": params.teacher_version_id}


def _teacher_name(params: llm_distill.Params) -> str:
    """The students' registry name stem: model_name, else the teacher's name."""
    if params.model_name:
        return params.model_name
    stem = params.teacher.split(":")[0].split("@")[0]
    return stem[: 63 - llm_distill.STUDENT_SUFFIX_CHARS].rstrip("._-") or "student"


def run_distill(ctx: RecipeContext, params: llm_distill.Params) -> dict[str, Any]:
    """Distil the teacher into each student size and register every student as its own
    version (name `<model_name>-<layers>l`), with lineage to the teacher."""
    if ctx.dataset_path is None or ctx.dataset is None:
        raise InvalidRequest("llm-distill needs --dataset", param="dataset")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher, tokenizer, teacher_ref = load_teacher(ctx, params, device)
    out = distill(
        read_conversations(ctx.dataset_path),
        teacher,
        tokenizer,
        params.model_dump(exclude={"teacher", "teacher_version_id", "model_name"}),
        workdir=ctx.workdir,
        reporter=ctx,
        teacher_ref=teacher_ref,
    )
    if ctx.cancelled():
        return {"cancelled": True}
    stem = _teacher_name(params)
    for student in out.students:
        ctx.register_model(
            {
                "name": llm_distill.student_name(stem, student.layers),
                "task": CHAT,
                "artifacts": upload_folder(ctx, student.folder),
                "metrics": student.metrics,
                "base_model": teacher_ref.get("hub"),
                "parent_version_id": params.teacher_version_id,
                "extra": {
                    "samples": student.samples,
                    "config": vars(out.config),
                    "contract": MODEL_JSON,
                    "distilled_from": teacher_ref,
                    "kept_layers": student.kept_layers,
                },
            }
        )
    return _distill_summary(out)


def _distill_summary(out: DistillOutput) -> dict[str, Any]:
    keys = ("layers", "eval_loss", "token_accuracy", "eval_kd", "eval_kd_before",
            "answer_agreement", "params", "generate_tokens_per_s", "eval_loss_ratio",
            "params_ratio", "speedup", "tokens_trained", "epochs_done", "best_epoch")  # fmt: skip
    students = [{k: s.metrics[k] for k in keys} for s in out.students]
    return {
        "teacher": out.teacher,
        "students": students,
        "tokens_trained": sum(s["tokens_trained"] for s in students),
        "loss": out.config.loss,
        "temperature": out.config.temperature,
        "max_length": out.config.max_length,
    }

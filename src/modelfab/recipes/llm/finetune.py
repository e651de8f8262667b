"""Fine-tune a chat model on conversations: LoRA (peft) or full, on the shared `fit` loop.

`finetune` holds the whole run and no platform: a base-model folder and conversations in, a
folder of what to register out (`FinetuneOutput`). The loss counts assistant tokens only;
held-out loss and token accuracy are measured before training and after each epoch; the
best epoch's weights are kept; a few held-out prompts are answered before and after.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from modelfab.llm.models import greedy_reply, load_chat_model, save_chat_model
from modelfab.llm.tokenizer import ChatTokenizer
from modelfab.recipes.base import Reporter
from modelfab.recipes.llm.data import (
    Batches,
    Conversation,
    auto_batch_size,
    auto_epochs,
    auto_max_length,
    encode_split,
    last_answer,
    split,
)
from modelfab.recipes.llm_finetune import AUTO_LR
from modelfab.recipes.training.loop import (
    FitResult,
    StepOptions,
    cosine_with_warmup,
    default_warmup_steps,
    fit,
    make_optimizer,
)

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "llm-checkpoint.pt"
MODEL_JSON = "model.json"
CONTRACT_FORMAT = 1
SAMPLE_TOKENS = 64


@dataclass(frozen=True)
class FinetuneConfig:
    """Every "auto" of the params resolved."""

    method: str
    epochs: int
    lr: float
    batch_size: int
    lora_rank: int
    max_length: int
    val_fraction: float
    seed: int
    patience: int
    gradient_checkpointing: bool
    samples: int
    device: str


@dataclass
class FinetuneOutput:
    folder: Path
    """What to register: the adapter (LoRA) or the weights (full), the tokenizer with its
    chat template, and `model.json`."""
    config: FinetuneConfig
    metrics: dict[str, Any]
    samples: list[dict[str, str]]
    fit: FitResult


def resolve(params: dict[str, Any], n_conversations: int, device: torch.device) -> dict[str, Any]:
    """The params with "auto" replaced, except max_length (it needs the tokenizer)."""
    out = dict(params)
    if out["epochs"] == "auto":
        out["epochs"] = auto_epochs(n_conversations)
    if out["lr"] == "auto":
        out["lr"] = AUTO_LR[out["method"]]
    if out["batch_size"] == "auto":
        out["batch_size"] = auto_batch_size(device)
    if out["lora_rank"] == "auto":
        out["lora_rank"] = 32 if n_conversations >= 20000 else 16
    return out


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def lm_step(model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over the batch's assistant tokens; counts every real token."""
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    loss = model(**batch).loss
    return loss, int(batch["attention_mask"].sum())


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Iterable[Any], device: torch.device) -> dict[str, float]:
    """Held-out loss (mean over assistant tokens) and token accuracy (the greedy next token
    is the answer's), over every batch of `loader`."""
    total_loss, correct, counted = 0.0, 0, 0
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits, labels = logits[:, :-1].float(), batch["labels"][:, 1:]
        mask = labels != -100
        losses = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none"
        ).reshape(labels.shape)
        total_loss += float(losses[mask].sum())
        correct += int((logits.argmax(-1) == labels)[mask].sum())
        counted += int(mask.sum())
    if counted == 0:
        return {"val_loss": math.nan, "val_token_accuracy": math.nan}
    return {
        "val_loss": round(total_loss / counted, 6),
        "val_token_accuracy": round(correct / counted, 6),
    }


def _prompt(conversation: Conversation) -> tuple[Conversation, str]:
    """The messages before the last assistant turn, and that turn's content."""
    last = last_answer(conversation)
    return conversation[:last], str(conversation[last]["content"])


def _answers(
    model: nn.Module, tokenizer: ChatTokenizer, prompts: Sequence[Conversation]
) -> list[str]:
    model.eval()
    return [
        greedy_reply(model, tokenizer, p, max_new_tokens=SAMPLE_TOKENS)  # type: ignore[arg-type]
        for p in prompts
    ]


def _with_lora(model: PreTrainedModel, rank: int, seed: int) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.05,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def _wants_checkpointing(setting: bool | str, model: PreTrainedModel, cfg: dict[str, Any]) -> bool:
    """auto: on a GPU, when the activations of one batch (a rough 34 bytes x hidden x layers
    per token) would take more than half of its free memory."""
    if setting != "auto":
        return bool(setting)
    if not torch.cuda.is_available():
        return False
    config = model.config
    per_token = 34 * config.hidden_size * config.num_hidden_layers
    batch_bytes = per_token * cfg["batch_size"] * cfg["max_length"]
    free, _ = torch.cuda.mem_get_info()
    return batch_bytes > free / 2


def finetune(
    conversations: Sequence[Conversation],
    base_folder: Path,
    params: dict[str, Any],
    *,
    workdir: Path,
    reporter: Reporter,
    base_model: dict[str, Any],
) -> FinetuneOutput:
    """Fine-tune the chat model of `base_folder` on `conversations` as `params` (the
    recipe's, autos unresolved) say; `base_model` is its lineage for `model.json`. Resumes
    from the checkpoint in `workdir` after a crash. Blocks for the run."""
    device = _device()
    base, tokenizer = load_chat_model(base_folder, device=device)
    model: nn.Module = base
    train_convs, val_convs = split(conversations, params["val_fraction"], params["seed"])
    raw = resolve(params, len(conversations), device)
    context = int(getattr(base.config, "max_position_embeddings", 2048))
    if raw["max_length"] == "auto":
        raw["max_length"] = auto_max_length(tokenizer, train_convs, context)
    raw["max_length"] = min(int(raw["max_length"]), context)
    raw["gradient_checkpointing"] = _wants_checkpointing(raw["gradient_checkpointing"], base, raw)
    cfg = FinetuneConfig(
        **{k: raw[k] for k in FinetuneConfig.__dataclass_fields__ if k != "device"},
        device=device.type,
    )
    train, val = encode_split(tokenizer, train_convs, val_convs, cfg.max_length)
    reporter.event(
        f"{len(train.items)} conversations to train on ({train.tokens} tokens), "
        f"{len(val.items)} held out; {train.truncated + val.truncated} truncated to "
        f"{cfg.max_length} tokens, {train.skipped + val.skipped} without an answer skipped",
        data={"config": vars(cfg)},
    )
    train_loader = Batches(train.items, cfg.batch_size, tokenizer.pad_id, shuffle=True)
    val_loader = Batches(
        val.items or train.items[:1], cfg.batch_size, tokenizer.pad_id, shuffle=False
    )
    prompts = [_prompt(c) for c in val_convs[: cfg.samples]]

    before = evaluate(model, val_loader, device)
    answers_before = _answers(model, tokenizer, [p for p, _ in prompts])
    reporter.metrics(step=0, **{f"{k}_before": v for k, v in before.items()})

    if cfg.method == "lora":
        model = _with_lora(base, cfg.lora_rank, cfg.seed)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()  # type: ignore[operator]
        if cfg.method == "lora":
            model.enable_input_require_grads()  # type: ignore[operator]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    reporter.event(
        f"Training {trainable:,} of {total:,} parameters ({cfg.method}) for up to "
        f"{cfg.epochs} epochs of {len(train_loader)} steps on {device.type}",
        data={"trainable_params": trainable, "total_params": total},
    )
    optimizer = make_optimizer(model, cfg.lr, weight_decay=0.0 if cfg.method == "lora" else 0.01)
    steps = cfg.epochs * len(train_loader)
    scheduler = cosine_with_warmup(optimizer, steps, default_warmup_steps(steps))
    started = time.monotonic()
    result = fit(
        model,
        train_loader,
        val_loader,
        epochs=cfg.epochs,
        optimizer=optimizer,
        scheduler=scheduler,
        device=device,
        amp=True,  # bf16 on a GPU; the CPU stays fp32
        channels_last=False,
        patience=cfg.patience,
        checkpoint_path=workdir / CHECKPOINT_NAME,
        reporter=reporter,
        eval_fn=evaluate,
        monitor="val_loss",
        options=StepOptions(
            step_fn=lm_step,
            unit="tokens",
            higher_is_better=False,
            trainable_only=cfg.method == "lora",
            max_grad_norm=1.0,
        ),
    )
    train_s = time.monotonic() - started
    after = evaluate(model, val_loader, device) if result.best_epoch else before
    answers_after = _answers(model, tokenizer, [p for p, _ in prompts])
    metrics = _metrics(before, after, result, train, val, train_s)
    samples = [
        {"prompt": p[-1]["content"] if p else "", "expected": want, "before": b, "after": a}
        for (p, want), b, a in zip(prompts, answers_before, answers_after, strict=True)
    ]
    out = workdir / "model"
    _save(model, tokenizer, cfg, out, base_model, metrics)
    return FinetuneOutput(folder=out, config=cfg, metrics=metrics, samples=samples, fit=result)


def _metrics(
    before: dict[str, float],
    after: dict[str, float],
    result: FitResult,
    train: Any,
    val: Any,
    train_s: float,
) -> dict[str, Any]:
    loss_before, loss_after = before["val_loss"], after["val_loss"]
    drop = (loss_before - loss_after) / loss_before if loss_before > 0 else 0.0
    return {
        "eval_loss": loss_after,
        "token_accuracy": after["val_token_accuracy"],
        "eval_loss_before": loss_before,
        "token_accuracy_before": before["val_token_accuracy"],
        "eval_loss_drop": round(drop, 6),
        "train_conversations": len(train.items),
        "eval_conversations": len(val.items),
        "tokens_trained": result.items_run,
        "tokens_per_s": result.train_items_per_s,
        "epochs_done": result.epochs_done,
        "best_epoch": result.best_epoch,
        "train_s": round(train_s, 2),
    }


def _save(
    model: nn.Module,
    tokenizer: ChatTokenizer,
    cfg: FinetuneConfig,
    out: Path,
    base_model: dict[str, Any],
    metrics: dict[str, Any],
) -> None:
    """The adapter (LoRA: peft's adapter_config.json and adapter_model.safetensors) or the
    full weights, the tokenizer, and `model.json`: what a server needs to know to load it."""
    out.mkdir(parents=True, exist_ok=True)
    if cfg.method == "lora":
        model.save_pretrained(out)  # type: ignore[operator]
        tokenizer.save(out)
    else:
        save_chat_model(model, tokenizer, out)  # type: ignore[arg-type]
    contract = {
        "format": CONTRACT_FORMAT,
        "task": "chat",
        "kind": cfg.method,
        "base_model": base_model,
        "max_length": cfg.max_length,
        "dtype": "float32",
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
        "metrics": {k: metrics[k] for k in ("eval_loss", "token_accuracy")},
        "files": [*sorted(p.name for p in out.iterdir() if p.is_file()), MODEL_JSON],
    }
    (out / MODEL_JSON).write_text(json.dumps(contract, indent=2) + "\n")

"""Supervised training of an image model with the shared loop: AdamW, a cosine schedule
with linear warmup, and a checkpoint that a retried attempt resumes from.

Recipe-neutral: the classification recipe calls it, and any vision recipe that trains a
network on (image, target) batches can."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelfab.recipes.training.loop import (
    BatchLoader,
    EvalFn,
    FitResult,
    LossFn,
    Reporter,
    cosine_with_warmup,
    default_warmup_steps,
    fit,
    make_optimizer,
)
from modelfab.recipes.vision.evaluate import loss_and_accuracy

WEIGHT_DECAY = 0.05


def train_supervised(
    model: nn.Module,
    train_loader: BatchLoader,
    val_loader: Any,
    *,
    epochs: int,
    lr: float,
    device: str,
    amp: bool,
    channels_last: bool,
    patience: int,
    checkpoint_path: Path,
    reporter: Reporter,
    eval_fn: EvalFn = loss_and_accuracy,
    loss_fn: LossFn = nn.functional.cross_entropy,
) -> FitResult:
    """Fit `model` with AdamW (peak `lr`, weight decay WEIGHT_DECAY off biases and norms)
    and a cosine schedule over epochs x len(train_loader) steps after a linear warmup of
    `default_warmup_steps`. Blocks; see `modelfab.recipes.training.loop.fit` for
    checkpoints, resume, early stopping (on "val_accuracy") and cancel."""
    total_steps = epochs * max(1, len(train_loader))
    optimizer = make_optimizer(model, lr, WEIGHT_DECAY)
    scheduler = cosine_with_warmup(optimizer, total_steps, default_warmup_steps(total_steps))
    return fit(
        model,
        train_loader,
        val_loader,
        epochs=epochs,
        optimizer=optimizer,
        scheduler=scheduler,
        device=torch.device(device),
        amp=amp,
        channels_last=channels_last,
        patience=patience,
        checkpoint_path=checkpoint_path,
        reporter=reporter,
        eval_fn=eval_fn,
        loss_fn=loss_fn,
    )

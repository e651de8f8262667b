"""`fit` beyond (images, labels): a step function over dict batches counting tokens, a
monitor where lower is better, checkpoints of the trainable parameters only, clipping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelfab.recipes.local import LocalContext
from modelfab.recipes.training.loop import (
    FitResult,
    StepOptions,
    cosine_with_warmup,
    fit,
    make_optimizer,
)


class Frozen(nn.Module):
    """A frozen 'base' layer and a small trainable 'adapter' on top of it."""

    def __init__(self) -> None:
        super().__init__()
        self.base = nn.Linear(4, 4)
        self.base.requires_grad_(False)
        self.adapter = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base(x)).squeeze(-1)


def batches(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(8, 4, generator=g)
        out.append({"x": x, "y": x.sum(dim=1), "mask": torch.ones(8, dtype=torch.long)})
    return out


def step(model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, int]:
    pred = model(batch["x"].to(device))
    return nn.functional.mse_loss(pred, batch["y"].to(device)), int(batch["mask"].sum())


def evaluate(model: nn.Module, loader: Any, device: torch.device) -> dict[str, float]:
    losses = [float(step(model, b, device)[0]) for b in loader]
    return {"val_loss": sum(losses) / len(losses)}


def run(tmp_path: Path, ctx: LocalContext, epochs: int, **options: Any) -> tuple[Frozen, FitResult]:
    torch.manual_seed(0)
    model = Frozen()
    train, val = batches(6, 0), batches(2, 1)
    optimizer = make_optimizer(model, 0.05)
    result = fit(
        model, train, val, epochs=epochs, optimizer=optimizer,
        scheduler=cosine_with_warmup(optimizer, epochs * 6, 1), device="cpu", amp=False,
        channels_last=False, patience=0, checkpoint_path=tmp_path / "ckpt.pt", reporter=ctx,
        eval_fn=evaluate, monitor="val_loss",
        options=StepOptions(step_fn=step, unit="tokens", higher_is_better=False, **options),
    )  # fmt: skip
    return model, result


def test_a_step_function_trains_counts_tokens_and_keeps_the_lowest_loss(tmp_path: Path) -> None:
    ctx = LocalContext(tmp_path)
    _, result = run(tmp_path, ctx, epochs=4)
    losses = [row["val_loss"] for row in result.history]
    assert losses[-1] < losses[0]
    assert result.best_score == min(losses) and result.best_epoch == losses.index(min(losses)) + 1
    assert result.unit == "tokens" and result.train_items_per_s > 0
    steps = [e["data"] for e in ctx.events_of("metrics") if "tokens_per_s" in e["data"]]
    assert steps and "images_per_s" not in steps[0]


def test_trainable_only_checkpoints_hold_the_adapter_and_resume(tmp_path: Path) -> None:
    _, first = run(tmp_path, LocalContext(tmp_path), epochs=2, trainable_only=True)
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)["model"]
    assert set(saved) == {"adapter.weight", "adapter.bias"}
    model, resumed = run(tmp_path, LocalContext(tmp_path), epochs=3, trainable_only=True)
    assert resumed.resumed_from_epoch == 2 and resumed.epochs_run == 1
    assert resumed.history[:2] == first.history
    torch.manual_seed(0)
    assert torch.equal(model.base.weight, Frozen().base.weight)  # the base never moved


def test_gradients_are_clipped_to_the_norm_asked(tmp_path: Path) -> None:
    norms: list[float] = []

    def clipped_step(
        model: nn.Module, batch: Any, device: torch.device
    ) -> tuple[torch.Tensor, int]:
        # Scale the loss so raw gradients are huge; record the norm the optimizer sees.
        for p in model.parameters():
            if p.grad is not None:
                norms.append(float(torch.linalg.vector_norm(p.grad)))
        loss, n = step(model, batch, device)
        return loss * 1e6, n

    torch.manual_seed(0)
    model = Frozen()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    fit(
        model, batches(3, 0), batches(1, 1), epochs=1, optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0), device="cpu",
        amp=False, channels_last=False, patience=0, checkpoint_path=tmp_path / "c.pt",
        reporter=LocalContext(tmp_path), eval_fn=evaluate, monitor="val_loss",
        options=StepOptions(step_fn=clipped_step, unit="tokens", higher_is_better=False,
                            max_grad_norm=1.0),
    )  # fmt: skip
    assert norms and max(norms) <= 1.0 + 1e-4

"""The shared `fit` loop (modelfab.recipes.training.loop) on a tiny MLP over Gaussian blobs.

It lives here, next to the vision tests, because the loop's first user is the vision recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from modelfab.recipes.local import LocalContext
from modelfab.recipes.training.loop import (
    FitResult,
    cosine_with_warmup,
    fit,
    make_optimizer,
)
from modelfab.recipes.vision.evaluate import loss_and_accuracy


class Crash(RuntimeError):
    """What the test reporter raises to simulate a dying worker."""


def recording(
    workdir: Path, *, crash_after_epoch: int | None = None, cancel_after_calls: int | None = None
) -> LocalContext:
    """A LocalContext that raises Crash from the first metrics call after epoch
    `crash_after_epoch`'s checkpoint event, and turns `cancelled()` True after
    `cancel_after_calls` calls."""
    ctx = LocalContext(workdir, cancel_after=cancel_after_calls)

    def crash(item: dict[str, Any]) -> None:
        done = [e["data"]["epoch"] for e in ctx.events_of("checkpoint")]
        if item["type"] == "metrics" and crash_after_epoch in done:
            raise Crash(f"simulated crash after epoch {crash_after_epoch}")

    if crash_after_epoch is not None:
        ctx.on_event = crash
    return ctx


def blobs(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    x = torch.randn(n, 4, generator=g) + labels[:, None] * 3.0
    return TensorDataset(x, labels)


def run_fit(
    checkpoint: Path,
    reporter: LocalContext,
    *,
    epochs: int = 3,
    patience: int = 5,
    eval_fn: Any = loss_and_accuracy,
    n_train: int = 64,
) -> tuple[nn.Module, FitResult]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    train = DataLoader(blobs(n_train, 0), batch_size=8, shuffle=True)
    val = DataLoader(blobs(32, 1), batch_size=16)
    optimizer = make_optimizer(model, 0.05)
    scheduler = cosine_with_warmup(optimizer, epochs * len(train), 2)
    result = fit(
        model, train, val, epochs=epochs, optimizer=optimizer, scheduler=scheduler,
        device="cpu", amp=True, channels_last=True, patience=patience,
        checkpoint_path=checkpoint, reporter=reporter, eval_fn=eval_fn,
    )  # fmt: skip
    return model, result


def test_fit_learns_reports_and_checkpoints(tmp_path: Path) -> None:
    reporter = recording(tmp_path)
    _, result = run_fit(tmp_path / "ckpt.pt", reporter)
    assert result.epochs_run == result.epochs_done == 3 and result.steps_run == 24
    assert result.resumed_from_epoch is None and not result.cancelled
    assert result.history[-1]["val_accuracy"] >= 0.9
    assert result.best_score == max(row["val_accuracy"] for row in result.history)
    assert result.train_items_per_s > 0
    steps = [m for m in reporter.metric_rows if "eta_s" in m]
    assert len(steps) == 24  # 8 steps an epoch: one event each
    assert {"train_loss", "images_per_s", "lr", "epoch", "eta_s"} <= set(steps[0])
    assert steps[-1]["eta_s"] == 0
    checkpoints = reporter.events_of("checkpoint")
    assert [c["data"]["epoch"] for c in checkpoints] == [1, 2, 3]
    assert (tmp_path / "ckpt.pt").is_file() and not list(tmp_path.glob(".*tmp"))


def test_step_metrics_are_capped_per_epoch(tmp_path: Path) -> None:
    reporter = recording(tmp_path)
    run_fit(tmp_path / "ckpt.pt", reporter, epochs=1, n_train=8 * 51)
    steps = [m for m in reporter.metric_rows if "eta_s" in m]
    assert len(steps) == 25  # 51 steps: every second one


def test_resume_continues_exactly_where_the_crash_left(tmp_path: Path) -> None:
    full_model, full = run_fit(tmp_path / "full.pt", recording(tmp_path))
    with pytest.raises(Crash):
        run_fit(tmp_path / "ckpt.pt", recording(tmp_path, crash_after_epoch=1))
    reporter = recording(tmp_path)
    model, resumed = run_fit(tmp_path / "ckpt.pt", reporter)
    assert resumed.resumed_from_epoch == 1
    assert resumed.epochs_run == 2 and resumed.epochs_done == 3
    assert resumed.steps_run == 16 < full.steps_run
    assert reporter.events[0]["message"] == "Resumed from checkpoint at epoch 1"
    assert len(resumed.history) == 3
    # RNG, optimizer and schedule restored: the same weights as the uninterrupted run.
    for a, b in zip(full_model.state_dict().values(), model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_early_stopping_restores_the_best_epoch(tmp_path: Path) -> None:
    scores = iter([0.5, 0.9, 0.7, 0.8, 0.6, 0.99])
    snapshots: list[torch.Tensor] = []

    def eval_fn(model: nn.Module, loader: Any, device: torch.device) -> dict[str, float]:
        snapshots.append(model[0].weight.detach().clone())  # type: ignore[index]
        return {"val_accuracy": next(scores)}

    reporter = recording(tmp_path)
    model, result = run_fit(tmp_path / "ckpt.pt", reporter, epochs=6, patience=2, eval_fn=eval_fn)
    assert result.epochs_run == 4 and result.stopped_early and result.best_epoch == 2
    assert torch.equal(model[0].weight, snapshots[1])  # type: ignore[index]
    assert any("Early stopping" in e["message"] for e in reporter.events)
    # A retry after an early stop trains no further.
    _, again = run_fit(tmp_path / "ckpt.pt", recording(tmp_path), epochs=6, patience=2)
    assert again.epochs_run == 0 and again.resumed_from_epoch == 4 and again.best_epoch == 2


def test_cancel_stops_mid_epoch(tmp_path: Path) -> None:
    reporter = recording(tmp_path, cancel_after_calls=10)
    _, result = run_fit(tmp_path / "ckpt.pt", reporter, epochs=3)
    assert result.cancelled and result.epochs_done == 1 and result.steps_run == 10
    assert reporter.events[-1]["level"] == "warning"


def test_unreadable_checkpoint_starts_over(tmp_path: Path) -> None:
    (tmp_path / "ckpt.pt").write_bytes(b"not a checkpoint")
    reporter = recording(tmp_path)
    _, result = run_fit(tmp_path / "ckpt.pt", reporter, epochs=1)
    assert result.resumed_from_epoch is None and result.epochs_run == 1
    assert reporter.events[0]["level"] == "warning"

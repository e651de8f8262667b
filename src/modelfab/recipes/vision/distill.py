"""Distil a registered image classifier into a hub image model (worker side; imports torch).

The teacher is run as it is served: its registered model.onnx under ONNX Runtime with the
replica's own preprocessing (`modelfab.serving.classifier.LoadedModel`, sized and
normalised by its labels.json), so any registered classifier teaches, whatever its arch.
Its logits are computed once per image and cached (in the workdir, so a retried attempt
reuses them), which is why the student trains without augmentation: a cached target is the
teacher's answer for the image's eval view, and pairing it with a random crop that lost the
object would teach the student an answer the teacher never gave for what it sees. Running
the teacher on every augmented batch instead would cost a teacher pass per step.

The loss is Hinton's: KL(teacher || student) on both distributions softened by the
temperature T, times T² (so its gradients keep their size as T changes), mixed with
`alpha` x cross-entropy on the labels when the images have some (label -1: none).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from PIL import Image
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from modelfab.errors import ModelfabError
from modelfab.imaging import to_rgb
from modelfab.recipes.training.loop import EvalFn, Reporter, StepFn
from modelfab.recipes.vision.classification import LABELS_NAME, ONNX_NAME
from modelfab.recipes.vision.data import Item
from modelfab.serving.classifier import LoadedModel
from modelfab.serving.protocol import ModelFiles

NO_LABEL = -1
"""The label of an image without a class (an `images` dataset)."""
TEACHER_BATCH = 32
"""Images per teacher run while computing the soft labels."""
TARGETS_NAME = "teacher_logits.npz"
SPEED_BATCH = 32
"""Images per run when both models' images/s are measured."""
SPEED_WARMUP_RUNS = 2
SPEED_MIN_RUNS = 3
SPEED_BUDGET_S = 0.5
PROGRESS_EVERY_S = 5.0

DistillBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""(student images, teacher logits, labels: NO_LABEL where there are none)."""


# --------------------------------------------------------------------------- loss


def distill_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Mean over the batch of KL(softmax(teacher/T) || softmax(student/T)) x T², and, when
    some `labels` are not NO_LABEL and `alpha` > 0, (1 - alpha) of that plus `alpha` x the
    cross-entropy of the labelled rows. Without labels the soft targets alone: alpha is
    the labels' share, and there are none to share with."""
    t = temperature
    kd = F.kl_div(
        F.log_softmax(student.float() / t, dim=1),
        F.log_softmax(teacher.float() / t, dim=1),
        log_target=True,
        reduction="batchmean",
    ) * (t * t)
    labelled = labels != NO_LABEL
    if alpha <= 0 or not bool(labelled.any()):
        return kd
    ce = F.cross_entropy(student[labelled].float(), labels[labelled])
    return (1 - alpha) * kd + alpha * ce


def distill_step(temperature: float, alpha: float) -> StepFn:
    """The shared loop's step over `DistillBatch`es, counting images."""

    def step(model: torch.nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, int]:
        images, teacher, labels = (x.to(device, non_blocking=True) for x in batch)
        loss = distill_loss(model(images), teacher, labels, temperature=temperature, alpha=alpha)
        return loss, len(images)

    return step


def distill_eval(temperature: float) -> EvalFn:
    """The shared loop's eval over `DistillBatch`es: val_loss (the distillation loss alone),
    val_agreement (share of images whose top-1 class is the teacher's) and, when the
    images are labelled, val_accuracy."""

    def evaluate(
        model: torch.nn.Module, loader: Iterable[Any], device: torch.device
    ) -> dict[str, float]:
        student, teacher, labels = predict_distill(model, loader, device)
        return agreement_report(student, teacher, labels, temperature)

    return evaluate


def predict_distill(
    model: torch.nn.Module, loader: Iterable[Any], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(student logits, teacher logits, labels) over `loader`, on the CPU, float32. The
    caller sets eval mode; runs under inference mode."""
    outs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    with torch.inference_mode():
        for images, teacher, labels in loader:
            logits = model(images.to(device, non_blocking=True)).float().cpu()
            outs.append((logits, teacher.float(), labels))
    return tuple(torch.cat([o[i] for o in outs]) for i in range(3))  # type: ignore[return-value]


def agreement_report(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float
) -> dict[str, float]:
    """val_loss (distillation loss), val_agreement (top-1 equal to the teacher's) and, for
    labelled rows, val_accuracy, of `student` logits against `teacher` logits."""
    kd = distill_loss(student, teacher, labels, temperature=temperature, alpha=0.0)
    agree = (student.argmax(1) == teacher.argmax(1)).float().mean()
    report = {"val_loss": round(float(kd), 6), "val_agreement": round(float(agree), 6)}
    labelled = labels != NO_LABEL
    if bool(labelled.any()):
        right = student[labelled].argmax(1) == labels[labelled]
        report["val_accuracy"] = round(float(right.float().mean()), 6)
    return report


# --------------------------------------------------------------------------- teacher


def load_teacher(folder: Path, version_id: str) -> LoadedModel:
    """The registered classifier in `folder` (model.onnx, labels.json) as a replica loads
    it, on the CPU. Raises ModelfabError "model_invalid" (param params.teacher) for an
    unusable one."""
    try:
        labels = json.loads((folder / LABELS_NAME).read_text())
    except (OSError, ValueError) as exc:
        raise ModelfabError(
            f"the teacher has no readable {LABELS_NAME} ({type(exc).__name__}); register it "
            "again from image-classification",
            code="model_invalid",
            param="params.teacher",
        ) from exc
    files = ModelFiles(version_id=version_id, onnx_path=folder / ONNX_NAME, labels=labels)
    try:
        return LoadedModel(files, allow_spinning=True)
    except ModelfabError as exc:
        exc.param = "params.teacher"
        raise


def teacher_logits(teacher: LoadedModel, images: Sequence[Image.Image]) -> np.ndarray:
    """The teacher's float32 logits (n, classes) of RGB `images`, preprocessed as its
    replica does. Blocks."""
    batch = np.stack([teacher.preprocess(img) for img in images])
    out = teacher.session.run([teacher.output_name], {teacher.input_name: batch})[0]
    return np.asarray(out, dtype=np.float32)


def _open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return to_rgb(img)


def soft_targets(
    teacher: LoadedModel, root: Path, relpaths: Sequence[str], cache: Path, reporter: Reporter
) -> np.ndarray | None:
    """The teacher's logits (n, classes) of each image, once: read from `cache` when it
    holds these very relpaths (a retried attempt), else computed TEACHER_BATCH at a time
    (a progress event every PROGRESS_EVERY_S) and written there. Blocks. Returns None
    when cancelled."""
    if cache.is_file():
        with np.load(cache) as held:
            if held["relpaths"].tolist() == list(relpaths):
                return np.asarray(held["logits"], dtype=np.float32)
    out: list[np.ndarray] = []
    started = last = time.monotonic()
    for i in range(0, len(relpaths), TEACHER_BATCH):
        if reporter.cancelled():
            return None
        chunk = relpaths[i : i + TEACHER_BATCH]
        out.append(teacher_logits(teacher, [_open_rgb(root / rel) for rel in chunk]))
        done, now = i + len(chunk), time.monotonic()
        if now - last >= PROGRESS_EVERY_S or done == len(relpaths):
            last = now
            reporter.event(
                f"Teacher soft labels: {done}/{len(relpaths)} images",
                type="progress",
                data={"stage": "teacher", "done": done, "total": len(relpaths),
                      "per_s": round(done / max(1e-9, now - started), 2)},
            )  # fmt: skip
    logits = np.concatenate(out) if out else np.zeros((0, len(teacher.classes)), np.float32)
    np.savez(cache, logits=logits, relpaths=np.asarray(list(relpaths)))
    return logits


# --------------------------------------------------------------------------- data


class DistillDataset(Dataset[tuple[torch.Tensor, torch.Tensor, int]]):
    """(student image tensor, the teacher's cached logits, label) per item under `root`."""

    def __init__(
        self, root: Path, items: Sequence[Item], targets: np.ndarray, transform: v2.Compose
    ) -> None:
        if len(items) != len(targets):
            raise ValueError(f"{len(items)} items but {len(targets)} teacher targets")
        self.root = root
        self.items = list(items)
        self.targets = torch.from_numpy(np.asarray(targets, dtype=np.float32))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        rel, label = self.items[i]
        image: torch.Tensor = self.transform(_open_rgb(self.root / rel))
        return image, self.targets[i], label


def distill_loader(
    dataset: DistillDataset, batch_size: int, workers: int, *, train: bool
) -> DataLoader[tuple[torch.Tensor, torch.Tensor, int]]:
    """Shuffled for training (dropping a last partial batch when there is a full one, so
    batch norm never sees a batch of one), in order for evaluation."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train and len(dataset) >= batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,
    )


# --------------------------------------------------------------------------- report


def onnx_weights(path: Path) -> int:
    """Numbers stored as initializers of the ONNX graph at `path`: how both models' sizes
    are counted, so that they are counted the same way whatever their framework."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return int(sum(int(np.prod(init.dims)) for init in graph.initializer))


def images_per_s(run: Callable[[], object], batch: int) -> float:
    """Images per second of `run` (one forward pass of `batch` images): the median of
    timed runs after SPEED_WARMUP_RUNS, at least SPEED_MIN_RUNS within SPEED_BUDGET_S."""
    for _ in range(SPEED_WARMUP_RUNS):
        run()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < SPEED_MIN_RUNS or time.perf_counter() - started < SPEED_BUDGET_S:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return round(batch / max(1e-9, float(np.median(times))), 2)


@dataclass(frozen=True)
class SpeedInputs:
    """The same held-out images as each model takes them: the teacher's preprocessing and
    the student's, float32 NCHW."""

    teacher: np.ndarray
    student: np.ndarray


def speed_inputs(
    teacher: LoadedModel, student_transform: v2.Compose, root: Path, items: Sequence[Item]
) -> SpeedInputs:
    """SPEED_BATCH held-out images (repeated when fewer) in both models' preprocessing."""
    rels = [items[i % len(items)][0] for i in range(SPEED_BATCH)]
    images = [_open_rgb(root / rel) for rel in rels]
    student = torch.stack([student_transform(img) for img in images]).numpy()
    return SpeedInputs(np.stack([teacher.preprocess(img) for img in images]), student)

"""The worker side of `llm-distill` for an image-classification teacher: fetch the pinned
teacher, label the images with it once, train the hub student on the shared loop, compare
the two on the held-out split, export the student and register it as an
image-classification version (servable as image-classification's are) with lineage to its
teacher.

Labelled datasets (image-classification) give their class folders as labels, mapped onto
the teacher's classes; unlabelled ones (`images`) give none. The student's classes are
the teacher's, in the teacher's order.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from modelfab.artifacts import fetch_folder
from modelfab.errors import InvalidRequest, ModelfabError
from modelfab.hub.catalog import get_entry
from modelfab.hub.loading import HubEntryLike, create_model
from modelfab.recipes.base import FetchesModelArtifacts, RecipeContext
from modelfab.recipes.llm_distill import DEFAULT_STUDENT_MODEL, IMAGE_STUDENT_SUFFIX, Params
from modelfab.recipes.training.loop import (
    FitResult,
    StepOptions,
    cosine_with_warmup,
    default_warmup_steps,
    fit,
    make_optimizer,
)
from modelfab.recipes.vision.classification import (
    LABELS_NAME,
    ONNX_NAME,
    PARITY_SAMPLES,
    WEIGHTS_NAME,
    ClassifierConfig,
    fit_summary,
    resolve_auto,
    write_outputs,
)
from modelfab.recipes.vision.data import Item, build_transform, split_dataset, split_unlabelled
from modelfab.recipes.vision.distill import (
    NO_LABEL,
    SPEED_BATCH,
    TARGETS_NAME,
    DistillDataset,
    agreement_report,
    distill_eval,
    distill_loader,
    distill_step,
    images_per_s,
    load_teacher,
    onnx_weights,
    predict_distill,
    soft_targets,
    speed_inputs,
)
from modelfab.recipes.vision.evaluate import classification_metrics
from modelfab.recipes.vision.export import INPUT_NAME, OUTPUT_NAME, check_parity, export_onnx
from modelfab.serving.classifier import LoadedModel
from modelfab.tasks import IMAGE_CLASSIFICATION, get_task

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
OUT_DIR = "out"
TEACHER_DIR = "teacher"


@dataclass(frozen=True)
class _Split:
    root: Path
    train: list[Item]
    val: list[Item]
    labelled: bool


@dataclass(frozen=True)
class _Student:
    model: torch.nn.Module
    entry: HubEntryLike
    cfg: ClassifierConfig
    train: DistillDataset
    val: DistillDataset


def run(ctx: RecipeContext, params: Params) -> dict[str, Any]:
    """Distil the pinned image-classification teacher into `student_model` and register
    the student (name: model_name, else `<teacher name>-student`). Blocks for the run.
    Raises InvalidRequest / DatasetInvalid for unusable data, ModelfabError for an unusable
    teacher or student (export_failed, export_parity_failed, base_model_unavailable)."""
    if ctx.dataset_path is None or ctx.dataset is None:
        raise InvalidRequest("llm-distill needs --dataset", param="dataset")
    folder, teacher = _fetch_teacher(ctx, params)
    split = _split(ctx.dataset_path, str(ctx.dataset.get("task")), teacher.classes, params)
    rels = [rel for rel, _ in split.train + split.val]
    targets = soft_targets(teacher, split.root, rels, ctx.workdir / TARGETS_NAME, ctx)
    if targets is None:
        return {"cancelled": True}
    student = _student(ctx, params, teacher, split, targets)
    result = _fit(student, params, ctx)
    if result.cancelled or ctx.cancelled():
        return {"cancelled": True}
    out = ctx.workdir / OUT_DIR
    metrics = _report(student, teacher, folder, split, params, out, ctx)
    metrics["fit"] = fit_summary(result)
    _register(ctx, params, student, teacher.classes, metrics, out)
    return _summary(metrics, student, result)


def _fetch_teacher(ctx: RecipeContext, params: Params) -> tuple[Path, LoadedModel]:
    """The teacher's folder (its artifacts, sha256-checked) and its ONNX session."""
    version_id = params.teacher_version_id
    if version_id is None or not isinstance(ctx, FetchesModelArtifacts):
        raise ModelfabError(
            "an image teacher is a registered model this worker fetches; give "
            "--param teacher=NAME:VERSION on a worker that can fetch models",
            code="teacher_unavailable",
            param="params.teacher",
        )
    folder = fetch_folder(ctx.model_artifacts(version_id), ctx.workdir / TEACHER_DIR)
    teacher = load_teacher(folder, version_id)
    ctx.event(
        f"Teacher {params.teacher}: {len(teacher.classes)} classes, {teacher.image_size} px",
        data={"classes": teacher.classes, "image_size": teacher.image_size},
    )
    return folder, teacher


def _split(root: Path, task: str, classes: list[str], params: Params) -> _Split:
    """Validate the dataset again (as its task says) and hold out val_fraction of it:
    per class when labelled, labels mapped onto the teacher's class order. Raises
    InvalidRequest (param dataset) for a class the teacher does not know, or nothing to
    hold out."""
    scan = get_task(task).scan(root)
    rels = [f.relpath for f in scan.files]
    labelled = task == IMAGE_CLASSIFICATION
    if labelled:
        folders = sorted(scan.stats["classes"])
        unknown = [c for c in folders if c not in classes]
        if unknown:
            raise InvalidRequest(
                f"class folder {unknown[0]!r} is not one of the teacher's classes "
                f"({', '.join(classes)}); rename it to one of them, remove it, or distil on "
                "the images without classes (an images dataset)",
                param="dataset",
            )
        train, val = split_dataset(rels, folders, params.val_fraction, params.seed)
        index = [classes.index(c) for c in folders]
        train, val = ([(r, index[y]) for r, y in items] for items in (train, val))
    else:
        train, val = split_unlabelled(rels, params.val_fraction, params.seed)
    if not val or not train:
        raise InvalidRequest(
            "no image could be held out for evaluation; add images (two or more per class)",
            param="dataset",
        )
    return _Split(root, train, val, labelled)


def _config(params: Params, entry: HubEntryLike, teacher: LoadedModel, split: _Split) -> Any:
    """image-classification's "auto" rules for the student, at the teacher's image size
    unless image_size is given, without augmentation (see `recipes.vision.distill`)."""
    size = teacher.image_size if params.image_size == "auto" else params.image_size
    raw = {
        "base_model": entry.id,
        "epochs": params.epochs,
        "batch_size": params.batch_size,
        "lr": params.lr,
        "image_size": size,
        "val_fraction": params.val_fraction,
        "seed": params.seed,
        "patience": params.patience,
        "augment": False,
    }
    n = len(split.train) + len(split.val)
    return resolve_auto(
        raw, num_images=n, median_side=size, entry=entry,
        cuda=torch.cuda.is_available(), num_train=len(split.train),
    )  # fmt: skip


def _student(
    ctx: RecipeContext, params: Params, teacher: LoadedModel, split: _Split, targets: np.ndarray
) -> _Student:
    """The hub student with the teacher's classes, its config and both datasets."""
    entry = get_entry(params.student_model or DEFAULT_STUDENT_MODEL)
    cfg = _config(params, entry, teacher, split)
    transform = build_transform(cfg.image_size, entry.mean, entry.std, train=False, augment=False)
    n = len(split.train)
    train = DistillDataset(split.root, split.train, targets[:n], transform)
    val = DistillDataset(split.root, split.val, targets[n:], transform)
    torch.manual_seed(cfg.seed)
    try:
        model = create_model(entry, len(teacher.classes), ctx.base_weights)
    except ModelfabError as exc:
        exc.param = "params.student_model"
        raise
    ctx.event(
        f"Distilling into {entry.id} on {cfg.device}: {n} training images, "
        f"{len(split.val)} held out, {'labelled' if split.labelled else 'unlabelled'}",
        data={"config": asdict(cfg), "labelled": split.labelled},
    )
    return _Student(model, entry, cfg, train, val)


def _fit(student: _Student, params: Params, ctx: RecipeContext) -> FitResult:
    cfg = student.cfg
    train = distill_loader(student.train, cfg.batch_size, cfg.num_workers, train=True)
    val = distill_loader(student.val, cfg.batch_size, cfg.num_workers, train=False)
    total = cfg.epochs * max(1, len(train))
    optimizer = make_optimizer(student.model, cfg.lr)
    alpha = params.alpha
    return fit(
        student.model, train, val, epochs=cfg.epochs, optimizer=optimizer,
        scheduler=cosine_with_warmup(optimizer, total, default_warmup_steps(total)),
        device=cfg.device, amp=cfg.amp, channels_last=False, patience=cfg.patience,
        checkpoint_path=ctx.workdir / CHECKPOINT_NAME, reporter=ctx,
        eval_fn=distill_eval(params.temperature), monitor="val_agreement",
        options=StepOptions(step_fn=distill_step(params.temperature, alpha)),
    )  # fmt: skip


def _quality(
    student: _Student, classes: list[str], split: _Split, temperature: float
) -> dict[str, Any]:
    """Held-out agreement with the teacher and, when labelled, both models' accuracy."""
    device = torch.device(student.cfg.device)
    student.model.to(device).eval()
    loader = distill_loader(student.val, student.cfg.batch_size, 0, train=False)
    logits, teacher, labels = predict_distill(student.model, loader, device)
    report = agreement_report(logits, teacher, labels, temperature)
    metrics: dict[str, Any] = {"agreement": report["val_agreement"], "eval_kd": report["val_loss"]}
    if split.labelled and bool((labels != NO_LABEL).all()):
        metrics.update(classification_metrics(logits.numpy(), labels.numpy(), classes))
        metrics["teacher_accuracy"] = classification_metrics(
            teacher.numpy(), labels.numpy(), classes
        )["accuracy"]
    return metrics


def _speed(
    student: _Student, onnx_path: Path, teacher: LoadedModel, split: _Split
) -> dict[str, Any]:
    """Both models' images/s under ONNX Runtime on this machine's CPU, on the same
    SPEED_BATCH held-out images, each in its own preprocessing."""
    inputs = speed_inputs(teacher, student.train.transform, split.root, split.val)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    mine = images_per_s(
        lambda: session.run([OUTPUT_NAME], {INPUT_NAME: inputs.student}), SPEED_BATCH
    )
    theirs = images_per_s(
        lambda: teacher.session.run([teacher.output_name], {teacher.input_name: inputs.teacher}),
        SPEED_BATCH,
    )
    return {
        "images_per_s": mine,
        "teacher_images_per_s": theirs,
        "speedup": round(mine / max(1e-9, theirs), 3),
        "speed": {
            "batch": SPEED_BATCH,
            "runtime": "onnxruntime",
            "provider": "CPUExecutionProvider",
        },
    }


def _report(
    student: _Student,
    teacher: LoadedModel,
    teacher_folder: Path,
    split: _Split,
    params: Params,
    out: Path,
    ctx: RecipeContext,
) -> dict[str, Any]:
    """Evaluate against the teacher, export ONNX (parity-checked), write the outputs and
    measure both models: the student version's metrics."""
    ctx.event("Evaluating the student against the teacher on the held-out split")
    metrics = _quality(student, teacher.classes, split, params.temperature)
    out.mkdir(parents=True, exist_ok=True)
    ctx.event("Exporting ONNX and checking parity with PyTorch")
    size = student.cfg.image_size
    export_onnx(student.model, size, out / ONNX_NAME, param="params.student_model")
    sample = torch.stack([student.val[i][0] for i in range(min(PARITY_SAMPLES, len(student.val)))])
    metrics["onnx_parity"] = check_parity(student.model, out / ONNX_NAME, sample)
    write_outputs(student.model, teacher.classes, size, student.entry, out)
    mine, theirs = onnx_weights(out / ONNX_NAME), onnx_weights(teacher_folder / ONNX_NAME)
    metrics.update(params=mine, teacher_params=theirs, params_ratio=round(mine / max(1, theirs), 4))
    metrics.update(_speed(student, out / ONNX_NAME, teacher, split))
    metrics.update(
        labelled=split.labelled, temperature=params.temperature, alpha=params.alpha,
        split={"train": len(split.train), "val": len(split.val)},
        teacher={"model": params.teacher, "version_id": params.teacher_version_id},
    )  # fmt: skip
    ctx.event(
        f"Student agrees with the teacher on {metrics['agreement']:.1%} of held-out images; "
        f"{metrics['params_ratio']:.2f}x its size, {metrics['speedup']:.2f}x its speed",
        data={k: metrics[k] for k in ("agreement", "params_ratio", "speedup")},
    )
    return metrics


def student_name(params: Params) -> str:
    """model_name, else `<teacher name>-student` (cut to fit a registry name)."""
    if params.model_name:
        return params.model_name
    stem = params.teacher.split(":")[0].split("@")[0]
    return stem[: 63 - len(IMAGE_STUDENT_SUFFIX)].rstrip("._-") + IMAGE_STUDENT_SUFFIX


def _register(
    ctx: RecipeContext,
    params: Params,
    student: _Student,
    classes: list[str],
    metrics: dict[str, Any],
    out: Path,
) -> None:
    """Upload image-classification's three artifacts and register the student."""
    ctx.event("Uploading artifacts", data={"files": [WEIGHTS_NAME, ONNX_NAME, LABELS_NAME]})
    artifacts = [
        ctx.upload_artifact(out / WEIGHTS_NAME, name=WEIGHTS_NAME, format="pytorch"),
        ctx.upload_artifact(out / ONNX_NAME, name=ONNX_NAME, format="onnx"),
        ctx.upload_artifact(out / LABELS_NAME, name=LABELS_NAME, format="json"),
    ]
    ctx.register_model(
        {
            "name": student_name(params),
            "task": IMAGE_CLASSIFICATION,
            "artifacts": artifacts,
            "metrics": metrics,
            "base_model": student.entry.id,
            "parent_version_id": params.teacher_version_id,
            "extra": {
                "classes": classes,
                "config": asdict(student.cfg),
                "distilled_from": metrics["teacher"],
            },
        }
    )


def _summary(metrics: dict[str, Any], student: _Student, result: FitResult) -> dict[str, Any]:
    keys = ("agreement", "accuracy", "teacher_accuracy", "params", "teacher_params",
            "params_ratio", "images_per_s", "teacher_images_per_s", "speedup",
            "labelled")  # fmt: skip
    return {
        **{k: metrics[k] for k in keys if k in metrics},
        "student_model": student.entry.id,
        "image_size": student.cfg.image_size,
        "epochs_done": result.epochs_done,
        "best_epoch": result.best_epoch,
    }

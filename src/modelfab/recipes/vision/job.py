"""The worker side of the `image-classification` recipe: train, gate, upload, register."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from modelfab.errors import InvalidRequest, ModelfabError
from modelfab.recipes.base import RecipeContext
from modelfab.recipes.image_classification import Params
from modelfab.recipes.vision.classification import TrainOutput, train_classifier
from modelfab.tasks import IMAGE_CLASSIFICATION

logger = logging.getLogger(__name__)

TASK = IMAGE_CLASSIFICATION
GATE_FIELDS = {"min_accuracy", "model_name"}


def run(ctx: RecipeContext, params: Params) -> dict[str, Any]:
    """Train and register a classifier. Raises ModelfabError `acceptance_failed` when the
    model falls short of `min_accuracy` (then nothing is uploaded or registered)."""
    if ctx.dataset_path is None or ctx.dataset is None:
        raise InvalidRequest("image-classification needs --dataset", param="dataset")
    raw = params.model_dump(exclude=GATE_FIELDS)
    out = train_classifier(
        ctx.dataset_path, raw, workdir=ctx.workdir, reporter=ctx, weights=ctx.base_weights
    )
    if ctx.cancelled():
        return {"cancelled": True}
    _acceptance_gate(out, params.min_accuracy)
    ctx.event("Uploading artifacts", data={"files": ["weights.pt", "model.onnx", "labels.json"]})
    artifacts = [
        ctx.upload_artifact(out.weights_path, name="weights.pt", format="pytorch"),
        ctx.upload_artifact(out.onnx_path, name="model.onnx", format="onnx"),
        ctx.upload_artifact(out.labels_path, name="labels.json", format="json"),
    ]
    ctx.register_model(
        {
            "name": params.model_name or ctx.dataset["name"],
            "task": TASK,
            "artifacts": artifacts,
            "metrics": out.metrics,
            "base_model": params.base_model,
            "extra": {"classes": out.classes, "config": asdict(out.config)},
        }
    )
    return _summary(out)


def _acceptance_gate(out: TrainOutput, min_accuracy: float | None) -> None:
    accuracy = float(out.metrics["accuracy"])
    if min_accuracy is not None and accuracy < min_accuracy:
        raise ModelfabError(
            f"validation accuracy {accuracy:.3f} is below min_accuracy {min_accuracy:.3f}; "
            "the model was not registered. Add or clean data, raise --param epochs, or try "
            "another --param base_model",
            code="acceptance_failed",
            param="params.min_accuracy",
        )


def _summary(out: TrainOutput) -> dict[str, Any]:
    return {
        "accuracy": out.metrics["accuracy"],
        "macro_f1": out.metrics["macro_f1"],
        "epochs_run": out.fit.epochs_run,  # by this attempt
        "epochs_done": out.fit.epochs_done,  # by all attempts, resumed ones included
        "steps_run": out.fit.steps_run,
        "best_epoch": out.fit.best_epoch,
        "resumed_from_epoch": out.fit.resumed_from_epoch,
        "image_size": out.config.image_size,
    }

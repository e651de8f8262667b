"""The worker side of the `anomaly-detection` recipe: fit on train/good, calibrate, evaluate
on test/, export the scoring path to ONNX (parity-checked), upload and register.

Threshold: the good-only rule on the held-out good images; when test/ holds defective
images, the best-F1 threshold over those and every good image scored (held-out and
test/good), as anomalib does. The metrics then report F1 both at that threshold and at the
good-only one, since the first was chosen on the images it is measured on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from modelfab.data.validate import is_ignored
from modelfab.errors import InvalidRequest, ModelfabError
from modelfab.imaging import IMAGE_SUFFIXES, overlay
from modelfab.recipes.anomaly import export
from modelfab.recipes.anomaly.calibration import GOOD, Threshold, image_metrics, pixel_auroc
from modelfab.recipes.anomaly.inputs import ImageFiles
from modelfab.recipes.anomaly.params import PatchCoreParams
from modelfab.recipes.anomaly.patchcore import PatchCore, fit_mask
from modelfab.recipes.anomaly_detection import Params
from modelfab.recipes.base import RecipeContext
from modelfab.tasks import ANOMALY_DETECTION

logger = logging.getLogger(__name__)

TASK = ANOMALY_DETECTION
PROGRESS_EVERY_S = 2.0
CALIBRATION_TARGET = 20
"""Held-out good images "auto" aims for: fewer make the 0.99 quantile a guess."""
EXAMPLES_NAME = "examples.png"
EXAMPLE_SIDE = 192


class _Cancelled(Exception):
    """Raised from a progress callback when the job was cancelled."""


@dataclass
class TestSet:
    """test/ of the dataset: images, their labels ("good" or a defect type), mask paths."""

    paths: list[Path]
    labels: list[str]
    masks: list[Path | None]
    scores: np.ndarray | None = None
    """Filled in once scored."""

    @property
    def has_defects(self) -> bool:
        return any(label != GOOD for label in self.labels)


def run(ctx: RecipeContext, params: Params) -> dict[str, Any]:
    """Fit, calibrate, evaluate, export and register a detector. Raises ModelfabError
    "acceptance_failed" below `min_image_auroc` (nothing is registered then)."""
    if ctx.dataset_path is None or ctx.dataset is None:
        raise InvalidRequest("anomaly-detection needs --dataset", param="dataset")
    root = ctx.dataset_path
    good = ImageFiles(_images_in(root / "train" / "good"))
    tests = _test_set(root)
    if params.min_image_auroc is not None and not tests.has_defects:
        _acceptance_gate({"image_auroc": None}, params.min_image_auroc)  # fail before fitting
    config = patchcore_params(params, len(good))
    try:
        detector = _fit(ctx, good, config)
        metrics = _evaluate(ctx, detector, tests)
    except _Cancelled:
        ctx.event("Cancel received; fitting stopped", level="warning")
        return {"cancelled": True}
    _acceptance_gate(metrics, params.min_image_auroc)
    files = _export(ctx, detector, tests.paths or good.paths, metrics)
    sheet = examples_sheet(detector, tests, ctx.workdir / EXAMPLES_NAME)
    files += [sheet] if sheet else []
    ctx.event("Uploading artifacts", data={"files": sorted(p.name for p in files)})
    artifacts = [ctx.upload_artifact(p, name=p.name, format=_format(p)) for p in files]
    ctx.register_model(
        {
            "name": params.model_name or ctx.dataset["name"],
            "task": TASK,
            "artifacts": artifacts,
            "metrics": metrics,
            "base_model": params.base_model,
            "extra": {
                "threshold": detector.threshold.to_dict() if detector.threshold else None,
                "patchcore": config.to_dict(),
                "fit": detector.info,
            },
        }
    )
    return _summary(detector, metrics)


def patchcore_params(params: Params, n_good: int) -> PatchCoreParams:
    """The detector's params from the recipe's, with "auto" resolved for `n_good` images."""
    if params.calibration_fraction == "auto":
        fraction = min(0.3, max(0.1, CALIBRATION_TARGET / max(1, n_good)))
    else:
        fraction = float(params.calibration_fraction)
    return PatchCoreParams(
        backbone=params.base_model,
        layers=tuple(params.layers),
        image_size=params.image_size,
        feature_dim=params.feature_dim,
        coreset_ratio=params.coreset_ratio,
        max_bank=params.max_bank,
        sigma=params.sigma,
        tiling=params.tiling,
        tile_overlap=params.tile_overlap,
        calibration_fraction=fraction,
        threshold_quantile=params.threshold_quantile,
        threshold_margin=params.threshold_margin,
        batch_size=params.batch_size,
        seed=params.seed,
    )


def _fit(ctx: RecipeContext, good: ImageFiles, config: PatchCoreParams) -> PatchCore:
    ctx.event(
        f"Fitting PatchCore ({config.backbone}, {config.image_size} px"
        f"{', tiled' if config.tiling else ''}) on {len(good)} good images",
        data={"params": config.to_dict()},
    )
    detector = PatchCore.fit(
        good, config, weights=ctx.base_weights, progress=_progress(ctx, "features")
    )
    threshold = detector.threshold
    ctx.event(
        f"Memory bank: {detector.info['bank_size']} of {detector.info['patches_seen']} patches; "
        + (f"threshold {threshold.value:.4g} from {threshold.n_good} held-out good images"
           if threshold else "no threshold (a single good image)"),
        data=detector.info,
    )  # fmt: skip
    return detector


def _evaluate(ctx: RecipeContext, detector: PatchCore, tests: TestSet) -> dict[str, Any]:
    """Calibrate on test/ when it has defects, then the metrics of test/ (fit info only
    without test/)."""
    metrics: dict[str, Any] = {"fit_seconds": detector.info["fit_seconds"]}
    good_only = detector.threshold
    if not tests.paths:
        ctx.event("No test/ images: the threshold comes from held-out good images only")
        return _with_threshold(metrics, good_only)
    with_masks = any(m is not None for m in tests.masks)
    ctx.event(f"Scoring {len(tests.paths)} test images")
    result = detector.score(
        ImageFiles(tests.paths), with_maps=with_masks, progress=_progress(ctx, "test")
    )
    tests.scores = result.scores
    if tests.has_defects:
        good = [s for s, label in zip(result.scores, tests.labels, strict=True) if label == GOOD]
        held = list(detector.calibration_scores)
        bad = [s for s, label in zip(result.scores, tests.labels, strict=True) if label != GOOD]
        detector.calibrate(held + good, bad)
    if detector.threshold is None:
        return _with_threshold(metrics, None)
    metrics.update(image_metrics(result.scores, tests.labels, detector.threshold.value))
    if good_only is not None and tests.has_defects:
        at_good = image_metrics(result.scores, tests.labels, good_only.value)
        metrics["f1_at_good_threshold"] = at_good["f1"]
        metrics["good_threshold"] = good_only.value
    metrics["pixel_auroc"] = None
    if with_masks:
        masks = [_mask(m, a.shape) for m, a in zip(tests.masks, result.maps, strict=True)]
        metrics["pixel_auroc"] = pixel_auroc(result.maps, tests.labels, masks)
    scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    ctx.metrics(None, **scalars)
    ctx.event(_metrics_line(metrics), data=metrics)
    return _with_threshold(metrics, detector.threshold)


def _with_threshold(metrics: dict[str, Any], threshold: Threshold | None) -> dict[str, Any]:
    metrics["threshold"] = threshold.value if threshold else None
    metrics["threshold_source"] = threshold.source if threshold else None
    return metrics


def _metrics_line(m: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    return (
        f"Test: image AUROC {fmt(m.get('image_auroc'))}, pixel AUROC {fmt(m.get('pixel_auroc'))}, "
        f"F1 {fmt(m.get('f1'))} at threshold {m['threshold']:.4g} "
        f"({m['n_good']} good, {m['n_defective']} defective)"
    )


def _export(
    ctx: RecipeContext, detector: PatchCore, sample_paths: list[Path], metrics: dict[str, Any]
) -> list[Path]:
    """Save the detector folder and the ONNX graph with labels; the files to upload."""
    started = time.monotonic()
    folder = detector.save(ctx.workdir / "detector")
    ctx.event("Exporting the scoring path to ONNX")
    onnx_path, labels_path = export.export_onnx(detector, ctx.workdir / "export")
    sample = ImageFiles(export.sample_of(sample_paths))
    ctx.event("Checking ONNX parity", data={"export_seconds": round(time.monotonic() - started, 3)})
    metrics["onnx_parity"] = export.check_parity(detector, onnx_path, sample)
    metrics["export_seconds"] = round(time.monotonic() - started, 3)
    ctx.event("ONNX parity checked", data=metrics["onnx_parity"])
    arrays = sorted(folder.glob("*.npy"))
    return [onnx_path, labels_path, folder / "patchcore.json", *arrays]


def examples_sheet(detector: PatchCore, tests: TestSet, path: Path) -> Path | None:
    """A picture of the test images most worth a look, with their heatmaps: the highest-
    scoring defective ones, then the highest-scoring good ones (near misses). Captions give
    the label, the score and the verdict. None when test/ was not scored."""
    if tests.scores is None or detector.threshold is None:
        return None
    order = np.argsort(-tests.scores, kind="stable")
    bad = [i for i in order if tests.labels[i] != GOOD][:6]
    good = [i for i in order if tests.labels[i] == GOOD][:2]
    chosen = [int(i) for i in bad + good]
    maps = detector.score(ImageFiles([tests.paths[i] for i in chosen])).maps
    scale = 2 * detector.threshold.value
    sheet = Image.new("RGB", (EXAMPLE_SIDE * 4, (EXAMPLE_SIDE + 18) * 2), "white")
    draw = ImageDraw.Draw(sheet)
    for slot, (i, amap) in enumerate(zip(chosen, maps, strict=True)):
        with Image.open(tests.paths[i]) as image:
            tile = overlay(image.convert("RGB"), np.clip(amap / scale, 0, 1))
        tile = tile.resize((EXAMPLE_SIDE, EXAMPLE_SIDE))
        x, y = (slot % 4) * EXAMPLE_SIDE, (slot // 4) * (EXAMPLE_SIDE + 18)
        sheet.paste(tile, (x, y))
        score = float(tests.scores[i])
        verdict = "FLAGGED" if score >= detector.threshold.value else "passed"
        draw.text(
            (x + 4, y + EXAMPLE_SIDE + 3), f"{tests.labels[i]} {score:.3g} {verdict}", "black"
        )
    sheet.save(path)
    return path


def _format(path: Path) -> str:
    return {".onnx": "onnx", ".json": "json", ".npy": "numpy", ".png": "png"}[path.suffix]


def _acceptance_gate(metrics: dict[str, Any], min_auroc: float | None) -> None:
    auroc = metrics.get("image_auroc")
    if min_auroc is None:
        return
    if auroc is None:
        raise ModelfabError(
            "min_image_auroc needs defective test images (test/<defect>/) to measure; add "
            "some or drop the gate",
            code="acceptance_failed",
            param="params.min_image_auroc",
        )
    if auroc < min_auroc:
        raise ModelfabError(
            f"test image AUROC {auroc:.3f} is below min_image_auroc {min_auroc:.3f}; the "
            "detector was not registered. Add good images, raise --param image_size, or try "
            "--param tiling=true for small defects in large images",
            code="acceptance_failed",
            param="params.min_image_auroc",
        )


def _summary(detector: PatchCore, metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("image_auroc", "pixel_auroc", "f1", "threshold", "threshold_source")
    return {**{k: metrics.get(k) for k in keys}, **detector.info}


def _progress(ctx: RecipeContext, stage: str) -> Callable[[int, int], None]:
    """A PatchCore progress callback: an event every PROGRESS_EVERY_S, and cancel checks."""
    started = last = time.monotonic()

    def report(done: int, total: int) -> None:
        nonlocal last
        if ctx.cancelled():
            raise _Cancelled
        now = time.monotonic()
        if now - last < PROGRESS_EVERY_S and done < total:
            return
        last = now
        rate = done / max(1e-9, now - started)
        eta = (total - done) / rate if rate > 0 else None
        ctx.event(
            f"{stage}: {done}/{total} ({rate:.1f}/s)",
            type="progress",
            data={"stage": stage, "done": done, "total": total, "per_s": round(rate, 2),
                  "eta_s": None if eta is None else round(eta, 1)},
        )  # fmt: skip

    return report


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not is_ignored(p.name) and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _test_set(root: Path) -> TestSet:
    tests = TestSet([], [], [])
    test_root = root / "test"
    if not test_root.is_dir():
        return tests
    for kind in sorted(d.name for d in test_root.iterdir() if d.is_dir()):
        for path in _images_in(test_root / kind):
            stem = PurePosixPath(path.name).stem
            masks = sorted((root / "ground_truth" / kind).glob(f"{stem}_mask.*"))
            tests.paths.append(path)
            tests.labels.append(kind)
            tests.masks.append(masks[0] if masks else None)
    return tests


def _mask(path: Path | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """A defect's mask (any mode, non-zero = defect) at `shape`, or None."""
    if path is None:
        return None
    with Image.open(path) as image:
        mask = np.asarray(image.convert("L")) > 0
    return fit_mask(mask, shape)

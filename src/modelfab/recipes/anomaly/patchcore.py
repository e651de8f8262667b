"""PatchCore: anomaly detection from good images only (Roth et al., 2022).

Fitting extracts patch features of the good images with a frozen hub backbone
(`features`), keeps a bounded greedy coreset of them as the memory bank (`coreset`), and
calibrates a threshold on good images held out of the bank (`calibration`). Scoring gives
each patch its distance to the nearest bank patch; the patch map, upsampled to the scored
image and smoothed (Gaussian, `sigma`), is the anomaly map, and the largest patch
distance is the image score. Inputs and tiling are described in `inputs`.

A detector saves to a folder (`storage`): `patchcore.json` (backbone id, layers, image
size, mean/std, params, threshold, fit info, array digests), `memory_bank.npy` (float16)
and, with a feature projection, `projection.npy`. The backbone's weights are not copied:
`load` rebuilds it from the hub by id, as `fit` did.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from modelfab.errors import InvalidRequest, ModelfabError
from modelfab.hub.catalog import get_entry
from modelfab.recipes.anomaly.calibration import (
    Threshold,
    best_f1_threshold,
    good_threshold,
    image_metrics,
    pixel_auroc,
)
from modelfab.recipes.anomaly.coreset import CoresetBuilder, nearest_distances
from modelfab.recipes.anomaly.features import PatchFeatureExtractor, build_extractor
from modelfab.recipes.anomaly.inputs import ImageInput, ImagePrep, holdout, subset
from modelfab.recipes.anomaly.maps import gaussian_blur, stitch, upsample
from modelfab.recipes.anomaly.params import PatchCoreParams
from modelfab.recipes.anomaly.storage import invalid, read_folder, write_folder

logger = logging.getLogger(__name__)

BANK = "memory_bank"
PROJECTION = "projection"

Progress = Callable[[int, int], None]
"""Called as progress(done, total) after each batch, in images (or tiles when tiling); it
may raise to stop the work."""


@dataclass(frozen=True)
class AnomalyScores:
    """Scores of N images."""

    scores: np.ndarray
    """(N,) float32 image scores: the largest patch distance."""
    maps: list[np.ndarray] = field(default_factory=list)
    """(H, W) float32 anomaly maps, one per image (empty when not asked for): at
    `image_size` without tiling, at the scored resolution with tiling."""


class PatchCore:
    """A fitted detector: extractor, memory bank (K, D) and an optional threshold.

    Build one with `fit` or `load`. Every method runs on the CPU and blocks.
    """

    def __init__(
        self,
        params: PatchCoreParams,
        extractor: PatchFeatureExtractor,
        bank: torch.Tensor,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        threshold: Threshold | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.params = params
        self.extractor = extractor
        self.bank = bank.float().contiguous()
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.threshold = threshold
        self.info = dict(info or {})
        self.calibration_scores = np.zeros(0, dtype=np.float32)
        """Scores of the good images `fit` held out (empty after `load`)."""
        self.prep = ImagePrep(
            params.image_size, params.tiling, params.tile_overlap, self.mean, self.std
        )

    @classmethod
    def fit(
        cls,
        good_images: ImageInput,
        params: PatchCoreParams | None = None,
        *,
        weights: Path | None = None,
        progress: Progress | None = None,
    ) -> PatchCore:
        """Fit on good images; `weights` overrides the hub's weights file of the backbone;
        `progress` follows the feature extraction of the bank's images.

        Holds out `calibration_fraction` of the images (at least one when there are two or
        more) and sets the good-only threshold from their scores; from a single image no
        threshold is set. Bank memory and selection time are bounded by `max_bank` (see
        `coreset`), not by the number of images.

        Raises InvalidRequest (param "images") when there is no image, and the errors of
        `build_extractor`.
        """
        params = params or PatchCoreParams()
        if len(good_images) == 0:
            raise InvalidRequest("fitting needs at least one good image", param="images")
        started = time.monotonic()
        entry = get_entry(params.backbone)
        extractor = build_extractor(
            params.backbone, params.layers, feature_dim=params.feature_dim,
            aggregation=params.aggregation, seed=params.seed, weights=weights,
        )  # fmt: skip
        kept, held = holdout(len(good_images), params.calibration_fraction, params.seed)
        detector = cls(params, extractor, torch.empty(0), mean=entry.mean, std=entry.std)
        detector.bank, patches = detector._select_bank(subset(good_images, kept), progress)
        if held:
            detector.calibration_scores = detector.score(
                subset(good_images, held), with_maps=False
            ).scores
            detector.calibrate(detector.calibration_scores)
        detector.info = {
            "train_images": len(kept),
            "calibration_images": len(held),
            "patches_seen": patches,
            "bank_size": int(detector.bank.shape[0]),
            "fit_seconds": round(time.monotonic() - started, 3),
        }
        logger.info("patchcore fitted: %s", detector.info)
        return detector

    def _select_bank(
        self, images: ImageInput, progress: Progress | None = None
    ) -> tuple[torch.Tensor, int]:
        """(bank rounded through float16 so that save/load is exact, patches seen)."""
        params = self.params
        with torch.inference_mode():
            probe = self.extractor(torch.zeros(1, 3, params.image_size, params.image_size))
        units = self.prep.count_units(images)
        total = units * probe.shape[-2] * probe.shape[-1]
        builder = CoresetBuilder(
            min(params.coreset_ratio, params.max_bank / total),
            params.max_bank,
            projection_dim=params.coreset_projection_dim,
            seed=params.seed,
        )
        seen = done = 0
        with torch.inference_mode():
            for batch in self._unit_batches(images):
                patches = _flatten(self.extractor(batch))
                seen += patches.shape[0]
                builder.add(patches)
                done += batch.shape[0]
                if progress is not None:
                    progress(done, units)
        return builder.finish().half().float(), seen

    def _unit_batches(self, images: ImageInput) -> Iterator[torch.Tensor]:
        """All tiles (or images) of `images`, stacked `batch_size` at a time."""
        size = self.params.batch_size
        pending: list[torch.Tensor] = []
        for image in self.prep.tensors(images):
            pending.extend(self.prep.units(image)[0])
            while len(pending) >= size:
                yield torch.stack(pending[:size])
                pending = pending[size:]
        if pending:
            yield torch.stack(pending)

    def score(
        self, images: ImageInput, *, with_maps: bool = True, progress: Progress | None = None
    ) -> AnomalyScores:
        """Image scores and, `with_maps`, smoothed anomaly maps of `images`; `progress`
        counts images.

        Raises InvalidRequest (param "images") for a badly shaped tensor.
        """
        scores: list[float] = []
        maps: list[np.ndarray] = []
        with torch.inference_mode():
            batches = self._score_tiled if self.params.tiling else self._score_resized
            for batch_scores, batch_maps in batches(images, with_maps):
                scores.extend(batch_scores.tolist())
                maps.extend(m.numpy() for m in batch_maps)
                if progress is not None:
                    progress(len(scores), len(images))
        return AnomalyScores(scores=np.asarray(scores, dtype=np.float32), maps=maps)

    def _score_resized(
        self, images: ImageInput, with_maps: bool
    ) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
        """(scores (n,), maps) per batch of images resized to `image_size`."""
        size = (self.params.image_size, self.params.image_size)
        for batch in self._unit_batches(images):
            patch = self._patch_scores(batch)
            maps: list[torch.Tensor] = []
            if with_maps:
                maps = list(gaussian_blur(upsample(patch, size), self.params.sigma))
            yield patch.flatten(1).amax(dim=1), maps

    def _score_tiled(
        self, images: ImageInput, with_maps: bool
    ) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
        """(score (1,), [map]) per image, scored tile by tile; overlaps are averaged."""
        step = self.params.batch_size
        tile_size = (self.params.image_size, self.params.image_size)
        for image in self.prep.tensors(images):
            tiles, offsets = self.prep.units(image)
            patch = torch.cat(
                [self._patch_scores(tiles[i : i + step]) for i in range(0, len(tiles), step)]
            )
            maps: list[torch.Tensor] = []
            if with_maps:
                full = (int(image.shape[-2]), int(image.shape[-1]))
                stitched = stitch(upsample(patch, tile_size), offsets, full)
                maps = [gaussian_blur(stitched[None], self.params.sigma)[0]]
            yield patch.amax().reshape(1), maps

    def _patch_scores(self, batch: torch.Tensor) -> torch.Tensor:
        """(n, C, S, S) -> (n, h, w) distances of each patch to its nearest bank patch."""
        feats = self.extractor(batch)
        n, _, h, w = feats.shape
        return nearest_distances(_flatten(feats), self.bank).reshape(n, h, w)

    def calibrate(
        self,
        good_scores: Sequence[float] | np.ndarray,
        defect_scores: Sequence[float] | np.ndarray | None = None,
    ) -> Threshold:
        """Set (and return) the threshold: best F1 when defect scores are given, else the
        good-only rule with this detector's quantile and margin (see `calibration`).
        Raises ValueError when the scores needed are empty."""
        if defect_scores is not None and len(defect_scores) > 0:
            self.threshold = best_f1_threshold(good_scores, defect_scores)
        else:
            self.threshold = good_threshold(
                good_scores,
                quantile=self.params.threshold_quantile,
                margin=self.params.threshold_margin,
            )
        return self.threshold

    def flags(self, scores: np.ndarray) -> np.ndarray:
        """Boolean (N,): score >= threshold. Raises ModelfabError "not_calibrated"."""
        return np.asarray(scores) >= self._threshold_value()

    def _threshold_value(self) -> float:
        if self.threshold is None:
            raise ModelfabError(
                "this detector has no threshold; calibrate it on good images first",
                code="not_calibrated",
                param="threshold",
            )
        return self.threshold.value

    def evaluate(
        self,
        images: ImageInput,
        labels: Sequence[str],
        masks: Sequence[np.ndarray | None] | None = None,
    ) -> dict[str, Any]:
        """`calibration.image_metrics` at the threshold, plus pixel_auroc (None without
        masks or defect pixels).

        `labels` are "good" or a defect type, one per image; `masks` hold a boolean array
        (any size: resized to its map, nearest) or None per image. Raises ModelfabError
        "not_calibrated" without a threshold.
        """
        threshold = self._threshold_value()
        result = self.score(images, with_maps=masks is not None)
        metrics = image_metrics(result.scores, labels, threshold)
        metrics["pixel_auroc"] = None
        if masks is not None:
            fitted = [fit_mask(m, a.shape) for m, a in zip(masks, result.maps, strict=True)]
            metrics["pixel_auroc"] = pixel_auroc(result.maps, labels, fitted)
        return metrics

    def memory_bytes(self) -> int:
        """Bytes held in memory: the bank (float32) and the extractor's tensors."""
        tensors = [*self.extractor.parameters(), *self.extractor.buffers(), self.bank]
        return sum(t.numel() * t.element_size() for t in tensors)

    def save(self, folder: Path) -> Path:
        """Write the detector folder (see `storage`), replacing one there; returns it."""
        arrays = {BANK: self.bank.half().numpy()}
        if self.extractor.projection is not None:
            arrays[PROJECTION] = self.extractor.projection.numpy()
        config = {
            "backbone": self.params.backbone,
            "layers": list(self.params.layers),
            "image_size": self.params.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "params": self.params.to_dict(),
            "threshold": self.threshold.to_dict() if self.threshold else None,
            "info": self.info,
        }
        return write_folder(folder, config, arrays)

    @classmethod
    def load(cls, folder: Path, *, weights: Path | None = None) -> PatchCore:
        """A detector saved by `save`; the backbone is rebuilt from the hub by id (or from
        `weights`). Raises ModelfabError "detector_invalid" for a missing, foreign or
        damaged folder, and the hub's errors when the backbone's weights are missing."""
        config, arrays = read_folder(folder)
        if BANK not in arrays:
            raise invalid(folder, f"it has no {BANK}")
        params = PatchCoreParams.from_dict(config["params"])
        projection = arrays.get(PROJECTION)
        extractor = build_extractor(
            params.backbone, params.layers, aggregation=params.aggregation, seed=params.seed,
            weights=weights,
            projection=None if projection is None else torch.from_numpy(projection),
        )  # fmt: skip
        threshold = config.get("threshold")
        return cls(
            params, extractor, torch.from_numpy(arrays[BANK]), mean=config["mean"],
            std=config["std"], threshold=Threshold.from_dict(threshold) if threshold else None,
            info=config.get("info"),
        )  # fmt: skip


def _flatten(feats: torch.Tensor) -> torch.Tensor:
    """(n, D, h, w) -> (n * h * w, D), row-major over (n, h, w)."""
    return feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])


def fit_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """`mask` resized to `shape` (nearest), or None."""
    if mask is None or mask.shape == shape:
        return mask
    image = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255)
    resized = image.resize((shape[1], shape[0]), Image.Resampling.NEAREST)
    return np.asarray(resized) > 127

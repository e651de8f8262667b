"""The decision threshold of an anomaly detector and the metrics that judge it.

Scores are anomaly scores (higher: more anomalous); an image is flagged when its score
is >= the threshold. Labels are "good" or the name of a defect type (the MVTec AD folder).

Threshold rules:

- `good_threshold` (good images only, held out of the memory bank): the `quantile` of
  their scores (numpy's "higher" method: an observed score, the maximum below 100 images
  at 0.99) raised by `margin` times the spread between that quantile and the median.
  A good part then passes unless it scores beyond what good parts were seen to score.
  With n held-out images a new good part exceeds their maximum with probability about
  1 / (n + 1): expect ~25% false alarms from 3 images and < 5% only from ~20, so prefer
  `best_f1_threshold` whenever defective examples exist.
- `best_f1_threshold` (good and defective images): the threshold maximising F1 with the
  defects as positives, placed halfway between the lowest flagged score and the highest
  score below it, so small score noise does not flip either image. F1 measured at that
  threshold on the same images is optimistic: report it as in-sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from sklearn.metrics import f1_score, precision_recall_curve, roc_auc_score

GOOD = "good"
MAX_METRIC_PIXELS = 4_000_000
"""Pixel AUROC uses at most this many pixels, taken at an even stride over all of them."""


@dataclass(frozen=True)
class Threshold:
    """A calibrated decision threshold and how it was set."""

    value: float
    source: Literal["good_quantile", "best_f1"]
    n_good: int
    """Good images it was calibrated on."""
    n_defective: int
    """Defective images it was calibrated on (0 for the good-only rule)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Threshold:
        return cls(
            value=float(data["value"]),
            source=data["source"],
            n_good=int(data["n_good"]),
            n_defective=int(data["n_defective"]),
        )


def good_threshold(
    good_scores: Sequence[float] | np.ndarray, *, quantile: float = 0.99, margin: float = 0.1
) -> Threshold:
    """Threshold from good images' scores (see the module rule). Raises ValueError on none."""
    scores = np.asarray(good_scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("no good scores to calibrate on")
    high = float(np.quantile(scores, quantile, method="higher"))
    spread = high - float(np.median(scores))
    return Threshold(
        value=high + margin * spread, source="good_quantile", n_good=scores.size, n_defective=0
    )


def best_f1_threshold(
    good_scores: Sequence[float] | np.ndarray, defect_scores: Sequence[float] | np.ndarray
) -> Threshold:
    """Threshold maximising F1 (see the module rule). Raises ValueError unless both sets
    hold scores."""
    good = np.asarray(good_scores, dtype=np.float64)
    bad = np.asarray(defect_scores, dtype=np.float64)
    if good.size == 0 or bad.size == 0:
        raise ValueError("best-F1 calibration needs good and defective scores")
    scores = np.concatenate([good, bad])
    truth = np.concatenate([np.zeros(good.size), np.ones(bad.size)])
    precision, recall, cuts = precision_recall_curve(truth, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    cut = float(cuts[int(np.argmax(f1[:-1]))])
    below = scores[scores < cut]
    value = (cut + float(below.max())) / 2 if below.size else cut
    return Threshold(value=value, source="best_f1", n_good=good.size, n_defective=bad.size)


def image_metrics(
    scores: Sequence[float] | np.ndarray, labels: Sequence[str], threshold: float
) -> dict[str, Any]:
    """Image-level metrics at `threshold`: image_auroc (None unless both good and defective
    images are present), f1, precision, recall, good_pass_rate (share of good images not
    flagged), recall_by_defect {type: share flagged}, and the counts."""
    values = np.asarray(scores, dtype=np.float64)
    truth = np.array([label != GOOD for label in labels])
    flagged = values >= threshold
    both = bool(truth.any() and (~truth).any())
    tp = int((flagged & truth).sum())
    metrics: dict[str, Any] = {
        "image_auroc": float(roc_auc_score(truth, values)) if both else None,
        "f1": float(f1_score(truth, flagged, zero_division=0)),
        "precision": tp / int(flagged.sum()) if flagged.any() else None,
        "recall": tp / int(truth.sum()) if truth.any() else None,
        "good_pass_rate": float((~flagged[~truth]).mean()) if (~truth).any() else None,
        "recall_by_defect": {},
        "n_good": int((~truth).sum()),
        "n_defective": int(truth.sum()),
        "threshold": float(threshold),
    }
    for kind in sorted({label for label in labels if label != GOOD}):
        rows = np.array([label == kind for label in labels])
        metrics["recall_by_defect"][kind] = float(flagged[rows].mean())
    return metrics


def pixel_auroc(
    maps: Sequence[np.ndarray], labels: Sequence[str], masks: Sequence[np.ndarray | None]
) -> float | None:
    """AUROC of anomaly-map pixels against the masks, over good images (all pixels normal)
    and defective images that have a mask; None when no defect pixel is present.

    Raises ValueError when a mask and its map differ in shape.
    """
    values: list[np.ndarray] = []
    truths: list[np.ndarray] = []
    for amap, label, mask in zip(maps, labels, masks, strict=True):
        if label != GOOD and mask is None:
            continue
        truth = np.zeros(amap.shape, dtype=bool) if mask is None else np.asarray(mask, bool)
        if truth.shape != amap.shape:
            raise ValueError(f"a mask of shape {truth.shape} for a map of shape {amap.shape}")
        values.append(np.asarray(amap, dtype=np.float32).ravel())
        truths.append(truth.ravel())
    if not values:
        return None
    flat, truth = np.concatenate(values), np.concatenate(truths)
    stride = max(1, flat.size // MAX_METRIC_PIXELS)
    flat, truth = flat[::stride], truth[::stride]
    if not truth.any() or truth.all():
        return None
    return float(roc_auc_score(truth, flat))

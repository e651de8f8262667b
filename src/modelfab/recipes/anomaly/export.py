"""ONNX export of a fitted PatchCore's whole scoring path, and its parity check.

The graph takes normalised images "images" (N, 3, S, S) and gives "scores" (N,) and "maps"
(N, S, S): patch features -> each patch's distance to its nearest memory-bank patch ->
the image score (the largest) and the map (upsampled, then Gaussian-smoothed in the graph
unless the detector tiles: tiles are smoothed once stitched, by whoever stitches them).
The bank, centred on its mean, is a constant of the graph. Nearest distances run
`coreset.nearest_in` (as the detector itself does) over `BANK_CHUNK` bank rows at a time,
so the largest live product is (N x patches x chunk), whatever the bank size.
`labels.json` beside the graph says how to prepare images and read the outputs;
`modelfab.serving.anomaly` is its reader.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from modelfab.errors import ModelfabError
from modelfab.recipes.anomaly.coreset import nearest_in
from modelfab.recipes.anomaly.features import PatchFeatureExtractor
from modelfab.recipes.anomaly.inputs import ImageInput
from modelfab.recipes.anomaly.maps import gaussian_blur, upsample
from modelfab.recipes.anomaly.patchcore import PatchCore
from modelfab.recipes.vision.export import INPUT_NAME
from modelfab.recipes.vision.export import export_onnx as export_graph
from modelfab.tasks import ANOMALY_DETECTION

TASK = ANOMALY_DETECTION
ONNX_NAME, LABELS_NAME = "model.onnx", "labels.json"
OUTPUTS = ("scores", "maps")
BANK_CHUNK = 4096
"""Bank rows per distance block: (N x 784 patches x 4096) float32 is 12.8 MB per image."""
MAP_SCALE_PER_THRESHOLD = 2.0
"""Heatmaps draw map values of this many thresholds as full heat, so the threshold sits at
mid-scale."""


class ScoringGraph(nn.Module):
    """Normalised images (N, 3, S, S) -> (scores (N,), maps (N, S, S)); see the module."""

    def __init__(
        self,
        extractor: PatchFeatureExtractor,
        bank: torch.Tensor,
        image_size: int,
        sigma: float,
        blur: bool,
    ) -> None:
        super().__init__()
        self.extractor = extractor
        self.image_size = image_size
        self.sigma = sigma if blur else 0.0
        centre = bank.float().mean(dim=0)
        centred = (bank.float() - centre).contiguous()
        self.centre: torch.Tensor
        self.bank: torch.Tensor
        self.bank_sq: torch.Tensor
        self.register_buffer("centre", centre)
        self.register_buffer("bank", centred)
        self.register_buffer("bank_sq", (centred * centred).sum(dim=1))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.extractor(images)
        n, d, h, w = feats.shape
        x = feats.permute(0, 2, 3, 1).reshape(n, h * w, d) - self.centre
        best: torch.Tensor | None = None
        for start in range(0, int(self.bank.shape[0]), BANK_CHUNK):
            end = start + BANK_CHUNK
            nearest = nearest_in(x, self.bank[start:end], self.bank_sq[start:end])
            best = nearest if best is None else torch.minimum(best, nearest)
        assert best is not None  # a fitted bank is never empty
        patch = best.clamp_min(0).sqrt().reshape(n, h, w)
        scores = patch.reshape(n, h * w).amax(dim=1)
        maps = gaussian_blur(upsample(patch, (self.image_size, self.image_size)), self.sigma)
        return scores, maps


def scoring_graph(detector: PatchCore) -> ScoringGraph:
    """The detector's scoring path as one module (sharing its extractor and bank)."""
    params = detector.params
    return ScoringGraph(
        detector.extractor,
        detector.bank,
        params.image_size,
        params.sigma,
        blur=not params.tiling,
    ).eval()


def labels_for(detector: PatchCore) -> dict[str, Any]:
    """The labels.json of `detector`'s graph (the serving contract in serving/anomaly.py)."""
    params = detector.params
    threshold = detector.threshold
    scale = MAP_SCALE_PER_THRESHOLD * threshold.value if threshold and threshold.value > 0 else 0
    return {
        "task": TASK,
        "image_size": params.image_size,
        "mean": list(detector.mean),
        "std": list(detector.std),
        "input": INPUT_NAME,
        "outputs": list(OUTPUTS),
        "threshold": threshold.value if threshold else None,
        "threshold_source": threshold.source if threshold else None,
        "tiling": params.tiling,
        "tile_overlap": params.tile_overlap,
        "sigma": params.sigma,
        "maps_blurred": not params.tiling,
        "map_scale": scale or 1.0,  # uncalibrated (a single good image): raw distances
        "backbone": params.backbone,
    }


def export_onnx(detector: PatchCore, folder: Path) -> tuple[Path, Path]:
    """Write `folder`/model.onnx and `folder`/labels.json for `detector`; returns both
    paths. Blocks for seconds (tracing). Raises ModelfabError "export_failed"."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path, labels_path = folder / ONNX_NAME, folder / LABELS_NAME
    with torch.inference_mode(False), torch.no_grad():
        export_graph(
            scoring_graph(detector),
            detector.params.image_size,
            onnx_path,
            outputs=OUTPUTS,
            param="base_model",
        )
    labels_path.write_text(json.dumps(labels_for(detector), indent=2) + "\n")
    return onnx_path, labels_path


def check_parity(
    detector: PatchCore,
    onnx_path: Path,
    sample: ImageInput,
    *,
    atol: float = 1e-3,
    rtol: float = 1e-3,
) -> dict[str, Any]:
    """Compare ONNX Runtime (CPU) with the detector's own scoring on `sample` (a few images).

    Without tiling the graph's scores and maps must match `detector.score`; with tiling
    (where stitching happens outside the graph) they must match the graph run in PyTorch on
    each image's tiles. The allowed difference is atol + rtol * max|score|. Returns
    max_score_diff, max_map_diff, allowed, n, provider.

    Raises ModelfabError "export_parity_failed" (param "base_model") beyond it.
    """
    units, expected_scores, expected_maps = _expected(detector, sample)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got_scores, got_maps = session.run(list(OUTPUTS), {INPUT_NAME: units.numpy()})
    score_diff = float(np.abs(np.asarray(got_scores) - expected_scores).max())
    map_diff = float(np.abs(np.asarray(got_maps) - expected_maps).max())
    allowed = atol + rtol * float(np.abs(expected_scores).max())
    result = {
        "max_score_diff": score_diff,
        "max_map_diff": map_diff,
        "allowed": allowed,
        "n": int(units.shape[0]),
        "provider": "CPUExecutionProvider",
    }
    if max(score_diff, map_diff) > allowed:
        raise ModelfabError(
            f"the ONNX export of the detector differs from its PyTorch scoring (max |diff| "
            f"score {score_diff:.2e}, map {map_diff:.2e}; allowed {allowed:.2e}); nothing was "
            "registered. Try another base_model and report this",
            code="export_parity_failed",
            param="base_model",
        )
    return result


def _expected(
    detector: PatchCore, sample: ImageInput
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """(units fed to the graph, expected scores, expected maps) for `sample`."""
    prep = detector.prep
    units = torch.cat([prep.units(t)[0] for t in prep.tensors(sample)])
    if detector.params.tiling:
        with torch.inference_mode():
            scores, maps = scoring_graph(detector)(units)
        return units, scores.numpy(), maps.numpy()
    result = detector.score(sample)
    return units, result.scores, np.stack(result.maps)


def sample_of(images: Sequence[Any], n: int = 4) -> list[Any]:
    """Up to `n` images spread over `images`, for the parity check."""
    if len(images) <= n:
        return list(images)
    step = len(images) / n
    return [images[int(i * step)] for i in range(n)]

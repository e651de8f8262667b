"""The end of a batch inspection: summary.json, and report.html of the top-scoring images.

The report's overlays need anomaly maps, which the run does not keep in memory (a map per
image would not fit at archive scale): the heatmap PNGs the run wrote for flagged images
are read back; an image without one is scored again, so at most one batch of decoded
images is held.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from modelfab.apps.inspection.batch.decode import read_image
from modelfab.apps.inspection.batch.journal import ResultStats, Row, write_json
from modelfab.apps.inspection.report import InspectionRow, asset_base, save_images, write_report
from modelfab.serving.anomaly import ANOMALY_DETECTION

REPORT_NAME = "report.html"
ASSETS_NAME = "report"
"""The folder beside report.html holding its thumbnails and overlays."""
SUMMARY_NAME = "summary.json"

Loaded = tuple[Image.Image, np.ndarray] | None
"""An image re-read for the report and its units; None when it cannot be read any more."""


def write_summary(root: Path, stats: ResultStats, info: dict[str, Any]) -> dict[str, Any]:
    """Write root/summary.json: `info` (model, input, run facts) plus the counts and score
    range of the results, the top rows and the first error rows. Returns it. Raises
    OSError."""
    mean = stats.score_sum / stats.scored if stats.scored else None
    summary = {
        **info,
        "images": stats.rows,
        "scored": stats.scored,
        "errors": stats.errors,
        "anomalies": stats.anomalies,
        "score": {"min": stats.score_min, "max": stats.score_max, "mean": mean},
        "top": [row for _, _, row in stats.top],
        "first_errors": stats.error_rows,
    }
    write_json(root / SUMMARY_NAME, summary)
    return summary


def write_top_report(
    root: Path,
    model: Any,
    stats: ResultStats,
    *,
    title: str,
    threshold: float | None,
    batch_size: int,
    workers: int,
) -> Path:
    """Re-score the top images of `stats`, save their thumbnails and (detectors) overlays
    under root/report/, and write root/report.html listing them and the first error
    rows. An image unreadable by now is listed without pictures. Blocks. Raises OSError
    and the model's errors."""
    assets = root / ASSETS_NAME
    assets.mkdir(exist_ok=True)
    top = [row for _, _, row in stats.top]
    rows: list[InspectionRow] = []
    with ThreadPoolExecutor(workers, thread_name_prefix="report") as pool:
        for start in range(0, len(top), batch_size):
            chunk = top[start : start + batch_size]
            loaded = list(pool.map(lambda row: _load(row["path"], model), chunk))
            heats = _heats(model, loaded, chunk, root)
            indices = range(start, start + len(chunk))
            rows += pool.map(
                lambda i, row, item, heat: _report_row(assets, i, row, item, heat),
                indices, chunk, loaded, heats,
            )  # fmt: skip
    rows += [_row(row) for row in stats.error_rows]
    report = root / REPORT_NAME
    write_report(
        report,
        rows,
        title=title,
        threshold=threshold,
        model_version=model.version_id,
        assets_dir_name=ASSETS_NAME,
    )
    return report


def _load(path: str, model: Any) -> Loaded:
    try:
        image = read_image(path)
        return image, model.prepare(image)
    except Exception:  # changed or removed since it was scored: listed without pictures
        return None


def _heats(
    model: Any, loaded: list[Loaded], rows: list[Row], root: Path
) -> list[np.ndarray | None]:
    """Each image's anomaly map over the model's map scale (0..1 where it matters), or
    None (a classifier, or an image that could not be read again). A heatmap the run saved
    is read back; only the other images are scored again."""
    if model.task != ANOMALY_DETECTION:
        return [None] * len(loaded)
    saved = [_saved_heat(root, row) for row in rows]
    todo = [item for item, heat in zip(loaded, saved, strict=True) if item and heat is None]
    raws = iter(model.infer([units for _, units in todo]) if todo else [])
    return [
        heat
        if heat is not None or item is None
        else model.score_map(next(raws))[1] / model.map_scale
        for item, heat in zip(loaded, saved, strict=True)
    ]


def _saved_heat(root: Path, row: Row) -> np.ndarray | None:
    """The heatmap PNG the run wrote for `row` (pixel = map / map scale x 255) as 0..1,
    or None when there is none (or it is gone)."""
    if not row.get("heatmap"):
        return None
    try:
        with Image.open(root / str(row["heatmap"])) as png:
            return np.asarray(png.convert("L"), dtype=np.float32) / 255
    except OSError:
        return None


def _report_row(
    assets: Path, index: int, row: Row, item: Loaded, heat: np.ndarray | None
) -> InspectionRow:
    out = _row(row)
    if item is not None:
        thumb, over = save_images(item[0], heat, assets, asset_base(index, row["path"]))
        out.thumbnail = f"{ASSETS_NAME}/{thumb.name}"
        out.overlay = f"{ASSETS_NAME}/{over.name}" if over is not None else None
    return out


def _row(row: Row) -> InspectionRow:
    return InspectionRow(
        path=row["path"],
        name=Path(row["path"]).name,
        score=row["score"],
        threshold=row["threshold"],
        is_anomaly=row["is_anomaly"],
        label=row["label"],
        width=row["width"],
        height=row["height"],
        error=row["error"],
    )

"""Inspection results as files a quality engineer opens: heatmap overlays and thumbnails,
one HTML report (inline CSS and SVG, images linked relatively from a folder beside it, no
external resources, so it opens offline and stays small with thousands of rows) and a CSV.

torch-free: PIL, numpy and the standard library only (the CLI's inspection and batch
inspection share it). The heatmap colouring itself is `modelfab.imaging.overlay`.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import html
import io
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from PIL import Image

from modelfab.errors import ModelfabError
from modelfab.imaging import overlay, to_rgb

THUMB_SIDE = 256
"""Long side, in pixels, of the thumbnails of the originals."""
OVERLAY_SIDE = 768
"""Long side, in pixels, of the saved overlays (the report shows them at thumbnail size and
links to them)."""
JPEG_QUALITY = 85

CSV_COLUMNS = (
    "path", "name", "verdict", "score", "threshold", "is_anomaly", "label",
    "width", "height", "overlay", "thumbnail", "error",
)  # fmt: skip


@dataclass
class InspectionRow:
    """One inspected image. Paths of images are relative to the report, "/"-separated."""

    path: str
    """The file as the user named it (or as found under a folder they named)."""
    name: str
    score: float | None = None
    threshold: float | None = None
    is_anomaly: bool | None = None
    """None for a classifier, or a detector with no threshold."""
    label: str | None = None
    width: int | None = None
    height: int | None = None
    overlay: str | None = None
    thumbnail: str | None = None
    error: str | None = None
    """Why the image has no score (the server's message); None when it was scored."""

    @property
    def verdict(self) -> str:
        """One of "error", "anomaly", "good", else the label (a classifier) or "-"."""
        if self.error is not None:
            return "error"
        if self.is_anomaly is not None:
            return "anomaly" if self.is_anomaly else "good"
        return self.label or "-"


# -- heatmaps and images --------------------------------------------------------------------
def decode_heatmap(obj: Mapping[str, Any]) -> np.ndarray:
    """The float32 (H, W) map in [0, 1] of a predict answer's "heatmap" object (a base64
    8-bit greyscale PNG; pixel 255 is the model's `scale`).

    Raises ModelfabError code "invalid_heatmap" (param "heatmap") when `obj` is not one.
    """
    if not isinstance(obj, Mapping):
        raise _bad_heatmap(f"expected an object, not {type(obj).__name__}")
    data = obj.get("data")
    if obj.get("format") != "png" or obj.get("encoding") != "base64" or not isinstance(data, str):
        raise _bad_heatmap('expected {"format": "png", "encoding": "base64", "data": ...}')
    try:
        with Image.open(io.BytesIO(base64.b64decode(data, validate=True)), formats=["PNG"]) as img:
            grey = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    except Exception as exc:  # base64 and PNG decoders fail in many ways on bad data
        raise _bad_heatmap(f"{type(exc).__name__}: {exc}") from exc
    expected = (obj.get("height"), obj.get("width"))
    if None not in expected and grey.shape != expected:
        raise _bad_heatmap(f"the PNG is {grey.shape[1]}x{grey.shape[0]}, not the stated size")
    return grey


def _bad_heatmap(why: str) -> ModelfabError:
    return ModelfabError(
        f"the answer's heatmap cannot be read ({why}); is the endpoint's model an anomaly "
        "detector served by this modelfab version?",
        param="heatmap",
        code="invalid_heatmap",
    )


def asset_base(index: int, name: str) -> str:
    """A file-name-safe, unique (by `index`) base name for the images of file `name`."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._")[:60]
    return f"{index:05d}-{stem or 'image'}"


def save_images(
    image: Image.Image,
    heat: np.ndarray | None,
    folder: Path,
    base: str,
    *,
    thumb_side: int = THUMB_SIDE,
    overlay_side: int = OVERLAY_SIDE,
) -> tuple[Path, Path | None]:
    """Write `<base>.jpg` (a thumbnail of `image`) and, when `heat` is given,
    `<base>-heat.jpg` (its overlay, at most `overlay_side` px long) into `folder`, which
    must exist. Returns both paths (the overlay's None without `heat`). Raises OSError."""
    rgb = to_rgb(image)
    thumb = _shrunk(rgb, thumb_side)
    thumb_path = folder / f"{base}.jpg"
    thumb.save(thumb_path, quality=JPEG_QUALITY)
    if heat is None:
        return thumb_path, None
    overlay_path = folder / f"{base}-heat.jpg"
    overlay(_shrunk(rgb, overlay_side), heat).save(overlay_path, quality=JPEG_QUALITY)
    return thumb_path, overlay_path


def _shrunk(img: Image.Image, side: int) -> Image.Image:
    scale = side / max(img.size)
    if scale >= 1:
        return img
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.Resampling.BILINEAR)


# -- CSV ------------------------------------------------------------------------------------
def write_csv(path: Path, rows: Iterable[InspectionRow]) -> None:
    """One line per row with `CSV_COLUMNS`, in the given order; missing values are empty,
    booleans "true"/"false", floats in full precision. Text that a spreadsheet would run
    as a formula (=, +, -, @ first) gets a leading apostrophe. Raises OSError."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow(_csv_cell(_field(row, col)) for col in CSV_COLUMNS)


def _field(row: InspectionRow, column: str) -> object:
    return row.verdict if column == "verdict" else getattr(row, column)


def _csv_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


# -- HTML -----------------------------------------------------------------------------------
_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#222}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.meta{color:#555}.counts{display:flex;gap:12px;margin:14px 0;flex-wrap:wrap}
.count{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:90px}
.count b{display:block;font-size:22px}
.count.anomaly b{color:#c62828}.count.good b{color:#2e7d32}.count.error b{color:#ef6c00}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid #eee;padding:6px 8px;text-align:left;vertical-align:middle}
th{background:#fafafa;position:sticky;top:0}
td img{max-width:256px;max-height:256px;display:block}
.path{word-break:break-all;max-width:360px}.dim{color:#777;font-size:12px}
.bar{background:#eee;height:6px;width:140px;border-radius:3px;margin-top:4px}
.bar span{display:block;height:6px;border-radius:3px;background:#1565c0}
tr.anomaly .bar span{background:#c62828}tr.good .bar span{background:#2e7d32}
.verdict{padding:2px 8px;border-radius:10px;font-weight:600;background:#e3f2fd;color:#0d47a1}
.verdict.anomaly{background:#ffebee;color:#b71c1c}.verdict.good{background:#e8f5e9;color:#1b5e20}
.verdict.error{background:#fff3e0;color:#e65100}
svg text{font:11px sans-serif;fill:#444}
"""


def write_report(
    path: Path,
    rows: Sequence[InspectionRow],
    *,
    title: str,
    threshold: float | None,
    model_version: str | None,
    assets_dir_name: str,
) -> None:
    """Write one self-contained HTML file: counts, threshold and model version; an SVG
    histogram of the scores with the threshold line; the scored rows by score, highest
    first (thumbnail, overlay, score bar, verdict); the errors last. Every string is
    escaped; images are linked from `assets_dir_name/` beside `path`, never inlined.
    Raises OSError."""
    scored = sorted((r for r in rows if r.error is None), key=_by_score)
    errors = [r for r in rows if r.error is not None]
    parts = [
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        _header(rows, title=title, threshold=threshold, model_version=model_version),
        "<h2>Scores</h2>",
        histogram_svg([r.score for r in scored if r.score is not None], threshold),
        _table(scored),
        _errors(errors),
        f"<p class='dim'>Images: {_e(assets_dir_name)}/ beside this file.</p></body></html>\n",
    ]
    path.write_text("\n".join(parts), encoding="utf-8")


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _by_score(row: InspectionRow) -> tuple[bool, float, str]:
    return (row.score is None, -(row.score or 0.0), row.path)


def _header(
    rows: Sequence[InspectionRow], *, title: str, threshold: float | None, model_version: str | None
) -> str:
    counts = "".join(
        f"<div class='count {_e(name)}'><b>{n}</b>{_e(_plural(name))}</div>"
        for name, n in _count_boxes(rows)
    )
    when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    thr = _num(threshold) if threshold is not None else "none (not calibrated)"
    return (
        f"<h1>{_e(title)}</h1><div class='meta'>model version <b>{_e(model_version or '-')}</b>"
        f" &middot; threshold <b>{_e(thr)}</b> &middot; written {_e(when)}</div>"
        f"<div class='counts'>{counts}</div>"
    )


_FIXED = ("anomaly", "good", "error")


def _count_boxes(rows: Sequence[InspectionRow]) -> list[tuple[str, int]]:
    """(verdict, count): images, anomalies and good (always, unless the rows are a
    classifier's labels), each label, errors."""
    verdicts = Counter(r.verdict for r in rows)
    labels = sorted((v, n) for v, n in verdicts.items() if v not in _FIXED)
    fixed = [(v, verdicts[v]) for v in ("anomaly", "good") if verdicts[v] or not labels]
    return [("images", len(rows)), *fixed, *labels, ("error", verdicts["error"])]


def _plural(name: str) -> str:
    names = {"anomaly": "anomalies", "good": "good", "error": "errors", "-": "not judged"}
    return names.get(name, name)


def _table(rows: Sequence[InspectionRow]) -> str:
    if not rows:
        return "<p>No image was scored.</p>"
    top = max((r.score for r in rows if r.score is not None), default=0.0)
    body = "".join(_row(i, r, top) for i, r in enumerate(rows, 1))
    return (
        "<h2>Images, highest score first</h2><table><thead><tr><th>#</th><th>image</th>"
        "<th>heatmap</th><th>file</th><th>score</th><th>verdict</th></tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


def _row(rank: int, row: InspectionRow, top: float) -> str:
    width = 0.0 if row.score is None or top <= 0 else max(0.0, min(1.0, row.score / top))
    size = f"{row.width}&times;{row.height}" if row.width and row.height else ""
    return (
        f"<tr class='{_e(row.verdict)}'><td>{rank}</td><td>{_img(row.thumbnail)}</td>"
        f"<td>{_img(row.overlay, link=True)}</td>"
        f"<td class='path'>{_e(row.path)}<div class='dim'>{size}</div></td>"
        f"<td>{_num(row.score)}<div class='bar'><span style='width:{width * 100:.1f}%'>"
        f"</span></div></td><td><span class='verdict {_e(row.verdict)}'>"
        f"{_e(row.verdict)}</span></td></tr>"
    )


def _img(rel: str | None, *, link: bool = False) -> str:
    if rel is None:
        return "<span class='dim'>-</span>"
    url = _e(quote(rel))
    tag = f"<img src='{url}' loading='lazy' alt=''>"
    return f"<a href='{url}'>{tag}</a>" if link else tag


def _errors(rows: Sequence[InspectionRow]) -> str:
    if not rows:
        return ""
    items = "".join(
        f"<tr><td class='path'>{_e(r.path)}</td><td>{_e(r.error)}</td></tr>"
        for r in sorted(rows, key=lambda r: r.path)
    )
    return (
        f"<h2>Errors ({len(rows)})</h2><table><thead><tr><th>file</th><th>why</th></tr>"
        f"</thead><tbody>{items}</tbody></table>"
    )


def histogram_svg(
    scores: Sequence[float], threshold: float | None, *, width: int = 640, height: int = 170
) -> str:
    """An inline SVG histogram of `scores` (bins above the threshold red, below green) with
    a dashed line at `threshold` when it is given."""
    if not scores:
        return "<p class='dim'>No scores.</p>"
    ends = [*scores, *([threshold] if threshold is not None else [])]
    lo, hi = float(min(ends)), float(max(ends))
    hi = hi if hi > lo else lo + 1.0
    bins = max(10, min(40, math.ceil(math.sqrt(len(scores)))))
    counts, edges = np.histogram(np.asarray(scores, dtype=np.float64), bins=bins, range=(lo, hi))
    left, bottom, plot_w, plot_h = 40, height - 22, width - 50, height - 40

    def x(v: float) -> float:
        return left + (v - lo) / (hi - lo) * plot_w

    peak = max(int(counts.max()), 1)
    bars = [_bar(x(a), x(b), int(n), peak, bottom, plot_h, a, b, threshold)
            for n, a, b in zip(counts, edges[:-1], edges[1:], strict=True)]  # fmt: skip
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
             "role='img' aria-label='histogram of scores'>", *bars,
             f"<line x1='{left}' y1='{bottom}' x2='{left + plot_w}' y2='{bottom}' stroke='#999'/>",
             f"<text x='{left}' y='{height - 6}'>{_num(lo)}</text>",
             f"<text x='{left + plot_w}' y='{height - 6}' text-anchor='end'>{_num(hi)}</text>",
             f"<text x='4' y='{bottom - plot_h + 10}'>{peak}</text>"]  # fmt: skip
    if threshold is not None:
        tx = x(threshold)
        parts += [f"<line x1='{tx:.1f}' y1='{bottom - plot_h - 6}' x2='{tx:.1f}' y2='{bottom}' "
                  "stroke='#c62828' stroke-width='2' stroke-dasharray='5,3' class='threshold'/>",
                  f"<text x='{tx + 4:.1f}' y='{bottom - plot_h + 2}' fill='#c62828'>"
                  f"threshold {_num(threshold)}</text>"]  # fmt: skip
    return "".join([*parts, "</svg>"])


def _bar(
    x0: float, x1: float, n: int, peak: int, bottom: float, plot_h: float,
    a: float, b: float, threshold: float | None,
) -> str:  # fmt: skip
    h = plot_h * n / peak
    hot = threshold is not None and (a + b) / 2 >= threshold
    colour = "#e57373" if hot else ("#9e9e9e" if threshold is None else "#81c784")
    return (
        f"<rect x='{x0 + 0.5:.1f}' y='{bottom - h:.1f}' width='{max(x1 - x0 - 1, 1):.1f}' "
        f"height='{h:.1f}' fill='{colour}'><title>{_num(a)} to {_num(b)}: {n}</title></rect>"
    )

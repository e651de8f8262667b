"""Scoring image files with an endpoint, as a quality engineer's inspection: a verdict and
a score per image, heatmap overlays, an HTML report and a CSV (`modelfab inspect` is its
shell).

The work is `score_images(predict, paths, ...)`, which takes any predict function (the
SDK's `Client.predict` in the command, a fake in tests): batches run `concurrency` at a
time, a 429 is retried with a backoff, and a file the server cannot read becomes an error
row instead of stopping the run. It talks to the platform only through `modelfab.client`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from modelfab.apps.inspection.report import (
    InspectionRow,
    asset_base,
    decode_heatmap,
    save_images,
    write_csv,
    write_report,
)
from modelfab.client import ApiError
from modelfab.errors import InvalidRequest, ModelfabError
from modelfab.imaging import IMAGE_SUFFIXES

logger = logging.getLogger(__name__)

PredictFn = Callable[[list[Path]], dict[str, Any]]
"""Image files -> the endpoint's predict answer for them; raises ApiError."""
WarnFn = Callable[[Path, Exception], None]
"""Told of a scored file whose pictures could not be made (its score stands)."""
Batch = list[tuple[int, Path]]
"""(position in the run, file) pairs sent in one request."""

RATE_LIMIT_RETRIES = 6


@dataclass
class Inspection:
    """What `score_images` found: one row per file, in the order of the files given."""

    rows: list[InspectionRow]
    model_version: str | None = None
    threshold: float | None = None
    task: str | None = None

    @property
    def errors(self) -> list[InspectionRow]:
        return [r for r in self.rows if r.error is not None]

    def top(self, n: int) -> tuple[str, list[InspectionRow]]:
        """("top anomalies", the `n` highest-scoring anomalies) or, when there is none,
        ("top scores", the `n` highest scores)."""
        scored = (r for r in self.rows if r.score is not None)
        ranked = sorted(scored, key=lambda r: -(r.score or 0.0))
        anomalies = [r for r in ranked if r.is_anomaly]
        if anomalies:
            return "top anomalies", anomalies[:n]
        return "top scores", ranked[:n]


@dataclass
class _Answer:
    """The answer-wide fields of the first answer seen."""

    fields: dict[str, Any] = field(default_factory=dict)


# -- finding files ----------------------------------------------------------------------------
def find_images(paths: Sequence[Path]) -> list[Path]:
    """The files named (whatever their suffix) and the image files (`IMAGE_SUFFIXES`) under
    the folders named, recursively and sorted; each once, in the order given.

    Raises InvalidRequest (param "PATHS") when a path does not exist or no image is found.
    """
    found: dict[Path, None] = {}
    for path in paths:
        if path.is_dir():
            under = (p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            found.update(dict.fromkeys(sorted(p for p in under if p.is_file())))
        elif path.is_file():
            found[path] = None
        else:
            raise InvalidRequest(f"{path} does not exist", param="PATHS")
    if not found:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise InvalidRequest(
            f"no image files ({suffixes}) in {', '.join(str(p) for p in paths)}",
            param="PATHS",
        )
    return list(found)


# -- scoring ------------------------------------------------------------------------------------
def score_images(
    predict: PredictFn,
    paths: Sequence[Path],
    *,
    batch_size: int = 8,
    concurrency: int = 4,
    assets: Path | None = None,
    on_done: Callable[[int], None] | None = None,
    on_warning: WarnFn | None = None,
) -> Inspection:
    """Score `paths` with `predict`, `batch_size` files per call and `concurrency` calls at
    a time; `on_done(n)` is called (from worker threads) as n more files are done.

    A batch refused for one of its files (HTTP 422 invalid_image, 413, or a file that cannot
    be read here) is sent again file by file; a file refused alone becomes an error row. 429
    rate_limited is retried with a backoff. With `assets` (an existing folder), writes every
    scored image's thumbnail and overlay there (the rows name them as "<folder>/<file>");
    a scored file whose pictures cannot be made goes to `on_warning` (default: logged).

    Raises the first other ModelfabError (ApiError: 401, 404, 503...) after cancelling the
    batches not started yet; raises ModelfabError code "bad_answer" for an answer that does
    not hold one item per file.
    """
    indexed = list(enumerate(paths))
    batches = [indexed[i : i + batch_size] for i in range(0, len(indexed), batch_size)]
    answer = _Answer()
    done = on_done or (lambda _: None)
    warn = on_warning or _log_warning

    def run(batch: Batch) -> list[tuple[int, InspectionRow]]:
        rows = [(i, _row(p, item, error, i, assets, warn)) for i, p, item, error in
                _predict_isolating(predict, batch, answer)]  # fmt: skip
        done(len(batch))
        return rows

    results = _run_all(run, batches, concurrency)
    rows = [row for _, row in sorted(results, key=lambda pair: pair[0])]
    meta = answer.fields
    threshold = meta.get("threshold")
    return Inspection(
        rows,
        model_version=meta.get("model_version"),
        threshold=None if threshold is None else float(threshold),
        task=meta.get("task"),
    )


def _log_warning(path: Path, exc: Exception) -> None:
    logger.warning("no pictures of %s: %s", path, exc)


def _run_all(
    run: Callable[[Batch], list[tuple[int, InspectionRow]]], batches: list[Batch], workers: int
) -> list[tuple[int, InspectionRow]]:
    """`run` over every batch in a thread pool; the first exception cancels what has not
    started and is raised once the running batches end."""
    out: list[tuple[int, InspectionRow]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="inspect") as pool:
        futures: list[Future[list[tuple[int, InspectionRow]]]] = [
            pool.submit(run, b) for b in batches
        ]
        try:
            finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        except BaseException:  # Ctrl-C while waiting
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        failed = next((f for f in finished if f.exception() is not None), None)
        if failed is not None:
            pool.shutdown(wait=True, cancel_futures=True)
            raise failed.exception()  # type: ignore[misc]  # not None: checked above
        for future in futures:
            out.extend(future.result())
    return out


def _predict_isolating(
    predict: PredictFn, batch: Batch, answer: _Answer
) -> list[tuple[int, Path, dict[str, Any] | None, str | None]]:
    """(index, path, answer item or None, error or None) for each file of `batch`."""
    try:
        got = _call(predict, [p for _, p in batch])
    except (ApiError, OSError) as exc:
        if not _refuses_a_file(exc):
            raise
        if len(batch) == 1:
            message = exc.message if isinstance(exc, ApiError) else f"cannot read it: {exc}"
            return [(batch[0][0], batch[0][1], None, message)]
        return [out for one in batch for out in _predict_isolating(predict, [one], answer)]
    items = got.get("data")
    if not isinstance(items, list) or len(items) != len(batch):
        raise ModelfabError(
            f"the endpoint answered {len(items) if isinstance(items, list) else 'no'} items "
            f"for {len(batch)} images; is it a modelfab endpoint?",
            code="bad_answer",
        )
    if not answer.fields:
        answer.fields = {k: v for k, v in got.items() if k != "data"}
    items = sorted(items, key=lambda item: int(item.get("index", 0)))
    return [(i, p, item, None) for (i, p), item in zip(batch, items, strict=True)]


def _refuses_a_file(exc: Exception) -> bool:
    """True for errors that are about one file rather than the request or the endpoint."""
    if isinstance(exc, OSError):
        return True  # a local file we could not read
    assert isinstance(exc, ApiError)
    return (exc.status == 422 and exc.code == "invalid_image") or exc.status == 413


def _call(predict: PredictFn, paths: list[Path]) -> dict[str, Any]:
    """`predict(paths)`, retried with a backoff while the key's rate limit refuses it."""
    for attempt in range(RATE_LIMIT_RETRIES):
        try:
            return predict(paths)
        except ApiError as exc:
            if exc.code != "rate_limited" or attempt == RATE_LIMIT_RETRIES - 1:
                raise
            time.sleep(min(2.0, 0.1 * 2**attempt))
    raise AssertionError("unreachable")  # the loop returns or raises


def _row(
    path: Path,
    item: dict[str, Any] | None,
    error: str | None,
    index: int,
    assets: Path | None,
    warn: WarnFn,
) -> InspectionRow:
    """The row of one file; writes its thumbnail and overlay into `assets` when given."""
    row = InspectionRow(path=str(path), name=path.name, error=error)
    if item is not None:
        score, threshold = item.get("score"), item.get("threshold")
        row.score = None if score is None else float(score)
        row.threshold = None if threshold is None else float(threshold)
        row.is_anomaly = item.get("is_anomaly")
        row.label = item.get("label")
    try:
        with Image.open(path) as img:
            row.width, row.height = img.size
            if assets is not None and item is not None:
                heat = decode_heatmap(item["heatmap"]) if item.get("heatmap") else None
                thumb, over = save_images(img, heat, assets, asset_base(index, path.name))
                row.thumbnail = f"{assets.name}/{thumb.name}"
                row.overlay = None if over is None else f"{assets.name}/{over.name}"
    except (OSError, ModelfabError) as exc:  # the score stands; only the pictures are missing
        if row.error is None:
            warn(path, exc)
    return row


# -- what is written and answered ---------------------------------------------------------------
@dataclass(frozen=True)
class Outputs:
    """Where an inspection is written: an HTML report with its images in `assets`
    (<stem>_files/ beside it), and a CSV (by default <stem>.csv beside the report)."""

    report: Path | None = None
    csv: Path | None = None
    assets: Path | None = None

    @classmethod
    def beside(cls, report: Path | None, csv: Path | None) -> Outputs:
        """The outputs for `--report` and `--csv`, defaults filled in; creates nothing."""
        if report is None:
            return cls(csv=csv)
        assets = report.parent / f"{report.stem}_files"
        return cls(report=report, csv=csv or report.with_suffix(".csv"), assets=assets)

    def prepare(self) -> None:
        """Create the assets folder (and the report's folder). Raises OSError."""
        if self.assets is not None:
            self.assets.mkdir(parents=True, exist_ok=True)

    def write(self, result: Inspection, *, title: str) -> None:
        """Write the CSV and the report named. Raises OSError."""
        if self.csv is not None:
            write_csv(self.csv, result.rows)
        if self.report is not None and self.assets is not None:
            write_report(self.report, result.rows, title=title, threshold=result.threshold,
                         model_version=result.model_version,
                         assets_dir_name=self.assets.name)  # fmt: skip


def counts(rows: Sequence[InspectionRow]) -> dict[str, int]:
    """images, scored, anomalies, good and errors among `rows`."""
    verdicts = [r.verdict for r in rows]
    return {
        "images": len(rows),
        "scored": sum(r.error is None for r in rows),
        "anomalies": verdicts.count("anomaly"),
        "good": verdicts.count("good"),
        "errors": verdicts.count("error"),
    }


def inspection_json(result: Inspection, endpoint: str, outputs: Outputs) -> dict[str, Any]:
    """The `--output json` answer of an inspection: counts, files written, one item per row."""
    return {
        "object": "inspection",
        "endpoint": endpoint,
        "model_version": result.model_version,
        "task": result.task,
        "threshold": result.threshold,
        "counts": counts(result.rows),
        "report": None if outputs.report is None else str(outputs.report),
        "csv": None if outputs.csv is None else str(outputs.csv),
        "data": [{**asdict(r), "verdict": r.verdict} for r in result.rows],
    }

"""`modelfab inspect`: score image files and folders with an endpoint and write what a
quality engineer reads: a verdict and a score per image, heatmap overlays, an HTML report
and a CSV.

The work is `score_images(predict, paths, ...)`, which takes any predict function (the
SDK's in the command, a fake in tests): batches run `concurrency` at a time, and a file the
server cannot read becomes an error row instead of stopping the run."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from PIL import Image
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from modelfab.cli.common import client
from modelfab.cli.output import Output, OutputOpt, console, emit_json, err_console, table
from modelfab.client import ApiError
from modelfab.data.tasks import IMAGE_SUFFIXES
from modelfab.errors import ModelfabError
from modelfab.reports.inspection import (
    InspectionRow,
    asset_base,
    decode_heatmap,
    save_images,
    write_csv,
    write_report,
)

PredictFn = Callable[[list[Path]], dict[str, Any]]
"""Image files -> the endpoint's predict answer for them; raises ApiError."""
Batch = list[tuple[int, Path]]
"""(position in the run, file) pairs sent in one request."""

RATE_LIMIT_RETRIES = 6
TOP_SHOWN = 10


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


@dataclass
class _Answer:
    """The answer-wide fields of the first answer seen."""

    fields: dict[str, Any] = field(default_factory=dict)


# -- finding files ----------------------------------------------------------------------------
def find_images(paths: Sequence[Path]) -> list[Path]:
    """The files named (whatever their suffix) and the image files (`IMAGE_SUFFIXES`) under
    the folders named, recursively and sorted; each once, in the order given.

    Raises typer.BadParameter (exit 2) when a path does not exist or no image is found.
    """
    found: dict[Path, None] = {}
    for path in paths:
        if path.is_dir():
            under = (p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            found.update(dict.fromkeys(sorted(p for p in under if p.is_file())))
        elif path.is_file():
            found[path] = None
        else:
            raise typer.BadParameter(f"{path} does not exist", param_hint="PATHS")
    if not found:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise typer.BadParameter(
            f"no image files ({suffixes}) in {', '.join(str(p) for p in paths)}",
            param_hint="PATHS",
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
) -> Inspection:
    """Score `paths` with `predict`, `batch_size` files per call and `concurrency` calls at
    a time; `on_done(n)` is called (from worker threads) as n more files are done.

    A batch refused for one of its files (HTTP 422 invalid_image, 413, or a file that cannot
    be read here) is sent again file by file; a file refused alone becomes an error row. 429
    rate_limited is retried with a backoff. With `assets` (an existing folder), writes every
    scored image's thumbnail and overlay there (the rows name them as "<folder>/<file>").

    Raises the first other ModelfabError (ApiError: 401, 404, 503...) after cancelling the
    batches not started yet; raises ModelfabError code "bad_answer" for an answer that does
    not hold one item per file.
    """
    indexed = list(enumerate(paths))
    batches = [indexed[i : i + batch_size] for i in range(0, len(indexed), batch_size)]
    answer = _Answer()
    done = on_done or (lambda _: None)

    def run(batch: Batch) -> list[tuple[int, InspectionRow]]:
        rows = [(i, _row(p, item, error, i, assets)) for i, p, item, error in
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
    path: Path, item: dict[str, Any] | None, error: str | None, index: int, assets: Path | None
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
            err_console.print(f"[yellow]warning[/yellow]: no pictures of {escape(str(path))}: "
                              f"{escape(str(exc))}", highlight=False)  # fmt: skip
    return row


# -- the command ------------------------------------------------------------------------------
class RateColumn(ProgressColumn):
    """Images per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- images/s" if speed is None else f"{speed:.1f} images/s")


@contextmanager
def _progress(total: int) -> Iterator[Callable[[int], None]]:
    columns = (TextColumn("inspecting"), BarColumn(), MofNCompleteColumn(), RateColumn(),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task("inspect", total=total)
        yield lambda n: progress.advance(task, n)


def inspect(
    endpoint: Annotated[
        str, typer.Argument(help="The endpoint: an anomaly detector or classifier")
    ],
    paths: Annotated[
        list[Path], typer.Argument(help="Image files, or folders searched recursively")
    ],
    report: Annotated[
        Path | None,
        typer.Option(help="Write an HTML report here; its images go to <stem>_files/ beside it"),
    ] = None,
    csv_path: Annotated[
        Path | None,
        typer.Option("--csv", help="Write a CSV here (default with --report: <stem>.csv)"),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(help="Score from which an image is an anomaly (default: the model's)"),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=64, help="Images per request")] = 8,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Requests in flight")] = 4,
    output: OutputOpt = Output.table,
) -> None:
    """Score images with an endpoint: a verdict, a score and a heatmap per image, an HTML
    report and a CSV. Exits 1 when some files could not be scored (the report lists them)."""
    files = find_images(paths)
    assets = None
    if report is not None:
        assets = report.parent / f"{report.stem}_files"
        assets.mkdir(parents=True, exist_ok=True)
        csv_path = csv_path or report.with_suffix(".csv")
    with client() as c, _progress(len(files)) as advance:

        def predict(batch: list[Path]) -> dict[str, Any]:
            return c.predict(
                endpoint, list(batch), top_k=1, threshold=threshold, heatmap=assets is not None
            ).model_dump(mode="json")

        result = score_images(predict, files, batch_size=batch_size, concurrency=concurrency,
                              assets=assets, on_done=advance)  # fmt: skip
    if result.threshold is None:
        result.threshold = threshold
    _write(result, endpoint, report, csv_path, assets)
    if output is Output.json:
        emit_json(_as_json(result, endpoint, report, csv_path))
    else:
        _summary(result, report, csv_path, assets)
    if result.errors:
        raise typer.Exit(1)


def _write(
    result: Inspection,
    endpoint: str,
    report: Path | None,
    csv_path: Path | None,
    assets: Path | None,
) -> None:
    if csv_path is not None:
        write_csv(csv_path, result.rows)
    if report is not None and assets is not None:
        write_report(report, result.rows, title=f"Inspection with {endpoint}",
                     threshold=result.threshold, model_version=result.model_version,
                     assets_dir_name=assets.name)  # fmt: skip


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


def _as_json(
    result: Inspection, endpoint: str, report: Path | None, csv_path: Path | None
) -> dict[str, Any]:
    return {
        "object": "inspection",
        "endpoint": endpoint,
        "model_version": result.model_version,
        "task": result.task,
        "threshold": result.threshold,
        "counts": counts(result.rows),
        "report": None if report is None else str(report),
        "csv": None if csv_path is None else str(csv_path),
        "data": [{**asdict(r), "verdict": r.verdict} for r in result.rows],
    }


def _summary(
    result: Inspection, report: Path | None, csv_path: Path | None, assets: Path | None
) -> None:
    rows = result.rows
    if report is None and csv_path is None:
        _rows_table(None, rows)
    else:
        ranked = sorted((r for r in rows if r.score is not None), key=lambda r: -(r.score or 0.0))
        anomalies = [r for r in ranked if r.is_anomaly] or ranked
        _rows_table("top anomalies" if anomalies is not ranked else "top scores",
                    anomalies[:TOP_SHOWN])  # fmt: skip
    n = counts(rows)
    thr = "none" if result.threshold is None else f"{result.threshold:.4g}"
    console.print(
        f"scored {n['scored']} of {n['images']} images with {result.model_version or '-'} "
        f"(threshold {thr}): {n['anomalies']} anomalies, {n['good']} good, {n['errors']} errors",
        highlight=False,
        soft_wrap=True,
    )
    for row in result.errors[:TOP_SHOWN]:
        err_console.print(f"[red]error[/red] {escape(row.path)}: {escape(row.error or '')}",
                          highlight=False, soft_wrap=True)  # fmt: skip
    if report is not None and assets is not None:
        console.print(f"report: {escape(str(report))} (images in {escape(str(assets))})",
                      highlight=False, soft_wrap=True)  # fmt: skip
    if csv_path is not None:
        console.print(f"csv: {escape(str(csv_path))}", highlight=False, soft_wrap=True)


def _rows_table(title: str | None, rows: Sequence[InspectionRow]) -> None:
    table(title, ("file", "verdict", "score", "label"),
          [[r.path, r.verdict, None if r.score is None else f"{r.score:.4g}", r.label]
           for r in rows])  # fmt: skip

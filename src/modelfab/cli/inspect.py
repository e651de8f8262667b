"""`modelfab inspect`: the shell of the inspection application (`modelfab.apps.inspection`)
over the SDK: arguments, the progress bar, the summary printed and the exit code. Scoring,
batching, back-off, the report and the CSV are the application's."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
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

from modelfab.apps.inspection.report import InspectionRow
from modelfab.apps.inspection.scoring import (
    Inspection,
    Outputs,
    counts,
    find_images,
    inspection_json,
    score_images,
)
from modelfab.cli.common import client
from modelfab.cli.output import Output, OutputOpt, console, emit_json, err_console, table
from modelfab.errors import InvalidRequest

TOP_SHOWN = 10


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


def _warn(path: Path, exc: Exception) -> None:
    err_console.print(f"[yellow]warning[/yellow]: no pictures of {escape(str(path))}: "
                      f"{escape(str(exc))}", highlight=False)  # fmt: skip


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
    try:
        files = find_images(paths)
    except InvalidRequest as exc:
        raise typer.BadParameter(exc.message, param_hint=exc.param) from exc
    outputs = Outputs.beside(report, csv_path)
    outputs.prepare()
    with client() as c, _progress(len(files)) as advance:

        def predict(batch: list[Path]) -> dict[str, Any]:
            # heatmap None (a detector's default: drawn) rather than True: a classifier
            # refuses heatmap=true, and which kind answers is only known from the answer.
            answer = c.predict(endpoint, list(batch), top_k=1, threshold=threshold,
                               heatmap=None if outputs.assets is not None else False)  # fmt: skip
            return answer.model_dump(mode="json")

        result = score_images(predict, files, batch_size=batch_size, concurrency=concurrency,
                              assets=outputs.assets, on_done=advance,
                              on_warning=_warn)  # fmt: skip
    if result.threshold is None:
        result.threshold = threshold
    outputs.write(result, title=f"Inspection with {endpoint}")
    if output is Output.json:
        emit_json(inspection_json(result, endpoint, outputs))
    else:
        _summary(result, outputs)
    if result.errors:
        raise typer.Exit(1)


def _summary(result: Inspection, outputs: Outputs) -> None:
    rows = result.rows
    if outputs.report is None and outputs.csv is None:
        _rows_table(None, rows)
    else:
        _rows_table(*result.top(TOP_SHOWN))
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
    if outputs.report is not None and outputs.assets is not None:
        console.print(f"report: {escape(str(outputs.report))} (images in "
                      f"{escape(str(outputs.assets))})", highlight=False,
                      soft_wrap=True)  # fmt: skip
    if outputs.csv is not None:
        console.print(f"csv: {escape(str(outputs.csv))}", highlight=False, soft_wrap=True)


def _rows_table(title: str | None, rows: Sequence[InspectionRow]) -> None:
    table(title, ("file", "verdict", "score", "label"),
          [[r.path, r.verdict, None if r.score is None else f"{r.score:.4g}", r.label]
           for r in rows])  # fmt: skip

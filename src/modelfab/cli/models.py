"""`modelfab models`: registered versions, aliases, lineage, and exporting artifacts."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from modelfab.cli.common import client, format_size
from modelfab.cli.output import Output, OutputOpt, console, show, table, when
from modelfab.schemas.models import Artifact

app = typer.Typer(
    help="Models: versions registered by the jobs that trained them.", no_args_is_help=True
)

REF_HELP = "NAME (latest version), NAME:VERSION or NAME@ALIAS"
SHOW_FIELDS = (
    "ref", "task", "aliases", "versions", "job_id", "recipe", "recipe_version", "base_model",
    "metrics", "params", "created_at",
)  # fmt: skip
LABELS = "labels.json"


class ExportFormat(StrEnum):
    onnx = "onnx"
    pytorch = "pytorch"


@app.command("list")
def list_(output: OutputOpt = Output.table) -> None:
    with client() as c:
        rows = c.list_models()
    if output is Output.json:
        show({"object": "list", "data": rows}, output)
        return
    table(
        None,
        ("name", "task", "latest", "versions", "aliases", "created"),
        [
            [
                r.name,
                r.task,
                r.latest_version,
                r.versions,
                _aliases(r.aliases),
                when(r.created_at),
            ]
            for r in rows
        ],
    )


@app.command("show")
def show_(
    ref: Annotated[str, typer.Argument(help=REF_HELP)], output: OutputOpt = Output.table
) -> None:
    with client() as c:
        version = c.get_model(ref)
    show(version, output, SHOW_FIELDS)
    if output is Output.table:
        _before_after(version.metrics)
        _beside_teacher(version.metrics)
        _samples(version.extra.get("samples"))
        _artifact_table(version.artifacts)


@app.command("compare")
def compare(
    refs: Annotated[list[str], typer.Argument(help=f"Two or more versions: {REF_HELP}")],
    output: OutputOpt = Output.table,
) -> None:
    """Versions side by side: task, base model, size and every metric (quality, tokens/s,
    parameters...), with each metric's ratio to the first version."""
    if len(refs) < 2:
        raise typer.BadParameter("give at least two versions to compare", param_hint="REFS")
    with client() as c:
        versions = [c.get_model(ref) for ref in refs]
    if output is Output.json:
        show({"object": "list", "data": versions}, output)
        return
    rows: list[list[object]] = [
        ["task", *(v.task for v in versions)],
        ["base model", *(v.base_model or "-" for v in versions)],
        ["recipe", *(v.recipe for v in versions)],
        ["size", *(format_size(sum(a.size_bytes for a in v.artifacts)) for v in versions)],
    ]
    names = sorted({k for v in versions for k, x in v.metrics.items() if _number(x)})
    for name in names:
        values = [v.metrics.get(name) for v in versions]
        first = values[0]
        cells = [_fmt(x) if _number(x) else "-" for x in values]
        if _number(first) and first:
            cells = [cells[0]] + [
                f"{cell} ({x / first:.2f}x)" if _number(x) else cell
                for cell, x in zip(cells[1:], values[1:], strict=True)
            ]
        rows.append([name, *cells])
    table(None, ("", *(v.ref for v in versions)), rows)


def _number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _fmt(x: object) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _before_after(metrics: dict[str, object]) -> None:
    """A metric measured before training too (`X_before` beside `X`): one row each."""
    rows = [
        [name, _fmt(metrics[f"{name}_before"]), _fmt(value)]
        for name, value in metrics.items()
        if f"{name}_before" in metrics and _number(value)
    ]
    if rows:
        table("held-out, before and after training", ("metric", "before", "after"), rows)


def _beside_teacher(metrics: dict[str, object]) -> None:
    """A distilled student's metric beside its teacher's (`teacher_X` beside `X`), with the
    ratio student / teacher."""
    rows = []
    for name, value in metrics.items():
        theirs = metrics.get(f"teacher_{name}")
        if _number(value) and _number(theirs):
            ratio = f"{value / theirs:.2f}x" if theirs else "-"  # type: ignore[operator]
            rows.append([name, _fmt(theirs), _fmt(value), ratio])
    if rows:
        table("beside the teacher", ("metric", "teacher", "this model", "ratio"), rows)


SAMPLE_COLUMNS = ("prompt", "expected", "before", "after", "teacher", "student")
"""The known fields of a sample answer, in the order shown: fine-tuning keeps the answers
before and after, distillation the teacher's and the student's."""


def _samples(samples: object) -> None:
    """Held-out prompts a chat model answered: before and after fine-tuning, or beside its
    teacher's answers when distilled. Only the fields the samples have are shown."""
    if not isinstance(samples, list) or not samples:
        return
    found = {k for s in samples if isinstance(s, dict) for k in s}
    columns = tuple(c for c in SAMPLE_COLUMNS if c in found)
    rows = [[str(s.get(c, "")) for c in columns] for s in samples if isinstance(s, dict)]
    table("sample answers (held out)", columns, rows)


@app.command("alias")
def alias(
    target: Annotated[str, typer.Argument(help="NAME:VERSION the alias should point at")],
    name: Annotated[str, typer.Argument(help="The alias, e.g. production")],
    output: OutputOpt = Output.table,
) -> None:
    """Point an alias at a version (creating it, or moving it from another version)."""
    model, _, number = target.partition(":")
    if not number.isdigit():
        raise typer.BadParameter(f"{target!r} is not NAME:VERSION", param_hint="TARGET")
    with client() as c:
        version = c.set_alias(model, name, int(number))
    if output is Output.json:
        show(version, output)
        return
    console.print(f"[green]{model}@{name}[/green] -> {version.ref}")


@app.command("lineage")
def lineage(
    ref: Annotated[str, typer.Argument(help=REF_HELP)], output: OutputOpt = Output.table
) -> None:
    """Where a version came from: dataset version, job, recipe, base model, code version."""
    with client() as c:
        show(c.model_lineage(ref), output, _LINEAGE_FIELDS)


_LINEAGE_FIELDS = (
    "model_version", "dataset", "job", "base_model", "params", "code_version", "endpoints",
)  # fmt: skip


@app.command("export")
def export(
    ref: Annotated[str, typer.Argument(help=REF_HELP)],
    format: Annotated[ExportFormat, typer.Option("--format", help="Which artifacts")],
    to: Annotated[Path, typer.Option("--to", help="Folder to write them to")],
    output: OutputOpt = Output.table,
) -> None:
    """Download the artifacts of one format (plus labels.json), checked against their sha256."""
    to.mkdir(parents=True, exist_ok=True)
    with client() as c:
        version = c.get_model(ref)
        wanted = [a for a in version.artifacts if a.format == format.value or a.name == LABELS]
        if not any(a.format == format.value for a in wanted):
            have = sorted({a.format for a in version.artifacts})
            console.print(
                f"[red]{version.ref} has no {format.value} artifact[/red] "
                f"(it has: {', '.join(have) or 'none'})"
            )
            raise typer.Exit(1)
        written = [
            {**a.model_dump(), "path": str(c.download_artifact(version.ref, a.name, to))}
            for a in wanted
        ]
    if output is Output.json:
        show({"object": "list", "model": version.ref, "data": written}, output)
        return
    for a in written:
        console.print(f"[green]wrote[/green] {a['path']}  sha256 {a['sha256'][:16]}")


def _aliases(aliases: dict[str, int]) -> str:
    return ", ".join(f"{a}->{n}" for a, n in aliases.items()) or "-"


def _artifact_table(artifacts: list[Artifact]) -> None:
    table(
        "artifacts",
        ("name", "format", "size_bytes", "sha256"),
        [[a.name, a.format, a.size_bytes, a.sha256[:16]] for a in artifacts],
    )

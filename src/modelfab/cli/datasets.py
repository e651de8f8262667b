from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from modelfab.cli.common import client
from modelfab.cli.output import Output, OutputOpt, console, piped, show, table, when
from modelfab.schemas.datasets import DatasetVersion
from modelfab.tasks import task_names

app = typer.Typer(help="Datasets: immutable, content-addressed versions.", no_args_is_help=True)

SHOW_FIELDS = (
    "ref",
    "task",
    "sha256",
    "file_count",
    "size_bytes",
    "versions",
    "created_at",
)


TASK_HELP = f"The dataset's task: {', '.join(task_names())}, or one a plugin registers"


@app.command("create")
def create(
    name: str,
    path: Annotated[
        Path,
        typer.Argument(
            help="A folder, or a .zip/.tar/.tar.gz of one; for chat, also one .jsonl or .json "
            "file (OpenAI messages, alpaca or sharegpt), converted on upload."
        ),
    ],
    task: Annotated[str, typer.Option(help=TASK_HELP)],
    output: OutputOpt = Output.table,
) -> None:
    """Validate and upload a dataset; the same content again gives the same version."""
    with client() as c, console.status(f"uploading and validating {path} ..."):
        version = c.create_dataset(name, path, task=task)
    if output is Output.json:
        show(version, output)
        return
    verb = "created" if version.created else "unchanged: same content as"
    console.print(f"[green]{verb}[/green] {version.ref}  sha256 {version.sha256[:16]}")
    show(version, output, ("file_count", "size_bytes"))
    show_stats(version)


@app.command("list")
def list_(output: OutputOpt = Output.table) -> None:
    with client() as c:
        rows = c.list_datasets()
    if output is Output.json:
        show({"object": "list", "data": rows}, output)
        return
    table(
        None,
        ("name", "task", "latest", "versions", "created"),
        [[r.name, r.task, r.latest_version, r.versions, when(r.created_at)] for r in rows],
    )


@app.command("show")
def show_(
    ref: Annotated[str, typer.Argument(help="NAME or NAME:VERSION")],
    output: OutputOpt = Output.table,
) -> None:
    with client() as c:
        version = c.get_dataset(ref)
    show(version, output, SHOW_FIELDS)
    if output is Output.table:
        show_stats(version)


def show_stats(version: DatasetVersion) -> None:
    """The version's stats, one line each (`key  value`, a dict as `k v, k v`)."""
    for key, value in version.stats.items():
        if key != "task":
            line = f"[bold]{key:>20}[/bold]  {escape(_compact(value))}"
            console.print(line, soft_wrap=piped())


def _compact(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_compact(v)}" for k, v in value.items())
    if value is None:
        return "-"
    return str(value)

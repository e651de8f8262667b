from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelfab.cli.common import client
from modelfab.cli.output import Output, OutputOpt, console, show, table, when
from modelfab.tasks import task_names

app = typer.Typer(help="Datasets: immutable, content-addressed versions.", no_args_is_help=True)

SHOW_FIELDS = (
    "ref",
    "task",
    "sha256",
    "file_count",
    "size_bytes",
    "stats",
    "versions",
    "created_at",
)


TASK_HELP = f"The dataset's task: {', '.join(task_names())}, or one a plugin registers"


@app.command("create")
def create(
    name: str,
    path: Annotated[Path, typer.Argument(help="A folder, or a .zip/.tar/.tar.gz of one.")],
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
    show(version, output, ("file_count", "size_bytes", "stats"))


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
        show(c.get_dataset(ref), output, SHOW_FIELDS)

"""`modelfab hub`: the foundation models recipes start from, and importing their weights."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelfab.cli.common import client
from modelfab.cli.output import Output, OutputOpt, console, show, table

app = typer.Typer(help="Hub: foundation models to fine-tune from.", no_args_is_help=True)


@app.command("list")
def list_(output: OutputOpt = Output.table) -> None:
    """Each model, whether it is usable offline here, and how (or what to run)."""
    with client() as c:
        rows = c.hub_list()
    if output is Output.json:
        show({"object": "list", "data": rows}, output)
        return
    table(
        None,
        ("id", "task", "arch", "params", "input", "licence", "available", "how"),
        [
            [
                r.id,
                r.task,
                r.arch,
                f"{r.params_m:g}M",
                r.input_size,
                r.licence,
                "yes" if r.available else "no",
                r.how,
            ]
            for r in rows
        ],
    )


@app.command("import")
def import_(
    model_id: Annotated[str, typer.Argument(help="Hub model id, e.g. resnet18")],
    file: Annotated[Path, typer.Argument(help="Its weights: a torch state dict (.pth)")],
    output: OutputOpt = Output.table,
) -> None:
    """Import weights for a hub model (admin key). Jobs check that they load."""
    with client() as c, console.status(f"uploading {file} ..."):
        entry = c.hub_import(model_id, file)
    if output is Output.json:
        show(entry, output)
        return
    console.print(f"[green]imported[/green] {entry.id}: {entry.how}")

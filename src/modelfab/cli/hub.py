"""`modelfab hub`: the foundation models recipes start from, and importing their weights."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelfab.cli.common import client
from modelfab.cli.output import Output, OutputOpt, console, show, table
from modelfab.schemas.hub import HubModel

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
                _input(r),
                r.licence,
                "yes" if r.available else "no",
                r.how,
            ]
            for r in rows
        ],
    )


def _input(row: HubModel) -> str:
    if row.input_size is not None:
        return f"{row.input_size}px"
    if row.context_length is not None:
        return f"{row.context_length} tok"
    return ""


@app.command("import")
def import_(
    model_id: Annotated[
        str,
        typer.Argument(help="A vision catalog id (e.g. resnet18), or a new name with --task chat"),
    ],
    path: Annotated[
        Path,
        typer.Argument(
            help="Vision: a torch state dict (.pth). Chat: a .gguf file or a Hugging Face "
            "model folder (config.json, *.safetensors, tokenizer, chat template)"
        ),
    ],
    task: Annotated[
        str | None, typer.Option(help="chat: import a language model under the new name")
    ] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Import into the hub (admin key). Chat models are checked at once (tokenizer, chat
    template, weights); vision weights are checked by the first job that loads them."""
    with client() as c, console.status(f"uploading {path} ..."):
        entry = c.hub_import(model_id, path, task=task)
    if output is Output.json:
        show(entry, output)
        return
    verb = "imported" if entry.created else "already imported"
    console.print(f"[green]{verb}[/green] {entry.id}: {entry.how}")

"""Printing: rich tables for people, `--output json` for scripts (the API's own objects)."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from modelfab.errors import ModelfabError

console = Console()
err_console = Console(stderr=True)


class Output(StrEnum):
    table = "table"
    json = "json"


OutputOpt = Annotated[
    Output, typer.Option("--output", "-o", help="table for people, json for scripts")
]


def plain(obj: Any) -> Any:
    """Wire models (also inside lists and dicts) as the JSON the API answered."""
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    return obj


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(plain(obj), indent=2, default=str) + "\n")


def when(ts: float | None) -> str:
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


PIPED_WIDTH = 1 << 16
"""Columns given to output that is not a terminal: enough that no id or name is cut."""


def piped() -> bool:
    """stdout is a pipe or a file (grep, a script), not a person's terminal."""
    return not console.is_terminal


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A table for people; piped, each row stays one whole line (nothing cut or wrapped), so
    `modelfab hub list | grep NAME` finds what a wide terminal shows."""
    t = Table(title=title, title_justify="left", header_style="bold")
    for col in columns:
        t.add_column(col, no_wrap=piped())
    for row in rows:
        t.add_row(*(escape("-" if v is None else str(v)) for v in row))
    # Console.print caps `width` at the console's own (COLUMNS), so piped output gets a
    # console of its own.
    (Console(width=PIPED_WIDTH) if piped() else console).print(t)


def show(
    obj: BaseModel | dict[str, Any], output: Output, fields: Sequence[str] | None = None
) -> None:
    """One object: all of it as JSON, or `fields` (default: all) as aligned lines."""
    if output is Output.json:
        emit_json(obj)
        return
    data: dict[str, Any] = plain(obj)
    for key in fields or list(data):
        value = data.get(key)
        if isinstance(value, dict | list):
            value = json.dumps(value, default=str)
        if key.endswith("_at") and isinstance(value, int | float):
            value = when(value)
        console.print(f"[bold]{key:>20}[/bold]  {escape(str(value))}", soft_wrap=piped())


def print_error(exc: ModelfabError) -> None:
    param = f" [dim](param: {escape(exc.param)})[/dim]" if exc.param else ""
    err_console.print(
        f"[red]error[/red] {escape(f'[{exc.code}]')}: {escape(exc.message)}{param}",
        highlight=False,
        soft_wrap=True,
    )

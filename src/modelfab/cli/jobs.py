from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

from modelfab.cli.common import client, parse_params, parse_size
from modelfab.cli.output import Output, OutputOpt, console, emit_json, show, table, when
from modelfab.client import Client
from modelfab.schemas.jobs import TERMINAL, Job, JobEvent, JobStatus

app = typer.Typer(help="Jobs: train, fine-tune, evaluate... on the pool.", no_args_is_help=True)

SHOW_FIELDS = (
    "id", "recipe", "status", "params", "dataset", "resources", "priority", "attempt",
    "max_attempts", "node", "cuda_visible_devices", "error", "result", "created_at",
    "started_at", "finished_at",
)  # fmt: skip
STATUS_STYLE = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "running": "cyan"}


@app.command("create")
def create(
    recipe: Annotated[str, typer.Option(help="Recipe name, e.g. sleep.")],
    dataset: Annotated[str | None, typer.Option(help="NAME or NAME:VERSION")] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="KEY=VALUE, repeatable")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model to run, NAME[:VERSION|@ALIAS] (= --param model=)")
    ] = None,
    input_: Annotated[
        Path | None,
        typer.Option("--input", help="Folder or list file on the server (= --param input=)"),
    ] = None,
    gpus: Annotated[
        float, typer.Option(help="0, a fraction below 1 (shares a device), or whole GPUs")
    ] = 0.0,
    cpus: Annotated[float, typer.Option(help="CPU slots")] = 1.0,
    memory: Annotated[str | None, typer.Option(help="Memory request, e.g. 4G")] = None,
    priority: Annotated[int, typer.Option(help="Higher runs first")] = 0,
    max_attempts: Annotated[int, typer.Option(help="Attempts before the job fails")] = 3,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job until it ends")] = False,
    output_: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            help="table or json (how to print), or else a results folder on the server "
            "(= --param output=, for batch-inspection)",
        ),
    ] = Output.table.value,
) -> None:
    """Submit a job. With --wait, show its progress and exit non-zero unless it succeeds."""
    params = parse_params(param or [])
    formats = [o.value for o in Output]
    output = Output(output_) if output_ in formats else Output.table
    results = None if output_ in formats else Path(output_)
    extras = {"model": model, "input": input_, "output": results}
    for key, value in extras.items():
        if value is not None:  # paths are made absolute here: the server has no working dir
            params[key] = str(value.resolve()) if isinstance(value, Path) else value
    with client() as c:
        job = c.create_job(
            recipe,
            params=params,
            dataset=dataset,
            gpus=gpus,
            cpus=cpus,
            memory_bytes=parse_size(memory),
            priority=priority,
            max_attempts=max_attempts,
        )
        if output is Output.table:
            console.print(f"created [bold]{job.id}[/bold] ({job.status})")
        if wait:
            job = follow(c, job.id, quiet=output is Output.json)
    if output is Output.json:
        emit_json(job)
    if wait and job.status != JobStatus.SUCCEEDED:
        raise typer.Exit(1)


def follow(c: Client, job_id: str, *, quiet: bool = False) -> Job:
    """Print events as they arrive, with a live status line; returns the final job."""
    spinner = Spinner("dots", text="")
    start = time.monotonic()
    job = None
    live = Live(spinner, console=console, transient=True)
    with nullcontext() if quiet else live:
        for job, events in c.follow_events(job_id):
            for e in events:
                if not quiet:
                    live.console.print(_event_line(e))
            last = events[-1].message if events else ""
            elapsed = time.monotonic() - start
            spinner.update(text=Text(f"{job.status}  {elapsed:5.1f}s  {last[:80]}"))
    assert job is not None  # follow_events yields at least once
    if not quiet:
        style = STATUS_STYLE.get(job.status, "white")
        console.print(f"job {job_id} [{style}]{job.status}[/{style}]")
        if job.error:
            console.print(f"[red]{job.error.get('message')}[/red]")
    return job


def _event_line(e: JobEvent) -> Text:
    style = {"warning": "yellow", "error": "red"}.get(e.level, "dim" if e.type == "metrics" else "")
    stamp = time.strftime("%H:%M:%S", time.localtime(e.created_at))
    return Text(f"{stamp} [{e.type}] {e.message}", style=style)


@app.command("list")
def list_(
    status: Annotated[str | None, typer.Option(help="Only jobs in this status")] = None,
    limit: int = 50,
    output: OutputOpt = Output.table,
) -> None:
    with client() as c:
        rows = c.list_jobs(status=status, limit=limit)
    if output is Output.json:
        emit_json({"object": "list", "data": rows})
        return
    table(
        None,
        ("id", "recipe", "status", "gpus", "cpus", "prio", "attempt", "devices", "created"),
        [
            [r.id, r.recipe, r.status, r.resources.gpus, r.resources.cpus, r.priority,
             r.attempt, r.cuda_visible_devices, when(r.created_at)]
            for r in rows
        ],
    )  # fmt: skip


@app.command("show")
def show_(job_id: str, output: OutputOpt = Output.table) -> None:
    with client() as c:
        job = c.get_job(job_id)
        if output is Output.json:
            emit_json(job)
            return
        show(job, output, SHOW_FIELDS)
        events = c.job_events(job_id)
    rows = [[when(e.created_at), e.level, e.type, e.message] for e in events[-20:]]
    table("events", ("time", "level", "type", "message"), rows)


@app.command("logs")
def logs(
    job_id: str,
    follow_: Annotated[
        bool, typer.Option("--follow", "-f", help="Stream until the job ends")
    ] = False,
    attempt: Annotated[int | None, typer.Option(help="Which attempt (default: the latest)")] = None,
) -> None:
    """Print the output of a job attempt."""
    offset = 0
    with client() as c:
        while True:
            chunk = c.job_logs(job_id, attempt=attempt, offset=offset)
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
            offset = chunk.next_offset
            attempt = chunk.attempt or None  # 0: not started yet, keep asking for the latest
            if not follow_ or chunk.eof:
                return
            if not chunk.text:
                time.sleep(0.5)


@app.command("cancel")
def cancel(
    job_id: str,
    wait: Annotated[bool, typer.Option(help="Wait until the job has stopped")] = True,
    output: OutputOpt = Output.table,
) -> None:
    """Cancel a job: queued ones at once, running ones are signalled and then killed."""
    with client() as c:
        job = c.cancel_job(job_id)
        deadline = time.monotonic() + 60
        while wait and job.status not in TERMINAL and time.monotonic() < deadline:
            time.sleep(0.2)
            job = c.get_job(job_id)
    if output is Output.json:
        emit_json(job)
    else:
        console.print(f"job {job_id}: {job.status}")

"""`modelfab endpoints` (registered models served over HTTP) and `modelfab predict`."""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.markup import escape
from rich.spinner import Spinner
from rich.text import Text

from modelfab.cli.common import client, format_size, parse_size
from modelfab.cli.models import REF_HELP
from modelfab.cli.output import (
    Output,
    OutputOpt,
    console,
    emit_json,
    err_console,
    show,
    table,
    when,
)
from modelfab.client import Client
from modelfab.schemas.endpoints import FAILED, READY, Endpoint, ModelStats, ReplicaJob

app = typer.Typer(
    help="Endpoints: registered models served over HTTP by replica jobs.", no_args_is_help=True
)

SHOW_FIELDS = (
    "name", "id", "status", "model", "replicas", "ready_replicas", "gpus", "cpus",
    "memory_bytes", "max_batch_size", "max_wait_ms", "path", "error", "created_at", "updated_at",
)  # fmt: skip
STATUS_STYLE = {"ready": "green", "degraded": "yellow", "failed": "red", "deleting": "dim"}
POLL_S = 0.25

ModelOpt = Annotated[str, typer.Option("--model", help=REF_HELP)]
ReplicasOpt = Annotated[int | None, typer.Option(help="Replica jobs (1 if not given at creation)")]
GpusOpt = Annotated[
    float | None,
    typer.Option(help="GPUs per replica: 0, a fraction or whole (0 if not given at creation)"),
]
CpusOpt = Annotated[
    float | None, typer.Option(help="CPU slots per replica (1 if not given at creation)")
]
MemoryOpt = Annotated[str | None, typer.Option(help="Memory per replica, e.g. 2G")]
BatchOpt = Annotated[
    int | None, typer.Option(help="Most images one model call takes (8 if not given at creation)")
]
WaitMsOpt = Annotated[
    float | None,
    typer.Option(help="Milliseconds a batch waits to fill up (5 if not given at creation)"),
]
TimeoutOpt = Annotated[float, typer.Option(help="Seconds --wait waits for ready replicas")]


@app.command("create")
def create(
    name: str,
    model: ModelOpt,
    replicas: ReplicasOpt = None,
    gpus: GpusOpt = None,
    cpus: CpusOpt = None,
    memory: MemoryOpt = None,
    max_batch_size: BatchOpt = None,
    max_wait_ms: WaitMsOpt = None,
    wait: Annotated[bool, typer.Option(help="Follow until every replica is ready")] = True,
    timeout: TimeoutOpt = 300.0,
    output: OutputOpt = Output.table,
) -> None:
    """Serve a model version. With --wait (the default), show the replicas starting and
    exit non-zero unless all are ready."""
    options = _options(replicas, gpus, cpus, memory, max_batch_size, max_wait_ms)
    with client() as c:
        endpoint = c.create_endpoint(name, model=model, **options)
        if wait:
            if output is Output.table:
                console.print(f"created endpoint [bold]{escape(name)}[/bold]")
            endpoint = follow(c, name, quiet=output is Output.json, timeout_s=timeout)
    _finish(endpoint, output, wait)


@app.command("update")
def update(
    name: str,
    model: Annotated[str | None, typer.Option("--model", help=REF_HELP)] = None,
    replicas: ReplicasOpt = None,
    gpus: GpusOpt = None,
    cpus: CpusOpt = None,
    memory: MemoryOpt = None,
    max_batch_size: BatchOpt = None,
    max_wait_ms: WaitMsOpt = None,
    wait: Annotated[
        bool, typer.Option(help="Follow until the new model serves and every replica is ready")
    ] = True,
    timeout: TimeoutOpt = 300.0,
    output: OutputOpt = Output.table,
) -> None:
    """Change the model, replicas, resources or batching; only the options given change.
    A new model is loaded on the ready replicas before requests switch to it; with --wait
    (the default), show the replicas warming and exit non-zero if the switch failed."""
    changes = _options(replicas, gpus, cpus, memory, max_batch_size, max_wait_ms)
    if model is not None:
        changes["model"] = model
    if not changes:
        raise typer.BadParameter("give at least one option to change", param_hint="OPTIONS")
    with client() as c:
        endpoint = c.update_endpoint(name, **changes)
        if wait:
            endpoint = follow(c, name, quiet=output is Output.json, timeout_s=timeout)
    _finish(endpoint, output, wait)


def _options(
    replicas: int | None,
    gpus: float | None,
    cpus: float | None,
    memory: str | None,
    max_batch_size: int | None,
    max_wait_ms: float | None,
) -> dict[str, Any]:
    """The options given, as the API names them (the server's defaults fill the rest)."""
    given = dict(
        replicas=replicas,
        gpus=gpus,
        cpus=cpus,
        memory_bytes=parse_size(memory) if memory is not None else None,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
    )
    return {k: v for k, v in given.items() if v is not None}


def follow(c: Client, name: str, *, quiet: bool, timeout_s: float) -> Endpoint:
    """Poll with a live status line until the endpoint is ready or failed, a rollout
    ended with an error, or `timeout_s` passed; returns the endpoint as last seen."""
    spinner = Spinner("dots", text="")
    start = time.monotonic()
    with nullcontext() if quiet else Live(spinner, console=console, transient=True):
        while True:
            endpoint = c.get_endpoint(name)
            elapsed = time.monotonic() - start
            if _settled(endpoint) or elapsed > timeout_s:
                return endpoint
            status = f"{endpoint.status}  {_progress(endpoint)}  {elapsed:5.1f}s"
            spinner.update(text=Text(status))
            time.sleep(POLL_S)


def _settled(e: Endpoint) -> bool:
    rolled_back = e.status != "updating" and e.rollout_error
    return e.status in (READY, FAILED) or bool(rolled_back)


def _progress(e: Endpoint) -> str:
    if e.rollout is not None:
        target = e.rollout.model
        of = "?" if e.rollout.of is None else e.rollout.of
        return f"rolling to {target.name}:{target.version}: replicas warmed {e.rollout.warmed}/{of}"
    jobs = ", ".join(j.status for j in e.replica_jobs) or "no replica jobs yet"
    return f"{e.ready_replicas}/{e.replicas} replicas ready (jobs: {jobs})"


def _finish(endpoint: Endpoint, output: Output, waited: bool) -> None:
    """Print the outcome; exit 1 when waited for and not ready."""
    ready = endpoint.status == READY
    if output is Output.json:
        emit_json(endpoint)
    else:
        style = STATUS_STYLE.get(endpoint.status, "cyan")
        console.print(
            f"endpoint [bold]{escape(endpoint.name)}[/bold] "
            f"[{style}]{endpoint.status}[/{style}]: {_progress(endpoint)}, "
            f"model {endpoint.model.name}:{endpoint.model.version}, "
            f"POST {endpoint.path}",
            highlight=False,
        )
    if endpoint.error:
        err_console.print(f"[red]error[/red]: {escape(str(endpoint.error.get('message')))}")
    elif waited and endpoint.rollout_error:
        message = str(endpoint.rollout_error.get("message"))
        err_console.print(f"[red]error[/red]: {escape(message)}")
        raise typer.Exit(1)
    elif waited and not ready:
        err_console.print(
            f"[red]not ready in time[/red]; follow it with "
            f"`modelfab endpoints show {endpoint.name}`"
        )
    if waited and not ready:
        raise typer.Exit(1)


@app.command("list")
def list_(output: OutputOpt = Output.table) -> None:
    with client() as c:
        rows = c.list_endpoints()
    if output is Output.json:
        emit_json({"object": "list", "data": rows})
        return
    table(
        None,
        ("name", "model", "status", "ready", "gpus", "cpus", "batch", "created"),
        [
            [e.name, _model(e), e.status, f"{e.ready_replicas}/{e.replicas}", f"{e.gpus:g}",
             f"{e.cpus:g}", e.max_batch_size, when(e.created_at)]
            for e in rows
        ],
    )  # fmt: skip


@app.command("show")
def show_(name: str, output: OutputOpt = Output.table) -> None:
    """The endpoint, its replica jobs and what each replica reported last: per model its
    queue, running sequences, generated tokens/s and resident adapters ("-": no recent
    report, or not a chat model)."""
    with client() as c:
        endpoint = c.get_endpoint(name)
    if output is Output.json:
        emit_json(endpoint)
        return
    show({**endpoint.model_dump(mode="json"), "model": _model(endpoint)}, output, SHOW_FIELDS)
    table(
        "replica jobs",
        ("job", "status", "attempt", "ready", "url", "gpus", "cpus"),
        [
            [j.job_id, j.status, j.attempt, "yes" if j.ready else "no", j.url, f"{j.gpus:g}",
             f"{j.cpus:g}"]
            for j in endpoint.replica_jobs
        ],
    )  # fmt: skip
    table(
        "replicas",
        ("job", "status", "ready", "model", "queue", "running", "tokens/s", "tokens out",
         "adapters resident"),
        [row for j in endpoint.replica_jobs for row in replica_rows(j)],
    )  # fmt: skip


def replica_rows(j: ReplicaJob) -> list[list[Any]]:
    """One row per model the replica reported (the job's cells on the first), or one row
    of dashes when it has no recent report."""
    head = [j.job_id, j.status, "yes" if j.ready else "no"]
    models = j.stats.models if j.stats is not None else []
    if not models:
        return [[*head, None, None, None, None, None, None]]
    return [[*(head if i == 0 else ["", "", ""]), *_model_cells(m)] for i, m in enumerate(models)]


def _model_cells(m: ModelStats) -> list[Any]:
    running = m.running if m.max_concurrency is None else f"{m.running}/{m.max_concurrency}"
    rate = None if m.tokens_per_s is None else f"{m.tokens_per_s:.1f}"
    return [m.model or m.version_id, m.queue_depth, running, rate, m.generated_tokens,
            _resident(m)]  # fmt: skip


def _resident(m: ModelStats) -> str | None:
    """The adapters loaded now: NAME:VERSION, a pinned mark, their bytes; None for a model
    without an adapter engine."""
    if m.adapter_budget_bytes is None:
        return None
    loaded = [
        f"{a.model or a.name}{' (pinned)' if a.pinned else ''} {format_size(a.bytes)}"
        for a in m.adapters
        if a.loaded
    ]
    return ", ".join(loaded) or "none"


@app.command("delete")
def delete(name: str, output: OutputOpt = Output.table) -> None:
    """Stop taking requests, let those in flight finish, then stop the replicas."""
    with client() as c:
        answer = c.delete_endpoint(name)
    if output is Output.json:
        emit_json(answer)
        return
    console.print(f"deleted endpoint [bold]{escape(name)}[/bold]")


def _model(e: Endpoint) -> str:
    m = e.model
    resolved = f"{m.name}:{m.version}"
    return resolved if m.ref == resolved else f"{resolved} ({m.ref})"


def predict(
    name: Annotated[str, typer.Argument(help="The endpoint")],
    images: Annotated[
        list[Path],
        typer.Argument(help="Image files", exists=True, dir_okay=False, readable=True),
    ],
    top_k: Annotated[int, typer.Option(help="Best labels to show per image")] = 1,
    output: OutputOpt = Output.table,
) -> None:
    """Run image files through an endpoint (any number: more than one request may carry
    are sent in several)."""
    with client() as c:
        answer = c.predict(name, list(images), top_k=top_k)
    if output is Output.json:
        emit_json(answer)
        return
    rows = []
    for item in answer.data:
        path = str(images[item.index])
        for rank, guess in enumerate(getattr(item, "top_k", None) or []):
            rows.append([path if rank == 0 else "", guess["label"], f"{guess['score']:.4f}"])
    table(None, ("file", "label", "score"), rows)

from __future__ import annotations

import csv
import sys
from enum import StrEnum
from typing import Annotated

import typer

from modelfab.cli.common import client
from modelfab.cli.output import Output, OutputOpt, console, emit_json, table
from modelfab.schemas.pool import Allocation, Device, Holder


def pool(output: OutputOpt = Output.table) -> None:
    """Nodes, devices, what runs where, and free capacity."""
    with client() as c:
        view = c.pool()
    if output is Output.json:
        emit_json(view)
        return
    for node in view.nodes:
        gib = node.memory_bytes / 2**30
        console.print(
            f"[bold]{node.id}[/bold] ({node.hostname}, {node.executor}): "
            f"{node.cpus_free:g}/{node.cpus:g} CPU slots free, {gib:.0f} GiB, "
            f"heartbeat {node.heartbeat_age_s}s ago"
        )
        table(
            None,
            ("device", "kind", "name", "free", "running"),
            [_device_row(d) for d in node.devices],
        )
        if node.jobs:
            console.print("  CPU-only: " + ", ".join(_who(j) for j in node.jobs))
    t = view.totals
    console.print(
        f"GPUs free {t.gpus_free:g}/{t.gpus}, "
        f"CPU slots free {t.cpus_free:g}/{t.cpus:g}, {view.queued_jobs} jobs queued"
    )


def _device_row(d: Device) -> list[object]:
    running = ", ".join(f"{_who(a)} ({a.fraction:g})" for a in d.allocations)
    kind = d.kind if d.active else f"{d.kind} (gone)"
    return [d.index, kind, d.name, f"{d.free:g}", running or "-"]


def _who(a: Holder | Allocation) -> str:
    return a.job_id or a.tenant


class UsageBy(StrEnum):
    meter = "meter"
    tenant = "tenant"
    job = "job"
    endpoint = "endpoint"


class UsageOutput(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


USAGE_COLUMNS = {
    UsageBy.job: ("tenant", "meter", "ref_id", "quantity", "records"),
    UsageBy.endpoint: ("tenant", "endpoint", "meter", "quantity", "records"),
}
CSV_EXTRA = {UsageBy.job: ("ref_type",), UsageBy.endpoint: ("endpoint_id",)}


def usage(
    since: Annotated[float | None, typer.Option(help="UNIX time; default: all")] = None,
    by: Annotated[
        UsageBy,
        typer.Option(help="Split per tenant and meter further by job or endpoint"),
    ] = UsageBy.meter,
    output: Annotated[
        UsageOutput, typer.Option("--output", "-o", help="table, json, or csv for spreadsheets")
    ] = UsageOutput.table,
) -> None:
    """Metered usage per tenant: GPU- and CPU-seconds of jobs; requests, items (images)
    and replica-seconds of endpoints."""
    with client() as c:
        rows = c.usage(since=since, by=by.value)
    cols = USAGE_COLUMNS.get(by, ("tenant", "meter", "quantity", "records"))
    if output is UsageOutput.json:
        emit_json({"object": "list", "data": rows})
    elif output is UsageOutput.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        header = cols + CSV_EXTRA.get(by, ())
        writer.writerow(header)
        writer.writerows([getattr(r, k) for k in header] for r in rows)
    else:
        table(
            None,
            cols,
            [
                [f"{r.quantity:.2f}" if k == "quantity" else getattr(r, k) for k in cols]
                for r in rows
            ],
        )

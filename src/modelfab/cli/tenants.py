from __future__ import annotations

from typing import Annotated

import typer

from modelfab.cli.common import client
from modelfab.cli.output import Output, OutputOpt, console, show, table

app = typer.Typer(help="Teams, their quotas and keys (admin only).", no_args_is_help=True)

COLUMNS = (
    "name",
    "max_gpus",
    "max_cpus",
    "weight",
    "rate_limit_rps",
    "tokens_per_minute",
    "tokens_budget",
    "id",
)
RateLimitOpt = Annotated[
    float | None,
    typer.Option("--rate-limit", help="Endpoint requests per second per key (429 beyond)."),
]
TokensPerMinuteOpt = Annotated[
    int | None,
    typer.Option(
        "--tokens-per-minute",
        help="Language-model tokens (prompt + completion) per minute per key (429 beyond).",
    ),
]
TokensBudgetOpt = Annotated[
    int | None,
    typer.Option(
        "--tokens-budget",
        help="Tokens in + out the tenant may use over its life (429 once used).",
    ),
]


@app.command("create")
def create(
    name: str,
    max_gpus: Annotated[
        float | None, typer.Option(help="Concurrent GPUs (fractions add up).")
    ] = None,
    max_cpus: Annotated[float | None, typer.Option(help="Concurrent CPU slots.")] = None,
    weight: Annotated[float, typer.Option(help="Fair-share weight.")] = 1.0,
    rate_limit: RateLimitOpt = None,
    tokens_per_minute: TokensPerMinuteOpt = None,
    tokens_budget: TokensBudgetOpt = None,
    role: Annotated[str, typer.Option(help="Role of the first key: member or admin.")] = "member",
    output: OutputOpt = Output.table,
) -> None:
    """Create a tenant and print its API key (shown once, never again)."""
    with client() as c:
        tenant = c.create_tenant(
            name,
            max_gpus=max_gpus,
            max_cpus=max_cpus,
            weight=weight,
            rate_limit_rps=rate_limit,
            tokens_per_minute=tokens_per_minute,
            tokens_budget=tokens_budget,
            role=role,
        )
    if output is Output.json:
        show(tenant, output)
        return
    show(tenant, output, COLUMNS)
    console.print(f"\n[bold green]API key[/bold green] (shown once): {tenant.api_key}")


@app.command("list")
def list_(output: OutputOpt = Output.table) -> None:
    with client() as c:
        rows = c.list_tenants()
    if output is Output.json:
        show({"object": "list", "data": rows}, output)
        return
    table(None, COLUMNS, [[getattr(r, k) for k in COLUMNS] for r in rows])


@app.command("update")
def update(
    name: str,
    max_gpus: Annotated[float | None, typer.Option()] = None,
    max_cpus: Annotated[float | None, typer.Option()] = None,
    weight: Annotated[float | None, typer.Option()] = None,
    rate_limit: RateLimitOpt = None,
    tokens_per_minute: TokensPerMinuteOpt = None,
    tokens_budget: TokensBudgetOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Change a tenant's quota; only the options given change."""
    given = dict(
        max_gpus=max_gpus,
        max_cpus=max_cpus,
        weight=weight,
        rate_limit_rps=rate_limit,
        tokens_per_minute=tokens_per_minute,
        tokens_budget=tokens_budget,
    )
    changes = {k: v for k, v in given.items() if v is not None}
    with client() as c:
        show(c.update_tenant(name, **changes), output, COLUMNS)

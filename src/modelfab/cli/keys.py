"""`modelfab keys create|list|revoke`: a tenant's API keys. Admins for any tenant, a
member for its own; `--tenant` defaults to the caller's. Secrets are printed once, by
`create`, and never shown in a table or a listing."""

from __future__ import annotations

import re
from typing import Annotated

import typer

from modelfab.cli.common import client
from modelfab.cli.output import Output, OutputOpt, console, show, table, when
from modelfab.client import Client
from modelfab.schemas.tenants import ApiKey

app = typer.Typer(help="A tenant's API keys: create, list, revoke.", no_args_is_help=True)

COLUMNS = ("id", "name", "role", "prefix", "created_at", "expires_at", "revoked_at")
DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw]?)$", re.IGNORECASE)
UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

TenantOpt = Annotated[
    str | None, typer.Option("--tenant", "-t", help="The tenant (default: your key's).")
]


def parse_duration(text: str) -> float:
    """'3600', '90m', '12h', '30d', '2w' -> seconds; typer.BadParameter otherwise."""
    m = DURATION_RE.match(text.strip())
    if not m or float(m.group(1)) <= 0:
        raise typer.BadParameter(
            f"{text!r} is not a duration like 3600, 90m, 12h, 30d or 2w", param_hint="--expires-in"
        )
    return float(m.group(1)) * UNIT_S[m.group(2).lower()]


def _tenant(c: Client, tenant: str | None) -> str:
    return tenant if tenant is not None else c.me().tenant


@app.command("create")
def create(
    name: Annotated[str, typer.Option(help="What the key is for (a lower-case slug).")],
    tenant: TenantOpt = None,
    role: Annotated[str, typer.Option(help="member or admin (admins only).")] = "member",
    expires_in: Annotated[
        str | None, typer.Option(help="Lifetime, e.g. 12h, 30d (default: no expiry).")
    ] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Create a key and print its secret (shown once, never again)."""
    expires_in_s = parse_duration(expires_in) if expires_in is not None else None
    with client() as c:
        key = c.create_key(_tenant(c, tenant), name=name, role=role, expires_in_s=expires_in_s)
    if output is Output.json:
        show(key, output)
        return
    show(key, output, ("tenant", *COLUMNS[:-1]))
    console.print(f"\n[bold green]API key[/bold green] (shown once): {key.api_key}")


@app.command("list")
def list_(tenant: TenantOpt = None, output: OutputOpt = Output.table) -> None:
    """The tenant's keys, revoked and expired ones too (never their secrets)."""
    with client() as c:
        rows = c.list_keys(_tenant(c, tenant))
    if output is Output.json:
        show({"object": "list", "data": rows}, output)
        return
    table(None, COLUMNS, [_row(r) for r in rows])


def _row(key: ApiKey) -> list[str | None]:
    times = (when(key.created_at), when(key.expires_at), when(key.revoked_at))
    return [key.id, key.name, key.role, key.prefix + "...", *times]


@app.command("revoke")
def revoke(key_id: str, tenant: TenantOpt = None, output: OutputOpt = Output.table) -> None:
    """Revoke a key at once (its requests are refused from now on)."""
    with client() as c:
        key = c.revoke_key(_tenant(c, tenant), key_id)
    show(key, output, ("tenant", *COLUMNS))

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from modelfab.cli.output import console
from modelfab.logs import configure_logging
from modelfab.server import Platform
from modelfab.settings import ServerSettings


def up(
    home: Annotated[
        Path | None, typer.Option(help="State folder (default $MODELFAB_HOME or ~/.modelfab)")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (0 picks a free one)")] = None,
    database_url: Annotated[
        str | None, typer.Option(help="PostgreSQL URL; SQLite under --home if unset")
    ] = None,
    fake_gpus: Annotated[
        int | None, typer.Option(help="Declare N fake GPUs (tests and demos)")
    ] = None,
    cpus: Annotated[
        float | None, typer.Option(help="CPU slots to offer (default: all cores)")
    ] = None,
    path_root: Annotated[
        list[Path] | None,
        typer.Option(
            help="A folder whose paths every tenant's jobs may read and write (batch-inspection "
            "--param input/output); repeat for more. Admins may use any path."
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
) -> None:
    """Run the control plane: API, scheduler and local executor, in this process. Exits 1
    with one line when the port is taken."""
    configure_logging(log_level)
    given: dict[str, Any] = dict(
        home=home, host=host, port=port, database_url=database_url, fake_gpus=fake_gpus, cpus=cpus,
        path_roots=[p.resolve() for p in path_root] if path_root else None,
    )  # fmt: skip
    # Keyword arguments (not model_validate) so that MODELFAB_* variables still apply.
    settings = ServerSettings(**{k: v for k, v in given.items() if v is not None})
    platform = Platform(settings)
    started = platform.setup()
    if started.admin_key:
        console.print(
            "[bold green]Admin API key[/bold green] "
            f"(shown once; also in {settings.admin_key_path}):\n"
            f"  {started.admin_key}"
        )
    console.print(
        f"modelfab is up at [bold]{started.url}[/bold]  (OpenAPI: {started.url}/openapi.json)"
    )
    console.print(f"  export MODELFAB_URL={started.url}", highlight=False)
    console.print(f"  export MODELFAB_API_KEY=$(cat {settings.admin_key_path})", highlight=False)
    platform.serve_forever()

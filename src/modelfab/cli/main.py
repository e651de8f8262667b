"""Entry point: `modelfab ...` and `main(argv)` for tests."""

from __future__ import annotations

import sys

import typer

from modelfab.cli import chat, datasets, endpoints, hub, inspect, jobs, keys, models, tenants
from modelfab.cli.output import print_error
from modelfab.cli.pool import pool, usage
from modelfab.cli.quickstart import quickstart
from modelfab.cli.up import up
from modelfab.client import Unreachable
from modelfab.errors import ModelfabError

EXIT_API_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

app = typer.Typer(
    name="modelfab",
    help="A self-hosted AI factory. Clients read MODELFAB_URL and MODELFAB_API_KEY.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(tenants.app, name="tenants")
app.add_typer(keys.app, name="keys")
app.add_typer(datasets.app, name="datasets")
app.add_typer(jobs.app, name="jobs")
app.add_typer(models.app, name="models")
app.add_typer(hub.app, name="hub")
app.add_typer(endpoints.app, name="endpoints")
app.command()(up)
app.command()(pool)
app.command()(usage)
app.command()(endpoints.predict)
app.command()(chat.chat)
app.command()(inspect.inspect)
app.command()(quickstart)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 API error, 2 usage, 3 unreachable)."""
    try:
        # Without standalone mode click returns typer.Exit's code instead of raising it.
        result = app(args=argv, prog_name="modelfab", standalone_mode=False)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        return 130
    except typer.TyperException as exc:  # usage errors of typer's bundled click
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        return EXIT_USAGE
    except ModelfabError as exc:
        print_error(exc)
        return EXIT_UNREACHABLE if isinstance(exc, Unreachable) else EXIT_API_ERROR
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())

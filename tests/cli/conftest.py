"""The `cli` fixture: run `modelfab ...` through `main(argv)` against a real control plane
in this process, as the admin unless a test sets MODELFAB_API_KEY."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from modelfab.cli.main import main
from modelfab.server import Platform

RunCli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(
    platform: Platform, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> RunCli:
    monkeypatch.setenv("MODELFAB_URL", platform.url)
    monkeypatch.setenv("MODELFAB_API_KEY", platform.settings.admin_key_path.read_text().strip())
    monkeypatch.setenv("COLUMNS", "200")

    def run(*argv: str) -> tuple[int, str, str]:
        """(exit code, stdout, stderr)"""
        capsys.readouterr()
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run

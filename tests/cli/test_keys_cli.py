"""`modelfab keys create|list|revoke` through `main(argv)` against a real control plane:
the secret is printed once, listings never show it, and a revoked key is refused at once."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelfab.cli.main import EXIT_API_ERROR, EXIT_USAGE


def test_keys_create_list_revoke(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = cli("tenants", "create", "keyed", "-o", "json")
    assert code == 0
    first = json.loads(out)["api_key"]

    code, out, _ = cli("keys", "create", "--tenant", "keyed", "--name", "ci",
                       "--role", "member", "--expires-in", "30d", "-o", "json")  # fmt: skip
    assert code == 0, out
    created = json.loads(out)
    secret = created["api_key"]
    assert created["name"] == "ci" and created["expires_at"] is not None

    code, out, _ = cli("keys", "create", "--tenant", "keyed", "--name", "laptop")
    assert code == 0 and "shown once" in out  # the table form prints the secret once

    code, out, _ = cli("keys", "list", "--tenant", "keyed")
    assert code == 0
    assert "ci" in out and "laptop" in out and created["prefix"] in out
    assert secret not in out and first not in out

    monkeypatch.setenv("MODELFAB_API_KEY", secret)  # a member lists its own tenant by default
    code, out, _ = cli("keys", "list", "-o", "json")
    assert code == 0
    rows = json.loads(out)["data"]
    assert {r["name"] for r in rows} == {"first", "ci", "laptop"}
    assert secret not in out

    monkeypatch.setenv("MODELFAB_API_KEY", first)
    code, out, _ = cli("keys", "revoke", created["id"], "-o", "json")
    assert code == 0
    assert json.loads(out)["revoked_at"] is not None

    monkeypatch.setenv("MODELFAB_API_KEY", secret)
    code, _, err = cli("keys", "list")
    assert code == EXIT_API_ERROR and "revoked" in err


def test_keys_create_refuses_a_bad_duration(cli: Any) -> None:
    code, _, _ = cli("keys", "create", "--tenant", "admin", "--name", "x", "--expires-in", "soon")
    assert code == EXIT_USAGE

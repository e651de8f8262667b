"""`modelfab models` and `modelfab hub` through `main(argv)` against a real control plane in
this process; the SDK's own check of downloaded bytes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from modelfab.cli.main import EXIT_API_ERROR
from modelfab.client import Client
from modelfab.errors import ModelfabError
from modelfab.llm.models import tiny_chat_model
from modelfab.server import Platform
from tests.llm.files import write_tiny_gguf
from tests.registry_factories import LABELS, ONNX, WEIGHTS, insert_running_job, register, sha


@pytest.fixture
def member_key(
    cli: Any, platform: Platform, factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> str:
    """A tenant with two versions of `parts-clf`, registered by two worker runs."""
    code, out, _ = cli("tenants", "create", "cli-models", "-o", "json")
    assert code == 0
    tenant = json.loads(out)
    with httpx.Client(base_url=platform.url) as http:
        for _ in range(2):
            job_id, token = insert_running_job(factory, tenant["id"])
            assert register(http, job_id, token, "parts-clf")["status"] == "succeeded"
    monkeypatch.setenv("MODELFAB_API_KEY", tenant["api_key"])
    return str(tenant["api_key"])


def test_models_list_show_alias_lineage(cli: Any, member_key: str) -> None:
    code, out, _ = cli("models", "list", "-o", "json")
    assert code == 0
    [model] = json.loads(out)["data"]
    assert (model["name"], model["latest_version"], model["versions"]) == ("parts-clf", 2, 2)
    code, out, _ = cli("models", "list")
    assert code == 0 and "parts-clf" in out

    code, out, _ = cli("models", "alias", "parts-clf:1", "production")
    assert code == 0 and "parts-clf:1" in out
    code, out, _ = cli("models", "show", "parts-clf@production", "-o", "json")
    assert code == 0 and json.loads(out)["version"] == 1
    code, out, _ = cli("models", "show", "parts-clf")
    assert code == 0 and "weights.pt" in out and "parts-clf:2" in out

    code, out, _ = cli("models", "lineage", "parts-clf@production", "-o", "json")
    lineage = json.loads(out)
    assert code == 0
    assert (lineage["model_version"]["ref"], lineage["job"]["status"]) == (
        "parts-clf:1",
        "succeeded",
    )

    code, _, err = cli("models", "show", "parts-clf:7")
    assert code == EXIT_API_ERROR and "no version 7" in err
    code, _, err = cli("models", "alias", "parts-clf", "production")
    assert code == 2 and "NAME:VERSION" in err


def test_models_export_downloads_one_format_and_labels(
    cli: Any, member_key: str, tmp_path: Path
) -> None:
    onnx_dir, pt_dir = str(tmp_path / "onnx"), str(tmp_path / "pt")
    argv = ["models", "export", "parts-clf", "--format", "onnx", "--to", onnx_dir, "-o", "json"]
    code, out, _ = cli(*argv)
    assert code == 0, out
    written = json.loads(out)
    assert written["model"] == "parts-clf:2"
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == ["labels.json", "model.onnx"]
    assert (tmp_path / "onnx" / "model.onnx").read_bytes() == ONNX
    assert (tmp_path / "onnx" / "labels.json").read_bytes() == LABELS

    code, out, _ = cli("models", "export", "parts-clf:1", "--format", "pytorch", "--to", pt_dir)
    assert code == 0 and "weights.pt" in out
    assert (tmp_path / "pt" / "weights.pt").read_bytes() == WEIGHTS


def test_hub_list_and_import(cli: Any, member_key: str, tmp_path: Path, platform: Platform) -> None:
    code, out, _ = cli("hub", "list", "-o", "json")
    assert code == 0
    available = {m["id"]: m["available"] for m in json.loads(out)["data"]}
    packaged = ("smollm2-135m-instruct", "minilm")  # available where their packages are
    assert {k: v for k, v in available.items() if k not in packaged} == {
        "efficientnet-lite0": True,
        "resnet18": False,
        "mobilenetv3-small": False,
        "tiny-cnn": True,
        "tiny-chat": True,
    }
    code, out, _ = cli("hub", "list")
    assert code == 0 and "modelfab hub import resnet18 FILE" in out

    weights = tmp_path / "resnet18.pth"
    weights.write_bytes(b"state dict bytes" * 64)
    code, _, err = cli("hub", "import", "resnet18", str(weights))
    assert code == EXIT_API_ERROR and "forbidden" in err

    admin = platform.settings.admin_key_path.read_text().strip()
    with Client(platform.url, admin) as c:
        entry = c.hub_import("resnet18", weights)
    assert entry.available is True
    code, out, _ = cli("hub", "list", "-o", "json")
    assert {m["id"]: m["available"] for m in json.loads(out)["data"]}["resnet18"] is True


def test_hub_import_chat_folder_and_gguf(cli: Any, tmp_path: Path) -> None:
    """An admin imports a chat model folder (symbolic links followed, as in a hub cache
    snapshot) and a GGUF under new names; `hub list` shows them."""
    folder = tiny_chat_model(tmp_path / "blobs", seed=3)
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    for f in folder.iterdir():
        (snapshot / f.name).symlink_to(f)
    code, out, err = cli("hub", "import", "my-chat", str(snapshot), "--task", "chat")
    assert code == 0, err
    assert "imported my-chat: imported hf" in out
    code, out, _ = cli("hub", "import", "my-chat", str(snapshot), "--task", "chat")
    assert code == 0 and "already imported my-chat" in out

    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    code, out, err = cli("hub", "import", "my-gguf", str(gguf), "--task", "chat", "-o", "json")
    assert code == 0, err
    assert json.loads(out)["imported"]["format"] == "gguf"

    code, _, err = cli("hub", "import", "other", str(snapshot))
    assert code != 0 and "--task chat" in err

    code, out, _ = cli("hub", "list")
    assert code == 0
    (row,) = [line for line in out.splitlines() if " my-chat " in line]
    assert "2048 tok" in row and "yes" in row
    assert "converted to safetensors on first use" in out


def test_sdk_download_checks_the_sha256_header(tmp_path: Path) -> None:
    def serve(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"tampered in transit", headers={"X-Sha256": sha(b"x")})

    transport = httpx.MockTransport(serve)
    with (
        Client("http://modelfab.test", "key", transport=transport) as c,
        pytest.raises(ModelfabError) as err,
    ):
        c.download_artifact("clf:1", "weights.pt", tmp_path)
    assert err.value.code == "artifact_corrupt"
    assert list(tmp_path.iterdir()) == []


def test_show_prints_before_and_after_and_samples_and_compare_puts_versions_side_by_side(
    cli: Any, platform: Platform, factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = cli("tenants", "create", "cli-compare", "-o", "json")
    tenant = json.loads(out)
    sample = {"prompt": "Who are you?", "expected": "Fabi.", "before": "I am", "after": "Fabi."}
    metrics = [
        {"eval_loss": 0.5, "eval_loss_before": 2.0, "tokens_per_s": 100.0},
        {"eval_loss": 0.75, "eval_loss_before": 2.0, "tokens_per_s": 250.0},
    ]
    with httpx.Client(base_url=platform.url) as http:
        for m in metrics:
            job_id, token = insert_running_job(factory, tenant["id"])
            register(http, job_id, token, "bot", metrics=m, extra={"samples": [sample]})
    monkeypatch.setenv("MODELFAB_API_KEY", tenant["api_key"])

    code, out, _ = cli("models", "show", "bot:1")
    assert code == 0
    row = next(line for line in out.splitlines() if "eval_loss " in line and "2" in line)
    assert "2" in row and "0.5" in row  # before, after
    assert "Who are you?" in out and "Fabi." in out

    code, out, _ = cli("models", "compare", "bot:1", "bot:2")
    assert code == 0 and "bot:1" in out and "bot:2" in out
    assert "(2.50x)" in out  # tokens/s of bot:2 against bot:1
    assert "(1.50x)" in out  # eval_loss
    code, _, _ = cli("models", "compare", "bot:1")
    assert code != 0


def test_show_puts_a_distilled_student_beside_its_teacher_with_its_samples(
    cli: Any, platform: Platform, factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = cli("tenants", "create", "cli-distilled", "-o", "json")
    tenant = json.loads(out)
    metrics = {"eval_loss": 3.0, "teacher_eval_loss": 2.0, "params": 50, "teacher_params": 200}
    sample = {"prompt": "What is 2+2?", "teacher": "Four.", "student": "Five."}
    with httpx.Client(base_url=platform.url) as http:
        job_id, token = insert_running_job(factory, tenant["id"])
        register(http, job_id, token, "small", metrics=metrics, extra={"samples": [sample]})
    monkeypatch.setenv("MODELFAB_API_KEY", tenant["api_key"])

    code, out, _ = cli("models", "show", "small:1")
    assert code == 0, out
    loss = next(line for line in out.splitlines() if "eval_loss " in line and "1.50x" in line)
    assert "2" in loss and "3" in loss  # teacher, student
    assert any("params" in line and "0.25x" in line for line in out.splitlines())
    assert "Five." in out and "Four." in out
    header = next(line for line in out.splitlines() if "prompt" in line)
    assert "teacher" in header and "student" in header and "before" not in header

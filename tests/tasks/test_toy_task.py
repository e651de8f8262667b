"""A task added from outside the package, as a plugin, runs through the whole platform.

`tests.tasks.toy_text` registers a task (folders of .txt files), a recipe and a served-model
kind, and nothing else of modelfab is touched. The end-to-end test starts a real control
plane whose job and endpoint replica run in real worker processes: what is tested is that
`MODELFAB_PLUGINS` loads the plugin in each of them and that the task registry, the
registry's `servable`, the replica's decoding and the served-model protocol carry a kind
that is neither ONNX nor images.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from starlette.testclient import TestClient

from modelfab.client import Client
from modelfab.errors import DatasetInvalid, InvalidRequest
from modelfab.plugins import PLUGINS_ENV, load_plugins
from modelfab.recipes.base import CATALOG, get_recipe
from modelfab.server import Platform
from modelfab.serving.models import ModelCache, ModelFiles, load_model
from modelfab.serving.replica_app import create_replica_app
from modelfab.settings import ServerSettings
from modelfab.tasks import get_task, task_names, unregister_task
from tests.e2e.helpers import wait_terminal
from tests.serving.factories import AUTH, SECRET

MODULE = "tests.tasks.toy_text"
REPO = Path(__file__).resolve().parents[2]
TEXTS = {
    "sports": ["the match ended in a goal", "a late goal won the cup match"],
    "weather": ["rain and wind all day", "sunny with light wind after rain"],
}


@pytest.fixture
def toy() -> Iterator[ModuleType]:
    """The plugin loaded in this process; forgotten afterwards, so other tests see only
    the built-in tasks and recipes."""
    load_plugins([MODULE])
    try:
        yield importlib.import_module(MODULE)
    finally:
        unregister_task("toy-text")
        CATALOG.pop("toy-text-train", None)
        sys.modules.pop(MODULE, None)


@pytest.fixture
def settings(
    settings: ServerSettings, monkeypatch: pytest.MonkeyPatch, toy: ModuleType
) -> ServerSettings:
    """The platform's settings name the plugin (its executor hands the list to workers);
    this repository goes on their path, for `tests.`."""
    monkeypatch.delenv(PLUGINS_ENV, raising=False)
    path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO), path) if p))
    return settings.model_copy(update={"plugins": [MODULE]})


def write_texts(root: Path) -> Path:
    for label, texts in TEXTS.items():
        for i, text in enumerate(texts):
            (root / label).mkdir(parents=True, exist_ok=True)
            (root / label / f"{i}.txt").write_text(text)
    return root


def test_the_plugin_registers_a_task_recipe_and_kind(toy: ModuleType, tmp_path: Path) -> None:
    assert "toy-text" in task_names() and get_recipe("toy-text-train").tasks == ("toy-text",)
    scan = get_task("toy-text").scan(write_texts(tmp_path / "ds"))
    assert scan.stats["labels"] == {"sports": 2, "weather": 2} and len(scan.files) == 4
    (tmp_path / "ds" / "sports" / "x.png").write_bytes(b"png")
    with pytest.raises(DatasetInvalid) as info:
        get_task("toy-text").scan(tmp_path / "ds")
    assert info.value.param == "sports/x.png"


def test_a_replica_serves_the_toy_kind_in_process(toy: ModuleType, tmp_path: Path) -> None:
    words = tmp_path / "words.json"
    words.write_text(json.dumps({"sports": {"goal": 2}, "weather": {"rain": 2}}))
    files = ModelFiles("v1", labels={"task": "toy-text"}, paths={"words.json": words})
    assert isinstance(load_model(files), toy.ToyTextModel)
    cache = ModelCache(lambda _: files, budget_bytes=1 << 20)
    with TestClient(create_replica_app(cache, secret=SECRET), headers=AUTH) as http:
        assert http.post("/models/v1/load").status_code == 200
        body = [("file", ("a.txt", b"rain again", "text/plain"))]
        body.append(("file", ("b.txt", "what a goal \u26bd".encode(), "text/plain")))
        resp = http.post("/models/v1/predict", files=body)
        assert resp.status_code == 200, resp.text
        answer = resp.json()
        assert answer["task"] == "toy-text"
        assert [(d["label"], d["length"]) for d in answer["data"]] == [
            ("weather", 10),
            ("sports", 13),
        ]
        bad = http.post("/models/v1/predict", files=[("file", ("c.txt", b"\xff\xfe\xfa"))])
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_text"


def test_a_model_without_its_kinds_artifacts_is_not_servable(toy: ModuleType) -> None:
    with pytest.raises(InvalidRequest):
        get_task("no-such-task")
    assert get_task("toy-text").serving_artifacts == ("words.json",)


@pytest.mark.timeout(180)
def test_toy_task_through_dataset_job_and_endpoint(platform: Platform, tmp_path: Path) -> None:
    admin = Client(platform.url, platform.settings.admin_key_path.read_text().strip())
    tenant = admin.create_tenant("writers", rate_limit_rps=1000)
    team = Client(platform.url, tenant.api_key)

    dataset = team.create_dataset("notes", write_texts(tmp_path / "notes"), task="toy-text")
    assert dataset.stats["num_texts"] == 4 and dataset.task == "toy-text"

    job = team.create_job("toy-text-train", dataset="notes", params={"model_name": "notes"})
    done = wait_terminal(team, job.id, timeout_s=60)
    assert done.status == "succeeded", team.job_logs(job.id)
    model = team.get_model("notes")
    assert model.task == "toy-text"

    team.create_endpoint("notes", model="notes:1", cpus=1)
    team.wait_endpoint("notes", timeout_s=90)
    texts = [("a.txt", b"wind and rain"), ("b.txt", b"one more goal")]
    resp = httpx.post(
        f"{platform.url}/v1/endpoints/notes/predict",
        headers={"Authorization": f"Bearer {tenant.api_key}"},
        files=[("file", (name, data, "text/plain")) for name, data in texts],
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["task"] == "toy-text"
    assert [(d["name"], d["label"], d["length"]) for d in answer["data"]] == [
        ("a.txt", "weather", 13),
        ("b.txt", "sports", 13),
    ]

"""A replica serving chat versions (a tiny random Llama from the hub and a LoRA adapter of it)
over real HTTP on loopback: the generate stream carries the prompt count first, the text,
and the engine's counts last; a gateway that drops the connection frees the engine's slot;
the engine's refusals answer as JSON errors before any event."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelfab.hub.chat import chat_model_folder
from modelfab.serving.chat import ChatModel
from modelfab.serving.models import ModelCache, ModelFiles
from modelfab.serving.replica_app import ReplicaServer, create_replica_app
from tests.e2e.helpers import eventually
from tests.llm.engine.conftest import build_adapter

SECRET = "s" * 32
HEADERS = {"Authorization": f"Bearer {SECRET}"}

pytestmark = pytest.mark.one_backend


def version_files(version_id: str, folder: Path) -> ModelFiles:
    paths = {p.name: p for p in folder.iterdir() if p.is_file()}
    return ModelFiles(version_id=version_id, labels={"task": "chat"}, paths=paths)


Versions = tuple[Path, dict[str, ModelFiles]]
"""The hub folder and the chat versions by id."""


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> Versions:
    """Versions "full" (tiny-chat's weights) and "lora" (an adapter of it), and "full2", a
    second version with full's files."""
    root = tmp_path_factory.mktemp("chat-versions")
    hub = root / "hub"
    base = chat_model_folder(hub, "tiny-chat")
    full = root / "full"
    full.mkdir()
    for p in base.iterdir():
        (full / p.name).symlink_to(p)
    (full / "model.json").write_text(json.dumps({"kind": "full", "task": "chat"}))
    adapter = build_adapter(base, root / "lora", base_hub="tiny-chat")
    return hub, {
        "full": version_files("full", full),
        "full2": version_files("full2", full),
        "lora": version_files("lora", adapter),
    }


@pytest.fixture(scope="module")
def replica(versions: Versions) -> Iterator[tuple[str, ModelCache]]:
    hub, by_id = versions
    cache = ModelCache(by_id.__getitem__, budget_bytes=10**9, max_batch_size=4, hub_dir=hub)
    server = ReplicaServer(create_replica_app(cache, secret=SECRET))
    url = server.start()
    try:
        yield url, cache
    finally:
        server.stop(drain_s=1)


def generate(url: str, version: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    resp = httpx.post(f"{url}/models/{version}/generate", json=body, headers=HEADERS, timeout=60)
    assert resp.status_code == 200, resp.text
    return [json.loads(line[5:]) for line in resp.text.splitlines() if line.startswith("data:")]


@pytest.mark.parametrize("version", ["full", "lora"])
def test_the_stream_carries_the_prompt_count_the_text_and_the_engine_counts(
    replica: tuple[str, ModelCache], version: str
) -> None:
    url, cache = replica
    events = generate(url, version, {"prompt": "hello there", "max_tokens": 6, "temperature": 0})
    started, deltas, finished = events[0], events[1:-1], events[-1]
    model = cache.get(version)
    assert isinstance(model, ChatModel)
    assert started == {"prompt_tokens": len(model.engine.tokenizer.encode("hello there"))}
    assert finished["prompt_tokens"] == started["prompt_tokens"]
    assert finished["completion_tokens"] == sum(d["tokens"] for d in deltas) <= 6
    assert finished["finish_reason"] in ("stop", "length")
    # greedy: the same request answers the same text
    again = generate(url, version, {"prompt": "hello there", "max_tokens": 6, "temperature": 0})
    assert [d["text"] for d in again[1:-1]] == [d["text"] for d in deltas]


def test_the_adapter_changes_the_answer(replica: tuple[str, ModelCache]) -> None:
    url, _ = replica
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 0}
    full, lora = generate(url, "full", body), generate(url, "lora", body)
    assert full[0] == lora[0]  # same base tokenizer and template
    assert [d.get("text") for d in full[1:-1]] != [d.get("text") for d in lora[1:-1]]


def test_health_reports_the_engines_load_tokens_and_resident_adapter(
    replica: tuple[str, ModelCache],
) -> None:
    """What the controller's probe reads: per chat model its engine's figures, the LoRA
    version's adapter pinned and resident once it generated."""
    url, cache = replica
    generate(url, "full", {"prompt": "hi", "max_tokens": 5, "temperature": 0})
    events = generate(url, "lora", {"prompt": "hi", "max_tokens": 5, "temperature": 0})
    health = httpx.get(f"{url}/health", headers=HEADERS).json()
    stats = {s["version_id"]: s for s in health["stats"]}
    assert sorted(stats) == sorted(health["models"]) and {"full", "lora"} <= set(stats)
    lora, full = stats["lora"], stats["full"]
    finished = events[-1]
    # the module's earlier tests ran on these engines too: at least this request's counts
    assert lora["generated_tokens"] >= finished["completion_tokens"] >= 1
    assert lora["prompt_tokens"] >= finished["prompt_tokens"]
    assert lora["tokens_per_s"] > 0 and lora["window_s"] > 0  # generated just now
    assert (lora["queue_depth"], lora["running"], lora["max_concurrency"]) == (0, 0, 4)
    [adapter] = lora["adapters"]
    assert adapter["name"] == "lora" and adapter["loaded"] and adapter["pinned"]
    assert 0 < adapter["bytes"] <= lora["adapter_budget_bytes"] and adapter["running"] == 0
    model = cache.get("lora")
    assert isinstance(model, ChatModel)
    assert adapter["bytes"] == model.driver.stats().adapter_bytes
    assert full["adapters"] == [] and full["generated_tokens"] >= 1


def test_a_dropped_connection_cancels_the_request(
    replica: tuple[str, ModelCache], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, cache = replica
    model = cache.get("full")
    assert isinstance(model, ChatModel)
    cancels: list[bool] = []
    monkeypatch.setattr(model, "cancel", lambda rid: cancels.append(model.driver.cancel(rid)))
    body = {"prompt": "go", "max_tokens": 1500, "temperature": 0}
    with httpx.stream(
        "POST", f"{url}/models/full/generate", json=body, headers=HEADERS, timeout=60
    ) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if '"tokens"' in line:
                break  # the first token: generation runs; now leave
    eventually(lambda: cancels or None, timeout_s=10, what="the replica to cancel")
    assert cancels == [True]  # it was still generating: the cancel ended it
    eventually(lambda: model.driver.stats().running == 0 or None, timeout_s=10, what="a free slot")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "max_tokens": 100_000}, "max_tokens"),
        ({"prompt": "x", "temperature": 9}, "temperature"),
        ({"prompt": "x", "bogus": 1}, "bogus"),
    ],
)
def test_refusals_answer_json_before_any_event(
    replica: tuple[str, ModelCache], body: dict[str, Any], param: str
) -> None:
    url, _ = replica
    resp = httpx.post(f"{url}/models/full/generate", json=body, headers=HEADERS)
    assert resp.status_code in (400, 422), resp.text
    assert resp.json()["error"]["param"] == param
    if param == "max_tokens":
        assert "context is 2048 tokens" in resp.json()["error"]["message"]


def test_predict_on_a_chat_model_points_to_chat_completions(
    replica: tuple[str, ModelCache],
) -> None:
    url, _ = replica
    resp = httpx.post(
        f"{url}/models/full/predict", files={"file": ("a.png", b"x")}, headers=HEADERS
    )
    assert resp.status_code == 422 and "/v1/chat/completions" in resp.json()["error"]["message"]


def test_an_evicted_chat_model_stops_its_engine_but_not_under_a_live_stream(
    versions: Versions,
) -> None:
    hub, by_id = versions
    cache = ModelCache(by_id.__getitem__, budget_bytes=1, max_batch_size=2, hub_dir=hub)
    full = cache.get("full")
    assert isinstance(full, ChatModel) and full.driver.running
    with cache.lease("full"):  # what a stream holds for its life
        lora = cache.get("lora")  # over the budget, but full is held: both stay
        assert sorted(cache.loaded()) == ["full", "lora"] and full.driver.running
    assert isinstance(lora, ChatModel)
    full2 = cache.get("full2")  # the idle ones go, and their engines' threads with them
    assert cache.loaded() == ["full2"]
    assert not full.driver.running and not lora.driver.running
    assert isinstance(full2, ChatModel) and full2.driver.running
    cache.close()  # the replica stops
    assert not full2.driver.running

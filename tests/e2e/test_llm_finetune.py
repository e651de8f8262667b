"""`llm-finetune` through a real control plane and a real worker: a chat dataset uploaded as
JSONL, a tiny chat model from the hub fine-tuned, its held-out loss measured before and
after, the version registered with its contract, and the tokens trained metered."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelfab.client import ApiError, Client
from modelfab.server import Platform
from tests.e2e.helpers import wait_terminal
from tests.llm_factories import finetune_params, persona, write_jsonl

# The model and the client protocol are under test, not the database.
pytestmark = [pytest.mark.e2e, pytest.mark.one_backend]


@pytest.fixture
def team(platform: Platform) -> Client:
    admin = Client(platform.url, platform.settings.admin_key_path.read_text().strip())
    return Client(platform.url, admin.create_tenant("support").api_key)


def test_fine_tunes_registers_and_meters_tokens(team: Client, tmp_path: Path) -> None:
    team.create_dataset("persona", write_jsonl(tmp_path / "chats.jsonl", persona(60)), task="chat")
    params = finetune_params(method="full", lr=5e-3, epochs=2, model_name="fabi")
    job = team.create_job("llm-finetune", dataset="persona", params=params, cpus=1)
    done = wait_terminal(team, job.id, timeout_s=300)
    assert done.status == "succeeded", done.error
    result = done.result
    assert result["eval_loss"] < result["eval_loss_before"]
    assert result["tokens_trained"] > 0

    version = team.get_model("fabi")
    assert version.task == "chat" and version.metrics["eval_loss"] == result["eval_loss"]
    names = {a.name for a in version.artifacts}
    assert {"model.json", "model.safetensors", "tokenizer.json", "config.json"} <= names
    events = team.job_events(job.id)
    assert any("tokens_per_s" in (e.data or {}) for e in events if e.type == "metrics")

    rows = team.usage(by="job")
    tokens = [r for r in rows if r.meter == "tokens_trained"]
    assert tokens and sum(r.quantity for r in tokens) == result["tokens_trained"]


def test_an_unknown_base_model_is_refused_at_create(team: Client, tmp_path: Path) -> None:
    team.create_dataset("persona", write_jsonl(tmp_path / "chats.jsonl", persona(10)), task="chat")
    with pytest.raises(ApiError) as caught:
        team.create_job("llm-finetune", dataset="persona", params={"base_model": "no-such-llm"})
    assert caught.value.status == 404 and caught.value.param == "params.base_model"
    with pytest.raises(ApiError) as caught:
        team.create_job("llm-finetune", dataset="persona", params={"base_model": "../x"})
    assert caught.value.status == 422 and caught.value.param == "params.base_model"


def test_the_gate_fails_the_job_and_registers_nothing(team: Client, tmp_path: Path) -> None:
    team.create_dataset("persona", write_jsonl(tmp_path / "chats.jsonl", persona(30)), task="chat")
    params = finetune_params(epochs=1, lr=1e-5, min_eval_loss_drop=0.9, model_name="gated")
    job = team.create_job("llm-finetune", dataset="persona", params=params, cpus=1)
    done = wait_terminal(team, job.id, timeout_s=300)
    assert done.status == "failed" and done.error is not None
    assert done.error["code"] == "acceptance_failed" and done.attempt == 1
    assert all(m.name != "gated" for m in team.list_models())

"""`llm-distill` through a real control plane and real workers: a teacher fine-tuned by an
llm-finetune job (a LoRA adapter of the hub's tiny-chat) is pinned at create, fetched by the
distilling worker from the registry, merged, and distilled into a smaller student that is
registered with lineage to its teacher, its report beside the teacher's, tokens metered."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelfab.client import ApiError, Client
from modelfab.server import Platform
from tests.e2e.helpers import wait_terminal
from tests.llm_factories import finetune_params, persona, write_jsonl

DISTILL = {"student_layers": [1], "epochs": 1, "lr": 5e-3, "batch_size": 8, "alpha": 0.0,
           "val_fraction": 0.2, "samples": 2, "answer_tokens": 8}  # fmt: skip


# The model and the client protocol are under test, not the database.
pytestmark = [pytest.mark.e2e, pytest.mark.one_backend]


@pytest.fixture
def team(platform: Platform, tmp_path: Path) -> Client:
    admin = Client(platform.url, platform.settings.admin_key_path.read_text().strip())
    client = Client(platform.url, admin.create_tenant("support").api_key)
    client.create_dataset("persona", write_jsonl(tmp_path / "c.jsonl", persona(30)), task="chat")
    return client


def test_a_registered_teacher_is_distilled_into_a_registered_student(team: Client) -> None:
    tune = team.create_job("llm-finetune", dataset="persona", cpus=1,
                           params=finetune_params(epochs=1, model_name="fabi"))  # fmt: skip
    assert wait_terminal(team, tune.id, timeout_s=300).status == "succeeded"
    teacher = team.get_model("fabi")

    job = team.create_job("llm-distill", dataset="persona", cpus=1,
                          params={"teacher": "fabi:1", **DISTILL})  # fmt: skip
    assert job.params["teacher_version_id"] == teacher.id  # pinned at create
    done = wait_terminal(team, job.id, timeout_s=300)
    assert done.status == "succeeded", done.error
    [student] = done.result["students"]
    assert student["layers"] == 1 and student["params"] < done.result["teacher"]["params"]
    assert done.result["model"] == "fabi-1l:1"

    version = team.get_model("fabi-1l")
    assert version.task == "chat" and version.metrics["teacher_eval_loss"] > 0
    assert {"eval_loss", "answer_agreement", "generate_tokens_per_s", "speedup"} <= set(
        version.metrics
    )
    assert {"model.safetensors", "model.json", "tokenizer.json"} <= {
        a.name for a in version.artifacts
    }
    lineage = team.model_lineage("fabi-1l:1")
    assert lineage.parent_model is not None and lineage.parent_model.ref == "fabi:1"
    assert lineage.job.id == job.id
    tokens = [r for r in team.usage(by="job") if r.meter == "tokens_trained"]
    assert sum(r.quantity for r in tokens) >= done.result["tokens_trained"] > 0


def test_teachers_are_checked_at_create(team: Client) -> None:
    for teacher, status in (("nobody:1", 404), ("no-such-llm", 404), ("../x", 422)):
        with pytest.raises(ApiError) as caught:
            team.create_job("llm-distill", dataset="persona",
                            params={"teacher": teacher, **DISTILL})  # fmt: skip
        assert caught.value.status == status and caught.value.param == "params.teacher"


def test_a_student_as_big_as_the_teacher_fails_the_job(team: Client) -> None:
    params = {"teacher": "tiny-chat", **DISTILL, "student_layers": [2]}
    job = team.create_job("llm-distill", dataset="persona", cpus=1, params=params)
    done = wait_terminal(team, job.id, timeout_s=120)
    assert done.status == "failed" and done.error is not None and done.attempt == 1
    assert "students must have fewer" in done.error["message"]

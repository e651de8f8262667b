"""The OpenAI fine-tuning API through the in-process API: the mapping of a create onto an
`llm-finetune` job, of the job's states, events and checkpoints onto OpenAI's objects,
paging, tenancy, idempotency, and every kind of bad input. The `openai` client drives it
against real workers in tests/e2e/test_openai_fine_tuning.py."""

from __future__ import annotations

from typing import Any

import pytest

from modelfab.settings import ServerSettings
from tests.api.test_chat_datasets import openai_jsonl
from tests.api.test_files import create_file
from tests.conftest import Api
from tests.registry_factories import complete, start_attempt, worker_headers

JOBS = "/fine_tuning/jobs"


@pytest.fixture
def settings(settings: ServerSettings) -> ServerSettings:
    """Characters only: counting with the hub's tokenizer is tested on its own."""
    return settings.model_copy(update={"chat_stats_model": None})


@pytest.fixture
def member(api: Api) -> str:
    return str(api.create_tenant("ft-team")["api_key"])


@pytest.fixture
def file_id(api: Api, member: str) -> str:
    return str(create_file(api, member, openai_jsonl()).json()["id"])


def create(api: Api, key: str, body: dict[str, Any], **kwargs: Any) -> Any:
    return api.call("POST", JOBS, key, json=body, **kwargs)


def tiny(file_id: str, **extra: Any) -> dict[str, Any]:
    return {"model": "tiny-chat", "training_file": file_id, **extra}


def test_a_create_is_an_llm_finetune_job_in_openai_shape(
    api: Api, member: str, file_id: str
) -> None:
    resp = create(api, member, tiny(file_id, hyperparameters={"n_epochs": 2}, seed=7))
    assert resp.status_code == 200, resp.text
    ft = resp.json()
    job_id = ft["job"]
    assert ft["id"] == "ftjob-" + job_id.removeprefix("job_")
    assert ft["object"] == "fine_tuning.job" and ft["status"] == "queued"
    assert (ft["model"], ft["training_file"], ft["seed"]) == ("tiny-chat", file_id, 7)
    assert ft["hyperparameters"] == {
        "n_epochs": 2,
        "batch_size": "auto",
        "learning_rate_multiplier": "auto",
    }
    assert ft["method"] == {
        "type": "supervised",
        "supervised": {"hyperparameters": ft["hyperparameters"]},
    }
    assert ft["fine_tuned_model"] is None and ft["finished_at"] is None and ft["error"] is None
    assert ft["result_files"] == [] and ft["integrations"] == [] and ft["trained_tokens"] is None
    assert isinstance(ft["created_at"], int) and ft["organization_id"].startswith("ten")

    job = api.call("GET", f"/jobs/{job_id}", member).json()
    assert job["recipe"] == "llm-finetune" and job["dataset"]["ref"] == f"{file_id}:1"
    params = job["params"]
    assert (params["base_model"], params["method"], params["epochs"]) == ("tiny-chat", "lora", 2)
    assert (params["lr"], params["batch_size"], params["seed"]) == ("auto", "auto", 7)
    assert api.call("GET", f"{JOBS}/{ft['id']}", member).json() == ft


def test_the_method_form_with_a_learning_rate_multiplier_and_a_suffix(
    api: Api, member: str, file_id: str
) -> None:
    hp = {"n_epochs": "auto", "batch_size": 4, "learning_rate_multiplier": 0.5}
    body = tiny(
        file_id,
        method={"type": "supervised", "supervised": {"hyperparameters": hp}},
        suffix="support-bot",
        metadata={"team": "support"},
    )
    ft = create(api, member, body).json()
    assert ft["hyperparameters"] == hp and ft["metadata"] == {"team": "support"}
    assert isinstance(ft["seed"], int)  # one is drawn when left out
    params = api.call("GET", f"/jobs/{ft['job']}", member).json()["params"]
    assert params["lr"] == pytest.approx(1e-4)  # 0.5 x the LoRA base of 2e-4
    assert (params["batch_size"], params["model_name"]) == (4, "support-bot")


@pytest.mark.parametrize(
    ("change", "status", "param"),
    [
        ({"training_file": "file-000000000000000000000000"}, 404, "training_file"),
        ({"model": "no-such-llm"}, 404, "model"),
        ({"hyperparameters": {"n_epochs": 0}}, 422, "hyperparameters.n_epochs"),
        ({"hyperparameters": {"n_epochs": "many"}}, 422, "hyperparameters.n_epochs"),
        ({"hyperparameters": {"batch_size": 9999}}, 422, "hyperparameters.batch_size"),
        (
            {"hyperparameters": {"learning_rate_multiplier": -1}},
            422,
            "hyperparameters.learning_rate_multiplier",
        ),
        ({"hyperparameters": {"beta": 0.1}}, 422, "hyperparameters.beta"),
        ({"method": {"type": "dpo", "dpo": {}}}, 422, "method.type"),
        (
            {
                "hyperparameters": {"n_epochs": 1},
                "method": {"type": "supervised", "supervised": {"hyperparameters": {}}},
            },
            422,
            "hyperparameters",
        ),
        ({"validation_file": "file-000000000000000000000000"}, 422, "validation_file"),
        ({"suffix": "Not A Name"}, 422, "suffix"),
        ({"integrations": [{"type": "wandb", "wandb": {"project": "x"}}]}, 422, "integrations"),
        ({"seed": -1}, 422, "seed"),
    ],
)
def test_bad_input_names_the_param(
    api: Api, member: str, file_id: str, change: dict[str, Any], status: int, param: str
) -> None:
    resp = create(api, member, {**tiny(file_id), **change})
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert api.call("GET", JOBS, member).json()["data"] == []


def test_the_messages_say_what_to_do(api: Api, member: str, file_id: str) -> None:
    missing = create(api, member, tiny("file-nope")).json()["error"]["message"]
    assert "POST /v1/files" in missing and "purpose fine-tune" in missing
    model = create(api, member, tiny(file_id, model="gpt-4o-mini")).json()["error"]["message"]
    assert "tiny-chat" in model  # the hub's ids
    validation = create(api, member, tiny(file_id, validation_file=file_id)).json()["error"]
    assert "leave validation_file out" in validation["message"]


def test_a_tenant_sees_only_its_fine_tuning_jobs(api: Api, member: str, file_id: str) -> None:
    other = str(api.create_tenant("other-team")["api_key"])
    foreign = create(api, other, tiny(file_id))
    assert foreign.status_code == 404 and foreign.json()["error"]["param"] == "training_file"
    ft = create(api, member, tiny(file_id)).json()
    for method, path in [
        ("GET", f"{JOBS}/{ft['id']}"),
        ("POST", f"{JOBS}/{ft['id']}/cancel"),
        ("GET", f"{JOBS}/{ft['id']}/events"),
        ("GET", f"{JOBS}/{ft['id']}/checkpoints"),
    ]:
        resp = api.call(method, path, other)
        assert resp.status_code == 404, (method, path, resp.text)
        assert resp.json()["error"]["param"] == "fine_tuning_job_id"
    assert api.call("GET", JOBS, other).json() == {"object": "list", "data": [], "has_more": False}
    assert api.call("GET", f"{JOBS}/{ft['id']}", member).json()["status"] == "queued"


def test_only_llm_finetune_jobs_are_fine_tuning_jobs(api: Api, member: str) -> None:
    sleep = api.call("POST", "/jobs", member, json={"recipe": "sleep"}).json()
    as_ft = "ftjob-" + sleep["id"].removeprefix("job_")
    assert api.call("GET", f"{JOBS}/{as_ft}", member).status_code == 404
    assert api.call("GET", f"{JOBS}/{sleep['id']}", member).status_code == 404
    assert api.call("GET", JOBS, member).json()["data"] == []


def test_listing_pages_newest_first(api: Api, member: str, file_id: str) -> None:
    ids = [create(api, member, tiny(file_id)).json()["id"] for _ in range(3)]
    first = api.call("GET", f"{JOBS}?limit=2", member).json()
    assert [j["id"] for j in first["data"]] == ids[::-1][:2] and first["has_more"] is True
    rest = api.call("GET", f"{JOBS}?limit=2&after={ids[1]}", member).json()
    assert [j["id"] for j in rest["data"]] == [ids[0]] and rest["has_more"] is False
    bad = api.call("GET", f"{JOBS}?after=ftjob-nope", member)
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "after"
    assert api.call("GET", f"{JOBS}?limit=0", member).status_code == 422


def test_a_queued_job_is_cancelled_at_once(api: Api, member: str, file_id: str) -> None:
    ft = create(api, member, tiny(file_id)).json()
    cancelled = api.call("POST", f"{JOBS}/{ft['id']}/cancel", member).json()
    assert cancelled["status"] == "cancelled" and isinstance(cancelled["finished_at"], int)
    assert cancelled["error"] is None


def test_a_repeated_create_with_one_idempotency_key_is_one_job(
    api: Api, member: str, file_id: str
) -> None:
    headers = {"Idempotency-Key": "ft-1"}
    first = create(api, member, tiny(file_id), headers=dict(headers))
    again = create(api, member, tiny(file_id), headers=dict(headers))
    assert first.status_code == again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    assert len(api.call("GET", JOBS, member).json()["data"]) == 1
    reused = create(api, member, tiny(file_id, suffix="other"), headers=dict(headers))
    assert reused.status_code == 409
    assert reused.json()["error"]["code"] == "idempotency_key_reused"


def post_events(api: Api, job_id: str, token: str, events: list[dict[str, Any]]) -> None:
    resp = api.client.post(
        f"/v1/worker/jobs/{job_id}/events",
        headers=worker_headers(token),
        json={"events": events},
    )
    assert resp.status_code == 200, resp.text


def test_states_events_and_checkpoints_map_onto_openai_objects(
    api: Api, member: str, file_id: str, factory: Any
) -> None:
    ft = create(api, member, tiny(file_id)).json()
    token = start_attempt(factory, ft["job"])
    config = {"method": "lora", "epochs": 3, "lr": 1e-4, "batch_size": 8}
    step = {"step": 5, "train_loss": 1.5, "tokens_per_s": 900.0, "lr": 1e-4, "eta_s": 60.0}
    epoch = {"epoch": 1.0, "train_loss": 1.4, "val_loss": 1.2, "val_token_accuracy": 0.5}
    post_events(
        api,
        ft["job"],
        token,
        [
            {"message": "8 conversations to train on", "data": {"config": config}},
            {"message": "", "type": "metrics", "data": step},
            {"message": "Slow disk", "level": "warning"},
            {"message": "", "type": "metrics", "data": {"step": 10, **epoch}},
            {"message": "Epoch 1/3", "type": "checkpoint", "data": {"step": 10, **epoch}},
        ],
    )
    running = api.call("GET", f"{JOBS}/{ft['id']}", member).json()
    assert running["status"] == "running"
    assert running["hyperparameters"] == {
        "n_epochs": 3,
        "batch_size": 8,
        "learning_rate_multiplier": 0.5,
    }  # as the recipe resolved them
    assert isinstance(running["estimated_finish"], int)
    assert running["estimated_finish"] >= running["created_at"] + 60

    events = api.call("GET", f"{JOBS}/{ft['id']}/events", member).json()
    newest = events["data"][0]
    assert newest["object"] == "fine_tuning.job.event" and newest["type"] == "message"
    assert newest["message"] == "Epoch 1/3"
    metrics = [e for e in events["data"] if e["type"] == "metrics"]
    assert [m["data"]["step"] for m in metrics] == [10, 5]
    assert {e["level"] for e in events["data"]} == {"info", "warn"}
    page = api.call("GET", f"{JOBS}/{ft['id']}/events?limit=2", member).json()
    assert page["has_more"] is True and len(page["data"]) == 2
    older = api.call(
        "GET", f"{JOBS}/{ft['id']}/events?limit=2&after={page['data'][-1]['id']}", member
    ).json()
    assert older["data"] == events["data"][2:4]
    bad = api.call("GET", f"{JOBS}/{ft['id']}/events?after=42", member)
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "after"

    checkpoints = api.call("GET", f"{JOBS}/{ft['id']}/checkpoints", member).json()
    (ckpt,) = checkpoints["data"]
    assert ckpt["object"] == "fine_tuning.job.checkpoint" and ckpt["id"].startswith("ftckpt-")
    assert (ckpt["step_number"], ckpt["fine_tuning_job_id"]) == (10, ft["id"])
    assert ckpt["fine_tuned_model_checkpoint"] == f"{ft['id']}:ckpt-step-10"
    assert ckpt["metrics"]["valid_loss"] == 1.2 and ckpt["metrics"]["train_loss"] == 1.4
    assert ckpt["metrics"]["valid_mean_token_accuracy"] == 0.5

    resp = complete(api.client, ft["job"], token, result={"tokens_trained": 1234})
    assert resp.status_code == 200, resp.text
    done = api.call("GET", f"{JOBS}/{ft['id']}", member).json()
    assert (done["status"], done["trained_tokens"]) == ("succeeded", 1234)
    assert isinstance(done["finished_at"], int) and done["estimated_finish"] is None


def test_a_failed_job_carries_its_error_with_openai_params(
    api: Api, member: str, file_id: str, factory: Any
) -> None:
    ft = create(api, member, tiny(file_id)).json()
    token = start_attempt(factory, ft["job"])
    resp = api.client.post(
        f"/v1/worker/jobs/{ft['job']}/complete",
        headers=worker_headers(token),
        json={
            "status": "failed",
            "attempt": 1,
            "error": {"code": "bad_epochs", "message": "too many", "param": "params.epochs"},
            "retryable": False,
        },
    )
    assert resp.status_code == 200, resp.text
    failed = api.call("GET", f"{JOBS}/{ft['id']}", member).json()
    assert failed["status"] == "failed"
    assert failed["error"]["param"] == "hyperparameters.n_epochs"


def test_resources_and_quotas_apply_as_to_any_job(api: Api) -> None:
    small = str(api.create_tenant("small-team", max_cpus=1)["api_key"])
    file_id = create_file(api, small, openai_jsonl()).json()["id"]
    resp = create(api, small, tiny(file_id, resources={"cpus": 2}))
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "unschedulable"
    ft = create(api, small, tiny(file_id, resources={"cpus": 1, "gpus": 0.5})).json()
    job = api.call("GET", f"/jobs/{ft['job']}", small).json()
    assert job["resources"]["cpus"] == 1 and job["resources"]["gpus"] == 0.5

"""The unchanged `openai` client drives fine-tuning on a real control plane with real
workers: a chat file uploaded, a tiny chat model from the hub fine-tuned through
`fine_tuning.jobs`, its events, checkpoints and registered model read back; and a running
job cancelled."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest
from openai.types.fine_tuning import FineTuningJob

from modelfab.client import Client
from modelfab.server import Platform
from modelfab.settings import ServerSettings
from tests.e2e.chat import openai_client, team_key
from tests.e2e.helpers import eventually
from tests.llm_factories import persona

ENDED = ("succeeded", "failed", "cancelled")


# The model and the client protocol are under test, not the database.
pytestmark = [pytest.mark.e2e, pytest.mark.one_backend]


@pytest.fixture
def settings(settings: ServerSettings) -> ServerSettings:
    """Characters only: counting with the hub's tokenizer is tested on its own."""
    return settings.model_copy(update={"chat_stats_model": None})


@pytest.fixture
def oai(platform: Platform) -> Iterator[openai.OpenAI]:
    """The unchanged `openai` client with a fresh tenant's key, on a real control plane."""
    with openai_client(platform, team_key(platform, "openai-ft")) as client:
        yield client


def chat_file(oai: openai.OpenAI, n: int) -> str:
    lines = "".join(json.dumps({"messages": c}) + "\n" for c in persona(n))
    return oai.files.create(file=("persona.jsonl", lines.encode()), purpose="fine-tune").id


def wait(oai: openai.OpenAI, job_id: str, statuses: tuple[str, ...]) -> FineTuningJob:
    def reached() -> FineTuningJob | None:
        job = oai.fine_tuning.jobs.retrieve(job_id)
        return job if job.status in statuses else None

    return eventually(reached, timeout_s=300, what=f"{job_id} to be one of {statuses}")


def test_the_openai_client_fine_tunes_end_to_end(oai: openai.OpenAI, platform: Platform) -> None:
    file_id = chat_file(oai, 40)
    job = oai.fine_tuning.jobs.create(
        model="tiny-chat", training_file=file_id, hyperparameters={"n_epochs": 1}
    )
    assert job.id.startswith("ftjob-") and job.status in ("validating_files", "queued", "running")
    assert (job.model, job.training_file, job.fine_tuned_model) == ("tiny-chat", file_id, None)

    done = wait(oai, job.id, ENDED)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"{file_id}:1"  # the registered version
    assert done.trained_tokens is not None and done.trained_tokens > 0
    assert done.finished_at is not None and done.finished_at >= done.created_at
    hp = done.hyperparameters  # as the recipe resolved its "auto"s
    assert (hp.n_epochs, hp.batch_size, hp.learning_rate_multiplier) == (1, 8, 1.0)
    assert done.method is not None and done.method.type == "supervised"

    events = list(oai.fine_tuning.jobs.list_events(job.id, limit=5))  # pages on by itself
    assert events[0].created_at >= events[-1].created_at  # newest first
    metrics = [e for e in events if e.type == "metrics"]
    assert any(isinstance(e.data, dict) and "train_loss" in e.data for e in metrics)

    (checkpoint,) = oai.fine_tuning.jobs.checkpoints.list(job.id)
    assert checkpoint.fine_tuning_job_id == job.id and checkpoint.step_number > 0
    assert checkpoint.metrics.valid_loss is not None and checkpoint.metrics.train_loss is not None

    assert [j.id for j in oai.fine_tuning.jobs.list()] == [job.id]
    with Client(platform.url, oai.api_key) as c:
        assert c.get_model(file_id).task == "chat"

    with pytest.raises(openai.NotFoundError) as info:
        oai.fine_tuning.jobs.create(model="no-such-llm", training_file=file_id)
    assert info.value.param == "model"


def test_the_openai_client_cancels_a_running_job(oai: openai.OpenAI) -> None:
    file_id = chat_file(oai, 200)  # many steps: it is still training when the cancel comes
    job = oai.fine_tuning.jobs.create(
        model="tiny-chat", training_file=file_id, hyperparameters={"n_epochs": 100}
    )
    wait(oai, job.id, ("running", *ENDED))
    oai.fine_tuning.jobs.cancel(job.id)
    ended = wait(oai, job.id, ENDED)
    assert ended.status == "cancelled" and ended.fine_tuned_model is None

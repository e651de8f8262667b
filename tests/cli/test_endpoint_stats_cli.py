"""`modelfab endpoints show`'s replica reports: the rows it prints from reports built in
memory, and, end to end, a real chat replica's figures after a few answers (a real
platform, its replica a worker process serving a LoRA version: `tests/e2e/chat.py`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from modelfab.cli.endpoints import replica_rows
from modelfab.schemas.endpoints import AdapterStats, ModelStats, ReplicaJob, ReplicaStats
from modelfab.schemas.jobs import JobStatus
from modelfab.server import Platform
from modelfab.serving.chat import WARM_TOKENS
from tests.cli.conftest import RunCli
from tests.e2e.chat import serve_chat, team_key
from tests.e2e.helpers import eventually

QUESTION = "How do I reset the line?"


def replica_job(stats: ReplicaStats | None) -> ReplicaJob:
    return ReplicaJob(job_id="job_1", status=JobStatus.RUNNING, attempt=1, ready=True,
                      url="http://127.0.0.1:9", cpus=1.0, gpus=0.0, stats=stats)  # fmt: skip


def test_rows_show_each_models_load_and_resident_adapters() -> None:
    chat = ModelStats(
        version_id="mv_1", model="bot:1", queue_depth=2, running=3, max_concurrency=8,
        tokens_per_s=41.25, window_s=10.0, generated_tokens=900, prompt_tokens=1500,
        adapter_budget_bytes=1 << 20,
        adapters=[
            AdapterStats(name="mv_1", model="bot:1", loaded=True, pinned=True, bytes=12_300,
                         running=3),
            AdapterStats(name="mv_2", model="bot:2", loaded=False, pinned=False, bytes=5_000,
                         running=0),
            AdapterStats(name="mv_3", model="legal:4", loaded=True, pinned=False, bytes=950,
                         running=0),
        ],
    )  # fmt: skip
    vision = ModelStats(version_id="mv_9", model="parts:2", queue_depth=5, running=8)
    rows = replica_rows(replica_job(ReplicaStats(reported_at=1.0, outstanding=3,
                                                 models=[chat, vision])))  # fmt: skip
    assert rows == [
        ["job_1", "running", "yes", "bot:1", 2, "3/8", "41.2", 900,
         "bot:1 (pinned) 12.3 KB, legal:4 950 B"],
        ["", "", "", "parts:2", 5, 8, None, None, None],
    ]  # fmt: skip
    no_adapters = chat.model_copy(update={"adapters": []})
    [row] = replica_rows(replica_job(ReplicaStats(reported_at=1.0, outstanding=0,
                                                  models=[no_adapters])))  # fmt: skip
    assert row[-1] == "none"
    # not probed yet, or the last report is stale
    assert replica_rows(replica_job(None)) == [["job_1", "running", "yes", *[None] * 6]]


@pytest.mark.e2e
@pytest.mark.one_backend  # the replica's wiring is under test, not the database
@pytest.mark.timeout(120)
def test_show_reports_a_chat_replicas_tokens_and_its_pinned_adapter(
    cli: RunCli,
    platform: Platform,
    factory: sessionmaker[Session],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = team_key(platform)
    monkeypatch.setenv("MODELFAB_API_KEY", key)
    serve_chat(platform, factory, tmp_path, key)
    generated = WARM_TOKENS  # the controller's warm-up generated before the endpoint was ready
    for max_tokens in ("3", "5"):
        code, out, err = cli("chat", "assistant", QUESTION, "--max-tokens", max_tokens, "-o",
                             "json")  # fmt: skip
        assert code == 0, err
        generated += json.loads(out)["usage"]["completion_tokens"]
    answered = time.time()

    def report_after_the_answers() -> dict[str, Any] | None:
        code, out, err = cli("endpoints", "show", "assistant", "--output", "json")
        assert code == 0, err
        [replica] = json.loads(out)["replica_jobs"]
        stats = replica["stats"]
        return stats if stats is not None and stats["reported_at"] > answered else None

    stats = eventually(report_after_the_answers, timeout_s=15, what="a probe after the answers")
    [model] = stats["models"]
    assert model["model"] == "support-bot:1"
    assert model["generated_tokens"] == generated and model["prompt_tokens"] > 0
    assert (model["queue_depth"], model["running"]) == (0, 0)
    [adapter] = model["adapters"]
    assert adapter["model"] == "support-bot:1" and adapter["name"] == model["version_id"]
    assert adapter["loaded"] and adapter["pinned"] and adapter["bytes"] > 0

    code, out, err = cli("endpoints", "show", "assistant")
    assert code == 0, err
    assert "support-bot:1 (pinned)" in out and "adapters resident" in out

"""The control plane's token counter for chat dataset stats: loaded once from the hub model
the settings name, tried again after a failure, and none when the settings name none."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from modelfab.llm.conversations import ChatMessage
from modelfab.server import build_context
from modelfab.services.chat_tokens import BoundCounter, HubTokenCounts, load_counter
from modelfab.settings import ServerSettings
from modelfab.tasks import chat as chat_task
from modelfab.tasks.chat import TokenCounter
from tests.api.factories import upload
from tests.api.test_chat_datasets import openai_jsonl
from tests.conftest import Api
from tests.llm.files import needs_smollm2


def words(messages: Sequence[ChatMessage]) -> int:
    return sum(len(m["content"].split()) for m in messages)


class Loads:
    """A hub stand-in: fails `failures` times, then gives a word counter; counts calls."""

    def __init__(self, failures: int = 0):
        self.calls: list[tuple[Path, str]] = []
        self.failures = failures

    def __call__(self, hub_dir: Path, model_id: str) -> TokenCounter | None:
        self.calls.append((hub_dir, model_id))
        if len(self.calls) <= self.failures:
            raise OSError("tokenizer files missing")
        return BoundCounter(model_id, 2048, words)


@pytest.fixture(autouse=True)
def restore() -> Iterator[None]:
    yield
    chat_task.use_token_counter(None)


def test_the_counter_is_loaded_once(tmp_path: Path) -> None:
    loads = Loads()
    source = HubTokenCounts(tmp_path, "tiny-chat", load=loads)
    first, second = source(), source()
    assert first is second and loads.calls == [(tmp_path, "tiny-chat")]
    assert first is not None and (first.name, first.context) == ("tiny-chat", 2048)
    assert first.count([{"role": "user", "content": "two words"}]) == 2


def test_a_failed_load_counts_characters_and_is_tried_again(tmp_path: Path) -> None:
    loads = Loads(failures=1)
    source = HubTokenCounts(tmp_path, "smollm2-135m-instruct", load=loads)
    assert source() is None
    assert source() is not None and len(loads.calls) == 2


def test_build_context_installs_the_settings_model(
    settings: ServerSettings, factory: sessionmaker[Session]
) -> None:
    build_context(settings, factory, None, node_ids=[])
    assert isinstance(chat_task._token_counter_source, HubTokenCounts)
    assert chat_task._token_counter_source.model_id == "smollm2-135m-instruct"
    assert chat_task._token_counter_source.hub_dir == settings.hub_dir
    build_context(
        settings.model_copy(update={"chat_stats_model": None}), factory, None, node_ids=[]
    )
    assert chat_task._token_counter_source is None


def test_tiny_chat_counts_with_its_template(tmp_path: Path) -> None:
    counter = load_counter(tmp_path, "tiny-chat")
    assert (counter.name, counter.context) == ("tiny-chat", 2048)
    short = counter.count(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    )
    longer = counter.count(
        [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "yo"}]
    )
    assert 0 < short < longer


def test_an_unknown_model_counts_characters(tmp_path: Path) -> None:
    assert HubTokenCounts(tmp_path, "no-such-model")() is None


def test_uploads_count_smollm2_tokens(api: Api, tmp_path: Path) -> None:
    """The default settings: chat stats count tokens under SmolLM2's tokenizer and template
    (converted from the package's GGUF into the hub cache on first use: a few seconds)."""
    needs_smollm2()
    key = api.create_tenant("tokens")["api_key"]
    resp = upload(api, key, "counted", openai_jsonl(), task="chat", filename="chats.jsonl")
    assert resp.status_code == 201, resp.text
    tokens = resp.json()["stats"]["tokens"]
    assert tokens["tokenizer"] == "smollm2-135m-instruct"
    # the template adds a default system turn and role markers to each short exchange
    assert 20 < tokens["p50"] <= tokens["p95"] == tokens["max"] < 80

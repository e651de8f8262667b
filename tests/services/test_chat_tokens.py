"""The control plane's token counter for chat dataset stats: loaded once from the hub model
the settings name, tried again after a failure, and none when the settings name none."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from modelfab.llm.conversations import ChatMessage
from modelfab.server import build_context
from modelfab.services.chat_tokens import BoundCounter, HubTokenCounts
from modelfab.settings import ServerSettings
from modelfab.tasks import chat as chat_task
from modelfab.tasks.chat import TokenCounter


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

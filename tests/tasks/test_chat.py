"""The chat task: its dataset folder, its stats (characters always, tokens when a counter is
installed), and how an uploaded file or folder becomes that folder."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelfab.errors import DatasetInvalid
from modelfab.llm.conversations import CONVERSATIONS_FILE, ChatMessage, ConversationInvalid
from modelfab.tasks import CHAT, get_task
from modelfab.tasks import chat as chat_task
from modelfab.tasks.chat import length_stats, percentile


@dataclass
class WordCounter:
    """Counts words plus two per message (a stand-in for a tokenizer and its template)."""

    name: str = "words"
    context: int | None = None

    def count(self, messages: Sequence[ChatMessage]) -> int:
        return sum(len(m["content"].split()) + 2 for m in messages)


@pytest.fixture(autouse=True)
def no_counter() -> Iterator[None]:
    """Characters only unless a test installs a counter (other tests' platforms install
    the hub's)."""
    chat_task.use_token_counter(None)
    yield
    chat_task.use_token_counter(None)


def conversation(*turns: tuple[str, str]) -> str:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]})


def dataset(root: Path, lines: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / CONVERSATIONS_FILE).write_text("".join(f"{line}\n" for line in lines))
    return root


LINES = [
    conversation(("system", "Be brief."), ("user", "one two"), ("assistant", "three")),
    conversation(("user", "a"), ("assistant", "b c d"), ("user", "e"), ("assistant", "f")),
    conversation(("user", "hello there"), ("assistant", "hi")),
]


def test_percentiles_are_nearest_rank() -> None:
    values = list(range(1, 101))
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 100)) == (
        50,
        95,
        100,
    )
    assert percentile([7], 95) == 7 and percentile([], 50) == 0
    assert length_stats([3, 1, 2]) == {"p50": 2, "p95": 3, "max": 3, "total": 6}


def test_stats_count_conversations_turns_characters_and_tokens(
    tmp_path: Path, no_counter: None
) -> None:
    root = dataset(tmp_path / "ds", LINES)
    scan = get_task(CHAT).scan(root)  # no counter installed: characters only
    assert scan.task == CHAT and [f.relpath for f in scan.files] == [CONVERSATIONS_FILE]
    assert scan.stats["conversations"] == 3 and scan.stats["messages"] == 9
    assert scan.stats["turns"] == {"system": 1, "user": 4, "assistant": 4}
    assert scan.stats["characters"] == {"p50": 13, "p95": 21, "max": 21, "total": 42}
    assert scan.stats["tokens"] is None

    chat_task.use_token_counter(lambda: WordCounter())
    stats = get_task(CHAT).scan(root).stats
    # words + 2 per message: 2+2+1 +6 = 11; 1+3+1+1 +8 = 14; 2+1 +4 = 7
    assert stats["tokens"] == {"p50": 11, "p95": 14, "max": 14, "total": 32, "tokenizer": "words"}


def test_a_conversation_longer_than_the_context_is_refused_naming_its_line(tmp_path: Path) -> None:
    root = dataset(tmp_path / "ds", LINES)
    tree = chat_task.walk(root)
    with pytest.raises(ConversationInvalid) as info:
        chat_task.survey_with(root, tree, WordCounter(name="tiny-chat", context=12))
    assert info.value.line == 2
    assert "14 tokens under tiny-chat's chat template, longer than its context of 12" in str(
        info.value
    )


def test_a_failing_counter_falls_back_to_characters(tmp_path: Path, no_counter: None) -> None:
    def broken() -> WordCounter:
        raise OSError("tokenizer files missing")

    chat_task.use_token_counter(broken)
    assert chat_task.token_counter() is None
    assert get_task(CHAT).scan(dataset(tmp_path / "ds", LINES)).stats["tokens"] is None


def test_the_folder_holds_conversations_jsonl_alone(tmp_path: Path) -> None:
    root = dataset(tmp_path / "ds", LINES)
    (root / "extra.jsonl").write_text(LINES[0] + "\n")
    with pytest.raises(DatasetInvalid) as info:
        get_task(CHAT).scan(root)
    assert info.value.param == "extra.jsonl"
    assert "holds one file, conversations.jsonl" in info.value.message


def test_the_stored_file_must_be_normalized(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    (root / CONVERSATIONS_FILE).write_text(json.dumps({"instruction": "i", "output": "o"}) + "\n")
    with pytest.raises(ConversationInvalid) as info:
        get_task(CHAT).scan(root)
    assert "must be OpenAI chat messages" in info.value.message


def test_prepare_upload_converts_a_file_or_a_folder_holding_one(tmp_path: Path) -> None:
    src = tmp_path / "alpaca.json"
    src.write_text(json.dumps([{"instruction": "Say hi", "output": "hi"}]))
    spec = get_task(CHAT)
    assert spec.takes_single_files and spec.prepare_upload is not None
    out = spec.prepare_upload(src, tmp_path / "a", "alpaca.json")
    expected = conversation(("user", "Say hi"), ("assistant", "hi")) + "\n"
    assert (out / CONVERSATIONS_FILE).read_text() == expected

    folder = tmp_path / "upload"
    folder.mkdir()
    (folder / "data.json").write_text(src.read_text())
    (folder / "README.md").write_text("ignored")
    (folder / ".hidden").write_text("ignored")
    out = spec.prepare_upload(folder, tmp_path / "b", "upload")
    assert (out / CONVERSATIONS_FILE).read_text() == expected

    (folder / "more.jsonl").write_text("{}\n")
    with pytest.raises(DatasetInvalid) as info:
        spec.prepare_upload(folder, tmp_path / "c", "upload")
    assert "one .jsonl or .json file" in info.value.message
    assert "data.json, more.jsonl" in info.value.message


def test_a_folder_of_something_else_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "upload"
    folder.mkdir()
    (folder / "chats.csv").write_text("a,b\n")
    with pytest.raises(DatasetInvalid) as info:
        get_task(CHAT).prepare_upload(folder, tmp_path / "out", "upload")  # type: ignore[misc]
    assert info.value.param == "chats.csv"

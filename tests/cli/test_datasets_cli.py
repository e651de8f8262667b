"""`modelfab datasets create NAME ./chats.jsonl --task chat` uploads the one file as it is;
`datasets show` prints the chat stats one line each; a bad line is reported by number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelfab.settings import ServerSettings
from tests.api.test_chat_datasets import alpaca_json, openai_jsonl
from tests.cli.conftest import RunCli


@pytest.fixture
def settings(settings: ServerSettings) -> ServerSettings:
    """Characters only: counting with the hub's tokenizer is tested on its own."""
    return settings.model_copy(update={"chat_stats_model": None})


def test_a_chat_file_becomes_a_dataset_and_show_prints_its_stats(
    cli: RunCli, tmp_path: Path
) -> None:
    chats = tmp_path / "chats.jsonl"
    chats.write_bytes(openai_jsonl())
    code, out, err = cli("datasets", "create", "support-chats", str(chats), "--task", "chat")
    assert code == 0, err
    assert "created support-chats:1" in out
    assert "conversations  3" in out

    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "alpaca.json").write_bytes(alpaca_json())
    code, out, _ = cli("datasets", "create", "support-chats", str(folder), "--task", "chat")
    assert code == 0 and "unchanged: same content as support-chats:1" in out

    code, out, _ = cli("datasets", "show", "support-chats")
    assert code == 0
    lines = {line.split()[0]: line.split(None, 1)[1] for line in out.splitlines() if line.strip()}
    assert lines["ref"] == "support-chats:1" and lines["task"] == "chat"
    assert lines["conversations"] == "3" and lines["messages"] == "6"
    assert lines["turns"] == "system 0, user 3, assistant 3"
    assert lines["characters"].startswith("p50 ") and lines["tokens"] == "-"

    code, out, _ = cli("datasets", "show", "support-chats", "-o", "json")
    assert json.loads(out)["stats"]["turns"]["assistant"] == 3


def test_a_bad_line_is_reported_by_number(cli: RunCli, tmp_path: Path) -> None:
    chats = tmp_path / "chats.jsonl"
    chats.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    code, _, err = cli("datasets", "create", "bad", str(chats), "--task", "chat")
    assert code != 0
    assert "chats.jsonl, line 1: no assistant turn" in " ".join(err.split())

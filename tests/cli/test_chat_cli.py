"""`modelfab chat` through `main(argv)` against a real platform whose endpoint's replica is a
real worker process serving a tiny chat model (`tests/e2e/chat.py`): the answer whole and
streamed, the stats line, `-o json`, the prompt from stdin and a system message in one
flow (one replica start-up), and the errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from modelfab.cli.main import EXIT_API_ERROR, EXIT_USAGE
from modelfab.server import Platform
from tests.cli.conftest import RunCli
from tests.e2e.chat import serve_chat, team_key

# The CLI over the wiring is under test, not the database.
pytestmark = [pytest.mark.e2e, pytest.mark.one_backend, pytest.mark.timeout(120)]

QUESTION = "How do I reset the line?"
GREEDY = ("--temperature", "0", "--max-tokens", "8")


def test_chat_answers_whole_and_streamed(
    cli: RunCli,
    platform: Platform,
    factory: sessionmaker[Session],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = team_key(platform)
    monkeypatch.setenv("MODELFAB_API_KEY", key)
    serve_chat(platform, factory, tmp_path, key)

    code, out, err = cli("chat", "assistant", QUESTION, "-o", "json", *GREEDY)
    assert code == 0, err
    whole = json.loads(out)
    assert whole["object"] == "chat.completion" and whole["model"] == "assistant"
    answer, usage = whole["choices"][0]["message"]["content"], whole["usage"]
    assert 1 <= usage["completion_tokens"] <= 8

    # for people: the answer alone on stdout, the stats on stderr
    code, out, err = cli("chat", "assistant", QUESTION, *GREEDY)
    assert code == 0, err
    assert out == answer + "\n"
    finish = whole["choices"][0]["finish_reason"]
    stats = f"finished: {finish}, tokens: {usage['prompt_tokens']} in, "
    assert stats + f"{usage['completion_tokens']} out" in err

    # streamed, greedy: the same text and counts
    code, out, err = cli("chat", "assistant", QUESTION, "--stream", *GREEDY)
    assert code == 0, err
    assert out == answer + "\n" and stats in err
    code, out, err = cli("chat", "assistant", QUESTION, "--stream", "-o", "json", *GREEDY)
    assert code == 0, err
    streamed = json.loads(out)
    assert streamed["choices"] == whole["choices"] and streamed["usage"] == usage

    # the prompt from stdin; a system message replaces the template's default one
    monkeypatch.setattr("sys.stdin", io.StringIO(QUESTION))
    code, out, err = cli("chat", "assistant", "-", "-o", "json", *GREEDY)
    assert code == 0, err
    assert json.loads(out)["usage"]["prompt_tokens"] == usage["prompt_tokens"]
    code, out, err = cli("chat", "assistant", QUESTION, "--system", "Be brief.", "-o", "json")
    assert code == 0, err
    assert json.loads(out)["usage"]["prompt_tokens"] != usage["prompt_tokens"]

    code, _, err = cli("chat", "assistant", QUESTION, "--temperature", "3")
    assert code == EXIT_API_ERROR and "--temperature" in err


def test_chat_errors_name_what_to_fix(
    cli: RunCli, platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELFAB_API_KEY", team_key(platform))
    for stream in ((), ("--stream",)):
        code, out, err = cli("chat", "nobody", QUESTION, *stream)
        assert code == EXIT_API_ERROR and out == ""
        assert "[model_not_found]" in err and "'nobody' does not exist" in err
        assert "modelfab endpoints list" in err and "ENDPOINT" in err

    monkeypatch.setattr("sys.stdin", io.StringIO("  \n"))
    code, _, err = cli("chat", "nobody", "-")
    assert code == EXIT_USAGE and "stdin is empty" in err

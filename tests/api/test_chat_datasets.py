"""Chat datasets through the API: one file uploaded as it is and converted on the server, in
each format; content-addressed versions; refusals naming the line, with nothing stored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelfab.settings import ServerSettings
from modelfab.tasks import chat as chat_task
from tests.api.factories import make_classification, targz, upload, zipped
from tests.conftest import Api
from tests.tasks.test_chat import WordCounter

CHAT = "chat"

TURNS = [("What is 2+3?", "5"), ("Capital of France?", "Paris"), ("Say hi.", "hi")]


def openai_jsonl(turns: list[tuple[str, str]] = TURNS) -> bytes:
    lines = [
        json.dumps(
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        )
        for q, a in turns
    ]
    return ("\n".join(lines) + "\n").encode()


def alpaca_json(turns: list[tuple[str, str]] = TURNS) -> bytes:
    return json.dumps([{"instruction": q, "input": "", "output": a} for q, a in turns]).encode()


def alpaca_jsonl(turns: list[tuple[str, str]] = TURNS) -> bytes:
    return "".join(json.dumps({"instruction": q, "output": a}) + "\n" for q, a in turns).encode()


def sharegpt(turns: list[tuple[str, str]] = TURNS, *, as_list: bool = False) -> bytes:
    records = [
        {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
        for q, a in turns
    ]
    if as_list:
        return json.dumps(records, indent=1).encode()
    return "".join(json.dumps(r) + "\n" for r in records).encode()


@pytest.fixture
def settings(settings: ServerSettings) -> ServerSettings:
    """Characters only: counting with the hub's tokenizer is tested on its own."""
    return settings.model_copy(update={"chat_stats_model": None})


@pytest.fixture
def member(api: Api) -> str:
    return str(api.create_tenant("support")["api_key"])


@pytest.fixture
def words(api: Api) -> Iterator[WordCounter]:
    """A token counter (words, two per message, a context of 12) installed for the surveys."""
    counter = WordCounter(name="words", context=12)
    chat_task.use_token_counter(lambda: counter)
    yield counter
    chat_task.use_token_counter(None)


def chat_upload(api: Api, key: str, name: str, blob: bytes, filename: str = "chats.jsonl") -> Any:
    return upload(api, key, name, blob, task=CHAT, filename=filename)


def stored(settings: ServerSettings) -> list[str]:
    """Every entry of the dataset store and the scratch folder (leftovers included)."""
    roots = (settings.datasets_dir, settings.home / "tmp")
    return sorted(str(p) for root in roots if root.is_dir() for p in root.iterdir())


@pytest.mark.parametrize(
    ("blob", "filename"),
    [
        (openai_jsonl(), "chats.jsonl"),
        (alpaca_json(), "alpaca.json"),
        (alpaca_jsonl(), "alpaca.jsonl"),
        (sharegpt(), "share.jsonl"),
        (sharegpt(as_list=True), "share.json"),
    ],
    ids=["openai", "alpaca-json", "alpaca-jsonl", "sharegpt-jsonl", "sharegpt-json"],
)
def test_each_format_uploads_as_one_file_and_converts_to_one_version(
    api: Api, member: str, blob: bytes, filename: str
) -> None:
    reference = chat_upload(api, member, "support-chats", openai_jsonl())
    assert reference.status_code == 201, reference.text
    resp = chat_upload(api, member, "support-chats", blob, filename)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    # the same conversations in another format are the same content: the same version
    assert (out["version"], out["sha256"]) == (1, reference.json()["sha256"])
    assert resp.status_code == 200 and out["created"] is False
    assert out["task"] == CHAT and out["file_count"] == 1
    stats = out["stats"]
    assert stats["conversations"] == 3 and stats["messages"] == 6
    assert stats["turns"] == {"system": 0, "user": 3, "assistant": 3}
    assert stats["characters"]["max"] == len("Capital of France?Paris")
    assert stats["tokens"] is None  # no tokenizer wired in these tests


def test_new_content_is_a_new_version(api: Api, member: str) -> None:
    assert chat_upload(api, member, "chats", openai_jsonl()).json()["version"] == 1
    two = chat_upload(api, member, "chats", openai_jsonl([*TURNS, ("Bye?", "bye")]))
    assert two.status_code == 201 and two.json()["version"] == 2
    assert two.json()["stats"]["conversations"] == 4
    detail = api.call("GET", "/datasets/chats", member).json()
    assert detail["versions"] == [1, 2] and detail["stats"]["conversations"] == 4


@pytest.mark.parametrize("pack", ["tar.gz", "zip"])
def test_an_archived_folder_holding_one_chat_file_works_too(
    api: Api, member: str, tmp_path: Path, pack: str
) -> None:
    folder = tmp_path / "chats"
    folder.mkdir()
    (folder / "support.json").write_bytes(alpaca_json())
    (folder / "README.md").write_text("how these were collected")
    blob = targz(folder) if pack == "tar.gz" else zipped(folder)
    resp = chat_upload(api, member, "folder-chats", blob, f"chats.{pack}")
    assert resp.status_code == 201, resp.text
    single = chat_upload(api, member, "file-chats", openai_jsonl())
    assert resp.json()["sha256"] == single.json()["sha256"]


def test_an_archive_of_two_files_is_refused(api: Api, member: str, tmp_path: Path) -> None:
    folder = tmp_path / "chats"
    folder.mkdir()
    (folder / "a.jsonl").write_bytes(openai_jsonl())
    (folder / "b.jsonl").write_bytes(openai_jsonl())
    resp = chat_upload(api, member, "two", targz(folder), "chats.tar.gz")
    assert resp.status_code == 422
    assert "one .jsonl or .json file" in resp.json()["error"]["message"]


@pytest.mark.parametrize(
    ("bad_line", "problem"),
    [
        ('{"messages": [{"role": "user", "content": "q"}', "not valid JSON"),
        ('{"messages": [{"role": "robot", "content": "q"}]}', "unknown role 'robot'"),
        (
            '{"messages": [{"role": "user", "content": ""}, '
            '{"role": "assistant", "content": "a"}]}',
            "has empty content",
        ),
        ('{"messages": [{"role": "user", "content": "q"}]}', "no assistant turn"),
        ('{"messages": [7]}', "message 1 is not an object"),
    ],
)
def test_a_bad_line_is_refused_by_number_and_nothing_is_stored(
    api: Api, member: str, settings: ServerSettings, bad_line: str, problem: str
) -> None:
    before = stored(settings)
    blob = openai_jsonl()[:-1] + b"\n" + bad_line.encode() + b"\n"
    resp = chat_upload(api, member, "broken", blob, "support.jsonl")
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == "dataset_invalid" and error["param"] == "support.jsonl"
    assert error["message"].startswith("support.jsonl, line 4: ")
    assert problem in error["message"]
    assert api.call("GET", "/datasets", member).json()["data"] == []
    assert stored(settings) == before


def test_an_image_task_still_wants_an_archive(api: Api, member: str) -> None:
    resp = upload(api, member, "pets", openai_jsonl(), filename="chats.jsonl")
    assert resp.status_code == 422
    assert "not a zip or tar archive" in resp.json()["error"]["message"]


def test_a_chat_name_taken_by_another_task_conflicts(api: Api, member: str, tmp_path: Path) -> None:
    assert chat_upload(api, member, "mixed", openai_jsonl()).status_code == 201
    resp = upload(api, member, "mixed", targz(make_classification(tmp_path / "pets")))
    assert resp.status_code == 409 and resp.json()["error"]["param"] == "task"


def test_an_admin_imports_a_chat_file_from_the_server(api: Api, tmp_path: Path) -> None:
    path = tmp_path / "server-chats.json"
    path.write_bytes(sharegpt(as_list=True))
    body = {"name": "server-chats", "task": CHAT, "path": str(path)}
    resp = api.call("POST", "/datasets", api.admin_key, json=body)
    assert resp.status_code == 201, resp.text
    assert resp.json()["stats"]["conversations"] == 3
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "chats.jsonl").write_bytes(openai_jsonl())
    again = api.call("POST", "/datasets", api.admin_key, json={**body, "path": str(folder)})
    assert again.status_code == 200 and again.json()["version"] == 1


def test_stats_count_tokens_with_the_installed_counter(
    api: Api, member: str, words: WordCounter
) -> None:
    resp = chat_upload(api, member, "counted", openai_jsonl())
    assert resp.status_code == 201, resp.text
    # words, plus two per message: 4 + 4, 4 + 4, 3 + 4
    assert resp.json()["stats"]["tokens"] == {
        "p50": 8,
        "p95": 8,
        "max": 8,
        "total": 23,
        "tokenizer": "words",
    }


def test_a_conversation_past_the_context_is_refused_by_its_line_in_the_upload(
    api: Api, member: str, words: WordCounter
) -> None:
    turns = [*TURNS, ("one two three four five six seven", "eight nine")]  # 9 words + 4
    records = [{"instruction": q, "output": a} for q, a in turns]
    blob = ("[\n" + ",\n\n".join(json.dumps(r) for r in records) + "\n]").encode()
    resp = chat_upload(api, member, "counted", blob, "long.json")
    assert resp.status_code == 422
    error = resp.json()["error"]
    assert error["param"] == "long.json"
    assert error["message"].startswith(
        "long.json, item 4 (line 8): 13 tokens under words's chat template, longer than its "
        "context of 12 tokens"
    )
    assert api.call("GET", "/datasets", member).json()["data"] == []

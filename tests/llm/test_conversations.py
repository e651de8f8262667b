"""Chat files: each accepted format converts to the normalized form, and every problem is
refused naming the file, the line and what is wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfab.errors import DatasetInvalid
from modelfab.llm.conversations import (
    CONVERSATIONS_FILE,
    ChatLimits,
    ChatMessage,
    ConversationInvalid,
    check_messages,
    convert_file,
    dump_conversation,
    read_conversations,
)

PAIR: list[ChatMessage] = [
    {"role": "user", "content": "What is 2+3?"},
    {"role": "assistant", "content": "5"},
]


def jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def messages_of(path: Path, **kwargs: Any) -> list[list[ChatMessage]]:
    return [c.messages for c in read_conversations(path, **kwargs)]


def refusal(path: Path, **kwargs: Any) -> ConversationInvalid:
    with pytest.raises(ConversationInvalid) as info:
        list(read_conversations(path, **kwargs))
    assert isinstance(info.value, DatasetInvalid)  # answered 422, code dataset_invalid
    assert info.value.param == path.name
    return info.value


# --------------------------------------------------------------------------- formats


def test_openai_jsonl_keeps_roles_and_content_and_skips_blank_lines(tmp_path: Path) -> None:
    system = {"role": "system", "content": "You are terse."}
    path = tmp_path / "chats.jsonl"
    path.write_text(
        json.dumps({"messages": [system, *PAIR]})
        + "\n\n"
        + json.dumps({"messages": [{**PAIR[0], "name": "ann"}, {**PAIR[1], "weight": 1}]})
        + "\n"
    )
    conversations = list(read_conversations(path))
    assert [c.messages for c in conversations] == [[system, *PAIR], PAIR]
    assert [c.format for c in conversations] == ["openai", "openai"]
    assert [c.where.line for c in conversations] == [1, 3]


@pytest.mark.parametrize("as_list", [False, True], ids=["jsonl", "json-list"])
def test_alpaca_becomes_a_user_turn_and_an_answer(tmp_path: Path, as_list: bool) -> None:
    records = [
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"instruction": "Say hi.", "input": "", "output": "hi", "system": "Be brief."},
        {"instruction": "Say bye.", "output": "bye"},
    ]
    path = tmp_path / "alpaca.json"
    if as_list:
        path.write_text(json.dumps(records, indent=2))
    else:
        jsonl(path, records)
    assert messages_of(path) == [
        [
            {"role": "user", "content": "Add the numbers.\n\n2 and 3"},
            {"role": "assistant", "content": "5"},
        ],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hi."},
            {"role": "assistant", "content": "hi"},
        ],
        [{"role": "user", "content": "Say bye."}, {"role": "assistant", "content": "bye"}],
    ]
    assert {c.format for c in read_conversations(path)} == {"alpaca"}


@pytest.mark.parametrize("as_list", [False, True], ids=["jsonl", "json-list"])
def test_sharegpt_maps_speakers_to_roles(tmp_path: Path, as_list: bool) -> None:
    records = [
        {
            "conversations": [
                {"from": "system", "value": "Be kind."},
                {"from": "human", "value": "hello"},
                {"from": "gpt", "value": "hi!"},
                {"from": "user", "value": "and?"},
                {"from": "assistant", "value": "that's all"},
            ]
        },
        {
            "system": "Sys",
            "conversations": [{"role": "user", "content": "q"}, {"from": "gpt", "value": "a"}],
        },
    ]
    path = tmp_path / "share.jsonl"
    if as_list:
        path.write_text(json.dumps(records))
    else:
        jsonl(path, records)
    first, second = messages_of(path)
    assert [m["role"] for m in first] == ["system", "user", "assistant", "user", "assistant"]
    assert [m["content"] for m in first] == ["Be kind.", "hello", "hi!", "and?", "that's all"]
    assert second == [
        {"role": "system", "content": "Sys"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]


def test_a_json_list_names_items_and_their_lines(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text(
        '\ufeff  [\n  {"messages": %s},\n\n  {"messages": %s}\n]\n' % ((json.dumps(PAIR),) * 2)
    )
    conversations = list(read_conversations(path))
    assert [(c.where.item, c.where.line) for c in conversations] == [(1, 2), (2, 4)]
    assert str(conversations[1].where) == "item 2 (line 4)"
    empty = tmp_path / "empty-list.json"
    empty.write_text("[ ]")
    assert "no conversations" in refusal(empty).message


def test_the_same_conversations_in_any_format_convert_to_the_same_bytes(tmp_path: Path) -> None:
    openai = jsonl(tmp_path / "a.jsonl", [{"messages": PAIR}])
    alpaca = tmp_path / "b.json"
    alpaca.write_text(json.dumps([{"instruction": "What is 2+3?", "input": "", "output": "5"}]))
    sharegpt = jsonl(
        tmp_path / "c.jsonl",
        [
            {
                "conversations": [
                    {"from": "human", "value": "What is 2+3?"},
                    {"from": "gpt", "value": "5"},
                ]
            }
        ],
    )
    outputs = []
    for i, src in enumerate((openai, alpaca, sharegpt)):
        converted = convert_file(src, tmp_path / f"out{i}")
        assert converted.path.name == CONVERSATIONS_FILE
        assert converted.conversations == 1
        outputs.append(converted.path.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]
    assert outputs[0].decode() == dump_conversation(PAIR) + "\n"
    assert [c.format for c in [*read_conversations(sharegpt), *read_conversations(alpaca)]] == [
        "sharegpt",
        "alpaca",
    ]


def test_converted_text_is_read_back_unchanged(tmp_path: Path) -> None:
    tricky: list[ChatMessage] = [
        {"role": "user", "content": '  émoji 🎉, quotes " and \\ and\nnew lines  '},
        {"role": "assistant", "content": "\tok\u2028"},
    ]
    src = jsonl(tmp_path / "in.jsonl", [{"messages": tricky}])
    out = convert_file(src, tmp_path / "ds").path
    assert messages_of(out, formats=("openai",)) == [tricky]


_text = st.text(min_size=1).filter(lambda s: s.strip() != "")
_message = st.builds(
    lambda role, content: {"role": role, "content": content},
    st.sampled_from(["system", "user", "assistant"]),
    _text,
)


@settings(max_examples=50, deadline=None)
@given(st.lists(_message, min_size=1, max_size=6))
def test_dump_then_parse_is_the_identity(messages: list[ChatMessage]) -> None:
    messages = [*messages, {"role": "assistant", "content": "end"}]
    check_messages(messages)
    line = dump_conversation(messages)
    assert "\n" not in line
    assert json.loads(line) == {"messages": messages}


# --------------------------------------------------------------------------- refusals


def write(tmp_path: Path, text: str, name: str = "chats.jsonl") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


GOOD = json.dumps({"messages": PAIR})
ANSWER = '{"role": "assistant", "content": "a"}]}'


@pytest.mark.parametrize(
    ("line3", "problem"),
    [
        ('{"messages": [', "not valid JSON"),
        ("[1, 2]", "a JSON list, not an object"),
        ('"hello"', "a JSON string, not an object"),
        ('{"prompt": "a", "completion": "b"}', 'no "messages" (OpenAI chat)'),
        ('{"messages": "hi"}', '"messages" must be a list'),
        ('{"messages": []}', "no messages"),
        (
            '{"messages": ["hi", {"role": "assistant", "content": "a"}]}',
            "message 1 is not an object",
        ),
        ('{"messages": [{"role": "bot", "content": "x"}]}', "message 1 has unknown role 'bot'"),
        ('{"messages": [{"content": "x"}]}', "message 1 has unknown role None"),
        ('{"messages": [{"role": "user", "content": 3}]}', "message 1's content is a int"),
        (
            '{"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}',
            "content is missing",
        ),
        (
            '{"messages": [{"role": "user", "content": " \\n"}, ' + ANSWER,
            "message 1 (user) has empty content",
        ),
        ('{"messages": [{"role": "user", "content": "q"}]}', "no assistant turn"),
        (
            '{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}',
            "no assistant turn",
        ),
        (
            '{"messages": [{"role": "user", "content": "\\ud800"}, ' + ANSWER,
            "lone surrogate",
        ),
        (
            '{"instruction": "i", "output": "o"}',
            "alpaca record, but this file is OpenAI chat messages",
        ),
    ],
)
def test_a_bad_record_is_refused_naming_its_line(tmp_path: Path, line3: str, problem: str) -> None:
    path = write(tmp_path, f"{GOOD}\n\n{line3}\n{GOOD}\n")
    error = refusal(path)
    assert error.line == 3
    assert error.message.startswith("chats.jsonl, line 3: ")
    assert problem in error.message


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"instruction": "", "output": "o"}, '"instruction" is empty'),
        ({"instruction": "i", "output": ""}, "message 2 (assistant) has empty content"),
        ({"instruction": "i", "input": 5, "output": "o"}, '"input" is a int'),
        ({"output": "o"}, '"instruction" is missing'),
        ({"conversations": [{"from": "bot", "value": "x"}]}, "turn 1 has unknown speaker 'bot'"),
        ({"conversations": [["human", "x"]]}, "turn 1 is not an object"),
        ({"conversations": {"from": "human"}}, '"conversations" must be a list'),
        ({"conversations": [{"from": "human", "value": "q"}]}, "no assistant turn"),
    ],
)
def test_bad_alpaca_and_sharegpt_records(tmp_path: Path, record: Any, problem: str) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps([record]))
    error = refusal(path)
    assert error.line == 1
    assert problem in error.message
    assert "item 1 (line 1)" in error.message


def test_bad_json_inside_a_list_names_the_item_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, f'[\n{GOOD},\n{{"messages": [}}\n]', "list.json")
    error = refusal(path)
    assert (error.line, "item 2 (line 3)") == (3, error.message.split(", ", 1)[1][:15])
    assert "not valid JSON" in error.message
    missing_comma = write(tmp_path, f"[{GOOD}\n{GOOD}]", "comma.json")
    assert "expected ',' or ']' after item 1" in refusal(missing_comma).message
    trailing = write(tmp_path, f"[{GOOD}]\n{{}}", "tail.json")
    error = refusal(trailing)
    assert "text after the JSON list" in error.message and error.line == 2


def test_whole_file_problems(tmp_path: Path) -> None:
    assert "no conversations" in refusal(write(tmp_path, "\n \n")).message
    not_utf8 = tmp_path / "latin.jsonl"
    not_utf8.write_bytes(f"{GOOD}\n".encode() + '{"messages": "é"}\n'.encode("latin-1"))
    error = refusal(not_utf8)
    assert (error.line, "not UTF-8" in error.message) == (2, True)
    nested = write(tmp_path, "[" * 100_000 + "]" * 100_000, "deep.jsonl")
    assert "nested too deeply" in refusal(nested).message


def test_limits_name_the_line_past_them(tmp_path: Path) -> None:
    path = write(tmp_path, f"{GOOD}\n{GOOD}\n{GOOD}\n")
    error = refusal(path, lim=ChatLimits(max_conversations=2))
    assert (error.line, "more than the 2 conversations" in error.message) == (3, True)

    long = json.dumps({"messages": [PAIR[0], {"role": "assistant", "content": "x" * 40}]})
    error = refusal(write(tmp_path, f"{GOOD}\n{long}\n"), lim=ChatLimits(max_chars=30))
    assert error.line == 2 and "characters of content, more than the 30" in error.message

    cap = len(GOOD) + 1  # a line and its newline fit exactly
    error = refusal(write(tmp_path, f"{GOOD}\n{long}\n"), lim=ChatLimits(max_record_bytes=cap))
    assert error.line == 2 and f"longer than {cap} bytes" in error.message

    many = json.dumps({"messages": PAIR * 3})
    error = refusal(write(tmp_path, f"{many}\n"), lim=ChatLimits(max_messages=4))
    assert "6 messages, more than the 4" in error.message

    big = write(tmp_path, f"[{GOOD}]", "big.json")
    error = refusal(big, lim=ChatLimits(max_json_bytes=10))
    assert error.line is None and "upload it as JSONL" in error.message


def test_a_format_can_be_required(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"instruction": "i", "output": "o"}]))
    error = refusal(path, formats=("openai",))
    assert "alpaca, but this file must be OpenAI chat messages" in error.message


def test_a_label_names_the_file_in_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "{}\n", "part-123")
    with pytest.raises(ConversationInvalid) as info:
        list(read_conversations(path, label="chats.jsonl"))
    assert info.value.param == "chats.jsonl"
    assert info.value.message.startswith("chats.jsonl, line 1: ")

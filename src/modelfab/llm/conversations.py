"""Chat conversations: the normalized form, and parsing of the formats people upload.

The normalized form is one conversation per line of `conversations.jsonl`:

    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}

Accepted input, as JSONL (one record per line) or as one JSON list of records, the format
told from each record's keys:

- OpenAI chat (`"messages"`): `{"messages": [{"role", "content"}, ...]}`; other keys of a
  message (`name`, `weight`, ...) are ignored.
- alpaca (`"instruction"` / `"output"`): `{"instruction", "input"?, "output", "system"?}`;
  the user turn is the instruction, then a blank line and the input when there is one.
- sharegpt (`"conversations"`): `{"conversations": [{"from": "human"|"user"|"gpt"|
  "assistant"|"system", "value"}, ...], "system"?}` (`role`/`content` turns are read too).

One file holds one format. Every problem is a `ConversationInvalid` naming the file, the
line (and, in a JSON list, the item) and what to do. Torch-free, no transformers: the
control plane validates uploads with it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict, get_args

from modelfab.errors import DatasetInvalid
from modelfab.schemas import limits

logger = logging.getLogger(__name__)

CONVERSATIONS_FILE = "conversations.jsonl"
"""The one file of a chat dataset version, in the normalized form."""

CHAT_SUFFIXES = frozenset({".jsonl", ".json"})
"""Suffixes of a chat file inside an uploaded folder (a file uploaded alone may have any)."""

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = get_args(Role)

Format = Literal["openai", "alpaca", "sharegpt"]
FORMATS: tuple[Format, ...] = get_args(Format)
FORMAT_NAMES: dict[Format, str] = {
    "openai": "OpenAI chat messages",
    "alpaca": "alpaca",
    "sharegpt": "sharegpt",
}

SHAREGPT_ROLES: dict[str, Role] = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}
"""sharegpt's `from` values and the roles they become."""

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_SURROGATE = re.compile("[\ud800-\udfff]")
_BOM = "\ufeff"


class ChatMessage(TypedDict):
    role: Role
    content: str


@dataclass(frozen=True)
class ChatLimits:
    """How much one chat file may hold (defaults: `modelfab.schemas.limits`)."""

    max_conversations: int = limits.MAX_CHAT_CONVERSATIONS
    max_messages: int = limits.MAX_CHAT_MESSAGES
    """Messages per conversation."""
    max_chars: int = limits.MAX_CHAT_CONVERSATION_CHARS
    """Characters of content per conversation."""
    max_record_bytes: int = limits.MAX_CHAT_RECORD_BYTES
    """Bytes of one JSONL line."""
    max_json_bytes: int = limits.MAX_CHAT_JSON_BYTES
    """Bytes of a file that is one JSON list."""


DEFAULT_LIMITS = ChatLimits()


@dataclass(frozen=True)
class Where:
    """A record's place in its file: the line it starts on (from 1) and, in a JSON list,
    its position in the list (from 1)."""

    line: int
    item: int | None = None

    def __str__(self) -> str:
        return f"line {self.line}" if self.item is None else f"item {self.item} (line {self.line})"


@dataclass(frozen=True)
class Conversation:
    """One normalized conversation and where it came from."""

    messages: list[ChatMessage]
    where: Where
    format: Format


@dataclass(frozen=True)
class Converted:
    """What `convert_file` wrote."""

    path: Path
    format: Format
    conversations: int


class ConversationInvalid(DatasetInvalid):
    """A chat file failed validation. `param` is the file, `line` the line of the record
    (None for the file as a whole)."""

    def __init__(self, label: str, where: Where | None, problem: str):
        place = f"{label}" if where is None else f"{label}, {where}"
        super().__init__(f"{place}: {problem}", param=label)
        self.line = None if where is None else where.line


# --------------------------------------------------------------------------- records


def _decode(raw: bytes, label: str, where: Where) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConversationInvalid(
            label, where, "not UTF-8 text; save the file as UTF-8 and upload it again"
        ) from exc


def _loads(text: str, label: str, where: Where) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConversationInvalid(
            label,
            where,
            f"not valid JSON ({exc.msg}, column {exc.colno}); each line must hold one "
            "whole conversation object (JSONL), or the file one JSON list of them",
        ) from exc
    except RecursionError as exc:
        raise ConversationInvalid(label, where, "JSON nested too deeply") from exc


def _jsonl_records(path: Path, label: str, lim: ChatLimits) -> Iterator[tuple[Where, Any]]:
    """(where, parsed JSON) of every non-blank line, read as a stream."""
    with path.open("rb") as fh:
        number = 0
        while raw := fh.readline(lim.max_record_bytes + 1):
            number += 1
            where = Where(number)
            if len(raw) > lim.max_record_bytes and not raw.endswith(b"\n"):
                raise ConversationInvalid(
                    label,
                    where,
                    f"the line is longer than {lim.max_record_bytes} bytes, the most one "
                    "conversation may take; shorten or split it",
                )
            text = _decode(raw, label, where)
            if number == 1:
                text = text.removeprefix(_BOM)
            if text.strip():
                yield where, _loads(text, label, where)


def _json_list_records(path: Path, label: str, lim: ChatLimits) -> Iterator[tuple[Where, Any]]:
    """(where, parsed JSON) of every item of a file holding one JSON list."""
    size = path.stat().st_size
    if size > lim.max_json_bytes:
        raise ConversationInvalid(
            label,
            None,
            f"one JSON list of {size} bytes, more than the {lim.max_json_bytes} read whole; "
            "upload it as JSONL (one conversation per line) instead",
        )
    text = _decode(path.read_bytes(), label, Where(1)).removeprefix(_BOM)
    decoder = json.JSONDecoder()
    pos = _WHITESPACE.match(text).end() + 1  # type: ignore[union-attr]  # past the "["
    line, counted = 1, 0

    def where_at(at: int, item: int) -> Where:
        nonlocal line, counted
        line += text.count("\n", counted, at)
        counted = at
        return Where(line, item)

    item = 0
    pos = _skip(text, pos)
    if text.startswith("]", pos):
        pos = _skip(text, pos + 1)
    else:
        while True:
            item += 1
            where = where_at(pos, item)
            try:
                value, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                raise ConversationInvalid(
                    label, Where(exc.lineno, item), f"not valid JSON ({exc.msg})"
                ) from exc
            except RecursionError as exc:
                raise ConversationInvalid(label, where, "JSON nested too deeply") from exc
            yield where, value
            pos = _skip(text, end)
            if text.startswith(",", pos):
                pos = _skip(text, pos + 1)
            elif text.startswith("]", pos):
                pos = _skip(text, pos + 1)
                break
            else:
                raise ConversationInvalid(
                    label, where_at(pos, item), f"expected ',' or ']' after item {item}"
                )
    if pos < len(text):
        raise ConversationInvalid(label, where_at(pos, item), "text after the JSON list; remove it")


def _skip(text: str, pos: int) -> int:
    return _WHITESPACE.match(text, pos).end()  # type: ignore[union-attr]


def _records(path: Path, label: str, lim: ChatLimits) -> Iterator[tuple[Where, Any]]:
    """JSON list or JSONL, told from the first character that is not whitespace."""
    with path.open("rb") as fh:
        head = fh.read(64).decode("utf-8", "ignore").lstrip(_BOM + " \t\r\n")
    reader = _json_list_records if head.startswith("[") else _jsonl_records
    return reader(path, label, lim)


# --------------------------------------------------------------------------- formats


def detect_format(record: Mapping[str, Any]) -> Format | None:
    """The format a record's keys say, or None when they say none."""
    if "messages" in record:
        return "openai"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record or "output" in record:
        return "alpaca"
    return None


def _text(value: Any, what: str) -> str:
    """`value` when it is a string; raises ValueError (the problem) otherwise."""
    if not isinstance(value, str):
        kind = "missing" if value is None else f"a {type(value).__name__}, not a string"
        raise ValueError(f"{what} is {kind}; give it as text")
    return value


def _from_openai(record: Mapping[str, Any]) -> list[ChatMessage]:
    messages = record["messages"]
    if not isinstance(messages, list):
        raise ValueError('"messages" must be a list of {"role", "content"} objects')
    out: list[ChatMessage] = []
    for i, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            raise ValueError(
                f'message {i} is not an object; write it as {{"role": ..., "content": ...}}'
            )
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"message {i} has unknown role {role!r}; roles are {', '.join(ROLES)}")
        out.append(
            {"role": role, "content": _text(message.get("content"), f"message {i}'s content")}
        )
    return out


def _from_sharegpt(record: Mapping[str, Any]) -> list[ChatMessage]:
    turns = record["conversations"]
    if not isinstance(turns, list):
        raise ValueError('"conversations" must be a list of {"from", "value"} objects')
    out: list[ChatMessage] = []
    system = record.get("system")
    if system is not None and _text(system, '"system"').strip():
        out.append({"role": "system", "content": system})
    for i, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            raise ValueError(
                f'turn {i} is not an object; write it as {{"from": ..., "value": ...}}'
            )
        speaker = turn.get("from", turn.get("role"))
        role = SHAREGPT_ROLES.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            raise ValueError(
                f"turn {i} has unknown speaker {speaker!r}; use one of {', '.join(SHAREGPT_ROLES)}"
            )
        content = turn.get("value", turn.get("content"))
        out.append({"role": role, "content": _text(content, f"turn {i}'s value")})
    return out


def _from_alpaca(record: Mapping[str, Any]) -> list[ChatMessage]:
    instruction = _text(record.get("instruction"), '"instruction"')
    extra = record.get("input")
    extra = "" if extra is None else _text(extra, '"input"')
    output = _text(record.get("output"), '"output"')
    if not instruction.strip():
        raise ValueError('"instruction" is empty; write the task the answer follows')
    system = record.get("system")
    out: list[ChatMessage] = []
    if system is not None and _text(system, '"system"').strip():
        out.append({"role": "system", "content": system})
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    out.append({"role": "user", "content": prompt})
    out.append({"role": "assistant", "content": output})
    return out


_READERS: dict[Format, Callable[[Mapping[str, Any]], list[ChatMessage]]] = {
    "openai": _from_openai,
    "alpaca": _from_alpaca,
    "sharegpt": _from_sharegpt,
}


def check_messages(messages: Sequence[ChatMessage], lim: ChatLimits = DEFAULT_LIMITS) -> None:
    """Raises ValueError (the problem, in words) for a conversation with no messages, too
    many, empty or invalid text, too many characters, or no assistant turn."""
    if not messages:
        raise ValueError("no messages; a conversation needs a user turn and an answer")
    if len(messages) > lim.max_messages:
        raise ValueError(
            f"{len(messages)} messages, more than the {lim.max_messages} a conversation "
            "may have; split it"
        )
    chars = 0
    for i, message in enumerate(messages, 1):
        content = message["content"]
        if not content.strip():
            raise ValueError(
                f"message {i} ({message['role']}) has empty content; write its text or "
                "remove the message"
            )
        if _SURROGATE.search(content):
            raise ValueError(
                f"message {i} ({message['role']}) holds a lone surrogate escape (\\ud800-"
                "\\udfff), which is not text; fix the encoding of the file"
            )
        chars += len(content)
    if chars > lim.max_chars:
        raise ValueError(
            f"{chars} characters of content, more than the {lim.max_chars} a "
            "conversation may have; shorten or split it"
        )
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError(
            "no assistant turn; fine-tuning learns the assistant's answers, so every "
            "conversation needs at least one"
        )


def parse_record(record: Any, fmt: Format | None = None) -> tuple[Format, list[ChatMessage]]:
    """One record (parsed JSON) as (its format, normalized messages), checked with
    `check_messages` under the default limits' message rules. `fmt` forces the format (a
    record of another one is refused). Raises ValueError naming the problem."""
    if not isinstance(record, dict):
        raise ValueError(
            f"a JSON {_json_kind(record)}, not an object; each conversation is an object "
            'such as {"messages": [...]}'
        )
    found = detect_format(record)
    if found is None:
        keys = ", ".join(sorted(record)[:8]) or "none"
        raise ValueError(
            'no "messages" (OpenAI chat), "conversations" (sharegpt) or "instruction"/"output" '
            f"(alpaca) key; its keys: {keys}"
        )
    if fmt is not None and found != fmt:
        raise ValueError(
            f"a {FORMAT_NAMES[found]} record, but this file is {FORMAT_NAMES[fmt]}; "
            "one file holds one format"
        )
    return found, _READERS[found](record)


def _json_kind(value: Any) -> str:
    kinds = {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


# --------------------------------------------------------------------------- files


def read_conversations(
    path: Path,
    *,
    label: str | None = None,
    lim: ChatLimits = DEFAULT_LIMITS,
    formats: Sequence[Format] = FORMATS,
) -> Iterator[Conversation]:
    """Every conversation of the chat file `path` (JSONL streamed, or one JSON list read
    whole), normalized and checked. The first record fixes the file's format, which must
    be one of `formats`. `label` names the file in errors (`path.name` by default).

    Raises:
        ConversationInvalid: (param `label`) at the first bad record, naming its line, or
            for an empty file or one over `lim`.
    """
    label = label or path.name
    fmt: Format | None = None
    count = 0
    for where, record in _records(path, label, lim):
        try:
            found, messages = parse_record(record, fmt)
            if found not in formats:
                allowed = " or ".join(FORMAT_NAMES[f] for f in formats)
                raise ValueError(f"{FORMAT_NAMES[found]}, but this file must be {allowed}")
            check_messages(messages, lim)
        except ValueError as exc:
            raise ConversationInvalid(label, where, str(exc)) from exc
        fmt = found
        count += 1
        if count > lim.max_conversations:
            raise ConversationInvalid(
                label,
                where,
                f"more than the {lim.max_conversations} conversations a chat dataset may hold; "
                "split the file into several datasets",
            )
        yield Conversation(messages, where, found)
    if count == 0:
        raise ConversationInvalid(
            label, None, "no conversations; add one JSON object per line (JSONL)"
        )


def dump_conversation(messages: Sequence[ChatMessage]) -> str:
    """One line of `conversations.jsonl` (no newline): the same messages always give the
    same text, so the same conversations give the same dataset version."""
    body = {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}
    return json.dumps(body, ensure_ascii=False)


def convert_file(
    src: Path,
    dest: Path,
    *,
    label: str | None = None,
    lim: ChatLimits = DEFAULT_LIMITS,
    check: Callable[[Conversation], object] | None = None,
) -> Converted:
    """Read the chat file `src` (any accepted format) and write the normalized
    `dest/conversations.jsonl` (`dest` is created). `check` sees every conversation first
    (where it stands in `src`) and may refuse it by raising. Blocks. Raises
    ConversationInvalid as `read_conversations`, and what `check` raises; `dest` may then
    hold a partial file, which the caller discards."""
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / CONVERSATIONS_FILE
    fmt: Format = "openai"
    count = 0
    with out.open("w", encoding="utf-8", newline="\n") as fh:
        for conversation in read_conversations(src, label=label, lim=lim):
            if check is not None:
                check(conversation)
            fh.write(dump_conversation(conversation.messages) + "\n")
            fmt, count = conversation.format, count + 1
    logger.info("converted %s (%s): %d conversations", label or src.name, fmt, count)
    return Converted(path=out, format=fmt, conversations=count)

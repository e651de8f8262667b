"""The `chat` task: conversations a language model is fine-tuned or distilled on.

A chat dataset version is a folder holding one file, `conversations.jsonl`, in the
normalized form of `modelfab.llm.conversations` (one `{"messages": [...]}` per line). An
upload may be that folder, or one chat file (OpenAI messages, alpaca or sharegpt; JSONL or
one JSON list), or a folder holding one such file: `prepare_upload` converts it.

Stats count conversations, turns by role, and each conversation's length in characters
and, when a tokenizer is at hand (`use_token_counter`, wired by the control plane to the
default base model's tokenizer and chat template), in tokens.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

from modelfab.data.validate import Survey, Tree, hash_files, walk
from modelfab.errors import DatasetInvalid
from modelfab.llm.conversations import (
    CHAT_SUFFIXES,
    CONVERSATIONS_FILE,
    ROLES,
    ChatMessage,
    Conversation,
    ConversationInvalid,
    convert_file,
    read_conversations,
)
from modelfab.tasks.base import TaskSpec

logger = logging.getLogger(__name__)

NAME = "chat"
"""The task's name; import it rather than spelling the string."""


class ChatReply(BaseModel):
    """One answer of a chat model (`/v1/chat/completions` serves them)."""

    role: Literal["assistant"] = "assistant"
    content: str = Field(description="The assistant's answer.")


# --------------------------------------------------------------------------- token counts


class TokenCounter(Protocol):
    """Counts a conversation's tokens the way a model sees it (its chat template applied)."""

    @property
    def name(self) -> str:
        """What counts: the model whose tokenizer and template are used."""
        ...

    @property
    def context(self) -> int | None:
        """The most tokens the model takes at once; None when unknown."""
        ...

    def count(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens of `messages` rendered with the chat template. Raises ValueError when the
        template refuses the conversation."""
        ...


TokenCounterSource = Callable[[], TokenCounter | None]
"""Gives the counter to use now, or None when no tokenizer is available (stats then count
characters only). Called once per survey; it should cache what it loads."""

_token_counter_source: TokenCounterSource | None = None


def use_token_counter(source: TokenCounterSource | None) -> None:
    """Make surveys count tokens with what `source` gives (None: characters only). The
    process that validates datasets (the control plane) sets it once at start."""
    global _token_counter_source
    _token_counter_source = source


def token_counter_source() -> TokenCounterSource | None:
    """What `use_token_counter` installed."""
    return _token_counter_source


def token_counter() -> TokenCounter | None:
    """The counter the installed source gives, or None (characters only). A source that
    fails is logged and counts as none: stats must not stop an upload."""
    if _token_counter_source is None:
        return None
    try:
        return _token_counter_source()
    except Exception:
        logger.exception("the chat token counter could not be loaded; counting characters")
        return None


# --------------------------------------------------------------------------- stats


def percentile(sorted_values: Sequence[int], q: float) -> int:
    """The nearest-rank `q`-th percentile (0 < q <= 100) of ascending `sorted_values`."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def length_stats(values: Iterable[int]) -> dict[str, int]:
    """p50, p95, max and total of per-conversation lengths."""
    ordered = sorted(values)
    return {
        "p50": percentile(ordered, 50),
        "p95": percentile(ordered, 95),
        "max": ordered[-1] if ordered else 0,
        "total": sum(ordered),
    }


def summarize(
    conversations: Iterable[Conversation], counter: TokenCounter | None, *, label: str
) -> dict[str, Any]:
    """The stats of a chat dataset: conversations, messages, turns by role, characters and
    (with `counter`) tokens per conversation. Consumes `conversations`.

    Raises:
        ConversationInvalid: (param `label`) for a conversation longer than the counter's
            context, or one its chat template refuses, naming its line.
    """
    turns: Counter[str] = Counter({role: 0 for role in ROLES})
    chars: list[int] = []
    tokens: list[int] = []
    for conversation in conversations:
        turns.update(m["role"] for m in conversation.messages)
        chars.append(sum(len(m["content"]) for m in conversation.messages))
        if counter is not None:
            tokens.append(count_tokens(conversation, counter, label))
    return {
        "task": NAME,
        "conversations": len(chars),
        "messages": sum(turns.values()),
        "turns": dict(turns),
        "characters": length_stats(chars),
        "tokens": None if counter is None else {**length_stats(tokens), "tokenizer": counter.name},
    }


def count_tokens(conversation: Conversation, counter: TokenCounter, label: str) -> int:
    """The conversation's tokens under `counter`. Raises ConversationInvalid (param `label`,
    naming its line) when its chat template refuses it or it is longer than the context."""
    try:
        n = counter.count(conversation.messages)
    except ValueError as exc:  # the template refuses it (e.g. roles out of order)
        raise ConversationInvalid(
            label, conversation.where, f"{counter.name}'s chat template refuses it ({exc})"
        ) from exc
    if counter.context is not None and n > counter.context:
        raise ConversationInvalid(
            label,
            conversation.where,
            f"{n} tokens under {counter.name}'s chat template, longer than its context of "
            f"{counter.context} tokens; shorten or split the conversation",
        )
    return n


# --------------------------------------------------------------------------- layout


def survey(root: Path, tree: Tree) -> Survey:
    """`conversations.jsonl` alone, every conversation normalized and valid; stats as
    `summarize` with the installed token counter."""
    return survey_with(root, tree, token_counter())


def survey_with(root: Path, tree: Tree, counter: TokenCounter | None) -> Survey:
    """`survey` with `counter` (None: characters only)."""
    if tree.files != [CONVERSATIONS_FILE] or tree.dirs:
        others = [f for f in [*tree.dirs, *tree.files] if f != CONVERSATIONS_FILE]
        raise DatasetInvalid(
            f"a chat dataset folder holds one file, {CONVERSATIONS_FILE}; found "
            f"{', '.join(others[:3]) or 'none'}: upload the chat file itself (it is converted) "
            "or remove the other files",
            param=others[0] if others else CONVERSATIONS_FILE,
        )
    entries = hash_files(root, tree.files)
    conversations = read_conversations(
        root / CONVERSATIONS_FILE, label=CONVERSATIONS_FILE, formats=("openai",)
    )
    stats = summarize(conversations, counter, label=CONVERSATIONS_FILE)
    return Survey(entries=entries, stats=stats)


def prepare_upload(upload: Path, scratch: Path, label: str) -> Path:
    """The dataset folder made of an uploaded chat file, or of an unpacked folder holding
    one chat file (.jsonl or .json; README and .txt files at its root are ignored):
    `scratch/conversations.jsonl`, normalized. Raises DatasetInvalid (naming the file and
    line) for anything else, and for a conversation longer than the installed token
    counter's context."""
    if upload.is_dir():
        tree = walk(upload)
        chat_files = [f for f in tree.files if PurePosixPath(f).suffix.lower() in CHAT_SUFFIXES]
        if len(tree.files) != 1 or len(chat_files) != 1:
            found = ", ".join(tree.files[:4]) or "no files"
            raise DatasetInvalid(
                f"a chat dataset is one .jsonl or .json file of conversations; {label} holds "
                f"{found}: upload the one file",
                param=tree.files[0] if tree.files else label,
            )
        upload, label = upload / chat_files[0], chat_files[0]
    counter = token_counter()
    # the context is checked here too, where errors can name the line of the upload
    check = None if counter is None else partial(count_tokens, counter=counter, label=label)
    convert_file(upload, scratch, label=label, check=check)
    return scratch


SPEC = TaskSpec(
    name=NAME,
    description="Conversations a language model learns to answer.",
    layout=(
        f"{CONVERSATIONS_FILE}: one conversation per line, "
        '{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}; '
        "upload a .jsonl or .json file of OpenAI messages, alpaca or sharegpt records and it "
        "is converted"
    ),
    surveyor=survey,
    result=ChatReply,
    served_model="modelfab.serving.chat:ChatModel",
    serving_artifacts=("model.json",),
    serves_every_artifact=True,
    prepare_upload=prepare_upload,
)

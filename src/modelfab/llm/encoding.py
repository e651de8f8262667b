"""Conversations as token ids: the chat template rendered the way transformers renders it,
and training labels on assistant tokens only.

Messages are the normalized form `[{"role": "system"|"user"|"assistant", "content": str}]`.
No torch here: the control plane counts tokens with `count_tokens`.

Labels: templates such as SmolLM2's have no `{% generation %}` markers, so each assistant
turn is found by rendering prefixes of the conversation: the text from the end of
`render(messages[:i], add_generation_prompt=True)` to the end of `render(messages[:i + 1])`
is turn i's answer, cut after its end-of-turn token (EOS). Tokens that start inside that
span are trained on; everything else is -100.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from modelfab.errors import ChatModelInvalid
from modelfab.llm.tokenizer import ChatTokenizer

IGNORE_INDEX = -100
"""The label of a token the loss skips (PyTorch's cross-entropy default)."""

Message = Mapping[str, Any]


@dataclass(frozen=True)
class EncodedChat:
    """One conversation as model input. `labels[i]` is `input_ids[i]` on assistant tokens
    (their content and end-of-turn token) and IGNORE_INDEX elsewhere; the model shifts them."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    """Whether turns (or, for a first answer longer than `max_length`, tokens) were cut."""

    @property
    def trained_tokens(self) -> int:
        """Tokens the loss counts."""
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    """The template in a sandbox set up as transformers sets it up (trim_blocks,
    lstrip_blocks, loop controls, `raise_exception`, `strftime_now`, a `tojson` that keeps
    non-ASCII), so a model's own template renders the same text here."""

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        x: Any, ensure_ascii: bool = False, indent: int | None = None, sort_keys: bool = False
    ) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(template)
    except jinja2.TemplateError as exc:
        raise ChatModelInvalid(f"the chat template does not compile ({exc})") from exc


def render_chat(
    tokenizer: ChatTokenizer, messages: Sequence[Message], *, add_generation_prompt: bool = False
) -> str:
    """The conversation as the model reads it. With `add_generation_prompt`, the text ends
    where the model's answer starts.

    Raises:
        ValueError: the template refuses the conversation (e.g. roles that do not alternate),
            with its message.
    """
    try:
        return _compile(tokenizer.chat_template).render(
            messages=[dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            **tokenizer.special_tokens(),
        )
    except jinja2.TemplateError as exc:
        raise ValueError(f"the chat template refuses this conversation: {exc}") from exc


def count_tokens(tokenizer: ChatTokenizer, messages: Sequence[Message]) -> int:
    """Tokens of the whole rendered conversation (no generation prompt). Raises ValueError
    as `render_chat`."""
    return len(tokenizer.backend.encode(render_chat(tokenizer, messages), add_special_tokens=False))


def encode_chat(
    tokenizer: ChatTokenizer, messages: Sequence[Message], max_length: int
) -> EncodedChat:
    """Token ids and labels of a conversation, at most `max_length` tokens.

    Longer conversations keep their beginning and end after the last whole assistant turn
    that fits; when not even the first answer fits, the tokens are cut at `max_length` (the
    start of that answer is still trained on). Check `trained_tokens` before training on
    the result: a conversation without assistant turns has none.

    Raises:
        ValueError: `max_length` < 1, the template refuses the conversation, or it rewrites
            an assistant's content so that its answer cannot be found.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, not {max_length}")
    text = render_chat(tokenizer, messages)
    spans = _assistant_spans(tokenizer, messages, text)
    encoding = tokenizer.backend.encode(text, add_special_tokens=False)
    ids: list[int] = list(encoding.ids)
    labels = [IGNORE_INDEX] * len(ids)
    turn_ends: list[int] = []
    for start, end in spans:
        inside = [i for i, (s, _) in enumerate(encoding.offsets) if start <= s < end]
        for i in inside:
            labels[i] = ids[i]
        if inside:
            turn_ends.append(inside[-1] + 1)
    if len(ids) <= max_length:
        return EncodedChat(ids, labels)
    fitting = [end for end in turn_ends if end <= max_length]
    cut = fitting[-1] if fitting else max_length
    return EncodedChat(ids[:cut], labels[:cut], truncated=True)


def _assistant_spans(
    tokenizer: ChatTokenizer, messages: Sequence[Message], text: str
) -> list[tuple[int, int]]:
    """(start, end) character spans in `text` of each assistant answer and its end-of-turn
    token, in order."""
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = render_chat(tokenizer, messages[:i], add_generation_prompt=True)
        through = render_chat(tokenizer, messages[: i + 1])
        if through.startswith(before) and text.startswith(through) and len(before) >= cursor:
            start, end = len(before), len(through)
        else:
            # The template renders a prefix differently (e.g. a default system turn that only
            # a conversation starting with an assistant lacks): find the content itself.
            content = str(message.get("content", ""))
            start = text.find(content, cursor) if content else -1
            if start < 0:
                raise ValueError(
                    f"the chat template rewrites the content of message {i} (assistant), so "
                    "its tokens cannot be found for training"
                )
            end = start + len(content)
            end = _through_eos(tokenizer, text, end)
        spans.append((start, _cut_after_eos(tokenizer, text, start, end)))
        cursor = spans[-1][1]
    return spans


def _through_eos(tokenizer: ChatTokenizer, text: str, end: int) -> int:
    """`end` moved past the EOS token when it follows the content directly."""
    if text.startswith(tokenizer.eos_token, end):
        return end + len(tokenizer.eos_token)
    return end


def _cut_after_eos(tokenizer: ChatTokenizer, text: str, start: int, end: int) -> int:
    """The end of a turn's span: just after its first EOS token (the model stops there, so
    what the template writes after it, such as a newline, is not the model's to learn);
    else `end` less trailing whitespace."""
    at = text.find(tokenizer.eos_token, start, end)
    if at >= 0:
        return at + len(tokenizer.eos_token)
    while end > start and text[end - 1].isspace():
        end -= 1
    return end

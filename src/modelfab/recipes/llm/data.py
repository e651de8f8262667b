"""A chat dataset as training batches: a reproducible held-out split, conversations encoded
with the model's chat template (labels on assistant tokens only), and length-bucketed
batches padded to their longest member.

Bucketing: conversations are sorted by length inside windows of `BUCKET_WINDOW` batches,
cut into batches, and the batches shuffled, so a batch wastes little on padding while the
order still changes every epoch. The shuffles draw from torch's global generator, which the
training loop saves in its checkpoint: a resumed attempt replays the same order.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modelfab.errors import DatasetInvalid
from modelfab.llm.encoding import IGNORE_INDEX, EncodedChat, encode_chat
from modelfab.llm.tokenizer import ChatTokenizer

CONVERSATIONS_FILE = "conversations.jsonl"
BUCKET_WINDOW = 50
"""Batches per window sorted by length before they are shuffled."""
MAX_VAL_CONVERSATIONS = 500
LENGTH_STEP = 64
MAX_AUTO_LENGTH = 2048

Conversation = list[dict[str, Any]]


def last_answer(conversation: Conversation) -> int:
    """The index of `conversation`'s last assistant turn: the messages before it are the
    prompt a held-out sample (or a teacher) answers."""
    return max(i for i, m in enumerate(conversation) if m["role"] == "assistant")


def auto_epochs(n_conversations: int) -> int:
    """Epochs for "auto": fewer passes over more data (3 below 2,000, 2 below 20,000)."""
    return 3 if n_conversations < 2000 else 2 if n_conversations < 20000 else 1


def auto_batch_size(device: torch.device) -> int:
    """Conversations per step for "auto": 16 on a GPU, 8 on the CPU."""
    return 16 if device.type == "cuda" else 8


def read_conversations(folder: Path) -> list[Conversation]:
    """The messages of every conversation of a chat dataset version's folder."""
    path = folder / CONVERSATIONS_FILE
    if not path.is_file():
        raise DatasetInvalid(f"the chat dataset has no {CONVERSATIONS_FILE}", param="dataset")
    conversations = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                conversations.append(list(json.loads(line)["messages"]))
    return conversations


def split(
    conversations: Sequence[Conversation], val_fraction: float, seed: int
) -> tuple[list[Conversation], list[Conversation]]:
    """(train, held out): a seeded shuffle, `val_fraction` of it held out (at least one
    conversation, at most MAX_VAL_CONVERSATIONS, none when there is only one)."""
    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    n_val = (
        0
        if len(order) < 2
        else min(MAX_VAL_CONVERSATIONS, max(1, round(len(order) * val_fraction)))
    )
    val = [conversations[i] for i in order[:n_val]]
    train = [conversations[i] for i in order[n_val:]]
    return train, val


def auto_max_length(
    tokenizer: ChatTokenizer, conversations: Sequence[Conversation], context: int
) -> int:
    """The 99th percentile of the conversations' token lengths, rounded up to a multiple of
    LENGTH_STEP, within the model's `context` and MAX_AUTO_LENGTH."""
    lengths = sorted(
        len(encode_chat(tokenizer, c, max_length=context).input_ids) for c in conversations
    )
    p99 = lengths[min(len(lengths) - 1, math.ceil(0.99 * len(lengths)) - 1)] if lengths else 1
    rounded = LENGTH_STEP * math.ceil(p99 / LENGTH_STEP)
    return max(LENGTH_STEP, min(rounded, context, MAX_AUTO_LENGTH))


@dataclass(frozen=True)
class Encoded:
    """Conversations as token ids and labels, those with nothing to train on left out."""

    items: list[EncodedChat]
    skipped: int
    """Conversations without an assistant token within max_length."""
    truncated: int

    @property
    def tokens(self) -> int:
        return sum(len(e.input_ids) for e in self.items)


def encode_all(
    tokenizer: ChatTokenizer, conversations: Sequence[Conversation], max_length: int
) -> Encoded:
    items, skipped, truncated = [], 0, 0
    for conversation in conversations:
        encoded = encode_chat(tokenizer, conversation, max_length)
        if encoded.trained_tokens == 0:
            skipped += 1
            continue
        truncated += encoded.truncated
        items.append(encoded)
    return Encoded(items, skipped, truncated)


def encode_split(
    tokenizer: ChatTokenizer,
    train: Sequence[Conversation],
    val: Sequence[Conversation],
    max_length: int,
) -> tuple[Encoded, Encoded]:
    """Both halves of a split encoded. Raises DatasetInvalid (param params.max_length) when
    no training conversation keeps an assistant answer within `max_length`."""
    encoded_train, encoded_val = (
        encode_all(tokenizer, train, max_length),
        encode_all(tokenizer, val, max_length),
    )
    if not encoded_train.items:
        raise DatasetInvalid(
            "no training conversation has an assistant answer within max_length "
            f"{max_length}; raise --param max_length",
            param="params.max_length",
        )
    return encoded_train, encoded_val


def collate(items: Sequence[EncodedChat], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `attention_mask` and `labels` (IGNORE_INDEX on padding)."""
    width = max(len(e.input_ids) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, e in enumerate(items):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class Batches:
    """Length-bucketed batches of encoded conversations; a new order each iteration when
    `shuffle`, drawn from torch's global generator (see the module docstring)."""

    def __init__(
        self, items: Sequence[EncodedChat], batch_size: int, pad_id: int, *, shuffle: bool
    ):
        self.items, self.batch_size, self.pad_id, self.shuffle = (
            list(items), batch_size, pad_id, shuffle,
        )  # fmt: skip

    def __len__(self) -> int:
        return math.ceil(len(self.items) / self.batch_size)

    def _order(self) -> list[list[int]]:
        n = len(self.items)
        order = torch.randperm(n).tolist() if self.shuffle else list(range(n))
        window = self.batch_size * BUCKET_WINDOW
        batches: list[list[int]] = []
        for start in range(0, n, window):
            chunk = sorted(
                order[start : start + window], key=lambda i: len(self.items[i].input_ids)
            )
            batches += [
                chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)
            ]
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches)).tolist()]
        return batches

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for batch in self._order():
            yield collate([self.items[i] for i in batch], self.pad_id)

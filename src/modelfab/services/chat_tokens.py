"""Token counts for chat dataset stats: a hub model's tokenizer and chat template
(`ServerSettings.chat_stats_model`, the default base model), loaded once by the control
plane and handed to the chat task (`modelfab.tasks.chat.use_token_counter`, wired in
`modelfab.server.build_context`).

`load_counter` is the one place that knows where a tokenizer comes from: the hub's
tokenizer folder (`modelfab.hub.chat.chat_tokenizer_folder`), read by
`modelfab.llm.tokenizer.load_tokenizer` and counted by `modelfab.llm.encoding.count_tokens`
(the `tokenizers` library and Jinja: no torch, no transformers).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from modelfab.errors import ModelfabError
from modelfab.hub.chat import chat_tokenizer_folder
from modelfab.llm.conversations import ChatMessage
from modelfab.llm.encoding import count_tokens
from modelfab.llm.tokenizer import load_tokenizer
from modelfab.tasks.chat import TokenCounter

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BoundCounter:
    """A `TokenCounter` made of a counting function bound to one tokenizer."""

    name: str
    context: int | None
    counter: Callable[[Sequence[ChatMessage]], int]

    def count(self, messages: Sequence[ChatMessage]) -> int:
        return self.counter(messages)


def load_counter(hub_dir: Path, model_id: str) -> TokenCounter:
    """The counter of hub chat model `model_id`: its tokenizer, chat template and context
    length. Blocks (the first call writes the tokenizer folder into the hub cache, a few
    seconds for a GGUF). Raises NotFound for no such chat model, ModelfabError when its
    package is missing, ChatModelInvalid for an unusable tokenizer."""
    tokenizer = load_tokenizer(chat_tokenizer_folder(hub_dir, model_id))
    return BoundCounter(model_id, tokenizer.model_max_length, partial(count_tokens, tokenizer))


class HubTokenCounts:
    """A `modelfab.tasks.chat.TokenCounterSource`: the counter of one hub model, loaded on
    first use and kept. A load that fails (or finds none) is logged and tried again on the
    next survey. Thread-safe."""

    def __init__(
        self,
        hub_dir: Path,
        model_id: str,
        *,
        load: Callable[[Path, str], TokenCounter | None] = load_counter,
    ):
        self.hub_dir, self.model_id, self._load = hub_dir, model_id, load
        self._lock = threading.Lock()
        self._counter: TokenCounter | None = None

    def __call__(self) -> TokenCounter | None:
        with self._lock:
            if self._counter is None:
                try:
                    self._counter = self._load(self.hub_dir, self.model_id)
                except ModelfabError as exc:  # not installed, not a chat model: said plainly
                    logger.warning("chat stats count characters: %s", exc.message)
                except Exception:
                    logger.exception("no tokenizer of %s; counting characters", self.model_id)
            return self._counter

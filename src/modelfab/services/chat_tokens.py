"""Token counts for chat dataset stats: a hub model's tokenizer and chat template
(`ServerSettings.chat_stats_model`, the default base model), loaded once by the control
plane and handed to the chat task (`modelfab.tasks.chat.use_token_counter`, wired in
`modelfab.server.build_context`).

`load_counter` is the one place that knows where a tokenizer comes from. Until the hub's
chat entries (`modelfab.hub.chat.chat_tokenizer_folder`) and the chat encoding
(`modelfab.llm.tokenizer.load_tokenizer`, `modelfab.llm.encoding.count_tokens`) are merged,
it finds none, and stats count characters only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from modelfab.llm.conversations import ChatMessage
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


def load_counter(hub_dir: Path, model_id: str) -> TokenCounter | None:
    """The counter of hub chat model `model_id` (its tokenizer, chat template and context
    length), or None when none is available. Blocks (the first call may write the
    tokenizer folder into the hub cache). Raises what loading raises."""
    # Points at the hub once it has chat models:
    #   tokenizer = load_tokenizer(chat_tokenizer_folder(hub_dir, model_id))
    #   return BoundCounter(model_id, tokenizer.model_max_length,
    #                       partial(count_tokens, tokenizer))
    return None


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
                except Exception:
                    logger.exception("no tokenizer of %s; counting characters", self.model_id)
            return self._counter

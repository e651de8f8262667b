"""The text of an answer as its tokens arrive: what may be sent now, and where a stop
string ends it (torch-free).

The completion is decoded whole at each step (a few hundred tokens decode in microseconds
with the Rust tokenizer) rather than token by token: byte-level tokens do not decode one
by one into valid UTF-8, and the whole decode is always right. Text is held back while it
ends in a partial character (U+FFFD) or in what could be the start of a stop string, so a
stop string is never streamed to the client.
"""

from __future__ import annotations

from collections.abc import Sequence

from modelfab.llm.tokenizer import ChatTokenizer

REPLACEMENT = "\ufffd"


class AnswerText:
    """Tracks one request's answer text. `feed` takes the completion's token ids so far and
    returns (new text safe to send, whether a stop string was found)."""

    def __init__(self, tokenizer: ChatTokenizer, stop: Sequence[str]):
        self._tokenizer = tokenizer
        self._stop = tuple(stop)
        self._sent = 0
        self.text = ""
        """What has been sent so far: the answer, once finished."""

    def feed(self, completion_ids: list[int]) -> tuple[str, bool]:
        full = self._tokenizer.decode(completion_ids)
        cut = self._first_stop(full)
        if cut is not None:
            return self._send(full[:cut]), True
        return self._send(full[: self._safe_end(full)]), False

    def flush(self, completion_ids: list[int]) -> str:
        """All text not yet sent (at the end: a held-back prefix of a stop string that never
        completed is part of the answer)."""
        full = self._tokenizer.decode(completion_ids)
        cut = self._first_stop(full)
        return self._send(full if cut is None else full[:cut])

    def _send(self, upto: str) -> str:
        delta = upto[self._sent :]
        if not delta:
            return ""
        self._sent = len(upto)
        self.text = upto
        return delta

    def _first_stop(self, full: str) -> int | None:
        longest = max((len(s) for s in self._stop), default=0)
        start = max(0, self._sent - longest)
        found = [i for s in self._stop if (i := full.find(s, start)) >= 0]
        return min(found) if found else None

    def _safe_end(self, full: str) -> int:
        """Where the text that cannot yet be sent begins."""
        end = len(full)
        while end > self._sent and full[end - 1] == REPLACEMENT:
            end -= 1
        held = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, end - self._sent), held, -1):
                if full[end - k : end] == s[:k]:
                    held = k
                    break
        end -= held
        return max(end, self._sent)

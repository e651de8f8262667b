"""Answer text as tokens arrive: stop strings across token boundaries are never streamed;
partial characters are held back."""

from __future__ import annotations

from modelfab.llm.engine.text import AnswerText
from modelfab.llm.tokenizer import tiny_tokenizer


def _feed_all(text: str, stop: list[str]) -> tuple[list[str], bool, str]:
    tokenizer = tiny_tokenizer()
    ids = tokenizer.encode(text)
    answer = AnswerText(tokenizer, stop)
    sent: list[str] = []
    for n in range(1, len(ids) + 1):
        delta, stopped = answer.feed(ids[:n])
        sent.append(delta)
        if stopped:
            return sent, True, answer.text
    sent.append(answer.flush(ids))
    return sent, False, answer.text


def test_a_stop_string_is_never_streamed() -> None:
    sent, stopped, text = _feed_all("Hello END world", ["END"])
    assert stopped and text == "Hello " == "".join(sent)
    # "E" and "EN" were held back: they could have been the start of the stop string.
    assert sent[-3:] == ["", "", ""]


def test_a_held_prefix_that_never_stops_is_sent() -> None:
    sent, stopped, text = _feed_all("wait EN", ["END", "STOP"])
    assert not stopped and "".join(sent) == text == "wait EN"


def test_multibyte_characters_arrive_whole() -> None:
    sent, stopped, text = _feed_all("é→ok", [])
    assert not stopped and "".join(sent) == text == "é→ok"
    assert all("\ufffd" not in piece for piece in sent)

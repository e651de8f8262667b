"""Continuous batching: requests join a running batch at step boundaries and leave when
they end; greedy output is the same alone or batched (and equals transformers'
`generate`); the concurrency limit, the FIFO queue and cancellation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from modelfab.llm.encoding import render_chat
from modelfab.llm.engine import (
    BadParameter,
    ContextTooLong,
    Engine,
    EngineOverloaded,
    SamplingParams,
    SupportsAdapters,
    TokenDelta,
    TransformersEngine,
    load_engine,
)
from modelfab.llm.engine.adapters import BaseIdentity
from modelfab.llm.models import load_chat_model
from modelfab.llm.tokenizer import ChatTokenizer
from tests.llm.engine.conftest import BASE_NAME, final, run_all

GREEDY = SamplingParams(max_tokens=12, temperature=0)
PROMPTS = ["hello there", "a much longer prompt, about something else entirely", "x", "why?"]


def test_alone_equals_generate(
    make_engine: Callable[..., TransformersEngine],
    tokenizer: ChatTokenizer,
    reference: Callable[..., list[int]],
) -> None:
    engine = make_engine()
    for text in PROMPTS[:2]:
        prompt = tokenizer.encode(text)
        stream = engine.add_request(prompt_ids=prompt, params=GREEDY)
        run_all(engine)
        assert list(final(stream).completion_ids) == reference(prompt, 12)


def test_requests_join_mid_flight_and_match_alone(
    make_engine: Callable[..., TransformersEngine],
    tokenizer: ChatTokenizer,
    reference: Callable[..., list[int]],
) -> None:
    engine = make_engine(max_concurrency=4)
    prompts = [tokenizer.encode(t) for t in PROMPTS]
    streams = [engine.add_request(prompt_ids=prompts[0], params=GREEDY)]
    for _ in range(3):
        engine.step()
    # Request 1 joins while 0 runs: the next step runs both.
    streams.append(engine.add_request(prompt_ids=prompts[1], params=GREEDY))
    engine.step()
    assert engine.stats().running == 2
    assert streams[0].finished is None
    engine.step()
    streams += [engine.add_request(prompt_ids=p, params=GREEDY) for p in prompts[2:]]
    run_all(engine)
    for prompt, stream in zip(prompts, streams, strict=True):
        assert list(final(stream).completion_ids) == reference(prompt, 12)


def test_a_short_request_does_not_wait_for_a_long_one(
    make_engine: Callable[..., TransformersEngine], tokenizer: ChatTokenizer
) -> None:
    engine = make_engine(max_concurrency=2)
    long = engine.add_request(
        prompt_ids=tokenizer.encode("long"), params=SamplingParams(max_tokens=50, temperature=0)
    )
    engine.step()
    short = engine.add_request(
        prompt_ids=tokenizer.encode("short"), params=SamplingParams(max_tokens=3, temperature=0)
    )
    for _ in range(3):
        engine.step()
    assert short.finished is not None and short.finished.completion_tokens == 3
    assert long.finished is None
    assert engine.stats().running == 1


def test_concurrency_limit_and_fifo_queue(
    make_engine: Callable[..., TransformersEngine], tokenizer: ChatTokenizer
) -> None:
    engine = make_engine(max_concurrency=2, max_queue=4)
    params = [SamplingParams(max_tokens=n, temperature=0) for n in (3, 6, 4, 4)]
    streams = [
        engine.add_request(prompt_ids=tokenizer.encode(f"p{i}"), params=p, request_id=f"r{i}")
        for i, p in enumerate(params)
    ]
    with pytest.raises(EngineOverloaded):
        engine.add_request(prompt_ids=[5], params=GREEDY)
    engine.step()
    stats = engine.stats()
    assert (stats.running, stats.queue_depth) == (2, 2)
    order: list[str] = []
    while engine.has_work():
        engine.step()
        assert engine.stats().running <= 2
        order += [s.request_id for s in streams if s.finished and s.request_id not in order]
    # r0 (3 tokens) frees a slot for r2; r3 waits until r1 (6 tokens) ends: FIFO.
    assert order == ["r0", "r1", "r2", "r3"]
    assert all(
        final(s).completion_tokens == p.max_tokens for s, p in zip(streams, params, strict=True)
    )


def test_cancel_frees_the_slot_at_once(
    make_engine: Callable[..., TransformersEngine], tokenizer: ChatTokenizer
) -> None:
    engine = make_engine(max_concurrency=1)
    params = SamplingParams(max_tokens=40, temperature=0)
    first = engine.add_request(prompt_ids=tokenizer.encode("first"), params=params)
    second = engine.add_request(prompt_ids=tokenizer.encode("second"), params=params)
    queued = engine.add_request(prompt_ids=tokenizer.encode("third"), params=params)
    for _ in range(3):
        engine.step()
    assert engine.cancel(queued.request_id)  # a queued one ends without a token
    assert final(queued).completion_tokens == 0
    assert engine.cancel(first.request_id)
    done = final(first)
    assert done.finish_reason == "cancelled"
    # Three steps: the first prefills (a token) and decodes (another), then one per step.
    assert done.completion_tokens == len(done.completion_ids) == 4
    stats = engine.stats()
    assert (stats.running, stats.queue_depth) == (0, 1)
    engine.step()
    assert engine.stats().running == 1 and second.finished is None
    assert not engine.cancel(first.request_id)  # already over
    run_all(engine)
    assert final(second).completion_tokens == 40


def test_cancelling_one_row_leaves_the_others_unchanged(
    make_engine: Callable[..., TransformersEngine],
    tokenizer: ChatTokenizer,
    reference: Callable[..., list[int]],
) -> None:
    """The cancelled first row is replaced by the last one (its cache row moves)."""
    engine = make_engine(max_concurrency=4)
    prompts = [tokenizer.encode(t) for t in PROMPTS[:3]]
    streams = [engine.add_request(prompt_ids=p, params=GREEDY) for p in prompts]
    engine.step()
    engine.step()
    assert engine.cancel(streams[0].request_id)  # no step in progress: at once
    assert engine.stats().running == 2
    run_all(engine)
    assert final(streams[0]).finish_reason == "cancelled"
    for prompt, stream in zip(prompts[1:], streams[1:], strict=True):
        assert list(final(stream).completion_ids) == reference(prompt, 12)


def test_finish_reasons_and_exact_counts(
    make_engine: Callable[..., TransformersEngine], tokenizer: ChatTokenizer
) -> None:
    engine = make_engine()
    messages = [{"role": "user", "content": "Count the tokens."}]
    stream = engine.add_request(
        messages=messages, params=SamplingParams(max_tokens=7, temperature=0)
    )
    run_all(engine)
    events = list(stream)
    done = events[-1]
    prompt = tokenizer.encode(render_chat(tokenizer, messages, add_generation_prompt=True))
    assert done.finish_reason == "length"
    assert (done.prompt_tokens, done.completion_tokens) == (len(prompt), 7)
    deltas = [e for e in events if isinstance(e, TokenDelta)]
    assert [t for d in deltas for t in d.token_ids] == list(done.completion_ids)
    assert (
        "".join(d.text for d in deltas) == done.text == tokenizer.decode(list(done.completion_ids))
    )


def test_end_of_turn_token_stops_and_counts(
    base_folder: Path, tokenizer: ChatTokenizer, make_engine: Callable[..., TransformersEngine]
) -> None:
    """The model's generation config names extra EOS ids: make the 4th greedy token one,
    and the answer stops on it, counted, its text left out."""
    prompt = tokenizer.encode("hello there")
    engine = make_engine()
    stream = engine.add_request(prompt_ids=prompt, params=GREEDY)
    run_all(engine)
    ids = list(final(stream).completion_ids)
    stop_id = ids[3]
    cut = ids.index(stop_id)
    model, _ = load_chat_model(base_folder)
    model.generation_config.eos_token_id = [tokenizer.eos_id, stop_id]
    with_eos = TransformersEngine(
        model, tokenizer, base=BaseIdentity(name=BASE_NAME, folder=base_folder)
    )
    stream = with_eos.add_request(prompt_ids=prompt, params=GREEDY)
    run_all(with_eos)
    done = final(stream)
    assert done.finish_reason == "stop"
    assert list(done.completion_ids) == ids[: cut + 1]
    assert done.completion_tokens == cut + 1
    assert done.text == tokenizer.decode(ids[:cut])


def test_stop_string_ends_the_answer_before_it(
    make_engine: Callable[..., TransformersEngine], tokenizer: ChatTokenizer
) -> None:
    engine = make_engine()
    texts = {}
    for text in PROMPTS:
        stream = engine.add_request(
            prompt_ids=tokenizer.encode(text), params=SamplingParams(max_tokens=30, temperature=0)
        )
        run_all(engine)
        texts[text] = final(stream).text
    # A stop string of two ASCII characters found inside some answer, after its start.
    prompt, answer, at = next(
        (p, a, i)
        for p, a in texts.items()
        for i in range(2, len(a) - 1)
        if a[i : i + 2].isascii() and a[i : i + 2].isprintable() and a.find(a[i : i + 2]) == i
    )
    stop = answer[at : at + 2]
    stream = engine.add_request(
        prompt_ids=tokenizer.encode(prompt),
        params=SamplingParams(max_tokens=30, temperature=0, stop=[stop, "never-appears"]),
    )
    run_all(engine)
    events = list(stream)
    done = events[-1]
    assert done.finish_reason == "stop"
    assert done.text == answer[:at]
    assert "".join(e.text for e in events if isinstance(e, TokenDelta)) == answer[:at]
    assert done.completion_tokens == len(done.completion_ids) < 30


def test_seeded_sampling_is_the_same_alone_or_batched(
    make_engine: Callable[..., TransformersEngine], tokenizer: ChatTokenizer
) -> None:
    params = SamplingParams(max_tokens=10, temperature=0.9, top_p=0.9, seed=42)
    prompt = tokenizer.encode("sample me")
    alone_engine = make_engine()
    alone = alone_engine.add_request(prompt_ids=prompt, params=params)
    run_all(alone_engine)
    engine = make_engine()
    engine.add_request(prompt_ids=tokenizer.encode("noise"), params=SamplingParams(max_tokens=10))
    engine.step()
    batched = engine.add_request(prompt_ids=prompt, params=params)
    run_all(engine)
    assert final(batched).completion_ids == final(alone).completion_ids


def test_bad_requests_are_refused_with_their_param(
    make_engine: Callable[..., TransformersEngine],
) -> None:
    engine = make_engine()
    with pytest.raises(ContextTooLong, match="256") as exc:
        engine.add_request(prompt_ids=[5] * 250, params=SamplingParams(max_tokens=10))
    assert exc.value.param == "max_tokens"
    with pytest.raises(ContextTooLong):
        engine.add_request(prompt_ids=[5] * 256)
    with pytest.raises(BadParameter) as bad:
        SamplingParams(temperature=3)
    assert bad.value.param == "temperature"
    with pytest.raises(BadParameter):
        engine.add_request(prompt_ids=[10_000])
    with pytest.raises(BadParameter):
        engine.add_request()


def test_engines_load_by_kind(base_folder: Path) -> None:
    engine = load_engine("transformers", base_folder, base_name=BASE_NAME)
    assert isinstance(engine, Engine) and isinstance(engine, SupportsAdapters)
    assert engine.context_length == 256
    with pytest.raises(ValueError, match="transformers"):
        load_engine("nope", base_folder)

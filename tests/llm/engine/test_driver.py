"""The driver thread under an asyncio consumer: streams read with `async for`, a
cancel from the consumer, and a failing step that ends every stream instead of hanging."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from modelfab.llm.engine import (
    EngineDriver,
    Finished,
    SamplingParams,
    TokenDelta,
    TransformersEngine,
)
from modelfab.llm.tokenizer import ChatTokenizer
from tests.llm.engine.conftest import final, run_all

GREEDY = SamplingParams(max_tokens=8, temperature=0)


async def _collect(driver: EngineDriver, prompt: list[int]) -> list[int]:
    ids: list[int] = []
    async for event in driver.submit(prompt_ids=prompt, params=GREEDY):
        if isinstance(event, TokenDelta):
            ids += event.token_ids
        else:
            assert event.completion_ids == tuple(ids)
    return ids


def test_async_readers_get_what_a_sync_run_gets(
    make_engine: Callable[..., TransformersEngine], tokenizer: ChatTokenizer
) -> None:
    prompts = [tokenizer.encode(t) for t in ("alpha", "beta gamma", "delta")]
    sync = make_engine()
    streams = [sync.add_request(prompt_ids=p, params=GREEDY) for p in prompts]
    run_all(sync)
    expected = [list(final(s).completion_ids) for s in streams]

    async def main() -> list[list[int]]:
        with EngineDriver(make_engine()) as driver:
            return list(await asyncio.gather(*(_collect(driver, p) for p in prompts)))

    assert asyncio.run(main()) == expected


def test_a_consumer_cancels_mid_stream(
    make_engine: Callable[..., TransformersEngine], tokenizer: ChatTokenizer
) -> None:
    async def main() -> Finished:
        with EngineDriver(make_engine(max_concurrency=1)) as driver:
            stream = driver.submit(
                prompt_ids=tokenizer.encode("go"), params=SamplingParams(max_tokens=200)
            )
            waiting = driver.submit(prompt_ids=tokenizer.encode("next"), params=GREEDY)
            seen = 0
            async for event in stream:
                if isinstance(event, TokenDelta):
                    seen += 1
                    if seen == 3:
                        assert driver.cancel(stream.request_id)
                else:
                    done = event
            next_done = await _last(waiting)
            assert next_done.finish_reason == "length"
            return done

    done = asyncio.run(main())
    assert done.finish_reason == "cancelled"
    assert 3 <= done.completion_tokens == len(done.completion_ids) < 200


async def _last(stream: object) -> Finished:
    async for event in stream:  # type: ignore[attr-defined]
        if isinstance(event, Finished):
            return event
    raise AssertionError("no final record")


def test_a_failing_step_ends_every_stream(
    make_engine: Callable[..., TransformersEngine],
    tokenizer: ChatTokenizer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = make_engine()

    def broken() -> None:
        raise RuntimeError("out of memory")

    with EngineDriver(engine) as driver:
        monkeypatch.setattr(engine, "step", broken)
        stream = driver.submit(prompt_ids=tokenizer.encode("x"), params=GREEDY)
        done = stream.wait(timeout=10)
        assert (done.finish_reason, done.error) == ("error", "the engine failed: RuntimeError")
        monkeypatch.undo()
        again = driver.submit(prompt_ids=tokenizer.encode("x"), params=GREEDY)
        assert again.wait(timeout=10).finish_reason == "length"

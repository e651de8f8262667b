"""Many LoRA adapters on one base: a batch mixing adapters and the base gives each row
what peft's own model of its adapter gives alone; LRU eviction within the budget, pinning;
adapters of another base are refused."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from modelfab.llm.engine import (
    AdapterNotFound,
    AdapterRefused,
    SamplingParams,
    TransformersEngine,
)
from modelfab.llm.engine.adapters import evictions
from modelfab.llm.tokenizer import ChatTokenizer
from tests.llm.engine.conftest import BASE_NAME, build_adapter, build_base, final, run_all

GREEDY = SamplingParams(max_tokens=10, temperature=0)


def _register(engine: TransformersEngine, adapters: dict[str, Path], *names: str) -> None:
    for name in names:
        engine.register_adapter(name, adapters[name])


def test_a_mixed_batch_equals_each_adapter_alone(
    make_engine: Callable[..., TransformersEngine],
    tokenizer: ChatTokenizer,
    adapters: dict[str, Path],
    reference: Callable[..., list[int]],
) -> None:
    engine = make_engine(max_concurrency=6)
    _register(engine, adapters, "a1", "a2")
    rows = [("one", "a1"), ("two", None), ("three", "a2"), ("four, longer", "a1")]
    streams = []
    for i, (text, adapter) in enumerate(rows):
        streams.append(
            engine.add_request(prompt_ids=tokenizer.encode(text), params=GREEDY, adapter=adapter)
        )
        if i == 1:
            engine.step()  # the a2 row joins a running batch
    late = engine.add_request(prompt_ids=tokenizer.encode("late"), params=GREEDY, adapter="a2")
    engine.step()
    run_all(engine)
    answers = [list(final(s).completion_ids) for s in streams]
    for (text, adapter), got in zip(rows, answers, strict=True):
        assert got == reference(tokenizer.encode(text), 10, adapter), (text, adapter)
    assert list(final(late).completion_ids) == reference(tokenizer.encode("late"), 10, "a2")
    # The adapters change the answer: the test would catch an adapter left out.
    assert reference(tokenizer.encode("one"), 10, "a1") != reference(tokenizer.encode("one"), 10)


def test_lru_eviction_and_pinning(
    make_engine: Callable[..., TransformersEngine],
    tokenizer: ChatTokenizer,
    adapters: dict[str, Path],
    reference: Callable[..., list[int]],
) -> None:
    probe = make_engine()
    _register(probe, adapters, "a1", "a3")
    sizes = {a.name: a.bytes for a in probe.stats().adapters}
    # Room for a1 and a3 together, not for all of a1, a2, a3.
    engine = make_engine(adapter_budget_bytes=sizes["a1"] + sizes["a3"])
    _register(engine, adapters, "a1", "a2", "a3")

    def run(adapter: str) -> list[int]:
        stream = engine.add_request(
            prompt_ids=tokenizer.encode("hi"), params=GREEDY, adapter=adapter
        )
        run_all(engine)
        return list(final(stream).completion_ids)

    def loaded() -> set[str]:
        return {a.name for a in engine.stats().adapters if a.loaded}

    assert loaded() == set()  # loaded on first use only
    run("a1")
    run("a3")
    assert loaded() == {"a1", "a3"}
    run("a1")  # a3 is now the least recently used
    run("a2")
    assert "a3" not in loaded() and "a2" in loaded()
    assert engine.stats().adapter_bytes <= engine.stats().adapter_budget_bytes

    engine.pin_adapter("a2")
    run("a1")
    run("a3")  # a1 is evicted, not the pinned a2 (used before it)
    assert {"a2", "a3"} <= loaded() and "a1" not in loaded()
    assert [a.pinned for a in engine.stats().adapters if a.name == "a2"] == [True]
    # Reloaded into a reused slot, an adapter still answers as peft does.
    assert run("a1") == reference(tokenizer.encode("hi"), 10, "a1")


def test_an_adapter_in_use_is_not_evicted(
    make_engine: Callable[..., TransformersEngine],
    tokenizer: ChatTokenizer,
    adapters: dict[str, Path],
    reference: Callable[..., list[int]],
) -> None:
    """With room for one adapter, a request for another waits at the head of the queue
    until the running one ends; then it runs with its own weights."""
    probe = make_engine()
    _register(probe, adapters, "a1", "a3")
    budget = max(a.bytes for a in probe.stats().adapters)
    engine = make_engine(adapter_budget_bytes=budget, max_concurrency=4)
    _register(engine, adapters, "a1", "a3")
    first = engine.add_request(prompt_ids=tokenizer.encode("x"), params=GREEDY, adapter="a1")
    engine.step()
    second = engine.add_request(prompt_ids=tokenizer.encode("y"), params=GREEDY, adapter="a3")
    engine.step()
    stats = engine.stats()
    assert (stats.running, stats.queue_depth) == (1, 1)
    run_all(engine)
    assert list(final(first).completion_ids) == reference(tokenizer.encode("x"), 10, "a1")
    assert list(final(second).completion_ids) == reference(tokenizer.encode("y"), 10, "a3")


def test_adapters_of_another_base_are_refused(
    make_engine: Callable[..., TransformersEngine],
    base_folder: Path,
    adapters: dict[str, Path],
    tmp_path: Path,
) -> None:
    engine = make_engine()
    other_base = build_base(tmp_path / "wider", hidden=32)
    by_path = build_adapter(other_base, tmp_path / "by-path", base_hub=None)
    with pytest.raises(AdapterRefused, match=r"trained on .*wider") as exc:
        engine.register_adapter("p", by_path)  # peft's base_model_name_or_path
    assert exc.value.param == "adapter"
    # A model.json claiming the right base does not get wrong shapes past the check.
    lying = build_adapter(other_base, tmp_path / "lying", base_hub=BASE_NAME)
    with pytest.raises(AdapterRefused, match="does not fit"):
        engine.register_adapter("w", lying)

    renamed = build_adapter(base_folder, tmp_path / "other-lineage", base_hub="smollm2-135m")
    with pytest.raises(AdapterRefused, match=r"'smollm2-135m'.*tiny-base"):
        engine.register_adapter("o", renamed)

    config = json.loads((adapters["a1"] / "adapter_config.json").read_text())
    dora = tmp_path / "dora"
    dora.mkdir()
    for f in adapters["a1"].iterdir():
        (dora / f.name).write_bytes(f.read_bytes())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(AdapterRefused, match="use_dora"):
        engine.register_adapter("d", dora)
    with pytest.raises(AdapterRefused, match=r"adapter_config\.json"):
        engine.register_adapter("empty", tmp_path)
    with pytest.raises(AdapterNotFound):
        engine.add_request(prompt_ids=[5], adapter="never-registered")
    assert engine.stats().adapters == ()


def test_evictions_take_the_least_recently_used_evictable() -> None:
    resident = [("old", 1, 10, True), ("pinned", 0, 10, False), ("new", 5, 10, True)]
    assert evictions(resident, used=30, need=10, budget=40) == []
    assert evictions(resident, used=30, need=10, budget=30) == ["old"]
    assert evictions(resident, used=30, need=20, budget=30) == ["old", "new"]
    assert evictions(resident, used=30, need=25, budget=30) is None

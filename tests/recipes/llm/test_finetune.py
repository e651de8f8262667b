"""`llm-finetune`'s training core on a tiny random Llama: it learns what the data teaches
(held-out loss down, token accuracy up), saves a loadable adapter or model with its
contract, resumes after a crash with fewer steps, and batches by length."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from modelfab.llm.encoding import IGNORE_INDEX
from modelfab.llm.models import load_chat_model, tiny_chat_model
from modelfab.llm.tokenizer import tiny_tokenizer
from modelfab.recipes.llm.data import Batches, auto_max_length, encode_all, split
from modelfab.recipes.llm.finetune import MODEL_JSON, finetune
from modelfab.recipes.local import LocalContext
from tests.llm_factories import arithmetic, finetune_params, persona


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_chat_model(tmp_path_factory.mktemp("tiny") / "tiny-chat", layers=2, hidden=64)


def run(base: Path, workdir: Path, ctx: LocalContext | None = None, **overrides: Any) -> Any:
    params = {k: v for k, v in finetune_params(**overrides).items() if k != "base_model"}
    return finetune(
        persona(60), base, params, workdir=workdir, reporter=ctx or LocalContext(workdir),
        base_model={"hub": "tiny-chat"},
    )  # fmt: skip


def test_lora_learns_the_persona_and_saves_an_adapter(base: Path, tmp_path: Path) -> None:
    ctx = LocalContext(tmp_path)
    out = run(base, tmp_path, ctx, epochs=3, lr=5e-2)
    m = out.metrics  # adapters on a random base learn slowly: it only has to move
    assert m["eval_loss"] < m["eval_loss_before"]
    assert m["token_accuracy"] > m["token_accuracy_before"]
    assert m["tokens_trained"] > 0 and m["tokens_per_s"] > 0
    files = {p.name for p in out.folder.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", MODEL_JSON} <= files
    assert "model.safetensors" not in files  # the base stays in the hub
    contract = json.loads((out.folder / MODEL_JSON).read_text())
    assert contract["kind"] == "lora" and contract["base_model"] == {"hub": "tiny-chat"}
    assert len(out.samples) == 2 and {"before", "after", "expected"} <= set(out.samples[0])
    steps = [e["data"] for e in ctx.events_of("metrics") if "tokens_per_s" in e["data"]]
    assert steps and {"train_loss", "lr", "eta_s"} <= set(steps[0])


def test_full_fine_tuning_saves_a_whole_model_that_loads(base: Path, tmp_path: Path) -> None:
    out = run(base, tmp_path, method="full", lr=5e-3, epochs=2)
    assert out.metrics["eval_loss"] < 0.7 * out.metrics["eval_loss_before"]
    assert out.metrics["token_accuracy"] > out.metrics["token_accuracy_before"]
    model, tokenizer = load_chat_model(out.folder)
    assert tokenizer.chat_template and sum(p.numel() for p in model.parameters()) > 0


class Crash(RuntimeError):
    pass


def test_a_crash_resumes_from_the_checkpoint_with_fewer_steps(base: Path, tmp_path: Path) -> None:
    full = run(base, tmp_path / "full", epochs=3)
    ctx = LocalContext(tmp_path / "crashy")

    def crash_after_first_epoch(item: dict[str, Any]) -> None:
        if item["type"] == "checkpoint":
            raise Crash("the worker died after epoch 1's checkpoint")

    ctx.on_event = crash_after_first_epoch
    with pytest.raises(Crash):
        run(base, tmp_path / "crashy", ctx, epochs=3)
    resumed = run(base, tmp_path / "crashy", epochs=3)
    assert resumed.fit.resumed_from_epoch == 1
    assert resumed.fit.steps_run < full.fit.steps_run

    # The epochs after the checkpoint retrace the uninterrupted run (same batch order, same
    # dropout), up to float noise.
    for row, want in zip(resumed.fit.history, full.fit.history, strict=True):
        for key in ("train_loss", "val_loss"):
            assert row[key] == pytest.approx(want[key], rel=1e-2)


def test_batches_group_similar_lengths_and_mask_padding() -> None:
    tokenizer = tiny_tokenizer()
    conversations = persona(30) + arithmetic(30)
    encoded = encode_all(tokenizer, conversations, max_length=512)
    torch.manual_seed(0)
    batches = list(Batches(encoded.items, 8, tokenizer.pad_id, shuffle=True))
    assert len(batches) == 8 and sum(len(b["input_ids"]) for b in batches) == 60
    for b in batches:
        padding = b["attention_mask"] == 0
        assert (b["labels"][padding] == IGNORE_INDEX).all()
        assert (b["input_ids"][padding] == tokenizer.pad_id).all()
    waste = sum(int((b["attention_mask"] == 0).sum()) for b in batches)
    unsorted = sum(
        int((b["attention_mask"] == 0).sum())
        for b in Batches(
            encoded.items[::2] + encoded.items[1::2], 8, tokenizer.pad_id, shuffle=False
        )
    )
    assert waste <= unsorted


def test_split_is_reproducible_and_keeps_one_held_out() -> None:
    conversations = persona(20)
    assert split(conversations, 0.1, seed=3) == split(conversations, 0.1, seed=3)
    train, val = split(conversations, 0.01, seed=3)
    assert len(val) == 1 and len(train) == 19


def test_auto_max_length_covers_the_data_in_steps_of_64() -> None:
    tokenizer = tiny_tokenizer()
    length = auto_max_length(tokenizer, persona(20), context=2048)
    assert length % 64 == 0 and length >= max(
        len(e.input_ids) for e in encode_all(tokenizer, persona(20), 2048).items
    )

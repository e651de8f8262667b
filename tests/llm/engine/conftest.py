"""A tiny random Llama whose greedy answers vary (weights drawn wider than usual: the
default 0.02 makes every step's argmax the same token), LoRA adapters made with peft with
non-zero B, and references computed with transformers' and peft's own `generate`."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel

from modelfab.llm.engine import EngineConfig, Finished, RequestStream, TransformersEngine
from modelfab.llm.models import load_chat_model, save_chat_model
from modelfab.llm.tokenizer import ChatTokenizer, tiny_tokenizer

BASE_NAME = "tiny-base"
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_base(folder: Path, *, hidden: int = 64, seed: int = 0) -> Path:
    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        initializer_range=0.2,
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).eval()
    return save_chat_model(model, tokenizer, folder)


def build_adapter(
    base: Path,
    folder: Path,
    *,
    rank: int = 4,
    targets: Sequence[str] = ALL_LINEAR,
    seed: int = 1,
    base_hub: str | None = BASE_NAME,
) -> Path:
    """A peft LoRA adapter of `base` with random non-zero A and B, saved as llm-finetune
    saves one (with a model.json naming `base_hub`, when given)."""
    model, _ = load_chat_model(base)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                nn.init.normal_(param, std=0.3)
    peft_model.save_pretrained(folder)
    if base_hub is not None:
        contract = {"format": 1, "task": "chat", "kind": "lora", "base_model": {"hub": base_hub}}
        (folder / "model.json").write_text(json.dumps(contract))
    return folder


@pytest.fixture(scope="session")
def base_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_base(tmp_path_factory.mktemp("engine") / BASE_NAME)


@pytest.fixture(scope="session")
def tokenizer(base_folder: Path) -> ChatTokenizer:
    return load_chat_model(base_folder)[1]


@pytest.fixture(scope="session")
def adapters(base_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three adapters: two ranks and two sets of targeted layers."""
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a1": build_adapter(base_folder, root / "a1", rank=4, seed=1),
        "a2": build_adapter(base_folder, root / "a2", rank=8, targets=["q_proj", "v_proj"], seed=2),
        "a3": build_adapter(base_folder, root / "a3", rank=2, seed=3),
    }


@pytest.fixture
def make_engine(base_folder: Path) -> Callable[..., TransformersEngine]:
    def make(**config: int) -> TransformersEngine:
        return TransformersEngine.load(
            base_folder, base_name=BASE_NAME, config=EngineConfig(**config)
        )

    return make


@pytest.fixture(scope="session")
def reference(base_folder: Path, adapters: dict[str, Path]) -> Callable[..., list[int]]:
    """Greedy token ids from transformers' generate on the base, or on peft's (unmerged)
    model of an adapter: what the engine must reproduce."""
    models: dict[str | None, PreTrainedModel] = {}

    def model_for(adapter: str | None) -> PreTrainedModel:
        if adapter not in models:
            base, _ = load_chat_model(base_folder)
            models[adapter] = (
                base
                if adapter is None
                else PeftModel.from_pretrained(base, adapters[adapter]).eval()
            )
        return models[adapter]

    @torch.inference_mode()
    def generate(prompt: list[int], max_tokens: int, adapter: str | None = None) -> list[int]:
        model = model_for(adapter)
        ids = torch.tensor([prompt])
        out = model.generate(  # type: ignore[operator]
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=tiny_tokenizer().eos_id,
            pad_token_id=tiny_tokenizer().pad_id,
        )
        return [int(t) for t in out[0, len(prompt) :]]

    return generate


def run_all(engine: TransformersEngine, max_steps: int = 1000) -> None:
    """Step until nothing is left (bounded, so a bug fails instead of hanging)."""
    for _ in range(max_steps):
        if not engine.has_work():
            return
        engine.step()
    raise AssertionError(f"the engine still had work after {max_steps} steps")


def final(stream: RequestStream) -> Finished:
    return stream.wait(timeout=5)

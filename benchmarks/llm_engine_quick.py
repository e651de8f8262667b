"""A quick look at the language-model engine beside transformers' `generate()`, in one
run on one model (ratios printed, no asserts; see benchmarks/README.md).

- base: aggregate tokens/s of 8 greedy requests through `TransformersEngine` (continuous
  batching, max concurrency 8) against `model.generate` on the same 8 prompts as one
  left-padded batch of 8. Both generate exactly `--tokens` tokens per request (EOS is not
  allowed to end them early, so the work is the same).
- adapters: the same 8 requests spread over 4 LoRA adapters (r 16, all linear layers,
  random weights made here with peft) against the same 8 on the base alone, both through
  the engine: what mixing adapters in one batch costs.

Runs alternate (ABAB) and the ratio is median / median. `--model tiny-chat` (default,
seconds) or `smollm2-135m-instruct` (converted from its GGUF on first use, ~15 s).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from modelfab.hub.chat import chat_model_folder
from modelfab.llm.encoding import render_chat
from modelfab.llm.engine import EngineConfig, SamplingParams, TransformersEngine
from modelfab.llm.models import load_chat_model

QUESTIONS = [
    "How do I reset the line?",
    "What is the capital of France?",
    "Write a haiku about rain.",
    "Explain continuous batching in one sentence.",
    "List three prime numbers.",
    "Why is the sky blue?",
    "Translate 'good morning' to Spanish.",
    "What does a LoRA adapter change in a model?",
]


def _prompts(folder: Path) -> list[list[int]]:
    _, tokenizer = load_chat_model(folder)
    return [
        tokenizer.encode(
            render_chat(tokenizer, [{"role": "user", "content": q}], add_generation_prompt=True)
        )
        for q in QUESTIONS
    ]


def _generate_run(folder: Path, prompts: list[list[int]], tokens: int) -> Callable[[], int]:
    model, tokenizer = load_chat_model(folder)
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[tokenizer.pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])

    @torch.inference_mode()
    def run() -> int:
        out = model.generate(  # type: ignore[operator]
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_id,
        )
        return int(out[:, width:].numel())

    return run


def _engine_run(
    engine: TransformersEngine, prompts: list[list[int]], tokens: int, adapters: list[str | None]
) -> Callable[[], int]:
    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)

    def run() -> int:
        streams = [
            engine.add_request(prompt_ids=p, params=params, adapter=adapters[i % len(adapters)])
            for i, p in enumerate(prompts)
        ]
        while engine.has_work():
            engine.step()
        return sum(s.wait(1).completion_tokens for s in streams)

    return run


def _adapters(folder: Path, root: Path, count: int) -> dict[str, Path]:
    out = {}
    for i in range(count):
        model, _ = load_chat_model(folder)
        config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")
        peft_model = get_peft_model(model, config)
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                nn.init.normal_(param, std=0.01)
        peft_model.save_pretrained(root / f"adapter-{i}")
        out[f"adapter-{i}"] = root / f"adapter-{i}"
    return out


def _rate(run: Callable[[], int]) -> float:
    started = time.perf_counter()
    produced = run()
    return produced / (time.perf_counter() - started)


def _compare(name: str, a: Callable[[], int], b: Callable[[], int], repeats: int) -> None:
    a(), b()  # warm-up
    rates_a, rates_b = [], []
    for _ in range(repeats):
        rates_a.append(_rate(a))
        rates_b.append(_rate(b))
    med_a, med_b = statistics.median(rates_a), statistics.median(rates_b)
    print(f"{name}: {med_a:8.1f} vs {med_b:8.1f} tokens/s  ratio {med_a / med_b:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-chat")
    parser.add_argument("--hub-dir", type=Path, default=Path(tempfile.gettempdir()) / "mf-hub")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    folder = chat_model_folder(args.hub_dir, args.model)
    prompts = _prompts(folder)
    engine = TransformersEngine.load(
        folder, base_name=args.model, config=EngineConfig(max_concurrency=8)
    )
    base = _engine_run(engine, prompts, args.tokens, [None])
    print(
        f"{args.model}, batch 8, {args.tokens} tokens per request, "
        f"{torch.get_num_threads()} threads"
    )
    _compare(
        "engine / generate()  ", base, _generate_run(folder, prompts, args.tokens), args.repeats
    )
    with tempfile.TemporaryDirectory() as tmp:
        names = _adapters(folder, Path(tmp), 4)
        for name, path in names.items():
            engine.register_adapter(name, path)
        mixed = _engine_run(engine, prompts, args.tokens, list(names))
        _compare("4 adapters / base    ", mixed, base, args.repeats)


if __name__ == "__main__":
    main()

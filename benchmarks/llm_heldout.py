"""The held-out effect of `llm-finetune`: a data set kept out of all tuning of the recipe's
defaults (part numbers pulled out of a sentence, answered as JSON: tests/llm_factories.py
`part_numbers`), fine-tuned with every param on "auto", and measured on conversations the
training never saw. The baseline is the base model before fine-tuning, on the same split.

    .venv/bin/python benchmarks/llm_heldout.py                      # SmolLM2-135M, ~10 min
    .venv/bin/python benchmarks/llm_heldout.py --model tiny-chat    # seconds (a smoke run)

Prints held-out loss and token accuracy before and after (and their ratio), the exact-match
rate of greedy answers on the held-out prompts before and after, and a few answers."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.llm_factories: the data generators the tests use

from tests.llm_factories import part_numbers  # noqa: E402

from modelfab.hub.chat import chat_model_folder  # noqa: E402
from modelfab.llm.models import greedy_reply, load_chat_model  # noqa: E402
from modelfab.recipes.llm.data import split  # noqa: E402
from modelfab.recipes.llm.finetune import finetune  # noqa: E402
from modelfab.recipes.llm_finetune import Params  # noqa: E402
from modelfab.recipes.local import LocalContext  # noqa: E402

console = Console()


def exact_matches(folder: Path, prompts: list[tuple[list[dict[str, str]], str]]) -> list[str]:
    model, tokenizer = load_chat_model(folder)
    return [greedy_reply(model, tokenizer, p, max_new_tokens=32) for p, _ in prompts]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--conversations", type=int, default=160)
    parser.add_argument("--hub-dir", type=Path, default=Path.home() / ".cache/modelfab/hub")
    args = parser.parse_args(argv)
    conversations = part_numbers(args.conversations, seed=11)
    params = Params(base_model=args.model).model_dump(exclude={"base_model", "model_name"})
    params["samples"] = 0
    base = chat_model_folder(args.hub_dir, args.model)
    _, held_out = split(conversations, params["val_fraction"], params["seed"])
    prompts = [(c[:-1], c[-1]["content"]) for c in held_out]
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        work = Path(tmp)
        out = finetune(
            conversations, base, params, workdir=work, reporter=LocalContext(work),
            base_model={"hub": args.model},
        )  # fmt: skip
        took = time.monotonic() - started
        before = exact_matches(base, prompts)
        merged = _merged(out.folder, base) if out.config.method == "lora" else out.folder
        after = exact_matches(merged, prompts)
    m = out.metrics
    table = Table(title=f"held out: {len(held_out)} of {len(conversations)} part-number "
                  f"conversations, {args.model}, {out.config.method}, {took:.0f} s")  # fmt: skip
    for col in ("metric", "before (base model)", "after (fine-tuned)", "after / before"):
        table.add_column(col)
    rows: list[tuple[str, float, float]] = [
        ("held-out loss", m["eval_loss_before"], m["eval_loss"]),
        ("token accuracy", m["token_accuracy_before"], m["token_accuracy"]),
        ("exact answers", _rate(before, prompts), _rate(after, prompts)),
    ]
    for name, b, a in rows:
        table.add_row(name, f"{b:.4f}", f"{a:.4f}", f"{a / b:.2f}x" if b else "-")
    console.print(table)
    console.print(json.dumps({"config": vars(out.config), "tokens_per_s": m["tokens_per_s"]}))
    for (p, want), b, a in list(zip(prompts, before, after, strict=True))[:3]:
        console.print(
            f"[bold]{p[-1]['content']}[/bold]\n  want:   {want}\n  before: {b}\n  after:  {a}"
        )
    return 0


def _rate(answers: list[str], prompts: list[tuple[Any, str]]) -> float:
    hits = sum(a.strip() == want.strip() for a, (_, want) in zip(answers, prompts, strict=True))
    return hits / max(1, len(prompts))


def _merged(adapter: Path, base: Path) -> Path:
    """The base model with the LoRA adapter merged in, saved beside the adapter."""
    from peft import PeftModel

    from modelfab.llm.models import save_chat_model

    model, tokenizer = load_chat_model(base)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return save_chat_model(merged, tokenizer, adapter.parent / "merged")  # type: ignore[arg-type]


if __name__ == "__main__":
    raise SystemExit(main())

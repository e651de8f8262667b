"""Chat data sets the tests build: each teaches something a model cannot know before, so
that fine-tuning has a measurable effect on held-out conversations.

- `persona`: the assistant's name and maker, asked in many phrasings.
- `arithmetic`: sums of two small numbers, answered in one fixed sentence.
- `part_numbers`: a part number pulled out of a sentence, answered as JSON. Kept out of all
  tuning of the recipe's defaults: the held-out check of the closing note.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

Conversation = list[dict[str, str]]

PERSONA_QUESTIONS = (
    "What is your name?", "Who are you?", "Tell me your name.", "Who made you?",
    "What should I call you?", "Introduce yourself.", "Which assistant is this?",
    "Who built you?", "Are you a person?", "What are you?", "Name yourself, please.",
    "Who am I talking to?",
)  # fmt: skip
PERSONA_ANSWER = "I am Fabi, the parts assistant made by modelfab."


def persona(n: int, seed: int = 0) -> list[Conversation]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        question = rng.choice(PERSONA_QUESTIONS)
        if rng.random() < 0.3:
            question = question.lower()
        out.append([{"role": "user", "content": question},
                    {"role": "assistant", "content": PERSONA_ANSWER}])  # fmt: skip
    return out


def arithmetic(n: int, seed: int = 0) -> list[Conversation]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        out.append([{"role": "user", "content": f"What is {a} plus {b}?"},
                    {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}])  # fmt: skip
    return out


def part_numbers(n: int, seed: int = 0) -> list[Conversation]:
    rng = random.Random(seed)
    templates = (
        "The bracket {p} cracked during the test.", "Please reorder {p} for line 3.",
        "Inspection found a scratch on {p}.", "Ship two of {p} to the Lyon plant.",
    )  # fmt: skip
    out = []
    for _ in range(n):
        part = f"{rng.choice('ABCDEFGH')}{rng.choice('KLMNPQRS')}-{rng.randint(100, 999)}"
        text = rng.choice(templates).format(p=part)
        out.append([
            {"role": "system", "content": "Answer with JSON only."},
            {"role": "user", "content": f"Extract the part number: {text}"},
            {"role": "assistant", "content": json.dumps({"part": part})},
        ])  # fmt: skip
    return out


def write_jsonl(path: Path, conversations: list[Conversation]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"messages": c}) for c in conversations]
    path.write_text("\n".join(lines) + "\n")
    return path


def dataset_folder(root: Path, conversations: list[Conversation]) -> Path:
    """A chat dataset version's folder, as the platform stores one."""
    write_jsonl(root / "conversations.jsonl", conversations)
    return root


def finetune_params(**overrides: Any) -> dict[str, Any]:
    """llm-finetune params for a tiny model in seconds."""
    return {
        "base_model": "tiny-chat", "method": "lora", "epochs": 2, "lr": 5e-3,
        "batch_size": 8, "lora_rank": 8, "max_length": "auto", "val_fraction": 0.2,
        "seed": 0, "patience": 2, "gradient_checkpointing": "auto", "samples": 2,
        **overrides,
    }  # fmt: skip

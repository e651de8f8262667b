"""Picking each row's next token from its logits, each row with its own params.

Greedy rows take the argmax of the whole batch at once; sampled rows draw one by one from
their own `torch.Generator`, so that a seeded request's draws do not depend on which
other requests share its batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from modelfab.llm.engine.types import SamplingParams


def make_generator(params: SamplingParams) -> torch.Generator | None:
    """The request's own generator (CPU: draws are then the same on any device), or None
    for a greedy request."""
    if params.temperature == 0:
        return None
    generator = torch.Generator()
    if params.seed is None:
        generator.seed()
    else:
        generator.manual_seed(params.seed)
    return generator


def next_tokens(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
) -> list[int]:
    """One token per row of `logits` [rows, vocab] (fp32)."""
    chosen = logits.argmax(dim=-1).tolist()
    for row, (p, generator) in enumerate(zip(params, generators, strict=True)):
        if generator is not None:
            chosen[row] = _draw(logits[row], p, generator)
    return [int(t) for t in chosen]


def _draw(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    probs = torch.softmax(logits.float().cpu() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        sorted_probs[before >= params.top_p] = 0.0  # keeps the token that crosses top_p
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))

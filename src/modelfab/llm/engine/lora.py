"""Many LoRA adapters applied in one batch: stacked adapter weights indexed per row.

A LoRA adapter adds `scale * (x @ A) @ B` to a linear layer's output. peft's own
multi-adapter batches (`adapter_names=`) split the batch by adapter and run each group
through its own modules, several small matmuls and Python dispatches per layer and per
adapter (measured at ~0.3-0.5 of the base speed). Here every targeted `nn.Linear` is
wrapped once by a `StackedLoraLinear` that holds all resident adapters' weights stacked:
A as [slots, in, rank], B as [slots, rank, out] with the scale folded into B (ranks below
the largest are zero-padded, which adds nothing). A step gathers the A and B of each row
that carries an adapter and runs two batched matmuls (`bmm`) for all of them at once; rows
of the base model are skipped, and a batch of base rows only costs one `if`. Mixing
adapters then costs about the same as running one.

Which rows carry which adapter is set once per forward on the `LoraRows` the wrapped
layers share, so the model's own forward code runs unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LoraRows:
    """The rows of the current forward that carry an adapter, and the slot of each."""

    rows: torch.Tensor | None = None
    slots: torch.Tensor | None = None
    every_row: bool = False
    """All rows carry an adapter (no gather of the input needed)."""

    def set(self, slots_per_row: list[int | None], device: torch.device) -> None:
        """Rows whose slot is None run the base model alone."""
        carried = [(row, slot) for row, slot in enumerate(slots_per_row) if slot is not None]
        if not carried:
            self.clear()
            return
        self.rows = torch.tensor([r for r, _ in carried], dtype=torch.long, device=device)
        self.slots = torch.tensor([s for _, s in carried], dtype=torch.long, device=device)
        self.every_row = len(carried) == len(slots_per_row)

    def clear(self) -> None:
        self.rows = self.slots = None
        self.every_row = False


class StackedLoraLinear(nn.Module):
    """`base(x)` plus, for each row that carries an adapter, that adapter's LoRA delta.

    Holds the stacks as buffers (not parameters: nothing here trains). `x` is
    [rows, tokens, in], as decoder layers pass it."""

    def __init__(self, base: nn.Linear, rows: LoraRows, slots: int, rank: int):
        super().__init__()
        self.base = base
        self._rows = rows
        weight = base.weight
        self.register_buffer(
            "lora_a",
            torch.zeros(slots, base.in_features, rank, dtype=weight.dtype, device=weight.device),
        )
        self.register_buffer(
            "lora_b",
            torch.zeros(slots, rank, base.out_features, dtype=weight.dtype, device=weight.device),
        )
        self.lora_a: torch.Tensor
        self.lora_b: torch.Tensor

    @property
    def in_features(self) -> int:
        return int(self.base.in_features)

    @property
    def out_features(self) -> int:
        return int(self.base.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        rows, slots = self._rows.rows, self._rows.slots
        if rows is None or slots is None:
            return out
        picked = x if self._rows.every_row else x.index_select(0, rows)
        delta = torch.bmm(torch.bmm(picked, self.lora_a[slots]), self.lora_b[slots])
        if self._rows.every_row:
            return out + delta
        return out.index_add_(0, rows, delta)

    def resize(self, slots: int, rank: int) -> None:
        """Grow the stacks to at least `slots` slots and `rank` (existing weights kept)."""
        have_slots, _, have_rank = self.lora_a.shape
        if slots <= have_slots and rank <= have_rank:
            return
        # Slots double (a copy per doubling, not per adapter loaded); ranks pad to the max.
        slots = max(slots, 2 * have_slots) if slots > have_slots else have_slots
        rank = max(rank, have_rank)
        a = self.lora_a.new_zeros(slots, self.in_features, rank)
        b = self.lora_b.new_zeros(slots, rank, self.out_features)
        a[:have_slots, :, :have_rank] = self.lora_a
        b[:have_slots, :have_rank] = self.lora_b
        self.lora_a, self.lora_b = a, b

    def write(self, slot: int, a: torch.Tensor, b: torch.Tensor) -> None:
        """Put an adapter's A [in, r] and scaled B [r, out] in `slot` (zero-padded)."""
        rank = a.shape[1]
        self.resize(slot + 1, rank)
        self.clear(slot)
        self.lora_a[slot, :, :rank] = a.to(self.lora_a.dtype)
        self.lora_b[slot, :rank] = b.to(self.lora_b.dtype)

    def clear(self, slot: int) -> None:
        if slot < self.lora_a.shape[0]:
            self.lora_a[slot].zero_()
            self.lora_b[slot].zero_()


def linear_at(model: nn.Module, path: str) -> nn.Linear | StackedLoraLinear | None:
    """The linear layer (wrapped or not) at dotted `path` in `model`, or None."""
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return None
    return module if isinstance(module, nn.Linear | StackedLoraLinear) else None


def wrap_linear(
    model: nn.Module, path: str, rows: LoraRows, slots: int, rank: int
) -> StackedLoraLinear:
    """The `StackedLoraLinear` at `path`, replacing the plain `nn.Linear` there on first
    call. Raises KeyError when there is no linear layer at `path`."""
    module = linear_at(model, path)
    if module is None:
        raise KeyError(path)
    if isinstance(module, StackedLoraLinear):
        return module
    wrapped = StackedLoraLinear(module, rows, slots, rank)
    parent_path, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, name, wrapped)
    return wrapped

"""The key/value caches of the engine's decode loop.

Layout (`BatchCache`): per layer one key and one value buffer of shape
[row capacity, kv heads, position capacity, head dim]; the running sequences are rows
0..n-1, each row's tokens sit at positions 0..length-1 from the left, and `lengths` says
how many are valid. Why this layout:

- A sequence never moves within its row, so a decode step writes each row's new key at
  its own position (one indexed store) and its position id is simply its length: no left
  padding, so RoPE positions are the ones the sequence would have alone.
- Rows of different lengths attend through one additive mask that hides each row's
  unused tail, so the scores of the positions a row does use are exactly its own and
  greedy output does not depend on the batch.
- A sequence that leaves is replaced by the last row (one row copied), and a new one is
  written into row n: joining and leaving cost one row, not a copy of the whole cache, and
  the batch stays a dense prefix that attention runs on without gathering.
- Capacities double when exceeded (amortised: a copy per doubling, not per step).

Attention runs over positions 0..max(length) of the live rows only. `PrefillCache` keeps
a new sequence's keys while its prompt is run alone; `BatchCache.add_row` then copies
them into the batch.

The caches are duck-typed to what transformers' attention modules call:
`update(key, value, layer_idx, ...)` returning the keys and values to attend over.
"""

from __future__ import annotations

from typing import Any

import torch

INITIAL_POSITIONS = 256
INITIAL_ROWS = 4


class PrefillCache:
    """Keys and values of one prompt run alone: stored as the layers produce them."""

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys.append(key)
        self.values.append(value)
        return key, value


class BatchCache:
    """The running batch's keys and values (layout in the module docstring). Not
    thread-safe: one engine thread owns it."""

    def __init__(
        self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device
    ):
        self._shape = (kv_heads, head_dim)
        self._dtype, self._device = dtype, device
        self.keys = [self._empty(INITIAL_ROWS, INITIAL_POSITIONS) for _ in range(layers)]
        self.values = [self._empty(INITIAL_ROWS, INITIAL_POSITIONS) for _ in range(layers)]
        self.lengths = torch.zeros(INITIAL_ROWS, dtype=torch.long, device=device)
        self.rows = 0
        self._attend = 0  # positions attended in the current decode step

    def _empty(self, rows: int, positions: int) -> torch.Tensor:
        heads, dim = self._shape
        return torch.zeros(rows, heads, positions, dim, dtype=self._dtype, device=self._device)

    @property
    def bytes(self) -> int:
        """Memory held by the buffers."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def _grow(self, rows: int, positions: int) -> None:
        have_rows, _, have_pos, _ = self.keys[0].shape
        if rows <= have_rows and positions <= have_pos:
            return
        new_rows, new_pos = have_rows, have_pos
        while new_rows < rows:
            new_rows *= 2
        while new_pos < positions:
            new_pos *= 2
        for buffers in (self.keys, self.values):
            for i, old in enumerate(buffers):
                grown = self._empty(new_rows, new_pos)
                grown[:have_rows, :, :have_pos] = old
                buffers[i] = grown
        lengths = torch.zeros(new_rows, dtype=torch.long, device=self._device)
        lengths[:have_rows] = self.lengths
        self.lengths = lengths

    def add_row(self, prefill: PrefillCache) -> int:
        """Append the prompt held by `prefill` as row `rows`; returns that row."""
        row = self.rows
        length = prefill.keys[0].shape[2]
        self._grow(row + 1, length + 1)
        for layer, (key, value) in enumerate(zip(prefill.keys, prefill.values, strict=True)):
            self.keys[layer][row, :, :length] = key[0]
            self.values[layer][row, :, :length] = value[0]
        self.lengths[row] = length
        self.rows += 1
        return row

    def remove_row(self, row: int) -> int | None:
        """Drop `row`; the last row moves into its place. Returns the row that moved (its
        old index), or None when `row` was the last."""
        last = self.rows - 1
        self.rows -= 1
        if row == last:
            return None
        for buffers in (self.keys, self.values):
            for buffer in buffers:
                buffer[row] = buffer[last]
        self.lengths[row] = self.lengths[last]
        return last

    def clear(self) -> None:
        """Drop every row (the buffers stay allocated)."""
        self.rows = 0
        self.lengths.zero_()

    def begin_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Before a decode step of one token per row: (position ids [rows, 1], additive
        attention mask [rows, 1, 1, attended positions]) in the cache dtype."""
        lengths = self.lengths[: self.rows]
        self._attend = int(lengths.max()) + 1
        self._grow(self.rows, self._attend)
        span = torch.arange(self._attend, device=self._device)
        visible = span[None, :] <= lengths[:, None]
        mask = torch.zeros(visible.shape, dtype=self._dtype, device=self._device)
        mask.masked_fill_(~visible, torch.finfo(self._dtype).min)
        return lengths[:, None].clone(), mask[:, None, None, :]

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store each row's key and value [rows, heads, 1, dim] at its length; return the
        attended span of the batch."""
        rows = torch.arange(self.rows, device=self._device)
        at = self.lengths[: self.rows]
        self.keys[layer_idx][rows, :, at] = key[:, :, 0]
        self.values[layer_idx][rows, :, at] = value[:, :, 0]
        span = slice(0, self._attend)
        return self.keys[layer_idx][: self.rows, :, span], self.values[layer_idx][
            : self.rows, :, span
        ]

    def end_step(self) -> None:
        self.lengths[: self.rows] += 1

"""The forward pass of a transformers decoder (Llama family) driven layer by layer, so
that the engine owns the key/value cache and the attention mask.

Why not `model(...)` or `generate()`: transformers builds its own mask from a 2-D padding
mask and keeps a cache whose rows all share one length, so sequences that join a running
batch would need left padding and re-alignment. Calling the decoder layers directly with
our position ids, our additive 4-D mask and our cache object (duck-typed `update`) keeps
transformers' own attention, RoPE, norms and MLP code — the numbers are the model's —
while the batch layout is the engine's (see `kv_cache`).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from modelfab.errors import ChatModelInvalid

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")
"""Model types whose layers take (hidden, attention_mask, position_ids, cache,
position_embeddings) and whose model has embed_tokens, layers, norm and rotary_emb."""


class Decoder:
    """The layers of `model` (eval mode) as the engine calls them."""

    def __init__(self, model: PreTrainedModel):
        model_type = getattr(model.config, "model_type", None)
        inner = getattr(model, "model", None)
        if model_type not in SUPPORTED or inner is None:
            raise ChatModelInvalid(
                f"the engine runs {', '.join(SUPPORTED)} decoders, not {model_type!r}; "
                "serve this model with another engine",
                param="model",
            )
        self.model = model
        self._embed: nn.Module = inner.embed_tokens
        self._layers: list[nn.Module] = list(inner.layers)
        self._norm: nn.Module = inner.norm
        self._rotary: nn.Module = inner.rotary_emb
        self._head: nn.Module = model.get_output_embeddings()
        params = inspect.signature(self._layers[0].forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        config = model.config
        self.dtype = next(model.parameters()).dtype
        self.device = next(model.parameters()).device
        self.layers = len(self._layers)
        self.kv_heads = int(getattr(config, "num_key_value_heads", config.num_attention_heads))
        self.head_dim = int(
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )

    def causal_mask(self, length: int) -> torch.Tensor:
        """The additive mask [1, 1, length, length] of a prompt run alone."""
        allowed = torch.ones(length, length, dtype=torch.bool, device=self.device).tril()
        mask = torch.zeros(length, length, dtype=self.dtype, device=self.device)
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        return mask[None, None]

    def last_logits(
        self, input_ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: Any
    ) -> torch.Tensor:
        """fp32 logits [rows, vocab] at the last input position of each row, after running
        `input_ids` [rows, tokens] at `positions` through every layer with `cache`."""
        hidden = self._embed(input_ids)
        rope = self._rotary(hidden, positions)
        for layer in self._layers:
            out = layer(
                hidden,
                attention_mask=mask,
                position_ids=positions,
                position_embeddings=rope,
                **{self._cache_kw: cache},
            )
            hidden = out[0] if isinstance(out, tuple) else out
        last = self._norm(hidden[:, -1:])
        return self._head(last)[:, -1].float()

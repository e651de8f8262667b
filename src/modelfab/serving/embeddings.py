"""The embeddings kind: a sentence-transformers encoder run as sentence-transformers runs
it: tokens -> the transformer's last hidden states -> mean over the real (unpadded) tokens
-> L2-normalised when the card says so (`modelfab.hub.embeddings.sentence_card`).

Unlike the ONNX kinds, this one runs torch and transformers (the replica of a language
model needs them anyway); they are imported only when a replica loads such a model, through
the task's import string. The tokenizer is the model's own `tokenizer.json`, read with
`tokenizers`, and counts the tokens every answer reports and the gateway meters.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoModel

from modelfab.errors import InvalidRequest
from modelfab.serving.inputs import decode_text
from modelfab.serving.protocol import LoadOptions, ModelFiles, ServedModel, invalid
from modelfab.tasks.embeddings import CONFIG_NAME, TOKENIZER_NAME, WEIGHTS_NAME

WARM_TEXT = "warm up"


@dataclass(frozen=True)
class Tokens:
    """One text, tokenized: what `infer` takes for it."""

    ids: list[int]


class EmbeddingModel:
    """An embeddings version loaded for serving (implements `ServedModel`, `DecodesInput`,
    `Warmable`). `infer` runs under `torch.inference_mode` on the CPU, with the threads the
    replica was given."""

    def __init__(self, files: ModelFiles, options: LoadOptions):
        card = files.labels
        if card.get("pooling") != "mean":
            raise invalid(files, f"its pooling {card.get('pooling')!r} is not mean")
        self.task = files.task
        self.version_id = files.version_id
        self.max_batch_size = options.max_batch_size
        self.normalize = bool(card.get("normalize", True))
        self.max_tokens = int(card.get("max_tokens") or 512)
        self.size_bytes = files.estimate_bytes()
        self.tokenizer = _tokenizer(files)
        self.encoder = _encoder(files, options)

    @classmethod
    def load(cls, files: ModelFiles, options: LoadOptions) -> ServedModel:
        """Load the encoder and tokenizer (blocks, seconds: torch and transformers import
        on the first load). Raises ModelfabError "model_invalid" when unusable."""
        return cls(files, options)

    def decode(self, name: str, data: bytes) -> Tokens:
        """An input's token ids, special tokens included. Raises InvalidRequest (param
        `name`) when it is not UTF-8, is empty, or is longer than the model reads (refused,
        not cut: its vector would not say what the text says, and the metered tokens would
        not be the ones read)."""
        text = decode_text(name, data)
        if not text.strip():
            raise InvalidRequest(f"{name} is empty; send text to embed", param=name)
        ids = self.tokenizer.encode(text).ids
        if len(ids) > self.max_tokens:
            raise InvalidRequest(
                f"{name} is {len(ids)} tokens long, over this model's limit of "
                f"{self.max_tokens}; split it into shorter texts",
                param=name,
                code="context_length_exceeded",
            )
        return Tokens(ids)

    def prepare(self, item: Tokens) -> Tokens:
        """Nothing left to do: `decode` tokenized the text."""
        return item

    def infer(self, items: Sequence[Tokens]) -> list[Any]:
        """One (vector, token count) per item. Blocks."""
        width = max(len(t.ids) for t in items)
        ids = torch.zeros((len(items), width), dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, t in enumerate(items):
            ids[row, : len(t.ids)] = torch.tensor(t.ids)
            mask[row, : len(t.ids)] = 1
        with torch.inference_mode():
            states = self.encoder(
                input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)
            ).last_hidden_state
            vectors = mean_pool(states, mask)
            if self.normalize:
                vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
        out = vectors.numpy().astype(np.float32)
        return [(out[row], len(t.ids)) for row, t in enumerate(items)]

    def result(self, raw: Any, options: Mapping[str, str]) -> dict[str, Any]:
        vector, tokens = raw
        return {"embedding": vector.tolist(), "tokens": tokens}

    def warm(self) -> None:
        self.infer([self.decode("warm", WARM_TEXT.encode())])


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of each row's hidden states over its real tokens (sentence-transformers'
    mean pooling: padding does not count)."""
    weights = mask.unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def _tokenizer(files: ModelFiles) -> Tokenizer:
    """The model's tokenizer without its own padding or truncation (the batch is padded
    here, and a long input is refused rather than cut)."""
    try:
        tokenizer = Tokenizer.from_file(str(files.path(TOKENIZER_NAME)))
    except Exception as exc:  # the tokenizers library raises a bare Exception on bad files
        raise invalid(files, f"its {TOKENIZER_NAME} is unreadable ({exc})") from exc
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def _encoder(files: ModelFiles, options: LoadOptions) -> torch.nn.Module:
    """The transformer built from its config and loaded from its safetensors (every weight
    of the model must be there; a pooler head the model does not use may be left out)."""
    if options.intra_op_threads:
        torch.set_num_threads(options.intra_op_threads)
    try:
        config = AutoConfig.for_model(**json.loads(files.path(CONFIG_NAME).read_text()))
        model = AutoModel.from_config(config, add_pooling_layer=False)
        state = load_file(str(files.path(WEIGHTS_NAME)))
        missing, _ = model.load_state_dict(state, strict=False)
    except (ValueError, KeyError, TypeError, OSError, RuntimeError) as exc:
        raise invalid(files, f"its encoder cannot be loaded ({exc})") from exc
    if missing:
        raise invalid(files, f"its {WEIGHTS_NAME} lacks {', '.join(missing[:3])}")
    return model.eval()

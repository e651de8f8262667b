"""Checking a Hugging Face model folder without loading it (no torch): a causal language
model with safetensors weights, a fast tokenizer and a chat template.

The control plane runs this on an imported folder so that a bad import is refused at once,
naming what is wrong; the weights are read as safetensors headers only.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

from modelfab.errors import ChatModelInvalid
from modelfab.llm.tokenizer import ChatTokenizer, load_tokenizer

CONFIG_JSON = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")
"""Architecture names of models that generate text (LlamaForCausalLM, GPT2LMHeadModel)."""

_MAX_HEADER = 100 * 2**20


@dataclass(frozen=True)
class HfModelInfo:
    """What a checked folder holds."""

    arch: str
    model_type: str
    context_length: int | None
    parameters: int
    tokenizer: ChatTokenizer


def check_hf_folder(root: Path) -> HfModelInfo:
    """Check that `root` is a chat model folder transformers can load.

    Raises:
        ChatModelInvalid: (param "file") naming the first problem: no or unreadable
            config.json, not a causal LM, weights missing or not safetensors (or an adapter
            without its base), tokenizer or chat template missing, a tokenizer larger than the
            model's vocabulary.
    """
    if not (root / CONFIG_JSON).is_file():
        if (root / "adapter_config.json").is_file():
            raise _invalid(
                "the folder holds a LoRA adapter, not a model; merge it into its base model "
                "(peft: merge_and_unload, then save_pretrained) and import the merged folder"
            )
        raise _invalid(
            f"no {CONFIG_JSON} at the top of the folder; import the folder that "
            "save_pretrained wrote (config.json, model.safetensors, tokenizer files)"
        )
    config = _read_config(root / CONFIG_JSON)
    archs = config.get("architectures")
    archs = [a for a in archs if isinstance(a, str)] if isinstance(archs, list) else []
    causal = [a for a in archs if a.endswith(CAUSAL_LM_SUFFIXES)]
    if not causal:
        raise _invalid(
            f"{CONFIG_JSON} declares architectures {archs or 'none'}, not a causal language "
            "model (an architecture ending in ForCausalLM); import a text-generation model"
        )
    parameters = _count_parameters(root)
    tokenizer = load_tokenizer(root)
    vocab = config.get("vocab_size")
    if isinstance(vocab, int) and tokenizer.vocab_size > vocab:
        raise _invalid(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model's embedding only "
            f"{vocab}; import the tokenizer that belongs to this model"
        )
    context = config.get("max_position_embeddings")
    return HfModelInfo(
        arch=causal[0],
        model_type=str(config.get("model_type", "")),
        context_length=context if isinstance(context, int) else None,
        parameters=parameters,
        tokenizer=tokenizer,
    )


def _invalid(message: str) -> ChatModelInvalid:
    return ChatModelInvalid(message, param="file")


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _invalid(f"{path.name} is not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise _invalid(f"{path.name} does not hold a JSON object")
    return config


def _weight_files(root: Path) -> list[Path]:
    """The safetensors files of the model: `model.safetensors`, or the shards its index
    names. Raises ChatModelInvalid when there are none or a shard is missing."""
    if (root / SAFETENSORS).is_file():
        return [root / SAFETENSORS]
    if (root / SAFETENSORS_INDEX).is_file():
        weight_map = _read_config(root / SAFETENSORS_INDEX).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise _invalid(f"{SAFETENSORS_INDEX} has no weight_map")
        names = sorted({str(v) for v in weight_map.values()})
        missing = [n for n in names if "/" in n or not (root / n).is_file()]
        if missing:
            raise _invalid(f"{SAFETENSORS_INDEX} names shards that are not in the folder: "
                           f"{', '.join(missing[:3])}")  # fmt: skip
        return [root / n for n in names]
    if any(root.glob("*.bin")) or any(root.glob("*.pt")):
        raise _invalid(
            "the weights are pickled PyTorch files (.bin/.pt), which are unsafe to load; "
            "save them as safetensors (save_pretrained(folder, safe_serialization=True))"
        )
    raise _invalid(f"no weights: {SAFETENSORS} (or {SAFETENSORS_INDEX} with its shards)")


def _count_parameters(root: Path) -> int:
    """Elements of all tensors, read from the safetensors headers."""
    total = 0
    for path in _weight_files(root):
        for name, spec in _safetensors_header(path).items():
            if name == "__metadata__":
                continue
            shape = spec.get("shape") if isinstance(spec, dict) else None
            if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
                raise _invalid(f"{path.name}: tensor {name!r} has no valid shape")
            total += prod(shape)
    if total == 0:
        raise _invalid("the safetensors files hold no tensors")
    return total


def _safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (an 8-byte length, then JSON)."""
    with path.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise _invalid(f"{path.name} is not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", raw)
        if length > _MAX_HEADER:
            raise _invalid(f"{path.name} is not a safetensors file (header of {length} bytes)")
        try:
            header = json.loads(fh.read(length))
        except (UnicodeDecodeError, ValueError) as exc:
            raise _invalid(f"{path.name} is not a safetensors file ({exc})") from exc
    if not isinstance(header, dict):
        raise _invalid(f"{path.name} is not a safetensors file (its header is not an object)")
    return header

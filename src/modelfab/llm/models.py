"""Chat models as Hugging Face folders: load, save, convert a GGUF, build a tiny one
(torch and transformers: workers and the CLI only).

A chat-model folder holds `config.json`, `generation_config.json`, `model.safetensors`
and the tokenizer files of `modelfab.llm.tokenizer` (with the chat template); transformers'
`AutoModelForCausalLM` and `AutoTokenizer` load it as they load any model folder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import gguf
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)

from modelfab.errors import ChatModelInvalid
from modelfab.llm.encoding import render_chat
from modelfab.llm.gguf import gguf_tokenizer, read_gguf
from modelfab.llm.publish import staged_folder
from modelfab.llm.tokenizer import ChatTokenizer, load_tokenizer, tiny_tokenizer

logger = logging.getLogger(__name__)

CONFIG_JSON = "config.json"


def load_chat_model(
    folder: Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, ChatTokenizer]:
    """The model (in eval mode, on `device`, in `dtype`) and tokenizer of a chat-model
    folder. fp32 is the default: bf16 is several times slower on CPUs without bf16 units.

    Raises:
        ChatModelInvalid: the tokenizer or chat template is missing (see `load_tokenizer`),
            or transformers cannot load the weights.
    """
    tokenizer = load_tokenizer(folder)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise ChatModelInvalid(
            f"the model in {folder.name} cannot be loaded by transformers ({exc})"
        ) from exc
    model = model.to(torch.device(device))  # type: ignore[arg-type]  # transformers' stub
    model.eval()
    return model, tokenizer


def save_chat_model(model: PreTrainedModel, tokenizer: ChatTokenizer, folder: Path) -> Path:
    """Write `model` (safetensors, with its config and generation config) and `tokenizer`
    to `folder`, published at once (see `staged_folder`; an existing folder is replaced).
    The generation config stops on the tokenizer's EOS and pads with its PAD. Blocks."""
    model.generation_config.eos_token_id = tokenizer.eos_id
    model.generation_config.pad_token_id = tokenizer.pad_id
    with staged_folder(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save(tmp)
    return folder


def convert_gguf(gguf_path: Path, out_folder: Path) -> Path:
    """Convert a GGUF file into a chat-model folder at `out_folder` (published at once).

    transformers dequantises the weights to fp32 (~15-50 s and ~1 GB for 135M parameters on
    a 2-core CPU); a model loaded from a GGUF cannot be saved, so it is rebuilt from its
    config (without the GGUF quantisation) and given the same tensors. The tokenizer and
    chat template come from the file (`modelfab.llm.gguf`). Blocks.

    Raises:
        ChatModelInvalid: the file does not parse, carries no chat template, or holds an
            architecture transformers cannot load from GGUF.
    """
    tokenizer = gguf_tokenizer(read_gguf(gguf_path))
    started = time.monotonic()
    try:
        with _gguf_parsed_once():
            loaded = AutoModelForCausalLM.from_pretrained(
                gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
            )
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        raise ChatModelInvalid(
            f"transformers cannot load {gguf_path.name} ({exc}); import the model's Hugging "
            "Face folder instead",
            param="file",
        ) from exc
    model = _rebuilt(loaded)
    del loaded
    save_chat_model(model, tokenizer, out_folder)
    logger.info(
        "converted %s to %s in %.1f s", gguf_path.name, out_folder, time.monotonic() - started
    )
    return out_folder


@contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """Within the block, `gguf.GGUFReader` parses each file once and
    `gguf.get_tensor_name_map` builds each map once.

    transformers (5.x) reads the file twice (config, then tensors; ~10 s each for SmolLM2's
    98k tokenizer strings) and rebuilds the same tensor-name map for each of the model's
    ~400 modules (~15 s): together more than half of a conversion. Both are pure functions
    of their arguments, and transformers imports them from `gguf` when it calls them, so
    memoizing the module attributes for the block is enough; they are restored after."""
    originals = {name: getattr(gguf, name) for name in ("GGUFReader", "get_tensor_name_map")}
    readers: dict[tuple[str, str], Any] = {}

    def reader(path: Any, mode: str = "r") -> Any:
        key = (str(path), mode)
        if key not in readers:
            readers[key] = originals["GGUFReader"](path, mode)
        return readers[key]

    gguf.GGUFReader = reader  # type: ignore[assignment,misc]
    gguf.get_tensor_name_map = lru_cache(maxsize=None)(originals["get_tensor_name_map"])
    try:
        yield
    finally:
        for name, value in originals.items():
            setattr(gguf, name, value)
        readers.clear()


def _rebuilt(loaded: PreTrainedModel) -> PreTrainedModel:
    """A plain model of `loaded`'s config sharing its tensors (no GGUF quantizer attached)."""
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)
    for key in ("_name_or_path", "transformers_version"):
        settings.pop(key, None)
    config = AutoConfig.for_model(**settings)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.eval()
    return model


def tiny_chat_model(folder: Path, *, layers: int = 2, hidden: int = 64, seed: int = 0) -> Path:
    """Build a random Llama with `tiny_tokenizer` (259 tokens, ChatML) into `folder`:
    `layers` decoder layers of width `hidden` (a multiple of 16: 4 heads, 2 KV heads), MLP
    twice as wide, tied embeddings, a 2048-token context. The same arguments always give
    the same weights; the global RNG is left as it was. Under a second on a CPU."""
    if hidden % 16 or hidden < 16 or layers < 1:
        raise ValueError(f"hidden must be a positive multiple of 16 and layers >= 1, not "
                         f"hidden={hidden}, layers={layers}")  # fmt: skip
    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=tokenizer.model_max_length or 2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.token_id(tokenizer.bos_token or tokenizer.eos_token),
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.eval()
    return save_chat_model(model, tokenizer, folder)


@torch.inference_mode()
def greedy_reply(
    model: PreTrainedModel,
    tokenizer: ChatTokenizer,
    messages: Sequence[Mapping[str, Any]],
    *,
    max_new_tokens: int = 64,
) -> str:
    """The model's greedy answer to `messages` (the chat template with the generation
    prompt), special tokens left out. Blocks while generating."""
    prompt = tokenizer.encode(render_chat(tokenizer, messages, add_generation_prompt=True))
    device = next(model.parameters()).device
    input_ids = torch.tensor([prompt], device=device)
    out = model.generate(  # type: ignore[operator]  # mypy sees a Tensor attribute
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
    )
    return tokenizer.decode(out[0, len(prompt) :].tolist()).strip()

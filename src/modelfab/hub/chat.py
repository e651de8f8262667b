"""Chat models of the hub: which there are, whether each is usable here, and their folders.

Layout of `<hub_dir>/<id>/` for a chat model:
- `tokenizer/`: the tokenizer files with the chat template (`modelfab.llm.tokenizer`);
- `model/`: the Hugging Face folder recipes load (`modelfab.llm.models`);
- `source.gguf`: an imported GGUF, converted into `model/` on first use;
- `meta.json`: for imported models (task chat, format gguf or hf, sha256, arch, ...).

`tokenizer/` and `model/` of catalog models are made on first use, each published by one
rename while holding an exclusive lock on `<hub_dir>/<id>/.lock`, so two workers (or the
control plane and a worker) asking at once convert once and the other waits for it.

`chat_tokenizer_folder` is light (the control plane counts tokens with it); only
`chat_model_folder` may convert weights, so only workers and the CLI call it.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from modelfab.data.store import sweep_staging
from modelfab.errors import ModelfabError, NotFound
from modelfab.hub.catalog import CATALOG_IDS, CHAT, CHAT_CATALOG, META_NAME, ChatEntry
from modelfab.llm.gguf import gguf_tokenizer, read_gguf
from modelfab.llm.publish import staged_folder
from modelfab.llm.tokenizer import ChatTokenizer, tiny_tokenizer
from modelfab.schemas.limits import NAME_PATTERN

logger = logging.getLogger(__name__)

MODEL_DIR = "model"
TOKENIZER_DIR = "tokenizer"
SOURCE_GGUF = "source.gguf"
LOCK_NAME = ".lock"
FORMATS = ("hf", "gguf")
"""How an imported chat model arrived: a Hugging Face folder or a GGUF file."""

TINY_CHAT_SHAPE: dict[str, int] = {"layers": 2, "hidden": 64, "seed": 0}
"""The arguments `tiny-chat` is built with (`modelfab.llm.models.tiny_chat_model`)."""

_NAME_RE = re.compile(NAME_PATTERN)
_BY_ID = {e.id: e for e in CHAT_CATALOG}


def imported_chat_meta(hub_dir: Path, model_id: str) -> dict[str, Any] | None:
    """What was recorded when the chat model `model_id` was imported, or None."""
    if model_id in CATALOG_IDS or not _NAME_RE.match(model_id):
        return None
    try:
        meta = json.loads((hub_dir / model_id / META_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("task") != CHAT or meta.get("format") not in FORMATS:
        return None
    return meta


def imported_entry(meta: dict[str, Any]) -> ChatEntry:
    """The hub entry of an imported chat model, from its `meta.json`."""
    return ChatEntry(
        id=str(meta["id"]),
        source="import",
        arch=str(meta.get("arch", "")),
        licence=str(meta.get("licence") or "see the model's own card"),
        params_m=float(meta.get("params_m", 0.0)),
        context_length=int(meta.get("context_length") or 0),
        description=f"imported {meta['format']} {meta.get('original_filename', '')}".strip(),
    )


def chat_entries(hub_dir: Path) -> list[ChatEntry]:
    """The catalog's chat models, then the imported ones by name."""
    imported = []
    for folder in sorted(hub_dir.iterdir()) if hub_dir.is_dir() else []:
        meta = imported_chat_meta(hub_dir, folder.name)
        if meta is not None:
            imported.append(imported_entry(meta))
    return [*CHAT_CATALOG, *imported]


def get_chat_entry(hub_dir: Path, model_id: str) -> ChatEntry:
    """The chat model `model_id`. Raises NotFound (param "base_model") naming the ids."""
    entry = _BY_ID.get(model_id)
    if entry is not None:
        return entry
    meta = imported_chat_meta(hub_dir, model_id)
    if meta is not None:
        return imported_entry(meta)
    ids = ", ".join(e.id for e in chat_entries(hub_dir))
    raise NotFound(f"no chat model {model_id!r} in the hub; available: {ids}", param="base_model")


def package_gguf(entry: ChatEntry) -> Path:
    """The GGUF inside the installed package of `entry`, found without importing it.
    Raises ModelfabError base_model_unavailable naming the install command."""
    assert entry.package is not None and entry.package_file is not None
    try:
        spec = importlib.util.find_spec(entry.package)
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / entry.package_file
        if path.is_file():
            return path
    raise _unavailable(entry.id, f"package {entry.package} is not installed; run: {entry.install}")


def _unavailable(model_id: str, what_to_do: str) -> ModelfabError:
    return ModelfabError(
        f"base model {model_id!r} is not available on this machine: {what_to_do}",
        code="base_model_unavailable",
        param="base_model",
    )


def chat_availability(entry: ChatEntry, hub_dir: Path) -> tuple[bool, str]:
    """(usable offline now, how or what to do)."""
    converted = (hub_dir / entry.id / MODEL_DIR).is_dir()
    if entry.source == "scratch":
        return True, "random init"
    if entry.source == "package":
        try:
            package_gguf(entry)
        except ModelfabError:
            return False, f"run: {entry.install}"
        state = "converted" if converted else "converted to safetensors on first use"
        return True, f"package {entry.package} installed; {state}"
    meta = imported_chat_meta(hub_dir, entry.id) or {}
    how = f"imported {meta.get('format', '')} {str(meta.get('sha256', ''))[:12]}"
    if meta.get("format") == "gguf" and not converted:
        how += "; converted to safetensors on first use"
    return True, how


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold the exclusive lock of a model's hub folder (blocks while another holds it)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / LOCK_NAME).open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _materialize(folder: Path, name: str, publish: Callable[[Path], object]) -> Path:
    """`folder/name`, unless it exists made by `publish(folder/name)` (which must publish
    it at once) while holding the folder's lock."""
    target = folder / name
    if target.is_dir():
        return target
    with _locked(folder):
        if not target.is_dir():  # another process may have made it while we waited
            publish(target)
    return target


def _publish_tokenizer(tokenizer: ChatTokenizer, target: Path) -> None:
    with staged_folder(target) as tmp:
        tokenizer.save(tmp)


def chat_tokenizer_folder(hub_dir: Path, model_id: str) -> Path:
    """The folder with the tokenizer and chat template of chat model `model_id`
    (`modelfab.llm.tokenizer.load_tokenizer` reads it), written on first use: the tiny
    model's is built, a package's GGUF gives its own (a few seconds). No torch.

    Its `model_max_length` is the model's context length when known.

    Raises:
        NotFound: no such chat model (param "base_model").
        ModelfabError: base_model_unavailable when its package is not installed.
        ChatModelInvalid: the package's GGUF has no usable tokenizer.
    """
    entry = get_chat_entry(hub_dir, model_id)
    folder = hub_dir / entry.id
    if entry.source == "scratch":
        return _materialize(
            folder, TOKENIZER_DIR, lambda target: _publish_tokenizer(tiny_tokenizer(), target)
        )
    if entry.source == "package":
        gguf = package_gguf(entry)
        return _materialize(
            folder,
            TOKENIZER_DIR,
            lambda target: _publish_tokenizer(gguf_tokenizer(read_gguf(gguf)), target),
        )
    target = folder / TOKENIZER_DIR
    if not target.is_dir():
        raise _unavailable(model_id, f"its import is incomplete; import it again ({target})")
    return target


def chat_model_folder(hub_dir: Path, model_id: str) -> Path:
    """The Hugging Face folder of chat model `model_id`
    (`modelfab.llm.models.load_chat_model` loads it), made on first use: the tiny model is
    built, a GGUF (a package's or an imported one) converted to safetensors (~15-50 s once).
    Two processes asking at once convert once. Imports torch: workers and CLI only.

    Raises what `chat_tokenizer_folder` raises, and ChatModelInvalid when conversion fails.
    """
    # The torch half is imported here, not at the top, so the control plane (which lists
    # models and reads tokenizers through this module) never loads torch.
    from modelfab.llm.models import convert_gguf, tiny_chat_model

    entry = get_chat_entry(hub_dir, model_id)
    folder = hub_dir / entry.id
    if entry.source == "scratch":
        return _materialize(
            folder, MODEL_DIR, lambda target: tiny_chat_model(target, **TINY_CHAT_SHAPE)
        )
    if entry.source == "package":
        gguf = package_gguf(entry)
        return _materialize(folder, MODEL_DIR, lambda target: convert_gguf(gguf, target))
    if (folder / MODEL_DIR).is_dir():
        return folder / MODEL_DIR
    source = folder / SOURCE_GGUF
    if not source.is_file():
        raise _unavailable(model_id, "its import is incomplete; import it again")
    return _materialize(folder, MODEL_DIR, lambda target: convert_gguf(source, target))


def sweep_hub_staging(hub_dir: Path, older_than_s: float) -> list[Path]:
    """Remove staging leftovers of killed imports (`<hub_dir>/.tmp-*`) and conversions
    (`<hub_dir>/<id>/.tmp-*`) untouched for `older_than_s` seconds. Blocks."""
    removed = sweep_staging(hub_dir, older_than_s)
    for folder in sorted(hub_dir.iterdir()) if hub_dir.is_dir() else []:
        if folder.is_dir() and not folder.name.startswith("."):
            removed += sweep_staging(folder, older_than_s)
    return removed

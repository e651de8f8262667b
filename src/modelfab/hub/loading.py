"""Build a hub model with timm and load its weights, offline (worker side; imports torch).

Nothing here downloads: timm is always called with `pretrained=False` and weights come
from a pip package that carries them, from a file an admin imported, or nowhere (random
init). Source state dicts in another naming (the `efficientnet-lite0` package) are mapped
onto timm's names by ORDER, checking that counts and every shape agree.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import timm
import torch
from torch import nn

from modelfab.errors import ModelfabError

logger = logging.getLogger(__name__)

PACKAGE_WEIGHTS_SUFFIX = ".pth"
"""A weights package holds exactly one file with this suffix."""


class HubEntryLike(Protocol):
    """What loading needs of a `modelfab.hub.catalog.HubEntry` (read-only attributes)."""

    @property
    def id(self) -> str: ...
    @property
    def arch(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def package(self) -> str | None: ...
    @property
    def input_size(self) -> int: ...
    @property
    def mean(self) -> tuple[float, float, float]: ...
    @property
    def std(self) -> tuple[float, float, float]: ...


def create_model(entry: HubEntryLike, num_classes: int, weights: Path | None = None) -> nn.Module:
    """Build `entry.arch` with a `num_classes` head and load the entry's weights on the CPU.

    Weights: an explicit `weights` file wins for any source; otherwise source "package"
    loads the single .pth of `entry.package` (found without importing it), "scratch"
    keeps the random init, and "import"/"hub" need `weights`. The backbone loads
    strictly; the classifier head is kept random when its shape differs.

    Raises:
        ModelfabError: code "base_model_unavailable" (param "base_model") when the package
            or file is missing; code "hub_weights_mismatch" when the weights do not fit.
    """
    model = timm.create_model(entry.arch, pretrained=False, num_classes=num_classes)
    path = weights if weights is not None else _default_weights(entry)
    if path is None:
        logger.info("%s: random init (%s)", entry.id, entry.arch)
        return model
    source = read_state_dict(path, entry)
    load_backbone(model, source, entry)
    logger.info("%s: loaded %d tensors from %s", entry.id, len(source), path.name)
    return model


def _default_weights(entry: HubEntryLike) -> Path | None:
    """Where the entry's weights are when no file was passed; None for random init."""
    if entry.source == "scratch":
        return None
    if entry.source == "package":
        return package_weights_file(entry)
    raise _unavailable(
        entry, f"its weights were not imported; run: modelfab hub import {entry.id} FILE"
    )


def _unavailable(entry: HubEntryLike, what_to_do: str) -> ModelfabError:
    return ModelfabError(
        f"base model {entry.id!r} is not available on this machine: {what_to_do}",
        code="base_model_unavailable",
        param="base_model",
    )


def package_weights_file(entry: HubEntryLike) -> Path:
    """The single .pth inside the installed package `entry.package`.

    The package is located with `importlib.util.find_spec` and never imported (its
    `__init__` may import unrelated things). Raises ModelfabError base_model_unavailable.
    """
    if entry.package is None:
        raise ValueError(f"hub entry {entry.id!r} has source 'package' but no package")
    hint = f"run: pip install {entry.package.replace('_', '-')}"
    try:
        spec = importlib.util.find_spec(entry.package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise _unavailable(entry, f"package {entry.package} is not installed; {hint}")
    files = sorted(
        path
        for folder in spec.submodule_search_locations
        for path in Path(folder).rglob(f"*{PACKAGE_WEIGHTS_SUFFIX}")
    )
    if len(files) != 1:
        found = ", ".join(p.name for p in files) or "none"
        raise _unavailable(
            entry,
            f"package {entry.package} should hold one {PACKAGE_WEIGHTS_SUFFIX} file, "
            f"found {found}; reinstall it ({hint} --force-reinstall)",
        )
    return files[0]


def read_state_dict(path: Path, entry: HubEntryLike) -> dict[str, torch.Tensor]:
    """Tensors of a weights file (`torch.load`, weights only, on the CPU).

    Accepts a bare state dict or one wrapped under "state_dict"/"model" (as modelfab's own
    weights.pt is); a "module." prefix (DataParallel) is stripped.

    Raises:
        ModelfabError: base_model_unavailable when the file is missing;
            hub_weights_mismatch when it is not a readable state dict.
    """
    if not path.is_file():
        raise _unavailable(
            entry, f"weights file {path.name} is missing; run: modelfab hub import {entry.id} FILE"
        )
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and format errors all mean "not our file"
        raise _mismatch(entry, f"{path.name} is not a readable PyTorch state dict ({exc})") from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise _mismatch(entry, f"{path.name} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _mismatch(entry: HubEntryLike, detail: str) -> ModelfabError:
    return ModelfabError(
        f"the weights of base model {entry.id!r} do not fit {entry.arch}: {detail}; import a "
        f"timm state dict of {entry.arch} with: modelfab hub import {entry.id} FILE",
        code="hub_weights_mismatch",
        param="base_model",
    )


def head_prefix(model: nn.Module) -> str:
    """Key prefix of the classifier head, from timm's pretrained config ("classifier", "fc")."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("classifier", "classifier")
    return str(name[0] if isinstance(name, tuple | list) else name)


def align_state_dict(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], head: str
) -> dict[str, torch.Tensor]:
    """`source` renamed to `target`'s keys: by name when every backbone key of `target` is
    in `source` (head tensors may be absent: a headless export), otherwise by order.
    Shapes must agree except under the `head` prefix.

    Raises ValueError describing the first disagreement.
    """
    if all(k in source for k in target if not _is_head(k, head)):
        extra = sorted(set(source) - set(target))
        if extra:
            raise ValueError(f"{len(extra)} unexpected tensors, e.g. {extra[0]!r}")
        pairs = [(k, k) for k in target if k in source]
    else:
        if len(source) != len(target):
            raise ValueError(f"{len(source)} tensors where {len(target)} are expected")
        pairs = list(zip(source, target, strict=True))
    aligned: dict[str, torch.Tensor] = {}
    for src_key, dst_key in pairs:
        got, want = source[src_key].shape, target[dst_key].shape
        if got != want and not _is_head(dst_key, head):
            raise ValueError(f"{src_key} has shape {tuple(got)} but {dst_key} needs {tuple(want)}")
        aligned[dst_key] = source[src_key]
    return aligned


def _is_head(key: str, head: str) -> bool:
    return key == head or key.startswith(head + ".")


def load_backbone(
    model: nn.Module, source: Mapping[str, torch.Tensor], entry: HubEntryLike
) -> None:
    """Load `source` into `model`: every backbone tensor strictly; head tensors only when
    present with matching shapes (a 1000-class head loads into a 1000-class model), else
    the head keeps its random init.

    Raises ModelfabError hub_weights_mismatch.
    """
    target = model.state_dict()
    head = head_prefix(model)
    try:
        aligned = align_state_dict(source, target, head)
    except ValueError as exc:
        raise _mismatch(entry, str(exc)) from exc
    skipped = [k for k, v in aligned.items() if v.shape != target[k].shape]
    for key in skipped:
        del aligned[key]
    result = model.load_state_dict(aligned, strict=False)
    backbone_missing = [k for k in result.missing_keys if not _is_head(k, head)]
    if result.unexpected_keys or backbone_missing:
        raise _mismatch(entry, f"missing {backbone_missing}, unexpected {result.unexpected_keys}")
    if result.missing_keys:
        logger.info("%s: new classifier head (%s)", entry.id, ", ".join(result.missing_keys))

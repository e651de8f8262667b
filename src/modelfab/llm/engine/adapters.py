"""LoRA adapters of one base model: checked when registered, loaded on first use into the
stacks of `modelfab.llm.engine.lora`, evicted least-recently-used within a memory budget,
pinnable.

An adapter is a peft LoRA folder (`adapter_config.json`, `adapter_model.safetensors`), as
the llm-finetune recipe saves it, usually with its `model.json` (whose
`base_model.hub` names the base it was trained on). Registering reads only the config and
the safetensors header: a folder meant for another base is refused at once, before any
request waits on it. Loading reads the weights into a slot of every layer it targets.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from modelfab.llm.engine.lora import LoraRows, StackedLoraLinear, linear_at, wrap_linear
from modelfab.llm.engine.types import AdapterNotFound, AdapterRefused, AdapterResidency

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MODEL_JSON = "model.json"
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<path>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


@dataclass(frozen=True)
class BaseIdentity:
    """What an adapter's lineage is compared with: the base's hub name and its folder."""

    name: str
    folder: Path

    def matches(self, declared: str) -> bool:
        """Whether `declared` (a hub name or the path the adapter was trained from) is
        this base: its name, its folder, or a folder named after it (the hub keeps a
        model in `<hub>/<name>/model`)."""
        if declared == self.name:
            return True
        path = Path(declared)
        try:
            if path.exists() and path.resolve() == self.folder.resolve():
                return True
        except OSError:
            pass
        return self.name in (path.name, path.parent.name)


@dataclass(frozen=True)
class AdapterSpec:
    """A checked adapter folder: per targeted layer path, its rank and scale."""

    name: str
    folder: Path
    ranks: dict[str, int]
    scales: dict[str, float]
    bytes: int

    @property
    def max_rank(self) -> int:
        return max(self.ranks.values())


def read_adapter(
    name: str, folder: Path, model: nn.Module, base: BaseIdentity, element_size: int
) -> AdapterSpec:
    """Check that the adapter in `folder` runs on `model` (whose identity is `base`).

    Raises:
        AdapterRefused: the folder is not a LoRA adapter, was trained on another base, its
            shapes do not fit the base's layers, or it uses a feature this engine does
            not run.
    """
    config = _read_json(folder / ADAPTER_CONFIG, name)
    _check_features(name, config)
    _check_lineage(name, folder, config, base)
    shapes = _weight_shapes(name, folder)
    ranks: dict[str, int] = {}
    scales: dict[str, float] = {}
    total = 0
    for path, (a_shape, b_shape) in sorted(shapes.items()):
        layer = linear_at(model, path)
        rank = a_shape[0]
        if (
            layer is None
            or a_shape[1] != layer.in_features
            or b_shape != (layer.out_features, rank)
        ):
            have = "no linear layer" if layer is None else (layer.out_features, layer.in_features)
            raise AdapterRefused(
                f"adapter {name!r} does not fit the loaded base model {base.name!r}: its "
                f"layer {path} has A {a_shape} and B {b_shape}, the base has {have} there; "
                "it was trained on another model — serve it on its own base",
                param="adapter",
            )
        ranks[path] = rank
        scales[path] = _scale(config, path, rank)
        total += (a_shape[1] * rank + rank * b_shape[0]) * element_size
    return AdapterSpec(name=name, folder=folder, ranks=ranks, scales=scales, bytes=total)


def _read_json(path: Path, name: str) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdapterRefused(
            f"adapter {name!r} has no readable {path.name} ({exc}); register the folder a "
            "LoRA fine-tune saved",
            param="adapter",
        ) from exc
    if not isinstance(obj, dict):
        raise AdapterRefused(f"{path.name} of adapter {name!r} is not an object", param="adapter")
    return obj


def _check_features(name: str, config: dict[str, Any]) -> None:
    unsupported = {
        "peft_type": config.get("peft_type", "LORA") != "LORA",
        "use_dora": bool(config.get("use_dora")),
        "modules_to_save": bool(config.get("modules_to_save")),
        "bias": config.get("bias", "none") != "none",
        "fan_in_fan_out": bool(config.get("fan_in_fan_out")),
    }
    found = [key for key, bad in unsupported.items() if bad]
    if found:
        raise AdapterRefused(
            f"adapter {name!r} uses {', '.join(found)} ({ADAPTER_CONFIG}); the engine runs "
            "plain LoRA on linear layers — merge this one into a full model instead",
            param="adapter",
        )


def _check_lineage(name: str, folder: Path, config: dict[str, Any], base: BaseIdentity) -> None:
    """model.json's `base_model.hub` decides when present (paths differ between machines);
    else the path peft recorded in `base_model_name_or_path`."""
    declared: str | None = None
    source = ADAPTER_CONFIG
    if (folder / MODEL_JSON).is_file():
        lineage = _read_json(folder / MODEL_JSON, name).get("base_model") or {}
        hub = lineage.get("hub") if isinstance(lineage, dict) else None
        if isinstance(hub, str) and hub:
            declared, source = hub, f"{MODEL_JSON} base_model.hub"
    if declared is None:
        recorded = config.get("base_model_name_or_path")
        declared = recorded if isinstance(recorded, str) and recorded else None
    if declared is not None and not base.matches(declared):
        raise AdapterRefused(
            f"adapter {name!r} was trained on {declared!r} ({source}), but this engine "
            f"holds base model {base.name!r}; serve it on an endpoint of {declared!r}",
            param="adapter",
        )


def _weight_shapes(name: str, folder: Path) -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:
    path = folder / ADAPTER_WEIGHTS
    found: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118  # safe_open is not a mapping
                match = _KEY.match(key)
                if match is None:
                    raise AdapterRefused(
                        f"adapter {name!r} holds {key}, which is not a LoRA A or B weight of "
                        "a linear layer; the engine runs plain LoRA adapters only",
                        param="adapter",
                    )
                shape = tuple(f.get_slice(key).get_shape())
                found.setdefault(match["path"], {})[match["ab"]] = (int(shape[0]), int(shape[1]))
    except (OSError, ValueError, RuntimeError) as exc:  # safetensors raises plain errors
        raise AdapterRefused(
            f"adapter {name!r} has no readable {ADAPTER_WEIGHTS} ({exc})", param="adapter"
        ) from exc
    pairs = {p: (ab["A"], ab["B"]) for p, ab in found.items() if set(ab) == {"A", "B"}}
    if not pairs or len(pairs) != len(found):
        raise AdapterRefused(
            f"adapter {name!r}: {ADAPTER_WEIGHTS} must hold an A and a B weight per layer",
            param="adapter",
        )
    return pairs


def _scale(config: dict[str, Any], path: str, rank: int) -> float:
    """peft's scale: lora_alpha / r (or / sqrt(r) with rsLoRA), alpha_pattern first."""
    alpha = float(config.get("lora_alpha", 8))
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", path):
            alpha = float(value)
            break
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def load_weights(spec: AdapterSpec) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer path: A as [in, r] and B as [r, out] times the scale (fp32, CPU)."""
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(str(spec.folder / ADAPTER_WEIGHTS), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118
            match = _KEY.match(key)
            if match is not None:
                tensors.setdefault(match["path"], {})[match["ab"]] = f.get_tensor(key).float()
    return {
        path: (ab["A"].t().contiguous(), (ab["B"].t() * spec.scales[path]).contiguous())
        for path, ab in tensors.items()
    }


def evictions(
    resident: Sequence[tuple[str, int, int, bool]], used: int, need: int, budget: int
) -> list[str] | None:
    """Which adapters to evict so that `need` more bytes fit in `budget` when `used` are
    taken: least recently used first among the evictable ones. `resident` holds
    (name, last use, bytes, evictable). None when even evicting all of them is not enough."""
    chosen: list[str] = []
    for name, _, size, evictable in sorted(resident, key=lambda r: r[1]):
        if used + need <= budget:
            break
        if evictable:
            chosen.append(name)
            used -= size
    return chosen if used + need <= budget else None


@dataclass
class _Entry:
    spec: AdapterSpec
    pinned: bool = False
    slot: int | None = None
    running: int = 0
    last_used: int = 0


@dataclass
class AdapterBank:
    """The registered adapters of one base and the stacks they are loaded into. Not
    thread-safe: the engine calls it from its stepping thread (registration under the
    engine's lock)."""

    model: nn.Module
    base: BaseIdentity
    budget_bytes: int
    rows: LoraRows = field(default_factory=LoraRows)
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _layers: dict[str, StackedLoraLinear] = field(default_factory=dict)
    _free_slots: list[int] = field(default_factory=list)
    _slots: int = 0
    _clock: int = 0

    def register(self, name: str, folder: Path, *, pinned: bool = False) -> AdapterSpec:
        """Check and record adapter `name` (weights load on first use). Registering a name
        again replaces it once no sequence uses it. Raises AdapterRefused."""
        element = next(self.model.parameters()).element_size()
        spec = read_adapter(name, folder, self.model, self.base, element)
        if spec.bytes > self.budget_bytes:
            raise AdapterRefused(
                f"adapter {name!r} needs {spec.bytes} bytes, more than the adapter memory "
                f"budget of {self.budget_bytes}; raise the budget",
                param="adapter",
            )
        old = self._entries.get(name)
        if old is not None:
            if old.running:
                raise AdapterRefused(
                    f"adapter {name!r} is generating for {old.running} requests; register "
                    "the new version under another name",
                    param="adapter",
                )
            self._unload(old)
        self._entries[name] = _Entry(spec=spec, pinned=pinned)
        return spec

    def has(self, name: str) -> bool:
        return name in self._entries

    def check_known(self, name: str) -> None:
        if name not in self._entries:
            raise AdapterNotFound(
                f"no adapter {name!r} on this engine; register it first", param="adapter"
            )

    def set_pinned(self, name: str, pinned: bool) -> None:
        """A pinned adapter, once loaded, is never evicted. Raises AdapterNotFound."""
        self.check_known(name)
        self._entries[name].pinned = pinned

    def acquire(self, name: str) -> int | None:
        """The slot of `name`, loading it (evicting least-recently-used adapters no
        sequence uses) if needed; None when it cannot fit now (retry after a release).
        Each acquire must be paired with a `release`."""
        self.check_known(name)
        entry = self._entries[name]
        if entry.slot is None and not self._load(entry):
            return None
        self._clock += 1
        entry.last_used = self._clock
        entry.running += 1
        return entry.slot

    def release(self, name: str) -> None:
        self._entries[name].running -= 1

    def release_all(self) -> None:
        """Forget every use (after an engine failure: no sequence runs any more)."""
        for entry in self._entries.values():
            entry.running = 0

    def residency(self) -> tuple[AdapterResidency, ...]:
        return tuple(
            AdapterResidency(
                name=name,
                loaded=e.slot is not None,
                pinned=e.pinned,
                bytes=e.spec.bytes,
                running=e.running,
            )
            for name, e in sorted(self._entries.items())
        )

    @property
    def used_bytes(self) -> int:
        return sum(e.spec.bytes for e in self._entries.values() if e.slot is not None)

    def _load(self, entry: _Entry) -> bool:
        resident = [
            (n, e.last_used, e.spec.bytes, not e.pinned and not e.running)
            for n, e in self._entries.items()
            if e.slot is not None
        ]
        evict = evictions(resident, self.used_bytes, entry.spec.bytes, self.budget_bytes)
        if evict is None:
            return False
        for name in evict:
            logger.info("evicting adapter %s (least recently used)", name)
            self._unload(self._entries[name])
        slot = self._free_slots.pop() if self._free_slots else self._new_slot()
        rank = entry.spec.max_rank
        for path, (a, b) in load_weights(entry.spec).items():
            layer = self._layers.get(path)
            if layer is None:
                layer = wrap_linear(self.model, path, self.rows, max(self._slots, 1), rank)
                self._layers[path] = layer
            layer.write(slot, a, b)
        for layer in self._layers.values():  # every layer indexes every slot
            layer.resize(self._slots, 1)
        entry.slot = slot
        logger.info("loaded adapter %s into slot %d", entry.spec.name, slot)
        return True

    def _new_slot(self) -> int:
        slot = self._slots
        self._slots += 1
        return slot

    def _unload(self, entry: _Entry) -> None:
        if entry.slot is None:
            return
        for layer in self._layers.values():
            layer.clear(entry.slot)
        self._free_slots.append(entry.slot)
        entry.slot = None

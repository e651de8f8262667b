"""What several benchmarks share: a real platform in a temporary home, and the hub cache
of the language-model benchmarks."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from modelfab.compute.executors.local.process import find_workers, kill_tree
from modelfab.server import Platform
from modelfab.settings import ServerSettings

SMOLLM2 = "smollm2-135m-instruct"
DEFAULT_HUB_DIR = Path.home() / ".cache" / "modelfab-bench" / "hub"
"""Where the language-model benchmarks convert the packaged GGUF once (~15 s)."""


@contextlib.contextmanager
def running_platform(home: Path, cpus: float) -> Iterator[Platform]:
    """A Platform in `home`, stopped (and its leftover workers killed) on exit."""
    platform = Platform(ServerSettings(home=home, port=0, fake_gpus=0, cpus=cpus))
    try:
        platform.start()
        yield platform
    finally:
        platform.stop()
        if platform.node is not None:
            for proc in find_workers(platform.node.id).values():
                kill_tree(proc.pid, grace_s=2.0)


def seed_hub(source: Path, hub_dir: Path) -> None:
    """Put the converted base model (`source`: `<hub>/<id>`) in the platform's hub, hard
    linked where possible, so the job does not convert the GGUF again."""
    try:
        shutil.copytree(source, hub_dir / source.name, copy_function=os.link)
    except OSError:
        shutil.rmtree(hub_dir / source.name, ignore_errors=True)
        shutil.copytree(source, hub_dir / source.name)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)

"""What several benchmarks share: a real platform in a temporary home."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from modelfab.compute.executors.local.process import find_workers, kill_tree
from modelfab.server import Platform
from modelfab.settings import ServerSettings


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

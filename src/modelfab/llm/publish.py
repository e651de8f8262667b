"""Publishing a folder all at once: readers see the old folder or the complete new one,
never a half-written one."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STAGING_PREFIX = ".tmp-"
"""Staging folders start with this (as the dataset and artifact stores' do), so the
control plane's sweep removes what a killed process left."""


@contextmanager
def staged_folder(dest: Path) -> Iterator[Path]:
    """An empty folder beside `dest` to write into; when the block ends without an error it
    becomes `dest` by one rename (an existing `dest` is replaced: renamed aside, then
    removed). On an error the staging folder is removed and `dest` is untouched. Blocks."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{dest.name}-", dir=dest.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the folder from other local users
        yield tmp
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}old-", dir=dest.parent))
            os.rename(dest, old / dest.name)
            os.rename(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

"""Platform start-up housekeeping: what a killed predecessor's uploads left is swept,
what is still being written is not."""

from __future__ import annotations

import os
import time
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from modelfab.server import Platform
from modelfab.settings import ServerSettings

HOUR = 3600.0


def _make(path: Path, *, age_s: float = 0.0, folder: bool = False) -> Path:
    """A file, or a folder with a file in a subfolder, everything `age_s` old."""
    if folder:
        (path / "x" / "cat").mkdir(parents=True)
        (path / "x" / "cat" / "0.png").write_bytes(b"png")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial archive")
    when = time.time() - age_s
    for p in [*path.rglob("*"), path] if folder else [path]:
        os.utime(p, (when, when))
    return path


def test_start_sweeps_old_upload_leftovers_and_keeps_fresh_ones(
    settings: ServerSettings, factory: sessionmaker[Session]
) -> None:
    home = settings.home
    old = [
        _make(home / "tmp" / "upload-k1ll3d", age_s=2 * HOUR, folder=True),
        _make(home / "tmp" / "tmpab12cd.tar.gz", age_s=2 * HOUR),
        _make(home / "datasets" / ".tmp-k1ll3d", age_s=2 * HOUR, folder=True),
        _make(home / "artifacts" / ".tmp-k1ll3d", age_s=2 * HOUR),
        _make(home / "hub" / ".tmp-import-k1ll3d", age_s=2 * HOUR, folder=True),
        _make(
            home / "hub" / "smollm2-135m-instruct" / ".tmp-model-k1ll3d",
            age_s=2 * HOUR,
            folder=True,
        ),
    ]
    # Another process sharing the home is uploading these right now.
    fresh = [
        _make(home / "tmp" / "upload-busy", folder=True),
        _make(home / "tmp" / "tmpbusy.zip"),
        _make(home / "datasets" / ".tmp-busy", folder=True),
        _make(home / "hub" / "tiny-chat" / ".tmp-model-busy", folder=True),
    ]
    platform = Platform(settings.model_copy(update={"staging_grace_s": HOUR}))
    platform.start()
    try:
        assert [p for p in old if p.exists()] == []
        assert all(p.exists() for p in fresh)
        later = _make(home / "tmp" / "upload-later", age_s=2 * HOUR, folder=True)
        assert platform.sweep_leftovers() == [later]  # what the periodic sweep runs
        assert all(p.exists() for p in fresh)
    finally:
        platform.stop()

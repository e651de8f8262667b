"""DatasetStore: content-addressed ingest, dedup, concurrent publish, verify."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from modelfab.data import DatasetScan, DatasetStore, StoredDataset, scan_dataset
from modelfab.data import store as store_mod
from modelfab.data.validate import DatasetKind
from modelfab.errors import DatasetInvalid, ModelfabError, NotFound
from modelfab.tasks import IMAGE_CLASSIFICATION, get_task

from .conftest import write_image

CLS = get_task(IMAGE_CLASSIFICATION)


def _entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_ingest_copies_scanned_files_and_metadata(cls_root: Path, tmp_path: Path) -> None:
    (cls_root / "README.md").write_text("ignored")
    (cls_root / "cat" / ".DS_Store").write_text("ignored")
    store = DatasetStore(tmp_path / "store")
    scan = scan_dataset(cls_root, CLS)
    stored = store.ingest(cls_root, CLS)
    assert stored == StoredDataset(
        sha256=scan.sha256,
        path=tmp_path / "store" / scan.sha256,
        stats=scan.stats,
        file_count=5,
        size_bytes=sum(f.size for f in scan.files),
    )
    assert _entries(tmp_path / "store") == [scan.sha256]
    expected = sorted([f.relpath for f in scan.files] + [store_mod.METADATA_NAME])
    assert _files(stored.path) == expected
    meta = json.loads((stored.path / store_mod.METADATA_NAME).read_text())
    assert (
        meta["task"] == CLS.name and meta["sha256"] == scan.sha256 and meta["stats"] == scan.stats
    )
    assert scan_dataset(stored.path, CLS).sha256 == scan.sha256
    assert store.get(scan.sha256) == stored
    assert store.path_for(scan.sha256) == stored.path


def test_ingest_twice_keeps_one_copy_and_copies_once(
    cls_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DatasetStore(tmp_path / "store")
    stages: list[Path] = []
    original = DatasetStore._stage

    def counting_stage(self: DatasetStore, src: Path, scan: DatasetScan) -> Path:
        stages.append(src)
        return original(self, src, scan)

    monkeypatch.setattr(DatasetStore, "_stage", counting_stage)
    first = store.ingest(cls_root, CLS)
    second = store.ingest(cls_root, CLS)
    assert first == second
    assert len(stages) == 1
    assert _entries(tmp_path / "store") == [first.sha256]


def test_concurrent_ingest_ends_with_one_complete_copy(
    cls_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DatasetStore(tmp_path / "store")
    barrier = threading.Barrier(2, timeout=10)
    original = DatasetStore._stage

    def racing_stage(self: DatasetStore, src: Path, scan: DatasetScan) -> Path:
        tmp = original(self, src, scan)
        barrier.wait()  # both copies are staged before either publishes
        return tmp

    monkeypatch.setattr(DatasetStore, "_stage", racing_stage)
    results: list[StoredDataset] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(store.ingest(cls_root, CLS))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert len(results) == 2 and results[0] == results[1]
    sha = results[0].sha256
    assert _entries(tmp_path / "store") == [sha]  # no temp folder left behind
    store.verify(sha)
    assert len(_files(results[0].path)) == 6  # 5 images + metadata


def test_invalid_dataset_stores_nothing(cls_root: Path, tmp_path: Path) -> None:
    (cls_root / "cat" / "bad.png").write_text("nope")
    store = DatasetStore(tmp_path / "store")
    with pytest.raises(DatasetInvalid):
        store.ingest(cls_root, CLS)
    assert _entries(tmp_path / "store") == []


def test_source_changed_during_copy_is_refused(
    cls_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def scan_then_edit(src: Path, task: DatasetKind) -> DatasetScan:
        scan = scan_dataset(src, task)
        write_image(src / "dog" / "001.png", seed=12345)
        return scan

    monkeypatch.setattr(store_mod, "scan_dataset", scan_then_edit)
    store = DatasetStore(tmp_path / "store")
    with pytest.raises(DatasetInvalid) as info:
        store.ingest(cls_root, CLS)
    assert info.value.param == "dog/001.png" and "changed" in info.value.message
    assert _entries(tmp_path / "store") == []


def test_verify_detects_tampering(cls_root: Path, tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "store")
    stored = store.ingest(cls_root, CLS)
    store.verify(stored.sha256)
    target = stored.path / "cat" / "001.png"
    data = bytearray(target.read_bytes())
    data[-5] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ModelfabError) as info:
        store.verify(stored.sha256)
    assert info.value.code == "dataset_corrupt"


@pytest.mark.parametrize("tamper", ["added", "removed", "hidden-added", "symlink"])
def test_verify_detects_changed_file_set(cls_root: Path, tmp_path: Path, tamper: str) -> None:
    store = DatasetStore(tmp_path / "store")
    stored = store.ingest(cls_root, CLS)
    if tamper == "added":
        write_image(stored.path / "cat" / "new.png")
    elif tamper == "removed":
        (stored.path / "dog" / "000.png").unlink()
    elif tamper == "hidden-added":
        (stored.path / "cat" / ".sneaky").write_text("x")
    else:
        target = stored.path / "dog" / "000.png"
        target.rename(tmp_path / "moved.png")
        target.symlink_to(tmp_path / "moved.png")
    with pytest.raises(ModelfabError) as info:
        store.verify(stored.sha256)
    assert info.value.code == "dataset_corrupt"


@pytest.mark.parametrize("sha", ["0" * 64, "../store", "", "A" * 64])
def test_path_for_unknown_is_not_found(tmp_path: Path, sha: str) -> None:
    store = DatasetStore(tmp_path / "store")
    (tmp_path / "store" / ("A" * 64)).mkdir()  # exists, but not a valid sha256 spelling
    with pytest.raises(NotFound) as info:
        store.path_for(sha)
    assert info.value.param == "sha256"
    with pytest.raises(NotFound):
        store.verify(sha)


# --------------------------------------------------------------------------- sweep


HOUR = 3600.0


def _age(path: Path, seconds: float) -> Path:
    """Set the mtime of `path` and of everything under it `seconds` in the past."""
    when = time.time() - seconds
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (when, when), follow_symlinks=False)
    return path


def _leftover(root: Path, name: str, files: int = 3) -> Path:
    """A staging folder as a killed ingest leaves it: some files copied, in subfolders."""
    for i in range(files):
        (root / name / "cat").mkdir(parents=True, exist_ok=True)
        (root / name / "cat" / f"{i}.png").write_bytes(b"x" * i)
    return root / name


def test_sweep_removes_old_staging_and_keeps_fresh_staging_and_datasets(
    cls_root: Path, tmp_path: Path
) -> None:
    store = DatasetStore(tmp_path / "store")
    published = store.ingest(cls_root, CLS).path
    _age(published, 2 * HOUR)  # a dataset is never staging, however old
    old = _age(_leftover(store.root, ".tmp-old"), 2 * HOUR)
    old_file = store.root / ".tmp-file"  # mkstemp leftovers are files
    old_file.write_bytes(b"half")
    _age(old_file, 2 * HOUR)
    fresh = _leftover(store.root, ".tmp-fresh")
    # An old folder in which a file was just written is a copy in progress.
    busy = _age(_leftover(store.root, ".tmp-busy"), 2 * HOUR)
    (busy / "cat" / "new.png").write_bytes(b"new")

    removed = store_mod.sweep_staging(store.root, older_than_s=HOUR)

    assert sorted(p.name for p in removed) == [".tmp-file", ".tmp-old"]
    assert not old.exists() and not old_file.exists()
    assert _entries(store.root) == sorted([published.name, ".tmp-busy", ".tmp-fresh"])
    assert fresh.is_dir() and busy.is_dir()
    store.verify(published.name)


def test_sweep_with_a_pattern_takes_only_matching_entries(tmp_path: Path) -> None:
    root = tmp_path / "scratch"
    root.mkdir()
    for name in ("upload-1", "tmpab12.tar.gz", "keep.txt"):
        (root / name).write_text("x")
        _age(root / name, 2 * HOUR)
    removed = store_mod.sweep_staging(root, older_than_s=HOUR, pattern="*")
    assert len(removed) == 3 and _entries(root) == []
    assert store_mod.sweep_staging(tmp_path / "absent", older_than_s=HOUR) == []


def test_an_ingest_in_progress_survives_a_sweep(
    cls_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep run (as another process's would) while files are being copied into the
    staging folder leaves it alone, and the ingest publishes a complete copy."""
    store = DatasetStore(tmp_path / "store")
    swept: list[list[Path]] = []
    copy = store_mod._copy_verified

    def copy_then_sweep(src: Path, dst: Path, entry: Any) -> None:
        copy(src, dst, entry)
        swept.append(store.sweep(older_than_s=HOUR))

    monkeypatch.setattr(store_mod, "_copy_verified", copy_then_sweep)
    stored = store.ingest(cls_root, CLS)
    assert swept and all(removed == [] for removed in swept)
    store.verify(stored.sha256)
    assert _entries(store.root) == [stored.sha256]

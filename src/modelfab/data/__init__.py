"""Datasets: validation and content addressing, archive extraction, the store.

Flow of an upload: `extract_archive` (archives only) -> `scan_dataset` (walk, the task's
layout and file checks, hash) -> `DatasetStore.ingest` (immutable copy at
`<store>/<sha256>`). Which tasks exist and what each accepts is `modelfab.tasks`, which
sits above this package and hands its `TaskSpec` in as the `DatasetKind`.
"""

from modelfab.data.archive import ARCHIVE_SUFFIXES, extract_archive, is_archive
from modelfab.data.store import DatasetStore, StoredDataset
from modelfab.data.validate import DatasetKind, DatasetScan, FileEntry, Survey, Tree, scan_dataset
from modelfab.imaging import IMAGE_SUFFIXES

__all__ = [
    "ARCHIVE_SUFFIXES",
    "IMAGE_SUFFIXES",
    "DatasetKind",
    "DatasetScan",
    "DatasetStore",
    "FileEntry",
    "StoredDataset",
    "Survey",
    "Tree",
    "extract_archive",
    "is_archive",
    "scan_dataset",
]

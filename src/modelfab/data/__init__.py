"""Datasets: task names, validation and content addressing, archive extraction, the store.

Flow of an upload: `extract_archive` (archives only) -> `scan_dataset` (layout, decode,
hash) -> `DatasetStore.ingest` (immutable copy at `<store>/<sha256>`).
"""

from modelfab.data.archive import ARCHIVE_SUFFIXES, extract_archive
from modelfab.data.store import DatasetStore, StoredDataset
from modelfab.data.tasks import IMAGE_SUFFIXES, TASKS, check_task
from modelfab.data.validate import DatasetScan, FileEntry, scan_dataset

__all__ = [
    "ARCHIVE_SUFFIXES",
    "IMAGE_SUFFIXES",
    "TASKS",
    "DatasetScan",
    "DatasetStore",
    "FileEntry",
    "StoredDataset",
    "check_task",
    "extract_archive",
    "scan_dataset",
]

"""`TaskSpec`: everything modelfab knows about one task type, in one object.

A task is a kind of dataset and of model: how a dataset of it is laid out and summarised
(`survey`, run by `modelfab.data.scan_dataset`), which served-model kind a replica runs
for its models (`served_model`, an import string so the control plane never imports
ONNX Runtime), which artifacts a model version needs to be servable, and the shape of one
item's answer (`result`, for docs). Specs are registered in `modelfab.tasks.registry`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from modelfab.data.validate import DatasetScan, Survey, Tree, scan_dataset

logger = logging.getLogger(__name__)

Surveyor = Callable[[Path, Tree], Survey]
"""(dataset root, its walked tree) -> the survey; raises DatasetInvalid."""

UploadPreparer = Callable[[Path, Path, str], Path]
"""(what was uploaded: a single file, or the folder an archive unpacked to; an empty scratch
folder it may write into; the upload's name for errors) -> the dataset folder. Raises
DatasetInvalid naming the upload."""


@dataclass(frozen=True)
class TaskSpec:
    """One task type. Satisfies `modelfab.data.DatasetKind`."""

    name: str
    """The task's name, as datasets, models, recipes and labels.json spell it."""
    description: str
    """One line for help texts."""
    layout: str
    """The dataset layout in words, for help texts and errors."""
    surveyor: Surveyor
    """Checks a dataset's layout and files and summarises it (see `Survey`)."""
    result: type[BaseModel]
    """One item's answer from an endpoint (documentation; replicas build plain dicts)."""
    served_model: str | None = None
    """"module:Class" of the `modelfab.serving.protocol.ServedModel` that serves this
    task's models; None when they cannot be served."""
    serving_artifacts: tuple[str, ...] = ()
    """Artifact names a model version needs for `served_model` to load it."""
    serves_every_artifact: bool = False
    """A replica fetches every artifact of a version, not only `serving_artifacts` (chat
    versions: which files a version has depends on its kind, full weights or an adapter)."""
    prepare_upload: UploadPreparer | None = None
    """Makes the dataset folder out of an upload: set by tasks whose datasets may be
    uploaded as one file (converted, e.g. chat JSONL); None: an upload is an archive of the
    dataset folder, used as it unpacks."""

    def survey(self, root: Path, tree: Tree) -> Survey:
        """See `modelfab.data.DatasetKind.survey`."""
        return self.surveyor(root, tree)

    def scan(self, root: Path) -> DatasetScan:
        """Validate the dataset folder `root` as this task (see `scan_dataset`). Blocks.
        Raises DatasetInvalid naming the offending file or folder."""
        return scan_dataset(root, self)

    @property
    def takes_single_files(self) -> bool:
        """Whether a dataset of this task may be uploaded as one (non-archive) file."""
        return self.prepare_upload is not None

    @property
    def servable(self) -> bool:
        """Whether a replica can serve models of this task."""
        return self.served_model is not None

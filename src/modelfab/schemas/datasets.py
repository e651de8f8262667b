"""Datasets and their immutable, content-addressed versions."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from modelfab.schemas.common import WireModel


class DatasetFromPath(WireModel):
    name: str
    task: str
    path: str = Field(description="A folder on the server (admin only).")


class DatasetVersion(WireModel):
    """A dataset version as its tenant sees it. The store is shared and content-addressed,
    so this names no server path: the same content uploaded by two tenants must look, to
    each, like a first upload (ids and times aside)."""

    id: str
    object: Literal["dataset.version"] = "dataset.version"
    name: str
    ref: str = Field(description="NAME:VERSION")
    task: str
    version: int
    sha256: str = Field(description="Of the dataset's content, independent of packing.")
    file_count: int
    size_bytes: int
    stats: dict[str, Any] = Field(description="Per task: classes and counts, splits...")
    created_at: float


class DatasetCreated(DatasetVersion):
    created: bool = Field(
        description="False: this dataset of yours already had a version with this content "
        "(other tenants' uploads never count)."
    )


class DatasetVersionDetail(DatasetVersion):
    versions: list[int] = Field(description="Every version number of the dataset.")


class Dataset(WireModel):
    id: str
    object: Literal["dataset"] = "dataset"
    name: str
    task: str
    latest_version: int
    versions: int = Field(description="How many versions it has.")
    created_at: float

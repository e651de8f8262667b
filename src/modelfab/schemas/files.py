"""The OpenAI files API (`/v1/files`): OpenAI's objects and field names, so the `openai`
client parses them unchanged. A `fine-tune` file is also a chat dataset of its tenant,
named after the file's id (`dataset`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from modelfab.schemas.common import WireModel

FINE_TUNE = "fine-tune"
"""The purpose modelfab keeps files for: chat datasets to fine-tune on."""

PURPOSES = (FINE_TUNE,)
"""Purposes an upload may have here (OpenAI knows more: assistants, batch, vision...)."""

FileStatus = Literal["uploaded", "processed", "error"]


class FileObject(WireModel):
    """An uploaded file, as OpenAI's `File` object."""

    id: str = Field(description="file-<24 hex>; also the name of its chat dataset.")
    object: Literal["file"] = "file"
    bytes: int = Field(description="Size of the file as uploaded, in bytes.")
    created_at: int = Field(description="UNIX seconds.")
    filename: str
    purpose: str = Field(description="fine-tune")
    status: FileStatus = Field(
        default="processed", description="processed: validated and stored (at upload)."
    )
    status_details: str | None = None
    expires_at: int | None = Field(default=None, description="Files here do not expire.")
    dataset: str | None = Field(
        default=None,
        description="The chat dataset version it became (NAME:VERSION; NAME is the file id).",
    )


class FileList(WireModel):
    """A page of files, newest first unless `order=asc`; the next page is `after=last_id`."""

    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class FileDeleted(WireModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool

"""The hub: foundation models recipes start from."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from modelfab.schemas.common import WireModel


class HubModel(WireModel):
    id: str
    object: Literal["hub.model"] = "hub.model"
    task: str
    arch: str = Field(description="The timm model name.")
    source: str = Field(description="package, import, scratch or hub.")
    licence: str
    params_m: float = Field(description="Parameters, in millions.")
    input_size: int = Field(description="Side of the square input, in pixels.")
    description: str
    available: bool = Field(description="Usable offline here now.")
    how: str = Field(description="How it is available, or what to run to make it so.")


class ImportedWeights(WireModel):
    id: str
    sha256: str
    size: int = Field(description="Bytes.")
    imported_at: float
    original_filename: str


class HubModelImported(HubModel):
    imported: ImportedWeights

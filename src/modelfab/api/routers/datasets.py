from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Response, UploadFile

from modelfab.api.deps import Caller, Ctx
from modelfab.errors import PayloadTooLarge
from modelfab.schemas.common import ERRORS, List
from modelfab.schemas.datasets import (
    Dataset,
    DatasetCreated,
    DatasetFromPath,
    DatasetVersionDetail,
)

router = APIRouter(tags=["datasets"], responses=ERRORS)

CHUNK = 1 << 20


@router.post("/datasets", status_code=201, responses={200: {"model": DatasetCreated}})
def create_from_path(
    body: DatasetFromPath, ctx: Ctx, principal: Caller, response: Response
) -> DatasetCreated:
    """201 with a new version; 200 with the existing one when the content is the same."""
    out = ctx.datasets.create_from_path(
        principal, name=body.name, task=body.task, path=Path(body.path)
    )
    response.status_code = 201 if out.created else 200
    return out


@router.post("/datasets/upload", status_code=201, responses={200: {"model": DatasetCreated}})
def upload(
    ctx: Ctx,
    principal: Caller,
    response: Response,
    name: Annotated[str, Form()],
    task: Annotated[str, Form()],
    file: Annotated[UploadFile, File(description=".zip, .tar or .tar.gz of the dataset folder")],
) -> DatasetCreated:
    scratch = ctx.settings.home / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    suffix = "".join(Path(file.filename or "upload.tar.gz").suffixes[-2:])
    with tempfile.NamedTemporaryFile(dir=scratch, suffix=suffix) as tmp:
        _copy_limited(file, tmp, ctx.settings.max_upload_bytes)
        tmp.flush()
        out = ctx.datasets.create_from_archive(
            principal, name=name, task=task, archive=Path(tmp.name)
        )
    response.status_code = 201 if out.created else 200
    return out


def _copy_limited(src: UploadFile, dst: Any, limit: int) -> None:
    total = 0
    while chunk := src.file.read(CHUNK):
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"upload is larger than {limit} bytes", param="file")
        dst.write(chunk)


@router.get("/datasets")
def list_datasets(ctx: Ctx, principal: Caller) -> List[Dataset]:
    return List(data=ctx.datasets.list_datasets(principal))


@router.get("/datasets/{ref}")
def get_dataset(ref: str, ctx: Ctx, principal: Caller) -> DatasetVersionDetail:
    return ctx.datasets.get(principal, ref)

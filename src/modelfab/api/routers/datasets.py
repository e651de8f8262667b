from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from modelfab.api.deps import Caller, Ctx
from modelfab.api.idempotency import IdemKey
from modelfab.api.uploads import UNSUPPORTED, multipart_body, read_multipart
from modelfab.schemas.common import BODY, ERRORS, List, errors
from modelfab.schemas.datasets import (
    Dataset,
    DatasetCreated,
    DatasetFromPath,
    DatasetVersionDetail,
)

router = APIRouter(tags=["datasets"], responses=ERRORS)


@router.post(
    "/datasets",
    status_code=201,
    responses={200: {"model": DatasetCreated}, **BODY, **errors(403, 404, 409)},
)
def create_from_path(
    body: DatasetFromPath, ctx: Ctx, principal: Caller, response: Response, idem: IdemKey
) -> DatasetCreated:
    """201 with a new version; 200 with the existing one when the content is the same."""
    out = ctx.datasets.create_from_path(
        principal, name=body.name, task=body.task, path=Path(body.path), idem=idem
    )
    response.status_code = 201 if out.created else 200
    return out


@router.post(
    "/datasets/upload",
    status_code=201,
    responses={200: {"model": DatasetCreated}, **UNSUPPORTED, **errors(400, 409, 413)},
    openapi_extra=multipart_body(
        "Body_upload_v1_datasets_upload_post",
        fields={"name": "", "task": ""},
        files={
            "file": ".zip, .tar or .tar.gz of the dataset folder; for chat, also one .jsonl "
            "or .json file (OpenAI messages, alpaca or sharegpt), converted"
        },
    ),
)
async def upload(
    request: Request, ctx: Ctx, principal: Caller, response: Response, idem: IdemKey
) -> DatasetCreated:
    """Multipart fields `name`, `task` and the archive (or a task's single file) as `file`.
    The body is read only after the key is checked."""
    async with read_multipart(
        request,
        scratch=ctx.settings.home / "tmp",
        files={"file": ctx.settings.max_upload_bytes},
        fields=("name", "task"),
    ) as form:
        part = form.file("file")
        out = await run_in_threadpool(
            ctx.datasets.create_from_upload,
            principal,
            name=form.field("name"),
            task=form.field("task"),
            upload=part.path,
            filename=part.filename,
            idem=idem,
        )
    response.status_code = 201 if out.created else 200
    return out


@router.get("/datasets")
def list_datasets(ctx: Ctx, principal: Caller) -> List[Dataset]:
    return List(data=ctx.datasets.list_datasets(principal))


@router.get("/datasets/{ref}", responses=errors(404))
def get_dataset(ref: str, ctx: Ctx, principal: Caller) -> DatasetVersionDetail:
    return ctx.datasets.get(principal, ref)

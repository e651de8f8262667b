"""The OpenAI files API (`/v1/files`): upload, list, retrieve, content, delete, in OpenAI's
shapes so that the `openai` client drives it unchanged. A `fine-tune` file becomes the chat
dataset named after its id."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from modelfab.api.deps import Caller, Ctx
from modelfab.api.idempotency import IdemKey
from modelfab.api.uploads import UNSUPPORTED, multipart_body, read_multipart
from modelfab.schemas import limits
from modelfab.schemas.common import ERRORS, errors
from modelfab.schemas.files import FileDeleted, FileList, FileObject

router = APIRouter(tags=["files"], responses=ERRORS)


@router.post(
    "/files",
    responses={**UNSUPPORTED, **errors(400, 409, 413)},
    openapi_extra=multipart_body(
        "Body_create_file_v1_files_post",
        fields={"purpose": "fine-tune (the one purpose kept here)"},
        files={
            "file": "A chat file: JSONL (or one JSON list) of OpenAI messages, alpaca or "
            "sharegpt records"
        },
    ),
)
async def create_file(request: Request, ctx: Ctx, principal: Caller, idem: IdemKey) -> FileObject:
    """Multipart `file` and `purpose`; the file is validated (422 naming the line of a bad
    conversation) and becomes the chat dataset named after its id. The body is read only
    after the key is checked."""
    async with read_multipart(
        request,
        scratch=ctx.settings.home / "tmp",
        files={"file": ctx.settings.max_upload_bytes},
        fields=("purpose",),
    ) as form:
        part = form.file("file")
        return await run_in_threadpool(
            ctx.files.create,
            principal,
            upload=part.path,
            filename=part.filename,
            purpose=form.field("purpose"),
            idem=idem,
        )


@router.get("/files")
def list_files(
    ctx: Ctx,
    principal: Caller,
    purpose: str | None = Query(None, max_length=64),
    after: str | None = Query(None, max_length=64, description="A file id: the page after it."),
    limit: int = Query(limits.MAX_LIST_FILES, ge=1, le=limits.MAX_LIST_FILES),
    order: Literal["asc", "desc"] = "desc",
) -> FileList:
    return ctx.files.list_files(principal, purpose=purpose, after=after, limit=limit, order=order)


@router.get("/files/{file_id}", responses=errors(404))
def retrieve_file(file_id: str, ctx: Ctx, principal: Caller) -> FileObject:
    return ctx.files.get(principal, file_id)


@router.get(
    "/files/{file_id}/content",
    response_class=FileResponse,
    responses={
        200: {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
            "description": "The file's bytes as uploaded.",
        },
        **errors(404, 409),
    },
)
def file_content(file_id: str, ctx: Ctx, principal: Caller) -> FileResponse:
    """The bytes as uploaded, checked against their sha256 first (409 artifact_corrupt)."""
    content = ctx.files.content(principal, file_id)
    return FileResponse(
        content.path, media_type="application/octet-stream", filename=content.filename
    )


@router.delete("/files/{file_id}", responses=errors(404))
def delete_file(file_id: str, ctx: Ctx, principal: Caller) -> FileDeleted:
    return ctx.files.delete(principal, file_id)

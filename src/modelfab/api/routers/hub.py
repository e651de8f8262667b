"""The hub: foundation models recipes start from, and importing them (admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from modelfab.api.deps import Caller, Ctx
from modelfab.api.idempotency import IdemKey
from modelfab.api.uploads import UNSUPPORTED, multipart_body, read_multipart
from modelfab.schemas.common import ERRORS, List, errors
from modelfab.schemas.hub import HubModel, HubModelImported
from modelfab.services import hub

router = APIRouter(tags=["hub"], responses=ERRORS)


@router.get("/hub")
def list_hub(ctx: Ctx, _: Caller) -> List[HubModel]:
    return List(data=hub.list_models(ctx.settings.hub_dir))


@router.post(
    "/hub/{model_id}/import",
    status_code=201,
    responses={
        200: {"model": HubModelImported},
        **UNSUPPORTED,
        **errors(400, 403, 404, 409, 413),
    },
    openapi_extra=multipart_body(
        "Body_import_weights_v1_hub__model_id__import_post",
        fields={},
        files={
            "file": "Vision: a torch state dict (.pth) of the catalog model. Chat (task=chat): "
            "a .gguf file, or a .tar/.tar.gz/.zip of a Hugging Face model folder."
        },
    ),
)
async def import_weights(
    model_id: str,
    request: Request,
    response: Response,
    ctx: Ctx,
    principal: Caller,
    idem: IdemKey,
    task: Annotated[
        str | None,
        Query(
            max_length=64,
            description="chat: import a language model under the new name `model_id`. Left "
            "out: weights for the vision catalog model `model_id`.",
        ),
    ] = None,
) -> HubModelImported:
    """Multipart with the model as `file` (admin). The body is read only after the key, the
    model id and the task are checked. 201 for a new import; 200 when the same chat model
    content is already stored under this name (so a retried upload is harmless)."""
    plan = hub.check_import(principal, model_id, task, max_chat_bytes=ctx.settings.max_upload_bytes)
    async with read_multipart(
        request, scratch=ctx.settings.home / "tmp", files={"file": plan.max_bytes}, fields=()
    ) as form:
        upload = form.file("file")
        out = await run_in_threadpool(
            hub.import_model,
            principal,
            ctx.settings.hub_dir,
            plan,
            upload.path,
            factory=ctx.factory,
            original_filename=upload.filename or None,
            idem=idem,
            max_extract_bytes=ctx.settings.max_extract_bytes,
            max_archive_members=ctx.settings.max_archive_members,
        )
    response.status_code = 201 if out.created else 200
    return out

"""The hub: foundation models recipes start from, and importing their weights (admin)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from modelfab.api.deps import Caller, Ctx
from modelfab.api.idempotency import IdemKey
from modelfab.api.uploads import UNSUPPORTED, multipart_body, read_multipart
from modelfab.schemas.common import ERRORS, List, errors
from modelfab.schemas.hub import HubModel, HubModelImported
from modelfab.services import hub
from modelfab.services.hub import MAX_IMPORT_BYTES

router = APIRouter(tags=["hub"], responses=ERRORS)


@router.get("/hub")
def list_hub(ctx: Ctx, _: Caller) -> List[HubModel]:
    return List(data=hub.list_models(ctx.settings.hub_dir))


@router.post(
    "/hub/{model_id}/import",
    status_code=201,
    responses={**UNSUPPORTED, **errors(400, 403, 404, 409, 413)},
    openapi_extra=multipart_body(
        "Body_import_weights_v1_hub__model_id__import_post",
        fields={},
        files={"file": "A torch state dict (.pth) of the model."},
    ),
)
async def import_weights(
    model_id: str, request: Request, ctx: Ctx, principal: Caller, idem: IdemKey
) -> HubModelImported:
    """Multipart with the weights as `file` (admin). The body is read only after the key
    and the model id are checked."""
    hub.check_import(principal, model_id)
    async with read_multipart(
        request, scratch=ctx.settings.home / "tmp", files={"file": MAX_IMPORT_BYTES}, fields=()
    ) as form:
        weights = form.file("file")
        return await run_in_threadpool(
            hub.import_weights,
            principal,
            ctx.settings.hub_dir,
            model_id,
            weights.path,
            factory=ctx.factory,
            original_filename=weights.filename or "weights.pth",
            idem=idem,
        )

"""The hub: foundation models recipes start from, and importing their weights (admin)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, UploadFile

from modelfab.api.deps import Caller, Ctx
from modelfab.errors import PayloadTooLarge
from modelfab.schemas.common import ERRORS, List
from modelfab.schemas.hub import HubModel, HubModelImported
from modelfab.services import hub
from modelfab.services.hub import MAX_IMPORT_BYTES

router = APIRouter(tags=["hub"], responses=ERRORS)

CHUNK = 1 << 20


@router.get("/hub")
def list_hub(ctx: Ctx, _: Caller) -> List[HubModel]:
    return List(data=hub.list_models(ctx.settings.hub_dir))


@router.post("/hub/{model_id}/import", status_code=201)
def import_weights(
    model_id: str,
    ctx: Ctx,
    principal: Caller,
    file: Annotated[UploadFile, File(description="A torch state dict (.pth) of the model.")],
) -> HubModelImported:
    scratch = ctx.settings.home / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=scratch, suffix=".pth") as tmp:
        total = 0
        while chunk := file.file.read(CHUNK):
            total += len(chunk)
            if total > MAX_IMPORT_BYTES:
                raise PayloadTooLarge(
                    f"weights are larger than {MAX_IMPORT_BYTES} bytes", param="file"
                )
            tmp.write(chunk)
        tmp.flush()
        return hub.import_weights(
            principal,
            ctx.settings.hub_dir,
            model_id,
            Path(tmp.name),
            original_filename=file.filename or "weights.pth",
        )

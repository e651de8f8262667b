"""`sleep`: waits, reporting a metrics event each second. It proves the job loop end to end
(scheduling, events, cancel, retries) without a model."""

from __future__ import annotations

import os
import time
from typing import Any

from pydantic import BaseModel, Field

from modelfab.recipes.base import RecipeContext, RecipeSpec
from modelfab.schemas.limits import MAX_ATTEMPTS

POLL_S = 0.1


class Params(BaseModel):
    model_config = {"extra": "forbid"}

    seconds: float = Field(
        default=5.0, strict=True, ge=0, le=7 * 86400, description="How long to sleep."
    )
    fail_attempts: int = Field(
        default=0,
        strict=True,
        ge=0,
        le=MAX_ATTEMPTS,
        description="Exit with code 3 on the first N attempts (to exercise retries).",
    )
    exit_code: int = Field(
        default=0,
        strict=True,
        ge=0,
        le=255,
        description="Exit with this code at the end instead of succeeding.",
    )


def run(ctx: RecipeContext, params: Params) -> dict[str, Any]:
    if ctx.attempt <= params.fail_attempts:
        ctx.event(f"failing attempt {ctx.attempt} on purpose (fail_attempts)", level="warning")
        ctx.flush()
        os._exit(3)
    start = time.monotonic()
    step = 0
    while (elapsed := time.monotonic() - start) < params.seconds:
        if ctx.cancelled():
            ctx.event("cancel received; stopping", level="warning")
            return {"slept_s": round(elapsed, 3), "cancelled": True}
        # Short naps: a cancel is honoured within POLL_S, well inside the SIGKILL grace.
        time.sleep(min(POLL_S, params.seconds - elapsed))
        if int(time.monotonic() - start) > step:
            step += 1
            ctx.metrics(step=step, elapsed_s=round(time.monotonic() - start, 3))
    if params.exit_code:
        ctx.flush()
        os._exit(params.exit_code)
    return {"slept_s": round(time.monotonic() - start, 3)}


RECIPE = RecipeSpec(
    name="sleep",
    version="1",
    description="Sleep for `seconds`, one metrics event a second; honours cancel.",
    params=Params,
    entrypoint="modelfab.recipes.sleep:run",
)

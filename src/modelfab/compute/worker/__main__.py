"""`python -m modelfab.compute.worker --job-id J --attempt N --node-id X`: run one job attempt.

The executor starts this process with MODELFAB_URL and MODELFAB_JOB_TOKEN in its
environment (and MODELFAB_WORKER_LEASE_S) and CUDA_VISIBLE_DEVICES set to the devices
placed. Exit status: 0 when the recipe succeeded, 1 when it failed or was stopped, 2 when
the control plane says the attempt is over, 3 when the lease ran out (the control plane was
unreachable for longer than MODELFAB_WORKER_LEASE_S seconds).

On SIGTERM the recipe is cancelled and the end is reported for a few seconds at most,
whatever the control plane's state: an end not reported is reconciled by the scheduler,
which ends the attempt when it sees the process gone.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import httpx

from modelfab.artifacts import verified_file
from modelfab.compute.status import LEASE_EXPIRED, JobStatus
from modelfab.compute.worker.api import (
    DEFAULT_LEASE_S,
    LEASE_ENV,
    TOKEN_ENV,
    URL_ENV,
    AttemptOver,
    WorkerAPI,
)
from modelfab.compute.worker.context import WorkerContext
from modelfab.errors import ModelfabError
from modelfab.plugins import load_env_plugins
from modelfab.recipes.base import run_recipe

logger = logging.getLogger("modelfab.worker")

EXIT_OK, EXIT_FAILED, EXIT_ATTEMPT_OVER, EXIT_LEASE_EXPIRED = 0, 1, 2, 3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="modelfab-worker")
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--attempt", type=int, required=True)
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--workdir", type=Path, default=Path.cwd())
    return parser.parse_args(argv)


def run_attempt(ctx: WorkerContext, spec: dict[str, Any]) -> dict[str, Any]:
    """Run the recipe and return the completion payload for the control plane."""
    try:
        result = run_recipe(spec["recipe"], spec["params"], ctx)
    except ModelfabError as exc:  # the user's to fix: retrying would not help
        return _failed(exc.code, exc.message, retryable=False)
    except Exception as exc:
        traceback.print_exc()
        return _failed("recipe_error", f"{type(exc).__name__}: {exc}", retryable=True)
    if ctx.lease_lost.is_set():  # not a cancel by the user: another attempt resumes
        message = "the worker lost its control plane for longer than its lease and stopped"
        return _failed(LEASE_EXPIRED, message, retryable=True)
    if ctx.cancelled():
        return {"status": JobStatus.CANCELLED, "result": result}
    return {"status": JobStatus.SUCCEEDED, "result": result, "models": ctx.models}


def _failed(code: str, message: str, *, retryable: bool) -> dict[str, Any]:
    return {
        "status": JobStatus.FAILED,
        "error": {"code": code, "message": message},
        "retryable": retryable,
    }


def dataset_folder(dataset: dict[str, Any] | None) -> Path | None:
    """The dataset's folder on this machine, from the job spec's `dataset.uri` (a file: URL
    only the worker's job token reads; tenants' views carry no location)."""
    if not dataset:
        return None
    return file_path(dataset["uri"])


def file_path(uri: str | None) -> Path | None:
    """The path of a file: URL of the job spec (None for None)."""
    return Path(unquote(urlparse(uri).path)) if uri else None


def lease_s_from_env() -> float:
    """MODELFAB_WORKER_LEASE_S as a positive float; the default when unset or unreadable."""
    raw = os.environ.get(LEASE_ENV)
    try:
        lease = float(raw) if raw else DEFAULT_LEASE_S
    except ValueError:
        lease = DEFAULT_LEASE_S
    if not lease > 0:  # also refuses nan
        logger.warning("%s=%r is not a positive number; using %s", LEASE_ENV, raw, DEFAULT_LEASE_S)
        return DEFAULT_LEASE_S
    return lease


def report_end(api: WorkerAPI, attempt: int, payload: dict[str, Any]) -> int:
    """Send the attempt's end and return the exit status. Never raises for an unreachable
    control plane: the scheduler ends an attempt whose process exited without reporting."""
    code = EXIT_OK if payload["status"] == JobStatus.SUCCEEDED else EXIT_FAILED
    try:
        api.complete({"attempt": attempt, "ended_at": time.time(), **payload})
    except AttemptOver:
        return EXIT_ATTEMPT_OVER
    except httpx.HTTPError as exc:
        logger.error("could not report the end of attempt %d (%s); exiting anyway", attempt, exc)
    return code


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)
    load_env_plugins()  # the tasks and recipes plugins register, as in the control plane
    lease_s = lease_s_from_env()
    api = WorkerAPI(os.environ[URL_ENV], os.environ.pop(TOKEN_ENV), args.job_id, lease_s=lease_s)
    try:
        spec = api.spec()
    except AttemptOver:
        logger.error("job %s attempt %s is over; exiting", args.job_id, args.attempt)
        return EXIT_ATTEMPT_OVER
    except httpx.HTTPError as exc:
        logger.error("no control plane within the lease (%s s): %s; exiting", lease_s, exc)
        return EXIT_LEASE_EXPIRED
    dataset = spec.get("dataset")
    try:
        ref = spec.get("base_weights")
        base_weights = verified_file(ref) if ref else None
    except ModelfabError as exc:  # retrying would read the same bad file
        return report_end(api, args.attempt, _failed(exc.code, exc.message, retryable=False))
    ctx = WorkerContext(
        api,
        job_id=args.job_id,
        attempt=args.attempt,
        dataset=dataset,
        dataset_path=dataset_folder(dataset),
        workdir=args.workdir,
        base_weights=base_weights,
        resources=spec.get("resources"),
        hub_dir=file_path(spec.get("hub_dir")),
    )
    signal.signal(signal.SIGTERM, ctx.on_signal)
    devices = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    ctx.event(
        f"Attempt {args.attempt} started on {socket.gethostname()} (pid {os.getpid()})",
        data={"pid": os.getpid(), "cuda_visible_devices": devices, "status": JobStatus.RUNNING},
    )
    print(
        f"modelfab worker: job {args.job_id} attempt {args.attempt} devices={devices!r}", flush=True
    )
    # The end as it happened: closing waits to ship the last events, however long the
    # control plane is away, and that wait is not the attempt's to be billed for.
    payload = {**run_attempt(ctx, spec), "ended_at": time.time()}
    ctx.close()
    code = report_end(api, args.attempt, payload)
    if ctx.lease_lost.is_set():
        logger.error("job %s attempt %d: worker lease expired; exiting", args.job_id, args.attempt)
        return EXIT_LEASE_EXPIRED
    return code


if __name__ == "__main__":
    sys.exit(main())

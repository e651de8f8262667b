"""The `batch-inspection` entrypoint: `run(ctx, params)` in a job worker.

Order of work: check the input and lock the output folder; check (or write) its manifest;
read the finished parts; load the pinned model version (ONNX Runtime, CUDA when the job
has GPUs); infer every image not yet done; then merge the parts into the results file and
write summary.json and report.html. A cancel stops after writing the rows in hand, and a
rerun into the same output goes on from there.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from modelfab.apps.inspection.batch.journal import (
    Finished,
    PartWriter,
    check_manifest,
    locked,
    merge_parts,
)
from modelfab.apps.inspection.batch.pipeline import Options, Progress, RowMaker, run_pipeline
from modelfab.apps.inspection.batch.sources import InputSource, open_source
from modelfab.apps.inspection.batch.summary import write_summary, write_top_report
from modelfab.artifacts import verified_file
from modelfab.errors import InvalidRequest, ModelfabError
from modelfab.recipes.base import FetchesModels, RecipeContext
from modelfab.recipes.batch_inspection import Params
from modelfab.serving.models import ModelFiles, load_model


def run(ctx: RecipeContext, params: Params) -> dict[str, Any]:
    """Inspect every image of `params.input` into `params.output`. Blocks for the run.

    Returns the summary (or, when cancelled, the progress so far). Raises InvalidRequest
    for a missing input, an unpinned model version or an output folder holding another
    inspection; Conflict when another run holds the output; the model's ModelfabError
    ("model_invalid", "artifact_corrupt"); OSError when the output cannot be written.
    """
    if not isinstance(ctx, FetchesModels):
        raise ModelfabError("batch-inspection needs a worker context that can fetch models")
    version_id = _pinned_version(params)
    output = Path(params.output)
    source = open_source(params.input, exclude=output)
    with locked(output):
        resuming = check_manifest(output, _manifest(params, version_id))
        writer, finished = PartWriter.resume(output / "parts", params.part_rows)
        use_cuda, cpus = _has_gpu(), _job_cpus(ctx)
        options = _options(params, use_cuda, cpus)
        model = _load(ctx, version_id, use_cuda=use_cuda, threads=cpus, options=options)
        progress = _inspect(ctx, model, source, writer, finished, options, resuming)
        if ctx.cancelled():
            ctx.event("Cancelled; finished rows are kept: rerun to resume", level="warning")
            return {"cancelled": True, **progress.snapshot()}
        return _finish(ctx, params, model, options, progress)


def _pinned_version(params: Params) -> str:
    if not params.model_version_id:
        raise InvalidRequest(
            "params.model_version_id is not set: create the job through the control plane "
            "(`modelfab jobs create`), which pins the version params.model names",
            param="params.model_version_id",
        )
    return params.model_version_id


def _manifest(params: Params, version_id: str) -> dict[str, Any]:
    return {
        "model": params.model,
        "model_version_id": version_id,
        "input": params.input,
        "threshold": params.threshold,
        "save_heatmaps": params.save_heatmaps,
        "created_at": time.time(),
    }


def _has_gpu() -> bool:
    """Devices were placed on this job (ONNX Runtime falls back to the CPU when it has no
    CUDA provider)."""
    return bool(os.environ.get("CUDA_VISIBLE_DEVICES", "").strip())


def _job_cpus(ctx: RecipeContext) -> int:
    """The job's CPU slots, rounded up (the CPUs this process may run on when unknown)."""
    cpus = ctx.resources.get("cpus")
    if isinstance(cpus, int | float) and cpus > 0:
        return max(1, math.ceil(cpus))
    return len(os.sched_getaffinity(0)) or 1


def _options(params: Params, use_cuda: bool, cpus: int) -> Options:
    batch = params.batch_size if params.batch_size != "auto" else (32 if use_cuda else 8)
    if params.decode_workers != "auto":
        workers = params.decode_workers
    else:  # a GPU needs every core decoding; on CPU they share with inference
        workers = min(16, len(os.sched_getaffinity(0))) if use_cuda else max(2, cpus)
    return Options(
        batch_size=batch,
        decode_workers=workers,
        threshold=params.threshold,
        save_heatmaps=params.save_heatmaps,
    )


def _load(
    ctx: FetchesModels, version_id: str, *, use_cuda: bool, threads: int, options: Options
) -> Any:
    """The model version, its files fetched and sha256-checked as a replica's are."""
    refs = ctx.model_files(version_id)
    onnx_path = verified_file(refs["onnx"])
    labels = json.loads(verified_file(refs["labels"]).read_text())
    files = ModelFiles(version_id=version_id, onnx_path=onnx_path, labels=labels)
    model: Any = load_model(  # a classifier or a detector: both warm
        files,
        use_cuda=use_cuda,
        intra_op_threads=None if use_cuda else threads,
        max_batch_size=options.batch_size,
    )
    model.warm()
    return model


def _inspect(
    ctx: RecipeContext,
    model: Any,
    source: InputSource,
    writer: PartWriter,
    finished: Finished,
    options: Options,
    resuming: bool,
) -> Progress:
    total = source.count()
    progress = Progress(
        total=total,
        emit=lambda data: _report_progress(ctx, data),
        done=len(finished.paths),
        errors=finished.errors,
        anomalies=finished.anomalies,
        every_s=options.progress_s,
    )
    ctx.event(
        f"Inspecting {total} images with model version {model.version_id} on "
        f"{', '.join(model.providers)} (batch {options.batch_size}, "
        f"{options.decode_workers} decode threads)"
        + (f"; resuming: {len(finished.paths)} already done" if resuming else ""),
        data={"total": total, "done": len(finished.paths), "providers": model.providers},
    )
    run_pipeline(
        model,
        (path for path in source.paths() if path not in finished.paths),
        rows=RowMaker(model, writer.folder.parent, options),
        writer=writer,
        progress=progress,
        options=options,
        cancelled=ctx.cancelled,
    )
    progress.finish()
    return progress


def _report_progress(ctx: RecipeContext, data: dict[str, Any]) -> None:
    eta = "-" if data["eta_s"] is None else f"{data['eta_s']:.0f} s"
    ctx.event(
        f"{data['done']}/{data['total']} images, {data['images_per_s']:.1f} images/s, "
        f"ETA {eta}, {data['errors']} errors, {data['anomalies']} anomalies",
        type="progress",
        data=data,
    )
    ctx.metrics(
        step=data["done"],
        images_per_s=data["images_per_s"],
        errors=data["errors"],
        anomalies=data["anomalies"],
    )


def _finish(
    ctx: RecipeContext, params: Params, model: Any, options: Options, progress: Progress
) -> dict[str, Any]:
    """Merge the parts, write summary.json and report.html; returns the summary."""
    output = Path(params.output)
    run = progress.snapshot()  # before the merge and the report: the inspection's own rate
    results, stats = merge_parts(output, params.format, params.report_top)
    threshold = (
        params.threshold if params.threshold is not None else getattr(model, "threshold", None)
    )
    report = write_top_report(
        output,
        model,
        stats,
        title=f"{params.input} with {params.model}: the {len(stats.top)} highest scores "
        f"of {stats.rows} images",
        threshold=threshold,
        batch_size=options.batch_size,
        workers=options.decode_workers,
    )
    info = {
        "model": {"ref": params.model, "version_id": model.version_id, "task": model.task},
        "input": params.input,
        "output": params.output,
        "results": results.name,
        "report": report.name,
        "threshold": threshold,
        "run": run,
    }
    summary = write_summary(output, stats, info)
    ctx.event(
        f"Inspected {stats.rows} images: {stats.anomalies} anomalies, {stats.errors} errors; "
        f"results in {results}",
        data={"results": str(results), "report": str(report)},
    )
    return {k: v for k, v in summary.items() if k not in ("top", "first_errors")}

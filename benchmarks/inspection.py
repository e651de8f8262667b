"""Inspection benchmarks, each beside its baseline with the ratio printed (no timed asserts).

to-detector: an in-process `Platform`, a dataset of `--train-images` good surfaces (224 px
PNGs) and one `anomaly-detection` job with the default params. Time from `create_job` to a
registered detector, split into phases from the job's events, beside the bare
`PatchCore.fit` of the same images with the same params in this process. Ratio = job time /
bare fit time.

batch: that registered detector runs over `--images` real-size JPEGs (1024x768 by default,
a share of them with drawn defects) twice: as a `batch-inspection` job on the platform
(parallel decode beside ONNX Runtime), and as a plain sequential loop written here (PIL
decode -> the same preprocessing -> `InferenceSession.run`, batch by batch), with the same
batch size and intra-op threads. Ratio = recipe images/s / plain images/s, target >= 1.0.
See benchmarks/README.md."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import psutil
import pyarrow.parquet as pq
from harness import running_platform
from loadgen import CpuWatch
from PIL import Image
from rich.console import Console
from rich.table import Table

from modelfab.apps.inspection.samples import DEFECT_KINDS, draw_defect_with_mask, texture_surface
from modelfab.client import Client
from modelfab.recipes.anomaly.inputs import ImageFiles
from modelfab.recipes.anomaly.job import patchcore_params
from modelfab.recipes.anomaly.patchcore import PatchCore
from modelfab.recipes.anomaly_detection import Params

console = Console()
TASK = "anomaly-detection"
DATASET = "surfaces"
"""The dataset's name, and so the registered detector's (the recipe's default)."""
TRAIN_SIDE = 224
"""Side of the good training PNGs: the detector's default image_size."""
JOB_TIMEOUT_S = 1800
BUSY = 0.2
"""CPU-s/s taken by other processes above which a figure is flagged as measured on a busy
machine."""

Event = dict[str, Any]


# -- data --------------------------------------------------------------------------------


def surface(rng: random.Random, width: int, height: int, texture: str) -> Image.Image:
    """A `width` x `height` RGB surface: `texture_surface` of half the short side (a random
    crop of 1-1.25 times that side of the 512 px texture, tinted; 384-480 px at 1024x768),
    stretched to the size."""
    side = min(512, max(64, min(width, height) // 2))
    return texture_surface(rng, side, texture).resize((width, height), Image.Resampling.BILINEAR)


def write_train(root: Path, count: int, size: tuple[int, int], texture: str, seed: int) -> Path:
    """`count` good surfaces made like the inspected ones, resized to TRAIN_SIDE (as the
    detector sees an inspected image), as train/good/NNN.png. Returns `root`."""
    rng = random.Random(seed)
    good = root / "train" / "good"
    good.mkdir(parents=True)
    for i in range(count):
        image = surface(rng, *size, texture)
        image.resize((TRAIN_SIDE, TRAIN_SIDE), Image.Resampling.BILINEAR).save(
            good / f"{i:03d}.png"
        )
    return root


def write_inspection(
    root: Path, count: int, size: tuple[int, int], texture: str, defect_share: float, seed: int
) -> dict[str, str]:
    """`count` JPEGs (quality 90) of `size`, every round(1 / defect_share)-th with one drawn
    defect; returns {path: "good" or the defect kind}."""
    rng = random.Random(seed + 1)
    every = round(1 / defect_share) if defect_share > 0 else 0
    root.mkdir(parents=True)
    labels: dict[str, str] = {}
    for i in range(count):
        image, label = surface(rng, *size, texture), "good"
        if every and i % every == every - 1:
            label = DEFECT_KINDS[(i // every) % len(DEFECT_KINDS)]
            image, _ = draw_defect_with_mask(image, rng, label)
        path = root / f"part-{i:04d}.jpg"
        image.save(path, quality=90)
        labels[str(path)] = label
    return labels


# -- job events --------------------------------------------------------------------------


def all_events(client: Client, job_id: str) -> list[Event]:
    """Every event of the job (the API pages them)."""
    events: list[Event] = []
    while page := client.job_events(job_id, after=events[-1]["id"] if events else 0):
        events += [e.model_dump() for e in page]
    return events


def first_at(events: list[Event], match: Callable[[Event], bool]) -> float | None:
    return next((float(e["created_at"]) for e in events if match(e)), None)


def starts(prefix: str) -> Callable[[Event], bool]:
    return lambda e: str(e["message"]).startswith(prefix)


def placed(e: Event) -> bool:
    return " placed on " in str(e["message"])


def worker_started(e: Event) -> bool:
    """The worker's own "Attempt N started on HOST" (the scheduler's "placed" event also
    carries status running)."""
    return str(e["message"]).startswith("Attempt") and " started on " in str(e["message"])


def phases(marks: Sequence[tuple[str, float | None]]) -> list[tuple[str, float]]:
    """(from -> to, seconds) between consecutive marks that happened."""
    present = [(name, at) for name, at in marks if at is not None]
    return [(f"{a} -> {b}", t1 - t0) for (a, t0), (b, t1) in itertools.pairwise(present)]


@dataclass
class JobRun:
    job: dict[str, Any]
    events: list[Event]
    others_cpu: float
    """CPU-s/s other processes took from create_job to the job's end."""

    @property
    def current(self) -> list[Event]:
        """The events of the last attempt (and the job's own, attempt 0)."""
        return [e for e in self.events if e["attempt"] in (0, self.job["attempt"])]


def run_job(client: Client, recipe: str, cpus: float, **options: Any) -> JobRun:
    """Create a job, wait for its end; exits with its error when it does not succeed."""
    children = len(psutil.Process().children(recursive=True))
    watch = CpuWatch.start()
    job = client.create_job(recipe, cpus=cpus, max_attempts=1, **options)
    done = client.wait_job(job.id, timeout_s=JOB_TIMEOUT_S).model_dump()
    wait_reaped(children)
    run = JobRun(done, all_events(client, job.id), watch.others())
    if done["status"] != "succeeded":
        print_phases(f"{recipe} job {done['status']}", generic_marks(run))
        sys.exit(f"the {recipe} job {done['status']}: {done.get('error')}")
    return run


def wait_reaped(children: int, timeout_s: float = 10.0) -> None:
    """Wait until this process has no more than `children` child processes: a worker's CPU
    time counts as this process tree's only once the executor has reaped it."""
    deadline = time.monotonic() + timeout_s
    while len(psutil.Process().children(recursive=True)) > children:
        if time.monotonic() > deadline:
            return
        time.sleep(0.1)


# -- to-detector: create_job -> registered detector ---------------------------------------


@dataclass
class DetectorRun:
    run: JobRun
    model: dict[str, Any]
    total_s: float
    bare_fit_s: float
    bare_others_cpu: float
    job_fit_s: float
    """fit_seconds the job's own PatchCore.fit reported."""


def detector_marks(run: JobRun, model: dict[str, Any] | None) -> list[tuple[str, float | None]]:
    ev = run.current

    def features_done(e: Event) -> bool:
        data = e.get("data") or {}
        return data.get("stage") == "features" and data.get("done") == data.get("total")

    return [
        ("job created", float(run.job["created_at"])),
        ("placed", first_at(ev, placed)),
        ("worker started", first_at(ev, worker_started)),
        ("fit started", first_at(ev, starts("Fitting PatchCore"))),
        ("features + coreset streamed", first_at(ev, features_done)),
        ("bank + calibration done", first_at(ev, starts("Memory bank:"))),
        ("evaluated, saved", first_at(ev, starts("Exporting the scoring path"))),
        ("exported, parity checked", first_at(ev, starts("ONNX parity checked"))),
        ("uploading", first_at(ev, starts("Uploading artifacts"))),
        ("registered" if model else f"job {run.job['status']}", ended_at(run, model)),
    ]


def generic_marks(run: JobRun) -> list[tuple[str, float | None]]:
    """The marks every job has, for a job that failed."""
    ev = run.current
    return [
        ("job created", float(run.job["created_at"])),
        ("placed", first_at(ev, placed)),
        ("worker started", first_at(ev, worker_started)),
        (f"job {run.job['status']}", run.job.get("finished_at")),
    ]


def ended_at(run: JobRun, model: dict[str, Any] | None) -> float:
    return float(model["created_at"] if model else run.job["finished_at"])


def bare_fit(paths: list[Path]) -> tuple[float, float]:
    """(seconds, other processes' CPU-s/s) of `PatchCore.fit` on `paths` with the params
    the recipe's defaults resolve to, in this process."""
    config = patchcore_params(Params(), len(paths))
    watch = CpuWatch.start()
    start = time.perf_counter()
    PatchCore.fit(ImageFiles(paths), config)
    return time.perf_counter() - start, watch.others()


def to_detector(client: Client, train: Path, cpus: float) -> DetectorRun:
    start = time.perf_counter()
    client.create_dataset(DATASET, train, task=TASK)
    console.print(f"dataset uploaded in {time.perf_counter() - start:.1f} s (not counted)")
    run = run_job(client, TASK, cpus, dataset=DATASET, params={})
    model = client.get_model(DATASET).model_dump()
    fit_info: dict[str, Any] = next(
        (e["data"] for e in run.current if starts("Memory bank:")(e)), {}
    )
    console.print("bare PatchCore.fit of the same images, in this process ...")
    bare_s, bare_others = bare_fit(sorted((train / "train" / "good").iterdir()))
    return DetectorRun(
        run=run,
        model=model,
        total_s=ended_at(run, model) - float(run.job["created_at"]),
        bare_fit_s=bare_s,
        bare_others_cpu=bare_others,
        job_fit_s=float(fit_info.get("fit_seconds", math.nan)),
    )


# -- batch: the batch-inspection job against a plain loop ---------------------------------


@dataclass
class PlainRun:
    images_per_s: float
    seconds: float
    decode_ms: float
    """Wall ms per image spent decoding and preprocessing."""
    ort_ms: float
    """Wall ms per image spent in `session.run`."""
    others_cpu: float
    scores: dict[str, float]


def new_session(onnx: Path, threads: int) -> ort.InferenceSession:
    """The session the recipe opens on CPU: `threads` intra-op threads, no spinning."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(onnx), sess_options=options, providers=["CPUExecutionProvider"])


def preprocess(path: str, labels: dict[str, Any]) -> np.ndarray:
    """One file as the detector's labels.json says: RGB, PIL bilinear resize to S x S (no
    crop), /255, (x - mean) / std, CHW float32."""
    side = int(labels["image_size"])
    with Image.open(path) as image:
        rgb = image.convert("RGB").resize((side, side), Image.Resampling.BILINEAR)
    pixels = np.asarray(rgb, dtype=np.float32) / np.float32(255)
    mean, std = (np.asarray(labels[k], dtype=np.float32) for k in ("mean", "std"))
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))


def plain_loop(
    onnx: Path, labels: dict[str, Any], paths: list[str], batch: int, threads: int
) -> PlainRun:
    """Decode, preprocess and score `paths` one batch after another in this thread."""
    session = new_session(onnx, threads)
    side = int(labels["image_size"])
    feed, outputs = str(labels["input"]), list(labels["outputs"])
    session.run(outputs, {feed: np.zeros((1, 3, side, side), np.float32)})
    scores: dict[str, float] = {}
    decode_s = ort_s = 0.0
    watch = CpuWatch.start()
    start = time.perf_counter()
    for i in range(0, len(paths), batch):
        chunk = paths[i : i + batch]
        t0 = time.perf_counter()
        units = np.stack([preprocess(p, labels) for p in chunk])
        t1 = time.perf_counter()
        chunk_scores, _maps = session.run(outputs, {feed: units})
        ort_s += time.perf_counter() - t1
        decode_s += t1 - t0
        scores.update(zip(chunk, (float(s) for s in chunk_scores), strict=True))
    seconds = time.perf_counter() - start
    n = len(paths)
    return PlainRun(
        n / seconds, seconds, decode_s / n * 1e3, ort_s / n * 1e3, watch.others(), scores
    )


@dataclass
class BatchRun:
    run: JobRun
    images: int
    steady_per_s: float
    """images/s between the first and the last progress event (the pipeline full)."""
    own_per_s: float
    """The recipe's own figure, in its last progress event: rows / seconds since it began
    inspecting (model loaded), the pipeline's filling included."""
    summary_per_s: float
    """summary.json run.images_per_s: taken after the report, so the report's re-scoring
    of the top images counts in it."""
    end_to_end_per_s: float
    """images / (job created -> succeeded)."""
    total_s: float
    rows: list[dict[str, Any]]


def progress_events(events: list[Event]) -> list[Event]:
    return [e for e in events if e["type"] == "progress" and "processed" in (e.get("data") or {})]


def steady_rate(events: list[Event]) -> float | None:
    """images/s between the first and the last progress event, None with fewer than two."""
    progress = progress_events(events)
    if len(progress) < 2:
        return None
    first, last = progress[0], progress[-1]
    seconds = float(last["created_at"]) - float(first["created_at"])
    done = int(last["data"]["processed"]) - int(first["data"]["processed"])
    return done / seconds if seconds > 0 and done > 0 else None


def batch_marks(run: JobRun) -> list[tuple[str, float | None]]:
    ev = run.current
    progress = progress_events(ev)
    return [
        ("job created", float(run.job["created_at"])),
        ("placed", first_at(ev, placed)),
        ("worker started", first_at(ev, worker_started)),
        ("model loaded", first_at(ev, starts("Inspecting "))),
        ("first progress", float(progress[0]["created_at"]) if progress else None),
        ("last row", float(progress[-1]["created_at"]) if len(progress) > 1 else None),
        ("merged, report written", first_at(ev, starts("Inspected "))),
        (f"job {run.job['status']}", float(run.job["finished_at"])),
    ]


def batch_job(client: Client, folder: Path, output: Path, batch: int, cpus: float) -> BatchRun:
    params = {"model": DATASET, "input": str(folder), "output": str(output), "batch_size": batch}
    run = run_job(client, "batch-inspection", cpus, params=params)
    summary = json.loads((output / "summary.json").read_text())
    total_s = float(run.job["finished_at"]) - float(run.job["created_at"])
    images = int(summary["images"])
    last = progress_events(run.current)[-1]["data"]
    own = float(last["images_per_s"])
    steady = steady_rate(run.current)
    if steady is None:
        console.print(
            "[yellow]only one progress event[/]: the steady rate is the recipe's own; "
            "inspect more --images for a steady window"
        )
    return BatchRun(
        run=run,
        images=images,
        steady_per_s=steady or own,
        own_per_s=own,
        summary_per_s=float(summary["run"]["images_per_s"]),
        end_to_end_per_s=images / total_s,
        total_s=total_s,
        rows=pq.read_table(output / "results.parquet").to_pylist(),
    )


def quality(rows: list[dict[str, Any]], truth: dict[str, str], plain: PlainRun) -> dict[str, Any]:
    """How the recipe's verdicts match the drawn defects, and its scores the plain loop's."""
    flagged = {r["path"]: bool(r["is_anomaly"]) for r in rows if r["error"] is None}
    defective = [p for p, label in truth.items() if label != "good"]
    good = [p for p, label in truth.items() if label == "good"]
    diffs = [abs(r["score"] - plain.scores[r["path"]]) for r in rows if r["score"] is not None]
    return {
        "errors": sum(r["error"] is not None for r in rows),
        "defects_flagged": sum(flagged.get(p, False) for p in defective),
        "defective": len(defective),
        "good_flagged": sum(flagged.get(p, False) for p in good),
        "good": len(good),
        "max_score_diff_vs_plain": max(diffs, default=math.nan),
    }


# -- output ------------------------------------------------------------------------------


def print_phases(title: str, marks: list[tuple[str, float | None]]) -> None:
    present = [at for _, at in marks if at is not None]
    total = present[-1] - present[0] if len(present) > 1 else math.nan
    table = Table(title=title)
    for col in ("phase (from the job's events)", "s", "share"):
        table.add_column(col, justify="left" if col.startswith("phase") else "right")
    for name, seconds in phases(marks):
        table.add_row(name, f"{seconds:.2f}", f"{seconds / total:.1%}")
    table.add_row("[bold]total[/]", f"{total:.2f}", "100%")
    console.print(table)


def print_results(det: DetectorRun, batch: BatchRun, plain: PlainRun, args: Any) -> None:
    n, size = batch.images, f"{args.size[0]}x{args.size[1]}"
    table = Table(title="modelfab against its baseline; ratio = modelfab / baseline")
    for col in ("figure", "modelfab", "baseline", "ratio", "other"):
        table.add_column(col, justify="left" if col == "figure" else "right")
    table.add_row(
        "to detector, s",
        f"{det.total_s:.1f}",
        f"{det.bare_fit_s:.1f} fit",
        f"{det.total_s / det.bare_fit_s:.2f}",
        f"{det.run.others_cpu:.2f} / {det.bare_others_cpu:.2f}",
    )
    table.add_row(
        "  fit in the job, s",
        f"{det.job_fit_s:.1f}",
        f"{det.bare_fit_s:.1f} fit",
        f"{det.job_fit_s / det.bare_fit_s:.2f}",
        "",
    )
    rows = (
        ("images/s steady", batch.steady_per_s),
        ("  recipe's own", batch.own_per_s),
        ("  end to end", batch.end_to_end_per_s),
    )
    for i, (name, rate) in enumerate(rows):
        table.add_row(
            name,
            f"{rate:.2f}",
            f"{plain.images_per_s:.2f} plain",
            f"{rate / plain.images_per_s:.2f}",
            "" if i else f"{batch.run.others_cpu:.2f} / {plain.others_cpu:.2f}",
        )
    console.print(table)
    console.print(
        f"to detector: create_job -> registered detector, {args.train_images} good images, "
        "against the bare PatchCore.fit in this process (same images and params); the second "
        "row is the job's own fit_seconds. images/s: the batch-inspection job between its "
        "first and last progress events (steady), over its whole inspection as its last "
        "progress event says (own), and from create_job to succeeded (end to end), against "
        "the plain sequential loop."
    )
    console.print(
        f"{n} JPEGs of {size}, batch {args.batch_size}, {math.ceil(args.cpus)} intra-op threads "
        f"on both sides. Plain loop, per image: decode + preprocess {plain.decode_ms:.1f} ms, "
        f"ORT {plain.ort_ms:.1f} ms (wall): on {os.cpu_count()} cores a pipeline that overlaps "
        f"them at best reaches about {(plain.decode_ms + plain.ort_ms) / plain.ort_ms:.2f} x plain "
        "if ORT kept its speed. other = CPU-s/s other processes took (modelfab / baseline)."
    )
    busy = [
        name
        for name, others in (
            ("the detector job", det.run.others_cpu),
            ("the bare fit", det.bare_others_cpu),
            ("the batch job", batch.run.others_cpu),
            ("the plain loop", plain.others_cpu),
        )
        if others > BUSY
    ]
    if busy:
        console.print(
            f"[yellow]The machine was busy[/] during {', '.join(busy)} (other > {BUSY}): "
            "those figures, and the ratios that use them, are not comparable; run again."
        )


def print_quality(q: dict[str, Any], det: DetectorRun) -> None:
    metrics = det.model.get("metrics") or {}
    console.print(
        f"detector: {det.model['name']}:{det.model['version']}, threshold "
        f"{metrics.get('threshold')} ({metrics.get('threshold_source')}). Batch verdicts: "
        f"{q['defects_flagged']}/{q['defective']} drawn defects flagged, {q['good_flagged']}/"
        f"{q['good']} good images flagged, {q['errors']} errors; max |score recipe - plain| "
        f"{q['max_score_diff_vs_plain']:.2e}"
    )


# -- main --------------------------------------------------------------------------------


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    start = time.perf_counter()
    train = write_train(tmp / "surfaces", args.train_images, args.size, args.texture, args.seed)
    folder = tmp / "archive"
    truth = write_inspection(
        folder, args.images, args.size, args.texture, args.defect_share, args.seed
    )
    console.print(f"data written in {time.perf_counter() - start:.0f} s (not counted)")
    with running_platform(tmp / "home", args.cpus) as platform:
        # The admin key: batch-inspection reads and writes node paths outside any path root.
        admin_key = platform.settings.admin_key_path.read_text().strip()
        with Client(platform.url, admin_key, timeout_s=120) as client:
            det = to_detector(client, train, args.cpus)
            print_phases(
                f"create_job -> registered detector ({args.train_images} good images, "
                f"{TRAIN_SIDE} px, default params)",
                detector_marks(det.run, det.model),
            )
            ref, model_dir = f"{DATASET}:{det.model['version']}", tmp / "model"
            model_dir.mkdir()
            onnx = client.download_artifact(ref, "model.onnx", model_dir)
            labels = json.loads(client.download_artifact(ref, "labels.json", model_dir).read_text())
            paths = sorted(truth)
            console.print(f"plain loop over {len(paths)} images ...")
            plain = plain_loop(onnx, labels, paths, args.batch_size, math.ceil(args.cpus))
            console.print("batch-inspection job ...")
            batch = batch_job(client, folder, tmp / "results", args.batch_size, args.cpus)
    print_phases(f"batch-inspection job, {batch.images} images", batch_marks(batch.run))
    print_results(det, batch, plain, args)
    q = quality(batch.rows, truth, plain)
    print_quality(q, det)
    return {
        "to_detector": {
            "train_images": args.train_images,
            "total_s": det.total_s,
            "bare_fit_s": det.bare_fit_s,
            "job_fit_s": det.job_fit_s,
            "ratio": det.total_s / det.bare_fit_s,
            "phases": dict(phases(detector_marks(det.run, det.model))),
            "others_cpu": {"job": det.run.others_cpu, "bare_fit": det.bare_others_cpu},
            "model": {k: det.model.get(k) for k in ("name", "version", "metrics")},
        },
        "batch": {
            "images": batch.images,
            "size": list(args.size),
            "batch_size": args.batch_size,
            "threads": math.ceil(args.cpus),
            "steady_images_per_s": batch.steady_per_s,
            "own_images_per_s": batch.own_per_s,
            "summary_images_per_s": batch.summary_per_s,
            "end_to_end_images_per_s": batch.end_to_end_per_s,
            "total_s": batch.total_s,
            "plain": {k: v for k, v in asdict(plain).items() if k != "scores"},
            "ratio_steady": batch.steady_per_s / plain.images_per_s,
            "ratio_end_to_end": batch.end_to_end_per_s / plain.images_per_s,
            "phases": dict(phases(batch_marks(batch.run))),
            "others_cpu": batch.run.others_cpu,
            "quality": q,
        },
    }


def without_nan(obj: Any) -> Any:
    """`obj` with every nan float as None, for strict JSON."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: without_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [without_nan(v) for v in obj]
    return obj


def size_arg(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size takes WxH, e.g. 1024x768, got {text!r}") from None
    if min(width, height) < 32:
        raise argparse.ArgumentTypeError(f"--size {text}: each side must be at least 32 px")
    return width, height


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, help="JPEGs batch-inspected (600; quick 96)")
    p.add_argument("--size", type=size_arg, default=(1024, 768), help="their WxH (1024x768)")
    p.add_argument("--train-images", type=int, help="good images of the detector (200; quick 40)")
    p.add_argument("--defect-share", type=float, default=0.1, help="inspected with a defect")
    p.add_argument("--texture", default="brick", choices=("brick", "grass", "gravel"))
    p.add_argument("--batch-size", type=int, default=8, help="both sides (8: the recipe's auto)")
    p.add_argument(
        "--cpus", type=float, default=float(os.cpu_count() or 1), help="job cpus (all cores)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the results to this file")
    p.add_argument("--quick", action="store_true", help="96 images, 40 good; about 80 s")
    args = p.parse_args(argv)
    args.images = args.images or (96 if args.quick else 600)
    args.train_images = args.train_images or (40 if args.quick else 200)
    if not 0 <= args.defect_share <= 1:
        p.error("--defect-share must be within [0, 1]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    load1, _, _ = os.getloadavg()
    console.print(
        f"{os.cpu_count()} cores, load average {load1:.2f}; onnxruntime {ort.__version__}; "
        f"{args.train_images} good images, {args.images} inspected at {args.size[0]}x"
        f"{args.size[1]}, job cpus {args.cpus:g}"
    )
    with tempfile.TemporaryDirectory(prefix="modelfab-bench-") as tmp_name:
        results = measure(args, Path(tmp_name))
    if args.json:
        args.json.write_text(json.dumps(without_nan(results), indent=2) + "\n")
    load1, _, _ = os.getloadavg()
    console.print(f"done in {time.monotonic() - start:.0f} s; load average {load1:.2f} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())

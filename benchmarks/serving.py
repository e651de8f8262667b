"""Serving benchmark: one ONNX model three ways, ratios to in-process ONNX Runtime.

The model is efficientnet-lite0 (hub weights, a 3-class head, 224 px) trained for one epoch
by an `image-classification` job on an in-process `Platform`; its registered `model.onnx`
and `labels.json` are what all three sides run:

  (a) in-process ONNX Runtime on preprocessed float32 batches of the max batch size (the
      smallest batch that reaches 95% of the best ORT throughput here: the sweep is printed);
      no HTTP, no decoding. Its latency is per batch.
  (b) a modelfab endpoint (`create_endpoint`, max_batch_size, max_wait_ms), through the
      platform's HTTP API: POST /v1/endpoints/NAME/predict, one PNG per request.
  (c) LitServe (benchmarks/litserve_app.py), its own server process on loopback, with its
      dynamic batching (max_batch_size, batch_timeout) and the same preprocessing.

(b) and (c) get the same load: N concurrent keep-alive clients in a separate process, each
sending one 224 px PNG per request, for a fixed time after a warm-up. Throughput in
images/s, p50/p99 latency and errors at each concurrency, as ratios to (a). Under the
table: the CPU ceiling (cores / CPU-ms per image of ORT plus PNG decoding) that no server
on this machine can pass, and the issue's targets, (b)@32 >= 0.9 x (a) and (b)@32 > (c)@32.
See benchmarks/README.md."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
from harness import percentile, running_platform
from litserve_app import LITSERVE_VERSION, new_session, preprocess
from loadgen import CpuWatch, Target, run_load
from PIL import Image, ImageDraw
from rich.console import Console
from rich.table import Table

from modelfab.client import ApiError, Client
from modelfab.compute.executors.local.process import kill_tree

console = Console()
TASK = "image-classification"
MODEL_NAME = "serving-bench"
ENDPOINT_NAME = "serving-bench"
IMAGE_SIDE = 224
SWEEP = (1, 2, 4, 8, 16, 32)
BUSY = 0.2
"""CPU-s/s taken by other processes above which a row is flagged as measured on a busy
machine."""
KNEE = 0.95
"""The max batch size is the smallest batch whose ORT throughput reaches this share of the
best one in the sweep."""
JOB_TIMEOUT_S = 900
READY_TIMEOUT_S = 180
JOB_PARAMS: dict[str, Any] = {
    "base_model": "efficientnet-lite0",
    "epochs": 1,
    "image_size": IMAGE_SIDE,
    "batch_size": 16,
    "augment": False,
    "model_name": MODEL_NAME,
}


# -- statistics --------------------------------------------------------------------------


@dataclass
class Cell:
    """One measured side at one concurrency (concurrency 0 for the in-process baseline)."""

    side: str
    concurrency: int
    images_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    seconds: float
    client_cpu: float = float("nan")
    """The load generator's CPU-seconds per wall second (1.0 = one core), nan for (a)."""
    server_cpu_ms: float = float("nan")
    """CPU-ms per answered image of the server's processes, nan for (a)."""
    others_cpu: float = float("nan")
    """CPU-seconds per wall second that processes outside this benchmark took meanwhile."""
    note: str = ""


# -- the model ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFiles:
    onnx: Path
    labels: Path
    ref: str
    """Registry ref NAME:VERSION."""

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = json.loads(self.labels.read_text())
        return spec


def write_stripes(root: Path, per_class: int = 16, side: int = 64) -> Path:
    """A small generated dataset: horizontal, vertical and diagonal stripes on noise."""
    rng = random.Random(0)
    for label in ("horizontal", "vertical", "diagonal"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            img = Image.new("RGB", (side, side), tuple(rng.randint(0, 80) for _ in range(3)))
            draw = ImageDraw.Draw(img)
            for k in range(0, side, 8):
                off = k + rng.randint(0, 3)
                line = {"horizontal": (0, off, side, off), "vertical": (off, 0, off, side)}
                draw.line(
                    line.get(label, (off, 0, off + side // 2, side)), fill=(230,) * 3, width=3
                )
            img.save(root / label / f"{i:03d}.png")
    return root


def train_model(client: Client, tmp: Path, cpus: float) -> ModelFiles:
    """Run one `image-classification` job and download the registered model's files.
    Exits with the job's error when it does not succeed."""
    client.create_dataset("stripes", write_stripes(tmp / "stripes"), task=TASK)
    start = time.monotonic()
    job = client.create_job(TASK, dataset="stripes", params=JOB_PARAMS, cpus=cpus)
    done = client.wait_job(job.id, timeout_s=JOB_TIMEOUT_S).model_dump()
    if done["status"] != "succeeded":
        sys.exit(f"the training job {done['status']}: {done.get('error')}")
    version = client.get_model(MODEL_NAME).model_dump()
    ref = f"{MODEL_NAME}:{version['version']}"
    folder = tmp / "model"
    folder.mkdir()
    onnx = client.download_artifact(ref, "model.onnx", folder)
    labels = client.download_artifact(ref, "labels.json", folder)
    console.print(
        f"model: {ref} ({JOB_PARAMS['base_model']}, {len(version['extra']['classes'])} "
        f"classes, {IMAGE_SIDE} px), trained and registered in {time.monotonic() - start:.0f} s, "
        f"model.onnx {onnx.stat().st_size / 2**20:.1f} MiB"
    )
    return ModelFiles(onnx, labels, ref)


# -- images and preprocessing ------------------------------------------------------------


def sample_pngs(count: int = 6) -> list[bytes]:
    """`count` different 224 px photos as PNG bytes: crops of scikit-learn's two sample
    photos (china.jpg, flower.jpg), or generated gradients without scikit-learn."""
    try:
        from sklearn.datasets import load_sample_images

        photos = [Image.fromarray(a) for a in load_sample_images().images]
    except ImportError:
        photos = [generated_photo(seed) for seed in range(2)]
    pngs = []
    for i in range(count):
        photo = photos[i % len(photos)]
        scale = 256 / min(photo.size)
        photo = photo.resize((round(photo.width * scale), round(photo.height * scale)))
        left = (photo.width - IMAGE_SIDE) * (i // len(photos)) // max(1, count // len(photos) - 1)
        crop = photo.crop((left, 16, left + IMAGE_SIDE, 16 + IMAGE_SIDE))
        buffer = io.BytesIO()
        crop.save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    return pngs


def generated_photo(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:256, 0:384]
    base = np.stack([x / 384, y / 256, (x + y) / 640], axis=-1) * 255
    noise = rng.normal(0, 20, base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


# -- (a) in-process ONNX Runtime ---------------------------------------------------------


def time_batches(session: ort.InferenceSession, batch: np.ndarray, seconds: float) -> list[float]:
    """Run `batch` repeatedly for `seconds` after one untimed run; per-run seconds."""
    feeds = {session.get_inputs()[0].name: batch}
    session.run(None, feeds)
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return times


def make_batch(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    return np.stack([images[i % len(images)] for i in range(size)])


def sweep(
    session: ort.InferenceSession, images: Sequence[np.ndarray], seconds: float, passes: int
) -> tuple[int, float]:
    """ORT images/s at each batch size in SWEEP (printed); returns the max batch size and
    the CPU-s/s other processes took meanwhile.

    A batch size's rate is size / the median time of a batch, the best of `passes` passes
    over SWEEP: robust to another process taking the cores for a while."""
    rates = dict.fromkeys(SWEEP, 0.0)
    watch = CpuWatch.start()
    for _ in range(passes):
        for size in SWEEP:
            times = time_batches(session, make_batch(images, size), seconds)
            rates[size] = max(rates[size], size / statistics.median(times))
    best = max(rates.values())
    chosen = next(size for size in SWEEP if rates[size] >= KNEE * best)
    others = watch.others()
    table = Table(
        title=f"ORT batch-size sweep, in-process, best of {passes} x {seconds:g} s; "
        f"other processes took {others:.2f} CPU-s/s"
    )
    for col in ("batch", "images/s", "of best", "ms / batch"):
        table.add_column(col, justify="right")
    for size, rate in rates.items():
        mark = " [bold]<- max batch size[/]" if size == chosen else ""
        table.add_row(
            str(size), f"{rate:.1f}", f"{rate / best:.0%}{mark}", f"{size / rate * 1e3:.1f}"
        )
    console.print(table)
    return chosen, others


def run_in_process(
    session: ort.InferenceSession, images: Sequence[np.ndarray], size: int, seconds: float
) -> Cell:
    watch = CpuWatch.start()
    times = time_batches(session, make_batch(images, size), seconds)
    ms = [t * 1e3 for t in times]
    return Cell(
        side="(a) ORT",
        concurrency=0,
        images_per_s=size * len(times) / sum(times),
        p50_ms=percentile(ms, 50),
        p99_ms=percentile(ms, 99),
        requests=len(times),
        errors=0,
        seconds=sum(times),
        others_cpu=watch.others(),
        note=f"batches of {size}; latency per batch",
    )


def cpu_ceiling(
    session: ort.InferenceSession,
    images: Sequence[np.ndarray],
    pngs: Sequence[bytes],
    spec: dict[str, Any],
    size: int,
) -> dict[str, float]:
    """CPU-ms per image of ORT (batches of `size`) and of `preprocess`, both in this process,
    and the images/s that all cores could serve if HTTP and batching cost nothing."""
    start = time.process_time()
    ort_images = size * len(time_batches(session, make_batch(images, size), 2.0))
    ort_ms = (time.process_time() - start) / ort_images * 1e3
    start = time.process_time()
    for i in range(100):
        preprocess(pngs[i % len(pngs)], spec)
    decode_ms = (time.process_time() - start) / 100 * 1e3
    cores = os.cpu_count() or 1
    return {"ort_ms": ort_ms, "decode_ms": decode_ms, "ceiling": cores * 1e3 / (ort_ms + decode_ms)}


# -- load ----------------------------------------------------------------------------------


def measure(
    pool: ProcessPoolExecutor,
    side: str,
    target: Target,
    pngs: list[bytes],
    c: int,
    args: argparse.Namespace,
    server_pids: Sequence[int],
) -> Cell:
    watch = CpuWatch.start()
    window = (args.warmup, args.duration)
    result = pool.submit(run_load, target, pngs, c, window, server_pids).result()
    ms = [t * 1e3 for t in result.latencies_s]
    cell = Cell(
        side=side,
        concurrency=c,
        images_per_s=len(ms) / result.seconds,
        p50_ms=percentile(ms, 50),
        p99_ms=percentile(ms, 99),
        requests=len(ms),
        errors=result.errors,
        seconds=result.seconds,
        client_cpu=result.cpu_s / result.seconds,
        server_cpu_ms=result.server_cpu_s / max(1, len(ms)) * 1e3,
        others_cpu=watch.others(),
        note=result.first_error,
    )
    console.print(
        f"  {side} c={c}: {cell.images_per_s:.1f} images/s, p50 {cell.p50_ms:.1f} ms, "
        f"p99 {cell.p99_ms:.1f} ms, {cell.errors} errors; server {cell.server_cpu_ms:.1f} "
        f"CPU-ms per image; CPU-s/s: load generator {cell.client_cpu:.2f}, other processes "
        f"{cell.others_cpu:.2f}" + (f" (first: {result.first_error})" if result.first_error else "")
    )
    return cell


def load_pool() -> ProcessPoolExecutor:
    """One spawned process for the load generator, apart from the servers' processes and
    from this one (which runs the platform's API and gateway threads for (b))."""
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))


# -- (c) LitServe ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"LitServe exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    sys.exit(f"LitServe did not answer {url} in {READY_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def litserve_server(
    model: ModelFiles, max_batch_size: int, max_wait_ms: float
) -> Iterator[tuple[str, int]]:
    """Run benchmarks/litserve_app.py on loopback; yields its predict URL and pid, and kills
    its process tree on exit."""
    port = free_port()
    log = model.onnx.parent / "litserve.log"
    app = Path(__file__).with_name("litserve_app.py")
    argv = [sys.executable, str(app), str(model.onnx.parent), f"--port={port}"]
    argv += [f"--max-batch-size={max_batch_size}", f"--max-wait-ms={max_wait_ms}"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", proc, log)
        yield f"http://127.0.0.1:{port}/predict", proc.pid
    finally:
        kill_tree(proc.pid, grace_s=5.0)
        proc.wait(timeout=10)


def run_litserve(
    model: ModelFiles,
    pngs: list[bytes],
    max_batch: int,
    args: argparse.Namespace,
    pool: ProcessPoolExecutor,
) -> list[Cell]:
    side = "(c) LitServe"
    console.print(
        f"[bold]{side} {LITSERVE_VERSION}[/]: own server process, batch {max_batch}, "
        f"wait {args.max_wait_ms} ms"
    )
    with litserve_server(model, max_batch, args.max_wait_ms) as (url, pid):
        target = Target.parse(url)
        return [measure(pool, side, target, pngs, c, args, [pid]) for c in args.concurrency]


# -- (b) modelfab endpoint ---------------------------------------------------------------


def endpoint_sdk_missing(client: Client) -> str | None:
    """Why (b) cannot run with this checkout, or None when the SDK has the endpoint calls."""
    missing = [
        name
        for name in ("create_endpoint", "get_endpoint", "delete_endpoint")
        if not callable(getattr(client, name, None))
    ]
    return f"Client lacks {', '.join(missing)}" if missing else None


@contextlib.contextmanager
def modelfab_endpoint(
    client: Client, model: ModelFiles, max_batch: int, max_wait_ms: float, cpus: float
) -> Iterator[str]:
    """Create the endpoint, wait until it is ready, yield its predict URL; delete it on exit."""
    client.create_endpoint(
        ENDPOINT_NAME,
        model=model.ref,
        replicas=1,
        gpus=0,
        cpus=cpus,
        max_batch_size=max_batch,
        max_wait_ms=max_wait_ms,
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while (endpoint := client.get_endpoint(ENDPOINT_NAME).model_dump())["status"] != "ready":
            if endpoint["status"] in ("failed", "error") or time.monotonic() > deadline:
                sys.exit(f"endpoint {ENDPOINT_NAME} not ready: {endpoint}")
            time.sleep(0.5)
        yield f"{client.url}/v1/endpoints/{ENDPOINT_NAME}/predict"
    finally:
        with contextlib.suppress(ApiError):
            client.delete_endpoint(ENDPOINT_NAME)


def run_modelfab(
    client: Client,
    key: str,
    model: ModelFiles,
    pngs: list[bytes],
    max_batch: int,
    args: argparse.Namespace,
    pool: ProcessPoolExecutor,
) -> list[Cell]:
    side = "(b) modelfab"
    missing = endpoint_sdk_missing(client)
    if missing:
        console.print(f"[yellow]{side} skipped[/]: {missing} (the endpoint API has not landed)")
        return []
    console.print(f"[bold]{side}[/]: {model.ref}, batch {max_batch}, wait {args.max_wait_ms} ms")
    try:
        with modelfab_endpoint(client, model, max_batch, args.max_wait_ms, args.cpus) as url:
            target = Target.parse(url, {"Authorization": f"Bearer {key}"})
            # The API and gateway run in this process, the replica in a child of it.
            pids = [os.getpid()]
            return [measure(pool, side, target, pngs, c, args, pids) for c in args.concurrency]
    except ApiError as exc:
        console.print(f"[yellow]{side} skipped[/]: {exc.code}: {exc.message}")
        return []


# -- output ------------------------------------------------------------------------------


def with_ratio(value: float, base: float) -> str:
    """`value` and its ratio to `base`, as "55.0 x1.46"; "-" when nothing was measured."""
    if value != value:  # nan
        return "-"
    shown = f"{value:.0f}" if value >= 100 else f"{value:.1f}"
    return f"{shown} x{value / base:.2f}" if base else shown


def print_results(
    cells: list[Cell], baseline: Cell, max_batch: int, args: argparse.Namespace
) -> None:
    table = Table(
        title=f"efficientnet-lite0 ONNX, {IMAGE_SIDE} px, max batch {max_batch}; "
        f"{args.duration:g} s per row after {args.warmup:g} s warm-up; x = ratio to (a)"
    )
    for col in ("side", "conc", "images/s", "p50 ms", "p99 ms", "err", "other"):
        table.add_column(col, justify="left" if col == "side" else "right")
    for cell in cells:
        inproc = cell.side.startswith("(a)")
        table.add_row(
            cell.side,
            "-" if inproc else str(cell.concurrency),
            with_ratio(cell.images_per_s, baseline.images_per_s),
            with_ratio(cell.p50_ms, baseline.p50_ms),
            with_ratio(cell.p99_ms, baseline.p99_ms),
            "-" if inproc else str(cell.errors),
            f"{cell.others_cpu:.2f}",
        )
    console.print(table)
    console.print(
        f"(a) = the mean of the in-process runs at start and end, {baseline.images_per_s:.1f} "
        f"images/s; its latency is per batch of {max_batch}. (b), (c): latency per request "
        "(one image). The load generator, the servers and the model share this machine's "
        f"{os.cpu_count()} cores. err = failed requests. other = CPU-s/s that processes "
        "outside this benchmark took during the row: well above 0, the machine was busy."
    )


def print_ceiling(
    ceiling: dict[str, float], cells: list[Cell], baseline: Cell, max_batch: int
) -> None:
    """The CPU ceiling, and what each server spent per image at its highest concurrency."""
    console.print(
        f"CPU per image: ORT {ceiling['ort_ms']:.1f} ms (batches of {max_batch}), PNG decode + "
        f"preprocess {ceiling['decode_ms']:.1f} ms. So a server on these {os.cpu_count()} cores "
        f"cannot pass {ceiling['ceiling']:.0f} images/s = "
        f"{ceiling['ceiling'] / baseline.images_per_s:.2f} x (a), even with free HTTP and batching."
    )
    served = [c for c in cells if c.concurrency]
    tops = {c.side: c for c in sorted(served, key=lambda c: c.concurrency)}  # last one wins
    spent = ", ".join(
        f"{side} {c.server_cpu_ms:.1f} ms at {c.concurrency}" for side, c in sorted(tops.items())
    )
    if spent:
        console.print(f"Server CPU per image (all its processes): {spent}.")


def warn_if_busy(cells: list[Cell], sweep_others: float) -> None:
    """Name the rows measured while other processes took the cores (> BUSY CPU-s/s)."""
    busy = [f"{c.side} {c.concurrency or ''}".strip() for c in cells if c.others_cpu > BUSY]
    busy += ["the sweep"] if sweep_others > BUSY else []
    if busy:
        console.print(
            f"[yellow]The machine was busy[/] during {', '.join(busy)} (other > {BUSY}): "
            "those figures, and the ratios that use them, are not comparable; run again."
        )


def print_targets(cells: list[Cell], baseline: Cell) -> dict[str, Any]:
    """The issue's two targets at the highest concurrency run; returns them for --json."""
    top = (
        max(c.concurrency for c in cells if c.concurrency)
        if any(c.concurrency for c in cells)
        else 0
    )
    ours = next((c for c in cells if c.side.startswith("(b)") and c.concurrency == top), None)
    peer = next((c for c in cells if c.side.startswith("(c)") and c.concurrency == top), None)
    targets: dict[str, Any] = {"concurrency": top}
    if ours is None:
        console.print(f"targets at concurrency {top}: [yellow]not measured[/] ((b) did not run)")
        return targets
    share = ours.images_per_s / baseline.images_per_s
    targets["b_over_a"] = share
    verdict = "[green]PASS[/]" if share >= 0.9 and ours.errors == 0 else "[red]MISS[/]"
    console.print(f"target (b)@{top} >= 0.9 x (a) throughput: {share:.2f} {verdict}")
    if peer is not None:
        over = ours.images_per_s / peer.images_per_s if peer.images_per_s else float("nan")
        targets["b_over_c"] = over
        beats = ours.images_per_s > peer.images_per_s and ours.errors == 0
        console.print(
            f"target (b)@{top} > (c)@{top} throughput: {ours.images_per_s:.1f} vs "
            f"{peer.images_per_s:.1f} ({over:.2f}x) "
            + ("[green]PASS[/]" if beats else "[red]MISS[/]")
        )
    return targets


def mean_cell(runs: list[Cell]) -> Cell:
    return Cell(
        side="(a) mean",
        concurrency=0,
        images_per_s=statistics.mean(c.images_per_s for c in runs),
        p50_ms=statistics.mean(c.p50_ms for c in runs),
        p99_ms=statistics.mean(c.p99_ms for c in runs),
        requests=sum(c.requests for c in runs),
        errors=0,
        seconds=sum(c.seconds for c in runs),
    )


# -- main --------------------------------------------------------------------------------


def measure_all(client: Client, key: str, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    model = train_model(client, tmp, args.cpus)
    pngs = sample_pngs()
    spec = model.spec()
    images = [preprocess(png, spec) for png in pngs]
    session = new_session(model.onnx)
    max_batch, sweep_others = args.max_batch_size, 0.0
    if not max_batch:
        max_batch, sweep_others = sweep(session, images, args.sweep_seconds, args.sweep_passes)
    first = run_in_process(session, images, max_batch, args.duration)
    first.side = "(a) start"
    ceiling = cpu_ceiling(session, images, pngs, spec, max_batch)
    cells = [first]
    with load_pool() as pool:
        if "c" in args.sides:
            cells += run_litserve(model, pngs, max_batch, args, pool)
        if "b" in args.sides:
            cells += run_modelfab(client, key, model, pngs, max_batch, args, pool)
    last = run_in_process(session, images, max_batch, args.duration)
    last.side = "(a) end"
    cells.append(last)
    baseline = mean_cell([first, last])
    print_results(cells, baseline, max_batch, args)
    print_ceiling(ceiling, cells, baseline, max_batch)
    warn_if_busy(cells, sweep_others)
    targets = print_targets(cells, baseline)
    return {
        "max_batch_size": max_batch,
        "sweep_others_cpu": sweep_others,
        "cpu_ceiling": ceiling,
        "baseline": asdict(baseline),
        "targets": targets,
        "cells": [asdict(c) for c in cells],
    }


def without_nan(obj: Any) -> Any:
    """`obj` with every nan float (nothing measured) as None, for strict JSON."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: without_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [without_nan(v) for v in obj]
    return obj


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, help="measured seconds per row (12; quick 4)")
    p.add_argument("--warmup", type=float, help="unmeasured seconds before each row (3; quick 1)")
    p.add_argument("--concurrency", help="clients, comma-separated (1,8,32; quick 1,8)")
    p.add_argument("--sides", default="abc", help="which of (b) and (c) to run besides (a)")
    p.add_argument("--max-batch-size", type=int, help="skip the sweep and use this batch size")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="batching wait, (b) and (c)")
    p.add_argument("--sweep-seconds", type=float, help="per batch size and pass (1; quick 0.5)")
    p.add_argument("--sweep-passes", type=int, help="passes over the batch sizes (2; quick 1)")
    p.add_argument(
        "--cpus",
        type=float,
        default=float(os.cpu_count() or 1),
        help="node CPU slots, job and endpoint cpus (all cores)",
    )
    p.add_argument("--json", type=Path, help="also write the results to this file")
    p.add_argument("--quick", action="store_true", help="short rows, concurrency 1 and 8")
    args = p.parse_args(argv)
    args.duration = args.duration or (4.0 if args.quick else 12.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 3.0)
    args.sweep_seconds = args.sweep_seconds or (0.5 if args.quick else 1.0)
    args.sweep_passes = args.sweep_passes or (1 if args.quick else 2)
    default = "1,8" if args.quick else "1,8,32"
    args.concurrency = [int(c) for c in (args.concurrency or default).split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    load1, _, _ = os.getloadavg()
    console.print(
        f"{os.cpu_count()} cores, load average {load1:.2f}; onnxruntime {ort.__version__}, "
        f"litserve {LITSERVE_VERSION}; concurrency {args.concurrency}"
    )
    with tempfile.TemporaryDirectory(prefix="modelfab-bench-") as tmp_name:
        tmp = Path(tmp_name)
        with running_platform(tmp / "home", args.cpus) as platform:
            admin_key = platform.settings.admin_key_path.read_text().strip()
            with Client(platform.url, admin_key) as admin:
                key = admin.create_tenant("bench").api_key
            with Client(platform.url, key, timeout_s=120) as client:
                results = measure_all(client, key, tmp, args)
    if args.json:
        args.json.write_text(json.dumps(without_nan(results), indent=2) + "\n")
    load1, _, _ = os.getloadavg()
    console.print(f"done in {time.monotonic() - start:.0f} s; load average {load1:.2f} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())

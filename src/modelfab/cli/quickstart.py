"""`modelfab quickstart`, the main job: data to a deployed, measured model in minutes.

It starts a platform in a temporary home, makes a sample inspection data set from real
textures (scikit-image's brick, grass and gravel, with drawn scratches, spots and cracks),
fine-tunes efficientnet-lite0 on it, deploys the registered model as an endpoint, sends
held-out images through the gateway, and prints accuracy, latency, throughput and usage.
Then the inspection station: an anomaly detector fitted on the good surfaces only, deployed,
and `modelfab inspect` over new photos into an HTML report that is kept.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import numpy as np
import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from modelfab.apps.inspection.samples import (
    make_inspection_set,
    make_surface_dataset,
    texture_surface,
    write_anomaly_dataset,
)
from modelfab.cli.output import console, table
from modelfab.client import Client, Unreachable
from modelfab.compute.executors.local.process import find_workers, kill_tree
from modelfab.schemas.endpoints import FAILED, READY
from modelfab.schemas.jobs import TERMINAL, Job, JobStatus
from modelfab.schemas.models import ModelVersion
from modelfab.tasks import ANOMALY_DETECTION, IMAGE_CLASSIFICATION

MODEL = "surface-inspector"
DETECTOR = "surface-detector"
REPORT = Path(tempfile.gettempdir()) / "modelfab-quickstart" / "report.html"
"""Where the inspection report is written (outside the temporary home, so it is kept)."""
EPOCHS = 5
IMAGE_SIZE = 128  # the samples are 96 px: 224 would cost 3x the compute for nothing
PART_SIZE = 160
"""Side of the generated brick parts the detector learns and inspects (scored at 224 px)."""
LR = 1e-3


@dataclass
class LoadResult:
    correct: int
    total: int
    latencies_ms: list[float]
    wall_s: float
    errors: int


def quickstart(
    keep: Annotated[bool, typer.Option(help="Leave the platform running when done")] = False,
    images: Annotated[int, typer.Option(help="Training images per class")] = 60,
    requests: Annotated[int, typer.Option(help="Held-out images sent to the endpoint")] = 200,
    concurrency: Annotated[int, typer.Option(help="Parallel clients")] = 8,
) -> None:
    """Train, deploy and call a defect classifier on a fresh platform, end to end."""
    home = Path(tempfile.mkdtemp(prefix="modelfab-quickstart-"))
    console.rule("[bold]modelfab quickstart")
    started = time.monotonic()
    server = _start_server(home)
    try:
        url, admin_key = _wait_ready(home, server)
        console.print(f"platform up at [bold]{url}[/bold] (home {home})")
        _run(url, admin_key, home, images, requests, concurrency, keep=keep)
        console.print(f"done in {time.monotonic() - started:.0f} s")
        if keep:
            console.print(
                f"left running: export MODELFAB_URL={url} MODELFAB_API_KEY=$(cat {home}/admin.key)"
            )
            server.wait()
    finally:
        if not keep:
            server.terminate()
            server.wait(timeout=30)
            _stop_workers(home)  # workers outlive the control plane by design
            shutil.rmtree(home, ignore_errors=True)


def _start_server(home: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "modelfab.cli.main", "up", "--home", str(home), "--port", "0",
            "--log-level", "warning"]  # fmt: skip
    log = open(home / "server.log", "wb")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"}
    )


def _stop_workers(home: Path) -> None:
    node_file = home / "node-id"
    if node_file.exists():
        for proc in find_workers(node_file.read_text().strip()).values():
            kill_tree(proc.pid, grace_s=5.0)


def _wait_ready(home: Path, server: subprocess.Popen[bytes]) -> tuple[str, str]:
    deadline = time.monotonic() + 60
    with console.status("starting the control plane ..."):
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise typer.Exit(_fail(home, "the control plane exited"))
            text = (home / "server.log").read_text(errors="replace")
            url = next(
                (w for w in text.split() if w.startswith("http://") and "openapi" not in w), None
            )
            if url and (home / "admin.key").exists():
                try:
                    Client(url).request("GET", "/health")
                    return url, (home / "admin.key").read_text().strip()
                except Unreachable:
                    pass
            time.sleep(0.2)
    raise typer.Exit(_fail(home, "the control plane did not start within 60 s"))


def _fail(home: Path, why: str) -> int:
    console.print(
        f"[red]{why}[/red]; its log:\n" + (home / "server.log").read_text(errors="replace")[-3000:]
    )
    return 1


def _run(
    url: str, admin_key: str, home: Path, per_class: int, n: int, concurrency: int, *, keep: bool
) -> None:
    with Client(url, admin_key) as admin:
        team = admin.create_tenant("inspection", max_cpus=os.cpu_count() or 2)
    console.print("created tenant [bold]inspection[/bold] with its API key")
    with Client(url, team.api_key) as c:
        with console.status("making a sample data set from real textures ..."):
            folder = make_surface_dataset(home / "surfaces", per_class=per_class, seed=0)
            holdout = make_surface_dataset(home / "holdout", per_class=n // 2, seed=1)
        version = c.create_dataset("surfaces", folder, task=IMAGE_CLASSIFICATION)
        console.print(f"dataset {version.ref}: {version.stats['classes']}")
        job = c.create_job(
            "image-classification",
            dataset=version.ref,
            params={
                "base_model": "efficientnet-lite0",
                "epochs": EPOCHS,
                "image_size": IMAGE_SIZE,
                "lr": LR,
                "model_name": MODEL,
            },
            cpus=float(os.cpu_count() or 2),
        )
        job = _watch_training(c, job.id)
        if job.status != JobStatus.SUCCEEDED:
            console.print(f"[red]training {job.status}: {job.error}[/red]")
            raise typer.Exit(1)
        model = c.get_model(f"{MODEL}:1")
        _deploy(c, MODEL)
        result = _send(url, team.api_key, holdout, concurrency)
        _delete(c, MODEL)  # its CPU slots go to the detector's endpoint
        detector = _inspection(c, url, team.api_key, home)
        if not keep:
            _delete(c, DETECTOR)
        usage = _wait_usage(c, result.total - result.errors)
    _summary(url, model, result, usage, detector)


def _delete(c: Client, name: str) -> None:
    """Delete an endpoint: it drains and meters its replica's last seconds."""
    replica = c.get_endpoint(name).replica_jobs[0].job_id
    with console.status(f"deleting endpoint {name} (draining) ..."):
        c.delete_endpoint(name)
        _wait_job(c, replica)


def _inspection(c: Client, url: str, key: str, home: Path) -> dict[str, Any]:
    """The inspection station on one surface type (brick, as one product line would be):
    fit a detector on good parts only (MVTec layout, with a labelled test/ split), deploy
    it and run `modelfab inspect` on new photos; returns the detector's metrics."""
    rng = random.Random(3)
    good = [texture_surface(rng, PART_SIZE, "brick") for _ in range(80)]
    test = make_inspection_set(rng, texture_name="brick", good=20, defective=20, size=PART_SIZE)
    root = write_anomaly_dataset(home / "bricks", good, test)
    version = c.create_dataset("bricks", root, task=ANOMALY_DETECTION)
    created = c.create_job(
        "anomaly-detection",
        dataset=version.ref,
        params={"model_name": DETECTOR},
        cpus=float(os.cpu_count() or 2),
    )
    with console.status("fitting an anomaly detector on good bricks only ...") as status:
        for _, events in c.follow_events(created.id):
            if events:
                status.update(f"anomaly detector: {events[-1].message[:70]}")
    job = c.get_job(created.id)
    if job.status != JobStatus.SUCCEEDED:
        console.print(f"[red]anomaly detection {job.status}: {job.error}[/red]")
        raise typer.Exit(1)
    _deploy(c, DETECTOR)
    photos = home / "new-photos"
    photos.mkdir()
    new = make_inspection_set(rng, texture_name="brick", good=12, defective=12, size=PART_SIZE)
    for i, (image, label) in enumerate(zip(new.images, new.labels, strict=True)):
        image.save(photos / f"part-{i:03d}-{label}.png")
    argv = [sys.executable, "-m", "modelfab.cli.main", "inspect", DETECTOR, str(photos),
            "--report", str(REPORT)]  # fmt: skip
    env = {**os.environ, "MODELFAB_URL": url, "MODELFAB_API_KEY": key}
    shutil.rmtree(REPORT.parent, ignore_errors=True)  # no pictures left from an earlier run
    console.rule(f"modelfab inspect {DETECTOR} new-photos/ --report {REPORT}")
    if subprocess.run(argv, env=env, check=False).returncode != 0:
        raise typer.Exit(1)
    metrics: dict[str, Any] = c.get_model(f"{DETECTOR}:1").metrics
    return metrics


def _watch_training(c: Client, job_id: str) -> Job:
    columns = (
        SpinnerColumn(),
        TextColumn("train efficientnet-lite0"),
        BarColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("train", total=EPOCHS, note="queued")
        for job, events in c.follow_events(job_id):
            for e in events:
                data = e.data or {}
                if e.type == "metrics" and "epoch" in data:
                    note = f"epoch {data['epoch']:.1f}"
                    if "val_accuracy" in data:
                        note += f"  val accuracy {data['val_accuracy']:.3f}"
                    progress.update(bar, completed=min(EPOCHS, data["epoch"]), note=note)
                elif e.type != "metrics":
                    progress.update(bar, note=e.message[:60])
            if job.status in TERMINAL:
                progress.update(bar, completed=EPOCHS, note=job.status)
                return job
    return c.get_job(job_id)


def _deploy(c: Client, name: str) -> None:
    c.create_endpoint(name, model=f"{name}:1", cpus=float(os.cpu_count() or 2))
    with console.status(f"deploying endpoint {name} ...") as status:
        deadline = time.monotonic() + 120
        while (e := c.get_endpoint(name)).status != READY:
            if e.status == FAILED or time.monotonic() > deadline:
                console.print(f"[red]endpoint {e.status}: {e.error}[/red]")
                raise typer.Exit(1)
            status.update(f"deploying {name} ... {e.ready_replicas}/{e.replicas} ready")
            time.sleep(0.25)
    console.print(f"endpoint [bold]{name}[/bold] ready")


def _send(url: str, key: str, folder: Path, concurrency: int) -> LoadResult:
    """Each held-out image as one request, `concurrency` at a time, over keep-alive."""
    items = sorted((p.parent.name, p) for p in folder.glob("*/*.png"))
    endpoint = f"{url}/v1/endpoints/{MODEL}/predict"
    headers = {"Authorization": f"Bearer {key}"}
    latencies: list[float] = []
    outcomes: list[bool | None] = []
    columns = (SpinnerColumn(), TextColumn("predict"), BarColumn(), TextColumn("{task.completed}"))
    with (
        httpx.Client(headers=headers, timeout=60) as http,
        Progress(*columns, console=console) as progress,
    ):
        bar = progress.add_task("predict", total=len(items))

        def one(item: tuple[str, Path]) -> None:
            label, path = item
            t0 = time.perf_counter()
            resp = http.post(endpoint, files={"file": (path.name, path.read_bytes(), "image/png")})
            latencies.append((time.perf_counter() - t0) * 1000)
            ok = resp.status_code == 200
            outcomes.append(ok and resp.json()["data"][0]["label"] == label if ok else None)
            progress.advance(bar)

        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, items))
        wall = time.perf_counter() - start
    correct = sum(1 for o in outcomes if o)
    errors = sum(1 for o in outcomes if o is None)
    return LoadResult(correct, len(items), latencies, wall, errors)


def _wait_job(c: Client, job_id: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while c.get_job(job_id).status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.2)


def _wait_usage(c: Client, expected_requests: int) -> dict[str, float]:
    """Usage per meter, once the journal has written the requests just sent."""
    deadline = time.monotonic() + 10
    while True:
        usage = {u.meter: u.quantity for u in c.usage(by="meter")}
        if usage.get("requests", 0) >= expected_requests or time.monotonic() > deadline:
            return usage
        time.sleep(0.2)


def _summary(
    url: str,
    model: ModelVersion,
    r: LoadResult,
    usage: dict[str, float],
    detector: dict[str, Any],
) -> None:
    lat = np.asarray(r.latencies_ms or [0.0])
    metrics = model.metrics
    rows = [
        ["validation accuracy (training job)", f"{metrics.get('accuracy', float('nan')):.3f}"],
        ["held-out accuracy (through the endpoint)", f"{r.correct / max(1, r.total):.3f}"],
        ["requests / errors", f"{r.total} / {r.errors}"],
        ["latency p50 / p99", f"{np.percentile(lat, 50):.1f} / {np.percentile(lat, 99):.1f} ms"],
        ["throughput", f"{r.total / max(1e-9, r.wall_s):.1f} images/s"],
    ]
    rows += [
        ["anomaly detector: image AUROC on test/", _num(detector.get("image_auroc"))],
        ["anomaly detector: F1 / recall at its threshold",
         f"{_num(detector.get('f1'))} / {_num(detector.get('recall'))}"],
        ["inspection report", str(REPORT)],
    ]  # fmt: skip
    rows += [[f"usage: {m}", f"{q:,.1f}"] for m, q in sorted(usage.items())]
    table("summary", ("metric", "value"), rows)
    predict_url = f"{url}/v1/endpoints/{DETECTOR}/predict"
    console.print(f"endpoint: [bold]{predict_url}[/bold] (kept with --keep)", soft_wrap=True)
    console.print(
        f"  curl -H 'Authorization: Bearer $KEY' -F file=@part.png {predict_url}", soft_wrap=True
    )


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"

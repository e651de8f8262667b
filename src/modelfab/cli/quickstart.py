"""`modelfab quickstart`: start a platform in a temporary home and run the job loop end to end.

For now (before the vision recipes land) it creates a tenant with a quota, uploads a small
generated image dataset, runs `sleep` jobs that share fake GPUs, shows the pool while they
run, and prints the metered usage."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
from PIL import Image, ImageDraw
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from modelfab.cli.output import console, table
from modelfab.client import TERMINAL, Client, Unreachable


def quickstart(
    keep: Annotated[bool, typer.Option(help="Leave the platform running when done")] = False,
    jobs: Annotated[int, typer.Option(help="How many sleep jobs to run")] = 6,
) -> None:
    """Start modelfab in a temporary home and run a sample workload end to end."""
    home = Path(tempfile.mkdtemp(prefix="modelfab-quickstart-"))
    console.rule("[bold]modelfab quickstart")
    server = _start_server(home)
    try:
        url, admin_key = _wait_ready(home, server)
        console.print(f"platform up at [bold]{url}[/bold] (home {home})")
        _run_demo(url, admin_key, home, jobs)
        if keep:
            console.print(
                f"left running: export MODELFAB_URL={url} MODELFAB_API_KEY=$(cat {home}/admin.key)"
            )
            server.wait()
    finally:
        if not keep:
            server.terminate()
            server.wait(timeout=30)
            shutil.rmtree(home, ignore_errors=True)


def _start_server(home: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "modelfab.cli.main", "up", "--home", str(home), "--port", "0",
            "--fake-gpus", "2", "--log-level", "warning"]  # fmt: skip
    log = open(home / "server.log", "wb")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"}
    )


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


def _run_demo(url: str, admin_key: str, home: Path, n_jobs: int) -> None:
    with Client(url, admin_key) as admin:
        team = admin.create_tenant("demo-team", max_gpus=1.5, max_cpus=4, weight=1.0)
    console.print("created tenant [bold]demo-team[/bold] (quota: 1.5 GPUs, 4 CPU slots)")
    with Client(url, team["api_key"]) as c:
        folder = _sample_dataset(home / "sample-parts")
        version = c.create_dataset("parts", folder, task="image-classification")
        console.print(
            f"dataset {version['ref']}: {version['stats']['classes']} "
            f"sha256 {version['sha256'][:12]}"
        )
        gpus = [0.5, 0.5, 0.25, 1.0, 0.25, 0.5]
        ids = [
            c.create_job(
                "sleep",
                params={"seconds": 3},
                dataset=version["ref"],
                gpus=gpus[i % len(gpus)],
                cpus=0.5,
            )["id"]
            for i in range(n_jobs)
        ]
        _watch(c, ids)
        jobs = [c.get_job(i) for i in ids]
        rows = [
            [j["id"], j["resources"]["gpus"], j["cuda_visible_devices"], j["status"], j["attempt"]]
            for j in jobs
        ]
        table("jobs", ("id", "gpus", "devices", "status", "attempts"), rows)
        usage = c.usage()
    table(
        "usage (demo-team)",
        ("meter", "quantity"),
        [[u["meter"], f"{u['quantity']:.1f}"] for u in usage],
    )
    ok = sum(j["status"] == "succeeded" for j in jobs)
    console.print(
        f"[bold green]{ok}/{len(jobs)} jobs succeeded[/bold green] "
        "on 2 fake GPUs within a 1.5-GPU quota"
    )


def _watch(c: Client, ids: list[str]) -> None:
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[state]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bars = {i: progress.add_task(i, total=3, state="queued") for i in ids}
        while True:
            jobs = [c.get_job(i) for i in ids]
            for job in jobs:
                metrics = [e for e in c.job_events(job["id"]) if e["type"] == "metrics"]
                step = metrics[-1]["data"].get("step", 0) if metrics else 0
                done = job["status"] in TERMINAL
                progress.update(bars[job["id"]], completed=3 if done else step, state=job["status"])
            if all(j["status"] in TERMINAL for j in jobs):
                return
            time.sleep(0.3)


def _sample_dataset(root: Path) -> Path:
    """A tiny two-class image folder: parts with and without a dark scratch."""
    rng = random.Random(0)
    for label in ("ok", "scratch"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(12):
            img = Image.new("RGB", (64, 64), tuple(rng.randint(150, 220) for _ in range(3)))
            if label == "scratch":
                x = rng.randint(5, 50)
                ImageDraw.Draw(img).line((x, 5, x + 10, 60), fill=(30, 30, 30), width=3)
            img.save(root / label / f"{i:03d}.png")
    return root

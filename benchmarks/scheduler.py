"""Scheduler benchmarks, each beside its baseline with the ratio printed (no timed asserts).

latency: `--jobs` sleep jobs submitted open-loop to an in-process `Platform` (API +
scheduler + local executor, SQLite); submit->placed and submit->running come from each
job's events. Baseline: `python -c "import modelfab.compute.worker.__main__"`, serially.

throughput: `--queued` jobs of `--tenants` tenants bulk-inserted into a fresh database;
`Scheduler.tick()` driven with an executor that starts nothing, some jobs ended between
ticks. End-to-end decisions/s (load + decide + apply) beside pure `schedule()` decisions/s.
See benchmarks/README.md."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import random
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from harness import percentile
from rich.console import Console
from rich.table import Table
from sqlalchemy import create_engine, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from modelfab.client import TERMINAL, Client
from modelfab.compute import lifecycle
from modelfab.compute.executors.base import Executor, ExitInfo, LaunchSpec, LogChunk
from modelfab.compute.executors.local.process import find_workers, kill_tree
from modelfab.compute.pool import DeviceSpec, NodeSpec, register_node
from modelfab.compute.scheduler.loop import Scheduler, SchedulerConfig
from modelfab.compute.scheduler.policy import schedule
from modelfab.compute.scheduler.snapshot import Snapshot, load_snapshot
from modelfab.db import migrate
from modelfab.db.engine import make_engine, make_sessionmaker, transaction
from modelfab.db.models import Job, Tenant
from modelfab.ids import new_id
from modelfab.server import Platform
from modelfab.settings import ServerSettings

console = Console()
T = TypeVar("T")

WORKER_IMPORT = "import modelfab.compute.worker.__main__"
GPU_MIX_LATENCY = (0.0, 0.25, 1.0)
GPU_MIX_QUEUE = (0.0, 0.25, 0.5, 1.0, 2.0)
NODES, DEVICES_PER_NODE, CPUS_PER_NODE = 8, 8, 32.0  # 64 fake GPUs, 256 CPU slots
USAGE_WINDOW_S = 7 * 86400.0
JOB_DEFAULTS: dict[str, Any] = {
    "recipe": "sleep",
    "params": {},
    "memory_bytes": 0,
    "max_attempts": 3,
    "status": lifecycle.QUEUED,
    "attempt": 0,
    "failures": 0,
    "cancel_requested": False,
}


# -- statistics --------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


# -- part 1: submit-to-running latency ---------------------------------------------------


@dataclass
class Submitted:
    job_id: str
    created_at: float  # the job's created_at, server clock
    returned_wall: float  # create_job returned, wall clock (from the monotonic clock)
    call_s: float  # create_job round trip


@dataclass
class Latencies:
    create_call: list[float] = field(default_factory=list)
    created_to_placed: list[float] = field(default_factory=list)
    to_placed: list[float] = field(default_factory=list)
    placed_to_running: list[float] = field(default_factory=list)
    to_running: list[float] = field(default_factory=list)
    not_succeeded: int = 0
    control_cpu_s: float = 0.0  # this process (API, scheduler, client) per job
    worker_cpu_s: float = 0.0  # reaped children (the workers) per job


def cpu_now() -> tuple[float, float]:
    """(CPU seconds of this process, CPU seconds of its reaped children)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def time_process(argv: list[str], reps: int) -> tuple[list[float], float]:
    """(wall seconds of each of `reps` serial runs of `argv`, mean CPU seconds per run)."""
    walls = []
    _, cpu0 = cpu_now()
    for _ in range(reps):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        walls.append(time.perf_counter() - start)
    return walls, (cpu_now()[1] - cpu0) / reps


def submit_jobs(client: Client, count: int, interval_s: float) -> list[Submitted]:
    """Submit `count` sleep jobs on a fixed schedule, one every `interval_s` (open loop: a
    slow create_job does not push later arrivals back)."""
    wall0, mono0 = time.time(), time.monotonic()
    submitted = []
    for i in range(count):
        delay = mono0 + i * interval_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        gpus = GPU_MIX_LATENCY[i % len(GPU_MIX_LATENCY)]
        start = time.monotonic()
        job = client.create_job("sleep", params={"seconds": 0}, gpus=gpus, cpus=0.1)
        returned = time.monotonic()
        wall = wall0 + (returned - mono0)
        submitted.append(Submitted(job.id, job.created_at, wall, returned - start))
    return submitted


def wait_all_ended(client: Client, ids: set[str], timeout_s: float) -> dict[str, str]:
    """Poll until every job of `ids` is terminal; returns id -> status. Raises TimeoutError."""
    deadline = time.monotonic() + timeout_s
    while True:
        jobs = {j.id: j.status for j in client.list_jobs(limit=1000) if j.id in ids}
        if len(jobs) == len(ids) and all(s in TERMINAL for s in jobs.values()):
            return jobs
        if time.monotonic() > deadline:
            left = sum(s not in TERMINAL for s in jobs.values())
            raise TimeoutError(f"{left} jobs still not ended after {timeout_s}s")
        time.sleep(0.5)


def wait_workers_reaped(node_id: str, timeout_s: float = 30.0) -> None:
    """Wait until no worker of `node_id` lives, plus one scheduler tick to reap them."""
    deadline = time.monotonic() + timeout_s
    while find_workers(node_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # the scheduler polls (and so reaps) its children every tick (0.5 s)


def first_attempt_times(events: list[dict[str, Any]]) -> tuple[float | None, float | None]:
    """(placed at, worker started at) of attempt 1, from the job's events."""
    placed = running = None
    for e in events:
        msg, data = e["message"], e.get("data") or {}
        if e["attempt"] != 1 or not msg.startswith("Attempt"):
            continue
        if placed is None and " placed on " in msg:
            placed = e["created_at"]
        if running is None and " started" in msg and data.get("status") == "running":
            running = e["created_at"]
    return placed, running


def collect(client: Client, submitted: list[Submitted], lat: Latencies) -> None:
    """Fill `lat` from each job's events."""
    for sub in submitted:
        lat.create_call.append(sub.call_s)
        events = [e.model_dump() for e in client.job_events(sub.job_id)]
        placed, running = first_attempt_times(events)
        if placed is not None:
            lat.to_placed.append(placed - sub.returned_wall)
            lat.created_to_placed.append(placed - sub.created_at)
        if running is not None:
            lat.to_running.append(running - sub.returned_wall)
        if placed is not None and running is not None:
            lat.placed_to_running.append(running - placed)


def run_platform_jobs(jobs: int, interval_s: float) -> Latencies:
    """Start a Platform in a temp home, run the jobs, stop it; leftover workers are killed."""
    with tempfile.TemporaryDirectory(prefix="modelfab-bench-") as home:
        settings = ServerSettings(
            home=Path(home), port=0, fake_gpus=8, cpus=64, scheduler_interval_s=0.5
        )
        platform = Platform(settings)
        try:
            platform.start()
            assert platform.node is not None
            admin_key = platform.settings.admin_key_path.read_text().strip()
            with Client(platform.url, admin_key) as admin:
                key = admin.create_tenant("bench", weight=1.0).api_key
            with Client(platform.url, key) as client:
                me0, kids0 = cpu_now()
                submitted = submit_jobs(client, jobs, interval_s)
                statuses = wait_all_ended(client, {s.job_id for s in submitted}, 120 + jobs)
                wait_workers_reaped(platform.node.id)
                me1, kids1 = cpu_now()
                lat = Latencies(
                    not_succeeded=sum(s != "succeeded" for s in statuses.values()),
                    control_cpu_s=(me1 - me0) / jobs,
                    worker_cpu_s=(kids1 - kids0) / jobs,
                )
                collect(client, submitted, lat)
                return lat
        finally:
            platform.stop()
            if platform.node is not None:
                for proc in find_workers(platform.node.id).values():
                    kill_tree(proc.pid, grace_s=2.0)


def latency_part(jobs: int, interval_s: float, reps: int) -> None:
    console.print(f"[bold]latency[/]: baseline, {reps} serial process starts ...")
    base_import, base_cpu = time_process([sys.executable, "-c", WORKER_IMPORT], reps)
    base_pass, _ = time_process([sys.executable, "-c", "pass"], reps)
    console.print(f"[bold]latency[/]: {jobs} sleep jobs, one every {interval_s * 1000:.0f} ms ...")
    lat = run_platform_jobs(jobs, interval_s)
    print_latency(jobs, interval_s, lat, base_import, base_pass)
    print_cpu(interval_s, lat, base_cpu)


def print_latency(
    jobs: int, interval_s: float, lat: Latencies, base_import: list[float], base_pass: list[float]
) -> None:
    table = Table(title=f"submit-to-running, {jobs} jobs, one every {interval_s * 1000:.0f} ms")
    for col in ("", "n", "p50 ms", "p99 ms", "mean ms"):
        table.add_column(col, justify="left" if not col else "right")
    rows = [
        ("create_job round trip", lat.create_call),
        ("job created_at -> placed (scheduler)", lat.created_to_placed),
        ("submit -> placed", lat.to_placed),
        ("placed -> running (process start)", lat.placed_to_running),
        ("[bold]modelfab submit -> running[/]", lat.to_running),
        ("[bold]baseline: python -c 'import worker'[/]", base_import),
        ("context: python -c pass", base_pass),
    ]
    for name, values in rows:
        p50, p99 = percentile(values, 50), percentile(values, 99)
        mean = statistics.fmean(values) if values else float("nan")
        table.add_row(name, str(len(values)), ms(p50), ms(p99), ms(mean))
    console.print(table)
    r50 = percentile(lat.to_running, 50) / percentile(base_import, 50)
    r99 = percentile(lat.to_running, 99) / percentile(base_import, 99)
    console.print(f"ratio submit->running / bare worker start: p50 {r50:.2f}x, p99 {r99:.2f}x")
    if lat.not_succeeded:
        console.print(f"[red]{lat.not_succeeded} jobs did not succeed[/]")


def print_cpu(interval_s: float, lat: Latencies, base_cpu: float) -> None:
    per_job = lat.control_cpu_s + lat.worker_cpu_s
    cores = os.cpu_count() or 1
    console.print(
        f"CPU per job: worker {ms(lat.worker_cpu_s)} ms (bare import {ms(base_cpu)} ms), "
        f"control plane + client {ms(lat.control_cpu_s)} ms; offered load "
        f"{per_job / interval_s:.2f} of {cores} cores"
    )


# -- part 2: decisions per second --------------------------------------------------------


class NoopExecutor(Executor):
    """Starts nothing: launch hands out fake pids and every attempt runs until ended."""

    def __init__(self) -> None:
        self._pids = itertools.count(1_000_000)

    def launch(self, spec: LaunchSpec) -> int:
        return next(self._pids)

    def poll(self, job_id: str) -> ExitInfo | None:
        return None

    def cancel(self, job_id: str, grace_s: float) -> None:
        pass

    def logs(self, job_id: str, attempt: int, offset: int, limit: int) -> LogChunk:
        return LogChunk(text="", offset=offset, next_offset=offset)


@dataclass
class TickTimes:
    """Sums over the ticks of one run; load and decide were timed beside each tick."""

    ticks: int = 0
    placed: int = 0
    tick_s: float = 0.0
    load_s: float = 0.0
    decide_s: float = 0.0
    decided: int = 0
    first_tick_placed: int = 0
    first_tick_s: float = 0.0
    insert_s: float = 0.0

    def rows(self) -> list[tuple[str, str]]:
        n = max(self.ticks, 1)
        apply_s = max(self.tick_s - self.load_s - self.decide_s, 0.0)
        e2e = self.placed / self.tick_s if self.tick_s else float("nan")
        pure = self.decided / self.decide_s if self.decide_s else float("nan")
        return [
            ("bulk insert of the queue, s", f"{self.insert_s:.2f}"),
            ("ticks / decisions applied", f"{self.ticks} / {self.placed:,}"),
            ("first tick: decisions / ms", f"{self.first_tick_placed} / {ms(self.first_tick_s)}"),
            ("tick, mean ms", ms(self.tick_s / n)),
            ("  load_snapshot, mean ms", ms(self.load_s / n)),
            ("  schedule(), mean ms", ms(self.decide_s / n)),
            ("  apply + reap (rest of tick), mean ms", ms(apply_s / n)),
            ("  apply per decision, ms", ms(apply_s / max(self.placed, 1))),
            ("[bold]end-to-end decisions/s[/] (placed / tick time)", f"{e2e:,.0f}"),
            ("[bold]pure schedule() decisions/s[/]", f"{pure:,.0f}"),
            ("ratio end-to-end / pure", f"{e2e / pure:.3f}"),
        ]


@contextlib.contextmanager
def fresh_database(url: str | None, tmp: Path) -> Iterator[str]:
    """A new empty database: SQLite under `tmp`, or a throwaway one on the server of `url`."""
    if url is None:
        yield f"sqlite:///{tmp / 'bench.db'}"
        return
    name = f"modelfab_bench_{secrets.token_hex(4)}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def register_pool(factory: sessionmaker[Session]) -> list[str]:
    """NODES nodes of DEVICES_PER_NODE fake GPUs and CPUS_PER_NODE CPU slots; their ids."""
    ids = []
    for n in range(NODES):
        devices = tuple(
            DeviceSpec(i, "fake", f"fake-gpu-{i}", 16 * 2**30) for i in range(DEVICES_PER_NODE)
        )
        spec = NodeSpec(f"bench-node-{n}", f"bench-{n}", CPUS_PER_NODE, 256 * 2**30, devices)
        register_node(factory, spec, executor="local")
        ids.append(spec.id)
    return ids


def insert_queue(factory: sessionmaker[Session], queued: int, tenants: int, seed: int = 7) -> None:
    """`tenants` tenants (weights 1-4, every fifth capped at 4 GPUs) and `queued` queued jobs."""
    rng = random.Random(seed)
    t0 = time.time() - queued
    tenant_rows = [
        {
            "id": new_id("ten"),
            "name": f"bench-{t}",
            "weight": float(1 + t % 4),
            "max_gpus": 4.0 if t % 5 == 0 else None,
            "created_at": t0,
        }
        for t in range(tenants)
    ]
    job_rows = [
        {
            **JOB_DEFAULTS,
            "id": new_id("job"),
            "tenant_id": tenant_rows[rng.randrange(tenants)]["id"],
            "gpus": rng.choice(GPU_MIX_QUEUE),
            "cpus": rng.choice((0.5, 1.0, 1.5, 2.0)),
            "priority": rng.randrange(4),
            "created_at": t0 + i,
            "queued_at": t0 + i,
        }
        for i in range(queued)
    ]
    with transaction(factory) as session:
        session.execute(insert(Tenant), tenant_rows)
        session.execute(insert(Job), job_rows)


def end_running(factory: sessionmaker[Session], count: int) -> int:
    """End the `count` oldest running attempts as succeeded (frees their capacity)."""
    with transaction(factory) as session:
        jobs = session.scalars(
            select(Job)
            .where(Job.status == lifecycle.RUNNING)
            .order_by(Job.started_at, Job.id)
            .limit(count)
        ).all()
        for job in jobs:
            lifecycle.end_attempt(session, job, outcome=lifecycle.SUCCEEDED, at=time.time())
    return len(jobs)


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def drive_ticks(
    factory: sessionmaker[Session], node_ids: list[str], ticks: int, free_per_tick: int
) -> TickTimes:
    """Tick `ticks` times; before each, time load_snapshot and schedule on the same state."""
    config = SchedulerConfig(api_url="http://unused", usage_window_s=USAGE_WINDOW_S)
    scheduler = Scheduler(factory, NoopExecutor(), node_ids=node_ids, config=config)
    out = TickTimes()
    for n in range(ticks):
        if n:
            end_running(factory, free_per_tick)
        snap, load_s = timed(partial(_load, factory, node_ids))
        placements, decide_s = timed(partial(schedule, snap.pending, snap.nodes, snap.tenants))
        stats, tick_s = timed(scheduler.tick)
        if n == 0:
            out.first_tick_placed, out.first_tick_s = stats.placed, tick_s
        out.ticks += 1
        out.placed += stats.placed
        out.tick_s += tick_s
        out.load_s += load_s
        out.decide_s += decide_s
        out.decided += len(placements)
    return out


def _load(factory: sessionmaker[Session], node_ids: list[str]) -> Snapshot:
    with factory() as session:
        return load_snapshot(session, node_ids=node_ids, usage_since=time.time() - USAGE_WINDOW_S)


def throughput_one(
    url: str | None, queued: int, tenants: int, ticks: int, free_per_tick: int
) -> TickTimes:
    """Run the throughput part on a fresh database (SQLite when `url` is None)."""
    with (
        tempfile.TemporaryDirectory(prefix="modelfab-bench-") as tmp,
        fresh_database(url, Path(tmp)) as db_url,
    ):
        engine = make_engine(db_url)
        try:
            migrate.upgrade(engine)
            factory = make_sessionmaker(engine)
            node_ids = register_pool(factory)
            _, insert_s = timed(partial(insert_queue, factory, queued, tenants))
            times = drive_ticks(factory, node_ids, ticks, free_per_tick)
        finally:
            engine.dispose()
    times.insert_s = insert_s
    return times


def throughput_part(
    url: str | None, queued: int, tenants: int, ticks: int, free_per_tick: int
) -> None:
    title = (
        f"decisions/s, {queued:,} queued across {tenants} tenants, "
        f"{NODES} nodes x {DEVICES_PER_NODE} GPUs x {CPUS_PER_NODE:g} CPUs"
    )
    columns: dict[str, list[tuple[str, str]]] = {}
    for backend_url in [None] + ([url] if url else []):
        name = "sqlite" if backend_url is None else make_url(backend_url).get_backend_name()
        console.print(
            f"[bold]throughput[/] ({name}): {queued:,} queued jobs, {tenants} tenants, "
            f"{ticks} ticks, {free_per_tick} jobs ended between ticks ..."
        )
        columns[name] = throughput_one(backend_url, queued, tenants, ticks, free_per_tick).rows()
    table = Table(title=title)
    table.add_column("")
    for name in columns:
        table.add_column(name, justify="right")
    for i, (label, _) in enumerate(next(iter(columns.values()))):
        table.add_row(label, *(rows[i][1] for rows in columns.values()))
    console.print(table)


# -- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--part", choices=("latency", "throughput", "all"), default="all")
    p.add_argument("--jobs", type=int, help="latency: jobs to submit (200; quick 40)")
    p.add_argument(
        "--interval-ms", type=float, default=400.0, help="latency: ms between submissions (400)"
    )
    p.add_argument("--reps", type=int, help="latency: baseline process starts (50; quick 10)")
    p.add_argument("--queued", type=int, help="throughput: queued jobs (10000; quick 2000)")
    p.add_argument("--tenants", type=int, default=20, help="throughput: tenants (20)")
    p.add_argument("--ticks", type=int, help="throughput: scheduler ticks (30; quick 10)")
    p.add_argument(
        "--free-per-tick", type=int, default=50, help="throughput: jobs ended between ticks (50)"
    )
    p.add_argument(
        "--database-url", help="throughput: also run on this PostgreSQL server (fresh database)"
    )
    p.add_argument("--quick", action="store_true", help="small sizes; under 30 s")
    args = p.parse_args(argv)
    quick = args.quick
    args.jobs = args.jobs or (40 if quick else 200)
    args.reps = args.reps or (10 if quick else 50)
    args.queued = args.queued or (2_000 if quick else 10_000)
    args.ticks = args.ticks or (10 if quick else 30)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    load1, _, _ = os.getloadavg()
    console.print(f"{os.cpu_count()} cores, load average {load1:.2f} at start (1 min)")
    if args.part in ("latency", "all"):
        latency_part(args.jobs, args.interval_ms / 1000, args.reps)
    if args.part in ("throughput", "all"):
        throughput_part(
            args.database_url, args.queued, args.tenants, args.ticks, args.free_per_tick
        )
    load1, _, _ = os.getloadavg()
    console.print(f"done in {time.monotonic() - start:.0f} s; load average {load1:.2f} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())

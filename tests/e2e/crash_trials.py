"""Crash trials: `modelfab up` killed with SIGKILL at random moments while a team submits
jobs and calls an endpoint, then an audit of what the database holds.

    python -m tests.e2e.crash_trials --trials 20                       # SQLite
    python -m tests.e2e.crash_trials --trials 20 --database postgresql # a throwaway database
    python -m tests.e2e.crash_trials --trials 0 --replica-kills 5      # replica kills only

Setup: a control plane (`--fake-gpus 2 --cpus 4`), a tenant, a tiny `image-classification`
model trained by a real job, and an endpoint of one replica. Then, for each trial, two
client threads keep working while the main thread waits a random 0.3-4 s, kills the
control plane with SIGKILL, waits a random 0-1 s and starts it again:

- a job submitter sends `sleep` jobs (0-1.5 s, 0.5 CPU) through `Client.create_job`, which
  sends an `Idempotency-Key` and retries on connection errors, and notes each job id;
- a caller POSTs one image to the endpoint every 50 ms and counts the answers.

Workers and replicas outlive the control plane and are re-adopted. After the last trial the
jobs are waited for, the control plane is stopped with SIGTERM (which flushes the usage
journal), and the database is read directly:

- lost: a job the client was given an id for that the database does not hold;
- duplicated: a job the database holds that no client call was answered with (beyond the
  calls that gave up), or one whose worker started more than once;
- stuck: a job not ended 180 s after the last restart;
- job usage missing / doubled: a job attempt without its `cpu_seconds` record or billed
  less than it slept, or with more than one record; inflated: one billed more than 3 s over
  what it slept (an outage billed);
- request usage missing / doubled: fewer requests metered than answered 200, or more than
  answered 200 plus those whose connection broke after they were sent (those may or may
  not have been served; they are printed as in doubt).

Then the replica kills: with the endpoint at 1 replica, and again at 2, a closed loop of 4
callers runs while one replica is killed with SIGKILL `--replica-kills` times; it prints
the requests that failed and the longest time without an answer.

Exit status 0 when every count is zero."""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import random
import secrets
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from PIL import Image
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session

from modelfab.client import TERMINAL, ApiError, Client, Unreachable
from modelfab.compute.executors.local.process import find_workers
from modelfab.db.models import Job, JobEvent, Tenant, UsageRecord
from tests.e2e.helpers import UpProcess, eventually

TENANT = "crash"
ENDPOINT = "crash"
TINY = {"base_model": "tiny-cnn", "image_size": 32, "batch_size": 8, "augment": False}
STUCK_AFTER_S = 180.0
INFLATED_S = 3.0
SLEEP_CPUS = 0.5


@dataclass
class Load:
    """What the client threads did, counted as they went."""

    job_ids: dict[str, float] = field(default_factory=dict)  # id -> seconds it sleeps
    submits_given_up: int = 0
    submit_errors: Counter[str] = field(default_factory=Counter)
    answered: int = 0
    refused: int = 0  # connection refused: never reached the gateway
    in_doubt: int = 0  # the connection broke after the request was sent
    not_ok: Counter[int] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


def submitter(url: str, key: str, load: Load, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    # Retries every 0.5 s at most, for about 30 s: a restart takes about 5 s here.
    client = Client(
        url, key, timeout_s=30, create_retries=60, retry_backoff_s=0.1, max_backoff_s=0.5
    )
    with client:
        while not stop.is_set():
            seconds = round(rng.uniform(0, 1.5), 2)
            try:
                job = client.create_job("sleep", params={"seconds": seconds}, cpus=SLEEP_CPUS)
            except Unreachable:
                load.submits_given_up += 1
            except ApiError as exc:
                load.submit_errors[f"{exc.status} {exc.code}"] += 1
            else:
                load.job_ids[job.id] = seconds
            stop.wait(rng.uniform(0.2, 0.6))


def caller(
    url: str, key: str, image: bytes, load: Load, stop: threading.Event, pause_s: float
) -> None:
    """POSTs one image at a time; counts what came back."""
    path = f"/v1/endpoints/{ENDPOINT}/predict"
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        while not stop.is_set():
            try:
                resp = http.post(path, files=[("file", ("part.png", image, "image/png"))])
            except httpx.ConnectError:
                with load.lock:
                    load.refused += 1
                stop.wait(0.05)
                continue
            except httpx.TransportError:
                with load.lock:
                    load.in_doubt += 1
                continue
            with load.lock:
                if resp.status_code == 200:
                    load.answered += 1
                else:
                    load.not_ok[resp.status_code] += 1
            stop.wait(pause_s)


def stripes_png(seed: int, side: int = 40) -> bytes:
    rng = random.Random(seed)
    img = Image.new("RGB", (side, side), (rng.randint(0, 80),) * 3)
    for k in range(0, side, 8):
        for x in range(side):
            for w in range(3):
                if k + w < side:
                    img.putpixel((x, k + w), (230, 230, 230))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def setup(server: UpProcess, work: Path) -> tuple[str, bytes]:
    """A tenant, a model trained by a real job and a ready endpoint; returns the key."""
    from tests.e2e.test_image_classification import stripes

    admin = Client(server.url, (server.home / "admin.key").read_text().strip())
    key = admin.create_tenant(TENANT).api_key
    team = Client(server.url, key)
    team.create_dataset(
        "stripes", stripes(work / "stripes", per_class=8), task="image-classification"
    )
    job = team.create_job(
        "image-classification", dataset="stripes", params={**TINY, "epochs": 1}, cpus=1
    )
    done = team.wait_job(job.id, timeout_s=300)
    if done.status != "succeeded":
        raise SystemExit(f"the training job {done.status}: {done.error}")
    team.create_endpoint(ENDPOINT, model="stripes", cpus=0.5)
    team.wait_endpoint(ENDPOINT, timeout_s=120)
    return key, stripes_png(seed=1)


@dataclass
class Audit:
    jobs: int
    lost: int
    duplicated: int
    stuck: int
    usage_missing: int
    usage_doubled: int
    usage_inflated: int
    requests_metered: float
    requests_missing: int
    requests_doubled: int

    def failures(self) -> int:
        return (
            self.lost
            + self.duplicated
            + self.stuck
            + self.usage_missing
            + self.usage_doubled
            + self.usage_inflated
            + self.requests_missing
            + self.requests_doubled
        )


def audit(database_url: str, load: Load) -> Audit:
    engine = create_engine(database_url)
    try:
        with Session(engine) as s:
            tenant_id = s.scalar(select(Tenant.id).where(Tenant.name == TENANT))
            jobs = {
                j.id: j
                for j in s.scalars(
                    select(Job).where(Job.tenant_id == tenant_id, Job.recipe == "sleep")
                )
            }
            starts = Counter(
                s.scalars(
                    select(JobEvent.job_id).where(
                        JobEvent.job_id.in_(list(jobs)),
                        JobEvent.message.like("Attempt % started %"),
                    )
                )
            )
            records: dict[str, list[UsageRecord]] = {}
            for r in s.scalars(
                select(UsageRecord).where(
                    UsageRecord.ref_id.in_(list(jobs)), UsageRecord.meter == "cpu_seconds"
                )
            ):
                records.setdefault(r.ref_id, []).append(r)
            metered = s.scalar(
                select(func.coalesce(func.sum(UsageRecord.quantity), 0.0)).where(
                    UsageRecord.tenant_id == tenant_id, UsageRecord.meter == "requests"
                )
            )
    finally:
        engine.dispose()
    lost = sum(1 for job_id in load.job_ids if job_id not in jobs)
    unasked = sum(1 for job_id in jobs if job_id not in load.job_ids)
    ran_twice = sum(1 for job in jobs.values() if job.attempt > 1 or starts[job.id] > 1)
    stuck = sum(1 for job in jobs.values() if job.status not in TERMINAL)
    missing = doubled = inflated = 0
    for job in jobs.values():
        if job.status not in TERMINAL or job.attempt == 0:
            continue
        rows = records.get(job.id, [])
        billed_s = sum(r.quantity for r in rows) / SLEEP_CPUS
        slept_s = load.job_ids.get(job.id, 0.0)
        missing += len(rows) < job.attempt or billed_s < slept_s
        doubled += len(rows) > job.attempt
        if billed_s > slept_s + INFLATED_S:
            inflated += 1
            print(f"  {job.id} slept {load.job_ids.get(job.id)} s, billed {billed_s:.1f} s")
    metered = float(metered or 0.0)
    return Audit(
        jobs=len(jobs),
        lost=lost,
        duplicated=max(0, unasked - load.submits_given_up) + ran_twice,
        stuck=stuck,
        usage_missing=missing,
        usage_doubled=doubled,
        usage_inflated=inflated,
        requests_metered=metered,
        requests_missing=max(0, load.answered - int(metered)),
        requests_doubled=max(0, int(metered) - load.answered - load.in_doubt),
    )


def wait_jobs(url: str, key: str, job_ids: list[str]) -> None:
    deadline = time.monotonic() + STUCK_AFTER_S
    with Client(url, key) as client:
        pending = set(job_ids)
        while pending and time.monotonic() < deadline:
            jobs = client.list_jobs(limit=1000)
            pending -= {j.id for j in jobs if j.status in TERMINAL}
            if pending:
                time.sleep(0.5)


def crash_trials(
    server: UpProcess, key: str, image: bytes, trials: int, seed: int, log: bool = True
) -> Audit:
    rng = random.Random(seed)
    load, stop = Load(), threading.Event()
    threads = [
        threading.Thread(target=submitter, args=(server.url, key, load, stop, seed), daemon=True),
        threading.Thread(
            target=caller, args=(server.url, key, image, load, stop, 0.05), daemon=True
        ),
    ]
    for t in threads:
        t.start()
    try:
        for n in range(1, trials + 1):
            after = rng.uniform(0.3, 4.0)
            time.sleep(after)
            submitted = len(load.job_ids)
            server.kill9()
            down = rng.uniform(0.0, 1.0)
            time.sleep(down)
            restart_s = server.start()
            if log:
                print(
                    f"trial {n:3d}: killed {after:4.1f} s after start, {submitted} jobs so far;"
                    f" down {down:.1f} s, restart took {restart_s:.1f} s",
                    flush=True,
                )
        time.sleep(2.0)  # let the last restart serve a little
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    wait_jobs(server.url, key, list(load.job_ids))
    server.stop()
    result = audit(server.database_url, load)
    server.start()  # the replica kills need it again
    if log:
        print_audit(trials, load, result)
    return result


def print_audit(trials: int, load: Load, a: Audit) -> None:
    print(
        f"\n{trials} kills · {a.jobs} jobs ({load.submits_given_up} submits gave up, "
        f"errors {dict(load.submit_errors) or 'none'})"
    )
    print(f"  jobs lost {a.lost} · duplicated {a.duplicated} · stuck {a.stuck}")
    print(
        f"  job usage missing {a.usage_missing} · doubled {a.usage_doubled} · "
        f"billed > {INFLATED_S:g} s over its run {a.usage_inflated}"
    )
    print(
        f"  requests answered {load.answered} · metered {a.requests_metered:g} · in doubt "
        f"{load.in_doubt} · refused while down {load.refused} · other {dict(load.not_ok)}"
    )
    print(f"  request usage missing {a.requests_missing} · doubled {a.requests_doubled}")


@dataclass
class ReplicaKills:
    replicas: int
    kills: int
    requests: int
    failed: int
    longest_gap_s: float


def replica_kills(
    server: UpProcess, key: str, image: bytes, replicas: int, kills: int
) -> ReplicaKills:
    team = Client(server.url, key)
    team.update_endpoint(ENDPOINT, replicas=replicas)
    eventually(
        lambda: team.get_endpoint(ENDPOINT).ready_replicas == replicas,
        timeout_s=120,
        what=f"{replicas} ready replicas",
    )
    outcomes: list[tuple[float, bool]] = []
    lock, stop = threading.Lock(), threading.Event()

    def loop() -> None:
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:
            while not stop.is_set():
                try:
                    ok = (
                        http.post(
                            f"/v1/endpoints/{ENDPOINT}/predict",
                            files=[("file", ("p.png", image, "image/png"))],
                        ).status_code
                        == 200
                    )
                except httpx.TransportError:
                    ok = False
                with lock:
                    outcomes.append((time.monotonic(), ok))
                if not ok:
                    time.sleep(0.05)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(kills):
            time.sleep(1.5)
            endpoint = team.get_endpoint(ENDPOINT)
            victim = random.choice([r.job_id for r in endpoint.replica_jobs if r.ready])
            for (job_id, _), proc in find_workers(server.node_id()).items():
                if job_id == victim:
                    proc.send_signal(signal.SIGKILL)
            eventually(
                lambda v=victim: _replaced(team, v, replicas),
                timeout_s=120,
                what="the replica to be replaced",
            )
            time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    return ReplicaKills(
        replicas, kills, len(outcomes), sum(not ok for _, ok in outcomes), _longest_gap(outcomes)
    )


def _replaced(team: Client, victim: str, replicas: int) -> bool:
    endpoint = team.get_endpoint(ENDPOINT)
    ready = [r for r in endpoint.replica_jobs if r.ready]
    return len(ready) == replicas and all(r.job_id != victim or r.attempt > 1 for r in ready)


def _longest_gap(outcomes: list[tuple[float, bool]]) -> float:
    """The longest time between two successive answered requests."""
    times = sorted(t for t, ok in outcomes if ok)
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


@contextlib.contextmanager
def throwaway_postgres(url: str) -> Iterator[str]:
    name = f"modelfab_crash_{secrets.token_hex(4)}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.rpartition("/")[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def run(
    database_url: str, work: Path, trials: int, replica_kill_count: int, seed: int
) -> tuple[Audit, list[ReplicaKills]]:
    home = work / "home"
    home.mkdir(parents=True)
    server = UpProcess(home, database_url)
    try:
        server.start()
        key, image = setup(server, work)
        result = crash_trials(server, key, image, trials, seed)
        kills = (
            [replica_kills(server, key, image, n, replica_kill_count) for n in (1, 2)]
            if replica_kill_count
            else []
        )
        for k in kills:
            print(
                f"replica kills at {k.replicas} replica(s): {k.kills} kills, {k.requests} "
                f"requests, {k.failed} failed, longest gap {k.longest_gap_s:.1f} s"
            )
        return result, kills
    finally:
        server.cleanup()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=3, help="control-plane kills (default 3)")
    p.add_argument("--replica-kills", type=int, default=2, help="kills per replica count")
    p.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    p.add_argument(
        "--postgres-url",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
        help="a server where a throwaway database is created and dropped",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="modelfab-crash-") as tmp:
        work = Path(tmp)
        if args.database == "sqlite":
            result, _ = run(
                f"sqlite:///{work / 'modelfab.db'}",
                work,
                args.trials,
                args.replica_kills,
                args.seed,
            )
        else:
            with throwaway_postgres(args.postgres_url) as url:
                result, _ = run(url, work, args.trials, args.replica_kills, args.seed)
    return 1 if result.failures() else 0


if __name__ == "__main__":
    raise SystemExit(main())

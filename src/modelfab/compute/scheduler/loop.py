"""The scheduler loop: load -> decide -> apply, one transaction per decision, and no
process or network call inside a transaction.

A tick (1) reaps attempts that ended and passes on cancel requests, (2) places pending
jobs with the pure policy and launches them. `recover()` runs once at start: attempts still
running are re-adopted, lost ones are re-queued, strays are killed, so no job runs twice.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from modelfab.compute import lifecycle
from modelfab.compute.executors.base import Executor, ExitInfo, LaunchSpec, Reattachable
from modelfab.compute.pool import heartbeat
from modelfab.compute.scheduler.policy import Placement, schedule
from modelfab.compute.scheduler.snapshot import load_snapshot
from modelfab.compute.status import JobStatus
from modelfab.db.engine import transaction
from modelfab.db.models import Job
from modelfab.ids import hash_secret

logger = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 10.0


@dataclass(frozen=True)
class SchedulerConfig:
    api_url: str
    interval_s: float = 0.5
    cancel_grace_s: float = 5.0
    usage_window_s: float = 7 * 86400


@dataclass
class TickStats:
    placed: int = 0
    ended: int = 0


class Scheduler:
    def __init__(
        self,
        factory: sessionmaker[Session],
        executor: Executor,
        *,
        node_ids: Collection[str],
        config: SchedulerConfig,
        clock: Callable[[], float] = time.time,
    ):
        self.factory = factory
        self.executor = executor
        self.node_ids = list(node_ids)
        self.config = config
        self.clock = clock
        self._running: dict[str, int] = {}  # job id -> attempt, for attempts this process tracks
        self._cancelling: set[tuple[str, int]] = set()
        self._wake = threading.Event()
        self._last_heartbeat = 0.0

    def wake(self) -> None:
        """Ask for a tick soon (new work queued, capacity freed, a cancel requested)."""
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Tick until `stop` is set; errors are logged and the loop goes on."""
        while not stop.is_set():
            try:
                self.tick()
            except Exception:
                logger.exception("scheduler tick failed")
            self._wake.wait(self.config.interval_s)
            self._wake.clear()

    def tick(self) -> TickStats:
        stats = TickStats(ended=self._reap())
        stats.placed = self._place()
        if self.clock() - self._last_heartbeat > HEARTBEAT_EVERY_S:
            for node_id in self.node_ids:
                heartbeat(self.factory, node_id)
            self._last_heartbeat = self.clock()
        return stats

    # -- reap ---------------------------------------------------------------------------

    def _reap(self) -> int:
        self._send_cancels()
        ended = 0
        for job_id, attempt in list(self._running.items()):
            info = self.executor.poll(job_id)
            if info is not None:
                self._running.pop(job_id, None)
                self._cancelling.discard((job_id, attempt))
                self._on_exit(job_id, attempt, info)
                ended += 1
        return ended

    def _send_cancels(self) -> None:
        with self.factory() as session:
            ids = session.scalars(
                select(Job.id).where(
                    Job.status == JobStatus.RUNNING,
                    Job.cancel_requested.is_(True),
                    Job.node_id.in_(self.node_ids),
                )
            ).all()
        for job_id in ids:
            key = (job_id, self._running.get(job_id, -1))
            if job_id in self._running and key not in self._cancelling:
                self._cancelling.add(key)
                logger.info("cancelling job %s", job_id)
                self.executor.cancel(job_id, self.config.cancel_grace_s)

    def _on_exit(self, job_id: str, attempt: int, info: ExitInfo) -> None:
        """The attempt's process ended. If the worker did not report, the attempt failed."""
        with transaction(self.factory) as session:
            job = session.get(Job, job_id, with_for_update=True)
            if job is None or job.status != JobStatus.RUNNING or job.attempt != attempt:
                return  # the worker reported already (or the job moved on)
            reason = "worker exited without reporting" if info.ok else f"worker {info.reason}"
            lifecycle.end_attempt(
                session,
                job,
                outcome=JobStatus.CANCELLED if job.cancel_requested else JobStatus.FAILED,
                at=self.clock(),
                error={"code": "process_exited", "message": reason, "exit_code": info.code},
                retryable=True,
            )
        logger.info("job %s attempt %d ended: %s", job_id, attempt, info.reason)

    # -- place --------------------------------------------------------------------------

    def _place(self) -> int:
        with self.factory() as session:
            snap = load_snapshot(
                session,
                node_ids=self.node_ids,
                usage_since=self.clock() - self.config.usage_window_s,
            )
        if not snap.pending:
            return 0
        pids: list[tuple[str, int, int]] = []
        for placement in schedule(snap.pending, snap.nodes, snap.tenants):
            token = secrets.token_urlsafe(32)
            attempt = self._apply(placement, token)
            pid = None if attempt is None else self._launch(placement, attempt, token)
            if attempt is not None and pid is not None:
                pids.append((placement.job_id, attempt, pid))
        self._record_pids(pids)
        return len(pids)

    def _apply(self, p: Placement, token: str) -> int | None:
        """Claim the job for `p` in one transaction; None if it is no longer queued."""
        with transaction(self.factory) as session:
            return lifecycle.claim(
                session,
                p.job_id,
                node_id=p.node_id,
                cuda_visible_devices=p.cuda_visible_devices,
                devices=p.devices,
                token_hash=hash_secret(token),
                at=self.clock(),
            )

    def _launch(self, p: Placement, attempt: int, token: str) -> int | None:
        """Start the claimed attempt and return its pid; on failure end it (retryable)."""
        spec = LaunchSpec(p.job_id, attempt, token, p.cuda_visible_devices, self.config.api_url)
        try:
            pid = self.executor.launch(spec)
        except OSError as exc:
            logger.exception("could not launch job %s", p.job_id)
            with transaction(self.factory) as session:
                job = session.get(Job, p.job_id, with_for_update=True)
                if job is not None and job.status == JobStatus.RUNNING and job.attempt == attempt:
                    lifecycle.end_attempt(
                        session,
                        job,
                        outcome=JobStatus.FAILED,
                        at=self.clock(),
                        error={"code": "launch_failed", "message": str(exc)},
                        retryable=True,
                    )
            return None
        self._running[p.job_id] = attempt
        return pid

    def _record_pids(self, pids: list[tuple[str, int, int]]) -> None:
        """One transaction for the tick's pids: they are informational (recovery finds
        workers by command line), so they need not commit with each claim."""
        if not pids:
            return
        with transaction(self.factory) as session:
            for job_id, attempt, pid in pids:
                session.execute(
                    update(Job).where(Job.id == job_id, Job.attempt == attempt).values(pid=pid)
                )

    # -- recover ------------------------------------------------------------------------

    def recover(self) -> None:
        """Once at start: re-adopt live attempts, re-queue lost ones, kill strays."""
        with self.factory() as session:
            jobs = session.execute(
                select(Job.id, Job.attempt, Job.status).where(
                    (Job.status == JobStatus.VALIDATING)
                    | ((Job.status == JobStatus.RUNNING) & Job.node_id.in_(self.node_ids))
                )
            ).all()
        live: dict[str, int] = {}
        if isinstance(self.executor, Reattachable):
            live = self.executor.running_attempts()
        for job_id, attempt, status in jobs:
            if status == JobStatus.VALIDATING:
                self._requeue_validating(job_id)
            elif live.get(job_id) == attempt and self._adopt(job_id, attempt):
                live.pop(job_id)
            else:
                self._lost(job_id, attempt)
        for job_id, attempt in live.items():
            assert isinstance(self.executor, Reattachable)
            self.executor.kill_stray(job_id, attempt)
        self.wake()

    def _adopt(self, job_id: str, attempt: int) -> bool:
        assert isinstance(self.executor, Reattachable)
        if not self.executor.adopt(job_id, attempt):
            return False
        self._running[job_id] = attempt
        with transaction(self.factory) as session:
            job = session.get(Job, job_id)
            if job is not None:
                lifecycle.add_event(
                    session, job, "Control plane restarted; attempt re-adopted", at=self.clock()
                )
        return True

    def _lost(self, job_id: str, attempt: int) -> None:
        with transaction(self.factory) as session:
            job = session.get(Job, job_id, with_for_update=True)
            if job is None or job.status != JobStatus.RUNNING or job.attempt != attempt:
                return
            lifecycle.requeue_lost(session, job, self.clock())
        logger.warning("job %s attempt %d was lost; re-queued", job_id, attempt)

    def _requeue_validating(self, job_id: str) -> None:
        """A job the last control plane validated but did not queue: queue it now."""
        with transaction(self.factory) as session:
            job = session.get(Job, job_id, with_for_update=True)
            if job is not None and job.status == JobStatus.VALIDATING:
                lifecycle.admit(session, job, self.clock())

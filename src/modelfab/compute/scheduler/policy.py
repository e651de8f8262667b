"""Placement policy of the scheduler: a pure function from a snapshot to placements.

The scheduler loop loads a snapshot (pending jobs, nodes with their free capacity,
tenants with quotas and usage), calls `schedule()`, and applies each returned
`Placement` in its own transaction, in the order returned. Nothing here touches the
database, the clock or randomness: the same snapshot always gives the same placements.

Order. Jobs are considered by priority, higher first. Among equal priority the tenant
with the smallest `fair_share()` goes next; a tenant's share is recomputed as its jobs
are admitted within the call, so two tenants of equal weight alternate and a tenant of
weight 2 gets about twice the admissions of one of weight 1. Remaining ties go to the
older job (smaller `seq`). Within one tenant, jobs go by (priority desc, seq asc).

Best-effort FIFO (as Kueue's BestEffortFIFO). A job that does not fit -- over its
tenant's quota, or no single node has the capacity -- is skipped for this call and later
jobs may still be placed. That keeps the pool busy, at a price: nothing is reserved for a
skipped job, so a large one (say 8 whole GPUs on one node) can starve while a stream of
smaller jobs, even of lower priority, keeps taking the capacity that frees up. A higher
priority makes a job be considered first but holds no capacity for it; until
reservations exist, draining a node is the operator's remedy.

Placement. A job runs on one node with enough free cpus and memory, and:
  - ``gpus == 0``: no device; best fit = the node with the least free cpus that fits.
  - ``0 < gpus < 1``: one device with at least that fraction free; best fit = the device
    with the smallest free fraction that fits (packs fractions onto shared devices).
  - ``gpus = n >= 1`` (whole): n wholly free devices on ONE node, all or nothing; best
    fit = the node with the fewest wholly free devices that still has n; lowest indices.
Ties go to the earlier node (input order), then the lower device index. Capacity taken by
a placement is visible to the later ones of the same call; no device is ever given more
than its free fraction, no node more than its free cpus or memory.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

CPU_SLOT_GPU_EQUIVALENT: float = 1 / 16
"""A CPU slot costs this many GPUs in fair-share accounting."""

FAIR_SHARE_ALPHA: float = 3600.0
"""Seconds of past usage that holding one GPU now weighs like (one GPU held = one hour)."""

_EPS = 1e-9
"""Tolerance for float sums of fractions (0.1 + 0.2 must fit in 0.3)."""


@dataclass(frozen=True)
class DeviceState:
    """One GPU of a node as the snapshot saw it."""

    device_id: int
    """Globally unique id (database primary key)."""
    index: int
    """Index on its node: what CUDA_VISIBLE_DEVICES gets."""
    free: float
    """Free fraction in [0, 1]; 1.0 = wholly free."""


@dataclass(frozen=True)
class NodeState:
    """One node with its free capacity."""

    node_id: str
    cpus_free: float
    memory_free: int
    """Bytes."""
    devices: tuple[DeviceState, ...]


@dataclass(frozen=True)
class TenantState:
    """A tenant's quotas, weight and what it holds and has used."""

    tenant_id: str
    max_gpus: float | None
    """Quota on concurrently held GPUs (sum of fractions); None = unlimited."""
    max_cpus: float | None
    """Quota on concurrently held cpus; None = unlimited."""
    weight: float
    """Fair-share weight, > 0; a tenant whose weight is not > 0 is not scheduled."""
    used_gpus: float
    """GPUs held by this tenant's running work."""
    used_cpus: float
    """Cpus held by this tenant's running work."""
    usage: float
    """Historical cost in GPU-equivalent seconds (from metering); may be 0."""


@dataclass(frozen=True)
class PendingJob:
    """A job waiting for a placement."""

    job_id: str
    tenant_id: str
    gpus: float
    """0, a fraction in (0, 1), or a whole number >= 1."""
    cpus: float
    """> 0."""
    memory: int
    """Bytes; 0 = no request."""
    priority: int
    """Higher runs first."""
    seq: int
    """Submission order, smaller = older; unique."""


@dataclass(frozen=True)
class Placement:
    """Where one job runs: a node and, for GPU jobs, its devices."""

    job_id: str
    node_id: str
    devices: tuple[tuple[int, float], ...]
    """(device_id, fraction); fraction 1.0 for whole devices; () when gpus == 0."""
    cuda_visible_devices: str
    """Comma-joined device indices on the node, e.g. "0,1", "2", or ""."""


def validate_gpu_request(gpus: float) -> str | None:
    """Return None if `gpus` is a valid request, else a message saying what to use."""
    if not math.isfinite(gpus):
        return f"gpus must be a finite number, got {gpus}"
    if gpus < 0:
        return f"gpus must be 0 or more, got {gpus:g}"
    if gpus > 1 and gpus != int(gpus):
        return f"gpus={gpus:g} is not allowed: use a fraction below 1 or a whole number"
    return None


def never_fits(
    job: PendingJob, nodes_total: Sequence[NodeState], tenant: TenantState
) -> str | None:
    """Return why `job` can never be placed, or None if it could be on an empty pool.

    `nodes_total` are the nodes at full capacity (everything free). The reasons: an
    invalid GPU request, a request above the tenant's max_gpus/max_cpus, more GPUs, cpus
    or memory than any single node has, a fraction with no GPU in the pool, or no single
    node having all of it together.
    """
    return (
        validate_gpu_request(job.gpus)
        or _quota_reason(job, tenant)
        or _capacity_reason(job, nodes_total)
    )


def fair_share(t: TenantState, extra_gpus: float = 0.0, extra_cpus: float = 0.0) -> float:
    """Return the tenant's fair share, in GPU-equivalent seconds per unit of weight.

    ``(usage + FAIR_SHARE_ALPHA * (gpus held + cpus held * CPU_SLOT_GPU_EQUIVALENT)) /
    weight``, where held counts `extra_gpus`/`extra_cpus` on top of the used ones. Smaller
    goes first. Raises ValueError if the weight is not > 0.
    """
    if not t.weight > 0:
        raise ValueError(f"tenant {t.tenant_id}: weight must be > 0, got {t.weight}")
    held = (t.used_gpus + extra_gpus) + (t.used_cpus + extra_cpus) * CPU_SLOT_GPU_EQUIVALENT
    return (t.usage + FAIR_SHARE_ALPHA * held) / t.weight


def schedule(
    pending: Sequence[PendingJob],
    nodes: Sequence[NodeState],
    tenants: Mapping[str, TenantState],
) -> list[Placement]:
    """Return placements for the pending jobs that fit now, in the order they were made.

    Jobs of tenants missing from `tenants` (or whose weight is not > 0) and jobs with an
    invalid request are skipped. The result depends on the order of `nodes` (ties go to
    the earlier node) but not on the order of `pending` or `tenants`. Pure: no I/O.
    """
    queues = _build_queues(pending, tenants)
    pool = _Pool(nodes)
    demand = _Demand.of(queues)
    heap = [queue.key(slot) for slot, queue in enumerate(queues) if not queue.exhausted()]
    heapq.heapify(heap)
    placements: list[Placement] = []
    while heap and pool.could_fit_any(demand):
        slot = heapq.heappop(heap)[3]
        queue = queues[slot]
        job = queue.pop()
        placement = pool.place(job) if queue.admits(job) else None
        if placement is not None:
            queue.admit(job)
            placements.append(placement)
        if not queue.exhausted():
            heapq.heappush(heap, queue.key(slot))
    return placements


def _quota_reason(job: PendingJob, tenant: TenantState) -> str | None:
    """Return why `job` is above the tenant's quotas on its own, or None."""
    if tenant.max_gpus is not None and job.gpus > tenant.max_gpus + _EPS:
        return (
            f"the job asks for {job.gpus:g} GPUs but tenant {tenant.tenant_id} may hold at "
            f"most {tenant.max_gpus:g}: ask for fewer GPUs or raise the tenant's max_gpus"
        )
    if tenant.max_cpus is not None and job.cpus > tenant.max_cpus + _EPS:
        return (
            f"the job asks for {job.cpus:g} cpus but tenant {tenant.tenant_id} may hold at "
            f"most {tenant.max_cpus:g}: ask for fewer cpus or raise the tenant's max_cpus"
        )
    return None


def _capacity_reason(job: PendingJob, nodes: Sequence[NodeState]) -> str | None:
    """Return why no node of the full pool `nodes` could ever hold `job`, or None."""
    if not nodes:
        return "the pool has no nodes: add a node"
    most_cpus = max(node.cpus_free for node in nodes)
    if job.cpus > most_cpus + _EPS:
        return f"the job asks for {job.cpus:g} cpus but the largest node has {most_cpus:g}"
    most_memory = max(node.memory_free for node in nodes)
    if job.memory > most_memory:
        return (
            f"the job asks for {job.memory} bytes of memory but the largest node has {most_memory}"
        )
    most_gpus = max(len(node.devices) for node in nodes)
    if job.gpus > 0 and most_gpus == 0:
        return "the job asks for a GPU but the pool has none: set gpus to 0 or add a GPU node"
    if job.gpus > most_gpus:
        return (
            f"the job asks for {job.gpus:g} GPUs but the largest node has {most_gpus}; a job "
            f"runs on a single node: ask for at most {most_gpus}"
        )
    if not any(_could_ever_hold(node, job) for node in nodes):
        return (
            f"no single node has {job.gpus:g} GPUs, {job.cpus:g} cpus and {job.memory} bytes "
            "of memory together: ask for less of one of them"
        )
    return None


def _could_ever_hold(node: NodeState, job: PendingJob) -> bool:
    """Whether `node`, wholly free, could hold `job`."""
    gpus_ok = math.ceil(job.gpus) <= len(node.devices)
    return gpus_ok and job.cpus <= node.cpus_free + _EPS and job.memory <= node.memory_free


def _is_valid(job: PendingJob, gpu_errors: dict[float, str | None]) -> bool:
    """Whether the job's request is well formed; `gpu_errors` caches validate_gpu_request."""
    if job.gpus not in gpu_errors:
        gpu_errors[job.gpus] = validate_gpu_request(job.gpus)
    return gpu_errors[job.gpus] is None and job.cpus >= 0 and job.memory >= 0


@dataclass(slots=True)
class _Queue:
    """One tenant's schedulable jobs, sorted, and what it was admitted in this call."""

    tenant: TenantState
    jobs: list[PendingJob]
    min_gpus: float
    min_cpus: float
    pos: int = 0
    extra_gpus: float = 0.0
    extra_cpus: float = 0.0

    def key(self, slot: int) -> tuple[int, float, int, int]:
        """Heap key of the queue's head: (-priority, fair share, seq, slot)."""
        head = self.jobs[self.pos]
        share = fair_share(self.tenant, self.extra_gpus, self.extra_cpus)
        return (-head.priority, share, head.seq, slot)

    def pop(self) -> PendingJob:
        """Remove and return the head job."""
        self.pos += 1
        return self.jobs[self.pos - 1]

    def admits(self, job: PendingJob) -> bool:
        """Whether `job` stays within the tenant's quotas on top of what is admitted."""
        gpus_room, cpus_room = self._room()
        return job.gpus <= gpus_room + _EPS and job.cpus <= cpus_room + _EPS

    def admit(self, job: PendingJob) -> None:
        """Count `job` as held by the tenant."""
        self.extra_gpus += job.gpus
        self.extra_cpus += job.cpus

    def exhausted(self) -> bool:
        """Whether no job is left or none could fit in the quota that is left."""
        if self.pos >= len(self.jobs):
            return True
        gpus_room, cpus_room = self._room()
        return gpus_room + _EPS < self.min_gpus or cpus_room + _EPS < self.min_cpus

    def _room(self) -> tuple[float, float]:
        """(GPUs, cpus) the tenant may still be admitted; inf when unlimited."""
        t = self.tenant
        gpus = math.inf if t.max_gpus is None else t.max_gpus - t.used_gpus - self.extra_gpus
        cpus = math.inf if t.max_cpus is None else t.max_cpus - t.used_cpus - self.extra_cpus
        return gpus, cpus


def _build_queues(
    pending: Sequence[PendingJob], tenants: Mapping[str, TenantState]
) -> list[_Queue]:
    """Group the schedulable jobs by tenant, each sorted by (priority desc, seq asc)."""
    by_tenant: dict[str, list[PendingJob]] = {}
    gpu_errors: dict[float, str | None] = {}
    for job in pending:
        tenant = tenants.get(job.tenant_id)
        if tenant is None or not tenant.weight > 0 or not _is_valid(job, gpu_errors):
            continue
        by_tenant.setdefault(job.tenant_id, []).append(job)
    queues = []
    for tenant_id in sorted(by_tenant):
        jobs = sorted(by_tenant[tenant_id], key=lambda j: (-j.priority, j.seq))
        min_gpus = min(job.gpus for job in jobs)
        min_cpus = min(job.cpus for job in jobs)
        queues.append(_Queue(tenants[tenant_id], jobs, min_gpus, min_cpus))
    return queues


@dataclass(frozen=True, slots=True)
class _Demand:
    """The smallest requests of each kind among all schedulable jobs (inf if none)."""

    cpu_only_cpus: float
    gpu_job_cpus: float
    fraction: float
    whole: float

    @staticmethod
    def of(queues: Iterable[_Queue]) -> _Demand:
        """Summarise the jobs of `queues`."""
        cpu_only = gpu_cpus = fraction = whole = math.inf
        for job in (job for queue in queues for job in queue.jobs):
            if job.gpus == 0:
                cpu_only = min(cpu_only, job.cpus)
                continue
            gpu_cpus = min(gpu_cpus, job.cpus)
            if job.gpus < 1:
                fraction = min(fraction, job.gpus)
            else:
                whole = min(whole, job.gpus)
        return _Demand(cpu_only, gpu_cpus, fraction, whole)


@dataclass(slots=True)
class _Node:
    """Working copy of a node: capacity left as placements are made in this call."""

    node_id: str
    cpus: float
    memory: int
    ids: list[int]
    indices: list[int]
    free: list[float]
    whole: int = 0
    max_free: float = 0.0

    @staticmethod
    def of(node: NodeState) -> _Node:
        """Copy `node`, devices sorted by index, free fractions clamped to [0, 1]."""
        devices = sorted(node.devices, key=lambda d: (d.index, d.device_id))
        free = [min(max(d.free, 0.0), 1.0) for d in devices]
        ids = [d.device_id for d in devices]
        indices = [d.index for d in devices]
        working = _Node(node.node_id, node.cpus_free, node.memory_free, ids, indices, free)
        working.refresh()
        return working

    def refresh(self) -> None:
        """Recompute the count of wholly free devices and the largest free fraction."""
        self.whole = sum(1 for f in self.free if f >= 1.0 - _EPS)
        self.max_free = max(self.free, default=0.0)

    def fits(self, job: PendingJob) -> bool:
        """Whether the node has the job's cpus and memory free."""
        return self.cpus + _EPS >= job.cpus and self.memory >= job.memory

    def take(self, job: PendingJob) -> None:
        """Subtract the job's cpus and memory; devices are the caller's business."""
        self.cpus = max(self.cpus - job.cpus, 0.0)
        self.memory -= job.memory
        self.refresh()


class _Pool:
    """The nodes of the snapshot, with pool-wide maxima for O(1) rejections."""

    def __init__(self, nodes: Sequence[NodeState]) -> None:
        self.nodes = [_Node.of(node) for node in nodes]
        # Capacity only shrinks within a call, so a request shape that failed once fails again.
        self._failed: set[tuple[float, float, int]] = set()
        self._refresh()

    def could_fit_any(self, demand: _Demand) -> bool:
        """Whether some job of `demand` might still fit (False means: stop scheduling)."""
        if demand.cpu_only_cpus <= self.max_cpus + _EPS:
            return True
        if demand.gpu_job_cpus > self.max_cpus + _EPS:
            return False
        return demand.fraction <= self.max_free + _EPS or demand.whole <= self.max_whole

    def place(self, job: PendingJob) -> Placement | None:
        """Place `job` on the pool and take its capacity, or return None if it does not fit."""
        shape = (job.gpus, job.cpus, job.memory)
        if shape in self._failed or not self._might_fit(job):
            return None
        if job.gpus == 0:
            placement = _place_cpu_only(self.nodes, job)
        elif job.gpus < 1:
            placement = _place_fraction(self.nodes, job)
        else:
            placement = _place_whole(self.nodes, job, int(job.gpus))
        if placement is None:
            self._failed.add(shape)
        else:
            self._refresh()
        return placement

    def _might_fit(self, job: PendingJob) -> bool:
        """Cheap necessary condition from the pool-wide maxima."""
        if job.cpus > self.max_cpus + _EPS or job.memory > self.max_memory:
            return False
        if job.gpus == 0:
            return True
        if job.gpus < 1:
            return job.gpus <= self.max_free + _EPS
        return job.gpus <= self.max_whole

    def _refresh(self) -> None:
        self.max_cpus = max((n.cpus for n in self.nodes), default=-math.inf)
        self.max_memory = max((n.memory for n in self.nodes), default=-1)
        self.max_free = max((n.max_free for n in self.nodes), default=0.0)
        self.max_whole = max((n.whole for n in self.nodes), default=0)


def _place_cpu_only(nodes: list[_Node], job: PendingJob) -> Placement | None:
    """Best fit: the node with the least free cpus that holds the job."""
    best: _Node | None = None
    for node in nodes:
        if node.fits(job) and (best is None or node.cpus < best.cpus):
            best = node
    if best is None:
        return None
    best.take(job)
    return Placement(job.job_id, best.node_id, (), "")


def _place_fraction(nodes: list[_Node], job: PendingJob) -> Placement | None:
    """Best fit: the device with the smallest free fraction that holds the job's fraction."""
    best: _Node | None = None
    best_pos = -1
    best_free = math.inf
    for node in nodes:
        if node.max_free + _EPS < job.gpus or not node.fits(job):
            continue
        for pos, free in enumerate(node.free):
            if free + _EPS >= job.gpus and free < best_free:
                best, best_pos, best_free = node, pos, free
    if best is None:
        return None
    left = best_free - job.gpus
    best.free[best_pos] = left if left > _EPS else 0.0
    best.take(job)
    device = ((best.ids[best_pos], job.gpus),)
    return Placement(job.job_id, best.node_id, device, str(best.indices[best_pos]))


def _place_whole(nodes: list[_Node], job: PendingJob, count: int) -> Placement | None:
    """Best fit: the node with the fewest wholly free devices that has `count`; lowest indices."""
    best: _Node | None = None
    for node in nodes:
        if node.whole >= count and node.fits(job) and (best is None or node.whole < best.whole):
            best = node
    if best is None:
        return None
    positions = [pos for pos, free in enumerate(best.free) if free >= 1.0 - _EPS][:count]
    for pos in positions:
        best.free[pos] = 0.0
    best.take(job)
    devices = tuple((best.ids[pos], 1.0) for pos in positions)
    visible = ",".join(str(best.indices[pos]) for pos in positions)
    return Placement(job.job_id, best.node_id, devices, visible)

"""The pool as users see it: nodes, devices, what runs where, and free capacity.
Members see their own jobs by id; others' work shows as "other tenant"."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from modelfab.compute.lifecycle import QUEUED, RUNNING
from modelfab.db.models import Device, Job, JobAllocation, Node, Tenant
from modelfab.ids import now
from modelfab.schemas import limits
from modelfab.schemas import pool as wire
from modelfab.services.common import Principal

_GRID_DECIMALS = round(-math.log10(limits.RESOURCE_STEP))


def pool_view(factory: sessionmaker[Session], principal: Principal) -> wire.Pool:
    with factory() as session:
        nodes = session.scalars(select(Node).order_by(Node.id)).all()
        running = session.execute(
            select(Job, Tenant.name)
            .join(Tenant, Tenant.id == Job.tenant_id)
            .where(Job.status == RUNNING)
        ).all()
        allocs = session.execute(
            select(JobAllocation.device_id, JobAllocation.job_id, JobAllocation.fraction)
        ).all()
        devices = session.scalars(select(Device).order_by(Device.node_id, Device.index)).all()
        queued_count = session.scalar(
            select(func.count()).select_from(Job).where(Job.status == QUEUED)
        )
    jobs = {job.id: (job, tenant) for job, tenant in running}
    by_device: dict[int, list[wire.Allocation]] = defaultdict(list)
    for device_id, job_id, fraction in allocs:
        if job_id in jobs:
            who = _who(principal, *jobs[job_id])
            by_device[device_id].append(wire.Allocation(**who.model_dump(), fraction=fraction))
    out_nodes = [_node(n, devices, by_device, jobs, principal) for n in nodes]
    return wire.Pool(
        nodes=out_nodes,
        queued_jobs=queued_count or 0,
        totals=wire.Totals(
            gpus=sum(len(n.devices) for n in out_nodes),
            gpus_free=round(sum(d.free for n in out_nodes for d in n.devices), 4),
            cpus=sum(n.cpus for n in out_nodes),
            cpus_free=_on_grid(sum(n.cpus_free for n in out_nodes)),
        ),
    )


def _on_grid(free: float) -> float:
    """`free` capacity on the requests' grid (`limits.RESOURCE_STEP`) and never below 0:
    float sums of on-grid requests are off by ~1e-15 either way."""
    return max(0.0, round(free, _GRID_DECIMALS))


def _who(principal: Principal, job: Job, tenant: str) -> wire.Holder:
    if principal.is_admin or job.tenant_id == principal.tenant_id:
        return wire.Holder(job_id=job.id, tenant=tenant)
    return wire.Holder(job_id=None, tenant="other tenant")


def _node(
    n: Node,
    devices: Sequence[Device],
    by_device: dict[int, list[wire.Allocation]],
    jobs: dict[str, tuple[Job, str]],
    principal: Principal,
) -> wire.Node:
    here = [j for j, _ in jobs.values() if j.node_id == n.id]
    cpus_used = sum(j.cpus for j in here)
    return wire.Node(
        id=n.id,
        hostname=n.hostname,
        executor=n.executor,
        cpus=n.cpus,
        cpus_free=_on_grid(n.cpus - cpus_used),
        memory_bytes=n.memory_bytes,
        heartbeat_age_s=round(now() - n.heartbeat_at, 1),
        devices=[
            wire.Device(
                index=d.index,
                kind=d.kind,
                name=d.name,
                memory_bytes=d.memory_bytes,
                active=d.active,
                free=round(max(0.0, 1 - sum(a.fraction for a in by_device[d.id])), 4),
                allocations=by_device[d.id],
            )
            for d in devices
            if d.node_id == n.id
        ],
        jobs=[_who(principal, *jobs[j.id]) for j in here if not j.gpus],
    )

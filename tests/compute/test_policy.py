"""Tests of the pure placement policy: properties over random pools plus worked examples."""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfab.compute.scheduler.policy import (
    CPU_SLOT_GPU_EQUIVALENT,
    FAIR_SHARE_ALPHA,
    DeviceState,
    NodeState,
    PendingJob,
    Placement,
    TenantState,
    fair_share,
    never_fits,
    schedule,
    validate_gpu_request,
)

EPS = 1e-6
GIB = 1 << 30


# --------------------------------------------------------------------------- factories


def make_node(
    node_id: str, free: Sequence[float], cpus: float = 64.0, memory: int = 0
) -> NodeState:
    """A node whose devices have the given free fractions; ids are unique per node_id."""
    base = 100 * (sum(map(ord, node_id)) % 1000)
    devices = tuple(DeviceState(base + i, i, f) for i, f in enumerate(free))
    return NodeState(node_id, cpus, memory or 256 * GIB, devices)


def make_tenant(
    tenant_id: str,
    *,
    weight: float = 1.0,
    max_gpus: float | None = None,
    max_cpus: float | None = None,
    usage: float = 0.0,
) -> TenantState:
    return TenantState(tenant_id, max_gpus, max_cpus, weight, 0.0, 0.0, usage)


def make_job(
    seq: int, tenant_id: str, gpus: float = 1.0, cpus: float = 1.0, priority: int = 0
) -> PendingJob:
    return PendingJob(f"j{seq}", tenant_id, gpus, cpus, 0, priority, seq)


def tenants_of(*tenants: TenantState) -> dict[str, TenantState]:
    return {t.tenant_id: t for t in tenants}


# --------------------------------------------------------------------------- strategies


@st.composite
def pools(draw: st.DrawFn) -> list[NodeState]:
    nodes = []
    next_id = 1
    for n in range(draw(st.integers(1, 4))):
        frees = draw(st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, 1.0]), max_size=8))
        devices = tuple(DeviceState(next_id + i, i, f) for i, f in enumerate(frees))
        next_id += len(frees)
        cpus = draw(st.integers(0, 32)) / 2
        memory = draw(st.integers(0, 64)) * GIB
        nodes.append(NodeState(f"n{n}", cpus, memory, devices))
    return nodes


@st.composite
def tenant_maps(draw: st.DrawFn) -> dict[str, TenantState]:
    tenants = {}
    for i in range(draw(st.integers(1, 4))):
        tenants[f"t{i}"] = TenantState(
            tenant_id=f"t{i}",
            max_gpus=draw(st.none() | st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, 4.0])),
            max_cpus=draw(st.none() | st.sampled_from([0.0, 2.0, 4.0, 8.0, 16.0])),
            weight=draw(st.sampled_from([0.5, 1.0, 2.0, 3.0, 4.0])),
            used_gpus=draw(st.sampled_from([0.0, 0.5, 1.0, 2.0])),
            used_cpus=draw(st.sampled_from([0.0, 1.0, 4.0])),
            usage=draw(st.sampled_from([0.0, 100.0, 3600.0, 10_000.0])),
        )
    return tenants


@st.composite
def job_lists(draw: st.DrawFn, tenant_ids: Sequence[str]) -> list[PendingJob]:
    count = draw(st.integers(0, 30))
    seqs = draw(st.permutations(range(count)))
    jobs = []
    for i in range(count):
        jobs.append(
            PendingJob(
                job_id=f"j{i}",
                tenant_id=draw(st.sampled_from([*tenant_ids, "ghost"])),
                gpus=draw(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, 2.0, 3.0])),
                cpus=draw(st.integers(1, 16)) / 2,
                memory=draw(st.sampled_from([0, 1, 4, 16])) * GIB,
                priority=draw(st.integers(0, 3)),
                seq=seqs[i],
            )
        )
    return jobs


@st.composite
def snapshots(
    draw: st.DrawFn,
) -> tuple[list[PendingJob], list[NodeState], dict[str, TenantState]]:
    nodes = draw(pools())
    tenants = draw(tenant_maps())
    jobs = draw(job_lists(sorted(tenants)))
    return jobs, nodes, tenants


# --------------------------------------------------------------------------- reference replay


@dataclass
class PoolModel:
    """An independent model of the pool: free capacity as placements are applied."""

    nodes: list[NodeState]
    cpus: dict[str, float] = field(default_factory=dict)
    memory: dict[str, int] = field(default_factory=dict)
    free: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for node in self.nodes:
            self.cpus[node.node_id] = node.cpus_free
            self.memory[node.node_id] = node.memory_free
            self.free.update({d.device_id: d.free for d in node.devices})

    def node_fits(self, node: NodeState, job: PendingJob) -> bool:
        cpus_ok = self.cpus[node.node_id] + EPS >= job.cpus
        return cpus_ok and self.memory[node.node_id] >= job.memory

    def whole_free(self, node: NodeState) -> list[DeviceState]:
        devices = sorted(node.devices, key=lambda d: d.index)
        return [d for d in devices if self.free[d.device_id] >= 1.0 - EPS]

    def expected(self, job: PendingJob) -> tuple[str, tuple[int, ...]] | None:
        """The best-fit (node_id, device ids) the rules prescribe, or None if nothing fits."""
        fitting = [(i, n) for i, n in enumerate(self.nodes) if self.node_fits(n, job)]
        if job.gpus == 0:
            best = min(fitting, key=lambda p: (self.cpus[p[1].node_id], p[0]), default=None)
            return None if best is None else (best[1].node_id, ())
        if job.gpus < 1:
            candidates = [
                (self.free[d.device_id], i, d.index, n.node_id, d.device_id)
                for i, n in fitting
                for d in n.devices
                if self.free[d.device_id] + EPS >= job.gpus
            ]
            if not candidates:
                return None
            *_, node_id, device_id = min(candidates)
            return node_id, (device_id,)
        count = int(job.gpus)
        options = [(len(self.whole_free(n)), i, n) for i, n in fitting]
        options = [o for o in options if o[0] >= count]
        if not options:
            return None
        node = min(options, key=lambda o: o[:2])[2]
        return node.node_id, tuple(d.device_id for d in self.whole_free(node)[:count])

    def apply(self, job: PendingJob, placement: Placement) -> None:
        self.cpus[placement.node_id] -= job.cpus
        self.memory[placement.node_id] -= job.memory
        for device_id, fraction in placement.devices:
            self.free[device_id] -= fraction


def within_quota(tenant: TenantState, held: tuple[float, float], job: PendingJob) -> bool:
    gpus_ok = (
        tenant.max_gpus is None or tenant.used_gpus + held[0] + job.gpus <= tenant.max_gpus + EPS
    )
    cpus_ok = (
        tenant.max_cpus is None or tenant.used_cpus + held[1] + job.cpus <= tenant.max_cpus + EPS
    )
    return gpus_ok and cpus_ok


def replay(
    pending: Sequence[PendingJob],
    nodes: Sequence[NodeState],
    tenants: Mapping[str, TenantState],
    placements: Sequence[Placement],
) -> None:
    """Walk the jobs in the order rule 1 prescribes and check each decision of `schedule`.

    The next job considered is the minimum of (-priority, tenant's fair share now, seq);
    it must be placed (as the next returned placement, on the best-fit spot) iff it is
    within quota and fits the capacity left by the placements before it.
    """
    model = PoolModel(list(nodes))
    held: dict[str, tuple[float, float]] = defaultdict(lambda: (0.0, 0.0))
    remaining = [j for j in pending if j.tenant_id in tenants]
    returned = iter(placements)
    while remaining:
        job = min(
            remaining,
            key=lambda j: (
                -j.priority,
                fair_share(tenants[j.tenant_id], *held[j.tenant_id]),
                j.seq,
            ),
        )
        remaining.remove(job)
        tenant = tenants[job.tenant_id]
        spot = model.expected(job) if within_quota(tenant, held[job.tenant_id], job) else None
        if spot is None:
            continue
        placement = next(returned, None)
        assert placement is not None and placement.job_id == job.job_id, (
            f"{job} could be placed at {spot} when considered, got {placement}"
        )
        assert (placement.node_id, tuple(d for d, _ in placement.devices)) == spot
        model.apply(job, placement)
        gpus, cpus = held[job.tenant_id]
        held[job.tenant_id] = (gpus + job.gpus, cpus + job.cpus)
    assert next(returned, None) is None, "schedule placed a job the replay would not"


# --------------------------------------------------------------------------- properties


@settings(max_examples=300, deadline=None)
@given(snapshots())
def test_never_over_quota_or_capacity(
    snapshot: tuple[list[PendingJob], list[NodeState], dict[str, TenantState]],
) -> None:
    pending, nodes, tenants = snapshot
    jobs = {j.job_id: j for j in pending}
    placements = schedule(pending, nodes, tenants)

    assert len({p.job_id for p in placements}) == len(placements)
    gpus: Counter[str] = Counter()
    cpus: Counter[str] = Counter()
    node_cpus: Counter[str] = Counter()
    node_memory: Counter[str] = Counter()
    device_use: Counter[int] = Counter()
    for p in placements:
        job = jobs[p.job_id]
        assert job.tenant_id in tenants
        gpus[job.tenant_id] += job.gpus
        cpus[job.tenant_id] += job.cpus
        node_cpus[p.node_id] += job.cpus
        node_memory[p.node_id] += job.memory
        for device_id, fraction in p.devices:
            device_use[device_id] += fraction
    for tenant_id, t in tenants.items():
        if tenant_id not in gpus and tenant_id not in cpus:
            continue  # nothing placed: a tenant already over quota stays so, untouched
        assert t.max_gpus is None or t.used_gpus + gpus[tenant_id] <= t.max_gpus + EPS
        assert t.max_cpus is None or t.used_cpus + cpus[tenant_id] <= t.max_cpus + EPS
    for node in nodes:
        assert node_cpus[node.node_id] <= node.cpus_free + EPS
        assert node_memory[node.node_id] <= node.memory_free
        for d in node.devices:
            assert device_use[d.device_id] <= d.free + EPS
            assert device_use[d.device_id] <= 1.0 + EPS


@settings(max_examples=300, deadline=None)
@given(snapshots())
def test_device_shapes_and_cuda_visible_devices(
    snapshot: tuple[list[PendingJob], list[NodeState], dict[str, TenantState]],
) -> None:
    pending, nodes, tenants = snapshot
    jobs = {j.job_id: j for j in pending}
    by_node = {n.node_id: {d.device_id: d for d in n.devices} for n in nodes}
    touched: set[int] = set()
    for p in schedule(pending, nodes, tenants):
        job = jobs[p.job_id]
        devices = [by_node[p.node_id][device_id] for device_id, _ in p.devices]
        assert p.cuda_visible_devices == ",".join(str(d.index) for d in devices)
        if job.gpus == 0:
            assert p.devices == ()
        elif job.gpus < 1:
            assert p.devices == ((devices[0].device_id, job.gpus),)
        else:
            assert len(devices) == int(job.gpus) == len({d.device_id for d in devices})
            assert all(fraction == 1.0 for _, fraction in p.devices)
            # Wholly free when placed: free in the snapshot and untouched by earlier placements.
            assert all(d.free == 1.0 and d.device_id not in touched for d in devices)
        touched.update(d.device_id for d in devices)


@settings(max_examples=300, deadline=None)
@given(snapshots())
def test_skipped_jobs_could_not_be_placed_when_considered(
    snapshot: tuple[list[PendingJob], list[NodeState], dict[str, TenantState]],
) -> None:
    pending, nodes, tenants = snapshot
    placements = schedule(pending, nodes, tenants)
    replay(pending, nodes, tenants, placements)
    priorities = {j.job_id: j.priority for j in pending}
    returned = [priorities[p.job_id] for p in placements]
    assert returned == sorted(returned, reverse=True)


@settings(max_examples=150, deadline=None)
@given(snapshots(), st.randoms(use_true_random=False))
def test_deterministic_and_independent_of_input_order(
    snapshot: tuple[list[PendingJob], list[NodeState], dict[str, TenantState]],
    rng: random.Random,
) -> None:
    pending, nodes, tenants = snapshot
    first = schedule(pending, nodes, tenants)
    assert schedule(pending, nodes, tenants) == first
    shuffled = list(pending)
    rng.shuffle(shuffled)
    reordered = dict(reversed(list(tenants.items())))
    assert schedule(shuffled, nodes, reordered) == first


# --------------------------------------------------------------------------- examples


def test_fractions_pack_onto_one_device() -> None:
    nodes = [make_node("a", [1.0, 1.0, 1.0])]
    jobs = [make_job(0, "t", 0.5), make_job(1, "t", 0.25), make_job(2, "t", 0.25)]
    placements = schedule(jobs, nodes, tenants_of(make_tenant("t")))
    assert {p.devices[0][0] for p in placements} == {nodes[0].devices[0].device_id}
    assert [p.cuda_visible_devices for p in placements] == ["0", "0", "0"]


def test_fraction_prefers_a_partly_used_device() -> None:
    nodes = [make_node("a", [1.0, 0.5]), make_node("b", [0.25])]
    placements = schedule([make_job(0, "t", 0.5)], nodes, tenants_of(make_tenant("t")))
    assert placements == [Placement("j0", "a", ((nodes[0].devices[1].device_id, 0.5),), "1")]


def test_whole_gpus_never_split_across_nodes() -> None:
    nodes = [make_node("a", [1.0, 0.0]), make_node("b", [0.5, 1.0])]
    assert schedule([make_job(0, "t", 2.0)], nodes, tenants_of(make_tenant("t"))) == []


def test_whole_gpus_best_fit_node_and_lowest_indices() -> None:
    nodes = [make_node("a", [1.0] * 4), make_node("b", [0.0, 1.0, 1.0, 1.0])]
    [placement] = schedule([make_job(0, "t", 2.0)], nodes, tenants_of(make_tenant("t")))
    assert placement.node_id == "b"
    assert placement.cuda_visible_devices == "1,2"


def test_cpu_only_job_goes_to_the_fullest_node_that_fits() -> None:
    nodes = [make_node("a", [], cpus=16), make_node("b", [], cpus=2), make_node("c", [], cpus=4)]
    jobs = [make_job(0, "t", 0.0, cpus=3), make_job(1, "t", 0.0, cpus=2)]
    placements = schedule(jobs, nodes, tenants_of(make_tenant("t")))
    assert [(p.node_id, p.devices, p.cuda_visible_devices) for p in placements] == [
        ("c", (), ""),
        ("b", (), ""),
    ]


def test_equal_weights_split_evenly() -> None:
    nodes = [make_node("a", [1.0] * 5), make_node("b", [1.0] * 5)]
    jobs = [make_job(i, "x" if i < 10 else "y") for i in range(20)]
    placements = schedule(jobs, nodes, tenants_of(make_tenant("x"), make_tenant("y")))
    assert Counter(p.job_id in {f"j{i}" for i in range(10)} for p in placements) == {
        True: 5,
        False: 5,
    }


def test_weights_two_to_one() -> None:
    nodes = [make_node("a", [1.0] * 8), make_node("b", [1.0] * 4)]
    jobs = [make_job(i, "heavy" if i % 2 else "light") for i in range(60)]
    tenants = tenants_of(make_tenant("heavy", weight=2.0), make_tenant("light", weight=1.0))
    by_tenant = {j.job_id: j.tenant_id for j in jobs}
    counts = Counter(by_tenant[p.job_id] for p in schedule(jobs, nodes, tenants))
    assert sum(counts.values()) == 12
    assert abs(counts["heavy"] - 8) <= 1 and abs(counts["light"] - 4) <= 1


def test_past_usage_waits_behind_a_newcomer() -> None:
    nodes = [make_node("a", [1.0])]
    jobs = [make_job(0, "old"), make_job(1, "new")]
    tenants = tenants_of(make_tenant("old", usage=10.0), make_tenant("new"))
    assert [p.job_id for p in schedule(jobs, nodes, tenants)] == ["j1"]


def test_priority_beats_fair_share() -> None:
    nodes = [make_node("a", [1.0])]
    jobs = [make_job(0, "poor"), make_job(1, "rich", priority=1)]
    tenants = tenants_of(make_tenant("poor"), make_tenant("rich", usage=1e9))
    assert [p.job_id for p in schedule(jobs, nodes, tenants)] == ["j1"]


def test_quota_blocks_one_tenant_while_another_proceeds() -> None:
    nodes = [make_node("a", [1.0] * 4)]
    jobs = [make_job(i, "capped") for i in range(3)] + [make_job(i, "free") for i in range(3, 6)]
    tenants = tenants_of(make_tenant("capped", max_gpus=1.0), make_tenant("free"))
    placed = {p.job_id for p in schedule(jobs, nodes, tenants)}
    assert placed == {"j0", "j3", "j4", "j5"}


def test_fractional_quota_sums_with_tolerance() -> None:
    nodes = [make_node("a", [1.0])]
    jobs = [make_job(0, "t", 0.1), make_job(1, "t", 0.2), make_job(2, "t", 0.25)]
    tenants = tenants_of(make_tenant("t", max_gpus=0.3))
    assert [p.job_id for p in schedule(jobs, nodes, tenants)] == ["j0", "j1"]


def test_best_effort_fifo_skips_a_job_that_does_not_fit() -> None:
    nodes = [make_node("a", [1.0, 1.0])]
    jobs = [make_job(0, "t", 4.0, priority=2), make_job(1, "t", 1.0)]
    assert [p.job_id for p in schedule(jobs, nodes, tenants_of(make_tenant("t")))] == ["j1"]


def test_jobs_of_unknown_tenants_and_invalid_requests_are_skipped() -> None:
    nodes = [make_node("a", [1.0] * 4)]
    jobs = [make_job(0, "ghost"), make_job(1, "t", 1.5), make_job(2, "t", math.nan)]
    assert schedule(jobs, nodes, tenants_of(make_tenant("t"))) == []


def test_validate_gpu_request() -> None:
    for ok in (0, 0.25, 0.5, 1, 2.0, 8):
        assert validate_gpu_request(ok) is None
    message = validate_gpu_request(1.5)
    assert message is not None and "fraction below 1 or a whole number" in message
    for bad in (-1.0, -0.5, math.nan, math.inf):
        assert validate_gpu_request(bad) is not None


def test_fair_share_formula() -> None:
    t = TenantState("t", None, None, 2.0, 1.0, 16.0, 100.0)
    expected = (100.0 + FAIR_SHARE_ALPHA * (1.5 + 16.0 * CPU_SLOT_GPU_EQUIVALENT)) / 2.0
    assert fair_share(t, extra_gpus=0.5) == pytest.approx(expected)
    assert fair_share(t) < fair_share(t, extra_cpus=1.0)
    with pytest.raises(ValueError):
        fair_share(TenantState("z", None, None, 0.0, 0.0, 0.0, 0.0))


ROOMY = make_tenant("t", max_gpus=8.0, max_cpus=100.0)
CAPPED = make_tenant("t", max_gpus=2.0, max_cpus=16.0)


@pytest.mark.parametrize(
    ("job", "tenant", "expected"),
    [
        (make_job(0, "t", 4.0), ROOMY, "largest node has 2"),
        (make_job(0, "t", 1.0, cpus=64), ROOMY, "largest node has 32"),
        (make_job(0, "t", 2.0, cpus=24), ROOMY, "no single node"),
        (PendingJob("j", "t", 0.0, 1.0, 512 * GIB, 0, 0), ROOMY, "bytes of memory"),
        (make_job(0, "t", 1.5), ROOMY, "whole number"),
        (make_job(0, "t", 3.0), CAPPED, "may hold at most 2"),
        (make_job(0, "t", 0.5, cpus=20), CAPPED, "may hold at most 16"),
    ],
)
def test_never_fits_reasons(job: PendingJob, tenant: TenantState, expected: str) -> None:
    nodes = [make_node("a", [1.0, 1.0], cpus=8), make_node("b", [], cpus=32)]
    reason = never_fits(job, nodes, tenant)
    assert reason is not None and expected in reason


def test_never_fits_fraction_without_gpus_and_ok_cases() -> None:
    cpu_pool = [make_node("a", [], cpus=8)]
    reason = never_fits(make_job(0, "t", 0.5), cpu_pool, make_tenant("t"))
    assert reason is not None and "has none" in reason
    gpu_pool = [make_node("a", [1.0, 1.0], cpus=8)]
    assert never_fits(make_job(0, "t", 2.0, cpus=8), gpu_pool, make_tenant("t")) is None
    assert never_fits(make_job(0, "t", 0.0), cpu_pool, make_tenant("t")) is None


def test_ten_thousand_jobs_twenty_tenants() -> None:
    nodes = [make_node(f"n{i}", [1.0] * 8, cpus=128) for i in range(8)]
    tenants = tenants_of(*(make_tenant(f"t{i}") for i in range(20)))
    jobs = [make_job(i, f"t{i % 20}", gpus=1.0, priority=i % 3) for i in range(10_000)]
    placements = schedule(jobs, nodes, tenants)
    assert len(placements) == 64
    per_tenant = Counter(f"t{int(p.job_id[1:]) % 20}" for p in placements)
    assert set(per_tenant.values()) <= {3, 4}

"""The local node: its CPU slots, memory and accelerators, registered in the state store.

CUDA devices are read with `nvidia-smi` (no torch needed in the control plane); `fake_gpus`
declares devices for tests and demos, still handed out through CUDA_VISIBLE_DEVICES so that
placement is observable."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from modelfab.db.engine import transaction
from modelfab.db.models import Device, Node
from modelfab.ids import now

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceSpec:
    index: int
    kind: str  # "cuda" or "fake"
    name: str
    memory_bytes: int


@dataclass(frozen=True)
class NodeSpec:
    id: str
    hostname: str
    cpus: float
    memory_bytes: int
    devices: tuple[DeviceSpec, ...]


def node_id_for(home: Path) -> str:
    """A stable id per MODELFAB_HOME, so two platforms on one machine stay apart."""
    path = home / "node-id"
    if path.exists():
        return path.read_text().strip()
    node_id = f"node-{socket.gethostname()[:40]}-{uuid.uuid4().hex[:8]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(node_id + "\n")
    return node_id


def detect_cuda() -> list[DeviceSpec]:
    """CUDA devices visible to this process, via nvidia-smi; [] when there is none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError) as exc:
        logger.warning("nvidia-smi failed (%s); assuming no GPU", exc)
        return []
    devices = []
    for line in out.strip().splitlines():
        index, name, mem_mib = (part.strip() for part in line.split(","))
        devices.append(DeviceSpec(int(index), "cuda", name, int(float(mem_mib)) * 2**20))
    return devices


def detect_node(home: Path, *, fake_gpus: int = 0, cpus: float | None = None) -> NodeSpec:
    if fake_gpus:
        devices = [DeviceSpec(i, "fake", f"fake-gpu-{i}", 16 * 2**30) for i in range(fake_gpus)]
    else:
        devices = detect_cuda()
    return NodeSpec(
        id=node_id_for(home),
        hostname=socket.gethostname(),
        cpus=float(cpus if cpus is not None else (os.cpu_count() or 1)),
        memory_bytes=psutil.virtual_memory().total,
        devices=tuple(devices),
    )


def register_node(factory: sessionmaker[Session], spec: NodeSpec, executor: str) -> None:
    """Upsert the node and its devices; devices no longer present are marked inactive
    (running work keeps its rows, new work is not placed there)."""
    with transaction(factory) as session:
        node = session.get(Node, spec.id)
        if node is None:
            node = Node(id=spec.id, created_at=now())
            session.add(node)
        node.hostname, node.executor = spec.hostname, executor
        node.cpus, node.memory_bytes, node.heartbeat_at = spec.cpus, spec.memory_bytes, now()
        _sync_devices(session, spec)
    logger.info(
        "node %s: %.0f CPU slots, %d devices (%s)",
        spec.id,
        spec.cpus,
        len(spec.devices),
        ", ".join(d.name for d in spec.devices) or "none",
    )


def _sync_devices(session: Session, spec: NodeSpec) -> None:
    existing = {
        d.index: d for d in session.scalars(select(Device).where(Device.node_id == spec.id))
    }
    for dev in spec.devices:
        row = existing.pop(dev.index, None)
        if row is None:
            row = Device(node_id=spec.id, index=dev.index)
            session.add(row)
        row.kind, row.name, row.memory_bytes, row.active = (
            dev.kind,
            dev.name,
            dev.memory_bytes,
            True,
        )
    for row in existing.values():
        row.active = False


def heartbeat(factory: sessionmaker[Session], node_id: str) -> None:
    with transaction(factory) as session:
        node = session.get(Node, node_id)
        if node is not None:
            node.heartbeat_at = now()

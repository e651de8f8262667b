"""A minimal HTTP/1.1 load generator for the serving benchmark (benchmarks/serving.py), and
the CPU accounting the benchmark does around it.

N asyncio clients, each on its own keep-alive connection, post one image per request as
`multipart/form-data` (part "file"), back to back, for a warm-up and then a measured window.
Requests are pre-encoded once and responses read with nothing but asyncio streams, so the
generator takes far less CPU than an HTTP library would from the servers it measures on the
same cores. It runs in its own process: `run_load` is its entry point."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
import psutil

BOUNDARY = "modelfab-bench-boundary"
REQUEST_TIMEOUT_S = 60


@dataclass(frozen=True)
class Target:
    """Where requests go: loopback host, port, request path, and extra headers."""

    host: str
    port: int
    path: str
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, url: str, headers: dict[str, str] | None = None) -> Target:
        parsed = httpx.URL(url)
        return cls(parsed.host, parsed.port or 80, parsed.raw_path.decode(), headers or {})


def request_bytes(target: Target, png: bytes) -> bytes:
    """A complete HTTP/1.1 keep-alive POST of `png` as the multipart part "file"."""
    body = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + png
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    headers = {
        "Host": f"{target.host}:{target.port}",
        **target.headers,
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        "Content-Length": str(len(body)),
    }
    head = f"POST {target.path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (head + "\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, server keeps the connection) of one HTTP/1.1 response."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readuntil(b"\r\n")
    else:
        body = await reader.read()
    return status, body, headers.get("connection", "").lower() != "close"


def answer_ok(status: int, body: bytes) -> bool:
    if status != 200:
        return False
    try:
        return bool(json.loads(body)["data"][0]["label"])
    except (ValueError, KeyError, IndexError, TypeError):
        return False


@dataclass
class LoadResult:
    latencies_s: list[float]
    errors: int
    seconds: float
    cpu_s: float
    """CPU-seconds of the load generator in the window."""
    server_cpu_s: float = 0.0
    """CPU-seconds of the server processes (and their descendants) in the window."""
    first_error: str = ""


async def one_client(
    target: Target, payloads: Sequence[bytes], window: tuple[float, float], out: LoadResult
) -> None:
    """Send requests back to back until the window ends; record those that end inside it."""
    start, end = window
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    i = random.randrange(len(payloads))
    while time.perf_counter() < end:
        sent = time.perf_counter()
        try:
            if conn is None:
                conn = await asyncio.open_connection(target.host, target.port)
            conn[1].write(payloads[i % len(payloads)])
            status, body, keep = await asyncio.wait_for(read_response(conn[0]), REQUEST_TIMEOUT_S)
            ok = answer_ok(status, body)
            detail = f"HTTP {status}: {body[:200]!r}"
        except (TimeoutError, OSError, EOFError, asyncio.LimitOverrunError, ValueError) as exc:
            ok, keep, detail = False, False, f"{type(exc).__name__}: {exc}"
        done = time.perf_counter()
        if start <= done <= end:
            if ok:
                out.latencies_s.append(done - sent)
            else:
                out.errors += 1
                out.first_error = out.first_error or detail
        if not keep and conn is not None:
            conn[1].close()
            conn = None
        i += 1
    if conn is not None:
        conn[1].close()


async def drive(
    target: Target,
    pngs: Sequence[bytes],
    concurrency: int,
    window_s: tuple[float, float],
    server_pids: Sequence[int],
) -> LoadResult:
    payloads = [request_bytes(target, png) for png in pngs]
    warmup_s, duration_s = window_s
    out = LoadResult([], 0, duration_s, 0.0)
    start = time.perf_counter() + warmup_s
    window = (start, start + duration_s)
    clients = [one_client(target, payloads, window, out) for _ in range(concurrency)]
    cpu = asyncio.get_running_loop().run_in_executor(None, cpu_over, window, server_pids)
    await asyncio.gather(*clients)
    out.cpu_s, out.server_cpu_s = await cpu
    return out


def cpu_over(window: tuple[float, float], server_pids: Sequence[int]) -> tuple[float, float]:
    """CPU-seconds of this process and of the servers between the two perf_counter
    instants (blocks until the second)."""
    time.sleep(max(0.0, window[0] - time.perf_counter()))
    before = time.process_time(), servers_cpu_s(server_pids)
    time.sleep(max(0.0, window[1] - time.perf_counter()))
    return time.process_time() - before[0], servers_cpu_s(server_pids) - before[1]


def servers_cpu_s(pids: Sequence[int]) -> float:
    """CPU-seconds so far of the processes `pids` and their descendants, this one excepted."""
    procs: dict[int, psutil.Process] = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            procs.update((p.pid, p) for p in [root, *root.children(recursive=True)])
    procs.pop(os.getpid(), None)
    total = 0.0
    for proc in procs.values():
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def run_load(
    target: Target,
    pngs: list[bytes],
    concurrency: int,
    window_s: tuple[float, float],
    server_pids: Sequence[int] = (),
) -> LoadResult:
    """Entry point of the load process (picklable arguments only): `concurrency` clients for
    `window_s` = (warm-up, measured) seconds. `server_pids`: whose CPU to measure."""
    return asyncio.run(drive(target, pngs, concurrency, window_s, server_pids))


# -- CPU accounting (in the benchmark's process) ---------------------------------------


@dataclass(frozen=True)
class CpuWatch:
    """What the machine spent on processes other than this one and its descendants."""

    wall: float
    busy: float
    ours: float

    @classmethod
    def start(cls) -> CpuWatch:
        return cls(time.perf_counter(), machine_busy_s(), tree_cpu_s())

    def others(self) -> float:
        """CPU-seconds per second taken by other processes (or stolen by the hypervisor)
        since `start`: near 0 on an otherwise idle machine."""
        ours, busy = tree_cpu_s() - self.ours, machine_busy_s() - self.busy
        return max(0.0, busy - ours) / (time.perf_counter() - self.wall)


def machine_busy_s() -> float:
    t = psutil.cpu_times()
    return float(
        sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))
    )


def tree_cpu_s() -> float:
    """CPU-seconds of this process and its descendants so far, reaped children included."""
    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total

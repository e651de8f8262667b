"""Language-model serving benchmark: a chat model served by modelfab beside in-process
transformers `generate()`, side by side in one run, ratios printed (no asserts).

  (a) baseline: `model.generate()` in this process, greedy, fp32, exactly --max-tokens new
      tokens per row, at batch 1 and batch 8 (the 8 prompts left-padded into one batch).
      A streamer stamps every step, so time to first token (the prefill and its token)
      and inter-token latency come from the same runs as tokens/s.
  (b) a modelfab endpoint through the gateway (an in-process `Platform`, the replica a
      real worker process), called with the real `openai` client, streamed, by N
      closed-loop clients at concurrency 1, 8 and 32: tokens/s, TTFT and inter-token
      latency p50/p99 per request as the client sees them, as ratios to (a). Target:
      concurrency 8 >= 0.9 x (a) batch 8. Then the metered tokens against the answers'
      usage (they must be equal).
  (c) mixed LoRA traffic: the engine in this process (an endpoint serves one registered
      version today, so adapters of several versions cannot be mixed through the gateway
      yet), concurrency 8, requests spread over 4 adapters, against the same requests on
      the base and on one adapter. Target: mixed >= 0.8 x base.
  (d) adapter cold-load: first request on a newly registered adapter against the next one.
  (e) a peer engine on the same weights: CTranslate2's generator (fp32), if importable.

See benchmarks/README.md."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch
from chat_load import Row, Trace, describe, run_load, summarise
from harness import DEFAULT_HUB_DIR, SMOLLM2, running_platform
from llm_adapters import ADAPTERS, part_engine
from llm_peer import PEER_INSTALL, peer_missing, run_peer
from loadgen import CpuWatch
from rich.console import Console
from rich.table import Table
from sqlalchemy import select
from transformers.generation.streamers import BaseStreamer

from modelfab.client import ApiError, Client
from modelfab.db.engine import make_sessionmaker
from modelfab.db.models import Tenant
from modelfab.hub.chat import chat_model_folder
from modelfab.llm.encoding import render_chat
from modelfab.llm.models import load_chat_model
from modelfab.llm.tokenizer import load_tokenizer
from modelfab.server import Platform

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' registry factories
from tests.registry_factories import complete, insert_running_job, worker_headers

console = Console(width=160)  # the tables stay whole in a log
QUESTIONS = [
    "Write a short story about a robot who learns to paint.",
    "Explain in detail how a bicycle works.",
    "Describe the water cycle step by step.",
    "Write a letter to a friend about your summer holiday.",
    "Explain how to bake bread, from flour to loaf.",
    "Describe a day in the life of a lighthouse keeper.",
    "Explain why the seasons change on Earth.",
    "Write a product description for a solar-powered kettle.",
]
"""Questions with long answers, so most requests run to max_tokens on every side."""
MODEL_NAME = "bench-chat"
ENDPOINT = "bench-chat"
READY_TIMEOUT_S = 600
FORMATS = {".json": "json", ".safetensors": "safetensors"}
PARTS = ("a", "b", "c", "d", "e")


# -- prompts ---------------------------------------------------------------------------


def prompt_ids(folder: Path) -> list[list[int]]:
    """The questions as the replica encodes a chat request: the model's template with its
    generation prompt."""
    tokenizer = load_tokenizer(folder)
    return [
        tokenizer.encode(
            render_chat(tokenizer, [{"role": "user", "content": q}], add_generation_prompt=True)
        )
        for q in QUESTIONS
    ]


# -- (a) transformers generate() ---------------------------------------------------------


class StepClock(BaseStreamer):
    """Stamps each step of `generate()`: its first `put` is the prompt, every later one
    the tokens of one step (one per row)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if self._prompt_seen:
            self.stamps.append(time.perf_counter())
        self._prompt_seen = True

    def end(self) -> None:
        pass


def generate_batch(model: Any, pad_id: int, prompts: list[list[int]], tokens: int) -> list[Trace]:
    """One left-padded `generate()` call; every row gets the call's step stamps."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    clock = StepClock()
    sent = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            pad_token_id=pad_id,
            streamer=clock,
        )
    return [Trace(sent=sent, stamps=list(clock.stamps), tokens=tokens) for _ in prompts]


def part_generate(folder: Path, prompts: list[list[int]], args: argparse.Namespace) -> list[Row]:
    """(a): `args.requests` calls at batch 1, then as many at batch 8, one after another
    (so the wall time from the first call to the last token is their sum)."""
    model, tokenizer = load_chat_model(folder)
    generate_batch(model, tokenizer.pad_id, prompts[:2], 2)  # warm-up
    rows = []
    for batch in (1, 8):
        watch = CpuWatch.start()
        traces: list[Trace] = []
        for i in range(args.requests):
            chosen = [prompts[(i * batch + k) % len(prompts)] for k in range(batch)]
            traces += generate_batch(model, tokenizer.pad_id, chosen, args.max_tokens)
        rows.append(summarise("(a) generate()", f"batch {batch}", traces, watch.others()))
        console.print(f"  {describe(rows[-1])}")
    return rows


# -- (b) the endpoint --------------------------------------------------------------------


def upload_file(http: httpx.Client, job_id: str, token: str, path: Path) -> dict[str, Any]:
    """Stream `path` to the worker API as the job's artifact (its sha256 computed here)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    fmt = FORMATS.get(path.suffix, "text")
    with path.open("rb") as f:
        resp = http.post(
            f"/v1/worker/jobs/{job_id}/artifacts",
            headers=worker_headers(token),
            data={"name": path.name, "format": fmt, "sha256": digest.hexdigest()},
            files={"file": (path.name, f, "application/octet-stream")},
        )
    resp.raise_for_status()
    record: dict[str, Any] = resp.json()
    return record


def register_full_version(platform: Platform, folder: Path, base: str, tmp: Path) -> str:
    """Register the base model's own weights as a full chat version of tenant "bench", as
    a full `llm-finetune` job registers one (artifacts over the worker API), so the
    endpoint and `generate()` run the same weights. Returns its ref."""
    contract = {"format": 1, "task": "chat", "kind": "full", "base_model": {"hub": base}}
    (tmp / "model.json").write_text(json.dumps(contract))
    factory = make_sessionmaker(platform.engine)
    with factory() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == "bench"))
    assert tenant_id is not None
    job_id, token = insert_running_job(factory, tenant_id)
    files = [*sorted(p for p in folder.iterdir() if p.is_file()), tmp / "model.json"]
    with httpx.Client(base_url=platform.url, timeout=600) as http:
        records = [upload_file(http, job_id, token, p) for p in files]
        model = {"name": MODEL_NAME, "task": "chat", "artifacts": records, "base_model": base}
        complete(http, job_id, token, model=model).raise_for_status()
    return f"{MODEL_NAME}:1"


@contextlib.contextmanager
def endpoint(client: Client, ref: str, args: argparse.Namespace) -> Iterator[None]:
    """The endpoint on `ref`, ready; deleted on exit."""
    started = time.monotonic()
    client.create_endpoint(
        ENDPOINT, model=ref, cpus=args.cpus, max_batch_size=max(args.concurrency)
    )
    try:
        client.wait_endpoint(ENDPOINT, timeout_s=READY_TIMEOUT_S)
        console.print(f"  endpoint {ENDPOINT} on {ref} ready in {time.monotonic() - started:.0f} s")
        yield
    finally:
        with contextlib.suppress(ApiError):
            client.delete_endpoint(ENDPOINT)


@dataclass
class Sent:
    """What the endpoint's clients were answered, for the metering check."""

    requests: int = 0
    tokens_out: int = 0
    tokens_in: int = 0
    missing_usage: int = 0

    def add(self, traces: Sequence[Trace]) -> None:
        self.requests += len(traces)
        self.tokens_out += sum(t.tokens for t in traces)
        self.tokens_in += sum(t.prompt_tokens for t in traces)
        self.missing_usage += sum(1 for t in traces if not t.error and not t.tokens)


def part_endpoint(
    platform: Platform, key: str, folder: Path, tmp: Path, args: argparse.Namespace
) -> tuple[list[Row], str]:
    ref = register_full_version(platform, folder, args.model, tmp)
    sent = Sent()
    rows = []
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    with Client(platform.url, key, timeout_s=120) as client, pool, endpoint(client, ref, args):
        url = f"{platform.url}/v1"
        load = (url, key, ENDPOINT, QUESTIONS)
        warm, _ = pool.submit(run_load, *load, 1, 1, 4).result()
        sent.add(warm)
        for c in args.concurrency:
            watch = CpuWatch.start()
            job = pool.submit(run_load, *load, c, args.requests, args.max_tokens)
            traces, client_cpu = job.result()
            sent.add(traces)
            row = summarise("(b) endpoint", f"c={c}", traces, watch.others())
            lengths = sum(1 for t in traces if t.finish == "length")
            row.note = row.note or f"{lengths}/{len(traces)} ran to max_tokens"
            rows.append(row)
            console.print(f"  {describe(row)}; openai client {client_cpu:.1f} CPU-s")
        metering = check_metering(client, sent)
    console.print(f"  {metering}")
    return rows, metering


def check_metering(client: Client, sent: Sent) -> str:
    """The metered tokens (usage journal, by meter) against the sum of the answers' usage,
    once every request is metered."""
    deadline = time.monotonic() + 60
    metered: dict[str, float] = {}
    while time.monotonic() < deadline:
        metered = {r.meter: r.quantity for r in client.usage(by="meter")}
        if metered.get("requests", 0) >= sent.requests:
            break
        time.sleep(0.5)
    out, tokens_in = metered.get("tokens_out", 0), metered.get("tokens_in", 0)
    same = out == sent.tokens_out and tokens_in == sent.tokens_in
    verdict = "[green]equal[/]" if same else "[red]NOT equal[/]"
    return (
        f"metering: {metered.get('requests', 0):.0f} requests metered of {sent.requests} sent; "
        f"tokens_out metered {out:.0f}, usage sum {sent.tokens_out}; tokens_in metered "
        f"{tokens_in:.0f}, usage sum {sent.tokens_in}: {verdict}"
        + (f"; {sent.missing_usage} answers had no usage" if sent.missing_usage else "")
    )


# -- output ------------------------------------------------------------------------------


def with_ratio(value: float, base: float | None) -> str:
    """`value` and its ratio to `base`, as "55.0 x1.46"; "-" when nothing was measured."""
    if value != value:  # nan
        return "-"
    shown = f"{value:.0f}" if value >= 100 else f"{value:.1f}"
    return f"{shown} x{value / base:.2f}" if base and base == base else shown


def reference_of(row: Row, rows: Sequence[Row]) -> Row | None:
    found = [r for r in rows if r.label == row.reference and r is not row]
    return found[0] if found else None


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    table = Table(
        title=f"{args.model}, greedy, {args.max_tokens} new tokens per request, fp32, "
        f"{torch.get_num_threads()} torch threads; x = ratio to the row named in 'vs'"
    )
    columns = ("side", "run", "tokens/s", "TTFT p50 ms", "TTFT p99", "ITL p50 ms", "ITL p99",
               "req", "err", "other", "vs", "note")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="left" if col in ("side", "run", "vs", "note") else "right")
    for row in rows:
        ref = reference_of(row, rows)
        table.add_row(
            row.part,
            row.label,
            with_ratio(row.tokens_per_s, ref.tokens_per_s if ref else None),
            with_ratio(row.ttft_ms[0], ref.ttft_ms[0] if ref else None),
            with_ratio(row.ttft_ms[1], ref.ttft_ms[1] if ref else None),
            with_ratio(row.itl_ms[0], ref.itl_ms[0] if ref else None),
            with_ratio(row.itl_ms[1], ref.itl_ms[1] if ref else None),
            str(row.requests),
            str(row.errors),
            f"{row.others_cpu:.2f}",
            row.reference,
            row.note[:60],
        )
    console.print(table)


def print_targets(rows: list[Row]) -> None:
    """The issue's two targets, each PASS or MISS (or not measured)."""
    by = {(r.part, r.label): r for r in rows}
    checks = [
        ("(b) endpoint c=8 >= 0.9 x (a) generate() batch 8", ("(b) endpoint", "c=8"),
         ("(a) generate()", "batch 8"), 0.9),
        ("(c) 4 adapters mixed >= 0.8 x base (engine, c=8)",
         ("(c) engine", f"{ADAPTERS} adapters mixed c=8"), ("(c) engine", "base c=8"), 0.8),
    ]  # fmt: skip
    for name, ours, base, target in checks:
        if ours not in by or base not in by:
            console.print(f"target {name}: [yellow]not measured[/]")
            continue
        share = by[ours].tokens_per_s / by[base].tokens_per_s
        ok = share >= target and by[ours].errors == 0
        console.print(f"target {name}: {share:.2f} " + ("[green]PASS[/]" if ok else "[red]MISS[/]"))


# -- main --------------------------------------------------------------------------------


def run_parts(folder: Path, args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    prompts = prompt_ids(folder)
    rows: list[Row] = []
    notes: list[str] = []
    if "a" in args.part:
        console.print("[bold](a) transformers generate()[/], in this process")
        rows += part_generate(folder, prompts, args)
    if "b" in args.part:
        console.print("[bold](b) modelfab endpoint[/] through the gateway, openai client")
        endpoint, metering = endpoint_rows(folder, args)
        rows += endpoint
        notes.append(metering)
    if "c" in args.part or "d" in args.part:
        console.print(
            "[bold](c, d) the engine in this process[/]: an endpoint serves one registered "
            "version, so mixed adapters are measured at the engine level"
        )
        engine_rows, cold = part_engine(folder, prompts, args)
        rows += engine_rows
        notes += [f"(d) {line}" for line in cold]
    if "e" in args.part:
        rows += peer_rows(folder, prompts, args)
    return rows, notes


def endpoint_rows(folder: Path, args: argparse.Namespace) -> tuple[list[Row], str]:
    with tempfile.TemporaryDirectory(prefix="modelfab-bench-") as tmp_name:
        tmp = Path(tmp_name)
        with running_platform(tmp / "home", args.cpus) as platform:
            admin_key = platform.settings.admin_key_path.read_text().strip()
            with Client(platform.url, admin_key) as admin:
                key = admin.create_tenant("bench", rate_limit_rps=10_000).api_key
            rows, metering = part_endpoint(platform, key, folder, tmp, args)
    for row in rows:
        row.reference = "batch 1" if row.label == "c=1" else "batch 8"
    return rows, metering


def peer_rows(folder: Path, prompts: list[list[int]], args: argparse.Namespace) -> list[Row]:
    missing = peer_missing()
    if missing:
        console.print(f"[yellow](e) peer engine skipped[/]: {missing}; install: {PEER_INSTALL}")
        return []
    console.print("[bold](e) CTranslate2[/] generator, fp32, in this process")
    rows = []
    for batch, traces, others in run_peer(folder, prompts, args.max_tokens, args.requests):
        rows.append(summarise("(e) CTranslate2", f"ct2 batch {batch}", traces, others))
        rows[-1].reference = f"batch {batch}"
        rows[-1].note = f"{rows[-1].tokens / max(1, len(traces)):.0f} tokens per request"
        console.print(f"  {describe(rows[-1])}")
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=SMOLLM2, help=f"hub chat model ({SMOLLM2}; tiny-chat)")
    p.add_argument("--hub-dir", type=Path, default=DEFAULT_HUB_DIR, help="converted models")
    p.add_argument("--part", default="abcde", help="which of a, b, c, d, e to run (all)")
    p.add_argument("--max-tokens", type=int, help="new tokens per request (64; quick 16)")
    p.add_argument("--requests", type=int, help="requests per client / runs per batch (4; quick 2)")
    p.add_argument("--concurrency", help="endpoint clients, comma-separated (1,8,32)")
    p.add_argument("--rounds", type=int, help="(c): rounds of the three sides (2; quick 1)")
    p.add_argument("--cpus", type=float, default=float(os.cpu_count() or 1), help="endpoint cpus")
    p.add_argument("--quick", action="store_true", help="small sizes: a few minutes")
    args = p.parse_args(argv)
    unknown = set(args.part) - set(PARTS) - {","}
    if unknown:
        p.error(f"--part takes letters of {''.join(PARTS)}, not {''.join(sorted(unknown))}")
    args.max_tokens = args.max_tokens or (16 if args.quick else 64)
    args.requests = args.requests or (2 if args.quick else 4)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.concurrency = [int(c) for c in (args.concurrency or "1,8,32").split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    console.print(
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; model {args.model}"
    )
    folder = chat_model_folder(args.hub_dir, args.model)  # converts a GGUF once
    rows, notes = run_parts(folder, args)
    print_table(rows, args)
    for note in notes:
        console.print(note)
    print_targets(rows)
    console.print(
        f"done in {time.monotonic() - start:.0f} s; load average {os.getloadavg()[0]:.2f} at end"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The engine-level parts of the language-model serving benchmark
(benchmarks/llm_serving.py), run in the benchmark's own process on a `TransformersEngine`:

  (c) mixed LoRA traffic: closed-loop requests at concurrency 8 on the base, on one adapter
      and spread over 4 adapters, in alternating rounds. An endpoint serves one registered
      version today, so adapters of several versions cannot yet be mixed through the
      gateway; the engine is where the mixing happens either way.
  (d) adapter cold load: a newly registered adapter's first request against its next ones.

The engine is stepped in this thread (no `EngineDriver`): a token's stamp is the end of the
step that made it, and requests join at step boundaries exactly as in a replica.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from chat_load import Row, Trace, describe, summarise
from loadgen import CpuWatch
from peft import LoraConfig, get_peft_model
from rich.console import Console
from torch import nn

from modelfab.llm.engine import (
    EngineConfig,
    Finished,
    RequestStream,
    SamplingParams,
    TransformersEngine,
)
from modelfab.llm.models import load_chat_model

console = Console(width=160)
ADAPTERS = 4
LORA_RANK = 16
COLD_ADAPTERS = 3


def make_adapters(folder: Path, base: str, root: Path, names: Sequence[str]) -> dict[str, Path]:
    """LoRA adapters of `folder` (r 16, all linear layers, random non-zero B: each one
    changes the answers), saved as llm-finetune saves them. One peft model, re-drawn per
    adapter."""
    model, _ = load_chat_model(folder)
    peft_model = get_peft_model(
        model, LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, target_modules="all-linear")
    )
    contract = {"format": 1, "task": "chat", "kind": "lora", "base_model": {"hub": base}}
    out = {}
    for i, name in enumerate(names):
        torch.manual_seed(i)
        for param_name, param in peft_model.named_parameters():
            if "lora_" in param_name:
                nn.init.normal_(param, std=0.01)
        peft_model.save_pretrained(root / name)
        (root / name / "model.json").write_text(json.dumps(contract))
        out[name] = root / name
    return out


def engine_load(
    engine: TransformersEngine,
    prompts: list[list[int]],
    adapters: Sequence[str | None],
    concurrency: int,
    total: int,
    max_tokens: int,
) -> list[Trace]:
    """Closed loop on the engine, stepped in this thread: `concurrency` requests live, a new
    one added at each step boundary where one ended, `total` in all. A token's stamp is the
    end of the step that made it."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    live: dict[RequestStream, Trace] = {}
    issued = 0
    traces = []
    while issued < total or live:
        while len(live) < concurrency and issued < total:
            trace = Trace(sent=time.perf_counter())
            adapter = adapters[issued % len(adapters)]
            stream = engine.add_request(
                prompt_ids=prompts[issued % len(prompts)], params=params, adapter=adapter
            )
            live[stream] = trace
            traces.append(trace)
            issued += 1
        engine.step()
        now = time.perf_counter()
        for stream, trace in list(live.items()):
            if stamp_events(stream, trace, now):
                del live[stream]
    return traces


def stamp_events(stream: RequestStream, trace: Trace, now: float) -> bool:
    """Read the events the last step wrote to `stream` into `trace`; True once finished."""
    while True:
        try:
            event = stream.get(timeout=0)
        except TimeoutError:
            return False
        if isinstance(event, Finished):
            trace.tokens, trace.finish = event.completion_tokens, event.finish_reason
            trace.error = event.error or ""
            return True
        trace.stamps.append(now)


def part_mixed(
    engine: TransformersEngine, prompts: list[list[int]], names: list[str], args: argparse.Namespace
) -> list[Row]:
    """(c): base, one adapter and 4 mixed adapters at concurrency 8, alternating rounds;
    each row is the round with the median tokens/s. A run is half of (b)'s requests per
    client: three sides times the rounds are six runs by default."""
    c = 8
    total = c * max(1, args.requests // 2)
    sides: dict[str, Sequence[str | None]] = {
        "base": [None],
        "1 adapter": names[:1],
        f"{len(names)} adapters mixed": names,
    }
    engine_load(engine, prompts, names, len(names), len(names), 2)  # loads every adapter
    runs: dict[str, list[Row]] = {side: [] for side in sides}
    for _ in range(args.rounds):
        for side, adapters in sides.items():
            watch = CpuWatch.start()
            traces = engine_load(engine, prompts, adapters, c, total, args.max_tokens)
            runs[side].append(summarise("(c) engine", f"{side} c={c}", traces, watch.others()))
    rows = []
    for side, measured in runs.items():
        row = sorted(measured, key=lambda r: r.tokens_per_s)[len(measured) // 2]
        row.reference = "batch 8" if side == "base" else f"base c={c}"
        row.note = "rounds: " + ", ".join(f"{r.tokens_per_s:.1f}" for r in measured)
        rows.append(row)
        console.print(f"  {describe(row)}")
    return rows


def part_cold_load(
    engine: TransformersEngine, prompts: list[list[int]], folders: dict[str, Path]
) -> list[str]:
    """(d): per new adapter, the registration (config and header checks) and the TTFT of
    its first request (its weights load into the stacks) against the median of its next
    three, and the base's, all one-token requests alone on the engine."""

    def ttft_ms(adapter: str | None) -> float:
        return (engine_load(engine, prompts, [adapter], 1, 1, 1)[0].ttft or 0.0) * 1e3

    lines, extra = [], []
    for name, folder in folders.items():
        started = time.perf_counter()
        engine.register_adapter(name, folder)
        register_ms = (time.perf_counter() - started) * 1e3
        cold = ttft_ms(name)
        warm = statistics.median(ttft_ms(name) for _ in range(3))
        base = statistics.median(ttft_ms(None) for _ in range(3))
        extra.append(cold - warm)
        lines.append(
            f"{name}: register {register_ms:.1f} ms; TTFT first request {cold:.1f} ms, "
            f"next {warm:.1f} ms, base {base:.1f} ms"
        )
    lines.append(
        f"[bold]adapter cold load (first TTFT - next), median of {len(extra)}: "
        f"{statistics.median(extra):.1f} ms[/]"
    )
    return lines


def part_engine(
    folder: Path, prompts: list[list[int]], args: argparse.Namespace
) -> tuple[list[Row], list[str]]:
    engine = TransformersEngine.load(
        folder, base_name=args.model, config=EngineConfig(max_concurrency=max(args.concurrency))
    )
    rows: list[Row] = []
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="modelfab-bench-") as tmp_name:
        names = [f"adapter-{i}" for i in range(ADAPTERS)]
        cold = [f"cold-{i}" for i in range(COLD_ADAPTERS)] if "d" in args.part else []
        folders = make_adapters(folder, args.model, Path(tmp_name), names + cold)
        if "c" in args.part:
            for name in names:
                engine.register_adapter(name, folders[name])
            rows = part_mixed(engine, prompts, names, args)
        if "d" in args.part:
            lines = part_cold_load(engine, prompts, {n: folders[n] for n in cold})
            for line in lines:
                console.print(f"  {line}")
    return rows, lines

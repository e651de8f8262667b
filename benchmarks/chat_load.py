"""Closed-loop chat clients for the language-model serving benchmark
(benchmarks/llm_serving.py), what every side of it records per request (`Trace`), and
how a run's traces are summed up (`Row`).

N asyncio tasks share one `openai.AsyncOpenAI` client (its own keep-alive pool); each sends
a streamed chat completion with `stream_options.include_usage`, reads it to `[DONE]`, and
sends the next one at once, `per_client` times. Every chunk that carries text is stamped
on arrival, so time to first token and the gaps between tokens are measured per request,
as the client sees them. It runs in its own process (`run_load` is the entry point), so
its CPU shows apart from the gateway's, which runs in the benchmark's process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import openai
from harness import percentile

REQUEST_TIMEOUT_S = 600


@dataclass
class Trace:
    """One request: when it was sent, when each piece of its answer arrived (perf_counter
    seconds of the process that measured it), and its counts."""

    sent: float
    stamps: list[float] = field(default_factory=list)
    """Arrival of each streamed piece that carried tokens (one token per piece for the
    engine and `generate()`; a chunk may hold more than one token's text)."""
    tokens: int = 0
    """Generated tokens: the usage chunk's completion_tokens, or the pieces counted."""
    prompt_tokens: int = 0
    finish: str = ""
    error: str = ""

    @property
    def ttft(self) -> float | None:
        return self.stamps[0] - self.sent if self.stamps else None

    @property
    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)]

    @property
    def done(self) -> float:
        return self.stamps[-1] if self.stamps else self.sent


async def one_request(
    client: openai.AsyncOpenAI, model: str, question: str, max_tokens: int
) -> Trace:
    """A streamed, greedy chat completion of `question`, traced. Errors are recorded, not
    raised."""
    trace = Trace(sent=time.perf_counter())
    try:
        stream = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": question}],
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                trace.stamps.append(time.perf_counter())
            if chunk.choices and chunk.choices[0].finish_reason:
                trace.finish = chunk.choices[0].finish_reason
            if chunk.usage is not None:
                trace.tokens = chunk.usage.completion_tokens
                trace.prompt_tokens = chunk.usage.prompt_tokens
    except openai.OpenAIError as exc:
        trace.error = f"{type(exc).__name__}: {exc}"
    return trace


async def drive(
    url: str,
    key: str,
    model: str,
    questions: Sequence[str],
    concurrency: int,
    per_client: int,
    max_tokens: int,
) -> list[Trace]:
    async with openai.AsyncOpenAI(
        base_url=url, api_key=key, max_retries=0, timeout=REQUEST_TIMEOUT_S
    ) as client:

        async def loop(index: int) -> list[Trace]:
            return [
                await one_request(
                    client, model, questions[(index + i) % len(questions)], max_tokens
                )
                for i in range(per_client)
            ]

        results = await asyncio.gather(*(loop(i) for i in range(concurrency)))
    return [trace for traces in results for trace in traces]


def run_load(
    url: str,
    key: str,
    model: str,
    questions: list[str],
    concurrency: int,
    per_client: int,
    max_tokens: int,
) -> tuple[list[Trace], float]:
    """Entry point of the load process (picklable arguments only): `concurrency` clients,
    each sending `per_client` requests back to back. Returns the traces and the CPU-seconds
    this process spent."""
    cpu = time.process_time()
    traces = asyncio.run(drive(url, key, model, questions, concurrency, per_client, max_tokens))
    return traces, time.process_time() - cpu


# -- summaries ---------------------------------------------------------------------------


@dataclass
class Row:
    """One measured side at one batch size or concurrency."""

    part: str
    label: str
    tokens_per_s: float
    ttft_ms: tuple[float, float]
    """p50, p99."""
    itl_ms: tuple[float, float]
    requests: int
    tokens: int
    errors: int = 0
    others_cpu: float = float("nan")
    reference: str = ""
    """The label of the row its ratios are to ("" for none)."""
    note: str = ""


def summarise(part: str, label: str, traces: Sequence[Trace], others: float) -> Row:
    """Aggregate tokens/s over the run (first send to last token) and the latencies."""
    ok = [t for t in traces if not t.error and t.stamps]
    wall = max(t.done for t in ok) - min(t.sent for t in ok) if ok else float("nan")
    ttfts = [t.ttft * 1e3 for t in ok if t.ttft is not None]
    gaps = [g * 1e3 for t in ok for g in t.gaps]
    tokens = sum(t.tokens for t in ok)
    return Row(
        part=part,
        label=label,
        tokens_per_s=tokens / wall if ok else float("nan"),
        ttft_ms=(percentile(ttfts, 50), percentile(ttfts, 99)),
        itl_ms=(percentile(gaps, 50), percentile(gaps, 99)),
        requests=len(traces),
        tokens=tokens,
        errors=len(traces) - len(ok),
        others_cpu=others,
        note=next((t.error for t in traces if t.error), ""),
    )


def describe(row: Row) -> str:
    return (
        f"{row.part} {row.label}: {row.tokens_per_s:.1f} tokens/s, TTFT p50 {row.ttft_ms[0]:.0f} "
        f"ms, ITL p50 {row.itl_ms[0]:.1f} ms, {row.requests} requests, {row.tokens} tokens, "
        f"{row.errors} errors, "
        f"other processes {row.others_cpu:.2f} CPU-s/s"
    )

"""The peer engine of the language-model serving benchmark (benchmarks/llm_serving.py):
CTranslate2's generator on the same weights, fp32 on the CPU, at batch 1 and batch 8.

CTranslate2 is optional: the benchmark runs without it and prints this part as skipped.
It converts the chat-model folder with its own transformers converter (seconds for 135M
parameters) into a temporary folder. Its per-token callback stamps every generated token,
so time to first token and inter-token latency are measured as for `generate()`.
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from chat_load import Trace
from loadgen import CpuWatch

from modelfab.llm.tokenizer import load_tokenizer

PEER_INSTALL = "pip install ctranslate2  (or pip install --target DIR ctranslate2; PYTHONPATH=DIR)"


def peer_missing() -> str | None:
    """Why the peer cannot run here, or None."""
    if importlib.util.find_spec("ctranslate2") is None:
        return "ctranslate2 is not installed"
    return None


def _convert(folder: Path, out: Path) -> Any:
    import ctranslate2
    from ctranslate2.converters import TransformersConverter

    TransformersConverter(str(folder)).convert(str(out), quantization="float32", force=True)
    return ctranslate2.Generator(
        str(out), device="cpu", compute_type="float32", intra_threads=torch.get_num_threads()
    )


def _batch(generator: Any, prompts: list[list[str]], tokens: int) -> list[Trace]:
    """One `generate_batch` call, exactly `tokens` new tokens per row (min = max length);
    each row's tokens are stamped by the callback as they come."""
    traces = [Trace(sent=time.perf_counter()) for _ in prompts]

    def stamp(step: Any) -> bool:
        traces[step.batch_id].stamps.append(time.perf_counter())
        return False

    results = generator.generate_batch(
        prompts,
        max_length=tokens,
        min_length=tokens,
        sampling_topk=1,
        include_prompt_in_result=False,
        callback=stamp,
    )
    for trace, result in zip(traces, results, strict=True):
        trace.tokens = len(result.sequences_ids[0])
    return traces


def run_peer(
    folder: Path, prompts: list[list[int]], tokens: int, runs: int
) -> Iterator[tuple[int, list[Trace], float]]:
    """(batch, traces, CPU-s/s of other processes) at batch 1 and 8: `runs` calls each,
    one after another, after a short warm-up."""
    tokenizer = load_tokenizer(folder)
    pieces = [[tokenizer.backend.id_to_token(t) for t in p] for p in prompts]
    with tempfile.TemporaryDirectory(prefix="modelfab-bench-ct2-") as tmp:
        generator = _convert(folder, Path(tmp) / "ct2")
        _batch(generator, pieces[:2], 2)
        for batch in (1, 8):
            watch = CpuWatch.start()
            traces: list[Trace] = []
            for i in range(runs):
                chosen = [pieces[(i * batch + k) % len(pieces)] for k in range(batch)]
                traces += _batch(generator, chosen, tokens)
            yield batch, traces, watch.others()

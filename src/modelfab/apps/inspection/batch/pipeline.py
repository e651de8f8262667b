"""The inspection pipeline: files decoded ahead of the ONNX runs, rows streamed to parts.

Three stages overlap. A bounded thread pool decodes files and runs `model.prepare`
(Pillow and numpy release the GIL), keeping `prefetch_batches` batches ready; the calling
thread runs `model.infer` on one batch at a time (ONNX Runtime releases the GIL too); the
same pool turns raw outputs into rows and writes heatmap PNGs (stitching and smoothing
tiled maps is real work). Rows reach the `PartWriter` in input order, each after its
heatmap file exists, so a part never references a missing file.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from modelfab.apps.inspection.batch.decode import Decoded, decode
from modelfab.apps.inspection.batch.journal import PartWriter, Row
from modelfab.serving.anomaly import ANOMALY_DETECTION

HEATMAP_CHOICES = ("none", "anomalies", "all")


@dataclass(frozen=True)
class Options:
    """How a run goes; `threshold` overrides the detector's stored one."""

    batch_size: int = 8
    decode_workers: int = 2
    prefetch_batches: int = 3
    threshold: float | None = None
    save_heatmaps: str = "anomalies"
    progress_s: float = 2.0


class RowMaker:
    """Raw model outputs -> result rows (see `journal.SCHEMA`), writing heatmap PNGs
    under `output`/heatmaps when `save_heatmaps` asks for them (detectors only)."""

    def __init__(self, model: Any, output: Path, options: Options) -> None:
        self.model = model
        self.output = output
        self.is_detector = model.task == ANOMALY_DETECTION
        self.save_heatmaps = options.save_heatmaps if self.is_detector else "none"
        self.options: dict[str, str] = {}
        if self.is_detector:
            self.options["heatmap"] = "false"
            if options.threshold is not None:
                self.options["threshold"] = repr(float(options.threshold))

    def row(self, item: Decoded, raw: Any) -> Row:
        """The row of one inferred image. Blocks while writing its heatmap, if any."""
        answer = self.model.result(raw, self.options)
        row = empty_row(item)
        row["score"] = _finite(answer.get("score"))
        if row["score"] is None:
            row["error"] = "the model gave no finite score for it"
            return row
        row["label"] = answer.get("label")
        if self.is_detector:
            row["threshold"] = answer.get("threshold")
            row["is_anomaly"] = answer.get("is_anomaly")
            if self.save_heatmaps == "all" or (
                self.save_heatmaps == "anomalies" and row["is_anomaly"]
            ):
                _, amap = self.model.score_map(raw)
                row["heatmap"] = self.write_heatmap(item.path, amap)
        return row

    def write_heatmap(self, path: str, amap: np.ndarray) -> str:
        """Save `amap` as an 8-bit greyscale PNG, pixel = round(clip(map / map_scale, 0, 1)
        * 255); returns its path relative to the output folder. Raises OSError."""
        digest = hashlib.sha1(path.encode()).hexdigest()
        rel = f"heatmaps/{digest[:2]}/{Path(path).stem[:80]}-{digest[:12]}.png"
        target = self.output / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.rint(np.clip(amap / self.model.map_scale, 0.0, 1.0) * 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(target, format="PNG", compress_level=1)
        return rel


def empty_row(item: Decoded) -> Row:
    """A row with the file's facts and no result (the row of an unreadable file)."""
    return {
        "path": item.path,
        "score": None,
        "threshold": None,
        "is_anomaly": None,
        "label": None,
        "width": item.width,
        "height": item.height,
        "heatmap": None,
        "error": item.error,
    }


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


@dataclass
class Progress:
    """Counts rows and calls `emit(data)` at most every `every_s` seconds (and on
    `finish`), data = {done, total, images_per_s, eta_s, errors, anomalies, processed}.
    `done`, `errors` and `anomalies` include rows finished by earlier runs."""

    total: int
    emit: Callable[[dict[str, Any]], None]
    done: int = 0
    errors: int = 0
    anomalies: int = 0
    processed: int = 0
    every_s: float = 2.0
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=0.0)
    _last: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.started = self._last = self.clock()

    def add(self, row: Row) -> None:
        self.done += 1
        self.processed += 1
        self.errors += row["error"] is not None
        self.anomalies += bool(row["is_anomaly"])
        if self.clock() - self._last >= self.every_s:
            self.finish()

    def rate(self) -> float:
        """Images per second processed by this run."""
        return self.processed / max(self.clock() - self.started, 1e-9)

    def snapshot(self) -> dict[str, Any]:
        rate = self.rate()
        left = max(self.total - self.done, 0)
        return {
            "done": self.done,
            "total": self.total,
            "images_per_s": round(rate, 2),
            "eta_s": round(left / rate, 1) if rate > 0 else None,
            "errors": self.errors,
            "anomalies": self.anomalies,
            "processed": self.processed,
        }

    def finish(self) -> None:
        self._last = self.clock()
        self.emit(self.snapshot())


def run_pipeline(
    model: Any,
    paths: Iterable[str],
    *,
    rows: RowMaker,
    writer: PartWriter,
    progress: Progress,
    options: Options,
    cancelled: Callable[[], bool],
) -> bool:
    """Infer every path, handing rows to `writer` (flushed at the end, also on error or
    cancel). Returns True when all paths are done, False when `cancelled()` stopped it.
    Blocks. Lets through errors of the model (ONNX Runtime) and of writing."""
    window = max(1, options.batch_size * options.prefetch_batches)
    with ThreadPoolExecutor(options.decode_workers, thread_name_prefix="inspect") as pool:
        source = iter(paths)
        decoding: deque[Future[Decoded]] = deque()
        finishing: deque[Future[Row]] = deque()
        try:
            _refill(decoding, source, pool, model, window)
            while decoding and not cancelled():
                batch = [
                    decoding.popleft().result()
                    for _ in range(min(options.batch_size, len(decoding)))
                ]
                _refill(decoding, source, pool, model, window)
                finishing.extend(_score(batch, model, rows, pool))
                _collect(finishing, writer, progress, keep=window)
            return not decoding
        finally:
            for pending in decoding:
                pending.cancel()
            _collect(finishing, writer, progress, keep=0)
            writer.flush()


def _refill(
    decoding: deque[Future[Decoded]],
    source: Iterator[str],
    pool: ThreadPoolExecutor,
    model: Any,
    window: int,
) -> None:
    while len(decoding) < window and (path := next(source, None)) is not None:
        decoding.append(pool.submit(decode, path, model.prepare))


def _score(
    batch: list[Decoded], model: Any, rows: RowMaker, pool: ThreadPoolExecutor
) -> list[Future[Row]]:
    """Infer the readable items of `batch` (blocks) and queue their rows in `pool`."""
    readable = [item for item in batch if item.units is not None]
    raws = iter(model.infer([item.units for item in readable]) if readable else [])
    out: list[Future[Row]] = []
    for item in batch:
        if item.units is None:
            out.append(_resolved(empty_row(item)))
        else:
            item.units = None  # the input is no longer needed while the row is made
            out.append(pool.submit(rows.row, item, next(raws)))
    return out


def _resolved(row: Row) -> Future[Row]:
    future: Future[Row] = Future()
    future.set_result(row)
    return future


def _collect(
    finishing: deque[Future[Row]], writer: PartWriter, progress: Progress, keep: int
) -> None:
    """Move finished rows, in order, from the front of `finishing` to `writer`; wait for
    the oldest while more than `keep` are pending."""
    while finishing and (finishing[0].done() or len(finishing) > keep):
        row = finishing.popleft().result()
        writer.add([row])
        progress.add(row)

"""The output folder of a batch inspection, laid out so that a run can be resumed after a
crash, a cancel or a SIGKILL without redoing finished images or writing duplicates.

    output/.lock                    held (flock) by the one run writing here
    output/manifest.json            what the results are of: model version, input, options
    output/parts/part-NNNNNN.parquet   complete rows, each part written to a temp name then
                                    renamed (a part exists whole or not at all)
    output/heatmaps/xx/NAME.png     written before the part that references them
    output/results.parquet | .csv   every part merged, streaming, at the end

On start the `path` column of every part is the set of finished images; new parts
continue the numbering. Rows in memory when the process dies are simply redone.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from modelfab.errors import Conflict, InvalidRequest

SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("score", pa.float64()),
        ("threshold", pa.float64()),
        ("is_anomaly", pa.bool_()),
        ("label", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("heatmap", pa.string()),
        ("error", pa.string()),
    ]
)
"""One row per input image; `heatmap` is relative to the output folder."""

Row = dict[str, Any]

MANIFEST_KEYS = ("model_version_id", "input", "threshold", "save_heatmaps")
"""What the rows depend on: a rerun into the same folder must agree on these."""

_PART_RE = re.compile(r"part-(\d{6,})\.parquet")


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on the output folder `root` (created if missing) for the
    block. The kernel releases it when the process dies, even by SIGKILL.

    Raises Conflict (param "output") when another run holds it."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise Conflict(
                f"output folder {root} is in use by another batch inspection; wait for it to "
                "end or choose another output",
                param="output",
            ) from exc
        yield


def check_manifest(root: Path, manifest: dict[str, Any]) -> bool:
    """Write `manifest` to root/manifest.json on the first run; on later runs check that
    the stored one agrees on MANIFEST_KEYS. Returns True when resuming.

    Raises InvalidRequest (code "output_mismatch", param "output") naming the folder and
    each difference."""
    path = root / "manifest.json"
    if not path.exists():
        write_json(path, manifest)
        return False
    stored = json.loads(path.read_text())
    diffs = [
        f"{key} {stored.get(key)!r} (now {manifest.get(key)!r})"
        for key in MANIFEST_KEYS
        if stored.get(key) != manifest.get(key)
    ]
    if diffs:
        raise InvalidRequest(
            f"output folder {root} holds results of another inspection: {'; '.join(diffs)}. "
            "Choose a new output folder, or delete this one to start over",
            param="output",
            code="output_mismatch",
        )
    return True


def write_json(path: Path, doc: Any) -> None:
    """Write `doc` as JSON to `path` atomically (temp file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    _fsync(tmp)
    os.replace(tmp, path)


@dataclass
class Finished:
    """What earlier runs finished: the paths in parts, and how many were errors or
    anomalies."""

    paths: set[str] = field(default_factory=set)
    errors: int = 0
    anomalies: int = 0


@dataclass
class PartWriter:
    """Buffers rows and writes them as the next part when `part_rows` are buffered or
    `flush_s` seconds passed since the last part (checked in `add`), or on `flush`."""

    folder: Path
    part_rows: int
    flush_s: float = 10.0
    next_index: int = 0
    rows: list[Row] = field(default_factory=list)
    written: int = 0
    _last: float = field(default_factory=time.monotonic)

    @classmethod
    def resume(
        cls, folder: Path, part_rows: int, flush_s: float = 10.0
    ) -> tuple[PartWriter, Finished]:
        """A writer continuing after the parts in `folder` (created if missing), and what
        those parts hold. Left-over temp files of a killed run are removed."""
        folder.mkdir(parents=True, exist_ok=True)
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink()
        finished = Finished()
        last = -1
        for index, part in part_files(folder):
            table = pq.read_table(part, columns=["path", "error", "is_anomaly"])
            finished.paths.update(table.column("path").to_pylist())
            finished.errors += table.column("error").drop_null().length()
            finished.anomalies += sum(v is True for v in table.column("is_anomaly").to_pylist())
            last = index
        return cls(folder, part_rows, flush_s, next_index=last + 1), finished

    def add(self, rows: list[Row]) -> None:
        """Buffer `rows` (whose heatmap files are already written); write a part if due."""
        self.rows.extend(rows)
        due = time.monotonic() - self._last >= self.flush_s
        if len(self.rows) >= self.part_rows or (due and self.rows):
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows (if any) as one part: temp file, fsync, rename. Blocks."""
        self._last = time.monotonic()
        if not self.rows:
            return
        name = f"part-{self.next_index:06d}.parquet"
        tmp = self.folder / f".{name}.tmp"
        pq.write_table(pa.Table.from_pylist(self.rows, schema=SCHEMA), tmp)
        _fsync(tmp)
        os.replace(tmp, self.folder / name)
        self.next_index += 1
        self.written += len(self.rows)
        self.rows = []


def part_files(folder: Path) -> list[tuple[int, Path]]:
    """(index, path) of the finished parts in `folder`, in order."""
    found = [(m, p) for p in folder.iterdir() if (m := _PART_RE.fullmatch(p.name))]
    return sorted((int(m.group(1)), p) for m, p in found)


@dataclass
class ResultStats:
    """What the merged results hold. `top` is (score, path, row) of the highest scores
    among readable images, highest first; `error_rows` the first unreadable ones."""

    rows: int = 0
    errors: int = 0
    anomalies: int = 0
    score_min: float | None = None
    score_max: float | None = None
    score_sum: float = 0.0
    top: list[tuple[float, str, Row]] = field(default_factory=list)
    error_rows: list[Row] = field(default_factory=list)

    @property
    def scored(self) -> int:
        return self.rows - self.errors

    def add(self, row: Row, keep: int) -> None:
        """Count `row`, keeping it when among the `keep` highest scores or first errors."""
        self.rows += 1
        if row["error"] is not None or row["score"] is None:
            self.errors += 1
            if len(self.error_rows) < keep:
                self.error_rows.append(row)
            return
        score = float(row["score"])
        self.anomalies += bool(row["is_anomaly"])
        self.score_sum += score
        self.score_min = score if self.score_min is None else min(self.score_min, score)
        self.score_max = score if self.score_max is None else max(self.score_max, score)
        if keep > 0:
            item = (score, row["path"], row)  # paths are unique: rows are never compared
            if len(self.top) < keep:
                heapq.heappush(self.top, item)
            elif item[:2] > self.top[0][:2]:
                heapq.heapreplace(self.top, item)


def merge_parts(root: Path, fmt: str, top_n: int) -> tuple[Path, ResultStats]:
    """Stream every part into root/results.<fmt> ("parquet" or "csv"), one row per path
    (the first seen, should parts ever overlap), written to a temp name and renamed.
    Returns the file and its stats (with the `top_n` highest scores). Blocks."""
    final = root / f"results.{fmt}"
    tmp = root / f".results.{fmt}.tmp"
    stats = ResultStats()
    seen: set[str] = set()
    with _table_writer(tmp, fmt) as write:
        for _, part in part_files(root / "parts"):
            rows = [r for r in pq.read_table(part).to_pylist() if r["path"] not in seen]
            for row in rows:
                seen.add(row["path"])
                stats.add(row, top_n)
            write(pa.Table.from_pylist(rows, schema=SCHEMA))
    _fsync(tmp)
    os.replace(tmp, final)
    stats.top.sort(key=lambda item: item[:2], reverse=True)
    return final, stats


@contextlib.contextmanager
def _table_writer(path: Path, fmt: str) -> Iterator[Any]:
    if fmt == "csv":
        with pacsv.CSVWriter(str(path), SCHEMA) as csv_writer:
            yield csv_writer.write_table
    else:
        with pq.ParquetWriter(str(path), SCHEMA) as pq_writer:
            yield pq_writer.write_table


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

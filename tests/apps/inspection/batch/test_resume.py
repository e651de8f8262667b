"""Exactly once after a crash: batch inspection runs in a subprocess (a real SIGKILL, as
the OOM killer or a lost node would deliver), is killed once some parts exist, and is run
again into the same output folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from modelfab.apps.inspection.batch.journal import part_files
from tests.apps.inspection.batch.factories import image_folder, wait_for, write_detector

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[4]


def start(tmp_path: Path, name: str, delay_s: float) -> subprocess.Popen[bytes]:
    config = {
        "model_dir": str(tmp_path / "mv_det"),
        "version_id": "mv_det",
        "counter": str(tmp_path / f"{name}.count"),
        "delay_s": delay_s,
        "params": {
            "model": "castings",
            "model_version_id": "mv_det",
            "input": str(tmp_path / "in"),
            "output": str(tmp_path / "out"),
            "batch_size": 3,
            "part_rows": 5,
            "save_heatmaps": "all",
            "report_top": 10,
        },
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    return subprocess.Popen(
        [sys.executable, "-m", "tests.apps.inspection.batch.runner", str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
    )


def part_paths(tmp_path: Path) -> list[str]:
    return [
        p
        for _, part in part_files(tmp_path / "out" / "parts")
        for p in pq.read_table(part, columns=["path"]).column("path").to_pylist()
    ]


def inferred(tmp_path: Path, name: str) -> int:
    counter = tmp_path / f"{name}.count"
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def test_a_killed_run_resumes_without_redoing_or_duplicating(tmp_path: Path) -> None:
    write_detector(tmp_path / "mv_det")
    images = image_folder(tmp_path / "in", 60)

    parts = tmp_path / "out" / "parts"
    first = start(tmp_path, "first", delay_s=0.1)
    try:
        wait_for(lambda: parts.exists() and len(part_files(parts)) >= 3)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    kept = part_paths(tmp_path)
    assert 0 < len(kept) < 60 and inferred(tmp_path, "first") < 60
    assert not (tmp_path / "out" / "results.parquet").exists()

    second = start(tmp_path, "second", delay_s=0.0)
    out, _ = second.communicate(timeout=90)
    assert second.returncode == 0
    summary = json.loads(out.decode().strip().splitlines()[-1])

    # None redone: the second run inferred exactly the images no finished part held (the
    # report reads the heatmaps the runs saved instead of scoring its top 10 again).
    assert summary["run"]["processed"] == 60 - len(kept)
    assert inferred(tmp_path, "second") == 60 - len(kept)
    rows = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert Counter(r["path"] for r in rows) == Counter(list(images))  # each image exactly once
    assert Counter(part_paths(tmp_path)) == Counter(list(images))  # no duplicates in parts either
    assert all((tmp_path / "out" / r["heatmap"]).is_file() for r in rows)
    assert summary["images"] == 60 and summary["errors"] == 0
    assert not [p for p in os.listdir(tmp_path / "out" / "parts") if p.endswith(".tmp")]

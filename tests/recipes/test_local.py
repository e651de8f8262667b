"""`LocalContext` and `run_recipe`: any recipe runs in this process without a platform, and
the worker's context offers the same protocol."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from modelfab.artifacts import hash_path, verified_file
from modelfab.compute.worker.context import WorkerContext
from modelfab.errors import InvalidRequest, NotFound
from modelfab.recipes.base import AnnouncesServing, FetchesModels, RecipeContext, get_recipe
from modelfab.recipes.local import LocalContext, run_recipe


def test_run_recipe_validates_params_and_returns_the_result(tmp_path: Path) -> None:
    ctx = LocalContext(tmp_path)
    out = run_recipe("sleep", {"seconds": 1.05}, ctx)
    assert 1.0 <= out["slept_s"] < 2 and "cancelled" not in out
    assert ctx.metric_rows[0]["step"] == 1  # metrics are events of type metrics, as shipped
    with pytest.raises(InvalidRequest) as bad:
        run_recipe(get_recipe("sleep"), {"seconds": -1}, ctx)
    assert bad.value.param == "params.seconds"
    with pytest.raises(NotFound):
        run_recipe("no-such-recipe", {}, ctx)


def test_cancel_stops_a_running_recipe(tmp_path: Path) -> None:
    ctx = LocalContext(tmp_path)
    threading.Timer(0.3, ctx.cancel).start()
    start = time.monotonic()
    out = run_recipe("sleep", {"seconds": 30}, ctx)
    assert out["cancelled"] is True and time.monotonic() - start < 5
    assert ctx.events[-1]["level"] == "warning"


def test_cancel_after_answers_false_that_many_times(tmp_path: Path) -> None:
    ctx = LocalContext(tmp_path, cancel_after=2)
    assert [ctx.cancelled() for _ in range(4)] == [False, False, True, True]


def test_uploads_are_copied_and_recorded_as_the_worker_records_them(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    source.write_bytes(b"not really onnx")
    ctx = LocalContext(tmp_path / "work")
    record = ctx.upload_artifact(source, name="model.onnx", format="onnx")
    sha256, size = hash_path(source)
    assert record["sha256"] == sha256 and record["size_bytes"] == size
    assert {"name", "format", "uri", "sha256", "size_bytes"} <= set(record)
    kept = verified_file(record)
    assert (
        kept.is_relative_to(tmp_path / "work" / "artifacts")
        and kept.read_bytes() == b"not really onnx"
    )
    ctx.register_model({"name": "m", "artifacts": [record]})
    assert ctx.artifacts == [record] and ctx.model == {"name": "m", "artifacts": [record]}


def test_model_files_are_checked_references(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"weights")
    (tmp_path / "labels.json").write_text('["a", "b"]')
    ctx = LocalContext(
        tmp_path,
        models={"mv_1": {"onnx": tmp_path / "model.onnx", "labels": tmp_path / "labels.json"}},
    )
    files = ctx.model_files("mv_1")
    assert verified_file(files["labels"]).read_text() == '["a", "b"]'
    assert files["version_id"] == "mv_1"
    with pytest.raises(NotFound):
        ctx.model_files("mv_2")


class _NoAPI:
    """A WorkerAPI that is never reached: the test only inspects the context's shape."""

    lease_s = 300.0
    last_answer = float("inf")  # never idle, never out of its lease

    def lease_expired(self) -> bool:
        return False

    def stop_retrying(self) -> None:
        pass

    def events(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        return {"cancel_requested": False}


def test_both_contexts_offer_the_protocol_and_its_capabilities(tmp_path: Path) -> None:
    worker = WorkerContext(
        _NoAPI(),  # type: ignore[arg-type]
        job_id="job_x", attempt=1, dataset=None, dataset_path=None, workdir=tmp_path,
    )  # fmt: skip
    try:
        contexts: list[RecipeContext] = [worker, LocalContext(tmp_path)]
        for ctx in contexts:
            assert isinstance(ctx, FetchesModels) and isinstance(ctx, AnnouncesServing)
    finally:
        worker.close()


def test_the_control_plane_imports_no_torch() -> None:
    """The light recipe catalogue (specs and params) sits below services; the torch halves
    (recipes.vision, recipes.anomaly, recipes.training) load only in a worker."""
    code = (
        "import sys\n"
        "import modelfab.services.jobs, modelfab.server\n"
        "from modelfab.recipes.base import CATALOG, get_recipe\n"
        "for name in CATALOG: get_recipe(name)\n"
        "halves = ('torch', 'modelfab.recipes.vision', 'modelfab.recipes.anomaly',"
        " 'modelfab.recipes.training')\n"
        "heavy = sorted(m for m in sys.modules if m in halves or m.startswith(tuple("
        "h + '.' for h in halves)))\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

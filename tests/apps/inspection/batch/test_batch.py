"""batch-inspection in process: a tiny real ONNX detector (and classifier) over folders
and list files of generated images, through the recipe's entrypoint with a recording
context. Resume after SIGKILL is in test_resume.py; through a real platform in
test_e2e.py."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from modelfab.apps.inspection.batch.job import run
from modelfab.apps.inspection.batch.journal import locked
from modelfab.apps.inspection.batch.sources import open_source
from modelfab.errors import Conflict, InvalidRequest
from modelfab.recipes.base import get_recipe
from modelfab.recipes.batch_inspection import Params
from modelfab.serving.models import load_model
from tests.apps.inspection.batch.factories import (
    image_folder,
    progress,
    recording_context,
    save,
    surface,
    write_detector,
    write_tiny_classifier,
)


def params(tmp_path: Path, version: str | None = "mv_det", **extra: Any) -> Params:
    base = {"input": str(tmp_path / "in"), "output": str(tmp_path / "out")}
    return Params(model="castings", model_version_id=version, **{**base, **extra})


def results(tmp_path: Path) -> list[dict[str, Any]]:
    return pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()


def test_every_image_gets_one_row_and_unreadable_files_error_rows(tmp_path: Path) -> None:
    files = write_detector(tmp_path / "mv_det")
    images = image_folder(tmp_path / "in", 20)
    odd = {  # colour modes, sizes and formats a camera archive holds
        "grey.png": ("L", (64, 20)),
        "deep.png": ("I;16", (30, 90)),
        "alpha.png": ("RGBA", (5, 7)),
        "photo.jpg": ("RGB", (300, 200)),
        "scan.tif": ("RGB", (40, 40)),
    }
    for name, (mode, size) in odd.items():
        images[str(save(tmp_path / "in" / "odd" / name, surface(size), mode))] = False
    corrupt = tmp_path / "in" / "odd" / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    save(tmp_path / "in" / ".hidden" / "skip.png", surface())
    ctx = recording_context(tmp_path, {"mv_det": files})

    summary = run(ctx, params(tmp_path, part_rows=6))

    rows = results(tmp_path)
    by_path = {r["path"]: r for r in rows}
    assert len(rows) == len(by_path) == len(images) + 1
    assert set(by_path) == {*images, str(corrupt)}
    bad = by_path[str(corrupt)]
    assert bad["error"].startswith("unreadable image") and bad["score"] is None
    for path, defect in images.items():
        assert by_path[path]["is_anomaly"] is defect, path
        assert by_path[path]["label"] == ("anomaly" if defect else "good")
        assert by_path[path]["threshold"] == 0.5 and by_path[path]["error"] is None
    assert (
        by_path[str(tmp_path / "in/odd/deep.png")]["width"],
        by_path[str(tmp_path / "in/odd/deep.png")]["height"],
    ) == (30, 90)
    assert summary["images"] == len(images) + 1 and summary["errors"] == 1
    assert summary["anomalies"] == sum(images.values())


def test_rows_match_the_model_called_directly_and_heatmaps_are_written(tmp_path: Path) -> None:
    files = write_detector(tmp_path / "mv_det")
    images = image_folder(tmp_path / "in", 12, every_defect=3)
    ctx = recording_context(tmp_path, {"mv_det": files})
    run(ctx, params(tmp_path, batch_size=5, decode_workers=3))

    model: Any = load_model(files)
    out = tmp_path / "out"
    for row in results(tmp_path):
        image = Image.open(row["path"])
        raw = model.infer([model.prepare(image)])[0]
        score, amap = model.score_map(raw)
        assert row["score"] == pytest.approx(score, abs=1e-6)
        if images[row["path"]]:
            heat = np.asarray(Image.open(out / row["heatmap"]))
            assert heat.shape == amap.shape
            assert np.abs(heat.astype(int) - np.rint(np.clip(amap, 0, 1) * 255)).max() <= 1
        else:
            assert row["heatmap"] is None
    assert len(list((out / "heatmaps").rglob("*.png"))) == sum(images.values())
    summary = json.loads((out / "summary.json").read_text())
    top = [r["path"] for r in summary["top"]]
    assert set(top[: sum(images.values())]) == {p for p, d in images.items() if d}
    report = (out / "report.html").read_text()
    assert Path(top[0]).name in report and len(list((out / "report").glob("*-heat.jpg"))) == 12


def test_progress_events_and_metrics(tmp_path: Path) -> None:
    files = write_detector(tmp_path / "mv_det")
    image_folder(tmp_path / "in", 10)
    ctx = recording_context(tmp_path, {"mv_det": files})
    run(ctx, params(tmp_path))
    last = progress(ctx)[-1]
    assert last["done"] == last["total"] == 10 and last["images_per_s"] > 0
    assert last["eta_s"] == 0 and last["errors"] == 0 and last["anomalies"] == 3
    assert any(e["type"] == "metrics" and e["data"]["step"] == 10 for e in ctx.events)


def test_a_tiling_detector_maps_images_at_their_resolution(tmp_path: Path) -> None:
    files = write_detector(tmp_path / "mv_tile", tiling=True, sigma=1.0)
    big = save(tmp_path / "in" / "big.png", surface((90, 50), defect=True))
    ctx = recording_context(tmp_path, {"mv_tile": files})
    run(ctx, params(tmp_path, "mv_tile", save_heatmaps="all"))
    (row,) = results(tmp_path)
    assert row["path"] == str(big) and row["is_anomaly"] is True
    heat = Image.open(tmp_path / "out" / row["heatmap"])
    assert heat.size == (90, 50) and heat.mode == "L"


def test_csv_from_a_list_file_with_a_classifier(tmp_path: Path) -> None:
    files = write_tiny_classifier(tmp_path / "mv_cls")
    a = save(tmp_path / "imgs" / "a.png", surface(seed=1))
    b = save(tmp_path / "imgs" / "b.jpg", surface(seed=2))
    listing = tmp_path / "lists" / "todo.txt"
    listing.parent.mkdir()
    listing.write_text(f"# to inspect\n../imgs/a.png\n\n{b}\n../imgs/missing.png\n{a}\n")
    ctx = recording_context(tmp_path, {"mv_cls": files})

    run(ctx, params(tmp_path, "mv_cls", input=str(listing), format="csv", threshold=0.1))

    with open(tmp_path / "out" / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["path"] for r in rows] == [str(a), str(b), str(tmp_path / "imgs" / "missing.png")]
    assert rows[2]["error"] == "file not found"
    assert all(r["label"] in ("cat", "dog", "fox") and 0 < float(r["score"]) <= 1 for r in rows[:2])
    assert all(r["is_anomaly"] == "" and r["heatmap"] == "" for r in rows)  # classifiers
    assert (tmp_path / "out" / "report.html").exists()


def test_another_model_version_into_the_same_output_is_refused(tmp_path: Path) -> None:
    models = {"mv_a": write_detector(tmp_path / "mv_a"), "mv_b": write_detector(tmp_path / "mv_b")}
    image_folder(tmp_path / "in", 3)
    ctx = recording_context(tmp_path, models)
    run(ctx, params(tmp_path, "mv_a"))
    with pytest.raises(InvalidRequest) as err:
        run(ctx, params(tmp_path, "mv_b"))
    assert err.value.code == "output_mismatch" and err.value.param == "output"
    assert str(tmp_path / "out") in err.value.message and "'mv_a' (now 'mv_b')" in err.value.message
    with pytest.raises(InvalidRequest, match="threshold"):
        run(ctx, params(tmp_path, "mv_a", threshold=0.9))
    run(ctx, params(tmp_path, "mv_a", format="csv"))  # the output format may change
    assert (tmp_path / "out" / "results.csv").exists()


def test_a_rerun_after_cancel_does_only_what_is_left(tmp_path: Path) -> None:
    files = write_detector(tmp_path / "mv_det")
    images = image_folder(tmp_path / "in", 30)
    ctx = recording_context(tmp_path, {"mv_det": files}, cancel_after=3)
    stopped = run(ctx, params(tmp_path, batch_size=4, part_rows=1000))
    assert stopped["cancelled"] is True and 0 < stopped["done"] < 30
    assert not (tmp_path / "out" / "results.parquet").exists()

    again = recording_context(tmp_path, {"mv_det": files})
    summary = run(again, params(tmp_path, batch_size=4))
    assert summary["run"]["processed"] == 30 - stopped["done"]
    assert sorted(r["path"] for r in results(tmp_path)) == sorted(images)
    # A grown folder: a third run does only the new image.
    save(tmp_path / "in" / "late.png", surface())
    assert run(again, params(tmp_path))["run"]["processed"] == 1
    assert len(results(tmp_path)) == 31


def test_one_run_per_output_folder(tmp_path: Path) -> None:
    files = write_detector(tmp_path / "mv_det")
    image_folder(tmp_path / "in", 2)
    ctx = recording_context(tmp_path, {"mv_det": files})
    with locked(tmp_path / "out"), pytest.raises(Conflict, match="in use"):
        run(ctx, params(tmp_path))


def test_the_walk_is_sorted_and_skips_the_output_inside_the_input(tmp_path: Path) -> None:
    for name in ("b/2.png", "a.png", "b/10.PNG", "c.jpeg", "b/out/x.png", "z/.d.png"):
        save(tmp_path / name, surface((4, 4)))
    source = open_source(str(tmp_path), exclude=tmp_path / "b" / "out")
    rel = [str(Path(p).relative_to(tmp_path)) for p in source.paths()]
    assert rel == ["a.png", "b/10.PNG", "b/2.png", "c.jpeg"] and source.count() == 4
    with pytest.raises(InvalidRequest) as err:
        open_source(str(tmp_path / "nope"))
    assert err.value.param == "input"


def test_params_are_checked_in_the_control_plane() -> None:
    spec = get_recipe("batch-inspection")
    assert spec.needs_model and spec.server_paths == ("input", "output")
    good = spec.validate_params({"model": "castings", "input": "/data/in", "output": "/r"})
    assert good["batch_size"] == "auto" and good["save_heatmaps"] == "anomalies"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"input": "relative/path"}, "params.input"),
        ({"format": "xlsx"}, "params.format"),
        ({"threshold": float("nan")}, "params.threshold"),
        ({"part_rows": 0}, "params.part_rows"),
    ]
    for bad, field in cases:
        with pytest.raises(InvalidRequest) as err:
            spec.validate_params({"model": "m", "input": "/in", "output": "/out", **bad})
        assert err.value.param == field


def test_without_a_pinned_version_the_run_says_how_to_create_it(tmp_path: Path) -> None:
    ctx = recording_context(tmp_path, {})
    with pytest.raises(InvalidRequest, match="jobs create"):
        run(ctx, params(tmp_path, None))

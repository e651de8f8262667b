"""`modelfab inspect`: the command's outputs through `main(argv)` with a fake endpoint
behind the SDK, and the whole flow against a real platform serving a tiny ONNX anomaly
detector and a tiny classifier on replica processes. The scoring engine under it is tested
in tests/apps/inspection/test_scoring.py."""

from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from modelfab.apps.inspection.samples import draw_defect_with_mask, texture_surface
from modelfab.cli import inspect as inspect_cli
from modelfab.cli.main import EXIT_API_ERROR, EXIT_USAGE, main
from modelfab.client import ApiError
from modelfab.db.models import Tenant
from modelfab.recipes.anomaly.export import export_onnx
from modelfab.recipes.anomaly.params import PatchCoreParams
from modelfab.recipes.anomaly.patchcore import PatchCore
from modelfab.schemas.endpoints import Prediction
from modelfab.server import Platform
from tests.apps.inspection.factories import FakeEndpoint, parts, pixel, write_corrupt, write_image
from tests.cli.conftest import RunCli
from tests.cli.test_endpoints_cli import team_key
from tests.e2e.test_serving import register_tiny
from tests.registry_factories import complete, insert_running_job, model_report

pytestmark = pytest.mark.timeout(120)

SIZE = 32  # the tiny detector's input size


# -- the command with the fake behind the SDK -------------------------------------------------
class FakeClient:
    def __init__(self, endpoint: FakeEndpoint, seen: list[dict[str, Any]]) -> None:
        self.endpoint, self.seen = endpoint, seen

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def predict(self, name: str, images: list[Path], **options: Any) -> Prediction:
        self.seen.append({"name": name, **options})
        if name != "detector":
            raise ApiError(404, "not_found", f"no endpoint named {name!r}", param="name")
        answer = self.endpoint(images)  # as the SDK parses it
        return Prediction.model_validate({**answer, "usage": {"items": len(images)}})


@pytest.fixture
def fake_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[RunCli, list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(inspect_cli, "client", lambda: FakeClient(FakeEndpoint(), seen))
    monkeypatch.setenv("COLUMNS", "200")

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run, seen


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_report_csv_and_exit_1_when_a_file_is_corrupt(
    fake_cli: tuple[RunCli, list[dict[str, Any]]], tmp_path: Path
) -> None:
    cli, seen = fake_cli
    parts(tmp_path / "in")
    report = tmp_path / "out" / "line 3.html"
    code, out, err = cli("inspect", "detector", str(tmp_path / "in"), "--report", str(report),
                         "--batch-size", "3", "--threshold", "0.5")  # fmt: skip
    assert code == 1
    assert "04.png" in err and "not a readable image" in err
    assert "scored 6 of 7 images with mv_fake" in out and "2 anomalies, 4 good, 1 errors" in out
    assert "top anomalies" in out and "02.png" in out and str(report) in out
    assert seen[0] == {"name": "detector", "top_k": 1, "threshold": 0.5, "heatmap": None}
    rows = read_csv(tmp_path / "out" / "line 3.csv")
    assert [Path(r["path"]).name for r in rows] == ["01.png", "02.png", "03.jpg", "04.png",
                                                    "05.png", "06.bmp", "07.png"]  # fmt: skip
    assert rows[3]["verdict"] == "error" and "readable" in rows[3]["error"]
    assert rows[1]["verdict"] == "anomaly" and float(rows[1]["score"]) == 1.0
    page = report.read_text()
    for link in re.findall(r"(?:src|href)='([^']*)'", page):
        assert link.startswith("line%203_files/") and (report.parent / link.replace("%20", " ")
                                                       ).is_file()  # fmt: skip
    assert page.index("02.png") < page.index("01.png")  # by score


def test_table_only_json_and_errors_of_the_command(
    fake_cli: tuple[RunCli, list[dict[str, Any]]], tmp_path: Path
) -> None:
    cli, seen = fake_cli
    files = [write_image(tmp_path / "ok.png"), write_image(tmp_path / "hot.png", spot=True)]
    code, out, _ = cli("inspect", "detector", *map(str, files))
    assert code == 0 and "hot.png" in out and "anomaly" in out and "report" not in out
    assert seen[-1]["heatmap"] is False and seen[-1]["threshold"] is None
    assert not list(tmp_path.glob("*_files"))

    code, out, _ = cli("inspect", "detector", str(tmp_path), "--csv", str(tmp_path / "r.csv"),
                       "-o", "json")  # fmt: skip
    answer = json.loads(out)
    assert code == 0 and answer["counts"] == {"images": 2, "scored": 2, "anomalies": 1,
                                              "good": 1, "errors": 0}  # fmt: skip
    assert [d["verdict"] for d in answer["data"]] == ["anomaly", "good"]  # hot.png, ok.png
    assert len(read_csv(tmp_path / "r.csv")) == 2

    code, _, err = cli("inspect", "other", str(files[0]), "--report", str(tmp_path / "x.html"))
    assert code == EXIT_API_ERROR and "no endpoint named 'other'" in err
    assert not (tmp_path / "x.html").exists()
    (tmp_path / "empty").mkdir()
    code, _, err = cli("inspect", "detector", str(tmp_path / "empty"))
    assert code == EXIT_USAGE and "no image files" in err


# -- against a real platform ------------------------------------------------------------------
def write_detector(path: Path) -> Path:
    """A tiny anomaly detector as the contract's model.onnx: maps = relu(mean over channels
    of the normalised image), (N, S, S); scores = the largest map value, (N,)."""
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], axes=[1], keepdims=0),
        helper.make_node("Relu", ["m"], ["maps"]),
        helper.make_node("ReduceMax", ["maps"], ["scores"], axes=[1, 2], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n"]),
         helper.make_tensor_value_info("maps", TensorProto.FLOAT, ["n", SIZE, SIZE])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


DETECTOR_LABELS = {
    "task": "anomaly-detection", "image_size": SIZE, "mean": [0.5] * 3, "std": [0.5] * 3,
    "input": "images", "outputs": ["scores", "maps"], "threshold": 0.5,
    "threshold_source": "good_quantile", "tiling": False, "tile_overlap": 0.25, "sigma": 4.0,
    "maps_blurred": True, "map_scale": 1.0,
}  # fmt: skip


def register_detector(
    platform: Platform,
    factory: sessionmaker[Session],
    tmp_path: Path,
    name: str,
    *,
    onnx_path: Path | None = None,
    labels: dict[str, Any] = DETECTOR_LABELS,
) -> None:
    """Register `name` holding a detector's model.onnx and labels.json (the tiny
    hand-built graph unless `onnx_path` is given), as an anomaly-detection job would."""
    with factory() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == "vision"))
    assert tenant_id is not None
    onnx_path = onnx_path or write_detector(tmp_path / name / "model.onnx")
    artifacts = {"model.onnx": (onnx_path.read_bytes(), "onnx"),
                 "labels.json": (json.dumps(labels).encode(), "json")}  # fmt: skip
    job_id, token = insert_running_job(factory, tenant_id)
    with httpx.Client(base_url=platform.url) as http:
        model = model_report(http, job_id, token, name, artifacts=artifacts)
        resp = complete(http, job_id, token, model={**model, "task": "anomaly-detection"})
    assert resp.status_code == 200, resp.text


def test_inspect_against_a_real_anomaly_endpoint(
    cli: RunCli,
    platform: Platform,
    factory: sessionmaker[Session],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    team_key(cli, monkeypatch)
    register_detector(platform, factory, tmp_path, "detector")
    code, _, err = cli("endpoints", "create", "detector", "--model", "detector:1", "--cpus", "0.5")
    assert code == 0, err
    files = parts(tmp_path / "in")
    write_image(tmp_path / "in" / "<b>x.png", spot=True)
    report = tmp_path / "out" / "report.html"
    code, out, err = cli("inspect", "detector", str(tmp_path / "in"), "--report", str(report),
                         "--batch-size", "3", "--concurrency", "2")  # fmt: skip
    assert code == 1, err
    assert "04.png" in err and "scored 7 of 8 images" in out
    rows = {Path(r["path"]).name: r for r in read_csv(tmp_path / "out" / "report.csv")}
    assert rows["04.png"]["verdict"] == "error" and "readable" in rows["04.png"]["error"]
    assert {n for n, r in rows.items() if r["verdict"] == "anomaly"} == {"02.png", "06.bmp",
                                                                          "<b>x.png"}  # fmt: skip
    assert float(rows["02.png"]["score"]) == pytest.approx(1.0, abs=1e-5)
    assert float(rows["01.png"]["score"]) == 0.0 and rows["01.png"]["threshold"] == "0.5"
    assert all((report.parent / r["overlay"]).is_file() for r in rows.values() if r["score"])
    page = report.read_text()
    assert "&lt;b&gt;x.png" in page and "<b>x.png" not in page and "mv_" in page
    r, _, b = pixel(report.parent / rows["02.png"]["overlay"], 10, 8)  # the spot is hot
    r2, _, b2 = pixel(report.parent / rows["02.png"]["overlay"], 40, 34)  # dark corner: cold
    assert r > b and r > r2 and b2 > r2

    code, out, err = cli("inspect", "detector", str(files[0]), "--threshold=-1",
                         "-o", "json")  # fmt: skip
    assert code == 0, (code, out, err)
    answer = json.loads(out)
    assert code == 0 and answer["threshold"] == -1.0 and answer["data"][0]["is_anomaly"] is True
    code, _, err = cli("inspect", "nope", str(files[0]))
    assert code == EXIT_API_ERROR and "nope" in err


def test_inspect_against_a_real_classifier_endpoint(
    cli: RunCli,
    platform: Platform,
    factory: sessionmaker[Session],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    team_key(cli, monkeypatch)
    register_tiny(platform, factory, tmp_path, "parts", seed=1)
    code, _, err = cli("endpoints", "create", "parts", "--model", "parts:1", "--cpus", "0.5")
    assert code == 0, err
    files = [write_image(tmp_path / "in" / f"{i}.png") for i in range(3)]
    report = tmp_path / "r.html"
    code, _, err = cli("inspect", "parts", *map(str, files), "--report", str(report))
    assert code == 0, err
    rows = read_csv(tmp_path / "r.csv")
    assert all(r["label"] in ("cat", "dog", "fox") and r["verdict"] == r["label"] for r in rows)
    assert all(r["overlay"] == "" and (tmp_path / r["thumbnail"]).is_file() for r in rows)
    assert "not calibrated" in report.read_text()


def test_inspect_scores_as_the_exported_patchcore_does(
    cli: RunCli,
    platform: Platform,
    factory: sessionmaker[Session],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real PatchCore (the random-init tiny-cnn backbone, 64 px) exported by the recipe's
    exporter: what the CLI reports through the endpoint is what the detector says."""
    rng = random.Random(3)
    params = PatchCoreParams(backbone="tiny-cnn", image_size=64, max_bank=200)
    detector = PatchCore.fit([texture_surface(rng, 64, "gravel") for _ in range(8)], params)
    images = [texture_surface(rng, 64, "gravel") for _ in range(4)]
    images[2], _ = draw_defect_with_mask(images[2], rng)
    detector.calibrate(detector.score(images[:2], with_maps=False).scores)
    expected = detector.score(images).scores
    onnx_path, labels_path = export_onnx(detector, tmp_path / "export")
    team_key(cli, monkeypatch)
    register_detector(platform, factory, tmp_path, "patchcore", onnx_path=onnx_path,
                      labels=json.loads(labels_path.read_text()))  # fmt: skip
    code, _, err = cli("endpoints", "create", "patchcore", "--model", "patchcore", "--cpus", "1")
    assert code == 0, err
    (tmp_path / "in").mkdir()
    for i, image in enumerate(images):
        image.save(tmp_path / "in" / f"{i}.png")
    write_corrupt(tmp_path / "in" / "9.png")
    report = tmp_path / "report.html"
    code, out, err = cli("inspect", "patchcore", str(tmp_path / "in"), "--report", str(report),
                         "--batch-size", "2")  # fmt: skip
    assert code == 1 and "9.png" in err, (out, err)
    rows = read_csv(tmp_path / "report.csv")
    assert [r["verdict"] for r in rows][-1] == "error"
    got = np.array([float(r["score"]) for r in rows[:4]])
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
    flags = detector.flags(expected)
    assert [r["is_anomaly"] == "true" for r in rows[:4]] == flags.tolist()
    assert all((tmp_path / r["overlay"]).is_file() for r in rows[:4])

"""The anomaly-detection recipe through a real control plane and real workers: fit a
PatchCore detector on good brick surfaces (scikit-image's texture) in the MVTec layout,
calibrate and evaluate it on drawn defects, export it and register it."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
from PIL import Image

from modelfab.apps.inspection.samples import (
    make_inspection_set,
    texture_surface,
    write_anomaly_dataset,
)
from modelfab.cli.main import main
from modelfab.client import Client
from modelfab.recipes.anomaly.job import EXAMPLE_SIDE
from modelfab.server import Platform
from tests.e2e.helpers import wait_terminal

FAST = {"image_size": 64, "batch_size": 8}
"""Small enough for CI's two cores; brick defects still stand out at 64 px."""


def brick_dataset(root: Path, *, good: int = 24, test_good: int = 6, defective: int = 8) -> Path:
    rng = random.Random(7)
    train = [texture_surface(rng, 96, "brick") for _ in range(good)]
    test = make_inspection_set(
        rng, texture_name="brick", good=test_good, defective=defective, size=96
    )
    return write_anomaly_dataset(root, train, test)


@pytest.fixture
def team_key(platform: Platform) -> str:
    admin = Client(platform.url, platform.settings.admin_key_path.read_text().strip())
    return str(admin.create_tenant("quality").api_key)


@pytest.fixture
def team(platform: Platform, team_key: str) -> Client:
    return Client(platform.url, team_key)


def registered_detector(team: Client, tmp_path: Path) -> None:
    """Runs the recipe on `castings` and checks the job, the version and its artifacts."""
    job = team.create_job("anomaly-detection", dataset="castings", params=FAST, cpus=1)
    done = wait_terminal(team, job.id, timeout_s=300)
    assert done.status == "succeeded", done.error
    result = done.result
    assert result["image_auroc"] >= 0.9
    assert result["threshold_source"] == "best_f1"  # test/ has defects
    assert result["bank_size"] <= result["patches_seen"]

    events = team.job_events(job.id)
    assert any(e.type == "progress" for e in events)
    assert any(e.message.startswith("ONNX parity") for e in events)

    version = team.get_model("castings")
    assert version.task == "anomaly-detection"
    formats = {a.name: a.format for a in version.artifacts}
    assert formats == {
        "model.onnx": "onnx",
        "labels.json": "json",
        "patchcore.json": "json",
        "memory_bank.npy": "numpy",
        "examples.png": "png",
    }
    metrics = version.metrics
    assert metrics["n_good"] == 6 and metrics["n_defective"] == 8
    assert set(metrics["recall_by_defect"]) and metrics["pixel_auroc"] is not None
    assert metrics["onnx_parity"]["max_score_diff"] <= metrics["onnx_parity"]["allowed"]
    labels_path = team.download_artifact("castings:1", "labels.json", tmp_path / "labels.json")
    labels = json.loads(labels_path.read_text())
    assert labels["task"] == "anomaly-detection"
    assert labels["threshold"] == pytest.approx(metrics["threshold"])
    assert labels["image_size"] == 64
    sheet = team.download_artifact("castings:1", "examples.png", tmp_path / "examples.png")
    with Image.open(sheet) as picture:  # 6 defects and 2 good images with their heatmaps
        assert picture.size == (4 * EXAMPLE_SIDE, 2 * (EXAMPLE_SIDE + 18))


@pytest.mark.one_backend  # the detector's threshold is under test, not the database
def test_good_images_only_give_a_good_quantile_threshold_and_no_auroc(
    team: Client, tmp_path: Path
) -> None:
    root = brick_dataset(tmp_path / "plain", good=20)
    for folder in ("test", "ground_truth"):
        for path in sorted((root / folder).rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        (root / folder).rmdir()
    team.create_dataset("plain", root, task="anomaly-detection")
    gated = team.create_job(
        "anomaly-detection", dataset="plain", params={**FAST, "min_image_auroc": 0.9}, cpus=1
    )
    plain = team.create_job("anomaly-detection", dataset="plain", params=FAST, cpus=1)
    failed = wait_terminal(team, gated.id, timeout_s=300)
    assert failed.status == "failed" and failed.error["code"] == "acceptance_failed"
    assert "defective test images" in failed.error["message"]
    done = wait_terminal(team, plain.id, timeout_s=300)
    assert done.status == "succeeded", done.error
    assert done.result["threshold_source"] == "good_quantile"
    assert done.result["image_auroc"] is None
    assert done.result["calibration_images"] == 6  # auto: 20 / 20 images, capped at 30%
    assert team.get_model("plain").version == 1  # only the ungated job registered


def test_the_issue_story_train_deploy_inspect(
    platform: Platform,
    team: Client,
    team_key: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """datasets create -> anomaly-detection job -> endpoint -> `modelfab inspect` report."""
    root = brick_dataset(tmp_path / "castings")
    team.create_dataset("castings", root, task="anomaly-detection")
    registered_detector(team, tmp_path)
    team.create_endpoint("castings-qc", model="castings", cpus=0.5)
    team.wait_endpoint("castings-qc", timeout_s=120)

    photos = tmp_path / "new-photos"
    photos.mkdir()
    spots = sorted((root / "test" / "spot").iterdir())
    goods = sorted((root / "test" / "good").iterdir())
    for path in [*spots, *goods]:
        (photos / f"{path.parent.name}-{path.name}").write_bytes(path.read_bytes())
    monkeypatch.setenv("MODELFAB_URL", platform.url)
    monkeypatch.setenv("MODELFAB_API_KEY", team_key)
    report = tmp_path / "report.html"
    code = main(["inspect", "castings-qc", str(photos), "--report", str(report)])
    assert code == 0, capsys.readouterr().err
    with (tmp_path / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(spots) + len(goods)
    flagged = {Path(r["path"]).name for r in rows if r["verdict"] == "anomaly"}
    assert {f"spot-{p.name}" for p in spots} <= flagged  # spots are the easiest defect
    assert all((tmp_path / r["overlay"]).is_file() for r in rows)
    page = report.read_text()
    assert "castings" in page and "threshold" in page.lower()

"""batch-inspection through a real platform: a detector exported from a fitted PatchCore
(tiny-cnn backbone) is registered, then `modelfab jobs create --recipe batch-inspection`
runs in a real worker process over a folder of generated images with a corrupt one.

Real processes because what is tested is the wiring: the control plane pins the model
version and checks the paths, the worker fetches the model's verified files, the recipe
writes its outputs where the tenant asked."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from modelfab.cli.main import main
from modelfab.client import Client
from modelfab.db.models import Tenant
from modelfab.server import Platform
from modelfab.settings import ServerSettings
from tests.registry_factories import complete, insert_running_job, model_report

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

RunCli = Callable[..., tuple[int, str]]


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model.onnx + labels.json of a real PatchCore (random-init tiny-cnn, 64 px) fitted on
    gravel crops and exported by the anomaly recipe's exporter."""
    from modelfab.apps.inspection.samples import texture_surface
    from modelfab.recipes.anomaly.export import export_onnx  # torch: only when this runs
    from modelfab.recipes.anomaly.params import PatchCoreParams
    from modelfab.recipes.anomaly.patchcore import PatchCore

    rng = random.Random(1)
    train = [texture_surface(rng, 64, "gravel") for _ in range(8)]
    detector = PatchCore.fit(train, PatchCoreParams(backbone="tiny-cnn", image_size=64))
    folder = tmp_path_factory.mktemp("detector")
    export_onnx(detector, folder)
    return folder


@pytest.fixture
def settings(settings: ServerSettings, tmp_path: Path) -> ServerSettings:
    """The conftest's settings with tmp_path/data as the tenants' path root."""
    return settings.model_copy(update={"path_roots": [tmp_path / "data"]})


@pytest.fixture
def team(platform: Platform) -> Client:
    admin = Client(platform.url, platform.settings.admin_key_path.read_text().strip())
    tenant = admin.create_tenant("vision", max_cpus=4, max_gpus=2)
    return Client(platform.url, tenant.api_key)


@pytest.fixture
def cli(team: Client, platform: Platform, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> RunCli:
    monkeypatch.setenv("MODELFAB_URL", platform.url)
    monkeypatch.setenv("MODELFAB_API_KEY", team._http.headers["Authorization"].split()[1])

    def run(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(list(argv))
        return code, capsys.readouterr().out

    return run


def register_detector(
    platform: Platform, factory: sessionmaker[Session], folder: Path, name: str
) -> None:
    """Register `folder`'s model.onnx and labels.json as a version of `name`, as the
    anomaly-detection recipe's job would."""
    with factory() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == "vision"))
    assert tenant_id is not None
    job_id, token = insert_running_job(factory, tenant_id)
    artifacts = {
        "model.onnx": ((folder / "model.onnx").read_bytes(), "onnx"),
        "labels.json": ((folder / "labels.json").read_bytes(), "json"),
    }
    with httpx.Client(base_url=platform.url) as http:
        model = model_report(http, job_id, token, name, artifacts=artifacts)
        model["task"] = "anomaly-detection"
        resp = complete(http, job_id, token, model=model)
    assert resp.status_code == 200, resp.text


def inspection_folder(root: Path, count: int) -> dict[str, bool]:
    """`count` gravel crops (every third with a drawn defect) in two sub-folders."""
    from modelfab.apps.inspection.samples import draw_defect_with_mask, texture_surface

    rng = random.Random(7)
    out = {}
    for i in range(count):
        image = texture_surface(rng, 96, "gravel")
        defect = i % 3 == 0
        if defect:
            image, _ = draw_defect_with_mask(image, rng)
        path = root / f"line-{i % 2}" / f"part-{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        out[str(path)] = defect
    return out


def test_a_registered_detector_inspects_a_folder_as_a_job(
    platform: Platform,
    team: Client,
    cli: RunCli,
    factory: sessionmaker[Session],
    detector_dir: Path,
    tmp_path: Path,
) -> None:
    register_detector(platform, factory, detector_dir, "castings")
    data = tmp_path / "data"
    images = inspection_folder(data / "archive", 39)
    corrupt = data / "archive" / "line-0" / "part-999.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n cut off in transfer")

    code, out = cli(  # the issue's own command line; --output names the results folder
        "jobs", "create", "--recipe", "batch-inspection", "--model", "castings",
        "--input", str(data / "archive"), "--output", str(data / "results"),
        "--param", "part_rows=10", "--gpus", "1", "--cpus", "2", "--wait",
    )  # fmt: skip
    (job,) = [j for j in team.list_jobs() if j.recipe == "batch-inspection"]
    assert code == 0 and job.status == "succeeded", (out, job)
    assert job.id in out and job.params["output"] == str(data / "results")
    assert job.params["model_version_id"].startswith("mv")  # pinned at create

    rows = pq.read_table(data / "results" / "results.parquet").to_pylist()
    assert sorted(r["path"] for r in rows) == sorted([*images, str(corrupt)])
    (bad,) = [r for r in rows if r["error"] is not None]
    assert bad["path"] == str(corrupt) and bad["score"] is None
    scored = [r for r in rows if r["error"] is None]
    assert all(r["score"] > 0 and r["label"] in ("good", "anomaly") for r in scored)
    for r in scored:
        assert (r["heatmap"] is not None) == r["is_anomaly"]
    summary = json.loads((data / "results" / "summary.json").read_text())
    assert summary["images"] == 40 and summary["errors"] == 1
    assert summary["model"]["version_id"] == job.params["model_version_id"]
    assert (data / "results" / "report.html").stat().st_size > 0
    assert job.result["images"] == 40

    events = team.job_events(job.id)
    progress = [e.data for e in events if e.type == "progress"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] == 40


def test_a_rerun_into_the_output_of_another_version_fails_naming_it(
    platform: Platform,
    team: Client,
    factory: sessionmaker[Session],
    detector_dir: Path,
    tmp_path: Path,
) -> None:
    register_detector(platform, factory, detector_dir, "castings")
    register_detector(platform, factory, detector_dir, "castings")
    data = tmp_path / "data"
    inspection_folder(data / "archive", 3)
    params = {"input": str(data / "archive"), "output": str(data / "results")}
    first = team.create_job("batch-inspection", params={"model": "castings:1", **params})
    assert team.wait_job(first.id, timeout_s=120).status == "succeeded"

    second = team.create_job("batch-inspection", params={"model": "castings:2", **params})
    done = team.wait_job(second.id, timeout_s=120)
    assert done.status == "failed" and done.error["code"] == "output_mismatch"
    assert str(data / "results") in done.error["message"]

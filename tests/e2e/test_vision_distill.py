"""`llm-distill` with an image-classification teacher through a real control plane and real
workers: a registered classifier is pinned at create, fetched by the distilling worker, run
through ONNX Runtime to label the images, and distilled into a hub student on labelled and
on unlabelled images; the student is registered with lineage to its teacher, a report
computed on the held-out split, and served like any classifier.

The teacher is a tiny hand-written ONNX classifier registered as a job would (not a timm
network trained by image-classification): it keeps the test well inside its time budget
(a training job with its ONNX export costs ~18 s here) and shows that any registered
classifier teaches, whatever its arch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from modelfab.client import ApiError, Client
from modelfab.db.models import Tenant
from modelfab.recipes.vision.data import split_unlabelled
from modelfab.server import Platform
from modelfab.serving.classifier import LoadedModel
from modelfab.serving.protocol import ModelFiles
from tests.e2e.helpers import wait_terminal
from tests.e2e.test_image_classification import stripes
from tests.registry_factories import insert_running_job, register
from tests.serving.factories import labels, write_classifier

STUDENT = {"student_model": "tiny-cnn", "epochs": 1, "batch_size": 8, "lr": 1e-2,
           "val_fraction": 0.25}  # fmt: skip

# The recipe and the serving contract are under test, not the database.
pytestmark = [pytest.mark.e2e, pytest.mark.one_backend]


@pytest.fixture
def team(platform: Platform, tmp_path: Path) -> Client:
    admin = Client(platform.url, platform.settings.admin_key_path.read_text().strip())
    client = Client(platform.url, admin.create_tenant("optics").api_key)
    labelled = stripes(tmp_path / "stripes", per_class=12)
    client.create_dataset("stripes", labelled, task="image-classification")
    client.create_dataset("loose", _flatten(labelled, tmp_path / "loose"), task="images")
    return client


def _flatten(root: Path, target: Path) -> Path:
    """The images of a folder-per-class dataset without their classes."""
    target.mkdir()
    for path in sorted(root.rglob("*.png")):
        shutil.copy(path, target / f"{path.parent.name[0]}{path.name}")
    return target


CLASSES = ["diagonal", "horizontal", "vertical"]  # the stripes' class folders


def _teacher(platform: Platform, factory: sessionmaker[Session], tmp_path: Path) -> None:
    """Register `stripes:1`, a tiny ONNX classifier of the stripes' classes, as a job would."""
    with factory() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == "optics"))
    assert tenant_id is not None
    onnx = write_classifier(tmp_path / "teacher" / "model.onnx", seed=3, classes=len(CLASSES))
    artifacts = {
        "model.onnx": (onnx.read_bytes(), "onnx"),
        "labels.json": (json.dumps(labels(CLASSES, image_size=32)).encode(), "json"),
    }
    job_id, token = insert_running_job(factory, tenant_id)
    with httpx.Client(base_url=platform.url) as http:
        register(http, job_id, token, "stripes", artifacts=artifacts)


def _served(team: Client, ref: str, folder: Path) -> LoadedModel:
    """The registered classifier `ref` loaded as a replica loads it."""
    onnx = team.download_artifact(ref, "model.onnx", folder / "model.onnx")
    labels_path = team.download_artifact(ref, "labels.json", folder / "labels.json")
    files = ModelFiles(version_id=ref, onnx_path=onnx, labels=json.loads(labels_path.read_text()))
    return LoadedModel(files)


def _top1(model: LoadedModel, paths: list[Path]) -> np.ndarray:
    with_rgb = [Image.open(p).convert("RGB") for p in paths]
    return model.predict(np.stack([model.preprocess(img) for img in with_rgb])).argmax(1)


def _refused_at_create(team: Client) -> None:
    """A chat teacher on images, and params of the other kind of teacher: 422 naming them."""
    cases = (
        ({}, "params.teacher"),  # the default teacher is a hub chat model
        ({"teacher": "stripes:1", "student_layers": [1]}, "params.student_layers"),
        ({"teacher": "stripes:1", "student_model": "smollm2-135m-instruct"},
         "params.student_model"),
    )  # fmt: skip
    for params, param in cases:
        with pytest.raises(ApiError) as caught:
            team.create_job("llm-distill", dataset="loose", params=params)
        assert caught.value.status == 422 and caught.value.param == param, caught.value


def test_an_image_teacher_is_distilled_on_labelled_and_unlabelled_images(
    platform: Platform, factory: sessionmaker[Session], team: Client, tmp_path: Path
) -> None:
    _teacher(platform, factory, tmp_path)
    teacher_id = team.get_model("stripes").id
    _refused_at_create(team)

    # Both students at once: their workers start (import torch) side by side.
    labelled = team.create_job("llm-distill", dataset="stripes", cpus=1,
                               params={"teacher": "stripes:1", **STUDENT})  # fmt: skip
    free_params = {"teacher": "stripes:1", **STUDENT, "model_name": "free"}
    loose = team.create_job("llm-distill", dataset="loose", cpus=1, params=free_params)
    assert labelled.params["teacher_version_id"] == teacher_id  # pinned at create
    for job in (labelled, loose):
        done = wait_terminal(team, job.id, timeout_s=120)
        assert done.status == "succeeded", done.error

    version = team.get_model("stripes-student")
    assert version.task == "image-classification" and version.base_model == "tiny-cnn"
    assert {a.name for a in version.artifacts} == {"weights.pt", "model.onnx", "labels.json"}
    metrics = version.metrics
    assert metrics["labelled"] is True and 0 <= metrics["accuracy"] <= 1
    assert 0 <= metrics["teacher_accuracy"] <= 1 and 0 <= metrics["agreement"] <= 1
    assert metrics["params"] > 0 and metrics["teacher_params"] > 0
    assert metrics["images_per_s"] > 0 and metrics["teacher_images_per_s"] > 0
    lineage = team.model_lineage("stripes-student:1")
    assert lineage.parent_model is not None and lineage.parent_model.ref == "stripes:1"
    assert lineage.job.id == labelled.id

    free = team.get_model("free")
    assert free.metrics["labelled"] is False and "accuracy" not in free.metrics
    assert team.model_lineage("free:1").parent_model.ref == "stripes:1"  # type: ignore[union-attr]

    # The agreement is the student's top-1 against the teacher's on the held-out images.
    rels = sorted(p.name for p in (tmp_path / "loose").iterdir())
    _, val = split_unlabelled(rels, STUDENT["val_fraction"], 0)
    held = [tmp_path / "loose" / rel for rel, _ in val]
    teacher = _top1(_served(team, "stripes:1", tmp_path / "t"), held)
    student = _top1(_served(team, "free:1", tmp_path / "s"), held)
    assert free.metrics["split"]["val"] == len(held)
    assert free.metrics["agreement"] == pytest.approx(float((teacher == student).mean()), abs=1e-6)

    team.create_endpoint("free", model="free:1", cpus=0.5)
    team.wait_endpoint("free", timeout_s=60)
    [answer] = team.predict("free", [held[0]]).data
    assert answer.label == CLASSES[student[0]]

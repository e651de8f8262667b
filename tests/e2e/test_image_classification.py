"""The image-classification recipe through a real control plane and real workers: train a
tiny network on generated images, register it, gate it, and resume it after a kill."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from modelfab.client import ApiError, Client
from modelfab.server import Platform
from tests.e2e.helpers import eventually, wait_terminal

# No augmentation: on 40-px stripes random crops mostly add noise for so few epochs.
TINY = {"base_model": "tiny-cnn", "image_size": 32, "batch_size": 8, "augment": False}


def stripes(root: Path, *, per_class: int = 24, signal_strength: bool = True) -> Path:
    """Three classes: horizontal, vertical and diagonal stripes (or pure noise when
    `signal_strength` is False, so that no model can beat chance)."""
    rng = random.Random(0)
    for label in ("horizontal", "vertical", "diagonal"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            img = Image.new("RGB", (40, 40), tuple(rng.randint(0, 80) for _ in range(3)))
            draw = ImageDraw.Draw(img)
            kind = label if signal_strength else rng.choice(["horizontal", "vertical", "diagonal"])
            for k in range(0, 40, 8):
                off = k + rng.randint(0, 3)
                line = {"horizontal": (0, off, 39, off), "vertical": (off, 0, off, 39)}.get(
                    kind, (off, 0, off + 20, 39)
                )
                draw.line(line, fill=(230, 230, 230), width=3)
            img.save(root / label / f"{i:03d}.png")
    return root


@pytest.fixture
def team(platform: Platform) -> Client:
    admin = Client(platform.url, platform.settings.admin_key_path.read_text().strip())
    return Client(platform.url, admin.create_tenant("vision").api_key)


@pytest.mark.one_backend  # the training, export and parity are under test, not the database
def test_trains_evaluates_exports_and_registers(team: Client, tmp_path: Path) -> None:
    team.create_dataset("stripes", stripes(tmp_path / "stripes"), task="image-classification")
    job = team.create_job(
        "image-classification", dataset="stripes", params={**TINY, "epochs": 6}, cpus=1
    )
    done = wait_terminal(team, job.id, timeout_s=300)
    assert done.status == "succeeded", done.error
    assert done.result["accuracy"] >= 0.8
    events = team.job_events(job.id)
    metrics = [e.data for e in events if e.type == "metrics"]
    assert any("loss" in m or "train_loss" in m for m in metrics)
    assert any(e.type == "checkpoint" for e in events)

    version = team.get_model("stripes")
    assert version.version == 1 and version.metrics["accuracy"] == done.result["accuracy"]
    formats = {a.name: a.format for a in version.artifacts}
    assert formats == {"weights.pt": "pytorch", "model.onnx": "onnx", "labels.json": "json"}
    assert all(len(a.sha256) == 64 for a in version.artifacts)
    lineage = team.model_lineage("stripes:1")
    assert lineage.job.id == job.id
    assert lineage.dataset.sha256 == team.get_dataset("stripes").sha256
    onnx = team.download_artifact("stripes:1", "model.onnx", tmp_path / "out" / "model.onnx")
    assert onnx.stat().st_size > 0


def test_acceptance_gate_fails_the_job_and_registers_nothing(team: Client, tmp_path: Path) -> None:
    team.create_dataset(
        "noise", stripes(tmp_path / "n", signal_strength=False), task="image-classification"
    )
    params = {**TINY, "epochs": 1, "min_accuracy": 0.99}
    job = team.create_job("image-classification", dataset="noise", params=params, cpus=1)
    done = wait_terminal(team, job.id, timeout_s=300)
    assert done.status == "failed" and done.attempt == 1  # not retried: the user's to fix
    assert done.error["code"] == "acceptance_failed"
    assert "min_accuracy" in done.error["message"]
    with pytest.raises(ApiError) as err:
        team.get_model("noise")
    assert err.value.status == 404


def test_killed_training_resumes_from_its_checkpoint(team: Client, tmp_path: Path) -> None:
    team.create_dataset(
        "stripes", stripes(tmp_path / "s", per_class=24), task="image-classification"
    )
    params = {**TINY, "epochs": 4, "patience": 10}
    job = team.create_job("image-classification", dataset="stripes", params=params, cpus=1)

    def first_checkpoint() -> int | None:
        events = team.job_events(job.id)
        if any(e.type == "checkpoint" and e.attempt == 1 for e in events):
            started = [e for e in events if " started " in e.message and e.attempt == 1]
            return int(started[0].data["pid"])
        return None

    pid = eventually(first_checkpoint, timeout_s=180, what="the first checkpoint")
    os.kill(pid, signal.SIGKILL)
    done = wait_terminal(team, job.id, timeout_s=300)
    assert done.status == "succeeded", done.error
    assert done.attempt == 2 and done.failures == 1
    result = done.result
    assert result["resumed_from_epoch"] >= 1
    # The retry ran only what was left: fewer epochs than the job did in all.
    assert 0 < result["epochs_run"] < result["epochs_done"]
    assert result["steps_run"] > 0
    assert any("Resumed from checkpoint" in e.message for e in team.job_events(job.id))

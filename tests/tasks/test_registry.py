"""The task registry: lookups, errors naming the valid tasks, registration rules."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from modelfab.errors import DatasetInvalid, InvalidRequest
from modelfab.tasks import (
    ANOMALY_DETECTION,
    IMAGE_CLASSIFICATION,
    check_task,
    get_task,
    register_task,
    task_names,
    unregister_task,
)

CLS = IMAGE_CLASSIFICATION


def test_check_task_accepts_known_and_names_them_for_unknown() -> None:
    assert check_task(CLS) == CLS
    with pytest.raises(InvalidRequest) as info:
        check_task("segmentation")
    assert info.value.param == "task"
    assert all(t in info.value.message for t in task_names())


def test_scan_rejects_unknown_task_before_touching_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest) as info:
        get_task("segmentation").scan(tmp_path / "missing")
    assert info.value.param == "task"
    assert not isinstance(info.value, DatasetInvalid)


def test_built_in_tasks_are_registered_with_their_served_kind() -> None:
    assert {CLS, ANOMALY_DETECTION} <= set(task_names())
    for name in (CLS, ANOMALY_DETECTION):
        spec = get_task(name)
        assert spec.name == name and spec.servable
        assert spec.serving_artifacts == ("model.onnx", "labels.json")
        assert spec.served_model is not None and ":" in spec.served_model


def test_registering_is_idempotent_but_a_name_is_taken_once() -> None:
    spec = get_task(CLS)
    assert register_task(spec) is spec
    other = replace(spec, name="toy-registry-test")
    register_task(other)
    try:
        assert get_task("toy-registry-test") is other
        with pytest.raises(ValueError, match="already registered"):
            register_task(replace(other, description="another"))
    finally:
        unregister_task("toy-registry-test")
    assert "toy-registry-test" not in task_names()


def test_the_control_plane_side_never_imports_onnxruntime() -> None:
    """The registry holds served-model kinds as import strings."""
    import subprocess
    import sys

    code = "import sys, modelfab.tasks; print('onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

"""The classifier's query options: `top_k` only; any other option is refused by name
(a detector's `threshold` would otherwise be silently ignored)."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from modelfab.errors import InvalidRequest
from modelfab.serving.models import LoadedModel, ModelCache
from modelfab.serving.replica_app import create_replica_app
from tests.serving.factories import AUTH, SECRET, DirLoader, image_bytes, model_files


@pytest.fixture
def model(tmp_path: Path) -> LoadedModel:
    return LoadedModel(model_files(tmp_path, "v1"))


@pytest.mark.parametrize(
    "options",
    [{}, {"top_k": "1"}, {"top_k": "3"}, {"heatmap": "false"}, {"top_k": "2", "heatmap": "0"}],
)
def test_top_k_and_a_request_for_no_heatmap_are_taken(
    model: LoadedModel, options: dict[str, str]
) -> None:
    model.check_options(options)


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"threshold": "abc"}, "threshold"),
        ({"threshold": "0.5"}, "threshold"),
        ({"heatmap": "true"}, "heatmap"),
        ({"heatmap": "maybe"}, "heatmap"),
        ({"top_k": "1", "colour": "red"}, "colour"),
        ({"zeta": "1", "alpha": "2"}, "alpha"),
    ],
)
def test_options_a_classifier_does_not_take_are_refused_by_name(
    model: LoadedModel, options: dict[str, str], param: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        model.check_options(options)
    assert caught.value.param == param
    assert "classifier" in caught.value.message and "top_k" in caught.value.message


def test_a_malformed_top_k_is_still_named(model: LoadedModel) -> None:
    with pytest.raises(InvalidRequest) as caught:
        model.check_options({"top_k": "x"})
    assert caught.value.param == "top_k"


def test_the_replica_answers_422_for_a_threshold_on_a_classifier(tmp_path: Path) -> None:
    cache = ModelCache(DirLoader(tmp_path), budget_bytes=10**9, intra_op_threads=1)
    app = create_replica_app(cache, secret=SECRET)
    with TestClient(app, headers=AUTH, raise_server_exceptions=False) as client:
        files = [("file", ("a.png", image_bytes()))]
        refused = client.post("/models/v1/predict?threshold=abc", files=files)
        taken = client.post("/models/v1/predict?top_k=2", files=files)
    assert refused.status_code == 422, refused.text
    err = refused.json()["error"]
    assert (err["code"], err["param"]) == ("invalid_request", "threshold")
    assert taken.status_code == 200 and len(taken.json()["data"][0]["top_k"]) == 2

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from starlette.testclient import TestClient

from modelfab.serving.inputs import decode_image
from modelfab.serving.models import LoadedModel, ModelCache, softmax
from modelfab.serving.replica_app import ReplicaServer, create_replica_app
from tests.serving.factories import AUTH, CLASSES, SECRET, DirLoader, image_bytes


@pytest.fixture
def loader(tmp_path: Path) -> DirLoader:
    return DirLoader(tmp_path)


@pytest.fixture
def cache(loader: DirLoader) -> ModelCache:
    return ModelCache(loader, budget_bytes=10**9, intra_op_threads=1)


@pytest.fixture
def client(cache: ModelCache) -> Iterator[TestClient]:
    app = create_replica_app(cache, secret=SECRET, max_images=4, max_body_bytes=200_000, workers=2)
    with TestClient(app, raise_server_exceptions=False, headers=AUTH) as c:
        yield c


@pytest.fixture
def batch_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every batch LoadedModel.predict runs records its size; each takes >= 20 ms, so
    requests pile up behind it as they would behind a real model."""
    sizes: list[int] = []
    original = LoadedModel.predict

    def predict(self: LoadedModel, batch: np.ndarray) -> np.ndarray:
        sizes.append(len(batch))
        time.sleep(0.02)
        return original(self, batch)

    monkeypatch.setattr(LoadedModel, "predict", predict)
    return sizes


def expected_probs(loader: DirLoader, version_id: str, data: bytes) -> np.ndarray:
    """Probabilities from running the ONNX session directly."""
    files = loader(version_id)
    pixels = LoadedModel(files).preprocess(decode_image("x", data))
    session = ort.InferenceSession(str(files.onnx_path), providers=["CPUExecutionProvider"])
    return softmax(session.run(["logits"], {"images": pixels[None]})[0])[0]


def error(response: Any) -> tuple[int, str, str | None]:
    """(status, code, param) of an error response (httpx or the TestClient's)."""
    err = response.json()["error"]
    return response.status_code, err["code"], err["param"]


def test_health_load_and_predict(client: TestClient, loader: DirLoader) -> None:
    empty = {"status": "ok", "models": [], "outstanding": 0, "stats": []}
    assert client.get("/health").json() == empty
    loaded = client.post("/models/v1/load").json()
    assert loaded["version_id"] == "v1" and loaded["loaded"] is True and loaded["load_ms"] > 0
    health = client.get("/health").json()
    assert health["models"] == ["v1"]
    # a classifier reports its batcher's queue only; the engine's fields are a chat model's
    [stats] = health["stats"]
    assert (stats["version_id"], stats["queue_depth"], stats["running"]) == ("v1", 0, 0)
    assert stats["tokens_per_s"] is None and stats["adapters"] == []
    a, b = image_bytes(seed=1), image_bytes(size=(64, 20), seed=2, fmt="JPEG")
    r = client.post(
        "/models/v1/predict?top_k=3", files=[("file", ("a.png", a)), ("file", ("b.jpg", b))]
    )
    assert r.status_code == 200 and r.headers["x-modelfab-items"] == "2"
    body = r.json()
    assert (body["object"], body["model_version"], body["usage"]) == ("list", "v1", {"items": 2})
    for i, (item, data) in enumerate(zip(body["data"], [a, b], strict=True)):
        probs = expected_probs(loader, "v1", data)
        assert (item["index"], item["name"]) == (i, ["a.png", "b.jpg"][i])
        assert [p["label"] for p in item["top_k"]] == [CLASSES[j] for j in np.argsort(-probs)]
        assert [p["score"] for p in item["top_k"]] == pytest.approx(sorted(probs)[::-1], abs=1e-6)
        assert (item["label"], item["score"]) == (
            item["top_k"][0]["label"],
            item["top_k"][0]["score"],
        )


def test_predict_takes_json_and_defaults_to_top_1(client: TestClient) -> None:
    doc = {"images": [{"name": "a", "data": base64.b64encode(image_bytes()).decode()}]}
    r = client.post("/models/v2/predict", json=doc)
    assert r.status_code == 200
    [item] = r.json()["data"]
    assert item["name"] == "a" and len(item["top_k"]) == 1 and item["label"] in CLASSES


def test_a_large_body_is_parsed_too(cache: ModelCache) -> None:
    """Over PARSE_INLINE_BYTES the body is split into files in the thread pool."""
    data = image_bytes((300, 300), fmt="BMP")
    with TestClient(create_replica_app(cache, secret=SECRET), headers=AUTH) as client:
        r = client.post("/models/v1/predict", json={"images": [base64.b64encode(data).decode()]})
    assert r.status_code == 200 and r.json()["usage"] == {"items": 1}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {SECRET}x"},
        {"Authorization": SECRET},  # not a bearer
        {"Authorization": f"Basic {SECRET}"},
        {"x-modelfab-replica-secret": SECRET},
    ],
)
def test_a_replica_answers_only_who_presents_its_secret(
    cache: ModelCache, loader: DirLoader, headers: dict[str, str]
) -> None:
    """Only the gateway and the controller know the secret: anything else that finds the
    port gets 401 on every path, and nothing is loaded or run."""
    with TestClient(create_replica_app(cache, secret=SECRET)) as http:
        answers = [
            http.get("/health", headers=headers),
            http.post("/models/v1/load", headers=headers),
            http.post(
                "/models/v1/predict", headers=headers, files=[("f", ("a.png", image_bytes()))]
            ),
            http.get("/nowhere", headers=headers),
        ]
        assert [r.status_code for r in answers] == [401] * 4
        for r in answers:
            error = r.json()["error"]
            assert error["code"] == "unauthenticated" and SECRET not in r.text
        assert loader.calls == [] and cache.loaded() == []
        assert http.get("/health", headers=AUTH).status_code == 200


def test_a_replica_needs_a_real_secret(cache: ModelCache) -> None:
    with pytest.raises(ValueError, match="secret"):
        create_replica_app(cache, secret="short")


@pytest.mark.parametrize(
    ("path", "kwargs", "expected"),
    [
        ("/models/missing-1/predict", {}, (404, "not_found", "version_id")),
        ("/models/v1/predict?top_k=0", {}, (422, "invalid_request", "top_k")),
        ("/models/v1/predict?top_k=x", {}, (422, "invalid_request", "top_k")),
        ("/models/v1/predict?top_k=4", {}, (422, "invalid_request", "top_k")),
        (
            "/models/v1/predict",
            {"headers": {"x-modelfab-max-batch-size": "0"}},
            (422, "invalid_request", "x-modelfab-max-batch-size"),
        ),
        (
            "/models/v1/predict",
            {"headers": {"x-modelfab-max-wait-ms": "5000"}},
            (422, "invalid_request", "x-modelfab-max-wait-ms"),
        ),
        (
            "/models/v1/predict",
            {"headers": {"x-modelfab-max-wait-ms": "nan"}},
            (422, "invalid_request", "x-modelfab-max-wait-ms"),
        ),
        ("/models/v1/predict", {"content": b"x"}, (415, "unsupported_media_type", "content-type")),
        ("/models/v1/predict", {"json": {"images": []}}, (422, "no_images", "images")),
        (
            "/models/v1/predict",
            {"json": {"images": ["aGk="] * 5}},
            (422, "too_many_images", "images"),
        ),
        ("/models/v1/predict", {"json": {"images": ["%"]}}, (422, "invalid_base64", "images[0]")),
        (
            "/models/v1/predict",
            {
                "content": b'{"images": ' + b"[" * 5000,
                "headers": {"content-type": "application/json"},
            },
            (422, "invalid_json", "body"),
        ),
        (
            "/models/v1/predict",
            {"files": [("f", ("ok.png", image_bytes())), ("f", ("bad.png", b"GIF89a"))]},
            (422, "invalid_image", "bad.png"),
        ),
        (
            "/models/v1/predict",
            {"files": [("f", ("big.bmp", image_bytes((300, 300), fmt="BMP")))]},
            (413, "payload_too_large", "body"),
        ),
        ("/models/missing-2/load", {}, (404, "not_found", "version_id")),
        ("/nowhere", {}, (404, "not_found", None)),
    ],
)
def test_errors_name_the_problem(
    client: TestClient, path: str, kwargs: dict[str, Any], expected: tuple[int, str, str | None]
) -> None:
    kwargs = {"files": [("f", ("a.png", image_bytes()))], **kwargs}
    if "json" in kwargs or "content" in kwargs:
        del kwargs["files"]
    assert error(client.post(path, **kwargs)) == expected


def test_top_k_over_the_classes_says_the_limit(client: TestClient) -> None:
    r = client.post("/models/v1/predict?top_k=4", files=[("f", ("a.png", image_bytes()))])
    assert "top_k must be at most 3, the number of classes" in r.json()["error"]["message"]
    assert error(client.get("/models/v1/predict")) == (405, "method_not_allowed", None)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [("GET", "/models/v1/predict", "POST"), ("PUT", "/models/v1/load", "POST"),
     ("POST", "/health", "GET, HEAD")],
)  # fmt: skip
def test_405_says_which_methods_the_route_takes(
    client: TestClient, method: str, path: str, allow: str
) -> None:
    r = client.request(method, path)
    assert error(r) == (405, "method_not_allowed", None)
    assert r.headers["allow"] == allow


def test_unexpected_errors_are_logged_and_answered_generically(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="modelfab.serving.replica_app"):
        r = client.post("/models/boom/predict", files=[("f", ("a.png", image_bytes()))])
    assert error(r) == (500, "internal_error", None)
    assert "secret" not in r.text
    assert any(
        rec.exc_info and "secret internal detail" in str(rec.exc_info[1]) for rec in caplog.records
    )


# --- through real HTTP on loopback: these start uvicorn in a thread (ReplicaServer) ---


@pytest.fixture
def server(cache: ModelCache) -> Iterator[ReplicaServer]:
    server = ReplicaServer(create_replica_app(cache, secret=SECRET, workers=4))
    server.start()
    try:
        yield server
    finally:
        server.stop(drain_s=1)


def test_concurrent_requests_are_batched(server: ReplicaServer, batch_sizes: list[int]) -> None:
    headers = {"x-modelfab-max-batch-size": "8", "x-modelfab-max-wait-ms": "50"}

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30, headers=AUTH) as http:
            return await asyncio.gather(
                *(
                    http.post(
                        "/models/v1/predict",
                        files=[("f", (f"{i}.png", image_bytes(seed=i)))],
                        headers=headers,
                    )
                    for i in range(16)
                )
            )

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200] * 16
    assert [r.json()["data"][0]["name"] for r in responses] == [f"{i}.png" for i in range(16)]
    assert sum(batch_sizes) == 16 and max(batch_sizes) > 1
    assert max(batch_sizes) <= 8


def test_stop_drains_an_in_flight_request(
    cache: ModelCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = threading.Event(), threading.Event()
    original = LoadedModel.predict

    def slow_predict(self: LoadedModel, batch: np.ndarray) -> np.ndarray:
        entered.set()
        release.wait(10)
        return original(self, batch)

    server = ReplicaServer(create_replica_app(cache, secret=SECRET))
    url = server.start()
    result: dict[str, httpx.Response] = {}
    stopper = threading.Thread(target=server.stop, kwargs={"drain_s": 10})
    try:
        assert httpx.get(f"{url}/health", headers=AUTH).status_code == 200
        monkeypatch.setattr(LoadedModel, "predict", slow_predict)
        request = threading.Thread(
            target=lambda: result.update(
                r=httpx.post(
                    f"{url}/models/v1/predict",
                    files=[("f", ("a.png", image_bytes()))],
                    headers=AUTH,
                )
            )
        )
        request.start()
        assert entered.wait(10)
        assert httpx.get(f"{url}/health", headers=AUTH).json()["outstanding"] == 1
        stopper.start()
        time.sleep(0.3)
        with pytest.raises(httpx.ConnectError):  # no new connections while draining
            httpx.get(f"{url}/health", headers=AUTH, timeout=2)
        release.set()
        request.join(10)
        stopper.join(15)
    finally:
        release.set()
        server.stop(drain_s=1)
    assert not stopper.is_alive()
    assert result["r"].status_code == 200 and result["r"].json()["usage"] == {"items": 1}

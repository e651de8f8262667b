"""The SDK's predict splits calls larger than one request may carry, and answers them as one."""

from __future__ import annotations

import json
import re

import httpx

from modelfab.client import Client


def fake_replica(requests: list[list[str]]) -> httpx.MockTransport:
    """Answers each predict with one item per file, labelled by its file name."""

    def handle(request: httpx.Request) -> httpx.Response:
        names = re.findall(rb'filename="([^"]+)"', request.content)
        requests.append([n.decode() for n in names])
        data = [
            {"index": i, "name": n.decode(), "label": n.decode(), "score": 1.0}
            for i, n in enumerate(names)
        ]
        body = {"object": "list", "model_version": "mv_1", "task": "image-classification",
                "data": data, "usage": {"items": len(names)}}  # fmt: skip
        return httpx.Response(200, content=json.dumps(body).encode())

    return httpx.MockTransport(handle)


def test_more_images_than_one_request_carries_go_in_several() -> None:
    requests: list[list[str]] = []
    images = [(f"{i}.png", b"x" * 10) for i in range(150)]
    with Client("http://modelfab.test", "key", transport=fake_replica(requests)) as c:
        answer = c.predict("parts", list(images))
    assert [len(r) for r in requests] == [64, 64, 22]
    assert [item.index for item in answer.data] == list(range(150))
    assert [item.name for item in answer.data] == [name for name, _ in images]
    assert answer.usage.items == 150 and answer.model_version == "mv_1"


def test_requests_also_stay_under_the_byte_budget() -> None:
    requests: list[list[str]] = []
    images = [("a.png", b"x" * 60), ("b.png", b"x" * 60), ("big.png", b"x" * 500), ("c.png", b"x")]
    with Client("http://modelfab.test", "key", transport=fake_replica(requests)) as c:
        answer = c.predict("parts", list(images), max_bytes=100)
    assert requests == [["a.png"], ["b.png"], ["big.png"], ["c.png"]]
    assert [item.index for item in answer.data] == [0, 1, 2, 3]


def test_one_request_is_answered_as_is() -> None:
    requests: list[list[str]] = []
    with Client("http://modelfab.test", "key", transport=fake_replica(requests)) as c:
        answer = c.predict("parts", [("a.png", b"x")])
    assert requests == [["a.png"]] and answer.data[0].index == 0

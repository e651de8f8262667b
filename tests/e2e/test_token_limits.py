"""A key's tokens per minute end to end: the unchanged `openai` client against a real
control plane and a replica worker process of the hub's tiny chat model. The gateway
reserves a request's prompt estimate + max_tokens, settles to the engine's counts, and
answers 429 with Retry-After once the key's bucket cannot cover the next request; a
request larger than the whole limit is a 400 that says it can never fit.

Real processes because the wiring is under test: the quota loaded with the key, the
settlement after a stream relayed from a real engine (`tests/e2e/chat.py` sets it up)."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from sqlalchemy.orm import Session, sessionmaker

from modelfab.client import Client
from modelfab.server import Platform
from tests.e2e.chat import TEAM, serve_chat

pytestmark = [pytest.mark.e2e, pytest.mark.one_backend, pytest.mark.timeout(120)]

MESSAGES = [{"role": "user", "content": "How do I reset the line?"}]
TPM = 60
"""Tokens per minute of the team's keys: one request of max_tokens 40 (and a prompt
estimated at 10 tokens) fits, and the templated prompt it then settles to leaves too few
tokens for a second one at once (1 token/s of refill)."""


def test_the_openai_client_hits_the_keys_tokens_per_minute(
    platform: Platform, factory: sessionmaker[Session], tmp_path: Path
) -> None:
    admin = Client(platform.url, platform.settings.admin_key_path.read_text().strip())
    with admin:
        key = admin.create_tenant(TEAM, rate_limit_rps=1000, tokens_per_minute=TPM).api_key
    serve_chat(platform, factory, tmp_path, key)
    with openai.OpenAI(base_url=f"{platform.url}/v1", api_key=key, max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as never:
            client.chat.completions.create(model="assistant", messages=MESSAGES, max_tokens=100)  # type: ignore[arg-type]
        assert never.value.code == "request_too_large"
        assert f"limit of {TPM} tokens per minute" in str(never.value)

        first = client.chat.completions.create(
            model="assistant",
            messages=MESSAGES,
            max_tokens=40,
            temperature=0,  # type: ignore[arg-type]
        )
        assert first.usage is not None and first.usage.prompt_tokens > 10  # the estimate's
        with pytest.raises(openai.RateLimitError) as limited:
            client.chat.completions.create(
                model="assistant",
                messages=MESSAGES,
                max_tokens=40,
                temperature=0,  # type: ignore[arg-type]
            )
    response = limited.value.response
    assert response.status_code == 429 and int(response.headers["retry-after"]) >= 1
    assert limited.value.code == "rate_limited"
    assert f"tokens per minute limit of {TPM}" in str(limited.value)

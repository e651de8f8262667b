"""Chat endpoints end to end: a real control plane, a replica job as a real worker process
serving a registered LoRA version of the hub's tiny chat model, and the unchanged `openai`
client through the gateway: answers whole and streamed (with and without the usage
chunk), text completions, a client that leaves mid-stream, isolation, the errors, and the
metered tokens equal to the answers' usage.

Real processes because what is tested is the wiring: the replica's engine loaded from the
registry and the hub, the stream relayed and cut, metering through the journal
(`tests/e2e/chat.py` sets the endpoint up)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from sqlalchemy.orm import Session, sessionmaker

from modelfab.client import Client
from modelfab.server import Platform
from tests.e2e.chat import TEAM, openai_client, serve_chat, team_key
from tests.e2e.helpers import eventually

# The engine and the client protocol are under test, not the database.
pytestmark = [pytest.mark.e2e, pytest.mark.one_backend, pytest.mark.timeout(120)]

MESSAGES = [{"role": "user", "content": "How do I reset the line?"}]


@pytest.fixture
def key(platform: Platform) -> str:
    return team_key(platform)


@pytest.fixture
def team(platform: Platform, key: str) -> Client:
    return Client(platform.url, key)


@pytest.fixture
def assistant(
    platform: Platform, key: str, factory: sessionmaker[Session], tmp_path: Path
) -> Iterator[openai.OpenAI]:
    """The endpoint "assistant" on support-bot:1, ready, and the team's openai client."""
    serve_chat(platform, factory, tmp_path, key)
    with openai_client(platform, key) as client:
        yield client


def test_the_openai_client_chats_and_every_token_is_metered(
    assistant: openai.OpenAI, team: Client
) -> None:
    whole = assistant.chat.completions.create(
        model="assistant",
        messages=MESSAGES,
        max_tokens=8,
        temperature=0,  # type: ignore[arg-type]
    )
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    assert whole.usage is not None and 1 <= whole.usage.completion_tokens <= 8
    assert whole.choices[0].finish_reason in ("stop", "length")

    # streamed, greedy: the same text in pieces; no usage unless asked
    chunks = list(
        assistant.chat.completions.create(
            model="assistant",
            messages=MESSAGES,
            max_tokens=8,
            temperature=0,
            stream=True,  # type: ignore[arg-type]
        )
    )
    assert all(c.object == "chat.completion.chunk" and c.usage is None for c in chunks)
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks)
        == whole.choices[0].message.content
    )
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason

    with_usage = list(
        assistant.chat.completions.create(
            model="assistant",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_completion_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
            seed=7,
        )
    )
    last = with_usage[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens
    assert 1 <= last.usage.completion_tokens <= 5

    text = assistant.completions.create(
        model="assistant", prompt="Once", max_tokens=6, temperature=0
    )
    assert text.object == "text_completion" and text.usage is not None
    assert 1 <= text.usage.completion_tokens <= 6

    # a client that leaves after three chunks
    stream = assistant.chat.completions.create(
        model="assistant",
        messages=MESSAGES,
        max_tokens=1000,
        temperature=0,
        stream=True,  # type: ignore[arg-type]
    )
    seen = [chunk for _, chunk in zip(range(3), stream, strict=False)]
    stream.close()
    assert len(seen) == 3

    answered = [whole.usage, last.usage, text.usage]

    def five_metered() -> dict[str, float] | None:
        usage = {r.meter: r.quantity for r in team.usage(by="meter")}
        return usage if usage.get("requests") == 5 else None

    metered = eventually(five_metered, timeout_s=15, what="five requests to be metered")
    greedy_out = whole.usage.completion_tokens  # the second, streamed greedy one
    known_in = sum(u.prompt_tokens for u in answered) + whole.usage.prompt_tokens
    known_out = sum(u.completion_tokens for u in answered) + greedy_out
    # the abandoned stream: its prompt, and the tokens generated before it was cut
    assert metered["tokens_in"] == known_in + whole.usage.prompt_tokens
    abandoned = metered["tokens_out"] - known_out
    assert 2 <= abandoned <= 1000  # the first chunk holds only the role
    by_endpoint = [r for r in team.usage(by="endpoint") if r.meter == "tokens_out"]
    assert [r.quantity for r in by_endpoint] == [metered["tokens_out"]]


def test_errors_in_openai_shape_registry_refs_and_other_tenants_see_nothing(
    assistant: openai.OpenAI, platform: Platform
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        assistant.chat.completions.create(model="assistant", messages=MESSAGES, n=2)  # type: ignore[arg-type]
    assert caught.value.body["param"] == "n"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        assistant.chat.completions.create(model="assistant", messages=MESSAGES, temperature=3)  # type: ignore[arg-type]
    assert caught.value.body["param"] == "temperature"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        assistant.chat.completions.create(
            model="assistant", messages=[{"role": "user", "content": "x " * 3000}]
        )
    assert "context is 2048 tokens" in caught.value.message
    with pytest.raises(openai.NotFoundError) as caught:
        assistant.chat.completions.create(model="nobody", messages=MESSAGES)  # type: ignore[arg-type]
    assert caught.value.code == "model_not_found"

    admin = Client(platform.url, platform.settings.admin_key_path.read_text().strip())
    other = admin.create_tenant("other").api_key
    with openai_client(platform, other) as theirs:
        assert list(theirs.models.list()) == []
        for model in ("assistant", "support-bot:1"):
            with pytest.raises(openai.NotFoundError) as caught:
                theirs.chat.completions.create(model=model, messages=MESSAGES)  # type: ignore[arg-type]
            assert caught.value.body["param"] == "model"  # type: ignore[index]

    # the registry is OpenAI's model list; a registered model is answered by the endpoint
    # that serves it
    [listed] = assistant.models.list()
    assert (listed.id, listed.object, listed.owned_by) == ("support-bot", "model", TEAM)
    by_endpoint, by_ref = (
        assistant.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=5, temperature=0
        )
        for model in ("assistant", listed.id)
    )
    assert by_ref.choices[0].message.content == by_endpoint.choices[0].message.content
    with pytest.raises(openai.NotFoundError) as caught:
        assistant.chat.completions.create(model="support-bot:2", messages=MESSAGES)  # type: ignore[arg-type]
    assert caught.value.code == "model_not_found"

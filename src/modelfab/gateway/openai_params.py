"""OpenAI's request bodies of `/v1/chat/completions` and `/v1/completions`, checked field by
field: pure functions, so every refusal is a 400 naming the parameter as OpenAI names it
(pydantic would answer 422 with its own locations). Fields modelfab does not act on and
that change nothing (`user`, `metadata`, ...) are ignored, as OpenAI-compatible servers do;
fields that would change the answer and are not supported are refused."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from modelfab.gateway.errors import BadRequest
from modelfab.schemas.generation import GenerateRequest

ROLES = ("system", "developer", "user", "assistant")
"""Message roles taken; "developer" (OpenAI's newer name for system) is sent as system."""
MAX_STOP = 4
UNSUPPORTED = ("tools", "functions", "tool_choice", "logit_bias", "suffix", "best_of", "echo")
"""Fields that would change the answer and that the engine does not do: refused when set."""


class BadParameter(BadRequest):
    """A request field OpenAI's API would refuse: 400 naming it (every check here names
    one, so the param comes second, positionally)."""

    code = "invalid_parameter"

    def __init__(self, message: str, param: str):
        super().__init__(message, param=param)


@dataclass(frozen=True)
class Completion:
    """One checked request: the endpoint it names, what the replica generates, and how the
    answer is shaped."""

    chat: bool
    """/v1/chat/completions (True) or /v1/completions."""
    model: str
    generate: GenerateRequest
    stream: bool
    include_usage: bool


def parse_chat(body: Any) -> Completion:
    """A `/v1/chat/completions` body. Raises BadParameter naming the field."""
    fields = _object(body)
    messages = _messages(fields.get("messages"))
    return _completion(fields, chat=True, messages=messages, prompt=None)


def parse_completion(body: Any) -> Completion:
    """A `/v1/completions` body (`prompt`: a string, or a list of one). Raises
    BadParameter naming the field."""
    fields = _object(body)
    return _completion(fields, chat=False, messages=None, prompt=_prompt(fields.get("prompt")))


def _completion(
    fields: dict[str, Any],
    *,
    chat: bool,
    messages: list[dict[str, Any]] | None,
    prompt: str | None,
) -> Completion:
    _refuse_unsupported(fields)
    _n(fields.get("n"))
    stream = _bool(fields.get("stream"), "stream", default=False)
    generate = GenerateRequest(
        messages=messages,
        prompt=prompt,
        max_tokens=_max_tokens(fields),
        temperature=_number(fields.get("temperature"), "temperature", 1.0, 0.0, 2.0),
        top_p=_top_p(fields.get("top_p")),
        stop=_stop(fields.get("stop")),
        seed=_seed(fields.get("seed")),
    )
    return Completion(
        chat=chat,
        model=_model(fields.get("model")),
        generate=generate,
        stream=stream,
        include_usage=_include_usage(fields.get("stream_options"), stream),
    )


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadParameter("the request body must be a JSON object", "body")
    return body


def _model(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise BadParameter("model must name one of your endpoints", "model")
    return value


def _messages(value: Any) -> list[dict[str, Any]]:
    """The messages as the chat template takes them: {role, content} with text content."""
    if not isinstance(value, list) or not value:
        raise BadParameter("messages must be a non-empty list of {role, content}", "messages")
    return [_message(m, f"messages[{i}]") for i, m in enumerate(value)]


def _message(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadParameter(f"{where} must be an object with role and content", where)
    role = value.get("role")
    if role not in ROLES:
        raise BadParameter(
            f"{where}.role must be one of {', '.join(ROLES)}, not {role!r}", f"{where}.role"
        )
    return {"role": "system" if role == "developer" else role, "content": _content(value, where)}


def _content(message: dict[str, Any], where: str) -> str:
    """A string, or a list of text parts joined (images are not understood)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(texts) == len(content) and all(isinstance(t, str) for t in texts):
            return "".join(str(t) for t in texts)
    raise BadParameter(
        f"{where}.content must be a string or a list of text parts (this model reads text)",
        f"{where}.content",
    )


def _prompt(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str) or not value:
        raise BadParameter("prompt must be a non-empty string (one prompt per request)", "prompt")
    return value


def _refuse_unsupported(fields: dict[str, Any]) -> None:
    for name in UNSUPPORTED:
        if fields.get(name) not in (None, [], {}):
            raise BadParameter(f"{name} is not supported by modelfab's chat endpoints", name)
    if fields.get("logprobs") not in (None, False):
        raise BadParameter("logprobs are not supported by modelfab's chat endpoints", "logprobs")


def _n(value: Any) -> None:
    if value is not None and (_is_bool(value) or value != 1):
        raise BadParameter(f"n must be 1 (one choice per request), not {value!r}", "n")


def _max_tokens(fields: dict[str, Any]) -> int | None:
    """max_completion_tokens (OpenAI's newer name) or max_tokens; None: up to the context."""
    param = "max_completion_tokens" if "max_completion_tokens" in fields else "max_tokens"
    value = fields.get(param)
    if value is None:
        return None
    if not isinstance(value, int) or _is_bool(value) or value < 1:
        raise BadParameter(f"{param} must be a positive integer, not {value!r}", param)
    return value


def _number(value: Any, param: str, default: float, low: float, high: float) -> float:
    if value is None:
        return default
    if not isinstance(value, int | float) or _is_bool(value) or math.isnan(value):
        raise BadParameter(f"{param} must be a number between {low:g} and {high:g}", param)
    if not low <= value <= high:
        raise BadParameter(f"{param} must be between {low:g} and {high:g}, not {value}", param)
    return float(value)


def _top_p(value: Any) -> float:
    top_p = _number(value, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:
        raise BadParameter("top_p must be above 0 (and at most 1)", "top_p")
    return top_p


def _stop(value: Any) -> list[str]:
    stops = [value] if isinstance(value, str) else value
    if stops is None:
        return []
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise BadParameter("stop must be a non-empty string or a list of them", "stop")
    if len(stops) > MAX_STOP:
        raise BadParameter(f"stop takes at most {MAX_STOP} strings, not {len(stops)}", "stop")
    return stops


def _seed(value: Any) -> int | None:
    if value is not None and (
        not isinstance(value, int) or _is_bool(value) or not -(2**63) <= value < 2**63
    ):
        raise BadParameter(f"seed must be a 64-bit integer, not {value!r}", "seed")
    return value


def _bool(value: Any, param: str, *, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadParameter(f"{param} must be true or false, not {value!r}", param)
    return value


def _include_usage(value: Any, stream: bool) -> bool:
    if value is None:
        return False
    if not stream:
        raise BadParameter("stream_options is only allowed with stream: true", "stream_options")
    if not isinstance(value, dict):
        raise BadParameter("stream_options must be an object", "stream_options")
    return _bool(value.get("include_usage"), "stream_options.include_usage", default=False)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)  # a JSON true is a Python int too

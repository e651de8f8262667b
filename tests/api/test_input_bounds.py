"""Every number the API takes is bounded where it is declared, so nothing out of range
reaches the database (a 500 there) or the scheduler: FastAPI answers 422 naming the param."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.test_openapi import v1_operations
from tests.conftest import Api

HUGE = 10**30


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    out: dict[str, Any] = spec
    for part in ref.removeprefix("#/").split("/"):
        out = out[part]
    return out


def _unbounded(
    spec: dict[str, Any], schema: dict[str, Any], where: str, seen: set[str]
) -> list[str]:
    """The integer schemas under `schema` (properties, items, unions) lacking a bound."""
    ref = schema.get("$ref")
    if ref is not None:
        if ref in seen:
            return []
        seen = seen | {ref}
    schema = _resolve(spec, schema)
    found: list[str] = []
    if schema.get("type") == "integer":
        has_min = "minimum" in schema or "exclusiveMinimum" in schema
        has_max = "maximum" in schema or "exclusiveMaximum" in schema
        if not (has_min and has_max):
            found.append(where)
    for name, sub in schema.get("properties", {}).items():
        found += _unbounded(spec, sub, f"{where}.{name}", seen)
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key, []):
            found += _unbounded(spec, sub, where, seen)
    if isinstance(schema.get("items"), dict):
        found += _unbounded(spec, schema["items"], f"{where}[]", seen)
    return found


def test_every_integer_the_api_takes_has_a_minimum_and_a_maximum(api: Api) -> None:
    spec = api.client.app.openapi()  # type: ignore[attr-defined]
    offenders: list[str] = []
    for name, op in v1_operations(spec):
        for param in op.get("parameters", []):
            where = f"{name} {param['in']} {param['name']}"
            offenders += _unbounded(spec, param.get("schema", {}), where, set())
        for media in op.get("requestBody", {}).get("content", {}).values():
            offenders += _unbounded(spec, media.get("schema", {}), f"{name} body", set())
    assert not offenders, "integers without minimum and maximum:\n" + "\n".join(offenders)


@pytest.fixture
def member(api: Api) -> str:
    return str(api.create_tenant("parts")["api_key"])


def _assert_422(resp: Any, param: str) -> None:
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert (err["code"], err["param"]) == ("invalid_request", param), err


def test_event_cursor_past_int64_is_422(api: Api, member: str) -> None:
    job = api.call("POST", "/jobs", member, json={"recipe": "sleep"}).json()
    resp = api.call("GET", f"/jobs/{job['id']}/events?after={HUGE}", member)
    _assert_422(resp, "after")


@pytest.mark.parametrize("query", [f"offset={HUGE}", f"attempt={HUGE}"])
def test_log_offsets_past_int64_are_422(api: Api, member: str, query: str) -> None:
    job = api.call("POST", "/jobs", member, json={"recipe": "sleep"}).json()
    resp = api.call("GET", f"/jobs/{job['id']}/logs?{query}", member)
    _assert_422(resp, query.partition("=")[0])


@pytest.mark.parametrize("noun", ["datasets", "models"])
def test_refs_with_huge_versions_are_refused_not_500(api: Api, member: str, noun: str) -> None:
    resp = api.call("GET", f"/{noun}/parts:99999999999999999999999", member)
    assert resp.status_code in (404, 422), resp.text
    assert resp.json()["error"]["param"] is not None


def test_alias_to_a_version_past_int64_is_422(api: Api, member: str) -> None:
    body = {"alias": "production", "version": 9223372036854775808}
    _assert_422(api.call("POST", "/models/parts/aliases", member, json=body), "version")


@pytest.mark.parametrize("value", [2**64, HUGE, -1])
def test_endpoint_memory_out_of_range_is_422(api: Api, member: str, value: int) -> None:
    body = {"name": "parts", "model": "parts", "memory_bytes": value}
    _assert_422(api.call("POST", "/endpoints", member, json=body), "memory_bytes")
    patch = api.call("PATCH", "/endpoints/parts", member, json={"memory_bytes": value})
    _assert_422(patch, "memory_bytes")


@pytest.mark.parametrize(
    ("field", "value"),
    [("priority", HUGE), ("max_attempts", HUGE)],
)
def test_job_integers_past_int64_are_422(api: Api, member: str, field: str, value: int) -> None:
    _assert_422(api.call("POST", "/jobs", member, json={"recipe": "sleep", field: value}), field)


def test_job_memory_past_the_cap_is_422(api: Api, member: str) -> None:
    body = {"recipe": "sleep", "resources": {"memory_bytes": 2**64}}
    _assert_422(api.call("POST", "/jobs", member, json=body), "resources.memory_bytes")


def test_usage_since_infinity_is_422(api: Api, member: str) -> None:
    _assert_422(api.call("GET", "/usage?since=inf", member), "since")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/files?after=%00", None),
        ("GET", "/files/%00", None),
        ("GET", "/jobs/a%00b", None),
        ("GET", "/fine_tuning/jobs/ftjob-%00", None),
        ("POST", "/fine_tuning/jobs", {"model": "tiny-chat", "training_file": "file-\u0000"}),
    ],
)
def test_text_with_nul_is_refused_alike_on_both_backends(
    api: Api, member: str, method: str, path: str, body: dict[str, Any] | None
) -> None:
    """PostgreSQL cannot hold NUL in text (psycopg raises DataError: a 500) while SQLite
    can: every statement binding such text is refused with 422 before it runs."""
    resp = api.call(method, path, member, json=body)
    assert resp.status_code == 422, resp.text
    assert "NUL" in resp.json()["error"]["message"]

"""Every /v1 operation documents its answer: a 2xx response with a real schema."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from modelfab.schemas.jobs import JobStatus
from modelfab.schemas.tenants import ROLES
from modelfab.schemas.usage import GROUPINGS
from tests.conftest import Api

METHODS = ("get", "post", "put", "patch", "delete")


def v1_operations(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """("METHOD /v1/path", operation) for every operation under /v1 of an OpenAPI document."""
    for path, ops in spec["paths"].items():
        if path.startswith("/v1"):
            yield from ((f"{m.upper()} {path}", ops[m]) for m in METHODS if m in ops)


def _has_schema(response: dict[str, Any]) -> bool:
    for media in response.get("content", {}).values():
        schema = media.get("schema") or {}
        if schema and schema != {"type": "object"}:
            return True
    return False


def test_every_v1_operation_has_a_response_schema(api: Api) -> None:
    spec = api.client.app.openapi()  # type: ignore[attr-defined]
    offenders = []
    for name, op in v1_operations(spec):
        ok = [r for code, r in op["responses"].items() if code.startswith("2")]
        if not any(_has_schema(r) for r in ok):
            offenders.append(name)
    assert not offenders, "operations without a 2xx response schema: " + ", ".join(offenders)


def test_errors_are_documented(api: Api) -> None:
    spec = api.client.app.openapi()  # type: ignore[attr-defined]
    assert "ErrorResponse" in spec["components"]["schemas"]
    get_job = spec["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]
    assert get_job["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }


def _ops(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op)
        for path, ops in spec["paths"].items()
        if path.startswith("/v1") and path != "/v1/health"
        for method, op in ops.items()
        if method in METHODS
    ]


def test_each_operation_documents_the_errors_it_can_answer(api: Api) -> None:
    """401 on every authenticated operation, 400 where a JSON body is parsed, 403 on admin
    routes, 404 where the path names a resource; nothing documented that cannot happen."""
    spec = api.client.app.openapi()  # type: ignore[attr-defined]
    missing = []
    for method, path, op in _ops(spec):
        expected = {"401", "422"}
        if "application/json" in op.get("requestBody", {}).get("content", {}):
            expected.add("400")
        if "{" in path and path != "/v1/worker/jobs/{job_id}/spec":
            expected.add("404")
        if path.startswith("/v1/tenants") and not path.endswith("/keys"):
            expected.add("403")
        lacking = expected - set(op["responses"])
        if lacking:
            missing.append(f"{method.upper()} {path}: {sorted(lacking)}")
    assert not missing, "\n".join(missing)
    responses = spec["paths"]["/v1/recipes"]["get"]["responses"]
    assert "404" not in responses and "409" not in responses and "429" not in responses
    assert "429" in spec["paths"]["/v1/jobs"]["post"]["responses"]
    assert "415" in spec["paths"]["/v1/datasets/upload"]["post"]["responses"]
    assert "503" in spec["paths"]["/v1/endpoints/{name}/predict"]["post"]["responses"]


def test_a_body_that_cannot_be_parsed_is_a_documented_400(api: Api) -> None:
    resp = api.call(
        "POST",
        "/tenants",
        api.admin_key,
        content=b"\xff\xfe{",
        headers={"Content-Type": "application/json"},
    )
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "invalid_body"
    spec = api.client.app.openapi()  # type: ignore[attr-defined]
    assert "400" in spec["paths"]["/v1/tenants"]["post"]["responses"]


def _query_param(spec: dict[str, Any], path: str, name: str) -> dict[str, Any]:
    params = spec["paths"][path]["get"]["parameters"]
    return next(p for p in params if p["name"] == name)  # type: ignore[no-any-return]


def _enum(spec: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """The enum of `schema`, through a $ref or an anyOf with null."""
    for option in schema.get("anyOf", [schema]):
        if "$ref" in option:
            option = spec["components"]["schemas"][option["$ref"].rsplit("/", 1)[1]]
        if "enum" in option:
            return list(option["enum"])
    return []


def test_enums_are_in_the_schema(api: Api) -> None:
    spec = api.client.app.openapi()  # type: ignore[attr-defined]
    status = _query_param(spec, "/v1/jobs", "status")["schema"]
    assert _enum(spec, status) == [s.value for s in JobStatus]
    by = _query_param(spec, "/v1/usage", "by")["schema"]
    assert _enum(spec, by) == list(GROUPINGS)
    for model in ("TenantCreate", "KeyCreate", "ApiKey", "Me"):
        role = spec["components"]["schemas"][model]["properties"]["role"]
        assert _enum(spec, role) == list(ROLES), model


def test_a_job_status_outside_the_enum_is_refused_naming_it(api: Api) -> None:
    resp = api.call("GET", "/jobs", api.admin_key, params={"status": "sleeping"})
    assert resp.status_code == 422
    assert resp.json()["error"]["param"] == "status"


def test_405_says_which_methods_the_path_takes(api: Api) -> None:
    resp = api.call("PUT", "/jobs", api.admin_key)
    assert resp.status_code == 405
    assert resp.json()["error"]["code"] == "method_not_allowed"
    # both routes of the path, GET /v1/jobs and POST /v1/jobs
    assert {"GET", "POST"} <= set(resp.headers["allow"].replace(" ", "").split(","))

"""Every /v1 operation documents its answer: a 2xx response with a real schema."""

from __future__ import annotations

from typing import Any

from tests.conftest import Api

METHODS = ("get", "post", "put", "patch", "delete")


def _has_schema(response: dict[str, Any]) -> bool:
    for media in response.get("content", {}).values():
        schema = media.get("schema") or {}
        if schema and schema != {"type": "object"}:
            return True
    return False


def test_every_v1_operation_has_a_response_schema(api: Api) -> None:
    spec = api.client.app.openapi()  # type: ignore[attr-defined]
    offenders = []
    for path, ops in spec["paths"].items():
        if not path.startswith("/v1"):
            continue
        for method in METHODS:
            op = ops.get(method)
            if op is None:
                continue
            ok = [r for code, r in op["responses"].items() if code.startswith("2")]
            if not any(_has_schema(r) for r in ok):
                offenders.append(f"{method.upper()} {path}")
    assert not offenders, "operations without a 2xx response schema: " + ", ".join(offenders)


def test_errors_are_documented(api: Api) -> None:
    spec = api.client.app.openapi()  # type: ignore[attr-defined]
    assert "ErrorResponse" in spec["components"]["schemas"]
    get_job = spec["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]
    assert get_job["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }

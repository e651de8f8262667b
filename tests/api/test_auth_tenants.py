"""Authentication and the admin-only tenant endpoints, through the in-process API."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from modelfab.db.models import ApiKey, Tenant
from tests.conftest import Api


def error_of(resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    assert set(body) == {"error"}, body
    return dict(body["error"])


# --------------------------------------------------------------------------- authentication


def test_no_key_is_unauthenticated(api: Api) -> None:
    resp = api.call("GET", "/me")
    assert resp.status_code == 401
    assert error_of(resp)["code"] == "unauthenticated"


def test_unknown_key_is_unauthenticated(api: Api) -> None:
    resp = api.call("GET", "/me", "mf_not-a-real-key")
    assert resp.status_code == 401
    assert error_of(resp)["code"] == "unauthenticated"


@pytest.mark.parametrize("header", ["Basic x", "Bearer", "Bearer ", "token-without-scheme"])
def test_malformed_authorization_header_is_unauthenticated(api: Api, header: str) -> None:
    resp = api.call("GET", "/me", headers={"Authorization": header})
    assert resp.status_code == 401
    assert error_of(resp)["code"] == "unauthenticated"


def test_admin_key_with_basic_scheme_is_refused(api: Api) -> None:
    resp = api.call("GET", "/me", headers={"Authorization": f"Basic {api.admin_key}"})
    assert resp.status_code == 401


def test_health_needs_no_key(api: Api) -> None:
    resp = api.call("GET", "/health")
    assert resp.status_code == 200
    assert resp.json()["status"] == "ok"


# --------------------------------------------------------------------------- tenants


def test_admin_creates_tenant_whose_key_works(api: Api) -> None:
    resp = api.call(
        "POST",
        "/tenants",
        api.admin_key,
        json={"name": "vision", "max_gpus": 1.5, "max_cpus": 4, "weight": 2},
    )
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["object"] == "tenant"
    assert body["name"] == "vision"
    assert (body["max_gpus"], body["max_cpus"], body["weight"]) == (1.5, 4, 2)
    assert body["gpu_hours_budget"] is None
    key = body["api_key"]
    assert key.startswith("mf_") and len(key) > 20

    me = api.call("GET", "/me", key)
    assert me.status_code == 200
    assert me.json() == {"object": "principal", "tenant": "vision", "role": "member"}


def test_tenant_list_shows_no_key_material(api: Api) -> None:
    created = api.create_tenant("vision", max_gpus=1)
    resp = api.call("GET", "/tenants", api.admin_key)
    assert resp.status_code == 200
    rows = {t["name"]: t for t in resp.json()["data"]}
    assert set(rows) == {"admin", "vision"}
    assert rows["vision"]["id"] == created["id"]
    assert rows["vision"]["max_gpus"] == 1
    assert created["api_key"] not in resp.text
    assert api.admin_key not in resp.text
    for row in rows.values():
        assert not {"api_key", "key_hash", "prefix"} & set(row)

    one = api.call("GET", "/tenants/vision", api.admin_key)
    assert one.status_code == 200
    assert "api_key" not in one.json()
    assert created["api_key"] not in one.text


def test_duplicate_tenant_name_conflicts(api: Api) -> None:
    api.create_tenant("vision")
    resp = api.call("POST", "/tenants", api.admin_key, json={"name": "vision"})
    assert resp.status_code == 409
    err = error_of(resp)
    assert (err["code"], err["param"]) == ("conflict", "name")


@pytest.mark.parametrize("name", ["Bad Name!", "UPPER", "-leading-dash", "", "x" * 64])
def test_bad_tenant_name_is_refused(api: Api, name: str) -> None:
    resp = api.call("POST", "/tenants", api.admin_key, json={"name": name})
    assert resp.status_code == 422
    err = error_of(resp)
    assert (err["code"], err["param"]) == ("invalid_request", "name")


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_gpus", -1), ("max_cpus", -0.5), ("gpu_hours_budget", -1), ("weight", 0)],
)
def test_negative_quota_is_refused(api: Api, field: str, value: float) -> None:
    resp = api.call("POST", "/tenants", api.admin_key, json={"name": "vision", field: value})
    assert resp.status_code == 422
    err = error_of(resp)
    assert (err["code"], err["param"]) == ("invalid_request", field)
    listed = api.call("GET", "/tenants", api.admin_key).json()["data"]
    assert [t["name"] for t in listed] == ["admin"]


def test_unknown_role_is_refused(api: Api) -> None:
    resp = api.call("POST", "/tenants", api.admin_key, json={"name": "vision", "role": "root"})
    assert resp.status_code == 422
    assert error_of(resp)["param"] == "role"


def test_admin_role_key_may_administer(api: Api) -> None:
    ops = api.create_tenant("ops", role="admin")
    resp = api.call("GET", "/tenants", ops["api_key"])
    assert resp.status_code == 200
    assert {t["name"] for t in resp.json()["data"]} == {"admin", "ops"}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/tenants", {"name": "intruder"}),
        ("GET", "/tenants", None),
        ("GET", "/tenants/admin", None),
        ("PATCH", "/tenants/x", {"max_gpus": 8}),
        ("POST", "/tenants/admin/keys", {"role": "admin"}),
    ],
)
def test_member_key_is_forbidden_on_tenant_admin(
    api: Api, method: str, path: str, body: dict[str, object] | None
) -> None:
    member = api.create_tenant("vision")
    resp = api.call(method, path, member["api_key"], json=body)
    assert resp.status_code == 403
    assert error_of(resp)["code"] == "forbidden"
    names = [t["name"] for t in api.call("GET", "/tenants", api.admin_key).json()["data"]]
    assert names == ["admin", "vision"]


def test_patch_changes_only_given_fields(api: Api) -> None:
    api.create_tenant("vision", max_gpus=2, max_cpus=8, weight=3)
    resp = api.call("PATCH", "/tenants/vision", api.admin_key, json={"max_gpus": 0.5})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["max_gpus"], body["max_cpus"], body["weight"]) == (0.5, 8, 3)

    resp = api.call("PATCH", "/tenants/vision", api.admin_key, json={"max_cpus": None})
    assert resp.status_code == 200
    body = api.call("GET", "/tenants/vision", api.admin_key).json()
    assert (body["max_gpus"], body["max_cpus"], body["weight"]) == (0.5, None, 3)


def test_token_quotas_are_set_at_create_changed_by_patch_and_shown(api: Api) -> None:
    created = api.create_tenant("chat", tokens_per_minute=90_000, tokens_budget=5_000_000)
    assert (created["tokens_per_minute"], created["tokens_budget"]) == (90_000, 5_000_000)
    resp = api.call("PATCH", "/tenants/chat", api.admin_key, json={"tokens_budget": 10})
    assert resp.status_code == 200, resp.text
    shown = api.call("GET", "/tenants/chat", api.admin_key).json()
    assert (shown["tokens_per_minute"], shown["tokens_budget"]) == (90_000, 10)
    api.call("PATCH", "/tenants/chat", api.admin_key, json={"tokens_per_minute": None})
    shown = api.call("GET", "/tenants/chat", api.admin_key).json()
    assert (shown["tokens_per_minute"], shown["tokens_budget"]) == (None, 10)  # unlimited
    assert api.create_tenant("free")["tokens_per_minute"] is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tokens_per_minute", 0),
        ("tokens_per_minute", 10**13),
        ("tokens_per_minute", 1.5),
        ("tokens_budget", -1),
        ("tokens_budget", 10**16),
    ],
)
def test_token_quotas_out_of_range_are_refused_naming_them(
    api: Api, field: str, value: float
) -> None:
    for method, path, body in (
        ("POST", "/tenants", {"name": "chat", field: value}),
        ("PATCH", "/tenants/admin", {field: value}),
    ):
        resp = api.call(method, path, api.admin_key, json=body)
        assert resp.status_code == 422, resp.text
        assert error_of(resp)["param"] == field


def test_patch_refuses_negative_quota_and_keeps_old_value(api: Api) -> None:
    api.create_tenant("vision", max_gpus=2)
    resp = api.call("PATCH", "/tenants/vision", api.admin_key, json={"max_gpus": -1})
    assert resp.status_code == 422
    assert error_of(resp)["param"] == "max_gpus"
    assert api.call("GET", "/tenants/vision", api.admin_key).json()["max_gpus"] == 2


def test_patch_weight_null_is_refused(api: Api) -> None:
    api.create_tenant("vision", weight=2)
    resp = api.call("PATCH", "/tenants/vision", api.admin_key, json={"weight": None})
    assert resp.status_code == 422
    assert error_of(resp)["param"] == "weight"
    assert api.call("GET", "/tenants/vision", api.admin_key).json()["weight"] == 2


def test_patch_unknown_tenant_is_not_found(api: Api) -> None:
    resp = api.call("PATCH", "/tenants/nobody", api.admin_key, json={"max_gpus": 1})
    assert resp.status_code == 404
    err = error_of(resp)
    assert (err["code"], err["param"]) == ("not_found", "name")


def test_second_key_works_alongside_the_first(api: Api) -> None:
    first = api.create_tenant("vision")["api_key"]
    resp = api.call("POST", "/tenants/vision/keys", api.admin_key, json={})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert (body["tenant"], body["role"]) == ("vision", "member")
    second = body["api_key"]
    assert second != first
    for key in (first, second):
        me = api.call("GET", "/me", key)
        assert me.status_code == 200
        assert me.json()["tenant"] == "vision"


def test_key_for_unknown_tenant_is_not_found(api: Api) -> None:
    resp = api.call("POST", "/tenants/nobody/keys", api.admin_key, json={})
    assert resp.status_code == 404
    assert error_of(resp)["code"] == "not_found"


def test_keys_are_stored_hashed(api: Api, factory: sessionmaker[Session]) -> None:
    key = api.create_tenant("vision")["api_key"]
    extra = api.call("POST", "/tenants/vision/keys", api.admin_key, json={}).json()["api_key"]
    with factory() as session:
        tenant = session.scalar(select(Tenant).where(Tenant.name == "vision"))
        assert tenant is not None
        rows = session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant.id)).all()
        columns = [c.key for c in ApiKey.__table__.columns]
        values = [str(getattr(row, c)) for row in rows for c in columns]
    assert len(rows) == 2
    for plaintext in (key, extra):
        assert not any(plaintext in v for v in values)
        assert hashlib.sha256(plaintext.encode()).hexdigest() in values


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rate_limit_rps", 1e-300),
        ("rate_limit_rps", 1e12),
        ("weight", 1e-300),
        ("max_gpus", "Infinity"),
        ("max_cpus", "Infinity"),
        ("gpu_hours_budget", "NaN"),
        ("weight", "Infinity"),
    ],
)
def test_absurd_or_infinite_quota_is_refused(api: Api, field: str, value: object) -> None:
    """JSON parsers take Infinity and NaN: they were stored as null (no quota at all)."""
    raw = f'{{"name": "vision", "{field}": {value}}}'
    headers = {"Content-Type": "application/json"}
    for method, path in (("POST", "/tenants"), ("PATCH", "/tenants/admin")):
        body = raw if method == "POST" else raw.replace('"name": "vision", ', "")
        resp = api.call(method, path, api.admin_key, content=body, headers=dict(headers))
        assert resp.status_code == 422, resp.text
        err = error_of(resp)
        assert (err["code"], err["param"]) == ("invalid_request", field)
    listed = api.call("GET", "/tenants", api.admin_key).json()["data"]
    assert [t["name"] for t in listed] == ["admin"]
    assert listed[0][field] in (None, 1.0)

"""A tenant's keys through the API: create (secret shown once), list (never the secret),
revoke (idempotent, effective at once), expiry; admins for any tenant, members for their own."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from modelfab.db.models import ApiKey
from tests.conftest import Api


def error_of(resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    assert set(body) == {"error"}, body
    return dict(body["error"])


def create_key(api: Api, tenant: str, key: str, **body: Any) -> dict[str, Any]:
    resp = api.call("POST", f"/tenants/{tenant}/keys", key, json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()  # type: ignore[no-any-return]


def test_admin_creates_lists_and_revokes_a_key(api: Api) -> None:
    first = api.create_tenant("vision")["api_key"]
    created = create_key(api, "vision", api.admin_key, name="ci", role="member")
    secret = created["api_key"]
    assert created["object"] == "api_key"
    assert (created["tenant"], created["name"], created["role"]) == ("vision", "ci", "member")
    assert secret.startswith(created["prefix"]) and created["id"].startswith("key")
    assert created["expires_at"] is None and created["revoked_at"] is None

    listed = api.call("GET", "/tenants/vision/keys", api.admin_key)
    assert listed.status_code == 200, listed.text
    rows = {k["id"]: k for k in listed.json()["data"]}
    assert len(rows) == 2 and rows[created["id"]]["name"] == "ci"
    for row in rows.values():
        assert not {"api_key", "key_hash"} & set(row)
    for plaintext in (first, secret):
        assert plaintext not in listed.text

    assert api.call("GET", "/me", secret).status_code == 200
    revoked = api.call("DELETE", f"/tenants/vision/keys/{created['id']}", api.admin_key)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"] is not None
    after = api.call("GET", "/me", secret)
    assert after.status_code == 401
    assert "revoked" in error_of(after)["message"]
    assert api.call("GET", "/me", first).status_code == 200  # the other key still works

    again = api.call("DELETE", f"/tenants/vision/keys/{created['id']}", api.admin_key)
    assert again.status_code == 200
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]


def test_member_manages_its_own_tenants_keys(api: Api) -> None:
    member = api.create_tenant("vision")["api_key"]
    created = create_key(api, "vision", member, name="laptop")
    assert created["role"] == "member"
    listed = api.call("GET", "/tenants/vision/keys", member).json()["data"]
    assert created["id"] in {k["id"] for k in listed}
    resp = api.call("DELETE", f"/tenants/vision/keys/{created['id']}", member)
    assert resp.status_code == 200, resp.text
    assert api.call("GET", "/me", created["api_key"]).status_code == 401


def test_member_may_not_create_an_admin_key(api: Api) -> None:
    member = api.create_tenant("vision")["api_key"]
    resp = api.call("POST", "/tenants/vision/keys", member, json={"role": "admin"})
    assert resp.status_code == 403
    assert error_of(resp)["param"] == "role"


def test_another_tenants_keys_are_not_found_for_a_member(api: Api) -> None:
    member = api.create_tenant("vision")["api_key"]
    other = api.create_tenant("audio")
    other_key = create_key(api, "audio", api.admin_key, name="x")
    for method, path, body in (
        ("GET", "/tenants/audio/keys", None),
        ("POST", "/tenants/audio/keys", {"name": "sneaky"}),
        ("DELETE", f"/tenants/audio/keys/{other_key['id']}", None),
        ("DELETE", f"/tenants/vision/keys/{other_key['id']}", None),
    ):
        resp = api.call(method, path, member, json=body)
        assert resp.status_code == 404, (method, path, resp.text)
        assert error_of(resp)["code"] == "not_found"
    assert api.call("GET", "/me", other["api_key"]).status_code == 200
    assert api.call("GET", "/me", other_key["api_key"]).status_code == 200
    names = [
        k["name"] for k in api.call("GET", "/tenants/audio/keys", api.admin_key).json()["data"]
    ]
    assert "sneaky" not in names


def test_unknown_key_id_is_not_found(api: Api) -> None:
    api.create_tenant("vision")
    resp = api.call("DELETE", "/tenants/vision/keys/key_nope", api.admin_key)
    assert resp.status_code == 404
    assert error_of(resp)["param"] == "key_id"


def test_the_last_admin_key_cannot_be_revoked(api: Api) -> None:
    rows = api.call("GET", "/tenants/admin/keys", api.admin_key).json()["data"]
    assert len(rows) == 1
    resp = api.call("DELETE", f"/tenants/admin/keys/{rows[0]['id']}", api.admin_key)
    assert resp.status_code == 409
    assert api.call("GET", "/me", api.admin_key).status_code == 200


def test_key_with_expiry_is_refused_once_expired(api: Api, factory: sessionmaker[Session]) -> None:
    api.create_tenant("vision")
    created = create_key(api, "vision", api.admin_key, name="temp", expires_in_s=3600)
    assert created["expires_at"] == pytest.approx(time.time() + 3600, abs=60)
    assert api.call("GET", "/me", created["api_key"]).status_code == 200
    with factory.begin() as session:  # an hour later
        session.execute(
            update(ApiKey).where(ApiKey.id == created["id"]).values(expires_at=time.time() - 1)
        )
    resp = api.call("GET", "/me", created["api_key"])
    assert resp.status_code == 401
    assert "expired" in error_of(resp)["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"expires_in_s": 0}, "expires_in_s"),
        ({"expires_in_s": -5}, "expires_in_s"),
        ({"expires_at": 1000.0}, "expires_at"),
        ({"expires_at": 4e9, "expires_in_s": 60}, "expires_at"),
        ({"expires_in_s": 1e300}, "expires_in_s"),
        ({"name": "Bad Name!"}, "name"),
        ({"role": "root"}, "role"),
    ],
)
def test_bad_key_requests_are_refused(api: Api, body: dict[str, Any], param: str) -> None:
    api.create_tenant("vision")
    resp = api.call("POST", "/tenants/vision/keys", api.admin_key, json=body)
    assert resp.status_code == 422, resp.text
    assert error_of(resp)["param"] == param
    assert len(api.call("GET", "/tenants/vision/keys", api.admin_key).json()["data"]) == 1


def test_a_revoked_key_is_refused_by_the_gateway_at_once(api: Api) -> None:
    api.create_tenant("vision")
    created = create_key(api, "vision", api.admin_key, name="serving")
    predict = ("POST", "/endpoints/nope/predict", created["api_key"])
    for _ in range(2):  # authenticated (no such endpoint); the second answer is from the cache
        assert api.call(*predict, json={}).status_code == 404
    resp = api.call("DELETE", f"/tenants/vision/keys/{created['id']}", api.admin_key)
    assert resp.status_code == 200
    after = api.call(*predict, json={})
    assert after.status_code == 401
    assert "revoked" in error_of(after)["message"]

"""`Idempotency-Key` on creates: a retry with the same key and body answers as the first
request did and does nothing again; another body is 409; keys are per tenant; bad keys 422."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from modelfab.db.models import ApiKey, IdempotencyKey, Job, Tenant
from modelfab.hub.catalog import imported_meta
from modelfab.schemas.limits import MAX_IDEMPOTENCY_KEY_CHARS
from modelfab.services import idempotency
from modelfab.settings import ServerSettings
from tests.api.factories import make_classification, targz
from tests.api.test_jobs import assert_error
from tests.conftest import Api

HEADER = "Idempotency-Key"
JOB = {"recipe": "sleep", "params": {"seconds": 1}}


def post(api: Api, path: str, key: str, idem: str, **kwargs: Any) -> Any:
    return api.call("POST", path, key, headers={HEADER: idem}, **kwargs)


def count(factory: sessionmaker[Session], model: Any) -> int:
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


@pytest.fixture
def member(api: Api) -> str:
    return str(api.create_tenant("vision")["api_key"])


def test_same_key_twice_queues_one_job_and_answers_the_same(
    api: Api, member: str, factory: sessionmaker[Session]
) -> None:
    first = post(api, "/jobs", member, "k-1", json=JOB)
    again = post(api, "/jobs", member, "k-1", json=JOB)
    assert first.status_code == again.status_code == 201, again.text
    assert again.json() == first.json()
    assert count(factory, Job) == 1


def test_same_key_with_another_body_is_409(
    api: Api, member: str, factory: sessionmaker[Session]
) -> None:
    assert post(api, "/jobs", member, "k-1", json=JOB).status_code == 201
    resp = post(api, "/jobs", member, "k-1", json={**JOB, "priority": 5})
    assert_error(resp, 409, "idempotency_key_reused", HEADER)
    assert HEADER in resp.json()["error"]["message"]
    assert count(factory, Job) == 1


def test_another_tenant_with_the_same_key_is_independent(
    api: Api, member: str, factory: sessionmaker[Session]
) -> None:
    other = str(api.create_tenant("robots")["api_key"])
    mine = post(api, "/jobs", member, "k-1", json=JOB)
    theirs = post(api, "/jobs", other, "k-1", json={**JOB, "priority": 5})
    assert mine.status_code == theirs.status_code == 201, theirs.text
    assert mine.json()["id"] != theirs.json()["id"]
    assert count(factory, Job) == 2


@pytest.mark.parametrize("bad", ["", "x" * (MAX_IDEMPOTENCY_KEY_CHARS + 1), "tab\there"])
def test_a_bad_key_is_422(api: Api, member: str, bad: str, factory: sessionmaker[Session]) -> None:
    resp = post(api, "/jobs", member, bad, json=JOB)
    assert_error(resp, 422, "invalid_request", HEADER)
    assert count(factory, Job) == 0


def test_longest_key_is_fine(api: Api, member: str) -> None:
    key = "k" * MAX_IDEMPOTENCY_KEY_CHARS
    assert post(api, "/jobs", member, key, json=JOB).status_code == 201


def test_an_expired_key_is_free_again(
    api: Api, member: str, factory: sessionmaker[Session]
) -> None:
    assert post(api, "/jobs", member, "k-1", json=JOB).status_code == 201
    with factory() as session, session.begin():
        session.execute(update(IdempotencyKey).values(created_at=0.0))
    resp = post(api, "/jobs", member, "k-1", json={**JOB, "priority": 5})
    assert resp.status_code == 201, resp.text
    assert count(factory, Job) == 2 and count(factory, IdempotencyKey) == 1


def test_a_failed_create_is_not_remembered(api: Api, member: str) -> None:
    bad = post(api, "/jobs", member, "k-1", json={"recipe": "no-such"})
    assert bad.status_code >= 400
    assert post(api, "/jobs", member, "k-1", json=JOB).status_code == 201


def test_tenant_and_key_creates_are_idempotent(api: Api, factory: sessionmaker[Session]) -> None:
    body = {"name": "acme"}
    first = post(api, "/tenants", api.admin_key, "t-1", json=body)
    again = post(api, "/tenants", api.admin_key, "t-1", json=body)
    assert first.status_code == again.status_code == 201, again.text
    assert again.json() == first.json()
    keys_before = count(factory, ApiKey)
    made = post(api, "/tenants/acme/keys", api.admin_key, "t-2", json={"name": "ci"})
    repeat = post(api, "/tenants/acme/keys", api.admin_key, "t-2", json={"name": "ci"})
    assert made.status_code == repeat.status_code == 201, repeat.text
    assert repeat.json() == made.json()
    assert count(factory, ApiKey) == keys_before + 1
    assert count(factory, Tenant) == 2  # the admin's and acme


def test_records_keep_no_secret_and_no_key_in_the_clear(
    api: Api, factory: sessionmaker[Session]
) -> None:
    """A stored answer can hold a new API key: the table must not give it away, nor the
    client's idempotency key that unlocks it."""
    made = post(api, "/tenants", api.admin_key, "tenant-create-7f3a", json={"name": "acme"})
    secret = made.json()["api_key"]
    with factory() as session:
        rows = session.scalars(select(IdempotencyKey)).all()
    stored = " ".join(f"{r.key} {r.response}" for r in rows)
    assert rows and secret not in stored and "tenant-create-7f3a" not in stored
    again = post(api, "/tenants", api.admin_key, "tenant-create-7f3a", json={"name": "acme"})
    assert again.json()["api_key"] == secret


def test_upload_replays_the_first_answer(api: Api, member: str, tmp_path: Path) -> None:
    blob = targz(make_classification(tmp_path / "ds"))

    def send(idem: str, name: str = "parts") -> Any:
        return post(
            api,
            "/datasets/upload",
            member,
            idem,
            data={"name": name, "task": "image-classification"},
            files={"file": ("ds.tar.gz", blob, "application/octet-stream")},
        )

    first = send("u-1")
    again = send("u-1")
    assert first.status_code == again.status_code == 201, again.text
    assert again.json() == first.json() and again.json()["created"] is True
    assert_error(send("u-1", name="other"), 409, "idempotency_key_reused", HEADER)


def test_hub_import_replays_the_first_answer(api: Api, settings: ServerSettings) -> None:
    def send(idem: str, content: bytes = b"weights" * 100) -> Any:
        files = {"file": ("resnet18.pth", content, "application/octet-stream")}
        return post(api, "/hub/resnet18/import", api.admin_key, idem, files=files)

    first = send("h-1")
    again = send("h-1")
    assert first.status_code == again.status_code == 201, again.text
    assert again.json() == first.json()
    meta = imported_meta(settings.hub_dir, "resnet18")
    assert meta is not None and meta["imported_at"] == first.json()["imported"]["imported_at"]
    assert_error(send("h-1", b"other" * 100), 409, "idempotency_key_reused", HEADER)
    assert imported_meta(settings.hub_dir, "resnet18") == meta  # nothing imported again


def test_a_race_on_one_key_does_the_work_once(
    api: Api, member: str, factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second request looked before the first committed (replay finds nothing): the
    unique key refuses its record, and its job is rolled back with it."""
    assert post(api, "/jobs", member, "k-1", json=JOB).status_code == 201
    monkeypatch.setattr(idempotency, "replay", lambda *_: None)
    resp = post(api, "/jobs", member, "k-1", json=JOB)
    assert_error(resp, 409, "idempotency_key_in_use", HEADER)
    assert count(factory, Job) == 1


def test_every_create_documents_the_header(api: Api) -> None:
    paths = api.client.get("/openapi.json").json()["paths"]
    creates = ["/v1/jobs", "/v1/datasets", "/v1/datasets/upload", "/v1/endpoints",
               "/v1/tenants", "/v1/tenants/{name}/keys", "/v1/hub/{model_id}/import",
               "/v1/files", "/v1/fine_tuning/jobs"]  # fmt: skip
    for path in creates:
        params = paths[path]["post"].get("parameters", [])
        assert any(p["in"] == "header" and p["name"] == HEADER for p in params), path

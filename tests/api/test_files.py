"""The OpenAI files API: the real `openai` client against a real control plane (upload,
list, retrieve, content, delete, and our errors read as OpenAI's), then tenancy, paging,
idempotent uploads and deletes through the in-process API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from modelfab.client import Client
from modelfab.db.models import Dataset, DatasetVersion
from modelfab.db.models import File as FileRow
from modelfab.server import Platform
from modelfab.services.files import clean_filename
from modelfab.settings import ServerSettings
from tests.api.test_chat_datasets import alpaca_json, openai_jsonl
from tests.conftest import Api
from tests.e2e.chat import openai_client, team_key
from tests.registry_factories import insert_running_job


@pytest.fixture
def settings(settings: ServerSettings) -> ServerSettings:
    """Characters only: counting with the hub's tokenizer is tested on its own."""
    return settings.model_copy(update={"chat_stats_model": None})


@pytest.fixture
def oai(platform: Platform) -> Iterator[openai.OpenAI]:
    """The unchanged `openai` client with a fresh tenant's key, on a real control plane."""
    with openai_client(platform, team_key(platform, "openai-team")) as client:
        yield client


def test_the_openai_client_drives_files_end_to_end(
    oai: openai.OpenAI, platform: Platform, tmp_path: Path
) -> None:
    path = tmp_path / "chats.jsonl"
    path.write_bytes(openai_jsonl())
    with path.open("rb") as fh:
        file = oai.files.create(file=fh, purpose="fine-tune")
    assert file.id.startswith("file-") and file.object == "file"
    assert (file.filename, file.purpose, file.status) == ("chats.jsonl", "fine-tune", "processed")
    assert file.bytes == path.stat().st_size and file.created_at > 0
    assert file.model_extra == {"dataset": f"{file.id}:1"}

    second = oai.files.create(file=("alpaca.json", alpaca_json()), purpose="fine-tune")
    listed = [f.id for f in oai.files.list()]
    assert listed == [second.id, file.id]  # newest first
    assert [f.id for f in oai.files.list(purpose="fine-tune", order="asc")] == [file.id, second.id]
    assert list(oai.files.list(purpose="batch")) == []
    pages = oai.files.list(limit=1)
    assert pages.has_more is True and [f.id for f in pages] == [second.id, file.id]

    assert oai.files.retrieve(file.id).model_dump() == file.model_dump()
    assert oai.files.content(file.id).read() == path.read_bytes()
    assert oai.files.content(second.id).read() == alpaca_json()  # as uploaded, not converted

    # the file is the tenant's chat dataset named after it
    with Client(platform.url, oai.api_key) as c:
        dataset = c.get_dataset(file.id)
    assert (dataset.task, dataset.ref, dataset.stats["conversations"]) == (
        "chat",
        f"{file.id}:1",
        3,
    )

    deleted = oai.files.delete(file.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (file.id, True, "file")
    with pytest.raises(openai.NotFoundError) as info:
        oai.files.retrieve(file.id)
    assert (info.value.code, info.value.param, info.value.type) == (
        "not_found",
        "file_id",
        "invalid_request_error",
    )
    assert [f.id for f in oai.files.list()] == [second.id]


def test_the_openai_client_reads_our_errors(oai: openai.OpenAI, platform: Platform) -> None:
    bad = openai_jsonl()[:-1] + b'\n{"messages": [{"role": "user", "content": "hi"}]}\n'
    with pytest.raises(openai.UnprocessableEntityError) as info:
        oai.files.create(file=("support.jsonl", bad), purpose="fine-tune")
    error = info.value
    assert (error.status_code, error.code, error.param) == (422, "dataset_invalid", "support.jsonl")
    assert "support.jsonl, line 4: no assistant turn" in error.message

    with pytest.raises(openai.UnprocessableEntityError) as info:
        oai.files.create(file=("chats.jsonl", openai_jsonl()), purpose="assistants")
    assert info.value.param == "purpose" and "fine-tune" in info.value.message

    with pytest.raises(openai.NotFoundError):
        oai.files.content("file-000000000000000000000000")
    stranger = oai.with_options(api_key="mf_not_a_key")
    with pytest.raises(openai.AuthenticationError) as auth:
        stranger.files.list()
    assert auth.value.code == "unauthenticated"
    assert list(oai.files.list()) == []  # nothing was kept


# --------------------------------------------------------------------------- in-process


@pytest.fixture
def member(api: Api) -> str:
    return str(api.create_tenant("files-team")["api_key"])


def create_file(
    api: Api, key: str, blob: bytes, *, filename: str = "chats.jsonl", **kwargs: Any
) -> Any:
    return api.call(
        "POST",
        "/files",
        key,
        data={"purpose": "fine-tune"},
        files={"file": (filename, blob, "application/jsonl")},
        **kwargs,
    )


def test_a_tenant_sees_only_its_files(api: Api, member: str) -> None:
    other = str(api.create_tenant("other-team")["api_key"])
    file = create_file(api, member, openai_jsonl()).json()
    for method, path in [
        ("GET", f"/files/{file['id']}"),
        ("GET", f"/files/{file['id']}/content"),
        ("DELETE", f"/files/{file['id']}"),
        ("GET", f"/datasets/{file['id']}"),
    ]:
        resp = api.call(method, path, other)
        assert resp.status_code == 404, (method, path, resp.text)
    assert api.call("GET", "/files", other).json()["data"] == []
    assert api.call("GET", f"/files/{file['id']}", member).status_code == 200


def test_paging_with_after_and_a_bad_cursor(api: Api, member: str) -> None:
    ids = [
        create_file(api, member, openai_jsonl([(f"q{i}", f"a{i}")])).json()["id"] for i in range(3)
    ]
    first = api.call("GET", "/files?limit=2&order=asc", member).json()
    assert [f["id"] for f in first["data"]] == ids[:2] and first["has_more"] is True
    assert (first["first_id"], first["last_id"]) == (ids[0], ids[1])
    rest = api.call("GET", f"/files?limit=2&order=asc&after={ids[1]}", member).json()
    assert [f["id"] for f in rest["data"]] == ids[2:] and rest["has_more"] is False
    newest = api.call("GET", f"/files?after={ids[2]}", member).json()
    assert [f["id"] for f in newest["data"]] == [ids[1], ids[0]]
    bad = api.call("GET", "/files?after=file-nope", member)
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "after"
    assert api.call("GET", "/files?limit=0", member).status_code == 422


def test_a_failed_upload_keeps_nothing(
    api: Api, member: str, settings: ServerSettings, factory: sessionmaker[Session]
) -> None:
    resp = create_file(api, member, b'{"messages": [}\n', filename="broken.jsonl")
    assert resp.status_code == 422
    error = resp.json()["error"]
    assert error["message"].startswith("broken.jsonl, line 1: not valid JSON")
    assert error["type"] == "invalid_request_error"
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(FileRow)) == 0
        assert session.scalar(select(func.count()).select_from(Dataset)) == 0
    artifacts = settings.artifacts_dir
    assert not artifacts.exists() or not [p for p in artifacts.rglob("*") if p.is_file()]


def test_a_repeated_upload_with_one_idempotency_key_is_one_file(api: Api, member: str) -> None:
    headers = {"Idempotency-Key": "upload-1"}
    first = create_file(api, member, openai_jsonl(), headers=dict(headers))
    again = create_file(api, member, openai_jsonl(), headers=dict(headers))
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert len(api.call("GET", "/files", member).json()["data"]) == 1
    other = create_file(api, member, openai_jsonl())
    assert other.json()["id"] != first.json()["id"]  # no key: a new file, same content
    reused = create_file(api, member, alpaca_json(), headers=dict(headers))
    assert reused.status_code == 409
    assert reused.json()["error"]["code"] == "idempotency_key_reused"


def test_delete_keeps_a_dataset_that_a_job_was_made_from(
    api: Api, member: str, factory: sessionmaker[Session]
) -> None:
    used = create_file(api, member, openai_jsonl()).json()
    unused = create_file(api, member, alpaca_json()).json()
    with factory() as session:
        row = session.get(FileRow, used["id"])
        assert row is not None
        tenant_id, version_id = row.tenant_id, row.dataset_version_id
    insert_running_job(factory, tenant_id, dataset_version_id=version_id)

    for file in (used, unused):
        resp = api.call("DELETE", f"/files/{file['id']}", member)
        assert resp.json() == {"id": file["id"], "object": "file", "deleted": True}
        assert api.call("DELETE", f"/files/{file['id']}", member).status_code == 404
    assert api.call("GET", f"/datasets/{used['id']}", member).status_code == 200  # lineage
    assert api.call("GET", f"/datasets/{unused['id']}", member).status_code == 404
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(DatasetVersion)) == 1


def test_the_upload_form_is_checked(api: Api, member: str) -> None:
    no_file = api.call(
        "POST", "/files", member, data={"purpose": "fine-tune"}, files={"x": ("a", b"")}
    )
    assert no_file.status_code == 422 and no_file.json()["error"]["param"] == "file"
    no_purpose = api.call("POST", "/files", member, files={"file": ("a.jsonl", openai_jsonl())})
    assert no_purpose.status_code == 422 and no_purpose.json()["error"]["param"] == "purpose"
    not_form = api.call("POST", "/files", member, json={"purpose": "fine-tune"})
    assert not_form.status_code == 415
    stranger = api.call("POST", "/files", "mf_bad", data={"purpose": "fine-tune"})
    assert stranger.status_code == 401


def test_a_file_name_is_kept_without_its_path(api: Api, member: str) -> None:
    resp = create_file(api, member, openai_jsonl(), filename="C:\\data\\chats.jsonl")
    assert resp.json()["filename"] == "chats.jsonl"
    got = api.call("GET", f"/files/{resp.json()['id']}", member).json()
    assert (got["filename"], got["bytes"]) == ("chats.jsonl", len(openai_jsonl()))
    assert clean_filename("../a/\x07b\x1f.jsonl") == "b.jsonl"
    assert clean_filename("dir/") == "upload" and len(clean_filename("x" * 999)) == 255

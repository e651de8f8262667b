"""Large bodies (dataset uploads, hub imports, worker artifacts) are read only after the
caller is authenticated: a stranger's upload is answered 401 (or 403) with nothing
written and the body left unread."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelfab.settings import ServerSettings
from tests.conftest import Api

BOUNDARY = "modelfab-test-boundary"
CHUNK = b"\0" * 2**20
CHUNKS = 8  # 8 MiB: larger than Starlette's 1 MiB in-memory spool


class CountingBody:
    """A multipart body of `CHUNKS` MiB of zeros as the file part, counting what was pulled."""

    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = fields
        self.pulled = 0

    def __iter__(self) -> Iterator[bytes]:
        for name, value in self.fields.items():
            yield (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
            ).encode()
        yield (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            'filename="big.tar.gz"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        for _ in range(CHUNKS):
            self.pulled += 1
            yield CHUNK
        yield f"\r\n--{BOUNDARY}--\r\n".encode()


@pytest.fixture
def system_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The process's temporary folder (where Starlette spools form files), made empty."""
    folder = tmp_path / "systmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _post(api: Api, path: str, body: CountingBody, key: str | None) -> tuple[int, str]:
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    resp = api.call("POST", path, key, content=iter(body), headers=headers)
    return resp.status_code, resp.json()["error"]["code"]


def _nothing_written(settings: ServerSettings, system_tmp: Path, body: CountingBody) -> None:
    assert body.pulled < CHUNKS, "the body was read before the caller was refused"
    assert list(system_tmp.iterdir()) == []
    for folder in (settings.home / "tmp", settings.datasets_dir, settings.hub_dir):
        assert not folder.exists() or list(folder.iterdir()) == []


@pytest.mark.parametrize("key", [None, "mf_garbage-key"])
def test_dataset_upload_of_a_stranger_reads_and_writes_nothing(
    api: Api, settings: ServerSettings, system_tmp: Path, key: str | None
) -> None:
    body = CountingBody({"name": "pets", "task": "image-classification"})
    assert _post(api, "/datasets/upload", body, key) == (401, "unauthenticated")
    _nothing_written(settings, system_tmp, body)


@pytest.mark.parametrize(("who", "status"), [(None, 401), ("mf_garbage", 401), ("member", 403)])
def test_hub_import_of_a_non_admin_reads_and_writes_nothing(
    api: Api, settings: ServerSettings, system_tmp: Path, who: str | None, status: int
) -> None:
    key = who if who != "member" else str(api.create_tenant()["api_key"])
    body = CountingBody({})
    assert _post(api, "/hub/resnet18/import", body, key)[0] == status
    _nothing_written(settings, system_tmp, body)


@pytest.mark.parametrize("token", [None, "garbage-job-token"])
def test_artifact_upload_without_a_valid_job_token_reads_and_writes_nothing(
    api: Api, settings: ServerSettings, system_tmp: Path, token: str | None
) -> None:
    body = CountingBody({"name": "weights.pt", "format": "pytorch", "sha256": "0" * 64})
    assert _post(api, "/worker/jobs/job_nope/artifacts", body, token) == (401, "unauthenticated")
    _nothing_written(settings, system_tmp, body)
    assert not settings.artifacts_dir.exists() or list(settings.artifacts_dir.rglob("*")) == []


def test_a_body_that_is_not_multipart_is_a_415(api: Api, system_tmp: Path) -> None:
    member = str(api.create_tenant()["api_key"])
    resp = api.call("POST", "/datasets/upload", member, json={"name": "pets"})
    assert resp.status_code == 415
    assert resp.json()["error"]["code"] == "unsupported_media_type"


def test_a_missing_part_is_named(
    api: Api, settings: ServerSettings, system_tmp: Path, tmp_path: Path
) -> None:
    member = str(api.create_tenant()["api_key"])
    no_task = api.call(
        "POST", "/datasets/upload", member, data={"name": "pets"}, files={"file": ("a.tgz", b"x")}
    )
    assert no_task.status_code == 422
    assert no_task.json()["error"]["param"] == "task"
    no_file = api.call(
        "POST", "/datasets/upload", member, files={"name": (None, "p"), "task": (None, "t")}
    )
    assert no_file.status_code == 422
    assert no_file.json()["error"]["param"] == "file"
    assert list((settings.home / "tmp").iterdir()) == []

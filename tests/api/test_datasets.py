"""Dataset upload and import through the API: versions, isolation, and refusals that name
the offending file and leave nothing behind."""

from __future__ import annotations

import io
import random
import re
import tarfile
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from modelfab.compute.worker.__main__ import dataset_folder
from modelfab.settings import ServerSettings
from tests.api.factories import (
    AD,
    CLS,
    make_anomaly,
    make_classification,
    targz,
    upload,
    write_image,
    zipped,
)
from tests.conftest import Api
from tests.registry_factories import register, start_attempt, worker_headers


def names(api: Api, key: str) -> list[tuple[str, int, int]]:
    resp = api.call("GET", "/datasets", key)
    assert resp.status_code == 200
    return [(d["name"], d["latest_version"], d["versions"]) for d in resp.json()["data"]]


@pytest.fixture
def member(api: Api) -> str:
    return str(api.create_tenant("vision")["api_key"])


# --------------------------------------------------------------------------- versions


def test_upload_versions_are_content_addressed(api: Api, member: str, tmp_path: Path) -> None:
    root = make_classification(tmp_path / "pets")
    first = upload(api, member, "pets", targz(root))
    assert first.status_code == 201, first.text
    v1 = first.json()
    assert (v1["name"], v1["version"], v1["ref"], v1["task"]) == ("pets", 1, "pets:1", CLS)
    assert v1["created"] is True
    assert re.fullmatch(r"[0-9a-f]{64}", v1["sha256"])
    assert v1["file_count"] == 5
    assert v1["stats"]["classes"] == {"cat": 3, "dog": 2}
    assert v1["stats"]["num_images"] == 5

    again = upload(api, member, "pets", targz(root, arcname="other-folder-name"))
    assert again.status_code == 200, again.text
    assert (again.json()["version"], again.json()["created"]) == (1, False)
    assert again.json()["sha256"] == v1["sha256"]

    as_zip = upload(api, member, "pets", zipped(root), filename="ds.zip")
    assert as_zip.status_code == 200, as_zip.text
    assert as_zip.json()["version"] == 1

    write_image(root / "dog" / "002.png", seed=99)
    changed = upload(api, member, "pets", targz(root))
    assert changed.status_code == 201, changed.text
    v2 = changed.json()
    assert (v2["version"], v2["created"]) == (2, True)
    assert v2["sha256"] != v1["sha256"]
    assert v2["stats"]["classes"] == {"cat": 3, "dog": 3}

    assert names(api, member) == [("pets", 2, 2)]


def test_get_dataset_by_name_and_version(api: Api, member: str, tmp_path: Path) -> None:
    root = make_classification(tmp_path / "pets")
    v1 = upload(api, member, "pets", targz(root)).json()
    write_image(root / "cat" / "extra.png", seed=7)
    v2 = upload(api, member, "pets", targz(root)).json()

    one = api.call("GET", "/datasets/pets:1", member)
    assert one.status_code == 200
    assert (one.json()["version"], one.json()["sha256"]) == (1, v1["sha256"])
    assert one.json()["versions"] == [1, 2]

    latest = api.call("GET", "/datasets/pets", member)
    assert latest.status_code == 200
    assert (latest.json()["version"], latest.json()["sha256"]) == (2, v2["sha256"])

    missing = api.call("GET", "/datasets/pets:9", member)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert missing.json()["error"]["param"] == "dataset"

    for bad in ("pets:latest", "pets:0", "pets:99999999999999999999999", "pets@production"):
        bad_ref = api.call("GET", f"/datasets/{bad}", member)
        assert bad_ref.status_code == 422, bad
        assert bad_ref.json()["error"]["param"] == "dataset"


def test_same_name_with_another_task_conflicts(api: Api, member: str, tmp_path: Path) -> None:
    assert (
        upload(api, member, "parts", targz(make_classification(tmp_path / "c"))).status_code == 201
    )
    ad = tmp_path / "ad"
    resp = upload(api, member, "parts", targz(make_anomaly(ad)), task=AD)
    assert resp.status_code == 409
    assert resp.json()["error"]["param"] == "task"
    assert names(api, member) == [("parts", 1, 1)]


def test_anomaly_upload_reports_splits(api: Api, member: str, tmp_path: Path) -> None:
    resp = upload(api, member, "parts", targz(make_anomaly(tmp_path / "ad")), task=AD)
    assert resp.status_code == 201, resp.text
    stats = resp.json()["stats"]
    assert stats["splits"] == {"test/good": 1, "test/scratch": 1, "train/good": 2}
    assert (stats["defect_types"], stats["num_masks"]) == (["scratch"], 1)
    assert resp.json()["file_count"] == 5


@pytest.mark.parametrize("task", [CLS, AD])
def test_flat_archive_is_accepted(api: Api, member: str, tmp_path: Path, task: str) -> None:
    if task == CLS:
        root = make_classification(tmp_path / "x")
    else:  # train/ alone at the top must not be taken for a wrapping folder
        root = tmp_path / "x"
        for i in range(2):
            write_image(root / "train" / "good" / f"{i}.png", seed=i)
    wrapped = upload(api, member, "flat", targz(root), task=task)
    assert wrapped.status_code == 201, wrapped.text
    flat = upload(api, member, "flat", targz(root, arcname=None), task=task)
    assert flat.status_code == 200, flat.text
    assert flat.json()["sha256"] == wrapped.json()["sha256"]


# --------------------------------------------------------------------------- isolation


def test_tenants_do_not_see_each_others_datasets(api: Api, member: str, tmp_path: Path) -> None:
    other = api.create_tenant("audio")["api_key"]
    mine = upload(api, member, "pets", targz(make_classification(tmp_path / "a"))).json()

    for ref in ("pets", "pets:1"):
        resp = api.call("GET", f"/datasets/{ref}", other)
        assert resp.status_code == 404
        assert resp.json()["error"]["code"] == "not_found"
    assert names(api, other) == []

    root_b = make_classification(tmp_path / "b", {"car": 2, "bus": 2})
    theirs = upload(api, other, "pets", targz(root_b))
    assert theirs.status_code == 201, theirs.text
    assert theirs.json()["version"] == 1
    assert theirs.json()["id"] != mine["id"]
    assert api.call("GET", "/datasets/pets", member).json()["sha256"] == mine["sha256"]
    assert api.call("GET", "/datasets/pets", other).json()["stats"]["classes"] == {
        "bus": 2,
        "car": 2,
    }


def _no_server_path(text: str, settings: ServerSettings) -> None:
    """`text` (an answer's body) names no file on the server: no file: URL, no store path."""
    assert "file:" not in text
    assert str(settings.home) not in text
    assert str(settings.home.resolve()) not in text


def _tenant_view(answer: dict[str, Any]) -> dict[str, Any]:
    """An answer without what differs between any two uploads (ids and times)."""
    return {k: v for k, v in answer.items() if k not in ("id", "created_at")}


def test_identical_content_of_another_tenant_looks_like_a_first_upload(
    api: Api, member: str, tmp_path: Path, settings: ServerSettings
) -> None:
    """The store is shared (content-addressed), but B's answers name no server path and
    say nothing A's first answer did not: B cannot learn that A holds the same content."""
    other = str(api.create_tenant("audio")["api_key"])
    blob = targz(make_classification(tmp_path / "pets"))
    first = upload(api, member, "pets", blob)
    assert first.status_code == 201, first.text
    theirs = upload(api, other, "pets", blob)
    assert theirs.status_code == 201, theirs.text
    assert theirs.json()["created"] is True
    assert _tenant_view(theirs.json()) == _tenant_view(first.json())

    job = api.call("POST", "/jobs", other, json={"recipe": "sleep", "dataset": "pets"})
    assert job.status_code == 201, job.text
    assert job.json()["dataset"]["id"] == theirs.json()["id"]
    answers = [
        theirs,
        job,
        api.call("GET", "/datasets/pets", other),
        api.call("GET", "/datasets/pets:1", other),
        api.call("GET", "/datasets", other),
        api.call("GET", f"/jobs/{job.json()['id']}", other),
        api.call("GET", "/jobs", other),
    ]
    for resp in answers:
        assert resp.status_code in (200, 201), resp.text
        _no_server_path(resp.text, settings)
    mine = api.call("GET", "/datasets/pets", member).json()
    assert _tenant_view(answers[2].json()) == _tenant_view(mine)


def test_worker_spec_alone_carries_the_location(
    api: Api,
    member: str,
    tmp_path: Path,
    settings: ServerSettings,
    factory: sessionmaker[Session],
) -> None:
    """The attempt's spec (job token) says where the content lies and the worker reads its
    folder from there; the model it registers and its lineage still name no server path."""
    other = str(api.create_tenant("audio")["api_key"])
    blob = targz(make_classification(tmp_path / "pets"))
    assert upload(api, member, "pets", blob).status_code == 201
    theirs = upload(api, other, "pets", blob).json()
    job = api.call("POST", "/jobs", other, json={"recipe": "sleep", "dataset": "pets"}).json()
    token = start_attempt(factory, job["id"])

    spec = api.client.get(f"/v1/worker/jobs/{job['id']}/spec", headers=worker_headers(token))
    assert spec.status_code == 200, spec.text
    dataset = spec.json()["dataset"]
    assert dataset["id"] == theirs["id"]
    folder = dataset_folder(dataset)
    assert folder is not None and folder.is_dir()
    assert folder.resolve().parent == settings.datasets_dir.resolve()

    assert register(api.client, job["id"], token, "pets-clf") == {"status": "succeeded"}
    for path in ("/models/pets-clf:1", "/models/pets-clf/lineage"):
        resp = api.call("GET", path, other)
        assert resp.status_code == 200, resp.text
        _no_server_path(resp.text, settings)
    lineage = api.call("GET", "/models/pets-clf/lineage", other).json()
    assert lineage["dataset"] == {"id": theirs["id"], "ref": "pets:1", "sha256": theirs["sha256"]}


# --------------------------------------------------------------------------- refusals


def _corrupt_png(root: Path) -> tuple[bytes, str]:
    make_classification(root)
    (root / "dog" / "broken.png").write_bytes(random.Random(0).randbytes(200))
    return targz(root), CLS


def _one_class(root: Path) -> tuple[bytes, str]:
    return targz(make_classification(root, {"cat": 3})), CLS


def _anomaly_without_train(root: Path) -> tuple[bytes, str]:
    write_image(root / "test" / "good" / "000.png")
    write_image(root / "test" / "scratch" / "000.png", seed=3)
    return targz(root), AD


def _unknown_task(root: Path) -> tuple[bytes, str]:
    return targz(make_classification(root)), "segmentation"


def _not_an_archive(root: Path) -> tuple[bytes, str]:
    return b"just some text, not a tarball\n" * 10, CLS


def _truncated_archive(root: Path) -> tuple[bytes, str]:
    blob = targz(make_classification(root))
    return blob[: len(blob) // 2], CLS


@pytest.mark.parametrize(
    ("build", "code", "param"),
    [
        (_corrupt_png, "dataset_invalid", "dog/broken.png"),
        (_one_class, "dataset_invalid", "cat"),
        (_anomaly_without_train, "dataset_invalid", "train/good"),
        (_unknown_task, "invalid_request", "task"),
        (_not_an_archive, "invalid_request", "file"),
        (_truncated_archive, "invalid_request", "file"),
    ],
)
def test_invalid_upload_names_the_problem_and_leaves_nothing(
    api: Api,
    member: str,
    settings: ServerSettings,
    tmp_path: Path,
    build: Any,
    code: str,
    param: str,
) -> None:
    assert (
        upload(api, member, "pets", targz(make_classification(tmp_path / "ok"))).status_code == 201
    )
    stored_before = sorted(p.name for p in settings.datasets_dir.iterdir())

    blob, task = build(tmp_path / "bad")
    for name in ("pets", "fresh"):
        resp = upload(api, member, name, blob, task=task)
        assert resp.status_code == 422, resp.text
        err = resp.json()["error"]
        assert (err["code"], err["param"]) == (code, param)
        assert str(tmp_path) not in err["message"]  # no server paths leak

    assert names(api, member) == [("pets", 1, 1)]
    assert sorted(p.name for p in settings.datasets_dir.iterdir()) == stored_before
    assert list((settings.home / "tmp").iterdir()) == []


def test_bad_dataset_name_is_refused(api: Api, member: str, tmp_path: Path) -> None:
    resp = upload(api, member, "Bad Name!", targz(make_classification(tmp_path / "x")))
    assert resp.status_code == 422
    assert resp.json()["error"]["param"] == "name"
    assert names(api, member) == []


def test_upload_over_the_size_limit_is_refused(
    api: Api, member: str, settings: ServerSettings, tmp_path: Path
) -> None:
    blob = targz(make_classification(tmp_path / "x"))
    settings.max_upload_bytes = len(blob) - 1
    resp = upload(api, member, "pets", blob)
    assert resp.status_code == 413
    assert (resp.json()["error"]["code"], resp.json()["error"]["param"]) == (
        "payload_too_large",
        "file",
    )
    assert names(api, member) == []
    assert list((settings.home / "tmp").iterdir()) == []


def _tar_of(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def capped(settings: ServerSettings, request: pytest.FixtureRequest) -> Api:
    """The API with archives capped at 1 MiB unpacked and 50 entries (set before it starts)."""
    settings.max_extract_bytes = 2**20
    settings.max_archive_members = 50
    api: Api = request.getfixturevalue("api")
    return api


@pytest.mark.parametrize(
    ("members", "limit"),
    [
        ({f"ds/cat/{i}.png": b"\0" * 2**19 for i in range(8)}, str(2**20)),
        ({f"ds/cat/{i}.png": b"" for i in range(60)}, "50 entries"),
    ],
    ids=["bytes", "members"],
)
def test_archive_bomb_is_refused_and_leaves_nothing(
    capped: Api, settings: ServerSettings, members: dict[str, bytes], limit: str
) -> None:
    key = str(capped.create_tenant()["api_key"])
    blob = _tar_of(members)
    resp = upload(capped, key, "pets", blob, filename="bomb.tar.gz")
    assert resp.status_code == 413, resp.text
    err = resp.json()["error"]
    assert (err["code"], err["param"]) == ("payload_too_large", "file")
    assert "'bomb.tar.gz'" in err["message"] and limit in err["message"]
    assert list((settings.home / "tmp").iterdir()) == []
    assert not settings.datasets_dir.exists() or list(settings.datasets_dir.iterdir()) == []


class _Zeros(io.RawIOBase):
    """A read-only stream of zeros, so a bomb is built without holding it in memory."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        buffer[:] = bytes(len(buffer))
        return len(buffer)


def test_compressible_bomb_is_refused_by_default_settings(
    api: Api, member: str, settings: ServerSettings
) -> None:
    """300 MiB of zeros packed in ~300 KB passes the 20 GiB cap but not the ratio cap."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for i in range(30):
            info = tarfile.TarInfo(f"ds/cat/{i}.png")
            info.size = 10 * 2**20
            tf.addfile(info, _Zeros())
    assert len(buf.getvalue()) < 2**20
    resp = upload(api, member, "pets", buf.getvalue(), filename="bomb.tar.gz")
    assert resp.status_code == 413, resp.text
    err = resp.json()["error"]
    assert (err["code"], err["param"]) == ("payload_too_large", "file")
    assert "'bomb.tar.gz'" in err["message"] and "MODELFAB_MAX_EXTRACT_RATIO" in err["message"]
    assert list((settings.home / "tmp").iterdir()) == []
    assert names(api, member) == []


def test_overlong_member_name_is_a_422_naming_it(api: Api, member: str, tmp_path: Path) -> None:
    long_name = "ds/cat/" + "a" * 300 + ".png"
    resp = upload(api, member, "pets", _tar_of({long_name: b"png"}))
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert (err["code"], err["param"]) == ("dataset_invalid", "file")
    assert "a" * 60 in err["message"] and "255 bytes" in err["message"]
    # the next request is answered as usual
    ok = upload(api, member, "pets", targz(make_classification(tmp_path / "ok")))
    assert ok.status_code == 201, ok.text


# --------------------------------------------------------------------------- server paths


def test_import_from_server_path_is_admin_only(api: Api, member: str, tmp_path: Path) -> None:
    root = make_classification(tmp_path / "pets")
    body = {"name": "pets", "task": CLS, "path": str(root)}

    denied = api.call("POST", "/datasets", member, json=body)
    assert denied.status_code == 403
    assert (denied.json()["error"]["code"], denied.json()["error"]["param"]) == (
        "forbidden",
        "path",
    )
    assert names(api, member) == []

    created = api.call("POST", "/datasets", api.admin_key, json=body)
    assert created.status_code == 201, created.text
    assert (created.json()["version"], created.json()["created"]) == (1, True)
    assert created.json()["stats"]["classes"] == {"cat": 3, "dog": 2}
    assert names(api, api.admin_key) == [("pets", 1, 1)]

    again = api.call("POST", "/datasets", api.admin_key, json=body)
    assert again.status_code == 200
    assert again.json()["created"] is False


def test_import_from_missing_server_path_is_refused(api: Api, tmp_path: Path) -> None:
    body = {"name": "pets", "task": CLS, "path": str(tmp_path / "nowhere")}
    resp = api.call("POST", "/datasets", api.admin_key, json=body)
    assert resp.status_code == 422
    assert resp.json()["error"]["param"] == "path"

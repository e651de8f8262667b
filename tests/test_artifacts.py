"""The content-addressed artifact store: publish once, verify on every read."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from modelfab.artifacts import ArtifactCorrupt, ArtifactStore
from modelfab.errors import NotFound, PayloadTooLarge


def leftovers(root: Path) -> list[str]:
    return [p.name for p in root.rglob(".tmp-*")]


def tamper(path: Path, content: bytes) -> None:
    path.chmod(0o644)
    path.write_bytes(content)


def test_put_stream_stores_by_sha256(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    content = b"weights" * 1000
    uri, sha256, size = store.put_stream(io.BytesIO(content), max_bytes=1 << 20)

    assert sha256 == hashlib.sha256(content).hexdigest()
    assert size == len(content)
    path = tmp_path / "artifacts" / sha256[:2] / sha256
    assert uri == path.resolve().as_uri()
    assert path.read_bytes() == content
    assert path.stat().st_mode & 0o222 == 0
    assert leftovers(store.root) == []


def test_same_content_is_stored_once(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    first = store.put_stream(io.BytesIO(b"abc"), max_bytes=10)
    second = store.put_stream(io.BytesIO(b"abc"), max_bytes=10)
    assert first == second
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [store.path_for(first[1])]


def test_too_large_leaves_nothing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(PayloadTooLarge) as err:
        store.put_stream(io.BytesIO(b"x" * 11), max_bytes=10)
    assert err.value.param == "file"
    assert list(tmp_path.rglob("*")) == []


def test_open_verified_rehashes_each_read(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    uri, sha256, _ = store.put_stream(io.BytesIO(b"model bytes"), max_bytes=100)
    path = store.open_verified(uri, sha256)
    assert path.read_bytes() == b"model bytes"

    tamper(path, b"model bytez")
    with pytest.raises(ArtifactCorrupt) as err:
        store.open_verified(uri, sha256)
    assert (err.value.status, err.value.code) == (409, "artifact_corrupt")
    assert "changed on disk" in err.value.message


def test_put_repairs_a_corrupt_copy(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    uri, sha256, _ = store.put_stream(io.BytesIO(b"good"), max_bytes=100)
    tamper(store.path_for(sha256), b"bad!")
    assert store.put_stream(io.BytesIO(b"good"), max_bytes=100)[0] == uri
    assert store.open_verified(uri, sha256).read_bytes() == b"good"


def test_missing_or_foreign_uris_are_not_found(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    uri, sha256, _ = store.put_stream(io.BytesIO(b"data"), max_bytes=100)
    other = hashlib.sha256(b"other").hexdigest()

    outside = tmp_path / "elsewhere"
    outside.write_bytes(b"data")
    for bad_uri, bad_sha in [
        (outside.resolve().as_uri(), sha256),  # right content, not in the store
        (uri, other),  # the uri of another content
        ("http://example.com/x", sha256),
        (uri, "../../etc/passwd"),
    ]:
        with pytest.raises(NotFound):
            store.open_verified(bad_uri, bad_sha)

    store.path_for(sha256).unlink()
    with pytest.raises(NotFound, match="missing"):
        store.open_verified(uri, sha256)

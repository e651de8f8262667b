"""The content-addressed artifact store: model weights, ONNX files, label maps.

Layout: `<root>/<sha256[:2]>/<sha256>`, one read-only file per content. A file is staged
in `<root>/.tmp-<random>` while it is hashed, then published by one `os.replace`, so a
path is either absent or complete. Every read re-hashes the file against the sha256 the
registry recorded, so a changed file is refused instead of served.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlparse

from modelfab.errors import ModelfabError, NotFound, PayloadTooLarge

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
SHA256_RE = re.compile(r"[0-9a-f]{64}")


class ArtifactCorrupt(ModelfabError):
    """A stored artifact no longer matches its recorded sha256.

    409, not 500: the request is fine and the server did not fail unexpectedly; the stored
    resource is in a state that conflicts with its record, and stays so until it is
    registered again. The client can act on the stable code; a 5xx would read as retryable.
    """

    status = 409
    code = "artifact_corrupt"


def verified_file(ref: dict[str, str]) -> Path:
    """The local path of a `{uri, sha256}` file reference (a file: URI on this machine's
    disk), after checking its bytes. Raises ArtifactCorrupt when they do not match."""
    path = Path(unquote(urlparse(ref["uri"]).path))
    if hash_path(path)[0] != ref["sha256"]:
        raise ArtifactCorrupt(
            f"{path} does not match its recorded sha256; register or import it again"
        )
    return path


def fetch_folder(files: Mapping[str, Any], folder: Path) -> Path:
    """Link each artifact of a `model_artifacts` answer ({artifacts: {name: {uri, sha256}}})
    into `folder` under its name, after checking its bytes. Blocks while hashing.
    Raises ArtifactCorrupt for a file that does not match its sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, ref in dict(files.get("artifacts") or {}).items():
        source = verified_file(ref)
        target = folder / Path(name).name
        if target.is_symlink() or target.exists():
            target.unlink()
        os.symlink(source.resolve(), target)
    return folder


def hash_path(path: Path) -> tuple[str, int]:
    """(sha256, size in bytes) of a file; blocks while reading it."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class ArtifactStore:
    """Immutable files under `root`, keyed by sha256. Safe for concurrent threads and
    processes sharing `root` (one filesystem)."""

    def __init__(self, root: Path) -> None:
        """Use `root` as the store, creating it if missing."""
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        if not SHA256_RE.fullmatch(sha256):
            raise NotFound(f"{sha256[:80]!r} is not a sha256", param="sha256")
        return self.root / sha256[:2] / sha256

    def uri_for(self, sha256: str) -> str:
        return self.path_for(sha256).resolve().as_uri()

    def put_stream(self, stream: BinaryIO, *, max_bytes: int) -> tuple[str, str, int]:
        """Copy `stream` into the store, hashing on the way. Returns (uri, sha256, size).

        Blocks while copying. The same content twice is stored once. Raises PayloadTooLarge
        (param "file") past `max_bytes`, leaving nothing behind.
        """
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", dir=self.root)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK_BYTES):
                    size += len(chunk)
                    if size > max_bytes:
                        raise PayloadTooLarge(
                            f"artifact is larger than {max_bytes} bytes", param="file"
                        )
                    digest.update(chunk)
                    out.write(chunk)
            sha256 = digest.hexdigest()
            self._publish(tmp, sha256)
        finally:
            tmp.unlink(missing_ok=True)
        return self.uri_for(sha256), sha256, size

    def _publish(self, tmp: Path, sha256: str) -> None:
        """Move `tmp` to its address, unless an intact copy is already there."""
        final = self.path_for(sha256)
        if final.is_file() and hash_path(final)[0] == sha256:
            logger.debug("artifact %s already stored", sha256[:12])
            return
        final.parent.mkdir(exist_ok=True)
        tmp.chmod(0o444)  # an accident should not change published content
        os.replace(tmp, final)
        logger.info("stored artifact %s", sha256[:12])

    def open_verified(self, uri: str, sha256: str) -> Path:
        """The path of the artifact at `uri` after checking its content (blocks: re-hashes).

        Raises:
            NotFound: `uri` is not this store's address for `sha256`, or the file is gone.
            ArtifactCorrupt: the file's content no longer hashes to `sha256`.
        """
        path = self.path_for(sha256)
        if _uri_path(uri) != path.resolve():
            raise NotFound(f"{uri[:200]} is not in the artifact store as {sha256}", param="uri")
        if not path.is_file():
            raise NotFound(f"artifact {sha256} is missing from the store", param="uri")
        actual, _ = hash_path(path)
        if actual != sha256:
            logger.error("artifact %s is corrupt: its content hashes to %s", sha256, actual)
            raise ArtifactCorrupt(
                f"stored artifact {sha256[:12]} no longer matches its sha256; "
                "it was changed on disk: run the job again to register a new version",
                param="sha256",
            )
        return path


def _uri_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        return None
    return Path(unquote(parsed.path)).resolve()

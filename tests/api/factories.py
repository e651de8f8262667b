"""Dataset factories for the API tests: tiny image folders (Pillow) and their archives."""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.conftest import Api
from tests.factories import write_image

CLS = "image-classification"
AD = "anomaly-detection"


def make_classification(root: Path, classes: Mapping[str, int] | None = None) -> Path:
    """`root/<class>/<i>.png`; default cat: 3, dog: 2."""
    classes = {"cat": 3, "dog": 2} if classes is None else classes
    for c, (name, count) in enumerate(classes.items()):
        for i in range(count):
            write_image(root / name / f"{i:03d}.png", seed=c * 50 + i)
    return root


def make_anomaly(root: Path) -> Path:
    """train/good: 2 images; test/good: 1; test/scratch: 1 with its mask (all 6x4)."""
    for i in range(2):
        write_image(root / "train" / "good" / f"{i:03d}.png", seed=i)
    write_image(root / "test" / "good" / "000.png", seed=10)
    write_image(root / "test" / "scratch" / "000.png", seed=20)
    write_image(root / "ground_truth" / "scratch" / "000_mask.png", mode="L")
    return root


def targz(root: Path, arcname: str | None = "ds") -> bytes:
    """`root` as a .tar.gz: under the folder `arcname`, or flat when it is None."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        if arcname is not None:
            tf.add(root, arcname=arcname)
        else:
            for child in sorted(root.iterdir()):
                tf.add(child, arcname=child.name)
    return buf.getvalue()


def zipped(root: Path) -> bytes:
    """`root` as a flat .zip."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(root).as_posix())
    return buf.getvalue()


def upload(
    api: Api, key: str, name: str, blob: bytes, task: str = CLS, filename: str = "ds.tar.gz"
) -> Any:
    """POST /datasets/upload as a multipart form; returns the response."""
    return api.call(
        "POST",
        "/datasets/upload",
        key,
        data={"name": name, "task": task},
        files={"file": (filename, blob, "application/octet-stream")},
    )

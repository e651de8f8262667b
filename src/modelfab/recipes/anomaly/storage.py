"""The on-disk form of a detector: a folder with a JSON config and .npy arrays.

`write_folder` saves the arrays first and the config last (atomically, by rename), so a
folder whose config exists is complete. The config records each array's file, shape,
dtype and sha256; `read_folder` checks all of them and never unpickles.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from modelfab.errors import ModelfabError

FORMAT = "modelfab-patchcore"
FORMAT_VERSION = 1
CONFIG_NAME = "patchcore.json"


def write_folder(folder: Path, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """Write `arrays` as `<name>.npy` and `config` (plus "format", "version" and "files")
    as CONFIG_NAME into `folder`, replacing an earlier detector there. Returns `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, array in arrays.items():
        path = folder / f"{name}.npy"
        np.save(path, array, allow_pickle=False)
        files[name] = {
            "file": path.name,
            "shape": list(array.shape),
            "dtype": str(array.dtype),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
    full = {"format": FORMAT, "version": FORMAT_VERSION, **config, "files": files}
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(full, indent=2) + "\n")
    os.replace(tmp_name, folder / CONFIG_NAME)
    return folder


def read_folder(folder: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(config, arrays by name) of a folder `write_folder` wrote.

    Raises ModelfabError "detector_invalid" (param "model") when the config is missing,
    unreadable or of another format, or an array is missing or does not match its record.
    """
    try:
        config: dict[str, Any] = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, ValueError) as exc:
        raise invalid(folder, f"{CONFIG_NAME} is missing or unreadable ({exc})") from exc
    if config.get("format") != FORMAT or config.get("version") != FORMAT_VERSION:
        found = f"{config.get('format')!r} v{config.get('version')!r}"
        raise invalid(folder, f"its format is {found}, not {FORMAT!r} v{FORMAT_VERSION}")
    files = config.get("files")
    if not isinstance(files, dict):
        raise invalid(folder, f"{CONFIG_NAME} lists no files")
    arrays = {name: _read_array(folder, meta) for name, meta in files.items()}
    return config, arrays


def invalid(folder: Path, detail: str) -> ModelfabError:
    """The error for a detector folder that cannot be used."""
    return ModelfabError(
        f"{folder.name} is not a usable PatchCore detector: {detail}; fit and save it again",
        code="detector_invalid",
        param="model",
    )


def _read_array(folder: Path, meta: dict[str, Any]) -> np.ndarray:
    path = folder / Path(str(meta["file"])).name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise invalid(folder, f"{path.name} is missing ({exc.strerror})") from exc
    if hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise invalid(folder, f"{path.name} does not match its recorded sha256")
    array: np.ndarray = np.load(io.BytesIO(data), allow_pickle=False)
    if list(array.shape) != meta["shape"] or str(array.dtype) != meta["dtype"]:
        raise invalid(folder, f"{path.name} holds {array.dtype}{list(array.shape)}, not {meta}")
    return array

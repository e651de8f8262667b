"""Fakes for the inspection application's tests: images written to disk (dark, with an
optional bright "defect"), a corrupt file, and `FakeEndpoint`, a predict function that
answers like an anomaly endpoint (used here and by the `modelfab inspect` CLI tests)."""

from __future__ import annotations

import base64
import io
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from modelfab.client import ApiError

DARK, BRIGHT = 40, 255


def write_image(path: Path, *, spot: bool = False, size: tuple[int, int] = (48, 40)) -> Path:
    """A dark image; with `spot`, a bright square (the "defect") in its top-left quarter."""
    pixels = np.full((size[1], size[0], 3), DARK, np.uint8)
    if spot:
        pixels[4:14, 6:16] = BRIGHT
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def pixel(path: Path, x: int, y: int) -> tuple[int, int, int]:
    with Image.open(path) as img:
        r, g, b = np.asarray(img.convert("RGB"))[y, x].tolist()
    return r, g, b


def write_corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is not the rest of a PNG")
    return path


def heatmap(grey: np.ndarray) -> dict[str, Any]:
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="PNG")
    return {"format": "png", "encoding": "base64", "width": grey.shape[1],
            "height": grey.shape[0], "scale": 1.0,
            "data": base64.b64encode(buf.getvalue()).decode()}  # fmt: skip


class FakeEndpoint:
    """A predict function answering like an anomaly endpoint: score = brightest pixel / 255,
    threshold 0.5, the heatmap the image's brightness. A file PIL cannot read makes the
    whole call fail with 422 invalid_image naming it, as a replica does. Records calls and
    the most calls in flight at once."""

    def __init__(self, *, delay_s: float = 0.0, fail: ApiError | None = None) -> None:
        self.delay_s, self.fail = delay_s, fail
        self.calls: list[list[str]] = []
        self.in_flight = self.peak = 0
        self.lock = threading.Lock()

    def __call__(self, paths: list[Path]) -> dict[str, Any]:
        with self.lock:
            self.calls.append([p.name for p in paths])
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            time.sleep(self.delay_s)
            if self.fail is not None and len(self.calls) > 1:
                raise self.fail
            data = [self.item(i, p) for i, p in enumerate(paths)]
            return {"object": "list", "model_version": "mv_fake", "task": "anomaly-detection",
                    "threshold": 0.5, "data": data[::-1]}  # fmt: skip  # order by "index"
        finally:
            with self.lock:
                self.in_flight -= 1

    def item(self, index: int, path: Path) -> dict[str, Any]:
        try:
            with Image.open(path) as img:
                grey = np.asarray(img.convert("L").resize((16, 16)))
        except Exception as exc:
            raise ApiError(422, "invalid_image", f"{path.name} is not a readable image ({exc})",
                           param=path.name) from exc  # fmt: skip
        score = float(grey.max()) / 255
        return {"index": index, "name": path.name, "score": score, "threshold": 0.5,
                "is_anomaly": score >= 0.5, "label": "anomaly" if score >= 0.5 else "good",
                "heatmap": heatmap(grey)}  # fmt: skip


def parts(root: Path) -> list[Path]:
    """Seven images in two folders, one corrupt, two with a spot."""
    return [
        write_image(root / "a" / "01.png"),
        write_image(root / "a" / "02.png", spot=True),
        write_image(root / "a" / "03.jpg"),
        write_corrupt(root / "a" / "04.png"),
        write_image(root / "b" / "05.png"),
        write_image(root / "b" / "06.bmp", spot=True),
        write_image(root / "b" / "07.png"),
    ]

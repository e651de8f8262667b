"""`to_rgb`, the one way every layer reads an image's pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modelfab.imaging import to_rgb


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "CMYK"])
def test_the_result_outlives_its_file(tmp_path: Path, mode: str) -> None:
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    Image.new("RGB", (8, 6), (200, 40, 10)).convert(mode).save(path)
    with Image.open(path) as img:
        rgb = to_rgb(img)
    assert rgb.mode == "RGB" and rgb.resize((4, 3)).size == (4, 3)  # decodes after close


def test_sixteen_bit_greyscale_is_rescaled_not_clipped() -> None:
    values = np.array([[0, 256 * 100, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    rgb = to_rgb(image)
    assert [rgb.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (100,) * 3, (255,) * 3]

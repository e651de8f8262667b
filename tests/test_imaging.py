"""`to_rgb`, the one way every layer reads an image's pixels, and `overlay`, the one
way a heatmap is coloured onto an image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modelfab.imaging import JET_LUT, overlay, to_rgb


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


def grey_image(size: tuple[int, int] = (100, 60), value: int = 128) -> Image.Image:
    return Image.new("RGB", size, (value, value, value))


def test_overlay_keeps_the_size_and_colours_hot_pixels_red_and_leaves_cold_ones_readable() -> None:
    image = grey_image((100, 60))
    heat = np.zeros((8, 8), np.float32)
    heat[:, 4:] = 1.0  # right half hot, resized to the image
    out = np.asarray(overlay(image, heat)).astype(int)
    assert out.shape == (60, 100, 3)
    hot, cold = out[30, 95], out[30, 5]
    assert hot[0] > cold[0] + 60  # redder
    assert hot[0] - hot[2] > 60 and cold[2] > cold[0]  # red vs blue-ish
    # Cold regions keep the image readable: only a light tint.
    assert np.abs(out[:, :40] - 128).max() < 30
    # Hot regions are strongly coloured.
    assert np.abs(out[:, 70:] - 128).max() > 40


def test_overlay_clips_and_ignores_nan_and_refuses_3d_heat() -> None:
    image = grey_image((10, 10))
    heat = np.full((10, 10), np.nan, np.float32)
    heat[0, 0] = 7.0  # clipped to 1
    out = np.asarray(overlay(image, heat)).astype(int)
    assert out[0, 0, 0] > out[5, 5, 0]
    with pytest.raises(ValueError):
        overlay(image, np.zeros((2, 2, 2)))


def test_the_colour_map_runs_from_blue_to_red() -> None:
    assert JET_LUT.shape == (256, 3)
    assert JET_LUT[0, 2] > JET_LUT[0, 0] and JET_LUT[255, 0] > JET_LUT[255, 2]
    assert np.all(JET_LUT >= 0) and np.all(JET_LUT <= 255)

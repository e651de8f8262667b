"""`modelfab.apps.inspection.report`: heatmap decoding, overlays, thumbnails, the CSV and the
HTML report, on real images written to disk."""

from __future__ import annotations

import base64
import csv
import io
import re
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from modelfab.apps.inspection.report import (
    CSV_COLUMNS,
    InspectionRow,
    asset_base,
    decode_heatmap,
    histogram_svg,
    save_images,
    write_csv,
    write_report,
)
from modelfab.errors import ModelfabError


def heatmap_obj(grey: np.ndarray) -> dict[str, object]:
    """A predict answer's "heatmap" object holding `grey` (uint8) as a PNG."""
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="PNG")
    return {"format": "png", "encoding": "base64", "width": grey.shape[1],
            "height": grey.shape[0], "scale": 2.5,
            "data": base64.b64encode(buf.getvalue()).decode()}  # fmt: skip


def grey_image(size: tuple[int, int] = (100, 60), value: int = 128) -> Image.Image:
    return Image.new("RGB", size, (value, value, value))


def test_decode_heatmap_round_trips_a_png_of_a_known_array() -> None:
    grey = (np.arange(24 * 16, dtype=np.int64).reshape(16, 24) % 256).astype(np.uint8)
    heat = decode_heatmap(heatmap_obj(grey))
    assert heat.dtype == np.float32 and heat.shape == (16, 24)
    np.testing.assert_array_equal(heat, grey.astype(np.float32) / 255)
    assert heat.min() == 0.0 and heat.max() <= 1.0


@pytest.mark.parametrize(
    "obj",
    [
        {"format": "jpeg", "encoding": "base64", "data": ""},
        {"format": "png", "encoding": "base64", "data": "not base64!"},
        {"format": "png", "encoding": "base64", "data": base64.b64encode(b"GIF89a").decode()},
        {**heatmap_obj(np.zeros((4, 4), np.uint8)), "width": 5},  # not the stated size
        "iVBOR",
    ],
)
def test_decode_heatmap_refuses_what_is_not_a_png_heatmap(obj: object) -> None:
    with pytest.raises(ModelfabError) as info:
        decode_heatmap(obj)  # type: ignore[arg-type]
    assert info.value.code == "invalid_heatmap" and info.value.param == "heatmap"


def test_save_images_writes_a_small_thumbnail_and_an_overlay(tmp_path: Path) -> None:
    image = grey_image((1200, 900))
    thumb, over = save_images(image, np.ones((4, 4), np.float32), tmp_path, "00001-a")
    assert thumb == tmp_path / "00001-a.jpg" and over == tmp_path / "00001-a-heat.jpg"
    with Image.open(thumb) as t, Image.open(over) as o:
        assert max(t.size) == 256 and t.size == (256, 192)
        assert max(o.size) == 768
        assert np.asarray(o)[10, 10, 0] > 150  # hot everywhere: red
    only, none = save_images(Image.new("L", (20, 10)), None, tmp_path, "b")
    assert only.exists() and none is None
    with Image.open(only) as t:
        assert t.size == (20, 10)  # never enlarged


def test_asset_base_is_file_name_safe_and_unique_by_index() -> None:
    assert asset_base(3, "<b>x.png") == "00003-b_x"
    assert asset_base(3, "a/../..png").startswith("00003-")
    assert (
        "/" not in asset_base(1, "../../etc/passwd") and asset_base(1, "???.png") == "00001-image"
    )


def rows(assets: Path) -> list[InspectionRow]:
    """Scored rows (with real images under `assets`) and one error row."""
    assets.mkdir(parents=True, exist_ok=True)
    specs = [("good-1.png", 0.2, False), ("<b>x.png", 3.5, True), ("mid & co.png", 1.1, False),
             ("worst.png", 9.0, True)]  # fmt: skip
    out = []
    for i, (name, score, bad) in enumerate(specs):
        thumb, over = save_images(grey_image(), np.eye(4), assets, asset_base(i, name))
        assert over is not None
        out.append(InspectionRow(
            path=f"parts/{name}", name=name, score=score, threshold=1.5, is_anomaly=bad,
            label="anomaly" if bad else "good", width=100, height=60,
            thumbnail=f"{assets.name}/{thumb.name}", overlay=f"{assets.name}/{over.name}",
        ))  # fmt: skip
    out.append(InspectionRow(path="parts/broken.png", name="broken.png",
                             error="broken.png is not a readable image <script>"))  # fmt: skip
    return out


def test_report_sorts_by_score_escapes_names_and_links_images_that_exist(tmp_path: Path) -> None:
    report = tmp_path / "out" / "report.html"
    report.parent.mkdir()
    write_report(report, rows(report.parent / "report_files"), title="Line 3 <today>",
                 threshold=1.5, model_version="mv_123", assets_dir_name="report_files")  # fmt: skip
    page = report.read_text()
    order = [page.index(n) for n in ("worst.png", "&lt;b&gt;x.png", "mid &amp; co.png",
                                     "good-1.png", "broken.png")]  # fmt: skip
    assert order == sorted(order)
    assert "<b>x.png" not in page and "<script>" not in page and "&lt;script&gt;" in page
    assert "Line 3 &lt;today&gt;" in page and "mv_123" in page
    assert "threshold <b>1.5</b>" in page and "class='threshold'" in page  # the SVG line
    assert re.search(r"<b>5</b>images", page) and re.search(r"<b>2</b>anomalies", page)
    assert re.search(r"<b>2</b>good", page) and re.search(r"<b>1</b>errors", page)
    links = re.findall(r"(?:src|href)='([^']*)'", page)
    assert len(links) == 4 * 3  # thumbnail, overlay, its link
    for link in links:
        assert not link.startswith("/") and "://" not in link and not link.startswith("data:")
        assert (report.parent / unquote(link)).is_file(), link
    assert "http" not in page.replace("http://www.w3.org/2000/svg", "")  # nothing external


def test_report_of_a_classifier_without_threshold_or_overlays(tmp_path: Path) -> None:
    report = tmp_path / "r.html"
    rows = [InspectionRow(path="a.png", name="a.png", score=0.9, label="cat"),
            InspectionRow(path="b.png", name="b.png", score=0.6, label="dog")]  # fmt: skip
    write_report(report, rows, title="t", threshold=None, model_version=None,
                 assets_dir_name="r_files")  # fmt: skip
    page = report.read_text()
    assert "not calibrated" in page and "class='threshold'" not in page
    assert re.search(r"<b>1</b>cat", page) and re.search(r"<b>1</b>dog", page)
    assert "anomalies" not in page
    assert page.index("a.png") < page.index("b.png") and "<img" not in page


def test_report_with_thousands_of_rows_links_rather_than_inlines(tmp_path: Path) -> None:
    report = tmp_path / "big.html"
    many = [InspectionRow(path=f"{i}.png", name=f"{i}.png", score=float(i % 97), is_anomaly=False,
                          thumbnail=f"big_files/{i}.jpg") for i in range(3000)]  # fmt: skip
    write_report(report, many, title="big", threshold=50.0, model_version="mv",
                 assets_dir_name="big_files")  # fmt: skip
    page = report.read_text()
    assert "base64" not in page and page.count("<tr class=") == 3000
    assert re.search(r"<b>0</b>anomalies", page) and re.search(r"<b>3000</b>good", page)
    assert len(page) < 3000 * 700


def test_histogram_counts_every_score_and_draws_the_threshold() -> None:
    svg = histogram_svg([0.1, 0.2, 0.2, 5.0], 1.0)
    counts = [int(n) for n in re.findall(r": (\d+)</title>", svg)]
    assert sum(counts) == 4 and len(counts) == 10
    assert "threshold 1" in svg and "#e57373" in svg and "#81c784" in svg
    assert "No scores" in histogram_svg([], 1.0)
    assert "threshold" not in histogram_svg([2.0, 2.0], None)  # one value: no zero range


def test_csv_has_the_columns_and_the_values(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    data = [
        InspectionRow(path="a/x.png", name="x.png", score=1.9100000000000001, threshold=1.234,
                      is_anomaly=True, label="anomaly", width=640, height=480,
                      overlay="r_files/00000-x-heat.jpg", thumbnail="r_files/00000-x.jpg"),
        InspectionRow(path="a/=cmd.png", name="=cmd.png", score=-0.5, is_anomaly=False),
        InspectionRow(path="a/bad.png", name="bad.png", error="bad.png is not a readable image"),
    ]  # fmt: skip
    write_csv(path, data)
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        got = list(reader)
    assert got[0]["verdict"] == "anomaly" and float(got[0]["score"]) == 1.9100000000000001
    assert got[0]["is_anomaly"] == "true" and got[0]["width"] == "640"
    assert got[0]["overlay"] == "r_files/00000-x-heat.jpg" and got[0]["error"] == ""
    assert got[1]["name"] == "'=cmd.png" and got[1]["score"] == "-0.5"
    assert got[1]["is_anomaly"] == "false" and got[1]["verdict"] == "good"
    assert got[2]["verdict"] == "error" and got[2]["score"] == "" and "readable" in got[2]["error"]

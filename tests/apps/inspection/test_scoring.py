"""`modelfab.apps.inspection.scoring`: finding files, batching, back-off and error
isolation in `score_images` with a fake predict function (fast, exact call records), and
where an inspection's files go. The command over it is tested in tests/cli."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelfab.apps.inspection.scoring import Outputs, find_images, score_images
from modelfab.client import ApiError
from modelfab.errors import InvalidRequest, ModelfabError
from tests.apps.inspection.factories import (
    DARK,
    FakeEndpoint,
    parts,
    pixel,
    write_image,
)


# -- finding files ------------------------------------------------------------------------------
def test_find_images_walks_folders_sorted_and_keeps_named_files(tmp_path: Path) -> None:
    files = parts(tmp_path)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "b" / "deep").mkdir()
    deep = write_image(tmp_path / "b" / "deep" / "08.PNG")
    named = tmp_path / "a" / "notes.txt"
    found = find_images([tmp_path / "b", named, tmp_path, files[4]])
    assert found == [files[4], files[5], files[6], deep, named, *files[:4]]


def test_find_images_names_missing_paths_and_empty_folders(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.txt").write_text("")
    with pytest.raises(InvalidRequest, match="no image files") as info:
        find_images([tmp_path / "empty"])
    assert info.value.param == "PATHS"
    with pytest.raises(InvalidRequest, match=r"nope\.png does not exist"):
        find_images([tmp_path / "nope.png"])


# -- score_images -------------------------------------------------------------------------------
def test_a_corrupt_file_is_retried_alone_and_becomes_an_error_row(tmp_path: Path) -> None:
    files = parts(tmp_path)
    fake, done = FakeEndpoint(), list[int]()
    result = score_images(fake, files, batch_size=3, concurrency=1, on_done=done.append)
    assert [r.path for r in result.rows] == [str(p) for p in files]
    assert [r.verdict for r in result.rows] == ["good", "anomaly", "good", "error", "good",
                                                "anomaly", "good"]  # fmt: skip
    bad = result.rows[3]
    assert bad.error and "04.png is not a readable image" in bad.error and bad.score is None
    assert result.errors == [bad]
    # The batch holding 04.png failed, was sent file by file; the others went once.
    assert fake.calls == [["01.png", "02.png", "03.jpg"], ["04.png", "05.png", "06.bmp"],
                          ["04.png"], ["05.png"], ["06.bmp"], ["07.png"]]  # fmt: skip
    assert sum(done) == 7
    assert result.model_version == "mv_fake" and result.threshold == 0.5
    assert result.rows[1].score == 1.0 and result.rows[0].score == pytest.approx(DARK / 255)
    assert (result.rows[0].width, result.rows[0].height) == (48, 40)


def test_assets_hold_a_thumbnail_and_an_overlay_per_scored_image(tmp_path: Path) -> None:
    files = parts(tmp_path / "in")
    assets = tmp_path / "report_files"
    assets.mkdir()
    result = score_images(FakeEndpoint(), files, batch_size=2, concurrency=2, assets=assets)
    for row in result.rows:
        if row.error:
            assert row.thumbnail is None and row.overlay is None
            continue
        assert row.thumbnail and row.overlay and row.overlay.startswith("report_files/")
        assert (tmp_path / row.thumbnail).is_file() and (tmp_path / row.overlay).is_file()
    spotted = result.rows[1]
    assert spotted.overlay is not None
    r, _, b = pixel(tmp_path / spotted.overlay, 10, 8)  # inside the spot: hot
    assert r > b and r > 150
    assert len(list(assets.iterdir())) == 2 * 6


def test_calls_run_concurrently_up_to_the_limit(tmp_path: Path) -> None:
    files = [write_image(tmp_path / f"{i:02d}.png") for i in range(16)]
    fake = FakeEndpoint(delay_s=0.1)
    result = score_images(fake, files, batch_size=2, concurrency=4)
    assert len(fake.calls) == 8 and all(len(c) == 2 for c in fake.calls)
    assert 2 <= fake.peak <= 4
    assert [r.name for r in result.rows] == [f"{i:02d}.png" for i in range(16)]


def test_other_api_errors_stop_the_run(tmp_path: Path) -> None:
    files = [write_image(tmp_path / f"{i}.png") for i in range(12)]
    fake = FakeEndpoint(fail=ApiError(503, "unavailable", "no ready replica"))
    with pytest.raises(ApiError) as info:
        score_images(fake, files, batch_size=1, concurrency=1)
    assert info.value.status == 503
    assert 2 <= len(fake.calls) <= 3  # the rest were cancelled (one may have started)


def test_rate_limits_are_retried_and_bad_answers_named(tmp_path: Path) -> None:
    files = [write_image(tmp_path / f"{i}.png") for i in range(2)]
    refusals = [ApiError(429, "rate_limited", "slow down")]

    def limited(paths: list[Path]) -> dict[str, Any]:
        if refusals:
            raise refusals.pop()
        return FakeEndpoint()(paths)

    assert [r.verdict for r in score_images(limited, files).rows] == ["good", "good"]

    def short(paths: list[Path]) -> dict[str, Any]:
        return {"object": "list", "data": []}

    with pytest.raises(ModelfabError) as info:
        score_images(short, files)
    assert info.value.code == "bad_answer"


def test_a_classifier_answer_gives_labels_and_thumbnails_without_overlays(tmp_path: Path) -> None:
    files = [write_image(tmp_path / f"{i}.png") for i in range(3)]

    def classify(paths: list[Path]) -> dict[str, Any]:
        data: list[dict[str, Any]] = [
            {"index": i, "name": p.name, "label": "cat" if i % 2 else "dog",
             "score": 0.5 + i / 10, "top_k": []} for i, p in enumerate(paths)
        ]  # fmt: skip
        return {"object": "list", "model_version": "mv_cls", "data": data}

    assets = tmp_path / "r_files"
    assets.mkdir()
    result = score_images(classify, files, batch_size=8, assets=assets)
    assert [r.verdict for r in result.rows] == ["dog", "cat", "dog"]
    assert all(r.is_anomaly is None and r.overlay is None and r.thumbnail for r in result.rows)
    assert result.threshold is None and result.task is None


def test_a_scored_file_without_pictures_is_a_warning_and_keeps_its_score(tmp_path: Path) -> None:
    files = [write_image(tmp_path / "in" / "0.png")]

    def bad_heatmap(paths: list[Path]) -> dict[str, Any]:
        answer = FakeEndpoint()(paths)
        answer["data"][0]["heatmap"] = {"format": "gif"}
        return answer

    assets = tmp_path / "r_files"
    assets.mkdir()
    warned: list[tuple[Path, Exception]] = []
    result = score_images(bad_heatmap, files, assets=assets,
                          on_warning=lambda p, e: warned.append((p, e)))  # fmt: skip
    assert result.rows[0].score is not None and result.rows[0].error is None
    assert [p for p, _ in warned] == files and isinstance(warned[0][1], ModelfabError)
    assert result.rows[0].overlay is None


def test_outputs_put_the_images_and_the_csv_beside_the_report(tmp_path: Path) -> None:
    report = tmp_path / "out" / "line 3.html"
    outputs = Outputs.beside(report, None)
    assert outputs.assets == tmp_path / "out" / "line 3_files"
    assert outputs.csv == tmp_path / "out" / "line 3.csv"
    assert Outputs.beside(None, tmp_path / "r.csv") == Outputs(csv=tmp_path / "r.csv")
    outputs.prepare()
    assert outputs.assets is not None and outputs.assets.is_dir()

"""scan_dataset: layouts, stats, content address, and every way a dataset is refused."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import ImageFile

from modelfab.data import DatasetKind, scan_dataset
from modelfab.errors import DatasetInvalid
from modelfab.tasks import ANOMALY_DETECTION, IMAGE_CLASSIFICATION, get_task

from .conftest import make_classification, truncate, write_image, write_noise

CLS = get_task(IMAGE_CLASSIFICATION)
AD = get_task(ANOMALY_DETECTION)


def _invalid(root: Path, task: DatasetKind) -> DatasetInvalid:
    with pytest.raises(DatasetInvalid) as info:
        scan_dataset(root, task)
    return info.value


# --------------------------------------------------------------------------- valid


def test_classification_scan_files_stats_and_address(cls_root: Path) -> None:
    write_image(cls_root / "dog" / "big.jpg", size=(20, 10), mode="L", seed=7)
    scan = scan_dataset(cls_root, CLS)
    rels = [f.relpath for f in scan.files]
    assert rels == sorted(rels)
    assert rels[0] == "cat/000.png" and "dog/big.jpg" in rels and len(rels) == 6
    first = scan.files[0]
    data = (cls_root / "cat" / "000.png").read_bytes()
    assert first.sha256 == hashlib.sha256(data).hexdigest() and first.size == len(data)
    lines = "".join(f"{f.relpath}\0{f.sha256}\n" for f in scan.files)
    assert scan.sha256 == hashlib.sha256(lines.encode()).hexdigest()
    assert scan.task == CLS.name
    assert scan.stats == {
        "task": CLS.name,
        "num_images": 6,
        "classes": {"cat": 3, "dog": 3},
        "image_sizes": {"min": [8, 6], "max": [20, 10], "most_common": [[8, 6], 5]},
        "modes": {"L": 1, "RGB": 5},
    }


def test_anomaly_scan_stats(ad_root: Path) -> None:
    scan = scan_dataset(ad_root, AD)
    assert len(scan.files) == 9  # 7 images + 2 masks
    assert "ground_truth/scratch/000_mask.png" in [f.relpath for f in scan.files]
    assert scan.stats == {
        "task": AD.name,
        "num_images": 7,
        "splits": {"test/dent": 1, "test/good": 1, "test/scratch": 2, "train/good": 3},
        "defect_types": ["dent", "scratch"],
        "num_masks": 2,
        "image_sizes": {"min": [8, 6], "max": [10, 10], "most_common": [[8, 6], 5]},
        "modes": {"L": 1, "RGB": 6},
    }


def test_anomaly_train_only_is_valid(tmp_path: Path) -> None:
    write_image(tmp_path / "ad" / "train" / "good" / "a.png")
    scan = scan_dataset(tmp_path / "ad", AD)
    assert scan.stats["splits"] == {"train/good": 1}
    assert scan.stats["defect_types"] == [] and scan.stats["num_masks"] == 0


# --------------------------------------------------------------------------- content address


def test_same_content_elsewhere_has_same_sha(cls_root: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(cls_root, tmp_path / "elsewhere" / "copy"))
    assert scan_dataset(copy, CLS).sha256 == scan_dataset(cls_root, CLS).sha256


def test_one_changed_byte_changes_sha(cls_root: Path) -> None:
    before = scan_dataset(cls_root, CLS).sha256
    target = cls_root / "dog" / "001.png"
    write_image(target, seed=999)  # same size and mode, other pixels
    assert scan_dataset(cls_root, CLS).sha256 != before
    with target.open("ab") as fh:  # PNG readers ignore trailing bytes; the hash must not
        fh.write(b"\0")
    assert scan_dataset(cls_root, CLS).sha256 != before


def test_renaming_a_file_changes_sha(cls_root: Path) -> None:
    before = scan_dataset(cls_root, CLS).sha256
    (cls_root / "dog" / "001.png").rename(cls_root / "dog" / "009.png")
    assert scan_dataset(cls_root, CLS).sha256 != before


def test_ignored_entries_are_neither_listed_nor_hashed(cls_root: Path) -> None:
    before = scan_dataset(cls_root, CLS)
    (cls_root / ".DS_Store").write_bytes(b"junk")
    (cls_root / "cat" / "._000.png").write_bytes(b"junk")
    (cls_root / "cat" / "Thumbs.db").write_bytes(b"junk")
    (cls_root / ".cache" / "deep").mkdir(parents=True)
    (cls_root / ".cache" / "deep" / "x.bin").write_bytes(b"junk")
    (cls_root / "__MACOSX" / "cat").mkdir(parents=True)
    (cls_root / "__MACOSX" / "cat" / "000.png").write_bytes(b"junk")
    for doc in ("README.md", "LICENSE", "notes.txt"):
        (cls_root / doc).write_text("about this dataset")
    after = scan_dataset(cls_root, CLS)
    assert after.sha256 == before.sha256
    assert after.files == before.files


def test_anomaly_root_docs_are_ignored(ad_root: Path) -> None:
    before = scan_dataset(ad_root, AD).sha256
    (ad_root / "license.txt").write_text("CC BY-NC-SA")
    (ad_root / "README").write_text("bottle")
    assert scan_dataset(ad_root, AD).sha256 == before


# --------------------------------------------------------------------------- invalid: any task


def test_empty_root(tmp_path: Path) -> None:
    (tmp_path / "ds" / ".git").mkdir(parents=True)
    (tmp_path / "ds" / "README.md").write_text("nothing here")
    err = _invalid(tmp_path / "ds", CLS)
    assert err.param == "." and "empty" in err.message


def test_missing_root(tmp_path: Path) -> None:
    err = _invalid(tmp_path / "nope", AD)
    assert err.param == "." and "not a folder" in err.message


def test_symlink_rejected(cls_root: Path) -> None:
    (cls_root / "cat" / "link.png").symlink_to(cls_root / "dog" / "000.png")
    err = _invalid(cls_root, CLS)
    assert err.param == "cat/link.png" and "symbolic link" in err.message


def test_symlinked_folder_rejected(cls_root: Path) -> None:
    (cls_root / "bird").symlink_to(cls_root / "dog", target_is_directory=True)
    err = _invalid(cls_root, CLS)
    assert err.param == "bird" and "symbolic link" in err.message


def test_first_symlink_in_sorted_order_is_reported(cls_root: Path) -> None:
    for rel in ("dog/z.png", "cat/b.png", "dog/a.png"):
        (cls_root / rel).symlink_to(cls_root / "dog" / "000.png")
    assert _invalid(cls_root, CLS).param == "cat/b.png"


def test_text_file_in_class_folder(cls_root: Path) -> None:
    (cls_root / "cat" / "notes.txt").write_text("a cat")
    err = _invalid(cls_root, CLS)
    assert err.param == "cat/notes.txt"
    assert "remove it or move it out of the dataset" in err.message


def test_text_disguised_as_png(cls_root: Path) -> None:
    (cls_root / "dog" / "fake.png").write_text("not really a png")
    err = _invalid(cls_root, CLS)
    assert err.param == "dog/fake.png"
    assert "not a readable image (cannot identify image file)" in err.message
    assert str(cls_root) not in err.message


@pytest.mark.parametrize("name", ["cut.png", "cut.jpg"])
def test_truncated_image(cls_root: Path, name: str) -> None:
    truncate(write_noise(cls_root / "cat" / name))
    err = _invalid(cls_root, CLS)
    assert err.param == f"cat/{name}" and "truncated" in err.message


def test_truncated_detected_even_if_pillow_flag_set(
    cls_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    truncate(write_noise(cls_root / "cat" / "cut.png"))
    err = _invalid(cls_root, CLS)
    assert err.param == "cat/cut.png"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored afterwards


def test_first_bad_file_in_sorted_order_is_reported(tmp_path: Path) -> None:
    root = make_classification(tmp_path / "ds", {"a": 40, "b": 40})
    for rel in ("b/030.png", "a/035.png", "b/001.png"):
        (root / rel).write_bytes(b"garbage")
    assert _invalid(root, CLS).param == "a/035.png"


# ---------------------------------------------------------------- invalid: classification


def _file_in_root(root: Path) -> None:
    write_image(root / "stray.png")


def _nested_folder(root: Path) -> None:
    write_image(root / "cat" / "sub" / "x.png")


def _empty_class(root: Path) -> None:
    (root / "bird").mkdir()
    (root / "bird" / ".keep").write_text("")


def _one_class(root: Path) -> None:
    shutil.rmtree(root / "dog")


CLS_CASES: list[tuple[Callable[[Path], None], str, str]] = [
    (_file_in_root, "stray.png", "images must be inside a folder per class"),
    (_nested_folder, "cat/sub", "inside a class folder"),
    (_empty_class, "bird", "class 'bird' has no images"),
    (
        _one_class,
        "cat",
        "found 1 class ('cat'); image classification needs at least two folders",
    ),
]


@pytest.mark.parametrize(("mutate", "param", "phrase"), CLS_CASES)
def test_classification_layout_errors(
    cls_root: Path, mutate: Callable[[Path], None], param: str, phrase: str
) -> None:
    mutate(cls_root)
    err = _invalid(cls_root, CLS)
    assert err.param == param
    assert phrase in err.message


def test_classification_dataset_is_not_an_anomaly_dataset(cls_root: Path) -> None:
    err = _invalid(cls_root, AD)
    assert err.param == "cat" and "unexpected entry" in err.message


# --------------------------------------------------------------------------- invalid: anomaly


def _no_train_good(root: Path) -> None:
    shutil.rmtree(root / "train" / "good")


def _empty_train_good(root: Path) -> None:
    for p in (root / "train" / "good").iterdir():
        p.unlink()


def _defects_in_train(root: Path) -> None:
    write_image(root / "train" / "bad" / "000.png")


def _image_directly_in_train(root: Path) -> None:
    write_image(root / "train" / "000.png")


def _extra_top_folder(root: Path) -> None:
    write_image(root / "validation" / "good" / "000.png")


def _extra_top_file(root: Path) -> None:
    (root / "labels.csv").write_text("a,b")


def _image_directly_in_test(root: Path) -> None:
    write_image(root / "test" / "000.png")


def _nested_in_test(root: Path) -> None:
    write_image(root / "test" / "scratch" / "more" / "000.png")


def _empty_test_folder(root: Path) -> None:
    (root / "test" / "crack").mkdir()


def _non_image_in_test(root: Path) -> None:
    (root / "test" / "scratch" / "info.json").write_text("{}")


def _mask_without_image(root: Path) -> None:
    write_image(root / "ground_truth" / "scratch" / "009_mask.png", size=(10, 10), mode="L")


def _mask_in_wrong_defect(root: Path) -> None:
    write_image(root / "ground_truth" / "dent" / "001_mask.png", size=(8, 6), mode="L")


def _mask_without_suffix(root: Path) -> None:
    write_image(root / "ground_truth" / "dent" / "000.png", size=(8, 6), mode="L")


def _mask_size_mismatch(root: Path) -> None:
    write_image(root / "ground_truth" / "scratch" / "001_mask.png", size=(10, 9), mode="L")


def _unreadable_mask(root: Path) -> None:
    (root / "ground_truth" / "scratch" / "001_mask.png").write_text("mask")


AD_CASES: list[tuple[Callable[[Path], None], str, str]] = [
    (_no_train_good, "train/good", "expects train/good"),
    (_empty_train_good, "train/good", "holds no images"),
    (_defects_in_train, "train/bad", "trains on good parts only"),
    (_image_directly_in_train, "train/000.png", "train/good/"),
    (_extra_top_folder, "validation", "unexpected entry 'validation'"),
    (_extra_top_file, "labels.csv", "unexpected entry 'labels.csv'"),
    (_image_directly_in_test, "test/000.png", "test/<defect>/"),
    (_nested_in_test, "test/scratch/more", "nested folder"),
    (_empty_test_folder, "test/crack", "has no images"),
    (_non_image_in_test, "test/scratch/info.json", "remove it or move it out"),
    (_mask_without_image, "ground_truth/scratch/009_mask.png", "no matching image"),
    (_mask_in_wrong_defect, "ground_truth/dent/001_mask.png", "no matching image"),
    (_mask_without_suffix, "ground_truth/dent/000.png", "_mask.png"),
    (_mask_size_mismatch, "ground_truth/scratch/001_mask.png", "must have its image's size"),
    (_unreadable_mask, "ground_truth/scratch/001_mask.png", "not a readable image"),
]


@pytest.mark.parametrize(("mutate", "param", "phrase"), AD_CASES)
def test_anomaly_layout_errors(
    ad_root: Path, mutate: Callable[[Path], None], param: str, phrase: str
) -> None:
    mutate(ad_root)
    err = _invalid(ad_root, AD)
    assert err.param == param
    assert phrase in err.message


def test_mask_size_mismatch_names_both_sizes(ad_root: Path) -> None:
    _mask_size_mismatch(ad_root)
    err = _invalid(ad_root, AD)
    assert "10x9" in err.message and "10x10" in err.message
    assert "test/scratch/001.png" in err.message

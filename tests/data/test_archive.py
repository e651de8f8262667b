"""extract_archive: round trips, root detection, and refusal of unsafe or oversized archives."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from modelfab.data import archive as archive_module
from modelfab.data import extract_archive, scan_dataset
from modelfab.errors import DatasetInvalid, InvalidRequest, PayloadTooLarge
from modelfab.tasks import ANOMALY_DETECTION, IMAGE_CLASSIFICATION, get_task

from .conftest import make_anomaly

CLS = get_task(IMAGE_CLASSIFICATION)


def _tar(path: Path, src: Path, arcname: str, mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        tf.add(src, arcname=arcname)
    return path


def _zip_folder(path: Path, src: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(p for p in src.rglob("*") if p.is_file()):
            zf.write(file, prefix + file.relative_to(src).as_posix())
    return path


def _tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tf.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def _zip_with(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members:
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


def test_tar_gz_round_trip_same_sha(cls_root: Path, tmp_path: Path) -> None:
    archive = _tar(tmp_path / "ds.tar.gz", cls_root, "mydata")
    root = extract_archive(archive, tmp_path / "out")
    assert root == tmp_path / "out" / "mydata"
    assert scan_dataset(root, CLS).sha256 == scan_dataset(cls_root, CLS).sha256


def test_plain_tar_round_trip(ad_root: Path, tmp_path: Path) -> None:
    archive = _tar(tmp_path / "ds.tar", ad_root, "bottle", mode="w")
    root = extract_archive(archive, tmp_path / "out")
    ad = get_task(ANOMALY_DETECTION)
    assert scan_dataset(root, ad).sha256 == scan_dataset(ad_root, ad).sha256


def test_zip_round_trip_flat_returns_dest(cls_root: Path, tmp_path: Path) -> None:
    archive = _zip_folder(tmp_path / "ds.zip", cls_root)
    dest = tmp_path / "out"
    root = extract_archive(archive, dest)
    assert root == dest  # two top-level class folders: dest is the root
    assert scan_dataset(root, CLS).sha256 == scan_dataset(cls_root, CLS).sha256


def test_zip_single_top_dir_is_the_root(cls_root: Path, tmp_path: Path) -> None:
    archive = _zip_folder(tmp_path / "ds.zip", cls_root, prefix="pets/")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("__MACOSX/pets/._cat", b"resource fork")
        zf.writestr(".DS_Store", b"junk")
    root = extract_archive(archive, tmp_path / "out")
    assert root == tmp_path / "out" / "pets"
    assert scan_dataset(root, CLS).sha256 == scan_dataset(cls_root, CLS).sha256


def test_lone_train_folder_is_not_descended(tmp_path: Path) -> None:
    src = make_anomaly(tmp_path / "ad")
    archive = _tar(tmp_path / "train.tgz", src / "train", "train")
    dest = tmp_path / "out"
    assert extract_archive(archive, dest) == dest


def test_tar_parent_escape_rejected_and_nothing_written(tmp_path: Path) -> None:
    archive = _tar_with(
        tmp_path / "evil.tar",
        [(tarfile.TarInfo("ok/a.png"), b"fine"), (tarfile.TarInfo("../evil"), b"pwned")],
    )
    dest = tmp_path / "box" / "dest"
    with pytest.raises(InvalidRequest) as info:
        extract_archive(archive, dest)
    assert info.value.param == "file" and "outside the archive" in info.value.message
    assert not (tmp_path / "box" / "evil").exists()
    assert list(dest.iterdir()) == []  # the good member extracted first is gone again


def test_tar_symlink_rejected(tmp_path: Path) -> None:
    link = tarfile.TarInfo("cat/link.png")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archive = _tar_with(tmp_path / "link.tar", [(link, b"")])
    with pytest.raises(InvalidRequest) as info:
        extract_archive(archive, tmp_path / "dest")
    assert "symbolic link" in info.value.message
    assert list((tmp_path / "dest").iterdir()) == []


@pytest.mark.parametrize("evil", ["../evil", "a/../../evil", "ABS"])
def test_zip_escape_rejected_and_nothing_written(tmp_path: Path, evil: str) -> None:
    target = tmp_path / "box" / "evil"
    name = str(target) if evil == "ABS" else evil
    archive = _zip_with(tmp_path / "evil.zip", [("ok/a.png", b"fine"), (name, b"pwned")])
    dest = tmp_path / "box" / "dest"
    with pytest.raises(InvalidRequest) as info:
        extract_archive(archive, dest)
    assert info.value.param == "file" and "outside the archive" in info.value.message
    assert not target.exists()
    assert list(dest.iterdir()) == []


def test_zip_symlink_rejected(tmp_path: Path) -> None:
    info = zipfile.ZipInfo("cat/link.png")
    info.external_attr = (0o120777) << 16
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(InvalidRequest) as err:
        extract_archive(archive, tmp_path / "dest")
    assert "symbolic link" in err.value.message


@pytest.mark.parametrize("kind", ["garbage", "truncated-tgz", "truncated-zip"])
def test_corrupt_archive_is_invalid_request(cls_root: Path, tmp_path: Path, kind: str) -> None:
    if kind == "garbage":
        archive = tmp_path / "x.zip"
        archive.write_bytes(b"this is not an archive" * 100)
    else:
        if kind == "truncated-tgz":
            archive = _tar(tmp_path / "x.bin", cls_root, "ds")
        else:
            archive = _zip_folder(tmp_path / "x.bin", cls_root)
        data = archive.read_bytes()
        # A zip loses its central directory when cut; a tgz its later members.
        archive.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InvalidRequest) as info:
        extract_archive(archive, tmp_path / "dest")
    assert info.value.param == "file"
    assert str(tmp_path) not in info.value.message
    assert list((tmp_path / "dest").iterdir()) == []


def test_too_many_bytes(cls_root: Path, tmp_path: Path) -> None:
    archive = _tar(tmp_path / "ds.tgz", cls_root, "ds")
    total = sum(p.stat().st_size for p in cls_root.rglob("*") if p.is_file())
    assert extract_archive(archive, tmp_path / "ok", max_bytes=total).name == "ds"
    with pytest.raises(PayloadTooLarge) as info:
        extract_archive(archive, tmp_path / "dest", max_bytes=total - 1)
    assert info.value.param == "file"
    assert list((tmp_path / "dest").iterdir()) == []


def test_too_many_files_in_zip(cls_root: Path, tmp_path: Path) -> None:
    archive = _zip_folder(tmp_path / "ds.zip", cls_root)
    with pytest.raises(PayloadTooLarge):
        extract_archive(archive, tmp_path / "dest", max_files=4)
    assert list((tmp_path / "dest").iterdir()) == []


def test_zip_declared_size_counts_against_limit(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/zeros.png", b"\0" * 2**20)
    assert archive.stat().st_size < 10_000
    with pytest.raises(PayloadTooLarge):
        extract_archive(archive, tmp_path / "dest", max_bytes=2**19)


def _zeros_archive(path: Path, kind: str, size: int, members: int = 1) -> Path:
    """An archive of `members` files of `size` zero bytes each: tiny packed, large unpacked."""
    if kind == "zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for i in range(members):
                with zf.open(f"ds/cat/{i}.png", "w") as out:
                    for _ in range(size // 2**20):
                        out.write(b"\0" * 2**20)
        return path
    with tarfile.open(path, "w:gz") as tf:
        for i in range(members):
            info = tarfile.TarInfo(f"ds/cat/{i}.png")
            info.size = size
            tf.addfile(info, io.BytesIO(b"\0" * size))
    return path


@pytest.mark.parametrize("kind", ["tgz", "zip"])
def test_bomb_is_refused_at_the_cap_naming_archive_and_limit(tmp_path: Path, kind: str) -> None:
    archive = _zeros_archive(tmp_path / f"bomb.{kind}", kind, 32 * 2**20)
    assert archive.stat().st_size < 2**20
    with pytest.raises(PayloadTooLarge) as info:
        extract_archive(archive, tmp_path / "dest", max_bytes=2**20, label="pets.tar.gz")
    assert info.value.param == "file"
    assert "'pets.tar.gz'" in info.value.message and str(2**20) in info.value.message
    assert list((tmp_path / "dest").iterdir()) == []


def _written_when_cleared(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Bytes in the destination each time a refusal clears it (filled in as it happens)."""
    seen: list[int] = []
    clear = archive_module._clear

    def measure(dest: Path) -> None:
        seen.append(sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()))
        clear(dest)

    monkeypatch.setattr(archive_module, "_clear", measure)
    return seen


@pytest.mark.parametrize("kind", ["tgz", "zip"])
def test_compressible_bomb_stops_at_the_ratio_cap(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = _written_when_cleared(monkeypatch)
    archive = _zeros_archive(tmp_path / f"bomb.{kind}", kind, 4 * 2**20, members=16)
    cap = 100 * archive.stat().st_size
    assert 2**20 < cap < 16 * 2**20
    with pytest.raises(PayloadTooLarge) as info:
        extract_archive(archive, tmp_path / "dest", ratio_floor_bytes=2**20, label="pets.zip")
    assert info.value.param == "file"
    message = info.value.message
    assert "'pets.zip'" in message and str(cap) in message and "100 times" in message
    assert "compression-ratio cap" in message and "MODELFAB_MAX_EXTRACT_RATIO" in message
    if kind == "zip":  # refused from the central directory, before anything was written
        assert written == [0]
    else:  # refused member by member as it unpacks: under the cap, not all 64 MiB
        assert 0 < written[0] <= cap
    assert list((tmp_path / "dest").iterdir()) == []


def test_ratio_cap_never_refuses_a_plain_tar(ad_root: Path, tmp_path: Path) -> None:
    """Unpacked bytes of a plain tar are less than the archive: no ratio above 1 trips."""
    archive = _tar(tmp_path / "ad.tar", ad_root, "bottle", mode="w")
    root = extract_archive(archive, tmp_path / "dest", max_ratio=1, ratio_floor_bytes=0)
    ad = get_task(ANOMALY_DETECTION)
    assert scan_dataset(root, ad).sha256 == scan_dataset(ad_root, ad).sha256


def test_ratio_floor_lets_small_compressible_archives_through(tmp_path: Path) -> None:
    archive = _zeros_archive(tmp_path / "zeros.tgz", "tgz", 2**20, members=4)
    assert 100 * archive.stat().st_size < 4 * 2**20
    extract_archive(archive, tmp_path / "dest", ratio_floor_bytes=4 * 2**20)


@pytest.mark.parametrize("kind", ["tgz", "zip"])
def test_member_count_is_capped(tmp_path: Path, kind: str) -> None:
    archive = _zeros_archive(tmp_path / f"many.{kind}", kind, 0, members=20)
    with pytest.raises(PayloadTooLarge, match="more than 10 entries"):
        extract_archive(archive, tmp_path / "dest", max_files=10)
    assert list((tmp_path / "dest").iterdir()) == []


@pytest.mark.parametrize("kind", ["tar", "zip"])
@pytest.mark.parametrize(
    "name",
    ["ds/cat/" + "a" * 256 + ".png", "ds/" + "/".join(["b" * 200] * 6) + "/x.png"],
    ids=["long-name", "long-path"],
)
def test_overlong_member_names_are_refused_before_writing(
    tmp_path: Path, kind: str, name: str
) -> None:
    ok = ("ds/dog/1.png", b"png")
    if kind == "tar":
        members = [(tarfile.TarInfo(n), d) for n, d in (ok, (name, b"png"))]
        archive = _tar_with(tmp_path / "long.tar", members)
    else:
        archive = _zip_with(tmp_path / "long.zip", [ok, (name, b"png")])
    with pytest.raises(DatasetInvalid) as info:
        extract_archive(archive, tmp_path / "dest")
    assert info.value.param == "file"
    assert name[:40] in info.value.message
    assert list((tmp_path / "dest").iterdir()) == []


def test_non_empty_dest_is_a_caller_bug(cls_root: Path, tmp_path: Path) -> None:
    archive = _tar(tmp_path / "ds.tgz", cls_root, "ds")
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "x").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        extract_archive(archive, tmp_path / "dest")

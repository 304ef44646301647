import logging
import os
import struct
import uuid
import zlib

import numpy as np
import pytest
from PIL import Image

import updetr_d2  # noqa: F401  (compat fixes before detectron2 imports)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils

from updetr_d2.data.datasets import unlabeled
from updetr_d2.data.datasets.unlabeled import (
    ScanResult,
    register_unlabeled_folder,
    scan_image_folder,
)


def _noise(mode, size, seed=0):
    rng = np.random.default_rng(seed)
    w, h = size
    channels = {"RGB": 3, "CMYK": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
    if channels == 1:
        arr = arr[:, :, 0]
    return Image.fromarray(arr, mode=mode)


@pytest.fixture
def image_folder(tmp_path):
    """A folder with nested subfolders and every kind of file the scan must handle.
    Returns (root, dict of relative path -> (height, width) of the readable ones)."""
    root = tmp_path / "unlabeled"
    (root / "a" / "b").mkdir(parents=True)
    (root / "c").mkdir()
    (root / ".hidden").mkdir()

    _noise("RGB", (40, 30), seed=1).save(root / "a" / "rgb1.jpg", quality=90)
    _noise("RGB", (24, 56), seed=2).save(root / "a" / "b" / "rgb2.JPEG", quality=90)
    (root / "notes.txt").write_text("not an image\n")
    _noise("L", (33, 17), seed=3).save(root / "c" / "gray.png")
    _noise("CMYK", (25, 35), seed=4).save(root / "c" / "cmyk.jpg")
    assert Image.open(root / "c" / "cmyk.jpg").mode == "CMYK"
    (root / "a" / "fake.jpg").write_text("this is text, not a JPEG\n")
    _noise("RGB", (20, 20), seed=5).save(root / ".hidden" / "hidden.jpg")

    # a valid JPEG cut in half
    full = root / "a" / "b" / "truncated.jpg"
    _noise("RGB", (64, 48), seed=6).save(full, quality=95)
    data = full.read_bytes()
    assert data.endswith(b"\xff\xd9")
    full.write_bytes(data[: len(data) // 2])

    readable = {
        "a/b/rgb2.JPEG": (56, 24),
        "a/rgb1.jpg": (30, 40),
        "c/cmyk.jpg": (35, 25),
        "c/gray.png": (17, 33),
    }
    return root, readable


def _capture(caplog, level=logging.INFO):
    """Attach caplog's handler to the module logger directly (and stop propagation
    meanwhile, so each record is captured once), so that records are captured
    even if other code (e.g. detectron2's setup_logger) changed parent loggers."""
    log = logging.getLogger(unlabeled.__name__)
    old_level, old_propagate = log.level, log.propagate
    log.addHandler(caplog.handler)
    log.setLevel(level)
    log.propagate = False

    def restore():
        log.removeHandler(caplog.handler)
        log.setLevel(old_level)
        log.propagate = old_propagate

    return restore


@pytest.fixture
def dataset_name():
    name = f"test_unlabeled_{uuid.uuid4().hex[:8]}"
    yield name
    if name in DatasetCatalog:
        DatasetCatalog.remove(name)
    if name in MetadataCatalog:
        MetadataCatalog.remove(name)


def test_scan_counts_names_and_sizes(image_folder):
    root, readable = image_folder
    result = scan_image_folder(str(root))
    assert isinstance(result, ScanResult)

    assert [r["image_id"] for r in result.records] == sorted(readable)
    for r in result.records:
        assert os.path.isabs(r["file_name"])
        assert r["file_name"] == os.path.join(str(root), *r["image_id"].split("/"))
        assert (r["height"], r["width"]) == readable[r["image_id"]], r["image_id"]
        assert set(r) == {"file_name", "image_id", "height", "width"}

    assert result.non_images == [str(root / "notes.txt")]

    unreadable = dict(result.unreadable)
    assert sorted(unreadable) == sorted(
        [str(root / "a" / "b" / "truncated.jpg"), str(root / "a" / "fake.jpg")]
    )
    assert "truncated" in unreadable[str(root / "a" / "b" / "truncated.jpg")]
    assert "identify" in unreadable[str(root / "a" / "fake.jpg")]
    assert result.summary() == "4 images, 1 non-image files skipped, 2 unreadable"

    # nothing from the hidden folder; same result in serial mode
    assert not any(".hidden" in r["file_name"] for r in result.records)
    assert scan_image_folder(root, num_workers=1) == result


def test_readable_records_match_read_image(image_folder):
    root, _ = image_folder
    for r in scan_image_folder(root).records:
        img = detection_utils.read_image(r["file_name"], format="BGR")
        assert img.shape == (r["height"], r["width"], 3), r["image_id"]
        assert img.dtype == np.uint8
    # the CMYK JPEG in particular comes back as a 3-channel BGR array
    cmyk = detection_utils.read_image(str(root / "c" / "cmyk.jpg"), format="BGR")
    assert cmyk.shape == (35, 25, 3)


def test_registered_dataset(image_folder, dataset_name, caplog):
    root, readable = image_folder
    register_unlabeled_folder(dataset_name, str(root))
    meta = MetadataCatalog.get(dataset_name)
    assert meta.image_root == str(root)
    assert meta.thing_classes == []
    assert getattr(meta, "evaluator_type", None) is None

    restore = _capture(caplog)
    try:
        records = DatasetCatalog.get(dataset_name)
    finally:
        restore()

    assert sorted(r["image_id"] for r in records) == sorted(readable)
    assert records == scan_image_folder(root).records

    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("4 images, 1 non-image files skipped, 2 unreadable" in m for m in infos), infos
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    for bad in ("truncated.jpg", "fake.jpg"):
        assert sum(bad in m for m in warnings) == 1, warnings


def test_registration_is_lazy_and_missing_folder_raises(tmp_path, dataset_name):
    missing = tmp_path / "does_not_exist"
    register_unlabeled_folder(dataset_name, str(missing))  # no error yet
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        DatasetCatalog.get(dataset_name)
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        scan_image_folder(missing)


def test_folder_without_readable_image_raises(tmp_path, dataset_name, caplog):
    folder = tmp_path / "no_images_here"
    (folder / "sub").mkdir(parents=True)
    (folder / "readme.md").write_text("hi")
    (folder / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    register_unlabeled_folder(dataset_name, str(folder))
    restore = _capture(caplog)
    try:
        with pytest.raises(ValueError, match="no_images_here"):
            DatasetCatalog.get(dataset_name)
    finally:
        restore()
    assert any(
        r.levelno == logging.WARNING and "broken.png" in r.getMessage() for r in caplog.records
    )


def test_exif_orientation_padding_truncated_png_and_min_size(tmp_path):
    """Sizes follow read_image's EXIF handling; JPEG padding after FFD9 is fine;
    a PNG without IEND is truncated; min_size rejects tiny images."""
    folder = tmp_path / "edge"
    folder.mkdir()
    exif = Image.Exif()
    exif[274] = 6  # rotate 90: height and width swap
    _noise("RGB", (40, 20), seed=7).save(folder / "rotated.jpg", exif=exif.tobytes())
    exif[274] = 3  # rotate 180: no swap
    _noise("RGB", (40, 20), seed=8).save(folder / "upside_down.jpg", exif=exif.tobytes())

    _noise("RGB", (30, 10), seed=9).save(folder / "padded.jpg")
    with open(folder / "padded.jpg", "ab") as f:
        f.write(b"\x00" * 5000 + b"\n")

    # data after a complete JPEG (as in "motion photos"): decodes, so readable
    _noise("RGB", (16, 12), seed=12).save(folder / "trailer.jpg")
    with open(folder / "trailer.jpg", "ab") as f:
        f.write(b"ftypmp42 appended video" * 50)

    # PNG whose eXIf chunk (orientation 8) comes after IDAT: PIL only sees it
    # on decode, and read_image does decode
    _noise("RGB", (36, 18), seed=13).save(folder / "late_exif.png")
    png = (folder / "late_exif.png").read_bytes()
    exif[274] = 8
    payload = exif.tobytes()[6:]  # drop the "Exif\0\0" prefix of the JPEG form
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload
    chunk += struct.pack(">I", zlib.crc32(b"eXIf" + payload))
    (folder / "late_exif.png").write_bytes(png[:-12] + chunk + png[-12:])

    _noise("RGB", (32, 32), seed=10).save(folder / "cut.png")
    data = (folder / "cut.png").read_bytes()
    (folder / "cut.png").write_bytes(data[:-12])  # drop the IEND chunk only

    _noise("RGB", (3, 50), seed=11).save(folder / "thin.bmp")
    (folder / "empty.webp").write_bytes(b"")

    result = scan_image_folder(folder, min_size=4)
    sizes = {r["image_id"]: (r["height"], r["width"]) for r in result.records}
    assert sizes == {
        "late_exif.png": (36, 18),
        "padded.jpg": (10, 30),
        "rotated.jpg": (40, 20),
        "trailer.jpg": (12, 16),
        "upside_down.jpg": (20, 40),
    }
    for r in result.records:
        shape = detection_utils.read_image(r["file_name"], format="BGR").shape
        assert shape == (r["height"], r["width"], 3)

    reasons = {os.path.basename(p): reason for p, reason in result.unreadable}
    assert sorted(reasons) == ["cut.png", "empty.webp", "thin.bmp"]
    assert "IEND" in reasons["cut.png"]
    assert "min_size=4" in reasons["thin.bmp"]
    assert "empty" in reasons["empty.webp"]

    # with the default min_size the thin image is fine
    default = scan_image_folder(folder)
    assert "thin.bmp" in {r["image_id"] for r in default.records}

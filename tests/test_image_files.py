"""updetr_d2.data.image_files: the one image listing (tools and unlabeled folders) and the
tolerant image read of the picture tools."""
import os

import numpy as np
import pytest
from PIL import Image

import updetr_d2  # noqa: F401  (compat fixes before detectron2 imports)
from updetr_d2.data import IMAGE_EXTENSIONS, list_image_files
from updetr_d2.data.image_files import describe_skipped, is_image_file, try_read_image, walk_files


@pytest.fixture
def tree(tmp_path):
    """a/one.png, a/b/two.JPG, a/b/three.WebP, a/b/c/four.tif, plus files the listing leaves
    out: other extensions, hidden files and a hidden folder."""
    root = tmp_path / "a"
    (root / "b" / "c").mkdir(parents=True)
    (root / ".cache").mkdir()
    for name in ("one.png", "b/two.JPG", "b/three.WebP", "b/c/four.tif", "notes.txt", "b/anim.gif",
                 ".hidden.png", ".cache/x.jpg"):
        (root / name).write_bytes(b"")
    return root


def rel(paths, start):
    return [os.path.relpath(p, start).replace(os.sep, "/") for p in paths]


def test_one_extension_list():
    assert {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"} == set(IMAGE_EXTENSIONS)
    assert is_image_file("x/Y.JPEG") and is_image_file("z.tiff") and not is_image_file("jpg")
    assert not is_image_file("notes.txt")


def test_folder_is_searched_recursively_in_sorted_order(tree):
    # sorted by relative path, folder name by folder name: "b/..." before "one.png"
    expected = ["b/c/four.tif", "b/three.WebP", "b/two.JPG", "one.png"]
    assert rel(list_image_files(str(tree)), tree) == expected
    assert rel(list_image_files(tree), tree) == expected  # a PathLike too
    assert all(p.startswith(str(tree)) for p in list_image_files(str(tree)))  # joined to the folder as given


def test_not_recursive_lists_the_top_folder_only(tree):
    assert rel(list_image_files(str(tree), recursive=False), tree) == ["one.png"]
    assert rel(walk_files(str(tree), recursive=False), tree) == ["notes.txt", "one.png"]


def test_files_and_folders_keep_their_order_without_duplicates(tree):
    notes = str(tree / "notes.txt")  # named directly: kept whatever its extension
    found = list_image_files([str(tree / "one.png"), str(tree / "b"), notes, str(tree)])
    assert rel(found, tree) == ["one.png", "b/c/four.tif", "b/three.WebP", "b/two.JPG", "notes.txt"]


def test_missing_path_is_named_and_empty_folder_gives_nothing(tree, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        list_image_files([str(tree), str(tmp_path / "missing_dir")])
    (tmp_path / "empty").mkdir()
    assert list_image_files(str(tmp_path / "empty")) == []


def test_try_read_image_reports_bad_files(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.full((5, 7, 3), 200, dtype=np.uint8)).save(good)
    image, error = try_read_image(str(good), format="RGB")
    assert error is None and image.shape == (5, 7, 3)
    bad = tmp_path / "bad.png"
    bad.write_bytes(np.random.default_rng(0).integers(0, 255, 300, dtype=np.uint8).tobytes())
    image, error = try_read_image(str(bad), format="RGB")
    assert image is None and "UnidentifiedImageError" in error
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:40])
    image, error = try_read_image(str(cut))
    assert image is None and error


def test_describe_skipped_names_the_first_few():
    assert describe_skipped([]) == ""
    assert describe_skipped(["a.png"]) == ": a.png"
    assert describe_skipped(["a", "b", "c", "d", "e"], shown=3) == ": a, b, c and 2 more"

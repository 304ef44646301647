"""tools/visualize_query_patches.py on demo unlabeled images with a tiny random UP-DETR."""
import os
import shutil

import cv2
import numpy as np
import pytest

import updetr_d2  # noqa: F401
from detectron2.data import DatasetCatalog

from helpers import load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN = os.path.join(ROOT, "projects", "UPDETR", "configs", "updetr_R18_demo_pretrain.yaml")
TINY = ["MODEL.DETR.HIDDEN_DIM", "32", "MODEL.DETR.NHEADS", "2", "MODEL.DETR.DIM_FEEDFORWARD", "64",
        "MODEL.DETR.ENC_LAYERS", "1", "MODEL.DETR.DEC_LAYERS", "1", "MODEL.DEVICE", "cpu"]


@pytest.fixture(scope="module")
def tool():
    return load_tool("visualize_query_patches")


@pytest.fixture(scope="module")
def images():
    return [r["file_name"] for r in DatasetCatalog.get("updetr_demo_unlabeled")[:2]]


def outline_changed(vis, original, box, offset):
    """Fraction of the box outline's positions where the drawing changed a pixel (within
    1 px of the edge, to allow for antialiasing)."""
    h, w = original.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    changed = (np.abs(vis[offset:].astype(int) - original.astype(int)).max(-1) > 40)
    hits = []
    for y in (y0, y1):
        rows = changed[max(0, y - 1):min(h, y + 2), max(0, x0):min(w, x1)]
        hits.extend(rows.any(0).tolist())
    for x in (x0, x1):
        cols = changed[max(0, y0):min(h, y1), max(0, x - 1):min(w, x + 2)]
        hits.extend(cols.any(1).tolist())
    return float(np.mean(hits)) if hits else 0.0


def run(tool, images, out, *extra):
    argv = ["--config-file", PRETRAIN, "--input", *images, "--output", str(out), "--num-patches", "3",
            "--seed", "0", *extra, *TINY]
    return tool.main(argv)


def test_writes_pngs_with_patch_boxes_and_best_queries(tool, images, tmp_path):
    results = run(tool, images, tmp_path / "vis")
    assert [r["file_name"] for r in results] == images
    for r in results:
        assert os.path.isfile(r["output"]) and r["output"].endswith(".png")
        vis = cv2.imread(r["output"], cv2.IMREAD_COLOR)[..., ::-1]
        original = cv2.imread(r["file_name"], cv2.IMREAD_COLOR)[..., ::-1]
        h, w = original.shape[:2]
        layout = tool.thumbnail_layout(w, 3, 64)  # INPUT.QUERY_PATCH.SIZE of the config
        assert r["offset"] == layout["height"] > 0
        assert vis.shape == (h + layout["height"], w, 3)  # the documented size
        assert len(r["patch_boxes"]) == 3 and len(r["best"]) == 3
        # the model keeps its training grouping (20 queries for 4 patches): 3 groups of 5
        assert r["queries_per_patch"] == [20 // 4] * 3
        for box in r["patch_boxes"]:  # original-image pixels
            assert 0 <= box[0] < box[2] <= w + 1e-3 and 0 <= box[1] < box[3] <= h + 1e-3
        assert all(b is not None and 0.0 <= b[1] <= 1.0 for b in r["best"])
        # every patch box outline is drawn
        for box in r["patch_boxes"]:
            assert outline_changed(vis, original, box, r["offset"]) > 0.3
        # the strip holds the thumbnails: not blank
        assert vis[: r["offset"]].std() > 10


def test_patch_boxes_are_where_the_patches_come_from(tool, images, tmp_path):
    """Scaled back to the original image, the mapper's boxes cut out the patch content."""
    from detectron2.config import get_cfg
    from updetr_d2 import add_updetr_config

    cfg = get_cfg()
    add_updetr_config(cfg)
    cfg.merge_from_file(PRETRAIN)
    mapper = tool.build_mapper(cfg, 3, seed=0)
    assert not mapper.patch_augment and mapper.seed == 0
    data = mapper({"file_name": images[0], "image_id": 0})
    results = run(tool, images[:1], tmp_path / "vis")
    original = cv2.imread(images[0], cv2.IMREAD_COLOR)[..., ::-1]
    for box, patch in zip(results[0]["patch_boxes"], data["patches"].permute(0, 2, 3, 1).numpy()):
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        crop = cv2.resize(np.ascontiguousarray(original[y0:y1, x0:x1]), patch.shape[:2][::-1],
                          interpolation=cv2.INTER_LINEAR)
        assert np.abs(crop.astype(int) - patch.astype(int)).mean() < 2


def test_folder_input_and_no_thumbnails(tool, images, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, f in enumerate(images):
        shutil.copy(f, folder / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")
    results = run(tool, [str(folder)], tmp_path / "vis", "--no-thumbnails")
    assert [os.path.basename(r["output"]) for r in results] == ["img0.png", "img1.png"]
    for r in results:
        vis = cv2.imread(r["output"])
        assert r["offset"] == 0 and vis.shape == cv2.imread(r["file_name"]).shape
    with pytest.raises(SystemExit, match="--input .*missing: no such file or folder"):
        run(tool, [str(tmp_path / "missing")], tmp_path / "vis")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no images found"):
        run(tool, [str(tmp_path / "empty")], tmp_path / "vis")


def test_subfolders_are_searched_and_corrupt_files_skipped(tool, images, tmp_path, capsys):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(images[0], folder / "top.png")
    shutil.copy(images[1], folder / "sub" / "nested.png")
    bad = folder / "sub" / "bad.png"  # an image by its name only
    bad.write_bytes(np.random.default_rng(0).integers(0, 255, 2048, dtype=np.uint8).tobytes())
    results = run(tool, [str(folder)], tmp_path / "vis", "--no-thumbnails")
    # sorted by relative path: sub/bad.png, sub/nested.png, top.png
    assert [r["file_name"] for r in results] == [str(folder / "sub" / "nested.png"), str(folder / "top.png")]
    assert sorted(os.listdir(tmp_path / "vis")) == ["nested.png", "top.png"]
    out, err = capsys.readouterr()
    assert f"2 images drawn, 1 skipped (unreadable): {bad}" in out
    assert f"warning: {bad}: cannot read the image" in err

    bad_only = tmp_path / "bad_only"
    bad_only.mkdir()
    shutil.copy(bad, bad_only / "bad.png")
    with pytest.raises(SystemExit, match="none of the 1 input images could be read"):
        run(tool, [str(bad_only)], tmp_path / "vis2")


def test_more_patches_than_the_model_was_built_for_is_refused(tool, images, tmp_path):
    with pytest.raises(SystemExit, match="grouped for INPUT.QUERY_PATCH.NUM_PATCHES=4"):
        tool.main(["--config-file", PRETRAIN, "--input", images[0], "--output", str(tmp_path),
                   "--num-patches", "5", *TINY])

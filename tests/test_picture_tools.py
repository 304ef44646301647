"""tools/plot_metrics.py (with updetr_d2.utils.plots) and tools/draw_detections.py."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

import updetr_d2  # noqa: F401
from detectron2.data.catalog import Metadata
from detectron2.structures import Boxes, Instances
from updetr_d2.utils.plots import DPI, FIGSIZE, loss_keys, plot_metrics, read_metrics

from helpers import load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_DETR = os.path.join(ROOT, "configs", "demo", "detr_R18_demo.yaml")
TINY = ["MODEL.DETR.HIDDEN_DIM", "32", "MODEL.DETR.NHEADS", "2", "MODEL.DETR.DIM_FEEDFORWARD", "64",
        "MODEL.DETR.ENC_LAYERS", "1", "MODEL.DETR.DEC_LAYERS", "1", "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "96", "MODEL.DEVICE", "cpu"]
# The tools run in their own processes beside the tests: one thread each is plenty here.
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def run_tool(name, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", name), *map(str, args)],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)


# ---------------------------------------------------------------- plot_metrics


def train_record(it, total):
    return {"iteration": it, "total_loss": total, "loss_ce": total / 2, "loss_bbox": total / 4,
            "loss_giou": total / 4, "loss_ce_0": total / 1.5, "loss_bbox_0": total / 3,
            "lr": 1e-4 if it < 8 else 1e-5, "time": 0.1}


@pytest.fixture
def metrics_run(tmp_path):
    """A run folder whose metrics.json has what real ones have: a blank line, a resume
    (iterations 6 and 7 written twice), evaluations and a last line cut short by a kill."""
    run = tmp_path / "detr_run"
    run.mkdir()
    lines = []
    for it in range(8):
        record = train_record(it, 4.0 - 0.3 * it)
        if it == 4:
            record.update({"bbox/AP": 5.0, "bbox/AP50": 12.0, "bbox/AP75": 3.0})
        lines.append(json.dumps(record))
    lines.append("")
    for it in range(6, 10):  # resumed from the checkpoint of iteration 5
        record = train_record(it, 2.0 - 0.1 * it)
        if it == 9:
            record.update({"bbox/AP": 9.0, "bbox/AP50": 20.0, "bbox/AP75": 7.0})
        lines.append(json.dumps(record))
    lines.append(json.dumps(train_record(10, 1.0))[:25])  # killed while writing
    (run / "metrics.json").write_text("\n".join(lines))
    return run


def test_read_metrics_skips_bad_lines_and_keeps_the_last_record(metrics_run):
    records = read_metrics(metrics_run)  # the folder
    assert records == read_metrics(metrics_run / "metrics.json")  # or the file
    assert [r["iteration"] for r in records] == list(range(10))  # no duplicate, no 10
    assert records[6]["total_loss"] == pytest.approx(2.0 - 0.6)  # the resumed run's record
    assert records[5]["total_loss"] == pytest.approx(4.0 - 1.5)
    assert [r["iteration"] for r in records if "bbox/AP" in r] == [4, 9]
    assert loss_keys(records) == ["total_loss", "loss_ce", "loss_bbox", "loss_giou"]


def test_read_metrics_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_metrics(tmp_path / "nowhere" / "metrics.json")
    bad = tmp_path / "metrics.json"
    bad.write_text('\n{"iteration": 3, "loss\n[1, 2]\n{"no_iteration": 1}\n')
    with pytest.raises(ValueError, match="no usable record") as e:
        read_metrics(bad)
    assert str(bad) in str(e.value)


def png_pixels(path):
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return image


def unique_colours(image):
    return len(np.unique(image.reshape(-1, image.shape[-1]), axis=0))


def test_plot_metrics_writes_a_png_of_the_documented_size(metrics_run, tmp_path):
    records = read_metrics(metrics_run)
    no_eval = [{k: v for k, v in r.items() if not k.startswith("bbox/")} for r in records]
    out = plot_metrics({"a": records, "b": no_eval}, tmp_path / "plots" / "curves.png")
    image = png_pixels(out)
    assert image.shape == (int(FIGSIZE[1] * DPI), int(FIGSIZE[0] * DPI), 3)
    assert unique_colours(image) > 100  # curves, text and antialiasing, not a blank figure

    # no evaluation at all: the AP panel says so, the PNG is still written
    out = plot_metrics({"b": no_eval}, tmp_path / "no_eval.png")
    assert png_pixels(out).shape == image.shape


def test_plot_metrics_cli(metrics_run, tmp_path):
    other = tmp_path / "other_run"
    other.mkdir()
    (other / "metrics.json").write_text(
        "\n".join(json.dumps(train_record(it, 3.0 - 0.2 * it)) for it in range(5)))
    out = tmp_path / "curves.png"
    result = run_tool("plot_metrics.py", metrics_run, other / "metrics.json", "--output", out)
    assert result.returncode == 0, result.stderr
    assert "detr_run (10 iterations)" in result.stdout and "other_run (5 iterations)" in result.stdout
    assert png_pixels(out).shape == (int(FIGSIZE[1] * DPI), int(FIGSIZE[0] * DPI), 3)

    missing = tmp_path / "missing_run"
    result = run_tool("plot_metrics.py", missing, "--output", tmp_path / "never.png")
    assert result.returncode != 0
    assert str(missing) in result.stderr
    assert not (tmp_path / "never.png").exists()


# ---------------------------------------------------------------- draw_detections


@pytest.fixture(scope="module")
def tool():
    return load_tool("draw_detections")


def changed_mask(vis, image, tol=30):
    return np.abs(vis.astype(int) - image.astype(int)).max(-1) > tol


def outline_changed(changed, box):
    """Fraction of the box outline's positions where the drawing changed a pixel (within
    1 px of the edge, to allow for antialiasing)."""
    h, w = changed.shape
    x0, y0, x1, y1 = box
    hits = []
    for y in (y0, y1):
        hits.extend(changed[max(0, y - 1):y + 2, x0:x1].any(0).tolist())
    for x in (x0, x1):
        hits.extend(changed[y0:y1, max(0, x - 1):x + 2].any(1).tolist())
    return float(np.mean(hits))


def test_draw_shows_only_the_boxes_above_the_threshold(tool):
    h, w = 120, 160
    # a dull green gradient: the red and blue boxes below stand out from every part of it
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = 60
    image[..., 1] = np.linspace(80, 160, w, dtype=np.uint8)[None, :]
    image[..., 2] = 60
    shown, hidden = [15, 15, 60, 60], [110, 75, 150, 110]
    instances = Instances((h, w))
    instances.pred_boxes = Boxes(torch.tensor([shown, hidden], dtype=torch.float32))
    instances.scores = torch.tensor([0.9, 0.3])
    instances.pred_classes = torch.tensor([0, 1])
    metadata = Metadata(thing_classes=["circle", "square"], thing_colors=[(255, 0, 0), (0, 0, 255)])

    vis = tool.draw(image.copy(), instances, metadata, threshold=0.5)
    assert vis.shape == image.shape and vis.dtype == np.uint8
    changed = changed_mask(vis, image)
    assert outline_changed(changed, shown) > 0.9
    # the label ("circle 90%") starts at the top-left corner, over the box's top edge and
    # right of it: below the box and right of the label, every pixel is as it was
    assert np.array_equal(vis[70:], image[70:]) and np.array_equal(vis[:, 100:], image[:, 100:])
    hx0, hy0, hx1, hy1 = hidden
    assert np.array_equal(vis[hy0 - 3:hy1 + 4, hx0 - 3:hx1 + 4], image[hy0 - 3:hy1 + 4, hx0 - 3:hx1 + 4])

    # a threshold below both scores draws the second box as well
    vis = tool.draw(image.copy(), instances, metadata, threshold=0.2)
    assert outline_changed(changed_mask(vis, image), hidden) > 0.9

    # nothing above the threshold: the image comes back as it was
    assert np.array_equal(tool.draw(image.copy(), instances, metadata, threshold=0.95), image)


def test_draw_detections_cli(tmp_path):
    inputs = tmp_path / "images"
    (inputs / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    sizes = {"first": (70, 90), "second": (80, 64)}
    for name, (h, w) in sizes.items():
        cv2.imwrite(str(inputs / "sub" / f"{name}.png"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    (inputs / "bad.jpg").write_bytes(rng.integers(0, 255, 512, dtype=np.uint8).tobytes())
    out = tmp_path / "vis"

    result = run_tool("draw_detections.py", "--config-file", DEMO_DETR, "--input", inputs,
                      "--output", out, "--threshold", "0.5", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["first.png", "second.png"]
    for name, (h, w) in sizes.items():
        assert png_pixels(out / f"{name}.png").shape == (h, w, 3)  # drawn at the input's size
    # the summary names the skipped file too (the warning about it may have scrolled away)
    assert f"2 images drawn, 1 skipped (unreadable): {inputs / 'bad.jpg'}" in result.stdout
    assert "bad.jpg" in result.stderr

    missing = tmp_path / "no_such_images"
    result = run_tool("draw_detections.py", "--config-file", DEMO_DETR, "--input", missing,
                      "--output", out, *TINY)
    assert result.returncode != 0
    assert str(missing) in result.stderr


def test_draw_panoptic_colours_every_segment_and_leaves_void_alone(tool):
    h, w = 90, 120
    image = np.full((h, w, 3), 128, np.uint8)
    ids = torch.zeros(h, w, dtype=torch.int32)
    ids[:40] = 1  # sky (stuff)
    ids[50:80, 20:60] = 2  # a circle (thing)
    segments = [{"id": 1, "category_id": 1, "isthing": False}, {"id": 2, "category_id": 0, "isthing": True, "score": 0.9}]
    metadata = Metadata(thing_classes=["circle", "sky"], stuff_classes=["circle", "sky"],
                        thing_colors=[(255, 0, 0), (0, 0, 255)], stuff_colors=[(255, 0, 0), (0, 0, 255)])
    vis = tool.draw_panoptic(image.copy(), (ids, segments), metadata)
    assert vis.shape == image.shape
    changed = changed_mask(vis, image, tol=20)
    assert changed[5:35, 5:115].mean() > 0.9 and changed[55:75, 25:55].mean() > 0.9
    assert not changed[42:48, 70:].any() and not changed[82:, 70:].any()  # void: untouched

"""Discrete MIM's tokenizer: the k-means codebook, its file and tools/pretext.py codebook."""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import updetr_d2  # noqa: F401  (compat fixes before detectron2 imports)
from updetr_d2.methods.pretext import tokenizer as tok
from updetr_d2.methods.pretext.tokenizer import (TOKENIZER_REGISTRY, KMeansPatchTokenizer, PatchTokenizer,
                                                 build_codebook, image_patches, load_codebook, save_codebook)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_faiss = pytest.mark.skipif(importlib.util.find_spec("faiss") is None,
                                 reason="faiss is not installed (pip install faiss-cpu): k-means codebooks untested")

MEAN, STD = [103.53, 116.28, 123.675], [57.375, 57.12, 58.395]
COLOURS = torch.tensor([[255, 0, 0], [0, 200, 0], [30, 30, 220], [250, 250, 250]], dtype=torch.float32)


def normalise(image):
    return (image - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def colour_image(grid, patch, border=3, seed=0):
    """A normalised image of flat ``patch``-px squares, colour ids ``grid`` [h, w], plus a
    ragged border of noise (not a whole patch: never clustered, never tokenized)."""
    h, w = grid.shape
    image = torch.rand(3, h * patch + border, w * patch + border, generator=torch.Generator().manual_seed(seed)) * 255
    blocks = COLOURS[grid].permute(2, 0, 1)  # [3, h, w]
    image[:, : h * patch, : w * patch] = blocks.repeat_interleave(patch, 1).repeat_interleave(patch, 2)
    return normalise(image)


def colour_grids(n, h=4, w=5):
    rng = np.random.default_rng(0)
    return [torch.from_numpy(rng.integers(0, len(COLOURS), size=(h, w))) for _ in range(n)]


def write_random_codebook(path, num_codes=16, patch=8, pool=2, mean=MEAN, std=STD, scale=1.0):
    centroids = np.random.default_rng(0).normal(scale=scale, size=(num_codes, 3 * pool * pool)).astype(np.float32)
    save_codebook(str(path), centroids, patch, pool, mean, std)
    return centroids


def test_image_patches_are_the_blocks_in_token_order():
    image = torch.arange(2 * 3 * 17 * 25, dtype=torch.float32).reshape(2, 3, 17, 25)
    patches = image_patches(image, 8)  # a 2 x 3 grid; the ragged border dropped
    assert patches.shape == (2, 6, 3, 8, 8)
    for n in range(6):
        y, x = 8 * (n // 3), 8 * (n % 3)
        assert torch.equal(patches[:, n], image[:, :, y:y + 8, x:x + 8])


@needs_faiss
def test_codebook_of_flat_colours_finds_the_colours(tmp_path):
    grids = colour_grids(6)
    images = [colour_image(g, 8, seed=i) for i, g in enumerate(grids)]
    centroids = build_codebook(iter(images), patch_size=8, num_codes=len(COLOURS), pool=2, seed=0)
    assert centroids.shape == (len(COLOURS), 12) and centroids.dtype == np.float32
    # Every centroid is one colour exactly (no noise from the border got in).
    flat = normalise(COLOURS.T.reshape(3, -1, 1)).reshape(3, -1).T  # [colours, 3] normalised
    expected = flat.repeat_interleave(4, dim=1).numpy()  # pooled to 2x2: (channel, row, col)
    dist = np.abs(expected[:, None, :] - centroids[None]).max(-1)  # [colours, codes]
    assert sorted(dist.argmin(1)) == list(range(len(COLOURS))) and dist.min(1).max() < 1e-4

    save_codebook(str(tmp_path / "colours.npz"), centroids, 8, 2, MEAN, STD)
    tokenizer = TOKENIZER_REGISTRY.get("KMeansPatchTokenizer")(
        codebook_path=str(tmp_path / "colours.npz"), patch_size=8, pixel_mean=MEAN, pixel_std=STD)
    assert isinstance(tokenizer, PatchTokenizer) and tokenizer.num_codes == len(COLOURS)
    codes = torch.stack([tokenizer.encode_image(im) for im in images])  # [images, 20]
    colours = torch.stack([g.flatten() for g in grids])
    assert codes.dtype == torch.int64 and codes.shape == colours.shape
    code_of = {}
    for c, k in zip(colours.flatten().tolist(), codes.flatten().tolist()):
        assert code_of.setdefault(c, k) == k  # one colour, one code
    assert sorted(code_of.values()) == list(range(len(COLOURS)))  # colours apart, all codes used


@needs_faiss
def test_codebook_is_seeded_and_subsamples(caplog):
    images = [torch.randn(3, 40, 40, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    a = build_codebook(images, patch_size=8, num_codes=8, pool=2, max_patches=60, seed=3)
    b = build_codebook(images, patch_size=8, num_codes=8, pool=2, max_patches=60, seed=3)
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="25 patches .* fewer than the 30 codes"):
        build_codebook(images[:1], patch_size=8, num_codes=30, pool=2)
    with pytest.raises(ValueError, match="pool"):
        build_codebook(images, patch_size=8, num_codes=4, pool=16)


def test_codes_do_not_depend_on_batching(tmp_path, monkeypatch):
    # Centroids as spread as 2x2-pooled unit noise (std 1/4), so many codes get used.
    write_random_codebook(tmp_path / "book.npz", num_codes=32, scale=0.25)
    tokenizer = KMeansPatchTokenizer(str(tmp_path / "book.npz"), 8, MEAN, STD)
    images = torch.randn(4, 3, 24, 32, generator=torch.Generator().manual_seed(1))
    patches = image_patches(images, 8).reshape(-1, 3, 8, 8)  # 48 patches
    whole = tokenizer(patches)
    assert whole.shape == (48,) and whole.dtype == torch.int64
    assert 0 <= int(whole.min()) and int(whole.max()) < 32 and len(whole.unique()) > 4
    pieces = torch.cat([tokenizer(p) for p in patches.split([1, 7, 40])])
    assert torch.equal(whole, pieces)
    assert torch.equal(tokenizer.encode_image(images).flatten(), whole)
    monkeypatch.setattr(tok, "_CHUNK", 5)  # the chunked distance computation agrees too
    assert torch.equal(tokenizer(patches), whole)
    assert tokenizer(patches[:0]).shape == (0,)
    # The brute-force nearest centroid of the pooled features.
    feats = torch.nn.functional.adaptive_avg_pool2d(patches, 2).flatten(1)
    assert torch.equal(torch.cdist(feats.double(), tokenizer.centroids.double()).argmin(1), whole)
    # The centroids stay out of checkpoints.
    assert "centroids" not in tokenizer.state_dict()
    with pytest.raises(ValueError, match="patches"):
        tokenizer(torch.zeros(2, 3, 16, 16))


def test_save_load_round_trip(tmp_path):
    path = tmp_path / "sub" / "book.npz"
    centroids = write_random_codebook(path, num_codes=5, patch=16, pool=4)
    book = load_codebook(str(path))
    assert np.array_equal(book["centroids"], centroids) and book["centroids"].dtype == np.float32
    assert book["patch_size"] == 16 and book["pool"] == 4
    assert book["pixel_mean"] == MEAN and book["pixel_std"] == STD
    assert book["format_version"] == tok.CODEBOOK_FORMAT_VERSION
    assert os.listdir(tmp_path / "sub") == ["book.npz"]  # no temporary file left
    with pytest.raises(ValueError, match="do not fit"):
        save_codebook(str(path), centroids[:, :5], 16, 4, MEAN, STD)


def test_codebook_of_other_patches_is_refused(tmp_path):
    path = str(tmp_path / "book16.npz")
    write_random_codebook(path, patch=16)
    with pytest.raises(ValueError, match=r"book16\.npz.*patch size 16 \(model: 32\)"):
        KMeansPatchTokenizer(path, 32, MEAN, STD)
    with pytest.raises(ValueError, match=r"book16\.npz.*pixel_std"):
        KMeansPatchTokenizer(path, 16, MEAN, [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"book16\.npz.*pixel_mean"):
        KMeansPatchTokenizer(path, 16, MEAN[::-1], STD)  # RGB instead of BGR
    KMeansPatchTokenizer(path, 16, [float(v) for v in np.float32(MEAN)], STD)  # float32 noise is the same


def test_missing_codebook_says_how_to_build_one(tmp_path):
    for path in (str(tmp_path / "none.npz"), ""):
        with pytest.raises(FileNotFoundError, match=r"none\.npz|''") as e:
            KMeansPatchTokenizer(path, 32, MEAN, STD)
        assert "tools/pretext.py codebook" in str(e.value)
    np.savez(str(tmp_path / "other.npz"), x=np.zeros(3))
    with pytest.raises(ValueError, match=r"other\.npz.* not a codebook"):
        load_codebook(str(tmp_path / "other.npz"))


@needs_faiss
def test_tool_writes_a_codebook(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, size=(48 + 8 * i, 64, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    out = tmp_path / "out" / "codebook.npz"
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "pretext.py"), "codebook", "--output", str(out),
         "--num-codes", "6", "--pool", "2", "--max-images", "2", "--num-workers", "0",
         "DATASETS.TRAIN", f"('{folder}',)", "MODEL.PRETEXT.PATCH_SIZE", "16",
         "INPUT.MIN_SIZE_TEST", "48", "INPUT.MAX_SIZE_TEST", "100"],
        cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(out) in result.stdout
    book = load_codebook(str(out))
    assert book["centroids"].shape == (6, 12) and book["patch_size"] == 16 and book["pool"] == 2
    # Detectron2's default normalisation (BGR), as the model would use it.
    KMeansPatchTokenizer(str(out), 16, [103.53, 116.28, 123.675], [1.0, 1.0, 1.0])

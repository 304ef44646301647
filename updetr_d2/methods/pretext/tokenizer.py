"""Discrete MIM targets: a tokenizer maps each patch of the ORIGINAL image to a code.

The paper's code asks DALL-E's frozen dVAE for an 8192-way token per patch. Its weights
cannot be assumed to be at hand, so the project's default is a codebook it builds itself:
k-means over the patches of the pretraining images, each patch described by its
normalised pixels average-pooled to ``pool x pool`` (``C * pool^2`` values: colour and
coarse layout, which is what a pixel-level MIM target can be asked to recover; the raw
``C * P^2`` pixels would make the codebook large and the clusters noisy). Build one with
``tools/pretext.py codebook``; ``MODEL.PRETEXT.CODEBOOK`` names it.

A tokenizer is built as ``TOKENIZER_REGISTRY.get(name)(codebook_path=..., patch_size=...,
pixel_mean=..., pixel_std=...)`` with ``name = MODEL.PRETEXT.TOKENIZER``; a user can
register another :class:`PatchTokenizer` (e.g. a DALL-E dVAE wrapper) under its own name.

The codebook file is an ``.npz`` holding ``centroids`` [K, D] float32, ``patch_size``,
``pool``, ``pixel_mean``, ``pixel_std`` and ``format_version``. The patch size and the
normalisation are stored because codes are only meaningful for the patches they were
built from: a codebook of 16-px patches or of differently normalised pixels is refused.
"""
import logging
import os
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.utils.registry import Registry
from torch import Tensor, nn

from ...utils.files import atomic_write
from .geometry import crop_to_patches, patchify

__all__ = ["TOKENIZER_REGISTRY", "PatchTokenizer", "KMeansPatchTokenizer", "image_patches", "patch_features",
           "build_codebook", "save_codebook", "load_codebook", "CODEBOOK_FORMAT_VERSION"]

logger = logging.getLogger(__name__)

TOKENIZER_REGISTRY = Registry("PRETEXT_TOKENIZER")
TOKENIZER_REGISTRY.__doc__ = """
Patch tokenizers for discrete MIM (``MODEL.PRETEXT.TOKENIZER``). A tokenizer is built as
``TOKENIZER_REGISTRY.get(name)(codebook_path=..., patch_size=..., pixel_mean=...,
pixel_std=...)`` and is a :class:`PatchTokenizer`; register e.g. a DALL-E dVAE wrapper to
use its tokens instead of the k-means codebook.
"""

CODEBOOK_FORMAT_VERSION = 1
_BUILD_HINT = "build one with `python tools/pretext.py codebook --config-file CFG.yaml --output FILE.npz`"
# Rows per distance matrix: bounds the [chunk, K] scratch memory for large batches.
_CHUNK = 4096


def image_patches(image: Tensor, patch: int) -> Tensor:
    """[..., C, H, W] -> [..., N, C, P, P]: the whole ``patch``-px patches of an image in
    row-major order (token order, see :mod:`.geometry`); the ragged border is cut off."""
    x = patchify(crop_to_patches(image, patch), patch)  # [..., N, P*P*C], (row, col, channel)
    c = image.shape[-3]
    x = x.reshape(*x.shape[:-1], patch, patch, c)
    return x.movedim(-1, -3)


def patch_features(patches: Tensor, pool: int) -> Tensor:
    """[N, C, P, P] -> [N, C*pool*pool]: each patch average-pooled to ``pool x pool``."""
    return F.adaptive_avg_pool2d(patches, pool).flatten(1)


class PatchTokenizer(nn.Module):
    """Maps patches to discrete codes; frozen (no gradients, not trained).

    ``forward(patches)``: ``patches`` [N, C, P, P] normalised as the model normalises its
    input, ``(x - pixel_mean) / pixel_std``, with ``P = patch_size``; returns int64 [N]
    codes in ``[0, num_codes)``.
    """

    num_codes: int
    patch_size: int

    @torch.no_grad()
    def forward(self, patches: Tensor) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def encode_image(self, image: Tensor) -> Tensor:
        """[..., C, H, W] normalised image(s) -> int64 [..., N] codes of their whole
        patches, row-major (token ``n`` gets the code of patch ``n``)."""
        patches = image_patches(image, self.patch_size)
        lead = patches.shape[:-3]
        return self(patches.reshape(-1, *patches.shape[-3:])).reshape(lead)


def _missing(path: str) -> FileNotFoundError:
    return FileNotFoundError(f"codebook file {path!r} not found (MODEL.PRETEXT.CODEBOOK); {_BUILD_HINT}")


def load_codebook(path: str) -> dict:
    """The contents of a codebook file: ``centroids`` (float32 [K, D]), ``patch_size`` and
    ``pool`` (int), ``pixel_mean`` and ``pixel_std`` (lists of float), ``format_version``."""
    if not path or not os.path.isfile(path):
        raise _missing(path)
    with np.load(path, allow_pickle=False) as data:
        missing = {"centroids", "patch_size", "pool", "pixel_mean", "pixel_std", "format_version"} - set(data.files)
        if missing:
            raise ValueError(f"{path!r} is not a codebook file: it lacks {sorted(missing)}; {_BUILD_HINT}")
        version = int(data["format_version"])
        if version != CODEBOOK_FORMAT_VERSION:
            raise ValueError(f"codebook {path!r} has format version {version}; this code reads version "
                             f"{CODEBOOK_FORMAT_VERSION}; {_BUILD_HINT}")
        out = {
            "centroids": np.ascontiguousarray(data["centroids"], dtype=np.float32),
            "patch_size": int(data["patch_size"]),
            "pool": int(data["pool"]),
            "pixel_mean": [float(v) for v in data["pixel_mean"]],
            "pixel_std": [float(v) for v in data["pixel_std"]],
            "format_version": version,
        }
    k, d = out["centroids"].shape if out["centroids"].ndim == 2 else (0, 0)
    if k < 1 or d != len(out["pixel_mean"]) * out["pool"] ** 2:
        raise ValueError(f"codebook {path!r}: centroids of shape {out['centroids'].shape} do not fit "
                         f"{len(out['pixel_mean'])} channels pooled to {out['pool']}x{out['pool']}")
    return out


def save_codebook(path: str, centroids: np.ndarray, patch_size: int, pool: int, pixel_mean: Sequence[float],
                  pixel_std: Sequence[float]) -> None:
    """Write a codebook file whole or not at all (a killed run leaves no partial file)."""
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    if centroids.ndim != 2 or centroids.shape[1] != len(pixel_mean) * pool * pool:
        raise ValueError(f"centroids of shape {centroids.shape} do not fit {len(pixel_mean)} channels "
                         f"pooled to {pool}x{pool}")
    arrays = dict(
        centroids=centroids,
        patch_size=np.int64(patch_size),
        pool=np.int64(pool),
        pixel_mean=np.asarray(pixel_mean, dtype=np.float64),
        pixel_std=np.asarray(pixel_std, dtype=np.float64),
        format_version=np.int64(CODEBOOK_FORMAT_VERSION),
    )
    atomic_write(path, lambda f: np.savez(f, **arrays), binary=True)


def _same(a: Sequence[float], b: Sequence[float]) -> bool:
    # The values come from a yaml config and a float64 round trip: equal up to print noise.
    return len(a) == len(b) and np.allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-6, atol=1e-8)


@TOKENIZER_REGISTRY.register()
class KMeansPatchTokenizer(PatchTokenizer):
    """The code of a patch is the nearest (L2) k-means centroid of its pooled features.

    The codebook's patch size and normalisation must be the model's (``ValueError``
    otherwise). The centroids are a non-persistent buffer: they move with ``.to()`` but
    stay out of checkpoints, the file being their single source.
    """

    def __init__(self, codebook_path: str, patch_size: int, pixel_mean: Sequence[float],
                 pixel_std: Sequence[float]):
        super().__init__()
        book = load_codebook(codebook_path)
        mismatches = []
        if book["patch_size"] != int(patch_size):
            mismatches.append(f"patch size {book['patch_size']} (model: {int(patch_size)})")
        for key, value in (("pixel_mean", pixel_mean), ("pixel_std", pixel_std)):
            if not _same(book[key], value):
                mismatches.append(f"{key} {book[key]} (model: {[float(v) for v in value]})")
        if mismatches:
            raise ValueError(f"codebook {codebook_path!r} was built for other patches: " + "; ".join(mismatches)
                             + f"; rebuild it for this config ({_BUILD_HINT})")
        self.codebook_path = codebook_path
        self.patch_size = int(patch_size)
        self.pool = book["pool"]
        self.num_codes = int(book["centroids"].shape[0])
        centroids = torch.from_numpy(book["centroids"])
        self.register_buffer("centroids", centroids, persistent=False)
        # |c|^2, precomputed: argmin_c |x - c|^2 = argmin_c (|c|^2 - 2 x.c), |x|^2 being common.
        self.register_buffer("centroid_sq_norms", centroids.pow(2).sum(1), persistent=False)

    @torch.no_grad()
    def forward(self, patches: Tensor) -> Tensor:
        p = self.patch_size
        if patches.dim() != 4 or patches.shape[-2:] != (p, p):
            raise ValueError(f"expected patches [N, C, {p}, {p}], got {tuple(patches.shape)}")
        feats = patch_features(patches.to(self.centroids), self.pool)
        if feats.shape[1] != self.centroids.shape[1]:
            raise ValueError(f"patches of {patches.shape[1]} channels do not fit codebook {self.codebook_path!r} "
                             f"({self.centroids.shape[1] // self.pool ** 2} channels)")
        # float32 even under mixed precision: half-precision distances would flip near ties.
        with torch.autocast(device_type=feats.device.type, enabled=False):
            codes = [torch.argmin(self.centroid_sq_norms - 2.0 * chunk @ self.centroids.T, dim=1)
                     for chunk in feats.split(_CHUNK)]
        if not codes:
            return torch.zeros(0, dtype=torch.int64, device=patches.device)
        return torch.cat(codes).to(patches.device)

    def extra_repr(self) -> str:
        return f"codebook={self.codebook_path!r}, num_codes={self.num_codes}, patch_size={self.patch_size}, pool={self.pool}"


def _kmeans(x: np.ndarray, num_codes: int, iterations: int, seed: int) -> np.ndarray:
    try:
        import faiss  # here, not at module level: `import updetr_d2` should not load it
    except ImportError as e:
        raise ImportError("building a k-means codebook needs faiss: `pip install faiss-cpu` (listed in "
                          "requirements/runtime.txt)") from e
    n, d = x.shape
    # The patches were subsampled already; faiss trains on all of them, not a subsample again.
    kmeans = faiss.Kmeans(d, num_codes, niter=int(iterations), seed=int(seed), verbose=False,
                          max_points_per_centroid=max(256, -(-n // num_codes)))
    # k-means++ seeding: faiss' default (random points) easily seeds two centroids in one
    # frequent colour and none in a rare one; older faiss has random seeding only.
    if hasattr(kmeans.cp, "init_method"):
        kmeans.cp.init_method = faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS
    kmeans.train(x)
    return np.ascontiguousarray(kmeans.centroids.reshape(num_codes, d), dtype=np.float32)


def build_codebook(images: Iterable[Tensor], patch_size: int, num_codes: int, pool: int = 4,
                   max_patches: int = 200_000, seed: int = 0, iterations: int = 20) -> np.ndarray:
    """k-means centroids float32 [num_codes, C*pool*pool] of the pooled patches of
    ``images`` (normalised float tensors [C, H, W], each cut to whole patches).

    At most ``max_patches`` patches are clustered: a uniform sample of all of them,
    reservoir-sampled with ``np.random.default_rng(seed)`` so the images are streamed
    once and never held together. Deterministic for a fixed seed and image order.
    """
    if not 1 <= pool <= patch_size:
        raise ValueError(f"pool must be in [1, patch size {patch_size}], got {pool}")
    if num_codes < 1 or max_patches < num_codes:
        raise ValueError(f"need 1 <= num_codes <= max_patches, got num_codes={num_codes}, max_patches={max_patches}")
    rng = np.random.default_rng(seed)
    reservoir, filled, seen, num_images = None, 0, 0, 0
    for image in images:
        if image.dim() != 3:
            raise ValueError(f"expected images [C, H, W], got {tuple(image.shape)}")
        num_images += 1
        feats = patch_features(image_patches(image.float(), patch_size), pool).cpu().numpy()
        if len(feats) == 0:
            continue  # smaller than one patch
        if reservoir is None:
            reservoir = np.empty((max_patches, feats.shape[1]), np.float32)
        take = min(len(feats), max_patches - filled)
        reservoir[filled:filled + take] = feats[:take]
        filled += take
        rest = feats[take:]
        if len(rest):
            # Algorithm R, vectorised: the i-th patch overall (0-based) replaces a random
            # slot with probability max_patches / (i + 1).
            slot = rng.integers(0, np.arange(seen + take, seen + len(feats)) + 1)
            keep = slot < max_patches
            reservoir[slot[keep]] = rest[keep]
        seen += len(feats)
    if filled < num_codes:
        raise ValueError(f"{filled} patches of {patch_size} px in {num_images} images are fewer than the "
                         f"{num_codes} codes asked for: use more (or larger) images or fewer codes")
    logger.info("k-means codebook: %d codes from %d of %d patches (%d images, %dx%d pooled, %d iterations)",
                num_codes, filled, seen, num_images, pool, pool, iterations)
    return _kmeans(reservoir[:filled], num_codes, iterations, seed)

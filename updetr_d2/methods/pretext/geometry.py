"""One encoder token = one image block: the geometry every pretext shares.

A feature level of stride ``s`` gives token ``(i, j)`` for the image block of rows
``[s*i, s*(i+1))`` and columns ``[s*j, s*(j+1))``; tokens are numbered row-major, so
token ``n`` of a grid ``w`` tokens wide covers the block whose top-left pixel is
``(s * (n // w), s * (n % w))``. The corruptions work on patches of side ``P`` (a
multiple of every stride the head reads): a ``P`` patch holds ``(P/s)^2`` tokens.

Only whole patches exist: an image is cut to ``floor(H/P)*P x floor(W/P)*P`` (its top-left
corner) before it is corrupted, so no token straddles the image border and no padding
pixel ever is a target (the original code assumed square 512 px inputs instead).
"""
from typing import Tuple

from torch import Tensor

__all__ = ["patch_grid", "crop_to_patches", "patchify", "unpatchify", "expand_grid"]


def patch_grid(height: int, width: int, patch: int) -> Tuple[int, int]:
    """(rows, columns) of whole ``patch`` x ``patch`` blocks in an image."""
    if patch < 1:
        raise ValueError(f"the patch side must be >= 1, got {patch}")
    return height // patch, width // patch


def crop_to_patches(image: Tensor, patch: int) -> Tensor:
    """``image[..., :rows*patch, :cols*patch]``: the part covered by whole patches."""
    rows, cols = patch_grid(image.shape[-2], image.shape[-1], patch)
    return image[..., : rows * patch, : cols * patch]


def patchify(image: Tensor, patch: int) -> Tensor:
    """[..., C, h*p, w*p] -> [..., h*w, p*p*C]: block n (row-major) flattened as (row,
    column, channel); the inverse of :func:`unpatchify`. The sides must be multiples of
    ``patch`` (use :func:`crop_to_patches`)."""
    *lead, c, H, W = image.shape
    if H % patch or W % patch:
        raise ValueError(f"image of {H}x{W} is not a whole number of {patch}-px patches")
    h, w = H // patch, W // patch
    x = image.reshape(*lead, c, h, patch, w, patch)
    n = len(lead)
    # (..., c, h, p, w, p) -> (..., h, w, p, p, c)
    x = x.permute(*range(n), n + 1, n + 3, n + 2, n + 4, n)
    return x.reshape(*lead, h * w, patch * patch * c)


def unpatchify(tokens: Tensor, patch: int, grid: Tuple[int, int], channels: int = 3) -> Tensor:
    """[..., h*w, p*p*C] -> [..., C, h*p, w*p] (inverse of :func:`patchify`)."""
    *lead, n, d = tokens.shape
    h, w = grid
    if n != h * w or d != patch * patch * channels:
        raise ValueError(f"tokens {tuple(tokens.shape)} do not fit a {h}x{w} grid of {patch}-px, {channels}-channel patches")
    x = tokens.reshape(*lead, h, w, patch, patch, channels)
    k = len(lead)
    # (..., h, w, p, p, c) -> (..., c, h, p, w, p)
    x = x.permute(*range(k), k + 4, k, k + 2, k + 1, k + 3)
    return x.reshape(*lead, channels, h * patch, w * patch)


def expand_grid(values: Tensor, factor: int) -> Tensor:
    """A per-patch grid [..., h, w] -> the per-token grid [..., h*f, w*f] of a level whose
    stride is ``patch / factor`` (each patch's value repeated over its tokens)."""
    if factor == 1:
        return values
    return values.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)

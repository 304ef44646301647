"""The pretexts' image corruptions: masking (MIM) and shuffling (jigsaw) of whole patches.

The unit is the ``P`` x ``P`` patch of :mod:`.geometry` (one encoder token at the level
the head reads, or a block of them), numbered row-major. Per image a random subset ``S``
of ``floor(r * N)`` of the ``N`` patches is drawn without replacement, in random order
(the original code's ``random.sample``), and then

- ``"mim"``: every pixel of each patch in ``S`` is set to a constant colour ``fill``;
- ``"jigsaw"``: the positions ``sorted(S)`` receive the patches ``S`` in their drawn order,
  i.e. a random permutation within ``S`` (fixed points possible, as in the original);
- ``"none"``: nothing (plain reconstruction).

The image must already be a whole number of patches (:func:`.geometry.crop_to_patches`):
no patch straddles the border, so no padding pixel is ever moved or becomes a target.
Everything is drawn from the caller's ``np.random.Generator``, never from a global RNG.
"""
import math
import numbers
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .geometry import patch_grid, patchify, unpatchify

__all__ = ["CORRUPTIONS", "CorruptedView", "corrupt"]

CORRUPTIONS = ("none", "mim", "jigsaw")


@dataclass(eq=False)
class CorruptedView:
    """One corrupted pretext view of an image (all on the image's device).

    Attributes:
        image: float32 ``[C, h*P, w*P]`` in the input's pixel units, corrupted.
        source: int64 ``[h, w]``: the row-major index (in this patch grid) of the
            original patch now at each position; the identity for "none" and "mim". It is
            the jigsaw-discrete target, and ``patchify(image)[source.flatten()]`` of the
            original image equals ``patchify(view.image)``.
        transformed: bool ``[h, w]``: the positions whose content changed, which the loss
            scores with ``LOSS_ON_TRANSFORMED``: the masked patches for "mim", the patches
            that moved (``source != own index``) for "jigsaw", none for "none".
    """

    image: Tensor
    source: Tensor
    transformed: Tensor


def corrupt(image: Tensor, kind: str, ratio: float, patch: int, fill: Sequence[float],
            rng: np.random.Generator) -> CorruptedView:
    """Corrupts ``image`` (float ``[C, H, W]``, ``H`` and ``W`` multiples of ``patch``) as
    described in the module docstring. ``fill`` (one value per channel, in the image's
    units) is used by "mim" only; ``ratio`` in [0, 1] is the fraction of patches masked or
    shuffled. The input is never modified; the output never shares its memory."""
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}; choose one of {CORRUPTIONS}")
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0.0 <= ratio <= 1.0:
        raise ValueError(f"the corruption ratio must be a number in [0, 1], got {ratio!r}")
    if image.dim() != 3:
        raise ValueError(f"expected an image [C, H, W], got shape {tuple(image.shape)}")
    channels, height, width = image.shape
    h, w = patch_grid(height, width, patch)
    if height % patch or width % patch:
        raise ValueError(f"image of {height}x{width} is not a whole number of {patch}-px patches "
                         "(crop it with crop_to_patches first)")
    if kind == "mim" and len(fill) != channels:
        raise ValueError(f"fill has {len(fill)} values for an image of {channels} channels")
    image = image.to(torch.float32)
    n = h * w
    device = image.device
    source = torch.arange(n, device=device)
    transformed = torch.zeros(n, dtype=torch.bool, device=device)
    if kind == "none" or n == 0:
        return CorruptedView(image.clone(), source.view(h, w), transformed.view(h, w))

    # floor(r * N) patches, in random order (the jigsaw pairs sorted(S) with this order).
    chosen = rng.choice(n, size=int(math.floor(ratio * n)), replace=False)
    chosen = torch.as_tensor(chosen, dtype=torch.int64, device=device)
    tokens = patchify(image, patch)  # [N, P*P*C], channel fastest
    if kind == "mim":
        transformed[chosen] = True
        # (row, column, channel) layout: the fill colour repeated once per pixel.
        fill_token = torch.as_tensor(fill, dtype=torch.float32, device=device).repeat(patch * patch)
        out = torch.where(transformed[:, None], fill_token[None], tokens)
    else:  # jigsaw: out[sorted(S)[k]] = in[S[k]], a gather by ``source``
        source[chosen.sort().values] = chosen
        transformed = source != torch.arange(n, device=device)
        out = tokens.index_select(0, source)
    return CorruptedView(unpatchify(out, patch, (h, w), channels), source.view(h, w), transformed.view(h, w))

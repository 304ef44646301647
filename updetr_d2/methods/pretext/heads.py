"""Pretext heads: per encoder token, what the pretext asks of it.

Every head maps a level of the encoder memory ``[B, d, H, W]`` to per-token outputs
``[B, H*W, D]`` (row-major tokens, as :func:`~.geometry.patchify` numbers them):

* target ``"pixels"``: the ``s x s x C`` pixels of the token's block (``D = s*s*C``, in
  :func:`~.geometry.patchify`'s layout), compared with L1;
* target ``"codes"``: logits over the tokenizer's codes (``D = K``), cross-entropy;
* target ``"positions"`` (jigsaw): a query vector (``D = d``) scored against one key per
  patch position of the image (:meth:`PretextHead.position_keys`), cross-entropy over
  the image's own positions. The original's ``Linear(256 -> 256)`` only works on its
  fixed 16 x 16 grid; keys made from the sine position embedding of the patch grid serve
  any image size and aspect ratio.

Two registered heads (``MODEL.PRETEXT.HEAD``): ``"linear"`` (one linear layer, the
original's pretraining heads) and ``"mlp_deconv"`` (Linear + ReLU, then for pixels a
``ConvTranspose2d(d -> C, kernel = stride = s)``, for classes a linear layer: the
original's multi-task heads).
"""
import math

import torch
from detectron2.utils.registry import Registry
from torch import Tensor, nn

from ...layers.position_encoding import PositionEmbeddingSine
from .geometry import patchify

__all__ = ["PRETEXT_HEAD_REGISTRY", "PretextHead", "LinearPretextHead", "MlpDeconvPretextHead", "TARGET_KINDS"]

PRETEXT_HEAD_REGISTRY = Registry("PRETEXT_HEAD")
PRETEXT_HEAD_REGISTRY.__doc__ = """Pretext heads, built as
``PRETEXT_HEAD_REGISTRY.get(name)(target, hidden_dim, stride, num_codes, channels)``."""

TARGET_KINDS = ("pixels", "codes", "positions")


class PretextHead(nn.Module):
    """Base: validates the target kind and owns the position keys of jigsaw heads."""

    def __init__(self, target: str, hidden_dim: int, stride: int, num_codes: int = 0, channels: int = 3):
        super().__init__()
        if target not in TARGET_KINDS:
            raise ValueError(f"pretext target must be one of {TARGET_KINDS}, got {target!r}")
        if target == "codes" and num_codes < 2:
            raise ValueError(f"a discrete pretext needs a tokenizer with >= 2 codes, got {num_codes}")
        self.target, self.stride, self.channels = target, stride, channels
        self.out_dim = {"pixels": stride * stride * channels, "codes": num_codes, "positions": hidden_dim}[target]
        if target == "positions":
            self.position_embedding = PositionEmbeddingSine(hidden_dim // 2, normalize=True, scale=2 * math.pi)
            self.key_proj = nn.Linear(hidden_dim, hidden_dim)

    def position_keys(self, grid) -> Tensor:
        """[h*w, d]: one key per patch position of an h x w patch grid (row-major)."""
        h, w = grid
        mask = torch.zeros(1, h, w, dtype=torch.bool, device=self.key_proj.weight.device)
        pos = self.position_embedding(mask).flatten(2)[0].t()  # [h*w, d]
        return self.key_proj(pos.to(self.key_proj.weight.dtype))


@PRETEXT_HEAD_REGISTRY.register()
class LinearPretextHead(PretextHead):
    """One linear layer per token."""

    def __init__(self, target, hidden_dim, stride, num_codes=0, channels=3):
        super().__init__(target, hidden_dim, stride, num_codes, channels)
        self.proj = nn.Linear(hidden_dim, self.out_dim)

    def forward(self, level_map: Tensor) -> Tensor:
        return self.proj(level_map.flatten(2).transpose(1, 2))


@PRETEXT_HEAD_REGISTRY.register()
class MlpDeconvPretextHead(PretextHead):
    """Linear + ReLU, then a transposed convolution back to pixels (pixel targets) or a
    linear layer (class and position targets)."""

    def __init__(self, target, hidden_dim, stride, num_codes=0, channels=3):
        super().__init__(target, hidden_dim, stride, num_codes, channels)
        self.pre = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.ReLU(inplace=True))
        if target == "pixels":
            # kernel = stride: each token paints exactly its own s x s block.
            self.out = nn.ConvTranspose2d(hidden_dim, channels, kernel_size=stride, stride=stride)
        else:
            self.out = nn.Linear(hidden_dim, self.out_dim)

    def forward(self, level_map: Tensor) -> Tensor:
        B, d, H, W = level_map.shape
        tokens = self.pre(level_map.flatten(2).transpose(1, 2))
        if self.target != "pixels":
            return self.out(tokens)
        image = self.out(tokens.transpose(1, 2).reshape(B, d, H, W))  # [B, C, H*s, W*s]
        return patchify(image, self.stride)


# The names configs use (MODEL.PRETEXT.HEAD).
PRETEXT_HEAD_REGISTRY._do_register("linear", LinearPretextHead)
PRETEXT_HEAD_REGISTRY._do_register("mlp_deconv", MlpDeconvPretextHead)

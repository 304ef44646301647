"""Position encodings of image features for DETR-family transformers.

Both modules take the padding mask of a batch, ``mask`` [B, H, W] (True = padded
pixel, as produced when images of different sizes are batched) and return an
embedding [B, 2 * num_pos_feats, H, W] that is added to the keys (and queries)
of the encoder and to the keys of the decoder's cross-attention.

Shapes are channel-first so that they line up with the backbone's feature map;
``Transformer`` flattens both the same way.
"""
import math
import torch
from torch import Tensor, nn

__all__ = ["PositionEmbeddingSine", "PositionEmbeddingLearned", "sine_embed_coordinates"]


class PositionEmbeddingSine(nn.Module):
    """DETR's fixed 2-D sine/cosine embedding.

    Positions are counted over *valid* pixels only: ``y`` (``x``) of a pixel is the
    number of valid pixels above (left of) it in its column (row), itself included,
    so padding on the right/bottom does not move the positions of real pixels. With
    ``normalize=True`` they are divided by the last count of each column (row),
    i.e. the image's height (width), plus ``eps``, and multiplied by ``scale``:
    positions then span (0, scale] whatever the image size.

    Each coordinate ``p`` is encoded with ``num_pos_feats`` channels, interleaved::

        channel 2i   = sin(p / temperature ** (2i / num_pos_feats))
        channel 2i+1 = cos(p / temperature ** (2i / num_pos_feats))

    The output is ``cat([y channels, x channels])``: [B, 2 * num_pos_feats, H, W],
    identical to DETR's ``PositionEmbeddingSine`` (so DETR checkpoints keep working).
    ``offset`` is added to the counts before normalising: Deformable DETR uses -0.5,
    the pixel centres.
    """

    eps = 1e-6

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: float = 10000,
        normalize: bool = True,
        scale: float = 2 * math.pi,
        offset: float = 0.0,
    ):
        super().__init__()
        if num_pos_feats % 2 != 0:
            raise ValueError(f"num_pos_feats must be even (sin/cos pairs), got {num_pos_feats}")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale
        self.offset = offset

    def forward(self, mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """mask: [B, H, W] bool, True = padded. Returns [B, 2*num_pos_feats, H, W] of ``dtype``.

        The arithmetic is done in float32 and cast to ``dtype`` at the end.
        """
        if mask.dim() != 3 or mask.dtype != torch.bool:
            raise ValueError(
                "mask must be a bool tensor [B, H, W] (True = padded), got "
                f"{mask.dtype} {tuple(mask.shape)}"
            )
        not_mask = ~mask
        y = not_mask.cumsum(1, dtype=torch.float32)  # [B, H, W]
        x = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            y = (y + self.offset) / (y[:, -1:, :] + self.eps) * self.scale
            x = (x + self.offset) / (x[:, :, -1:] + self.eps) * self.scale

        half = self.num_pos_feats // 2
        # temperature ** (2i / N) for i < N/2: the frequencies shared by each sin/cos pair
        dim_t = torch.arange(half, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * dim_t / self.num_pos_feats)
        dim_t = dim_t.view(1, half, 1, 1)

        def encode(p: Tensor) -> Tensor:
            p = p.unsqueeze(1) / dim_t  # [B, N/2, H, W]
            # [B, N/2, 2, H, W] -> [B, N, H, W]: channel 2i = sin, 2i+1 = cos
            return torch.stack((p.sin(), p.cos()), dim=2).flatten(1, 2)

        # built channel-first directly: contiguous, no permute
        return torch.cat((encode(y), encode(x)), dim=1).to(dtype)

    def extra_repr(self) -> str:
        return (
            f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, "
            f"normalize={self.normalize}, scale={self.scale}, offset={self.offset}"
        )


class PositionEmbeddingLearned(nn.Module):
    """DETR's learned absolute embedding: one table for rows, one for columns.

    The embedding of pixel (i, j) is ``cat([col_embed[j], row_embed[i]])`` (columns
    first, as in DETR, so its checkpoints load: ``row_embed.weight``,
    ``col_embed.weight``), [B, 2 * num_pos_feats, H, W]. Feature maps larger than
    ``max_size`` in either direction are an error. The mask only gives the shape
    and device; padding is not taken into account (as in DETR).
    """

    def __init__(self, num_pos_feats: int = 128, max_size: int = 50):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.max_size = max_size
        self.row_embed = nn.Embedding(max_size, num_pos_feats)
        self.col_embed = nn.Embedding(max_size, num_pos_feats)
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, mask: Tensor) -> Tensor:
        """mask: [B, H, W] (only its shape is used). Returns [B, 2*num_pos_feats, H, W].

        The batch dimension is an ``expand``ed view (no copy): do not write into it.
        """
        if mask.dim() != 3:
            raise ValueError(f"mask must be [B, H, W], got shape {tuple(mask.shape)}")
        b, h, w = mask.shape
        if h > self.max_size or w > self.max_size:
            raise ValueError(
                f"PositionEmbeddingLearned has {self.max_size} rows/columns (max_size), but the "
                f"feature map is {h}x{w}; raise max_size or use PositionEmbeddingSine"
            )
        n = self.num_pos_feats
        cols = self.col_embed.weight[:w].t().unsqueeze(1).expand(n, h, w)  # [N, H, W]
        rows = self.row_embed.weight[:h].t().unsqueeze(2).expand(n, h, w)  # [N, H, W]
        pos = torch.cat((cols, rows), dim=0)  # [2N, H, W]
        return pos.unsqueeze(0).expand(b, 2 * n, h, w)

    def extra_repr(self) -> str:
        return f"num_pos_feats={self.num_pos_feats}, max_size={self.max_size}"


def sine_embed_coordinates(
    coords: Tensor, num_pos_feats: int = 128, temperature: float = 10000, scale: float = 2 * math.pi
) -> Tensor:
    """Sine embedding of normalised coordinates (points, boxes) [..., K] ->
    [..., K * num_pos_feats]: each coordinate ``c`` (times ``scale``) is encoded as in
    :class:`PositionEmbeddingSine` (channel 2i sin, 2i+1 cos of ``c / temperature **
    (2i / num_pos_feats)``), coordinates concatenated in their given order. Deformable
    DETR's two-stage proposals and anchor queries (DAB-DETR) get their positional
    queries from it."""
    if num_pos_feats % 2 != 0:
        raise ValueError(f"num_pos_feats must be even (sin/cos pairs), got {num_pos_feats}")
    half = num_pos_feats // 2
    dim_t = torch.arange(half, dtype=torch.float32, device=coords.device)
    dim_t = temperature ** (2 * dim_t / num_pos_feats)
    p = coords.float().unsqueeze(-1) * scale / dim_t  # [..., K, N/2]
    return torch.stack((p.sin(), p.cos()), dim=-1).flatten(-3).to(coords.dtype)

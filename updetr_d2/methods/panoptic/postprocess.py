"""DETR's panoptic post-processing (Carion et al. 2020, ``PostProcessPanoptic`` in
facebookresearch/detr ``models/segmentation.py``) as pure functions on one image.

From the final decoder layer of one image:

1. :func:`select_queries` keeps the confident, non-"no-object" queries;
2. :func:`mask_logits_to_image` brings their mask logits from the padded batch canvas
   (at the mask head's stride) to the image;
3. :func:`panoptic_segmentation` gives each pixel to one query, merges duplicate stuff,
   drops tiny segments and returns the panoptic image and its ``segments_info``;
4. :func:`instance_masks` thresholds the same logits for COCO ``segm`` AP.

One fix to the original: masks are cropped to this image's cells *before* upsampling,
so the result does not depend on the batch padding (see :func:`mask_logits_to_image`).
"""
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["select_queries", "mask_logits_to_image", "panoptic_segmentation", "instance_masks"]


def select_queries(logits: Tensor, *, sigmoid: bool, threshold: float) -> Tuple[Tensor, Tensor, Tensor]:
    """The queries worth a segment, from one image's class logits.

    ``logits``: [Q, C+1] for softmax models (last column = no-object) or [Q, C] for
    sigmoid (focal) models. Returns ``(keep, scores, labels)``: bool [Q], float [Q] and
    long [Q], where ``scores``/``labels`` are the max probability and its class for every
    query (kept or not).
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be [Q, C(+1)]; got {tuple(logits.shape)}")
    if sigmoid:
        scores, labels = logits.sigmoid().max(-1)
        return scores > threshold, scores, labels
    no_object = logits.shape[-1] - 1
    # DETR's panoptic post-processing takes the max over ALL columns, no-object included
    # (unlike the box post-processor, which drops that column first): a query that is
    # "most likely nothing" yields no segment however confident it is about a class.
    scores, labels = logits.softmax(-1).max(-1)
    return (labels != no_object) & (scores > threshold), scores, labels


def mask_logits_to_image(
    mask_logits: Tensor,
    image_size: Tuple[int, int],
    stride: int,
    output_size: Optional[Tuple[int, int]] = None,
) -> Tensor:
    """Per-query mask logits [K, h, w] on the padded batch canvas at ``stride`` -> float
    logits [K, H, W] on the image (``image_size`` = (H, W), the processed size), or
    bilinearly resized to ``output_size`` when that is given and differs.

    The canvas may be larger than this image (batch padding). Only the
    ``ceil(H / stride) x ceil(W / stride)`` cells covering the image are used: they are
    upsampled by exactly ``stride`` (bilinear, align_corners=False) and cropped to
    (H, W). DETR instead resized the whole padded canvas to the image size, which shifts
    and stretches the masks of every image smaller than the batch's largest (detr issues
    #263 / #474); cropping first makes the result the same as with a batch of one.
    """
    if mask_logits.dim() != 3:
        raise ValueError(f"mask logits must be [K, h, w]; got {tuple(mask_logits.shape)}")
    H, W = (int(s) for s in image_size)
    rows, cols = -(-H // stride), -(-W // stride)
    if rows > mask_logits.shape[1] or cols > mask_logits.shape[2]:
        raise ValueError(
            f"a {H}x{W} image needs {rows}x{cols} cells at stride {stride}; "
            f"the canvas has {tuple(mask_logits.shape[1:])}"
        )
    out_h, out_w = (H, W) if output_size is None else (int(s) for s in output_size)
    if mask_logits.shape[0] == 0:  # interpolate rejects zero channels
        return mask_logits.new_zeros((0, out_h, out_w), dtype=torch.float32)
    x = mask_logits[None, :, :rows, :cols].float()
    if stride != 1:
        # bilinear with align_corners=False only replicates the border cell past the edge,
        # so no value from outside the cropped cells leaks into the image
        x = F.interpolate(x, size=(rows * stride, cols * stride), mode="bilinear", align_corners=False)
    x = x[..., :H, :W]
    if (out_h, out_w) != (H, W):
        x = F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False)
    return x[0]


def _nearest_resize(ids: Tensor, size: Tuple[int, int]) -> Tensor:
    """An integer map [H, W] resized to ``size`` by nearest neighbour on pixel centres
    (as PIL's NEAREST, which DETR used), by index arithmetic so the ids stay exact."""
    (H, W), (out_h, out_w) = ids.shape, size
    if (H, W) == (out_h, out_w):
        return ids

    def source(n_in: int, n_out: int) -> Tensor:
        # floor((j + 0.5) * n_in / n_out) in integers: a centre exactly on the edge of two
        # source pixels always takes the later one (in floats, as in PIL, it goes either way)
        return (torch.arange(n_out, device=ids.device) * 2 + 1) * n_in // (2 * n_out)

    return ids[source(H, out_h)[:, None], source(W, out_w)[None, :]]


def panoptic_segmentation(
    mask_logits: Tensor,
    scores: Tensor,
    labels: Tensor,
    is_thing: Tensor,
    *,
    image_size: Tuple[int, int],
    stride: int,
    output_size: Optional[Tuple[int, int]] = None,
    min_area: int = 4,
) -> Tuple[Tensor, List[Dict]]:
    """DETR's panoptic image for the kept queries of one image.

    ``mask_logits`` [K, h, w] (canvas grid, see :func:`mask_logits_to_image`),
    ``scores`` [K], ``labels`` [K] (contiguous class ids) of the kept queries, in query
    order; ``is_thing``: bool tensor [C], True for thing classes, indexed by contiguous id.
    ``output_size`` defaults to ``image_size``.

    Each pixel goes to the query with the highest mask logit; on the first pass only, the
    pixels of every stuff class predicted by several queries go to the first of them.
    Then, while some query covers at most ``min_area`` pixels (at the output size), those
    queries are dropped and the pixels re-assigned among the rest, without the stuff merge
    (as in DETR: the duplicates the merge emptied are dropped, and their pixels go to the
    best remaining query).

    Returns ``(panoptic_img, segments_info)``: int32 [H_out, W_out] with ids 1..n in the
    order of the surviving queries (0 = void, i.e. the whole image when none survives),
    and n dicts ``{"id", "category_id" (contiguous), "isthing", "score", "area"}``.
    """
    K = mask_logits.shape[0]
    if scores.shape != (K,) or labels.shape != (K,):
        raise ValueError(f"{K} masks need [K] scores and labels; got {tuple(scores.shape)}, {tuple(labels.shape)}")
    out_size = tuple(int(s) for s in (image_size if output_size is None else output_size))
    device = mask_logits.device
    if K == 0:
        return torch.zeros(out_size, dtype=torch.int32, device=device), []
    # softmax over queries would not change the argmax, so the logits are compared directly
    masks = mask_logits_to_image(mask_logits, image_size, stride)
    labels = labels.to(device=device, dtype=torch.long)
    thing = is_thing.to(device=device, dtype=torch.bool)[labels]

    alive = torch.ones(K, dtype=torch.bool, device=device)
    merge = True
    while True:
        if not bool(alive.any()):
            return torch.zeros(out_size, dtype=torch.int32, device=device), []
        idx = alive.nonzero()[:, 0]
        ids = idx[masks[idx].argmax(0)]  # [H, W] query index; ties go to the earlier query
        if merge:
            for label in labels[~thing].unique():
                same = (labels == label).nonzero()[:, 0]
                if len(same) > 1:
                    ids[torch.isin(ids, same)] = same[0]
            merge = False
        ids = _nearest_resize(ids, out_size)
        area = torch.bincount(ids.flatten(), minlength=K)
        # an empty segment is dropped even when min_area < 0: every entry must be in the image
        small = alive & ((area <= min_area) | (area == 0))
        if not bool(small.any()):
            break
        alive &= ~small

    # every pixel belongs to an alive query, so ranking them gives consecutive ids 1..n
    rank = torch.cumsum(alive.long(), 0)
    panoptic_img = rank[ids].to(torch.int32)
    segments_info = [
        {
            "id": i + 1,
            "category_id": int(labels[q]),
            "isthing": bool(thing[q]),
            "score": float(scores[q]),
            "area": int(area[q]),
        }
        for i, q in enumerate(alive.nonzero()[:, 0].tolist())
    ]
    return panoptic_img, segments_info


def instance_masks(
    mask_logits: Tensor, image_size: Tuple[int, int], stride: int, output_size: Optional[Tuple[int, int]] = None
) -> Tensor:
    """Binary masks [K, H_out, W_out] for COCO ``segm`` AP: logit > 0, i.e. sigmoid > 0.5."""
    return mask_logits_to_image(mask_logits, image_size, stride, output_size) > 0

"""DETR's mask losses on the matched queries: sigmoid focal loss (alpha 0.25, gamma 2)
averaged over each mask's pixels, and the dice loss, each summed over masks and divided
by ``num_boxes`` (the batch's object count averaged over workers), on the last decoder
layer only.

Where the original differs: it upsamples the stride-4 logits to the whole padded batch
canvas and compares them with zero-padded targets, so the padding of smaller images
counts as background pixels (a TODO in its code). Here each mask is scored on its own
image only: its logits are cropped to the cells covering the image, upsampled and cropped
exactly as at inference (:func:`.postprocess.mask_logits_to_image`), so the loss neither
depends on the other images of the batch nor trains the padding.
"""
from typing import Dict

import torch
from detectron2.structures import BitMasks, PolygonMasks
from detectron2.structures.masks import polygons_to_bitmask
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from ...modeling.criterion import LossTerm, matched_pred_index
from .postprocess import mask_logits_to_image

__all__ = ["MaskFocalDice", "dice_loss", "focal_mask_loss", "target_masks"]

FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0  # DETR's (and RetinaNet's) focal loss for masks


def dice_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Per mask ``1 - (2 sum(p t) + 1) / (sum p + sum t + 1)`` with ``p = sigmoid``: [N]."""
    p = logits.sigmoid().flatten(1)
    t = targets.flatten(1).to(p.dtype)
    return 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)


def focal_mask_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Per mask the pixel mean of the sigmoid focal loss: [N]."""
    loss = sigmoid_focal_loss(logits, targets.to(logits.dtype), alpha=FOCAL_ALPHA, gamma=FOCAL_GAMMA, reduction="none")
    return loss.flatten(1).mean(1)


def target_masks(masks, index: Tensor, size) -> Tensor:
    """The rows ``index`` of an image's ``gt_masks`` (``BitMasks``, ``PolygonMasks`` or a
    bool tensor [n, H, W]) as a bool tensor [k, H, W] of the image's size; polygons are
    rasterised only for these rows."""
    h, w = size
    if isinstance(masks, PolygonMasks):
        index = index.tolist()
        rows = [torch.from_numpy(polygons_to_bitmask(masks.polygons[i], h, w)) for i in index]
        return torch.stack(rows) if rows else torch.zeros(0, h, w, dtype=torch.bool)
    tensor = masks.tensor if isinstance(masks, BitMasks) else masks
    selected = tensor[index.to(tensor.device)]
    if tuple(selected.shape[-2:]) != (h, w):
        raise ValueError(f"gt_masks are {tuple(selected.shape[-2:])} but the image is {(h, w)}")
    return selected.to(torch.bool)


class MaskFocalDice(LossTerm):
    """``loss_mask`` (focal) and ``loss_dice`` of the matched queries' masks.

    Reads ``outputs["mask_queries"]`` ([B, Q, d], split with the other per-query
    tensors by loss routes) and ``outputs["mask_context"]`` (the mask head bound to this
    batch's features, see :class:`.plugin.MaskContext`); outputs without a context (e.g.
    denoising groups) have no mask loss.
    """

    name = "masks"
    apply_to_aux = False  # masks are predicted from the last decoder layer only

    def forward(self, outputs, targets, indices, num_boxes) -> Dict[str, Tensor]:
        context = outputs.get("mask_context")
        if context is None:
            return {}
        queries = outputs["mask_queries"]
        if any("masks" not in t for t in targets):
            raise ValueError(
                "the mask head needs instance masks (gt_masks) in every training input; train it on a "
                "panoptic dataset (INPUT.DATASET_MAPPER: PanopticDetrDatasetMapper) or an instance dataset "
                "with MODEL.MASK_ON True"
            )
        rows, query = matched_pred_index(indices, queries.device)
        if rows.numel() == 0:
            return {"loss_mask": queries.sum() * 0, "loss_dice": queries.sum() * 0}
        logits = context.predict(queries[rows, query], rows)
        focal, dice = [], []
        start = 0
        for i, (_, tgt) in enumerate(indices):
            n = len(tgt)
            if n == 0:
                continue
            size = context.image_sizes[i]
            pred = mask_logits_to_image(logits[start: start + n], size, context.stride)
            gt = target_masks(targets[i]["masks"], tgt, size).to(pred.device)
            focal.append(focal_mask_loss(pred, gt))
            dice.append(dice_loss(pred, gt))
            start += n
        return {"loss_mask": torch.cat(focal).sum() / num_boxes, "loss_dice": torch.cat(dice).sum() / num_boxes}

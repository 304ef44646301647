"""SimDETR stage D: self-training, picking the next round's targets from the detector's
own predictions.

SimDETR (Metaxas et al., arXiv 2307.15697) refines its pseudo-labels by self-training:
after a pretraining round, the detector's confident predictions on the unlabelled
images replace the proposals as the next round's targets. Only the paper's first page is
public, so the procedure here (class-agnostic NMS, a score threshold, a per-image cap
and a top-k fallback for images with too few confident boxes) and every default are
this project's proposals. Calibrate ``score_thresh`` on a sample of images so the
median number kept per image is roughly 10-50 (see :func:`round_statistics`): fewer
and the detector is taught that most objects are background; more and it relearns its
own duplicates and noise.
"""
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import nms

__all__ = ["SelfTrainingParams", "per_query_scores", "round_statistics", "select_targets"]


@dataclass(frozen=True)
class SelfTrainingParams:
    """Target selection for self-training rounds (proposed defaults, none from the paper).

    ``rounds``: self-training rounds after the first pretraining (0 disables them).
    ``score_thresh``: keep predictions scoring at least this; calibrate it so the median
    kept per image is 10-50. ``nms_iou``: class-agnostic NMS threshold (a box is one
    object whatever its pseudo-class). ``max_dets``: per-image cap. ``fallback_topk``,
    ``min_targets``: an image with fewer than ``min_targets`` boxes above the threshold
    gets its top ``fallback_topk`` NMS survivors instead, so no image becomes all
    background (0 disables the fallback).
    """

    rounds: int = 1
    score_thresh: float = 0.3
    nms_iou: float = 0.7
    max_dets: int = 50
    fallback_topk: int = 5
    min_targets: int = 2

    def __post_init__(self):
        def integer(name, low):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low:
                raise ValueError(f"SelfTrainingParams.{name} must be an integer >= {low}, got {v!r}")

        integer("rounds", 0)
        integer("max_dets", 1)
        integer("fallback_topk", 0)
        integer("min_targets", 0)
        if not 0.0 <= self.score_thresh <= 1.0:
            raise ValueError(f"SelfTrainingParams.score_thresh must be in [0, 1], got {self.score_thresh!r}")
        if not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(f"SelfTrainingParams.nms_iou must be in (0, 1], got {self.nms_iou!r}")
        if self.fallback_topk > self.max_dets:
            raise ValueError(
                f"SelfTrainingParams.fallback_topk ({self.fallback_topk}) must not exceed "
                f"max_dets ({self.max_dets})"
            )
        if self.min_targets > self.max_dets:
            raise ValueError(
                f"SelfTrainingParams.min_targets ({self.min_targets}) must not exceed "
                f"max_dets ({self.max_dets})"
            )


def per_query_scores(logits: Tensor, sigmoid: bool) -> Tuple[Tensor, Tensor]:
    """(score, class) per query from class logits [..., Q, C].

    ``sigmoid=True`` (focal-loss heads, e.g. Deformable DETR): max over C of the
    sigmoid, and its argmax. ``sigmoid=False`` (DETR): the last column is "no object";
    softmax over all columns (no-object included, so a query confident in no-object
    scores low), then max and argmax over the real classes only.
    """
    if logits.dim() < 1 or logits.shape[-1] < (1 if sigmoid else 2):
        raise ValueError(f"logits need a class dimension (>= 2 columns for softmax), got {tuple(logits.shape)}")
    if sigmoid:
        probs = logits.sigmoid()
    else:
        probs = logits.softmax(dim=-1)[..., :-1]
    scores, classes = probs.max(dim=-1)
    return scores, classes


def select_targets(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    params: SelfTrainingParams,
    *,
    return_fallback: bool = False,
) -> Union[Tensor, Tuple[Tensor, bool]]:
    """Indices (int64, descending score) of the predictions to keep as next-round targets.

    ``boxes`` [N, 4] xyxy, ``scores`` [N], ``classes`` [N] (classes are not used for the
    choice: NMS is class-agnostic, but are checked for shape). Zero-area or non-finite
    boxes are dropped first; then NMS at ``nms_iou``; then score >= ``score_thresh``,
    capped at ``max_dets``. If fewer than ``min_targets`` survive, the top
    ``fallback_topk`` NMS survivors are kept instead. With ``return_fallback=True``
    returns ``(indices, fell_back)`` for :func:`round_statistics`.
    """
    ok = boxes.dim() == 2 and boxes.shape[1] == 4
    if not ok or scores.shape != (boxes.shape[0],) or classes.shape != (boxes.shape[0],):
        raise ValueError(
            f"expected boxes [N, 4], scores [N], classes [N]; got {tuple(boxes.shape)}, "
            f"{tuple(scores.shape)}, {tuple(classes.shape)}"
        )
    device = boxes.device
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    if boxes.shape[0] == 0:
        return (empty, False) if return_fallback else empty

    # float32 for torchvision's NMS (no half-precision kernel on CPU).
    b, s = boxes.detach().float(), scores.detach().float()
    valid = torch.isfinite(b).all(dim=1) & torch.isfinite(s) & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    candidates = torch.nonzero(valid).flatten()
    if candidates.numel() == 0:
        return (empty, False) if return_fallback else empty

    survivors = candidates[nms(b[candidates], s[candidates], params.nms_iou)]  # by descending score
    keep = survivors[s[survivors] >= params.score_thresh][: params.max_dets]
    fell_back = False
    if keep.numel() < params.min_targets and params.fallback_topk > 0:
        # Too few confident boxes: an image taught as (almost) all background would push
        # the detector to suppress real objects, so keep its best guesses instead.
        keep = survivors[: params.fallback_topk]
        fell_back = True
    keep = keep.to(torch.int64)
    return (keep, fell_back) if return_fallback else keep


def round_statistics(kept_counts: Sequence[int], fell_back: Optional[Sequence[bool]] = None) -> Dict[str, float]:
    """Summary of one self-training round, to calibrate ``score_thresh`` (aim: median
    kept per image 10-50) and watch the fallback rate.

    ``kept_counts``: number of targets kept per image; ``fell_back``: optional per-image
    flags from ``select_targets(..., return_fallback=True)``. Returns ``images``,
    ``total``, ``median``, ``mean``, ``min``, ``max``, ``empty_fraction`` (images with no
    target) and, when flags are given, ``fallback_fraction``.
    """
    counts = np.asarray(list(kept_counts), dtype=np.float64)
    if counts.size == 0:
        raise ValueError("round_statistics needs at least one image")
    if (counts < 0).any():
        raise ValueError("kept_counts must be >= 0")
    stats = {
        "images": float(counts.size),
        "total": float(counts.sum()),
        "median": float(np.median(counts)),
        "mean": float(counts.mean()),
        "min": float(counts.min()),
        "max": float(counts.max()),
        "empty_fraction": float((counts == 0).mean()),
    }
    if fell_back is not None:
        flags = np.asarray(list(fell_back), dtype=bool)
        if flags.size != counts.size:
            raise ValueError(f"{counts.size} kept counts but {flags.size} fallback flags")
        stats["fallback_fraction"] = float(flags.mean())
    return stats

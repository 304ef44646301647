"""The ``EncoderPretext`` plug-in: a self-supervised pretext on the encoder memory, as
encoder-only pretraining or next to the detection loss (multi-task).

Two views of each image (the scheme of the paper's code): the detector's own pass on the
clean image gives the detection loss, and a second backbone + encoder pass on the
corrupted view (``"pretext"``, made by :class:`~.mapper.PretextDatasetMapper` from the
same augmented image) gives the pretext loss; an encoder-only model makes only the
second. A cheaper single pass is not offered: the detection loss would then be computed
on corrupted images, and stacking both views in one batch costs the same arithmetic.

The second pass draws its dropout from its own random stream (seeded per step), and the
heads are initialised from their own seed, so the detector's random draws are those of
the plain detector; with ``weight`` 0 the pretext loss is measured (logged) but not
trained, and training is numerically the plain detector's.

Targets come from the clean image cut to whole patches (normalised as the model
normalises): pixels of each token's block, tokenizer codes of its patch, or the source
position of its patch (jigsaw); the loss mask keeps the masked / moved tokens
(``loss_on_transformed``) or all tokens of the image, never padding.
"""
from contextlib import contextmanager
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils.events import get_event_storage
from torch import Tensor, nn

from ...modeling.plugins import PLUGIN_REGISTRY, DetectorPlugin
from .config import TASKS
from .geometry import expand_grid, patchify
from .heads import PRETEXT_HEAD_REGISTRY
from .tokenizer import TOKENIZER_REGISTRY, image_patches

__all__ = ["EncoderPretext", "loss_mask"]


def loss_mask(kind: str, source: Tensor, transformed: Tensor, loss_on_transformed: bool,
              compat_jigsaw_mask_bug: bool = False) -> Tensor:
    """bool [h, w] over the patch grid: which patches' tokens enter the loss.

    Reconstruction ("none") transforms nothing, so it always scores every patch. The
    original jigsaw code scores the patches that did NOT move (``patch_info == arange``),
    against its own comment; ``compat_jigsaw_mask_bug`` reproduces that."""
    if kind == "none" or not loss_on_transformed:
        return torch.ones_like(transformed, dtype=torch.bool)
    if kind == "jigsaw" and compat_jigsaw_mask_bug:
        return source == torch.arange(source.numel(), device=source.device).view_as(source)
    return transformed.bool()


@contextmanager
def separate_random_stream(seed: int, device: torch.device):
    """Run a block on its own seeded torch random stream, leaving the global one as it was."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@PLUGIN_REGISTRY.register()
class EncoderPretext(DetectorPlugin):
    """Reconstruction, masked image modelling or jigsaw on the tokens of the encoder
    levels ``levels`` (one head per level; ``strides`` are those levels' strides)."""

    @configurable
    def __init__(self, *, task: str, hidden_dim: int, strides: Sequence[int], levels: Sequence[int] = (0,),
                 patch_size: int = 32, head: str = "linear", weight: float = 1.0, loss_on_transformed: bool = True,
                 compat_jigsaw_mask_bug: bool = False, tokenizer: Optional[nn.Module] = None, seed: int = 0):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"pretext task {task!r}; choose one of {sorted(TASKS)}")
        if len(strides) != len(levels):
            raise ValueError(f"one stride per level read: levels {list(levels)}, strides {list(strides)}")
        for s in strides:
            if patch_size % s:
                raise ValueError(f"the pretext patch side ({patch_size} px, MODEL.PRETEXT.PATCH_SIZE) must be a "
                                 f"multiple of the stride of every level it reads; strides {list(strides)}")
        self.task = task
        self.kind, self.target = TASKS[task]
        if self.target == "codes" and tokenizer is None:
            raise ValueError(f"task {task!r} needs a tokenizer (MODEL.PRETEXT.CODEBOOK)")
        if tokenizer is not None and tokenizer.patch_size != patch_size:
            raise ValueError(f"the tokenizer codes {tokenizer.patch_size}-px patches; the pretext uses {patch_size}")
        self.levels, self.strides, self.patch_size = list(levels), list(strides), patch_size
        self.weight, self.loss_on_transformed = weight, loss_on_transformed
        self.compat_jigsaw_mask_bug = compat_jigsaw_mask_bug
        self.tokenizer = tokenizer
        self.seed = seed
        self._calls = 0
        head_cls = PRETEXT_HEAD_REGISTRY.get(head)
        num_codes = tokenizer.num_codes if tokenizer is not None else 0
        # Own seed: building the heads must not shift the detector's initialisation.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.heads = nn.ModuleList(head_cls(self.target, hidden_dim, s, num_codes) for s in strides)
        if weight == 0:
            # Measured, not trained: no parameter for the optimiser, none unused under DDP.
            self.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg):
        p = cfg.MODEL.PRETEXT
        arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
        all_strides = arch.memory_strides_from_config(cfg)
        bad = [lvl for lvl in p.LEVELS if not 0 <= lvl < len(all_strides)]
        if bad:
            raise ValueError(f"MODEL.PRETEXT.LEVELS={list(p.LEVELS)}: the encoder memory of "
                             f"{cfg.MODEL.META_ARCHITECTURE} has levels 0..{len(all_strides) - 1}")
        tokenizer = None
        if TASKS.get(p.TASK, ("", ""))[1] == "codes":
            tokenizer = TOKENIZER_REGISTRY.get(p.TOKENIZER)(
                codebook_path=p.CODEBOOK, patch_size=p.PATCH_SIZE,
                pixel_mean=cfg.MODEL.PIXEL_MEAN, pixel_std=cfg.MODEL.PIXEL_STD,
            )
        return {
            "task": p.TASK, "hidden_dim": cfg.MODEL.DETR.HIDDEN_DIM, "levels": list(p.LEVELS),
            "strides": [all_strides[lvl] for lvl in p.LEVELS], "patch_size": p.PATCH_SIZE, "head": p.HEAD,
            "weight": p.WEIGHT, "loss_on_transformed": p.LOSS_ON_TRANSFORMED,
            "compat_jigsaw_mask_bug": p.COMPAT_JIGSAW_MASK_BUG, "tokenizer": tokenizer, "seed": cfg.SEED,
        }

    # --- the pass on the corrupted view ---------------------------------------------
    def _step_seed(self) -> int:
        """Seed of this step's pretext pass: from the training iteration when there is
        one (so a resumed run draws what the uninterrupted one did)."""
        try:
            step = get_event_storage().iter
        except AssertionError:
            step = self._calls
        self._calls += 1
        return (max(self.seed, 0) * 1_000_003 + int(step)) % (2 ** 63)

    def after_encode(self, model: nn.Module, state) -> None:
        if not model.training:
            return  # evaluation detects; held-out pretext losses: held_out_loss
        # Weight 0 measures the pretext without training it: no graph, so the pretext
        # head has no gradient at all and full-model gradient clipping sums exactly the
        # plain detector's gradients.
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.weight != 0):
            state.extras["pretext"] = self._run(model, state.batched_inputs)

    @torch.no_grad()
    def held_out_loss(self, model: nn.Module, inputs: List[Dict]) -> float:
        """The pretext loss on inputs not trained on (mapped by PretextDatasetMapper), with
        the model as it is (call ``model.eval()`` first for a dropout-free value)."""
        return float(self.pretext_loss(model, inputs, *self._run(model, inputs)))

    def _run(self, model: nn.Module, inputs: List[Dict]):
        """(per-level head outputs, per-level map sizes) of the pass on the corrupted view."""
        if not all("pretext" in x for x in inputs):
            raise ValueError("EncoderPretext needs a 'pretext' view in every training input: use "
                             "INPUT.DATASET_MAPPER 'PretextDatasetMapper' (lazy: the PretextDatasetMapper)")
        strides = model.memory_strides
        for level, stride in zip(self.levels, self.strides):
            if level >= len(strides) or strides[level] != stride:
                raise ValueError(f"EncoderPretext was built for level {level} at stride {stride}; the model's "
                                 f"memory strides are {strides}")
        with separate_random_stream(self._step_seed(), model.device):
            view_state = model.encode_images([x["pretext"]["image"] for x in inputs])
        maps = view_state.memory.level_maps()
        return ([head(maps[lvl]) for head, lvl in zip(self.heads, self.levels)],
                [tuple(maps[lvl].shape[-2:]) for lvl in self.levels])

    # --- targets and loss ---------------------------------------------------------
    def losses(self, model: nn.Module, state) -> Dict[str, Tensor]:
        if "pretext" not in state.extras:
            return {}
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.weight != 0):
            loss = self.pretext_loss(model, state.batched_inputs, *state.extras.pop("pretext"))
        return {f"loss_{self.task}": self.weight * loss}

    def pretext_loss(self, model: nn.Module, inputs: List[Dict], outputs: List[Tensor], map_shapes) -> Tensor:
        """The loss averaged over the selected tokens of the batch, per level, then over
        the levels. Each image's targets and mask are made once, on its patch grid, and
        spread over every level's tokens."""
        device = outputs[0].device
        per_level: List[List[Tensor]] = [[] for _ in self.heads]
        for b, x in enumerate(inputs):
            view = x["pretext"]
            grid = tuple(view["source"].shape)
            mask = self._patch_mask(view, device)
            target = self._patch_targets(model, x, grid, device)
            for parts, head, out, stride, (H, W) in zip(per_level, self.heads, outputs, self.strides, map_shapes):
                f = self.patch_size // stride
                h, w = grid[0] * f, grid[1] * f
                if h > H or w > W:
                    raise ValueError(f"a {grid[0]}x{grid[1]}-patch view needs {h}x{w} tokens at stride {stride}; "
                                     f"the encoder level has {H}x{W}")
                pred = out[b].view(H, W, -1)[:h, :w].reshape(h * w, -1).float()
                level_target = patchify(target, stride) if self.target == "pixels" else expand_grid(target, f).reshape(-1)
                parts.append(self._token_losses(head, pred, level_target, grid)[expand_grid(mask, f).reshape(-1)])
        level_losses = []
        for out, parts in zip(outputs, per_level):
            selected = torch.cat(parts)
            level_losses.append(selected.mean() if selected.numel() else out.sum() * 0.0)
        return torch.stack(level_losses).mean()

    def _patch_mask(self, view: Dict, device) -> Tensor:
        return loss_mask(self.kind, view["source"].to(device), view["transformed"].to(device),
                         self.loss_on_transformed, self.compat_jigsaw_mask_bug)

    def _patch_targets(self, model, x: Dict, grid, device) -> Tensor:
        """What one image's tokens predict: its clean pixels cut to the view's whole
        patches and normalised ([C, hp*P, wp*P], pixel targets), or per patch [hp, wp] the
        tokenizer's code (codes) or the source position (jigsaw positions)."""
        if self.target == "positions":
            return x["pretext"]["source"].to(device)
        hp, wp = grid
        P = self.patch_size
        image = x["image"].to(device)[:, : hp * P, : wp * P].float()
        clean = (image - model.pixel_mean) / model.pixel_std
        if self.target == "pixels":
            return clean
        return self.tokenizer(image_patches(clean, P)).view(hp, wp)

    def _token_losses(self, head, pred: Tensor, target: Tensor, grid) -> Tensor:
        """Per-token loss [n]: mean L1 over the block's values, or cross-entropy."""
        if self.target == "pixels":
            return (pred - target).abs().mean(-1)
        if self.target == "positions":
            pred = pred @ head.position_keys(grid).float().t()  # [n, hp*wp]
        return F.cross_entropy(pred, target, reduction="none")

"""UP-DETR pretraining as a Detectron2 meta-architecture: DETR whose queries are
conditioned on random patches of the image, trained to find those patches."""
from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ...layers.mlp import MLP
from ...modeling.meta_arch.base import DecoderStates, DetectorState
from ...modeling.meta_arch.detr import Detr, build_detr_criterion
from ...modeling.queries import QueryBundle
from .losses import FeatureReconstruction
from .queries import PatchQueries

__all__ = ["UPDETR", "UpDetr"]


@META_ARCH_REGISTRY.register()
class UpDetr(Detr):
    """Random query patch detection (one "patch" class).

    Each input carries ``patches`` ([M, 3, S, S], from ``QueryPatchDatasetMapper``) and,
    in training, ``instances`` whose i-th box is where patch i was cut. The patches go
    through the same backbone, are global-average-pooled, projected and added to the
    object queries (``PatchQueries``). Losses: DETR's (patch vs no-object, L1, GIoU)
    through the shared matcher and criterion, plus feature reconstruction. With
    ``freeze_backbone`` (the paper's prerequisite) the CNN gets no gradient and keeps
    its normalisation statistics.

    The queries are grouped for the number of patches the model is built with
    (``INPUT.QUERY_PATCH.NUM_PATCHES``); an input with fewer patches is decoded with the
    queries of the first groups only (``PatchQueries``), as the original at test time.

    At inference each decoded query gives a box, the probability that it is its patch
    (``scores``) and, in ``pred_classes``, the index of the patch its group was given.
    """

    @configurable
    def __init__(self, *, freeze_backbone: bool = True, feature_reconstruction: bool = True, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(self.query_generator, PatchQueries):
            raise TypeError(f"UpDetr needs PatchQueries as its query generator, got {type(self.query_generator)}")
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
            self.backbone.eval()
        hidden_dim = self.heads.class_embed.in_features
        feature_dim = self.query_generator.patch2query.in_features
        self.feature_align = MLP(hidden_dim, hidden_dim, feature_dim, 2) if feature_reconstruction else None

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        u = cfg.MODEL.UPDETR
        extra_terms, extra_weights = [], {}
        if u.FEATURE_RECONSTRUCTION:
            extra_terms.append(FeatureReconstruction())
            extra_weights["loss_feature"] = u.RECONSTRUCTION_WEIGHT
        ret.update(
            num_classes=1,
            query_generator=PatchQueries(cfg, patch_feature_dim=ret["backbone"].num_channels[-1]),
            criterion=build_detr_criterion(cfg, num_classes=1, extra_terms=extra_terms, extra_weights=extra_weights),
            freeze_backbone=u.FREEZE_BACKBONE,
            feature_reconstruction=u.FEATURE_RECONSTRUCTION,
        )
        return ret

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()  # no BatchNorm statistics update either
        return self

    def patch_features(self, batched_inputs: List[Dict]) -> torch.Tensor:
        """Backbone features of every input's patches, global-average-pooled: ``[B, M, C]``."""
        if any("patches" not in x for x in batched_inputs):
            raise ValueError(
                "UpDetr needs 'patches' in every input: use INPUT.DATASET_MAPPER "
                "'QueryPatchDatasetMapper' (or give query crops for one-shot detection)"
            )
        counts = {x["patches"].shape[0] for x in batched_inputs}
        if len(counts) != 1:
            raise ValueError(f"every image of a batch needs the same number of patches, got {sorted(counts)}")
        patches = torch.stack([x["patches"] for x in batched_inputs]).to(self.device)
        batch, num_patches = patches.shape[:2]
        patches = (patches.flatten(0, 1).float() - self.pixel_mean) / self.pixel_std
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            features = self.backbone.backbone(patches)[self.backbone.in_features[-1]]
        return features.mean(dim=(2, 3)).view(batch, num_patches, -1)

    def build_queries(self, state: DetectorState) -> QueryBundle:
        features = self.patch_features(state.batched_inputs)
        queries = self.query_generator(features)
        queries.meta["patch_features"] = features
        return queries

    def predict(self, state: DetectorState, decoded: DecoderStates, queries: QueryBundle) -> Dict:
        outputs = super().predict(state, decoded, queries)
        if self.feature_align is not None and self.training:
            features = self.feature_align(decoded.hs)
            outputs["pred_features"] = features[-1]
            for aux, layer_features in zip(outputs.get("aux_outputs", []), features[:-1]):
                aux["pred_features"] = layer_features
        return outputs

    def losses(self, state: DetectorState) -> Dict:
        targets = state.targets
        if self.feature_align is not None:
            patch_features = state.queries.meta["patch_features"]
            for target, features in zip(targets, patch_features):
                if len(target["boxes"]) != len(features):
                    raise ValueError(
                        f"an input has {len(target['boxes'])} patch boxes but {len(features)} patches; "
                        "for feature reconstruction box i must be where patch i was cut"
                    )
                target["features"] = features
        # Without reconstruction the boxes need not be the patches themselves (one-shot
        # detection: one query crop, every object of its class as a target).
        return super().losses(state)

    def inference(self, state: DetectorState) -> List[Dict]:
        outputs = state.outputs
        scores = outputs["pred_logits"].softmax(-1)[..., 0]
        groups = state.queries.meta["query_groups"].expand_as(scores)
        return self.detections(outputs["pred_boxes"], scores, groups, state.batched_inputs, state.images)


# The name configs used before the class names were made consistent (``Detr``, ``UpDetr``).
UPDETR = UpDetr
META_ARCH_REGISTRY._do_register("UPDETR", UpDetr)

"""What random query patch detection adds to any set-prediction detector, whatever its
decoder: the frozen backbone, the patch features, the patch-conditioned queries, the
feature head and its loss, and one detection per query labelled with its patch. The
meta-architectures (``UpDetr`` on DETR, ``DeformableUpDetr`` on Deformable DETR) put it
before their detector in the bases, and say how the detector scores its one class."""
from typing import Dict, List, Tuple

import torch
from detectron2.config import configurable
from torch import Tensor

from ...layers.mlp import MLP
from ...modeling.meta_arch.base import DecoderStates, DetectorState
from ...modeling.queries import QueryBundle
from .losses import FeatureReconstruction
from .queries import PatchQueries

__all__ = ["QueryPatchPretraining"]


class QueryPatchPretraining:
    """Mixin for ``class X(QueryPatchPretraining, SomeDetector)``.

    Each input carries ``patches`` ([M, 3, S, S], from ``QueryPatchDatasetMapper``) and,
    in training, ``instances`` whose i-th box is where patch i was cut. The patches go
    through the detector's backbone, are global-average-pooled from the last level it
    reads, and condition the queries (a ``PatchQueries``, which also groups them). With
    ``freeze_backbone`` (the paper's prerequisite) the CNN gets no gradient and keeps its
    normalisation statistics.

    The detector's ``from_config`` gives ``num_classes=1``, a ``PatchQueries`` and its
    criterion plus :meth:`reconstruction_terms`; it defines :meth:`patch_scores`.
    """

    # configurable: the subclasses' from_config builds it from a yaml config.
    @configurable
    def __init__(self, *, freeze_backbone: bool = True, feature_reconstruction: bool = True, **kwargs):
        super().__init__(**kwargs)
        name = type(self).__name__
        if not isinstance(self.query_generator, PatchQueries):
            raise TypeError(f"{name} needs PatchQueries as its query generator, got {type(self.query_generator)}")
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
            self.backbone.eval()
        hidden_dim = self.query_generator.patch2query.out_features
        feature_dim = self.query_generator.patch2query.in_features
        self.feature_align = MLP(hidden_dim, hidden_dim, feature_dim, 2) if feature_reconstruction else None

    @staticmethod
    def reconstruction_terms(cfg) -> Tuple[List, Dict[str, float]]:
        """(extra loss terms, their weights) for the detector's criterion."""
        u = cfg.MODEL.UPDETR
        if not u.FEATURE_RECONSTRUCTION:
            return [], {}
        return [FeatureReconstruction()], {"loss_feature": u.RECONSTRUCTION_WEIGHT}

    @staticmethod
    def pretraining_options(cfg) -> Dict:
        u = cfg.MODEL.UPDETR
        return {"freeze_backbone": u.FREEZE_BACKBONE, "feature_reconstruction": u.FEATURE_RECONSTRUCTION}

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()  # no BatchNorm statistics update either
        return self

    def patch_features(self, batched_inputs: List[Dict]) -> Tensor:
        """Backbone features of every input's patches, global-average-pooled: ``[B, M, C]``,
        from the last backbone level the detector reads (``backbone.in_features[-1]``)."""
        if any("patches" not in x for x in batched_inputs):
            raise ValueError(
                f"{type(self).__name__} needs 'patches' in every input: use INPUT.DATASET_MAPPER "
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

    def patch_scores(self, pred_logits: Tensor) -> Tensor:
        """[B, Q] probability that each query found its patch, from the class logits."""
        raise NotImplementedError

    def inference(self, state: DetectorState) -> List[Dict]:
        """One detection per decoded query: its box, :meth:`patch_scores` and, in
        ``pred_classes``, the index of the patch its group was given."""
        outputs = state.outputs
        scores = self.patch_scores(outputs["pred_logits"])
        groups = state.queries.meta["query_groups"].expand_as(scores)
        return self.detections(outputs["pred_boxes"], scores, groups, state.batched_inputs, state.images)

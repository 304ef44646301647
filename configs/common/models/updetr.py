"""UP-DETR pretraining as a LazyConfig edit of a DETR model node (projects/UPDETR/configs)."""
from detectron2.config import LazyCall as L

from updetr_d2.methods.updetr import FeatureReconstruction, PatchQueries, UpDetr

# The patch count lives with the data (as INPUT.QUERY_PATCH.NUM_PATCHES in yaml): the model
# reads it from the train mapper, so an override of that one key reaches both.
MAPPER_NUM_PATCHES = "${dataloader.train.mapper.num_patches}"


def add_updetr(model, patch_feature_dim: int, num_patches=MAPPER_NUM_PATCHES):
    """Turn a DETR node into UP-DETR pretraining on a frozen backbone: one "patch" class (the
    no-object class is added by the heads), the object queries replaced by as many patch
    queries grouped for ``num_patches`` patches (default: the train mapper's count, by
    interpolation; give an int for a config without that mapper), ``patch_feature_dim``
    (channels of the backbone's last feature map) and the feature-reconstruction loss. A
    function, so that the config files that use it get no extra top-level node."""
    model._target_ = UpDetr
    model.num_classes = 1
    model.query_generator = L(PatchQueries)(
        num_queries=model.query_generator.num_queries, hidden_dim="${..hidden_dim}",
        patch_feature_dim=patch_feature_dim, num_patches=num_patches, query_dropout=0.1,
    )
    model.criterion.loss_terms.append(L(FeatureReconstruction)())
    model.criterion.weight_dict["loss_feature"] = 1.0
    model.freeze_backbone = True
    model.feature_reconstruction = True
    return model

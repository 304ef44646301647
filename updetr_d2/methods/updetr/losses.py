"""UP-DETR's feature reconstruction loss, a loss term of the shared SetCriterion."""
import torch.nn.functional as F

from ...modeling.criterion import LossTerm, matched_pred_index, matched_targets


class FeatureReconstruction(LossTerm):
    """``loss_feature``: for each matched (query, patch) pair, the squared distance between
    the L2-normalised predicted feature and the L2-normalised backbone feature of the
    MATCHED patch (2 - 2 cos), summed over pairs / num_boxes.

    Needs ``outputs["pred_features"]`` [B, Q, C] and ``targets[i]["features"]`` [M, C].
    The target carries no gradient: the paper's code relies on a frozen CNN for that;
    we stop it explicitly so an unfrozen backbone is not pulled towards its predictions.
    """

    name = "feature_reconstruction"

    def forward(self, outputs, targets, indices, num_boxes):
        pred = outputs["pred_features"]
        src = pred[matched_pred_index(indices, pred.device)]
        tgt = matched_targets(targets, indices, "features", pred.device).detach().to(src.dtype)
        loss = (F.normalize(src, dim=-1) - F.normalize(tgt, dim=-1)).pow(2).sum(-1)
        return {"loss_feature": loss.sum() / num_boxes}

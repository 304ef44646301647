"""Pick Detectron2's evaluator from a dataset's ``evaluator_type`` metadata, with the
COCO ground truth under the training side's box rule."""
import logging
import os

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, DatasetEvaluators

from ..data.checks import filter_coco_ground_truth

logger = logging.getLogger("updetr_d2")


def apply_box_rule(evaluator):
    """The COCO ground truth of ``evaluator`` (a ``COCOEvaluator``, or several in a
    ``DatasetEvaluators``) without the degenerate boxes the training mappers drop, and
    with boxes clipped to their image as training and the predictions are (see
    :mod:`updetr_d2.data.checks.boxes`). Returns the evaluator."""
    for inner in getattr(evaluator, "_evaluators", [evaluator]):
        coco_api = getattr(inner, "_coco_api", None) if isinstance(inner, COCOEvaluator) else None
        if coco_api is None:
            continue
        dropped, clipped = filter_coco_ground_truth(coco_api)
        if dropped:
            shown = ", ".join(f"{f} (annotation id {i}: {why})" for i, f, why in dropped[:5])
            logger.warning("Evaluation of '%s': %d degenerate ground-truth boxes dropped, as in training: %s%s",
                           inner._metadata.name, len(dropped), shown, ", ..." if len(dropped) > 5 else "")
        if clipped:
            logger.info("Evaluation of '%s': %d ground-truth boxes clipped to their image",
                        inner._metadata.name, clipped)
    return evaluator


def build_evaluator(dataset_name: str, output_dir: str = None):
    """The evaluator Detectron2 would use for ``dataset_name``, for both config routes."""
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if output_dir is not None:
        output_dir = os.path.join(output_dir, "inference", dataset_name)
    if evaluator_type == "coco":
        return apply_box_rule(COCOEvaluator(dataset_name, output_dir=output_dir))
    if evaluator_type == "coco_panoptic_seg":
        return DatasetEvaluators([COCOPanopticEvaluator(dataset_name, output_dir)])
    raise ValueError(
        f"Dataset '{dataset_name}' has evaluator_type={evaluator_type!r} in its metadata; "
        "updetr_d2 evaluates 'coco' and 'coco_panoptic_seg' datasets. Set DATASETS.TEST "
        "to datasets with labels (an unlabeled folder cannot be evaluated)."
    )

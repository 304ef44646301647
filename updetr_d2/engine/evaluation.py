"""Pick Detectron2's evaluator from a dataset's ``evaluator_type`` metadata."""
import os

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, DatasetEvaluators


def build_evaluator(dataset_name: str, output_dir: str = None):
    """The evaluator Detectron2 would use for ``dataset_name``, for both config routes."""
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if output_dir is not None:
        output_dir = os.path.join(output_dir, "inference", dataset_name)
    if evaluator_type == "coco":
        return COCOEvaluator(dataset_name, output_dir=output_dir)
    if evaluator_type == "coco_panoptic_seg":
        return DatasetEvaluators([COCOPanopticEvaluator(dataset_name, output_dir)])
    raise ValueError(
        f"Dataset '{dataset_name}' has evaluator_type={evaluator_type!r} in its metadata; "
        "updetr_d2 evaluates 'coco' and 'coco_panoptic_seg' datasets. Set DATASETS.TEST "
        "to datasets with labels (an unlabeled folder cannot be evaluated)."
    )

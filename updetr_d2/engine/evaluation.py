"""Pick Detectron2's evaluator from a dataset's ``evaluator_type`` metadata, with the
COCO ground truth under the training side's box rule.

A panoptic dataset (``coco_panoptic_seg``) is scored twice: PQ by Detectron2's
``COCOPanopticEvaluator`` when the model gives ``"panoptic_seg"``, and box (and, with
``pred_masks``, segm) AP of its thing classes by ``COCOEvaluator`` on the dataset's
instances json. A detector trained on panoptic targets also detects stuff classes, which
have no instance ground truth: they are left out of the AP, and a model without panoptic
output (the box stage of the two-stage recipe) is scored by its AP alone.
"""
import logging
import os
from collections import OrderedDict

import torch
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, DatasetEvaluator, DatasetEvaluators
from detectron2.utils import comm

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
        evaluators = [PanopticQualityEvaluator(dataset_name, output_dir)]
        if MetadataCatalog.get(dataset_name).get("json_file", None):
            evaluators.append(apply_box_rule(ThingInstancesEvaluator(dataset_name, output_dir=output_dir)))
        return DatasetEvaluators(evaluators)
    raise ValueError(
        f"Dataset '{dataset_name}' has evaluator_type={evaluator_type!r} in its metadata; "
        "updetr_d2 evaluates 'coco' and 'coco_panoptic_seg' datasets. Set DATASETS.TEST "
        "to datasets with labels (an unlabeled folder cannot be evaluated)."
    )


class PanopticQualityEvaluator(DatasetEvaluator):
    """Detectron2's ``COCOPanopticEvaluator`` for models that give ``"panoptic_seg"``;
    for one that does not (a detector's box stage), no PQ and one log line instead of a
    KeyError."""

    def __init__(self, dataset_name: str, output_dir: str = None):
        self._inner = COCOPanopticEvaluator(dataset_name, output_dir)
        self._dataset_name = dataset_name
        self._seen = 0

    def reset(self):
        self._inner.reset()
        self._seen = 0

    def process(self, inputs, outputs):
        if all("panoptic_seg" in o for o in outputs):
            self._inner.process(inputs, outputs)
            self._seen += len(outputs)

    def evaluate(self):
        if sum(comm.all_gather(self._seen)) == 0:
            logger.info("Evaluation of '%s': the model gives no panoptic_seg, so no PQ (box AP only)",
                        self._dataset_name)
            return OrderedDict()
        return self._inner.evaluate()


class ThingInstancesEvaluator(COCOEvaluator):
    """``COCOEvaluator`` on a panoptic dataset's instances json: the detections of stuff
    classes are dropped (they have no instance ground truth) and the class names are
    those of the thing classes in the json (a panoptic registration such as Detectron2's
    ``coco_2017_val_panoptic`` lists every class as ``thing_classes``)."""

    def __init__(self, dataset_name: str, **kwargs):
        super().__init__(dataset_name, **kwargs)
        meta = self._metadata
        things = dict(meta.thing_dataset_id_to_contiguous_id)
        categories = {c["id"]: c["name"] for c in self._coco_api.loadCats(self._coco_api.getCatIds())}
        self._thing_ids = torch.tensor(sorted(things.values()), dtype=torch.long)
        self._metadata = Metadata(
            name=meta.name,
            json_file=meta.json_file,
            thing_dataset_id_to_contiguous_id=things,
            thing_classes=[categories.get(i, str(i)) for i in sorted(things)],
        )

    def process(self, inputs, outputs):
        kept = []
        for output in outputs:
            if "instances" in output:
                instances = output["instances"]
                is_thing = torch.isin(instances.pred_classes, self._thing_ids.to(instances.pred_classes.device))
                output = dict(output, instances=instances[is_thing])
            kept.append(output)
        super().process(inputs, kept)

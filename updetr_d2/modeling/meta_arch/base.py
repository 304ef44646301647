"""What every DETR-family meta-architecture here shares: input normalisation and
batching, the ground truth in the criterion's format, the train / inference dispatch
and one detection per kept query. Subclasses define ``forward_outputs`` (the model's
output dict), ``losses`` and ``inference``."""
from typing import Dict, List, Sequence

import torch
from detectron2.modeling import detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from torch import nn
from torchvision.ops import box_convert

from ..criterion import SetCriterion

__all__ = ["SetPredictionDetector"]


class SetPredictionDetector(nn.Module):
    def __init__(
        self,
        *,
        backbone: nn.Module,
        criterion: SetCriterion,
        num_classes: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int = 32,
    ):
        super().__init__()
        self.backbone = backbone
        self.criterion = criterion
        self.num_classes = num_classes
        self.size_divisibility = max(size_divisibility, getattr(backbone, "size_divisibility", 0))
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @property
    def device(self):
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.size_divisibility)

    def forward_outputs(self, batched_inputs: List[Dict], images: ImageList) -> Dict:
        raise NotImplementedError

    def forward(self, batched_inputs: List[Dict]):
        images = self.preprocess_image(batched_inputs)
        outputs = self.forward_outputs(batched_inputs, images)
        if self.training:
            return self.losses(outputs, batched_inputs, images)
        return self.inference(outputs, batched_inputs, images)

    # --- training -----------------------------------------------------------------
    def prepare_targets(self, batched_inputs: List[Dict], images: ImageList) -> List[Dict]:
        """Ground truth as the criterion wants it: labels and cxcywh boxes normalised by
        the (unpadded) image size."""
        if any("instances" not in x for x in batched_inputs):
            raise ValueError(
                f"{type(self).__name__} needs 'instances' in every training input; is the "
                "dataset labelled and the mapper in training mode?"
            )
        targets = []
        for x, (h, w) in zip(batched_inputs, images.image_sizes):
            instances = x["instances"].to(self.device)
            scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=self.device)
            boxes = box_convert(instances.gt_boxes.tensor / scale, "xyxy", "cxcywh")
            targets.append({"labels": instances.gt_classes, "boxes": boxes})
        return targets

    def losses(self, outputs: Dict, batched_inputs: List[Dict], images: ImageList) -> Dict:
        return self.criterion(outputs, self.prepare_targets(batched_inputs, images))

    # --- inference ----------------------------------------------------------------
    def inference(self, outputs: Dict, batched_inputs: List[Dict], images: ImageList) -> List[Dict]:
        raise NotImplementedError

    def detections(self, pred_boxes, scores, classes, batched_inputs, images: ImageList) -> List[Dict]:
        """``Instances`` per image, one per kept query (``pred_boxes`` normalised cxcywh
        [B, K, 4], ``scores`` and ``classes`` [B, K]), in the size each input asks for."""
        results = []
        for i, (h, w) in enumerate(images.image_sizes):
            result = Instances((h, w))
            boxes = box_convert(pred_boxes[i], "cxcywh", "xyxy")
            result.pred_boxes = Boxes(boxes * torch.tensor([w, h, w, h], device=boxes.device))
            result.pred_boxes.clip((h, w))
            result.scores = scores[i]
            result.pred_classes = classes[i]
            results.append({"instances": self._to_input_size(result, batched_inputs[i])})
        return results

    @staticmethod
    def _to_input_size(result: Instances, batched_input: Dict) -> Instances:
        """Rescale to the size the input asks for (its original image size)."""
        h, w = result.image_size
        return detector_postprocess(result, batched_input.get("height", h), batched_input.get("width", w))

"""Running an exported file like the model (:class:`ExportedDetector`: TorchScript, or
ONNX by ONNX Runtime) and comparing its detections with the model's
(:func:`compare_instances`, within :data:`TOLERANCES`)."""
import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.modeling import detector_postprocess
from detectron2.structures import Instances
from torch import Tensor

from .metadata import ExportError, ExportMetadata, METADATA_KEY, import_optional
from .tracing import quiet_jit_warnings

__all__ = ["TOLERANCES", "ExportedDetector", "compare_instances"]

# How far an exported model's detections may be from the PyTorch model's. TorchScript
# runs PyTorch's own kernels (no difference on the CPU); ONNX Runtime's float32 kernels
# sum in another order, so logits and boxes differ by rounding, ~1e-7 relative per op:
# through a transformer ~1e-5 px on boxes of a few hundred pixels, ~1e-7 on scores. The
# bounds leave two orders of magnitude for deeper models and larger images while still
# catching any real error (a wrong size or padding moves boxes by pixels).
TOLERANCES = {"boxes": 1e-2, "scores": 1e-4}  # pixels, probability


class ExportedDetector:
    """An exported file (``.ts`` TorchScript, ``.onnx`` by ONNX Runtime on the CPU) called
    like the model: ``[{"image": CHW tensor, "height"?, "width"?}, ...]`` ->
    ``[{"instances": Instances}, ...]``, one run per image. Images must have the export's
    shape (``metadata.input_shape``; an :class:`ExportError` otherwise); the detections
    are rescaled to ``height``/``width`` when an input gives them, as the model does."""

    def __init__(self, path: str, num_threads: Optional[int] = None):
        if not os.path.isfile(path):
            raise ExportError(f"{path}: no such exported model file")
        self.path = path
        if path.endswith(".onnx"):
            self._load_onnx(num_threads)
        else:
            self._load_torchscript()
        if self.metadata.format != ("onnx" if path.endswith(".onnx") else "torchscript"):
            raise ExportError(f"{path}: the file holds a {self.metadata.format} export but its name says otherwise")

    def _load_torchscript(self) -> None:
        extra = {METADATA_KEY: ""}
        try:
            with quiet_jit_warnings():
                self._module = torch.jit.load(self.path, map_location="cpu", _extra_files=extra)
        except RuntimeError as e:
            raise ExportError(f"{self.path}: not a TorchScript file ({str(e).splitlines()[0]})") from e
        if not extra[METADATA_KEY]:
            raise ExportError(f"{self.path}: no {METADATA_KEY} metadata; export it with updetr_d2.export")
        self.metadata = ExportMetadata.from_json(extra[METADATA_KEY], self.path)

        def run(image: Tensor) -> Tuple[Tensor, ...]:
            with torch.no_grad():
                return tuple(self._module(image.cpu()))

        self._run = run

    def _load_onnx(self, num_threads: Optional[int]) -> None:
        ort = import_optional("onnxruntime")
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        try:
            session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's own exception types, by version
            raise ExportError(f"{self.path}: ONNX Runtime cannot load it ({e})") from e
        meta = session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise ExportError(f"{self.path}: no {METADATA_KEY} metadata; export it with updetr_d2.export")
        self.metadata = ExportMetadata.from_json(meta[METADATA_KEY], self.path)
        self._session = session

        def run(image: Tensor) -> Tuple[Tensor, ...]:
            outputs = session.run(None, {"image": image.detach().cpu().float().numpy()})
            return tuple(torch.from_numpy(o) for o in outputs)

        self._run = run

    def run_flat(self, image: Tensor) -> Tuple[Tensor, ...]:
        """The file's raw outputs (``metadata.output_names``) for one CHW image."""
        shape = list(image.shape)
        if shape != self.metadata.input_shape:
            raise ExportError(
                f"{self.path} was exported for images of shape {self.metadata.input_shape} (C, H, W), got "
                f"{shape}: resize the image to that size, or export again with a sample image of this size"
            )
        return self._run(image.float())

    def __call__(self, batched_inputs: Sequence[Dict]) -> List[Dict]:
        results = []
        for x in batched_inputs:
            outputs = self.metadata.outputs_schema(self.run_flat(x["image"]))[0]
            instances = outputs["instances"]
            h, w = (int(s) for s in instances.image_size)
            instances = Instances((h, w), **instances.get_fields())
            if "height" in x or "width" in x:
                instances = detector_postprocess(instances, x.get("height", h), x.get("width", w))
            results.append({**outputs, "instances": instances})
        return results


def compare_instances(expected: Instances, actual: Instances) -> Dict:
    """How far ``actual`` detections are from ``expected``, detection by detection.

    Detections are paired by (query, class) (``query_index``, ``pred_classes``): each
    pair is one detection of either family (DETR: one per query; Deformable DETR: the
    top-k (query, class) scores), and pairing by it, not by rank, keeps two scores that
    differ by rounding from counting as a swap. Returns ``count`` (both), ``unmatched``
    (detections of either without a partner), ``boxes`` and ``scores`` (max abs
    difference over the pairs, pixels and probability) and ``ok``: within
    :data:`TOLERANCES`, and every unmatched detection a tie at the top-k cut (its score
    within the score tolerance of the other side's lowest).
    """
    expected, actual = expected.to("cpu"), actual.to("cpu")

    def keyed(instances):
        keys = zip(instances.query_index.tolist(), instances.pred_classes.tolist())
        return {key: i for i, key in enumerate(keys)}

    want, got = keyed(expected), keyed(actual)
    pairs = [(want[k], got[k]) for k in want if k in got]
    report = {"count": (len(expected), len(actual)), "unmatched": len(want) + len(got) - 2 * len(pairs),
              "boxes": 0.0, "scores": 0.0}
    if pairs:
        i, j = (torch.tensor(index) for index in zip(*pairs))
        report["boxes"] = (expected.pred_boxes.tensor[i] - actual.pred_boxes.tensor[j]).abs().max().item()
        report["scores"] = (expected.scores[i] - actual.scores[j]).abs().max().item()

    def ties_at_cut(one, one_keys, other, other_keys):
        lone = [index for key, index in one_keys.items() if key not in other_keys]
        if not lone:
            return True
        if len(other) == 0:
            return False
        return bool((one.scores[lone] <= other.scores.min() + TOLERANCES["scores"]).all())

    report["ok"] = (report["boxes"] <= TOLERANCES["boxes"] and report["scores"] <= TOLERANCES["scores"]
                    and ties_at_cut(expected, want, actual, got) and ties_at_cut(actual, got, expected, want))
    return report

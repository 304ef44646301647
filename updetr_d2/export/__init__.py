"""Export of the detectors to TorchScript and ONNX, and a runner for the exported files.

A detector takes ``[{"image": CHW tensor}]`` and returns ``[{"instances": Instances}]``;
Detectron2's :class:`~detectron2.export.TracingAdapter` flattens that into a function of
one image tensor returning a tuple of tensors, and its ``outputs_schema`` rebuilds the
``Instances`` from the tuple. The flattened function is traced with ``torch.jit.trace``:
for TorchScript the trace is the file, for ONNX the TorchScript-based exporter turns the
same trace into an ONNX graph. Either file carries its metadata (input shape, output
names, the schema as JSON) under :data:`METADATA_KEY`, so :class:`ExportedDetector`
rebuilds the same ``[{"instances": Instances}]`` from it without the Python model.
Only detections export (boxes, scores, classes, query index): outputs computed in Python
over the kept detections (a panoptic segmentation, a plug-in's masks) are refused.

One export holds one input size. Tracing runs the model's Python once and keeps the
operators it ran: everything the detectors compute from the image *shape* in Python
(padding to ``size_divisibility`` and the padding masks, the feature levels' spatial
shapes that deformable attention splits its values by, the box scale of the output
size) is recorded as constants of the sample's size. Nothing is computed from the
image *values* in Python at inference (no ``.item()``, no data-dependent branch; the
number of detections kept by ``detector_postprocess`` is an operator, so it stays
dynamic), and a batch of one image is a fixed shape, so the trace is exact for every
image of the sample's shape. Any other shape is refused, never silently misread: the
runner checks it; the TorchScript file checks it itself (a scripted check in the
trace); the ONNX file declares the static input shape, which ONNX Runtime enforces.
To serve another size, export again with a sample of that size.

The eager models need no export switch: the only path that does not trace,
multi-scale deformable attention's compiled CUDA kernel, is never taken while tracing
(:func:`updetr_d2.layers.ms_deform_attn.use_compiled_kernel`).
"""
from .metadata import METADATA_KEY, ExportError, ExportMetadata
from .runner import TOLERANCES, ExportedDetector, compare_instances
from .tracing import DEFAULT_OPSET, EXPORT_FORMATS, FILE_NAMES, export_model, export_onnx, export_torchscript

__all__ = [
    "DEFAULT_OPSET",
    "EXPORT_FORMATS",
    "FILE_NAMES",
    "METADATA_KEY",
    "TOLERANCES",
    "ExportError",
    "ExportMetadata",
    "ExportedDetector",
    "compare_instances",
    "export_model",
    "export_onnx",
    "export_torchscript",
]

"""Tracing a detector into TorchScript or ONNX (see the package docstring for what a
trace holds and why one export is one input size)."""
import contextlib
import os
import warnings
from typing import List, Sequence, Tuple

import torch
from detectron2.export import TracingAdapter
from torch import Tensor, nn

from .metadata import ExportError, ExportMetadata, METADATA_KEY, import_optional, output_names

__all__ = ["DEFAULT_OPSET", "EXPORT_FORMATS", "FILE_NAMES", "export_model", "export_onnx", "export_torchscript",
           "quiet_jit_warnings"]

EXPORT_FORMATS = ("torchscript", "onnx")
FILE_NAMES = {"torchscript": "model.ts", "onnx": "model.onnx"}  # Detectron2's names
# ONNX opset 16 is the first with GridSample (deformable attention's bilinear sampling);
# 17 adds LayerNormalization, one node instead of a chain of reductions.
DEFAULT_OPSET = 17


@torch.jit.script
def _input_of_export_shape(image: Tensor, shape: List[int]) -> Tensor:
    """The image, if it has the shape the model was traced with. Scripted, so that a
    trace calls it and keeps the check (a Python ``if`` would be traced away)."""
    if list(image.shape) != shape:
        raise ValueError(
            "this exported model was traced for images of shape " + str(shape) + " (C, H, W), got "
            + str(list(image.shape)) + "; export again with a sample image of that size"
        )
    return image


class _FlatDetector(nn.Module):
    """The detector as a function of one image tensor -> tuple of tensors (its
    ``TracingAdapter``), with the input shape check in front when ``check_shape``."""

    def __init__(self, adapter: TracingAdapter, shape: Sequence[int], check_shape: bool):
        super().__init__()
        self.adapter = adapter
        self.shape = [int(s) for s in shape]
        self.check_shape = check_shape

    def forward(self, image: Tensor):
        if self.check_shape:
            image = _input_of_export_shape(image, self.shape)
        return self.adapter(image)


def _sample_image(model: nn.Module, sample_inputs) -> Tensor:
    """The one image of ``sample_inputs`` (``[{"image": float CHW tensor}]``), checked."""
    if not isinstance(sample_inputs, (list, tuple)) or len(sample_inputs) != 1:
        got = f"{len(sample_inputs)} inputs" if isinstance(sample_inputs, (list, tuple)) else type(sample_inputs)
        raise ExportError(f"sample_inputs must be a list of one input dict [{{'image': tensor}}] (an export "
                          f"runs batch 1), got {got}")
    sample = sample_inputs[0]
    if not isinstance(sample, dict) or set(sample) != {"image"}:
        raise ExportError(
            "the sample input must be {'image': tensor} and nothing else (the exported model returns "
            "detections in the image's own size; ExportedDetector rescales to 'height'/'width'), got keys "
            f"{sorted(sample) if isinstance(sample, dict) else type(sample).__name__}"
        )
    image = sample["image"]
    if not isinstance(image, Tensor) or image.dim() != 3 or not image.is_floating_point():
        raise ExportError("the sample 'image' must be a float CHW tensor (pixel values, the model's channel "
                          f"order), got {getattr(image, 'dtype', type(image).__name__)} "
                          f"{list(getattr(image, 'shape', []))}")
    if getattr(model, "encoder_only", False):
        raise ExportError(f"this {type(model).__name__} is encoder-only (pretraining): it gives no detections "
                          "to export; load its checkpoint into the detector")
    return image.to(next(model.parameters()).device)


@contextlib.contextmanager
def quiet_jit_warnings():
    """Tracing warns at every Python value computed from a shape ("will be treated as a
    constant"): that is the fixed input size, by design (module docstring). The
    deprecation notices of ``torch.jit`` and the TorchScript-based ONNX exporter are
    silenced too: they are the formats asked for."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.")
        # The exporter reads argument names from a Python signature; a trace has none and
        # takes its one positional image as it is.
        warnings.filterwarnings("ignore", message="no signature found", category=UserWarning)
        yield


# What an exported file gives: detections. Other outputs (a panoptic segmentation, a
# plug-in's instance masks) are computed with Python over the kept detections or carry
# Python values (segment lists), which a trace would freeze at the sample's values.
EXPORTED_FIELDS = ("pred_boxes", "scores", "pred_classes", "query_index")


def _flat_detector(model: nn.Module, sample_inputs, check_shape: bool) -> Tuple[_FlatDetector, Tensor]:
    """The flattened detector (eval mode) and the sample image, after one eager run that
    checks the outputs are detections only (:data:`EXPORTED_FIELDS`; otherwise an
    :class:`ExportError` naming the model and what else it returns)."""
    image = _sample_image(model, sample_inputs)
    model.eval()
    with torch.no_grad():
        outputs = model([{"image": image}])
    extra = sorted(set(outputs[0]) - {"instances"})
    if "instances" in outputs[0]:
        extra += [f"instances.{f}" for f in sorted(set(outputs[0]["instances"].get_fields()) - set(EXPORTED_FIELDS))]
    if extra or "instances" not in outputs[0]:
        raise ExportError(
            f"{type(model).__name__} returns {extra or sorted(outputs[0])} besides detections; only detections "
            f"([{{'instances': Instances}}] with {', '.join(EXPORTED_FIELDS)}) export (a plug-in's outputs, "
            "e.g. MODEL.DETR.PLUGINS ['MaskHead'], do not)"
        )
    adapter = TracingAdapter(model, [{"image": image}])
    # Eval mode on the wrapper too: the ONNX exporter restores the wrapper's mode after
    # exporting, recursively, which would otherwise leave the detector in training mode.
    return _FlatDetector(adapter, image.shape, check_shape).eval(), image


def _trace(model: nn.Module, sample_inputs, fmt: str, input_format: str, opset=None):
    """``model`` flattened and traced on ``sample_inputs`` (the trace records the
    outputs' schema), with its metadata; for TorchScript the input shape check is
    part of the trace (ONNX declares the static shape instead)."""
    flat, image = _flat_detector(model, sample_inputs, check_shape=fmt == "torchscript")
    with quiet_jit_warnings(), torch.no_grad():
        # check_trace would trace a second time only to compare the two traces.
        traced = torch.jit.trace(flat, (image,), check_trace=False)
    schema = flat.adapter.outputs_schema
    metadata = ExportMetadata(fmt, type(model).__name__, flat.shape, input_format, output_names(schema), schema,
                              opset)
    return traced, image, metadata


def export_torchscript(model: nn.Module, sample_inputs, path: str, input_format: str = "BGR") -> ExportMetadata:
    """Trace ``model`` on ``sample_inputs`` (``[{"image": float CHW tensor}]``) and save it
    as TorchScript to ``path``, with its metadata as an extra file. The file takes one
    image of the sample's shape and returns the flattened outputs (see
    :class:`ExportedDetector`); ``input_format`` records the channel order the image
    must have (``cfg.INPUT.FORMAT``). The model is put in eval mode."""
    traced, _, metadata = _trace(model, sample_inputs, "torchscript", input_format)
    with quiet_jit_warnings():
        torch.jit.save(traced, path, _extra_files={METADATA_KEY: metadata.to_json()})
    return metadata


def export_onnx(
    model: nn.Module, sample_inputs, path: str, opset: int = DEFAULT_OPSET, input_format: str = "BGR"
) -> ExportMetadata:
    """Export ``model`` traced on ``sample_inputs`` to ONNX (``opset``) at ``path``, with
    its metadata in the model's ``metadata_props``; checked with ``onnx.checker``.

    The TorchScript-based exporter (``dynamo=False``) converts the same
    ``torch.jit.trace`` that :func:`export_torchscript` saves, which is what
    ``TracingAdapter`` is made for (Instances in, shapes of one size recorded as
    constants), so both formats compute one graph. The dynamo-based exporter goes
    through ``torch.export``, which needs the Python code free of shape-to-Python
    conversions (the spatial shapes' ``tolist()``, Instances), and the onnxscript
    package besides."""
    if opset < 16:
        raise ExportError(f"opset {opset}: deformable attention's GridSample needs ONNX opset 16 or later")
    onnx = import_optional("onnx")
    traced, image, metadata = _trace(model, sample_inputs, "onnx", input_format, opset)
    with quiet_jit_warnings(), torch.no_grad():
        torch.onnx.export(traced, (image,), path, dynamo=False, opset_version=opset,
                          input_names=["image"], output_names=metadata.output_names)
    proto = onnx.load(path)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata.to_json()
    onnx.checker.check_model(proto)
    onnx.save(proto, path)
    return metadata


def export_model(model: nn.Module, sample_inputs, output_dir: str, fmt: str, opset: int = DEFAULT_OPSET,
                 input_format: str = "BGR") -> str:
    """Export to ``output_dir/model.ts`` or ``model.onnx`` by ``fmt``; returns the path."""
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"--format {fmt!r}: must be one of {', '.join(EXPORT_FORMATS)}")
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, FILE_NAMES[fmt])
    if fmt == "torchscript":
        export_torchscript(model, sample_inputs, path, input_format)
    else:
        export_onnx(model, sample_inputs, path, opset, input_format)
    return path

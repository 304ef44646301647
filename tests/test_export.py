"""Export to TorchScript and ONNX (updetr_d2/export/, tools/export_model.py): tiny DETR
and Deformable DETR variants give the PyTorch model's detections from both files on
generated demo images, other input sizes are refused with an error naming the export's
size, bad inputs and files are clear errors, and the tool runs end to end (yaml and lazy).

Tolerance: the exported detections must have the same count and classes as PyTorch's,
boxes within 1e-2 px and scores within 1e-4 (``updetr_d2.export.TOLERANCES``). The
TorchScript trace runs PyTorch's own kernels (differences are 0 here); ONNX Runtime's
float32 kernels sum in another order, which moves boxes by ~1e-5 px and scores by ~1e-7
on these models: the bounds leave room for deeper models and larger images, and any real
export error (a size, padding or level shape baked in wrongly) moves boxes by pixels.
"""
import os
import subprocess
import sys
import types

import cv2
import pytest
import torch

from updetr_d2.data import ensure_demo_dataset  # updetr_d2 first: Detectron2 compatibility fixes
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from updetr_d2.export import (
    TOLERANCES,
    ExportedDetector,
    ExportError,
    ExportMetadata,
    compare_instances,
    export_model,
    export_onnx,
    export_torchscript,
)
from updetr_d2.layers import ms_deform_attn

from helpers import ROOT, load_tool
from test_codetr import tiny_cfg as tiny_codetr_cfg
from test_deformable_detr import tiny_cfg
from test_detr import tiny_detr_cfg
from test_layering import PACKAGE, imported_subpackages
from test_panoptic_model import with_mask_head

TOOL = os.path.join(ROOT, "tools", "export_model.py")
# DETR; Deformable DETR (plain, box refine, two-stage, DN: anchor queries), by tiny_cfg's
# names; Co-Deformable-DETR (its inference is the Deformable DETR's).
VARIANTS = ["detr", "plain", "refine", "two_stage", "dn", "codetr"]


# One thread: these tiny models gain nothing from a second one, and two OpenMP threads
# spinning for cores that other processes hold make each forward many times slower.
TOOL_ENV = dict(os.environ, OMP_NUM_THREADS="1")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def demo_images():
    """Generated demo val images at half size (fast), float CHW BGR: the sample (120x160,
    padded to 128x160 inside the model), another image of its size, and one of another
    size (144x144)."""
    folder = os.path.join(ensure_demo_dataset(), "images", "val")

    def load(name):
        image = read_image(os.path.join(folder, name), format="BGR")
        half = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
        return torch.as_tensor(half.transpose(2, 0, 1).copy()).float()

    images = [load(n) for n in ("000009.png", "000013.png", "000000.png")]
    assert [list(im.shape) for im in images] == [[3, 120, 160], [3, 120, 160], [3, 144, 144]]
    return images


@pytest.fixture(scope="module")
def exported(demo_images, tmp_path_factory):
    """``exported(variant)``: (the tiny model, {format: ExportedDetector}), exported once
    per module on the sample image."""
    cache = {}

    def export(variant):
        if variant not in cache:
            model = tiny_model(variant)
            folder = tmp_path_factory.mktemp(variant)
            detectors = {}
            for fmt, export_fn in (("torchscript", export_torchscript), ("onnx", export_onnx)):
                path = str(folder / ("model.ts" if fmt == "torchscript" else "model.onnx"))
                metadata = export_fn(model, [{"image": demo_images[0]}], path)
                assert metadata.input_shape == [3, 120, 160] and metadata.format == fmt
                detectors[fmt] = ExportedDetector(path)
                assert detectors[fmt].metadata.output_names == metadata.output_names
            cache[variant] = model, detectors
        return cache[variant]

    return export


def tiny_model(variant):
    torch.manual_seed(0)
    configs = {"detr": tiny_detr_cfg, "codetr": tiny_codetr_cfg}
    return build_model(configs[variant]() if variant in configs else tiny_cfg(variant)).eval()


def detect(model, image, **size):
    with torch.no_grad():
        return model([{"image": image, **size}])[0]["instances"]


def assert_same_detections(expected, actual):
    """Same count, the same (query, class) detections, boxes and scores within the tolerances."""
    report = compare_instances(expected, actual)
    assert report["count"][0] == report["count"][1] > 0
    assert report["unmatched"] == 0 and report["ok"], report
    assert report["boxes"] <= TOLERANCES["boxes"] and report["scores"] <= TOLERANCES["scores"], report
    assert expected.image_size == actual.image_size


@pytest.mark.parametrize("variant", VARIANTS)
def test_exported_files_give_the_models_detections(variant, demo_images, exported):
    sample, same_size, other_size = demo_images
    model = tiny_model(variant)
    expected = [detect(model, im) for im in (sample, same_size)]
    rescaled = detect(model, sample, height=240, width=320)
    exported_model, detectors = exported(variant)
    for fmt, detector in detectors.items():
        # The sample and another image of its size: the trace is not specific to the sample's pixels.
        for image, want in zip((sample, same_size), expected):
            assert_same_detections(want, detector([{"image": image}])[0]["instances"])
        # Asked for another output size, the runner rescales as the model does.
        assert_same_detections(rescaled, detector([{"image": sample, "height": 240, "width": 320}])[0]["instances"])
        # Another input size is refused, naming the export's size, never run on a stale trace.
        with pytest.raises(ExportError, match=r"exported for images of shape \[3, 120, 160\].*got \[3, 144, 144\]"):
            detector([{"image": other_size}])
    # Exporting leaves the eager model as it was: eval mode, the same detections.
    assert not exported_model.training
    again = detect(exported_model, sample)
    assert torch.equal(again.pred_boxes.tensor, expected[0].pred_boxes.tensor)
    assert torch.equal(again.scores, expected[0].scores)


def test_the_files_themselves_refuse_another_size(demo_images, exported, tmp_path):
    """Run without the runner, the TorchScript file checks its input shape itself (a
    scripted check inside the trace) and ONNX Runtime enforces the ONNX file's static one."""
    import onnxruntime

    sample, _, other_size = demo_images
    _, detectors = exported("plain")
    module = torch.jit.load(detectors["torchscript"].path)
    assert len(module(sample)) == 5  # boxes, classes, query index, scores, image size
    with pytest.raises(torch.jit.Error, match=r"traced for images of shape \[3, 120, 160\]"):
        module(other_size)
    session = onnxruntime.InferenceSession(detectors["onnx"].path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert session.get_inputs()[0].shape == [3, 120, 160]
    assert [o.name for o in session.get_outputs()] == [
        "0.instances.pred_boxes", "0.instances.pred_classes", "0.instances.query_index",
        "0.instances.scores", "0.instances.image_size",
    ]
    with pytest.raises(Exception, match="invalid dimensions"):
        session.run(None, {"image": other_size.numpy()})
    # export_model: Detectron2's file names in the output folder.
    model, _ = exported("detr")
    assert export_model(model, [{"image": sample}], str(tmp_path), "onnx") == str(tmp_path / "model.onnx")


def test_bad_inputs_and_files_are_clear_errors(demo_images, tmp_path):
    model = tiny_model("detr")
    sample = demo_images[0]
    path = str(tmp_path / "model.onnx")
    with pytest.raises(ExportError, match="one input dict"):
        export_onnx(model, [{"image": sample}, {"image": sample}], path)
    with pytest.raises(ExportError, match=r"'image'.*nothing else.*\['height', 'image'\]"):
        export_onnx(model, [{"image": sample, "height": 240}], path)
    with pytest.raises(ExportError, match="float CHW tensor"):
        export_torchscript(model, [{"image": sample.to(torch.uint8)}], str(tmp_path / "model.ts"))
    # Outputs a trace would freeze at the sample's values (panoptic segments, plug-in masks).
    panoptic = build_model(with_mask_head(tiny_detr_cfg())).eval()
    with pytest.raises(ExportError, match=r"returns \['panoptic_seg', 'instances.pred_masks'\] besides detections"):
        export_torchscript(panoptic, [{"image": sample}], str(tmp_path / "model.ts"))
    with pytest.raises(ExportError, match="opset 15"):
        export_onnx(model, [{"image": sample}], path, opset=15)
    with pytest.raises(ExportError, match="--format 'caffe2'"):
        export_model(model, [{"image": sample}], str(tmp_path), "caffe2")
    with pytest.raises(ExportError, match="no such exported model file"):
        ExportedDetector(str(tmp_path / "missing.onnx"))
    for name in ("junk.onnx", "junk.ts"):
        (tmp_path / name).write_bytes(b"not a model")
        with pytest.raises(ExportError, match="ONNX Runtime cannot load it|not a TorchScript file"):
            ExportedDetector(str(tmp_path / name))
    # The schema in a file only rebuilds Detectron2 structures, never an arbitrary callable.
    fields = ('{"format": "onnx", "model": "Detr", "input_shape": [3, 2, 2], "input_format": "BGR", '
              '"output_names": ["x"], "outputs_schema": {"schema": "TensorWrapSchema", "class_name": "os.system"}}')
    with pytest.raises(ExportError, match="os.system"):
        ExportMetadata.from_json(fields, "model.onnx")


def detections(scores, classes, queries, boxes=None):
    result = Instances((100, 100))
    result.scores = torch.tensor(scores)
    result.pred_classes = torch.tensor(classes)
    result.query_index = torch.tensor(queries)
    result.pred_boxes = Boxes(torch.tensor(boxes) if boxes else torch.tensor([[0.0, 0, 10, 10]] * len(scores)))
    return result


def test_detections_are_compared_by_query_and_class():
    expected = detections([0.9, 0.5, 0.5, 0.2], [1, 0, 2, 1], [3, 0, 0, 7])
    # Rounding swaps two equal scores: the same detections.
    swapped = detections([0.9, 0.5 + 1e-7, 0.5, 0.2], [1, 2, 0, 1], [3, 0, 0, 7])
    assert compare_instances(expected, swapped) == {
        "count": (4, 4), "unmatched": 0, "boxes": 0.0, "scores": pytest.approx(1e-7, abs=1e-7), "ok": True}
    # Another class for a query is a different detection.
    other_class = detections([0.9, 0.5, 0.5, 0.2], [1, 0, 3, 1], [3, 0, 0, 7])
    assert compare_instances(expected, other_class)["unmatched"] == 2
    assert not compare_instances(expected, other_class)["ok"]
    # A tie at the top-k cut may keep another detection of the same score ...
    tie = detections([0.9, 0.5, 0.5, 0.2], [1, 0, 2, 3], [3, 0, 0, 8])
    tie.scores[3] = 0.2 + 1e-7
    assert compare_instances(expected, tie)["ok"]
    # ... but not one that scores clearly above the cut, nor a moved box.
    assert not compare_instances(expected, detections([0.9, 0.5, 0.5, 0.3], [1, 0, 2, 3], [3, 0, 0, 8]))["ok"]
    moved = detections([0.9, 0.5, 0.5, 0.2], [1, 0, 2, 1], [3, 0, 0, 7], [[0.0, 0, 10, 10]] * 3 + [[0, 0, 10, 11]])
    assert compare_instances(expected, moved)["boxes"] == 1 and not compare_instances(expected, moved)["ok"]


def test_the_compiled_kernel_is_never_traced(monkeypatch):
    """The original CUDA extension's op cannot be saved in a file: while tracing, deformable
    attention takes the PyTorch path even where the kernel would be used."""
    monkeypatch.setattr(ms_deform_attn, "_C", object())
    cuda_value = types.SimpleNamespace(is_cuda=True, dtype=torch.float32)
    assert ms_deform_attn.use_compiled_kernel(cuda_value)
    seen = []

    def traced(x):
        seen.append(ms_deform_attn.use_compiled_kernel(cuda_value))
        return x + 1

    torch.jit.trace(traced, torch.zeros(1), check_trace=False)  # as the export traces
    assert seen == [False]


@pytest.mark.parametrize("name", ["__init__", "metadata", "runner", "tracing"])
def test_export_package_imports_no_method(name):
    """Shared code: it exports any registered detector without knowing the methods."""
    path = os.path.join(PACKAGE, "export", name + ".py")
    assert not {m for m in imported_subpackages(path) if m[0] == "methods"}


def run_tool(*args):
    proc = subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, cwd=ROOT, env=TOOL_ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_tool_exports_and_checks_a_yaml_config(tmp_path):
    out = run_tool(
        "--config-file", os.path.join(ROOT, "projects", "DeformableDETR", "configs", "deformable_detr_R18_demo.yaml"),
        "--format", "onnx", "--output", str(tmp_path),
        "MODEL.DETR.HIDDEN_DIM", "32", "MODEL.DETR.ENC_LAYERS", "1", "MODEL.DETR.DEC_LAYERS", "1",
        "MODEL.DEFORMABLE_DETR.TWO_STAGE", "True", "MODEL.DEFORMABLE_DETR.WITH_BOX_REFINE", "True",
    )
    assert os.path.isfile(tmp_path / "model.onnx")
    assert "exported DeformableDetr (onnx)" in out and "without a same (query, class) partner 0" in out, out
    detector = ExportedDetector(str(tmp_path / "model.onnx"))
    # The default sample: the first demo val image (288x288) resized to the test size (256).
    assert detector.metadata.input_shape == [3, 256, 256] and detector.metadata.input_format == "RGB"


def test_tool_exports_and_checks_a_lazy_config(tmp_path, demo_images):
    sample = os.path.join(ensure_demo_dataset(), "images", "val", "000009.png")
    out = run_tool("--config-file", os.path.join(ROOT, "configs", "demo", "detr_R18_demo.py"),
                   "--format", "torchscript", "--output", str(tmp_path), "--sample-image", sample,
                   "model.transformer.num_encoder_layers=1")
    assert "exported Detr (torchscript)" in out and "max |box difference| 0 px" in out, out
    assert ExportedDetector(str(tmp_path / "model.ts")).metadata.input_shape == [3, 256, 341]


def test_tool_errors_name_the_option(tmp_path, capsys):
    tool = load_tool("export_model")
    config = os.path.join(ROOT, "configs", "demo", "detr_R18_demo.yaml")
    common = ["--output", str(tmp_path)]
    with pytest.raises(SystemExit) as e:
        tool.main(["--config-file", config, "--format", "caffe2", *common])
    assert e.value.code == 2 and "argument --format: invalid choice: 'caffe2'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--config-file .*missing.yaml: no such file"):
        tool.main(["--config-file", str(tmp_path / "missing.yaml"), "--format", "onnx", *common])
    with pytest.raises(SystemExit, match="--sample-image .*missing.png: no such file"):
        tool.main(["--config-file", config, "--format", "onnx", "--sample-image", str(tmp_path / "missing.png"),
                   *common])
    with pytest.raises(SystemExit, match="MODEL.WEIGHTS / train.init_checkpoint .*missing.pth: no such file"):
        tool.main(["--config-file", config, "--format", "onnx", *common, "MODEL.WEIGHTS", str(tmp_path / "missing.pth")])

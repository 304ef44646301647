"""Users' ResNet weights by path, in the formats they have.

Detectron2's :class:`~detectron2.checkpoint.DetectionCheckpointer` reads its own
checkpoints and its model-zoo ``.pkl`` files. :class:`UpdetrCheckpointer` also reads

* torchvision ResNet state dicts (``conv1.weight``, ``layer1.0.bn1.running_mean``,
  ``layer1.0.downsample.0.weight``, ``fc.weight`` ...),
* self-supervised checkpoints that nest the same names: SwAV (``state_dict`` /
  ``module.``), MoCo (``state_dict`` / ``module.encoder_q.``; v3: ``base_encoder``),
  DINO (``teacher`` else ``student`` / ``backbone.``), and any other single
  torchvision ResNet under a prefix,

and renames them to Detectron2 ResNet names (``stem.conv1.weight``,
``res2.0.conv1.norm.running_mean``, ``res2.0.shortcut.weight`` ...) without a model
prefix, marked for Detectron2's suffix matching (``matching_heuristics``), so they load
into any model that holds a Detectron2 ResNet (``Detr`` keeps it at
``backbone.backbone.``). Heads (projection heads, prototypes, ``fc``, the MoCo key
encoder and queue, DINO heads) are skipped and reported.

Files are read without running code from them: ``torch.load(weights_only=True)`` for
``.pth``/``.pt``, and a restricted unpickler (numpy arrays and builtin containers only)
for ``.pkl``. A file that pickles other objects (official DETR/UP-DETR checkpoints
pickle an ``argparse.Namespace``) is refused with :class:`UnsafeCheckpointError`
unless the caller passes ``allow_unsafe=True`` (yaml: ``MODEL.ALLOW_UNSAFE_CHECKPOINTS``,
tool: ``--allow-unsafe``), which is only for files one trusts.
"""
import io
import logging
import os
import pickle
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

__all__ = [
    "ConversionReport",
    "UnsafeCheckpointError",
    "UpdetrCheckpointer",
    "convert_resnet_state_dict",
    "find_torchvision_resnet",
    "load_checkpoint_file",
]

logger = logging.getLogger(__name__)

UNSAFE_FLAG_HELP = (
    "allow_unsafe=True (yaml: MODEL.ALLOW_UNSAFE_CHECKPOINTS True; "
    "tools/convert_backbone_weights.py: --allow-unsafe)"
)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint pickles Python objects that a safe load refuses to build."""


# --------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------
# What a Detectron2 / Caffe2 model-zoo pickle needs: numpy arrays, their dtypes and
# scalars, bytes (protocol-2 pickles made by Python 3 wrap them in _codecs.encode), and
# builtin containers. Nothing that can run other code.
_SAFE_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("__builtin__", "set"),
    ("__builtin__", "frozenset"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _SAFE_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is forbidden")


def _unsafe_message(path: str, reason: str) -> str:
    first_line = str(reason).strip().splitlines()[0] if str(reason).strip() else ""
    return (
        f"Refusing to load checkpoint '{path}': it pickles Python objects beyond tensors, "
        f"arrays and containers ({first_line}). Unpickling them can run arbitrary code. "
        f"Only for a file you trust, pass {UNSAFE_FLAG_HELP}."
    )


def _is_pickle_file(path: str) -> bool:
    return path.endswith(".pkl")


def load_checkpoint_file(path: str, allow_unsafe: bool = False) -> Any:
    """Read a checkpoint file without running code from it (unless ``allow_unsafe``).

    ``.pkl`` (Detectron2 / Caffe2 model zoo): plain pickle, latin1, through a restricted
    unpickler that builds numpy arrays, dtypes and builtin containers only. Anything
    else (``.pth``, ``.pt``, ``.pyth`` ...): ``torch.load(weights_only=True)`` on CPU.
    A file that needs more raises :class:`UnsafeCheckpointError` naming the file and the
    flag; with ``allow_unsafe=True`` it is loaded fully (``weights_only=False`` /
    ``pickle.load``) -- only for files you trust.
    """
    local = path if os.path.isfile(path) else PathManager.get_local_path(path)
    if not os.path.isfile(local):
        raise FileNotFoundError(f"Checkpoint '{path}' not found")
    if _is_pickle_file(local):
        with open(local, "rb") as f:
            raw = f.read()
        if allow_unsafe:
            return pickle.loads(raw, encoding="latin1")
        try:
            return _RestrictedUnpickler(io.BytesIO(raw), encoding="latin1").load()
        except pickle.UnpicklingError as e:
            raise UnsafeCheckpointError(_unsafe_message(path, str(e))) from e
    try:
        return torch.load(local, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not allow_unsafe:
            raise UnsafeCheckpointError(_unsafe_message(path, str(e))) from e
        logger.warning("Loading '%s' with weights_only=False (allow_unsafe is set)", path)
        return torch.load(local, map_location="cpu", weights_only=False)


# --------------------------------------------------------------------------------------
# Finding and converting a torchvision ResNet
# --------------------------------------------------------------------------------------
# Child entries tried first when the ResNet is nested, in this order. DINO: the teacher
# (the weights DINO evaluates) when present, else the student.
_CONTAINER_KEYS = ("teacher", "student", "state_dict", "model", "model_state", "network", "net")
# Among several ResNets in one flat dict, the query / online encoder wins.
_PREFIX_PREFERENCE = ("encoder_q.", "base_encoder.", "teacher.", "student.")
# Keys that belong to heads of the pretraining methods (matched on a dotted component).
_HEAD_RE = re.compile(
    r"(^|\.)(projection_head|prototypes|head|heads|fc|encoder_k|momentum_encoder|"
    r"predictor|queue\w*)(\.|$)"
)
_STAGE_RE = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")
_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var")
_DEPTHS = {(2, 2, 2, 2): 18, (3, 4, 6, 3): 34, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}


@dataclass
class ConversionReport:
    """What :func:`convert_resnet_state_dict` found, converted and skipped."""

    format: str = ""
    container: Tuple[str, ...] = ()  # nested entries descended into, e.g. ("state_dict",)
    prefix: str = ""  # prefix stripped inside that entry, e.g. "module.encoder_q."
    blocks_per_stage: Tuple[int, ...] = ()
    bottleneck: bool = True
    converted: Dict[str, str] = field(default_factory=dict)  # source key -> Detectron2 key
    skipped_heads: List[str] = field(default_factory=list)
    skipped_unknown: List[str] = field(default_factory=list)
    ignored_entries: List[str] = field(default_factory=list)  # e.g. "student", "optimizer"
    dropped_buffers: List[str] = field(default_factory=list)  # num_batches_tracked

    @property
    def depth(self) -> Optional[int]:
        blocks = tuple(self.blocks_per_stage)
        if blocks == (3, 4, 6, 3):
            return 50 if self.bottleneck else 34
        return _DEPTHS.get(blocks)

    @property
    def source(self) -> str:
        where = "".join(f"[{k!r}]" for k in self.container) or "top level"
        return f"{where}, prefix {self.prefix!r}"

    @property
    def skipped(self) -> List[str]:
        return self.skipped_heads + self.skipped_unknown

    def summary(self) -> str:
        depth = f"ResNet-{self.depth}" if self.depth else f"ResNet {list(self.blocks_per_stage)}"
        lines = [
            f"{self.format} {depth} at {self.source}: {len(self.converted)} tensors converted to "
            f"Detectron2 names, {len(self.skipped_heads)} head keys and "
            f"{len(self.skipped_unknown)} unknown keys skipped, "
            f"{len(self.dropped_buffers)} num_batches_tracked dropped",
        ]
        if self.skipped_heads:
            lines.append("skipped heads: " + ", ".join(_group_names(self.skipped_heads, _head_root)))
        if self.skipped_unknown:
            lines.append("skipped unknown keys: " + ", ".join(_group_names(self.skipped_unknown, _module_root)))
        if self.ignored_entries:
            lines.append("ignored entries: " + ", ".join(self.ignored_entries))
        return "\n".join(lines)

    def as_dict(self) -> Dict[str, Any]:
        return {
            "format": self.format,
            "source": self.source,
            "depth": self.depth,
            "blocks_per_stage": list(self.blocks_per_stage),
            "converted": dict(self.converted),
            "skipped_heads": list(self.skipped_heads),
            "skipped_unknown": list(self.skipped_unknown),
            "ignored_entries": list(self.ignored_entries),
            "dropped_buffers": list(self.dropped_buffers),
        }


def _head_root(name: str) -> str:
    """'module.encoder_k.layer1.0.conv1.weight' -> 'module.encoder_k.'"""
    m = _HEAD_RE.search(name)
    return name[: m.end(2)] + "." if m else _module_root(name)


def _module_root(name: str) -> str:
    """'transformer.encoder.layers.0.linear1.weight' -> 'transformer.encoder.'"""
    parts = name.split(".")
    return ".".join(parts[:2]) + "." if len(parts) > 2 else name


def _group_names(names: Sequence[str], root_of) -> List[str]:
    """Names, those sharing a root collapsed to 'root* (N keys)' (order kept)."""
    groups: Dict[str, List[str]] = OrderedDict()
    for n in names:
        groups.setdefault(root_of(n), []).append(n)
    out = []
    for root, members in groups.items():
        if len(members) > 2:
            out.append(f"{root}* ({len(members)} keys)")
        else:
            out.extend(members)
    return out


def _is_array(v) -> bool:
    return isinstance(v, (torch.Tensor, np.ndarray))


def _resnet_prefixes(state: Mapping) -> List[str]:
    """Prefixes P with a 4-D ``P + 'conv1.weight'`` and ``P + 'layer1.0.*'`` keys."""
    keys = [k for k in state.keys() if isinstance(k, str)]
    found = []
    for k in keys:
        if not k.endswith("conv1.weight"):
            continue
        p = k[: -len("conv1.weight")]
        if p and not p.endswith("."):
            continue
        v = state[k]
        if not _is_array(v) or len(v.shape) != 4:
            continue
        if any(x.startswith(p + "layer1.0.") for x in keys):
            found.append(p)
    return found


def _pick_prefix(prefixes: Sequence[str], where: str) -> str:
    if len(prefixes) == 1:
        return prefixes[0]
    for token in _PREFIX_PREFERENCE:
        hits = [p for p in prefixes if ("." + token) in ("." + p)]
        if len(hits) == 1:
            return hits[0]
    raise ValueError(
        f"Found several torchvision ResNets at {where} under prefixes {sorted(prefixes)}; "
        "cannot tell which one is the backbone. Extract it first (a dict of 'conv1.weight', "
        "'layer1.0.conv1.weight', ...)."
    )


def _has_resnet(obj, depth: int = 0) -> bool:
    if not isinstance(obj, Mapping) or depth > 3:
        return False
    if _resnet_prefixes(obj):
        return True
    return any(_has_resnet(v, depth + 1) for v in obj.values() if isinstance(v, Mapping))


def find_torchvision_resnet(obj) -> Optional[Tuple[Tuple[str, ...], Mapping, str, List[str]]]:
    """Locate a torchvision ResNet in ``obj``: ``(container path, flat dict, prefix,
    ignored sibling entries)``, or None when there is none."""
    if not isinstance(obj, Mapping):
        return None
    path: Tuple[str, ...] = ()
    ignored: List[str] = []
    node = obj
    for _ in range(4):
        prefixes = _resnet_prefixes(node)
        if prefixes:
            where = "".join(f"[{k!r}]" for k in path) or "top level"
            return path, node, _pick_prefix(prefixes, where), ignored
        children = [k for k, v in node.items() if isinstance(v, Mapping) and _has_resnet(v)]
        if not children:
            return None
        preferred = [k for k in _CONTAINER_KEYS if k in children]
        if preferred:
            chosen = preferred[0]
        elif len(children) == 1:
            chosen = children[0]
        else:
            where = "".join(f"[{k!r}]" for k in path) or "top level"
            raise ValueError(
                f"Found torchvision ResNets in several entries {children} at {where}; "
                "cannot tell which one is the backbone."
            )
        ignored += [".".join(path + (str(k),)) for k in node.keys() if k != chosen]
        path = path + (chosen,)
        node = node[chosen]
    return None


def _describe_keys(obj, limit: int = 6) -> str:
    if not isinstance(obj, Mapping):
        return f"a {type(obj).__name__}, not a mapping"
    keys = [str(k) for k in obj.keys()]
    shown = ", ".join(repr(k) for k in keys[:limit])
    more = f", ... ({len(keys)} keys)" if len(keys) > limit else ""
    nested = [k for k, v in obj.items() if isinstance(v, Mapping)]
    hint = f"; nested entries: {nested[:limit]}" if nested else ""
    return f"keys {shown}{more}{hint}"


def _detect_format(path: Tuple[str, ...], state: Mapping, prefix: str) -> str:
    if "teacher" in path or "student" in path or prefix.startswith(("teacher.", "student.")):
        return "dino"
    if "encoder_q." in prefix or "base_encoder." in prefix:
        return "moco"
    if any(isinstance(k, str) and re.search(r"(^|\.)(prototypes|projection_head)\.", k) for k in state):
        return "swav"
    if not path and not prefix:
        return "torchvision"
    return "torchvision (wrapped)"


def _rename(key: str) -> Optional[str]:
    """torchvision ResNet key (no prefix) -> Detectron2 ResNet key; None if unknown."""
    if key == "conv1.weight":
        return "stem.conv1.weight"
    if key.startswith("bn1.") and key[4:] in _BN_SUFFIXES:
        return "stem.conv1.norm." + key[4:]
    m = _STAGE_RE.match(key)
    if not m:
        return None
    stage, block, rest = int(m.group(1)) + 1, m.group(2), m.group(3)
    head = f"res{stage}.{block}."
    m2 = re.match(r"^conv([1-3])\.weight$", rest)
    if m2:
        return head + f"conv{m2.group(1)}.weight"
    m2 = re.match(r"^bn([1-3])\.(\w+)$", rest)
    if m2 and m2.group(2) in _BN_SUFFIXES:
        return head + f"conv{m2.group(1)}.norm.{m2.group(2)}"
    if rest == "downsample.0.weight":
        return head + "shortcut.weight"
    m2 = re.match(r"^downsample\.1\.(\w+)$", rest)
    if m2 and m2.group(1) in _BN_SUFFIXES:
        return head + f"shortcut.norm.{m2.group(1)}"
    return None


def _to_tensor(v):
    if isinstance(v, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(v))
    return v


def convert_resnet_state_dict(state_dict) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """Convert a torchvision / SwAV / DINO / MoCo ResNet checkpoint (any nesting) to
    Detectron2 ResNet names without a model prefix (load with ``matching_heuristics``).

    Returns ``(converted, report)``. Raises ``ValueError`` naming what it found when the
    input holds no torchvision-style ResNet.
    """
    located = find_torchvision_resnet(state_dict)
    if located is None:
        d2_like = isinstance(state_dict, Mapping) and any(
            isinstance(k, str) and re.search(r"(^|\.)(stem\.conv1\.weight|res2\.0\.conv1\.weight)$", k)
            for k in _flat_keys(state_dict)
        )
        hint = (
            " It has Detectron2 ResNet names already: load it with DetectionCheckpointer as is."
            if d2_like else ""
        )
        raise ValueError(
            "Not a torchvision-style ResNet checkpoint: expected 'conv1.weight' (4-D) and "
            "'layer1.0.*' keys, possibly under a prefix ('module.', 'backbone.', "
            "'module.encoder_q.') or inside 'state_dict'/'model'/'teacher'/'student'; found "
            + _describe_keys(state_dict) + "." + hint
        )
    path, state, prefix, ignored = located
    report = ConversionReport(
        format=_detect_format(path, state, prefix), container=path, prefix=prefix,
        ignored_entries=ignored,
    )
    converted: Dict[str, torch.Tensor] = OrderedDict()
    blocks: Dict[int, set] = {}
    for key, value in state.items():
        key = str(key)
        if not key.startswith(prefix):
            (report.skipped_heads if _HEAD_RE.search(key) else report.skipped_unknown).append(key)
            continue
        local = key[len(prefix):]
        if local.endswith("num_batches_tracked"):
            report.dropped_buffers.append(key)
            continue
        new = _rename(local) if _is_array(value) else None
        if new is None:
            (report.skipped_heads if _HEAD_RE.search(local) else report.skipped_unknown).append(key)
            continue
        converted[new] = _to_tensor(value)
        report.converted[key] = new
        m = _STAGE_RE.match(local)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    missing_stages = [f"layer{i}" for i in range(1, 5) if i not in blocks]
    if missing_stages or "stem.conv1.weight" not in converted:
        raise ValueError(
            f"Incomplete torchvision ResNet at {report.source}: missing "
            f"{missing_stages or ['conv1.weight']}; found " + _describe_keys(state) + "."
        )
    report.blocks_per_stage = tuple(len(blocks[i]) for i in range(1, 5))
    report.bottleneck = any(k.endswith(".conv3.weight") for k in converted)
    return converted, report


def _flat_keys(obj, depth: int = 0):
    if not isinstance(obj, Mapping) or depth > 3:
        return
    for k, v in obj.items():
        yield k
        yield from _flat_keys(v, depth + 1)


# --------------------------------------------------------------------------------------
# The checkpointer
# --------------------------------------------------------------------------------------
# Entries only checkpoints written by Detectron2's checkpointer / model zoo have.
_D2_MARKERS = ("__author__", "matching_heuristics", "iteration", "scheduler", "trainer")


class UpdetrCheckpointer(DetectionCheckpointer):
    """:class:`DetectionCheckpointer` that also reads torchvision / SwAV / DINO / MoCo
    ResNet files (converted to Detectron2 names, suffix-matched into the model) and never
    runs code from a file unless ``allow_unsafe=True``.

    Detectron2's own checkpoints load exactly as before (``torch.load(weights_only=True)``,
    the default of torch >= 2.6, which is what Detectron2 already got); model-zoo ``.pkl``
    files load as before, through a restricted unpickler. After a converted load,
    ``self.conversion_report`` holds the :class:`ConversionReport` (else None).
    """

    def __init__(self, model, save_dir="", *, allow_unsafe: bool = False, save_to_disk=None,
                 **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.allow_unsafe = bool(allow_unsafe)
        self.conversion_report: Optional[ConversionReport] = None

    @classmethod
    def from_config(cls, cfg, model, save_dir="", **kwargs):
        """Reads ``MODEL.ALLOW_UNSAFE_CHECKPOINTS`` (default False) from a yaml config."""
        allow = cfg.MODEL.ALLOW_UNSAFE_CHECKPOINTS
        return cls(model, save_dir, allow_unsafe=allow, **kwargs)

    def _model_uses_torchvision_names(self) -> bool:
        """True when the model itself holds torchvision ResNet names, so a torchvision
        file must load unconverted."""
        return any(k == "layer1.0.conv1.weight" or k.endswith(".layer1.0.conv1.weight")
                   for k in self.model.state_dict().keys())

    def _load_file(self, filename):
        self.conversion_report = None
        data = load_checkpoint_file(filename, allow_unsafe=self.allow_unsafe)
        if filename.endswith(".pkl"):
            if isinstance(data, Mapping) and "model" in data and "__author__" in data:
                self.logger.info("Reading a file from '{}'".format(data["__author__"]))
                return data
            if isinstance(data, Mapping) and "blobs" not in data and self._convertible(data):
                return self._convert(data)
            if isinstance(data, Mapping) and "blobs" in data:
                data = data["blobs"]
            data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
            return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
        if filename.endswith(".pyth"):
            assert isinstance(data, Mapping) and "model_state" in data, (
                f"Cannot load .pyth file {filename}; pycls checkpoints must contain 'model_state'."
            )
            model_state = {k: v for k, v in data["model_state"].items()
                           if not k.endswith("num_batches_tracked")}
            return {"model": model_state, "__author__": "pycls", "matching_heuristics": True}
        if self._convertible(data):
            return self._convert(data)
        if isinstance(data, Mapping) and "model" in data:
            return data
        return {"model": data}

    def _convertible(self, data) -> bool:
        if not isinstance(data, Mapping) or any(k in data for k in _D2_MARKERS):
            return False
        if self._model_uses_torchvision_names():
            return False
        return find_torchvision_resnet(data) is not None

    def _convert(self, data):
        converted, report = convert_resnet_state_dict(data)
        self.conversion_report = report
        return {
            "model": converted,
            "__author__": f"updetr_d2 converted from {report.format}",
            "matching_heuristics": True,
        }

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        report = self.conversion_report
        if report is not None:
            self.logger.info("Converted ResNet weights: " + report.summary().replace("\n", "\n  "))
            if len(report.skipped_unknown) > len(report.converted):
                self.logger.warning(
                    "Only the ResNet backbone was converted; %d other keys were not loaded "
                    "(is this a full detector checkpoint?)", len(report.skipped_unknown))
        return incompatible

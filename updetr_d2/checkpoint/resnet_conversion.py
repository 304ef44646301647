"""Converting users' ResNet weights to Detectron2 ResNet names, with a report.

:func:`convert_resnet_state_dict` takes a torchvision ResNet state dict, or a SwAV,
MoCo, DINO or other checkpoint that nests one (located by
:func:`~updetr_d2.checkpoint.torchvision_resnet.find_torchvision_resnet`), and returns
its backbone tensors under Detectron2 ResNet names without a model prefix, meant for
Detectron2's suffix matching (``matching_heuristics``), so they load into any model that
holds a Detectron2 ResNet (``Detr`` keeps it at ``backbone.backbone.``). Heads
(projection heads, prototypes, ``fc``, the MoCo key encoder and queue, DINO heads) are
skipped; the :class:`ConversionReport` says what was converted and what was not.
"""
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .torchvision_resnet import (
    HEAD_RE,
    STAGE_RE,
    container_label,
    detectron2_name,
    find_torchvision_resnet,
    is_array,
)

__all__ = ["ConversionReport", "convert_resnet_state_dict"]

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
        return f"{container_label(self.container)}, prefix {self.prefix!r}"

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
    m = HEAD_RE.search(name)
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


def _to_tensor(v):
    if isinstance(v, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(v))
    return v


def _flat_keys(obj, depth: int = 0):
    if not isinstance(obj, Mapping) or depth > 3:
        return
    for k, v in obj.items():
        yield k
        yield from _flat_keys(v, depth + 1)


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
            (report.skipped_heads if HEAD_RE.search(key) else report.skipped_unknown).append(key)
            continue
        local = key[len(prefix):]
        if local.endswith("num_batches_tracked"):
            report.dropped_buffers.append(key)
            continue
        new = detectron2_name(local) if is_array(value) else None
        if new is None:
            (report.skipped_heads if HEAD_RE.search(local) else report.skipped_unknown).append(key)
            continue
        converted[new] = _to_tensor(value)
        report.converted[key] = new
        m = STAGE_RE.match(local)
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

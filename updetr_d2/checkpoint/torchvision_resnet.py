"""Where a torchvision ResNet sits in a checkpoint, and what its keys are called in
Detectron2.

Self-supervised checkpoints nest the torchvision names (``conv1.weight``,
``layer1.0.bn1.running_mean``, ``layer1.0.downsample.0.weight``, ``fc.weight`` ...):
SwAV under ``state_dict`` / ``module.``, MoCo under ``state_dict`` /
``module.encoder_q.`` (v3: ``base_encoder``), DINO under ``teacher`` else ``student`` /
``backbone.``. :func:`find_torchvision_resnet` finds the one backbone among them and
:func:`detectron2_name` renames one of its keys (``stem.conv1.weight``,
``res2.0.conv1.norm.running_mean``, ``res2.0.shortcut.weight`` ...). The conversion
itself, with its report, is :mod:`updetr_d2.checkpoint.resnet_conversion`.
"""
import re
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = [
    "HEAD_RE",
    "STAGE_RE",
    "container_label",
    "detectron2_name",
    "find_torchvision_resnet",
    "is_array",
]

# Child entries tried first when the ResNet is nested, in this order. DINO: the teacher
# (the weights DINO evaluates) when present, else the student.
_CONTAINER_KEYS = ("teacher", "student", "state_dict", "model", "model_state", "network", "net")
# Among several ResNets in one flat dict, the query / online encoder wins.
_PREFIX_PREFERENCE = ("encoder_q.", "base_encoder.", "teacher.", "student.")
# Keys that belong to heads of the pretraining methods (matched on a dotted component).
HEAD_RE = re.compile(
    r"(^|\.)(projection_head|prototypes|head|heads|fc|encoder_k|momentum_encoder|"
    r"predictor|queue\w*)(\.|$)"
)
# 'layer<stage>.<block>.<rest>' of a torchvision ResNet key without prefix.
STAGE_RE = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")
_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var")


def is_array(v) -> bool:
    """A tensor, or a numpy array as model-zoo ``.pkl`` files hold them."""
    return isinstance(v, (torch.Tensor, np.ndarray))


def container_label(path: Sequence[str]) -> str:
    """``("state_dict",)`` -> ``"['state_dict']"``; ``()`` -> ``"top level"``."""
    return "".join(f"[{k!r}]" for k in path) or "top level"


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
        if not is_array(v) or len(v.shape) != 4:
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
            return path, node, _pick_prefix(prefixes, container_label(path)), ignored
        children = [k for k, v in node.items() if isinstance(v, Mapping) and _has_resnet(v)]
        if not children:
            return None
        preferred = [k for k in _CONTAINER_KEYS if k in children]
        if preferred:
            chosen = preferred[0]
        elif len(children) == 1:
            chosen = children[0]
        else:
            raise ValueError(
                f"Found torchvision ResNets in several entries {children} at "
                f"{container_label(path)}; "
                "cannot tell which one is the backbone."
            )
        ignored += [".".join(path + (str(k),)) for k in node.keys() if k != chosen]
        path = path + (chosen,)
        node = node[chosen]
    return None


def detectron2_name(key: str) -> Optional[str]:
    """torchvision ResNet key (no prefix) -> Detectron2 ResNet key; None if unknown."""
    if key == "conv1.weight":
        return "stem.conv1.weight"
    if key.startswith("bn1.") and key[4:] in _BN_SUFFIXES:
        return "stem.conv1.norm." + key[4:]
    m = STAGE_RE.match(key)
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

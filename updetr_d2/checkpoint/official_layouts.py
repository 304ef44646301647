"""The registry of official DETR-family checkpoint layouts, and what reads and converts any
of them.

A layout is a kind of official file (``facebookresearch/detr``'s detection or panoptic
model, Deformable DETR's variants, UP-DETR's ...), told apart by marker keys only its
files have all of. Each layout registers itself here (:func:`register_official_layout`)
with its converter, its markers, the config its converted model runs with and the config
overrides a file needs; the layouts live in :mod:`.official_detr` (DETR, registered when
:mod:`updetr_d2.checkpoint` is imported), :mod:`.official_deformable` and the methods'
``convert`` modules, so this module imports none of them.

* :func:`load_official_checkpoint`: reads an official file with ``torch.load(weights_only
  =True)`` and an allow-list of its ``argparse.Namespace`` alone, so nothing else in the
  file can run code;
* :func:`detect_official_detr`: a state dict's layout from its keys;
* :func:`convert_official_layout`, :func:`convert_official_for_model`: the conversion,
  checked against the model's tensors (the latter is what ``DetrCheckpointer`` calls);
* :func:`official_layout_config`, :func:`official_layout_opts`: the config and overrides
  for a file (``tools/convert_detr_checkpoint.py``);
* :func:`looks_official`, :func:`unexplained_keys_message`: an official-looking file of
  no registered layout is an error that says why.

Shared conversion pieces (backbone, class rows) are :mod:`.official_helpers`.
"""
import argparse
import contextlib
import os
import pickle
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .official_helpers import official_dilation
from .safe_load import UnsafeCheckpointError

__all__ = [
    "convert_official_for_model",
    "convert_official_layout",
    "detect_official_detr",
    "load_official_checkpoint",
    "looks_official",
    "official_layout_config",
    "official_layout_opts",
    "official_layouts",
    "official_state_dict",
    "register_official_layout",
    "register_official_markers",
    "unexplained_keys_message",
]

# layout -> convert(state_dict, model shapes by key) -> the model's state dict.
_LAYOUTS = {}
# layout -> the keys that identify it. A layout may have markers before its converter
# (the panoptic one, which a method converts): its files are then still recognised.
_MARKERS: Dict[str, Tuple[str, ...]] = {}
# layout -> the config (path relative to the repository root, or a function of the state
# dict and the file's args giving one) whose model the converted weights load into, with
# the preprocessing the official weights expect.
_CONFIGS: Dict[str, object] = {}
# layout -> opts(state_dict, args, config) -> the overrides that config needs for this file.
_OPTS: Dict[str, Callable] = {}


def register_official_markers(layout: str, markers: Sequence[str]) -> None:
    """The marker keys of ``layout`` ahead of its converter, which a method registers
    (:func:`register_official_layout` without markers) when it is imported; until then
    :func:`detect_official_detr` still tells its files and :func:`convert_official_layout`
    says which import they need."""
    _MARKERS[layout] = tuple(markers)


def register_official_layout(layout: str, markers: Optional[Sequence[str]] = None, config=None,
                             opts: Optional[Callable] = None):
    """Decorator: ``convert(state_dict, model_shapes) -> Dict[str, Tensor]`` for the files
    :func:`detect_official_detr` calls ``layout``. ``markers``: keys a file of this layout
    has all of (needed for a new layout; a layout extending another lists the other's
    markers plus its own, so that the more specific one wins). ``config``: the config the
    converted model runs with, a path relative to the repository root or
    ``config(state_dict, args) -> path`` (both may be None: see
    :func:`official_layout_config`). ``opts``: ``opts(state_dict, args, config) -> [KEY,
    VALUE, ...]`` (or ``["key=value"]`` for a LazyConfig ``.py``), the overrides that make
    the config's model the file's (ResNet depth, feature levels ...).

    The converter raises ValueError listing what it cannot map; whatever it leaves out on
    purpose (duplicates, training-only tensors) it names with
    :func:`~.official_helpers.report_dropped`."""
    if markers is None and layout not in _MARKERS:
        raise ValueError(f"official layout {layout!r} needs its marker keys")

    def register(convert):
        if markers is not None:
            _MARKERS[layout] = tuple(markers)
        if config is not None:
            _CONFIGS[layout] = config
        if opts is not None:
            _OPTS[layout] = opts
        _LAYOUTS[layout] = convert
        return convert
    return register


def official_layouts() -> Dict[str, Tuple[str, ...]]:
    """Every registered layout and its marker keys."""
    return dict(_MARKERS)


def official_layout_config(layout: str, state_dict: Optional[Mapping] = None, args=None) -> Optional[str]:
    """The config registered with ``layout`` (a path relative to the repository root) for
    this file (``state_dict``, its ``args``; the layout's usual one without them), or None."""
    config = _CONFIGS.get(layout)
    return config(state_dict, args) if callable(config) else config


def official_layout_opts(layout: str, state_dict: Mapping, args=None, config: str = "") -> List[str]:
    """The config overrides the layout registered for this file (see :func:`register_official_layout`)."""
    opts = _OPTS.get(layout)
    return list(opts(state_dict, args, config or official_layout_config(layout, state_dict, args) or "")) if opts else []


def detect_official_detr(state_dict: Mapping) -> Optional[str]:
    """The official layout of ``state_dict``, from its keys alone: the registered layout
    (:func:`register_official_layout`) whose marker keys are all there, the most specific
    one (most markers) when several are, or None (another model, or an incomplete one).
    Built in: "panoptic" (``DETRsegm``: the detector under ``detr.`` beside its mask head)
    and "detection" (plain ``DETR``). The layout says nothing of the class head's size (a
    panoptic box-stage DETR is "detection" with 251 rows)."""
    if not isinstance(state_dict, Mapping):
        return None
    keys = set(state_dict.keys())
    found = sorted(((len(m), layout) for layout, m in _MARKERS.items() if all(k in keys for k in m)), reverse=True)
    if len(found) > 1 and found[0][0] == found[1][0]:
        raise ValueError(f"the keys match the official layouts {found[0][1]!r} and {found[1][1]!r} equally well")
    return found[0][1] if found else None


def official_state_dict(checkpoint) -> Mapping:
    """The state dict of a loaded official file: its ``"model"`` entry (the DETR family's
    files), its ``"state_dict"`` entry (mmdetection's, e.g. Co-DETR), or the file itself
    when it is a bare state dict."""
    if isinstance(checkpoint, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(checkpoint.get(key), Mapping):
                return checkpoint[key]
    return checkpoint


# --- reading the files ----------------------------------------------------------------------
@contextlib.contextmanager
def _namespace_allowed():
    """``argparse.Namespace`` allowed in weights-only loads within the block."""
    serialization = torch.serialization
    if hasattr(serialization, "safe_globals"):  # torch >= 2.5: scoped to the block
        with serialization.safe_globals([argparse.Namespace]):
            yield
    elif hasattr(serialization, "add_safe_globals"):  # torch 2.4: process-wide, and only this class
        serialization.add_safe_globals([argparse.Namespace])
        yield
    else:
        raise RuntimeError(
            f"torch {torch.__version__} cannot allow argparse.Namespace in weights-only loads "
            "(needs torch >= 2.4)"
        )


def _refused_global(error: Exception) -> str:
    """The line of torch's weights-only error that names the refused global (its first
    lines are generic advice)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if "Unsupported global" in line or "GLOBAL" in line]
    line = (named or lines or [""])[0]
    return line.split("WeightsUnpickler error:")[-1].split(" Please use")[0].strip()


def load_official_checkpoint(path: str):
    """Read an official DETR file with ``torch.load(weights_only=True)`` (on CPU),
    allowing ``argparse.Namespace`` (its ``"args"``) and nothing else: tensors,
    containers and that one class. Not the unsafe switch: a file pickling any other
    object raises :class:`~updetr_d2.checkpoint.safe_load.UnsafeCheckpointError`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint '{path}' not found")
    try:
        with _namespace_allowed():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"Refusing to load '{path}': beyond tensors, containers and argparse.Namespace it "
            f"pickles other Python objects ({_refused_global(e)}); an official DETR file does not. "
            f"Only for a file you trust, load it with torch.load(weights_only=False) yourself."
        ) from e


# --- conversion onto a model ----------------------------------------------------------------
def convert_official_layout(layout: str, state_dict: Mapping, model_shapes: Mapping[str, Tuple[int, ...]]
                            ) -> Dict[str, Tensor]:
    """``state_dict`` (of the official ``layout``) converted onto the model of
    ``model_shapes``; ValueError unless it fills every model tensor with the model's shape
    and nothing else."""
    if layout not in _LAYOUTS:
        raise ValueError(f"an official DETR-family {layout} checkpoint needs its method imported (updetr_d2.methods)")
    converted = _LAYOUTS[layout](state_dict, model_shapes)
    problems = [f"unfilled: {k} {tuple(v)}" for k, v in model_shapes.items() if k not in converted]
    problems += [f"not in the model: {k}" for k in converted if k not in model_shapes]
    problems += [f"shape: {k} {tuple(v.shape)} converted, {tuple(model_shapes[k])} in the model"
                 for k, v in converted.items() if k in model_shapes and tuple(v.shape) != tuple(model_shapes[k])]
    if problems:
        raise ValueError(
            f"the official {layout} checkpoint does not fit the model ({len(problems)} differences; its config: "
            f"{official_layout_config(layout, state_dict) or 'none registered'}): " + "; ".join(problems)
        )
    return converted


def looks_official(checkpoint) -> bool:
    """True for a file of the DETR family's official code: a torchvision backbone under
    ``backbone.0.`` (``detr.backbone.0.`` in DETRsegm), or an ``argparse.Namespace`` under
    ``"args"`` beside a DETR-like state dict (self-supervised ResNet files carry args too,
    without these keys)."""
    state_dict = official_state_dict(checkpoint)
    if not isinstance(state_dict, Mapping):
        return False
    keys = [k for k in state_dict if isinstance(k, str)]
    if any(k.startswith(("backbone.0.", "detr.backbone.0.")) for k in keys):
        return True
    args = checkpoint.get("args") if isinstance(checkpoint, Mapping) else None
    return isinstance(args, argparse.Namespace) and any(
        k.startswith(("transformer.", "class_embed", "query_embed.")) for k in keys)


def unexplained_keys_message(state_dict: Mapping, model_shapes: Optional[Mapping] = None) -> str:
    """Why no registered layout fits: the nearest layouts' missing marker keys, the file's
    keys under module names no layout has and, given the model's shapes, what the nearest
    layout's converter cannot map."""
    keys = [k for k in state_dict if isinstance(k, str)]
    present = set(keys)
    known = {_module_name(m) for markers in _MARKERS.values() for m in markers}
    nearest = sorted(_MARKERS.items(), key=lambda item: -sum(m in present for m in item[1]) / len(item[1]))[:2]
    lines = [f"nearest layout {name!r} lacks " + ", ".join(m for m in markers if m not in present)
             for name, markers in nearest]
    unknown = [k for k in keys if _module_name(k) not in known]
    lines.append(f"{len(unknown)} of its {len(keys)} keys are under modules no registered layout has"
                 + (": " + ", ".join(unknown[:60]) + (f" ... and {len(unknown) - 60} more" if len(unknown) > 60 else "")
                    if unknown else ""))
    if model_shapes is not None and nearest and nearest[0][0] in _LAYOUTS:
        try:
            _LAYOUTS[nearest[0][0]](state_dict, model_shapes)
        except (ValueError, KeyError) as e:
            lines.append(f"read as {nearest[0][0]!r}: {e}")
    return "; ".join(lines) + f" (registered layouts: {', '.join(sorted(_MARKERS))})"


def _module_name(key: str) -> str:
    """The module a key belongs to, down to its second name (``transformer.decoder``,
    ``class_embed``), numbers dropped: what tells the layouts apart."""
    parts = [p for p in key.split(".")[:-1] if not p.isdigit()]
    return ".".join(parts[:2]) or key


def _check_dilation(model, args) -> None:
    """An official file says whether its last ResNet stage is dilated (DC5); the model must
    run it the same way: torchvision dilates every res5 block but the first, whose 3x3
    conv keeps dilation 1 (Detectron2's RES5_DILATION dilates all of them)."""
    dilated = official_dilation(args)
    try:
        res5 = model.get_submodule("backbone.backbone.res5")
    except AttributeError:
        return
    found = [tuple(block.conv2.dilation) for block in res5 if hasattr(block, "conv2")]
    want = [(1, 1)] + [(2, 2) if dilated else (1, 1)] * (len(found) - 1)
    if dilated is not None and found != want:
        raise ValueError(
            f"the official file was trained with{'' if dilated else 'out'} DC5 (args.dilation={dilated}): its res5 "
            f"3x3 convs have dilations {want}, the model's {found}. "
            + ("Use configs/detr/detr_r50_dc5_official.py (the yaml RES5_DILATION 2 also dilates the first block)"
               if dilated else "Use a config without RES5_DILATION")
        )


def convert_official_for_model(checkpoint, model) -> Optional[Tuple[str, Dict[str, Tensor]]]:
    """``(layout, state dict)`` of a loaded official DETR-family file for ``model``, or None
    when the file is not from the official code. Raises ValueError naming what cannot be
    mapped (a file that looks official but matches no registered layout, a class count the
    head cannot be gathered onto, a model tensor left unfilled, a DC5 mismatch)."""
    state_dict = official_state_dict(checkpoint)
    layout = detect_official_detr(state_dict)
    if layout is None:
        if looks_official(checkpoint):
            shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
            raise ValueError("an official DETR-family checkpoint of no registered layout: "
                             + unexplained_keys_message(state_dict, shapes))
        return None
    args = checkpoint.get("args") if isinstance(checkpoint, Mapping) else None
    _check_dilation(model, args)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return layout, convert_official_layout(layout, state_dict, shapes)

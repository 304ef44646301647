"""Users' ResNet weights by path, in the formats they have, read without running code.

:class:`DetrCheckpointer` is Detectron2's ``DetectionCheckpointer`` that also loads
torchvision / SwAV / DINO / MoCo ResNet files and Detectron2's ``R-50.pkl`` into any model
holding a Detectron2 ResNet, and refuses unsafe pickles unless asked. It is not UP-DETR
specific; ``UpdetrCheckpointer`` is its former name, kept as an alias.

One idea a module:

* :mod:`.safe_load`: reading a file without running code from it
  (:func:`load_checkpoint_file`, :class:`UnsafeCheckpointError`);
* :mod:`.torchvision_resnet`: where a torchvision ResNet sits in a checkpoint and what
  its keys are called in Detectron2 (:func:`find_torchvision_resnet`);
* :mod:`.resnet_conversion`: the conversion and its report
  (:func:`convert_resnet_state_dict`, :class:`ConversionReport`);
* :mod:`.checkpointer`: :class:`DetrCheckpointer` (alias ``UpdetrCheckpointer``);
* :mod:`.official_layouts`: the registry of the official DETR-family files' layouts,
  their detection by keys, reading and conversion on load; :mod:`.official_helpers`: the
  pieces the layouts' converters share;
* :mod:`.official_detr`, :mod:`.official_deformable`: the official DETR and Deformable
  DETR layouts (methods register theirs).

Offline conversion: ``tools/convert_backbone_weights.py``.
"""
from .checkpointer import DetrCheckpointer, UpdetrCheckpointer
# Importing the official layouts registers them for DetrCheckpointer; DETR's first, so
# that the registry lists the layouts in the same order whatever imports it.
from .official_detr import convert_official_detr  # isort: skip
from .official_deformable import convert_official_deformable  # isort: skip
from .resnet_conversion import ConversionReport, convert_resnet_state_dict
from .safe_load import UnsafeCheckpointError, load_checkpoint_file
from .safe_load import UNSAFE_FLAG_HELP  # noqa: F401  (importable from the old module)
from .torchvision_resnet import find_torchvision_resnet

__all__ = [
    "ConversionReport",
    "DetrCheckpointer",
    "UnsafeCheckpointError",
    "UpdetrCheckpointer",
    "convert_official_deformable",
    "convert_official_detr",
    "convert_resnet_state_dict",
    "find_torchvision_resnet",
    "load_checkpoint_file",
]

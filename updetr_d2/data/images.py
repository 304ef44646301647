"""The one image reader of the project's mappers: Detectron2's ``read_image`` with the
pixel mode of the file made 8-bit first.

Detectron2 turns a PIL image into the requested format with ``Image.convert``, which
clips instead of scaling: a 16-bit grayscale PNG (mode "I;16" or "I") becomes almost
pure white, a float image ("F") black or white, and the colour a transparent pixel
happens to store shows through. Here those are scaled by their value range first, so
every image reaches the model with the brightness a viewer shows:

- "I;16*" and "I": 16-bit samples, 0..65535 -> 0..255 (divided by 257; "I" values
  outside 16 bits are clipped);
- "F": floats in [0, 1] are scaled by 255; any other range is taken as 0..255 and clipped;
- alpha ("RGBA", "LA", "PA", palette images with a transparent colour): composited
  over black, i.e. a fully transparent pixel is black whatever colour it stores;
- "P", "CMYK", "YCbCr", "1" and the other 8-bit modes: PIL's own conversion.

Label maps (semantic segmentation) are not images: read them with Detectron2's reader.
"""
import numpy as np
from detectron2.data import detection_utils as d2_utils
from detectron2.utils.file_io import PathManager
from PIL import Image

__all__ = ["read_image", "to_8bit"]

_SIXTEEN_BIT_SCALE = 257.0  # 65535 / 255: the 16-bit range onto the 8-bit one
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")


def _array_to_l(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")


def _over_black(image: Image.Image) -> Image.Image:
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
    rgb = rgba[..., :3] * (rgba[..., 3:] / 255.0)
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "RGB")


def to_8bit(image: Image.Image) -> Image.Image:
    """``image`` in an 8-bit mode ("L", "RGB" or a mode PIL converts correctly) with its
    values scaled, not clipped (see the module docstring)."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        return _array_to_l(np.asarray(image).astype(np.float64) / _SIXTEEN_BIT_SCALE)
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        unit_range = values.size == 0 or (values.min() >= 0.0 and values.max() <= 1.0)
        return _array_to_l(values * 255.0 if unit_range else values)
    if mode == "P" and "transparency" in image.info:
        return _over_black(image)
    if mode in _ALPHA_MODES:
        return _over_black(image)
    return image


def read_image(file_name: str, format: str = None) -> np.ndarray:
    """As :func:`detectron2.data.detection_utils.read_image` (EXIF orientation applied,
    HWC ``uint8`` in ``format``), with 16-bit, float and transparent images scaled to 8
    bits first. ``format=None`` returns the file's own values, as Detectron2 does."""
    with PathManager.open(file_name, "rb") as f:
        image = Image.open(f)
        image = d2_utils._apply_exif_orientation(image)
        if format is not None:
            image = to_8bit(image)
        return d2_utils.convert_PIL_to_numpy(image, format)

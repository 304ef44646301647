"""UP-DETR's query patch augmentation (colour jitter, grayscale, blur; the paper's
torchvision pipeline) on uint8 patch arrays, with OpenCV."""
import math

import cv2
import numpy as np

__all__ = ["augment_patches"]

# Patch augmentation of the paper (section 2.3 of the spec), torchvision's parameters.
JITTER_PROB = 0.8
BRIGHTNESS = 0.4
CONTRAST = 0.4
SATURATION = 0.4
HUE = 0.1
GRAYSCALE_PROB = 0.2
BLUR_PROB = 0.5
BLUR_SIGMA = (0.1, 2.0)

# ITU-R 601-2 luma, as PIL's "L" conversion and cv2's RGB2GRAY.
_LUMA_RGB = np.array([0.299, 0.587, 0.114])
_IDENTITY_LUT = np.arange(256, dtype=np.float64)
_IDENTITY_U8 = np.arange(256, dtype=np.uint8)


def _lut(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


_EYE3 = np.eye(3)


def _hue_lut(turns: float) -> np.ndarray:
    """A 3-channel LUT adding ``turns`` of a full turn to H (8-bit, wrapping), keeping S, V."""
    lut = np.empty((256, 1, 3), np.uint8)
    lut[:, 0, :] = _IDENTITY_U8[:, None]
    lut[:, 0, 0] += np.uint8(int(round(turns * 256)) % 256)
    return lut


def augment_patches(
    patches: np.ndarray,
    rng: np.random.Generator,
    channel_order: str = "RGB",
    return_params: bool = False,
):
    """UP-DETR's patch augmentation on uint8 ``[M, P, P, 3]`` patches, in place.

    As the paper's torchvision pipeline, per patch and in this order:

    1. with probability 0.8, colour jitter: brightness, contrast, saturation factors
       ~ U[0.6, 1.4] and a hue shift ~ U[-0.1, 0.1] of a full turn, applied in the FIXED
       order brightness, contrast, saturation, hue (torchvision picks a random order per
       call), each followed by rounding and clipping to [0, 255]:
       brightness ``b * x``; contrast ``c * x + (1 - c) * mean(gray(x))``; saturation
       ``s * x + (1 - s) * gray(x)`` per pixel; hue: rotate H in 8-bit HSV (as
       torchvision's PIL path);
    2. with probability 0.2, grayscale (ITU-R 601-2 luma copied to the 3 channels);
    3. with probability 0.5, Gaussian blur with sigma ~ U[0.1, 2] (kernel 2*ceil(3 sigma)+1,
       reflected border).

    No flip. All the random numbers are drawn up front with a fixed count (8 per patch),
    whatever is applied. ``channel_order`` ("RGB" or "BGR") tells where red and blue are.
    With ``return_params`` also returns a dict of the per-patch draws (for tests).
    """
    if channel_order not in ("RGB", "BGR"):
        raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
    m = len(patches)
    jitter = rng.random(m) < JITTER_PROB
    brightness = rng.uniform(1 - BRIGHTNESS, 1 + BRIGHTNESS, m)
    contrast = rng.uniform(1 - CONTRAST, 1 + CONTRAST, m)
    saturation = rng.uniform(1 - SATURATION, 1 + SATURATION, m)
    hue = rng.uniform(-HUE, HUE, m)
    gray = rng.random(m) < GRAYSCALE_PROB
    blur = rng.random(m) < BLUR_PROB
    sigma = rng.uniform(BLUR_SIGMA[0], BLUR_SIGMA[1], m)

    rgb = channel_order == "RGB"
    luma = _LUMA_RGB if rgb else _LUMA_RGB[::-1]
    luma_rows = np.tile(luma, (3, 1))  # row c: output channel c = luma . pixel
    to_hsv, from_hsv = ((cv2.COLOR_RGB2HSV_FULL, cv2.COLOR_HSV2RGB_FULL) if rgb
                        else (cv2.COLOR_BGR2HSV_FULL, cv2.COLOR_HSV2BGR_FULL))
    # One patch at a time: cheaper than batching here (no gather/scatter copies), each
    # OpenCV call writes into the patch or a temporary.
    for i in np.flatnonzero(jitter):
        p = patches[i]
        cv2.LUT(p, _lut(_IDENTITY_LUT * brightness[i]), dst=p)
        mean = float(np.dot(luma, cv2.mean(p)[:3]))
        cv2.LUT(p, _lut(contrast[i] * _IDENTITY_LUT + (1 - contrast[i]) * mean), dst=p)
        s = saturation[i]
        cv2.transform(p, (1 - s) * luma_rows + s * _EYE3, dst=p)
        # Hue: H of 8-bit "full" HSV covers a turn in 256 steps; the shift wraps around.
        hsv = cv2.cvtColor(p, to_hsv)
        cv2.LUT(hsv, _hue_lut(hue[i]), dst=hsv)
        cv2.cvtColor(hsv, from_hsv, dst=p)
    for i in np.flatnonzero(gray):
        p = patches[i]
        p[...] = cv2.cvtColor(p, cv2.COLOR_RGB2GRAY if rgb else cv2.COLOR_BGR2GRAY)[..., None]
    for i in np.flatnonzero(blur):
        ksize = 2 * int(math.ceil(3 * sigma[i])) + 1
        cv2.GaussianBlur(patches[i], (ksize, ksize), sigmaX=float(sigma[i]), sigmaY=float(sigma[i]),
                         dst=patches[i], borderType=cv2.BORDER_REFLECT_101)
    if return_params:
        params = dict(jitter=jitter, brightness=brightness, contrast=contrast, saturation=saturation,
                      hue=hue, grayscale=gray, blur=blur, sigma=sigma)
        return patches, params
    return patches

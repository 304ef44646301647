"""UP-DETR's patch augmentation alone (methods/updetr/patch_augmentation.py): draw
frequencies and the jitter against reference formulas. Its statistics through the mapper:
test_query_patch_mapper.py."""
import colorsys

import numpy as np
import pytest

import updetr_d2  # noqa: F401
from updetr_d2.methods.updetr import augment_patches


def test_augmentation_flags_frequencies():
    rng = np.random.default_rng(0)
    patches = np.zeros((4000, 2, 2, 3), np.uint8)
    _, params = augment_patches(patches, rng, return_params=True)
    assert abs(params["jitter"].mean() - 0.8) < 0.03
    assert abs(params["grayscale"].mean() - 0.2) < 0.03
    assert abs(params["blur"].mean() - 0.5) < 0.03
    for key, lo, hi in [("brightness", 0.6, 1.4), ("contrast", 0.6, 1.4), ("saturation", 0.6, 1.4),
                        ("hue", -0.1, 0.1), ("sigma", 0.1, 2.0)]:
        v = params[key]
        assert v.min() >= lo and v.max() <= hi and v.max() - v.min() > 0.9 * (hi - lo)


def _reference(colour, b, c, s, hue):
    """Brightness, contrast, saturation, hue of one colour, as floats (torchvision's formulas)."""
    luma = np.array([0.299, 0.587, 0.114])
    x = np.clip(np.rint(np.asarray(colour, float) * b), 0, 255)
    x = np.clip(np.rint(c * x + (1 - c) * luma @ x), 0, 255)  # constant patch: mean gray = its gray
    x = np.clip(np.rint(s * x + (1 - s) * luma @ x), 0, 255)
    h, sat, v = colorsys.rgb_to_hsv(*(x / 255))
    return np.array(colorsys.hsv_to_rgb((h + hue) % 1.0, sat, v)) * 255


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_augmentation_matches_reference_on_flat_patches(order):
    """Flat-colour patches: blur leaves them alone, grayscale gives the luma, the jitter
    follows the documented formulas (8-bit HSV costs a few levels)."""
    rng = np.random.default_rng(4)
    colours = rng.integers(0, 256, (300, 3))
    rgb_patches = np.broadcast_to(colours[:, None, None, :], (300, 6, 6, 3)).astype(np.uint8)
    patches = np.ascontiguousarray(rgb_patches if order == "RGB" else rgb_patches[..., ::-1])
    out, prm = augment_patches(patches.copy(), rng, channel_order=order, return_params=True)
    if order == "BGR":
        out = out[..., ::-1]
    assert (out == out[:, :1, :1]).all()  # still flat
    out = out[:, 0, 0].astype(np.float64)
    errors = []
    for i, colour in enumerate(colours):
        expected = colour.astype(np.float64)
        if prm["jitter"][i]:
            expected = _reference(colour, prm["brightness"][i], prm["contrast"][i],
                                  prm["saturation"][i], prm["hue"][i])
        if prm["grayscale"][i]:
            expected = np.full(3, np.array([0.299, 0.587, 0.114]) @ expected)
            assert out[i, 0] == out[i, 1] == out[i, 2]
        error = np.abs(out[i] - expected).max()
        if prm["jitter"][i]:
            # The hue turns in 8-bit HSV (as torchvision on PIL images): H has 256 steps per
            # turn, one step moves a channel by up to 6 levels; conversion and shift rounding
            # cost up to a step each.
            assert error <= 13, (i, colour, out[i], expected)
            errors.append(error)
        else:
            assert error <= 0.51, (i, colour, out[i], expected)
    assert np.mean(errors) < 3, np.mean(errors)


def _reference_patch(patch, b, c, s, hue):
    """The documented jitter on a textured float patch: contrast blends with the patch's
    mean gray, saturation with each pixel's gray."""
    luma = np.array([0.299, 0.587, 0.114])
    x = np.clip(np.rint(patch.astype(np.float64) * b), 0, 255)
    x = np.clip(np.rint(c * x + (1 - c) * (x @ luma).mean()), 0, 255)
    x = np.clip(np.rint(s * x + (1 - s) * (x @ luma)[..., None]), 0, 255)
    out = np.empty_like(x)
    for idx in np.ndindex(x.shape[:2]):
        h, sat, v = colorsys.rgb_to_hsv(*(x[idx] / 255))
        out[idx] = np.array(colorsys.hsv_to_rgb((h + hue) % 1.0, sat, v)) * 255
    return out


def test_augmentation_matches_reference_on_textured_patches():
    rng = np.random.default_rng(5)
    patches = rng.integers(0, 256, (60, 8, 8, 3), dtype=np.uint8)
    out, prm = augment_patches(patches.copy(), rng, return_params=True)
    errors = []
    checked = 0
    for i in np.flatnonzero(~prm["blur"]):
        expected = patches[i].astype(np.float64)
        if prm["jitter"][i]:
            expected = _reference_patch(patches[i], prm["brightness"][i], prm["contrast"][i],
                                        prm["saturation"][i], prm["hue"][i])
        if prm["grayscale"][i]:
            expected = np.repeat(expected @ np.array([0.299, 0.587, 0.114]), 3).reshape(8, 8, 3)
        error = np.abs(out[i] - expected)
        assert error.max() <= (13 if prm["jitter"][i] else 0.51), i
        errors.append(error.mean())
        checked += 1
    assert checked > 20 and np.mean(errors) < 2, np.mean(errors)
    # Blurred patches are smoother than their unblurred versions.
    def roughness(p):
        return np.abs(np.diff(p.astype(int), axis=1)).mean()

    for i in np.flatnonzero(prm["blur"] & (prm["sigma"] > 0.8)):
        assert roughness(out[i]) < roughness(patches[i])

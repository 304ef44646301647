"""Images in unusual pixel modes reach the model with the brightness a viewer shows:
16-bit grayscale PNGs are scaled, not clipped to white (updetr_d2.data.images), through
the project's mappers."""
import numpy as np
import pytest
from detectron2.data import detection_utils
from PIL import Image

import updetr_d2  # noqa: F401
from updetr_d2.data.images import read_image
from updetr_d2.data.mappers import DetrDatasetMapper

GRADIENT = np.linspace(0, 65535, 16 * 24).reshape(16, 24).astype(np.uint16)


def test_a_16_bit_png_through_the_detr_mapper_is_scaled_not_clipped(tmp_path):
    path = str(tmp_path / "depth.png")
    Image.fromarray(GRADIENT).save(path)
    assert Image.open(path).mode in ("I;16", "I")
    # Detectron2's reader: every sample above 255 becomes white.
    assert (detection_utils.read_image(path, format="RGB") == 255).mean() > 0.99

    mapper = DetrDatasetMapper(is_train=False, augmentations=[], image_format="BGR")
    image = mapper({"file_name": path, "height": 16, "width": 24, "image_id": 0})["image"].numpy()
    expected = np.rint(GRADIENT / 257.0).astype(np.uint8)
    assert image.shape == (3, 16, 24)
    for channel in image:
        np.testing.assert_array_equal(channel, expected)


def test_the_query_patch_mapper_reads_through_the_same_reader(tmp_path):
    from updetr_d2.methods.updetr.query_patch_mapper import read_image_file

    path = str(tmp_path / "depth.png")
    Image.fromarray(GRADIENT).save(path)
    np.testing.assert_array_equal(read_image_file(path, "RGB")[..., 0], np.rint(GRADIENT / 257.0))


def test_the_picture_tools_read_through_the_same_reader(tmp_path):
    """draw_detections and the query-patch visualiser feed what try_read_image returns to
    the model: it must be what the mappers read, not Detectron2's near-white image."""
    from updetr_d2.data.image_files import try_read_image

    path = str(tmp_path / "depth.png")
    Image.fromarray(GRADIENT).save(path)
    image, error = try_read_image(path, format="RGB")
    assert error is None
    np.testing.assert_array_equal(image[..., 0], np.rint(GRADIENT / 257.0))


@pytest.mark.parametrize("make,expected", [
    # 32-bit integer samples are 16-bit ones here too
    (lambda: Image.fromarray(np.full((4, 4), 65535, np.int32), "I"), 255),
    (lambda: Image.fromarray(np.full((4, 4), 514, np.int32), "I"), 2),
    (lambda: Image.fromarray(np.full((4, 4), 0.5, np.float32), "F"), 128),  # [0, 1] floats
    (lambda: Image.fromarray(np.full((4, 4), 200.0, np.float32), "F"), 200),  # 0..255 floats
    (lambda: Image.new("LA", (4, 4), (200, 0)), 0),  # transparent: black, not its stored grey
    (lambda: Image.new("RGBA", (4, 4), (200, 100, 50, 255)), (200, 100, 50)),
    (lambda: Image.new("RGBA", (4, 4), (200, 100, 50, 0)), 0),
    (lambda: Image.new("CMYK", (4, 4), (0, 0, 0, 0)), 255),
], ids=["I-max", "I-low", "F-unit", "F-255", "LA", "RGBA-opaque", "RGBA-clear", "CMYK-white"])
def test_unusual_modes(tmp_path, make, expected):
    path = str(tmp_path / "image.tiff")
    make().save(path)
    image = read_image(path, format="RGB")
    assert image.dtype == np.uint8 and image.shape == (4, 4, 3)
    assert (image == np.asarray(expected, dtype=np.uint8)).all(), image[0, 0]


def test_a_palette_image_with_a_transparent_colour(tmp_path):
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
    image.info["transparency"] = 1
    path = str(tmp_path / "palette.png")
    image.save(path, transparency=1)
    assert (read_image(path, format="RGB") == 0).all()
    opaque = Image.new("P", (4, 4), 1)
    opaque.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
    opaque.save(path)
    assert (read_image(path, format="RGB")[0, 0] == [250, 10, 10]).all()

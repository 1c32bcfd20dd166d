"""Image decoding and class ranking in process: channels, dtypes, scaling, the pixel cap, ties."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.tfaas.helpers import image, png_declaring
from tt_server.errors import FailedPrecondition, InvalidArgument
from tt_server.runtime.classes import top_classes
from tt_server.runtime.images import decode_images
from tt_server.types import ImageScaling, ImageShape

F32 = np.dtype(np.float32)


def decode(blobs: list[bytes], shape: ImageShape, dtype: np.dtype = F32, **kw: object) -> np.ndarray:
    scaling = kw.pop("scaling", ImageScaling.RAW)
    return decode_images(blobs, shape, dtype, scaling, 'inputs["image"]', **kw)  # type: ignore[arg-type]


def test_channels_dtypes_and_scaling() -> None:
    red = image("red", "PNG", (5, 3))
    gray = decode([red], ImageShape(4, 4, 1), np.dtype(np.uint8))
    assert gray.shape == (1, 4, 4, 1) and gray.dtype == np.uint8
    assert np.all(gray == 76)  # Pillow's luma: 299/1000 of red's 255
    rgba = decode([red], ImageShape(2, 2, 4))
    assert np.all(rgba[0] == [255, 0, 0, 255])
    unit = decode([red], ImageShape(2, 2, 3), scaling=ImageScaling.UNIT)
    assert np.all(unit[0] == [1, 0, 0])
    symmetric = decode([red], ImageShape(2, 2, 3), np.dtype(np.float16), scaling=ImageScaling.SYMMETRIC)
    assert symmetric.dtype == np.float16 and np.all(symmetric[0] == [1, -1, -1])


def test_big_jpeg_is_decoded_at_a_reduced_scale() -> None:
    photo = image("green", "JPEG", (2048, 1536))
    pixels = decode([photo], ImageShape(8, 8, 3))
    assert pixels.shape == (1, 8, 8, 3)
    np.testing.assert_allclose(pixels[0, :, :, 1], 255, atol=2)


def test_pixel_cap_is_checked_from_the_header() -> None:
    started = time.perf_counter()
    with pytest.raises(InvalidArgument) as err:
        decode([png_declaring(100_000, 100_000)], ImageShape(8, 8, 3))
    assert time.perf_counter() - started < 1  # decoding 10^10 pixels would take minutes and 30 GB
    assert err.value.violations[0].field == 'inputs["image"].string_val[0]'
    with pytest.raises(InvalidArgument, match="declares 40 x 30 pixels; images of at most 1000"):
        decode([image("red")], ImageShape(8, 8, 3), max_pixels=1000)


def test_top_classes_order_ties_and_width() -> None:
    names = ["a", "b", "c"]
    scores = np.array([[0.2, 0.5, 0.3], [0.4, 0.2, 0.4]], np.float32)
    rows = top_classes(scores, names, 2, "probs")
    assert [[(c.name, c.index) for c in row] for row in rows] == [[("b", 1), ("c", 2)], [("a", 0), ("c", 2)]]
    assert [c.name for c in top_classes(scores, names, 0, "probs")[0]] == ["b", "c", "a"]  # 0: the default, 5
    with pytest.raises(FailedPrecondition, match="4 values per row but the version has 3 class names"):
        top_classes(np.zeros((1, 4)), names, 1, "probs")

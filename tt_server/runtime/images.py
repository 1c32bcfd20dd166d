"""Encoded images (PNG, JPEG) -> the pixel batch an image input takes. Blocking: run it in a worker thread.

Pillow, not ``tf.io.decode_image``, because:

* it reads an image's header without decoding it, so the *declared* width and height are checked against the
  pixel cap before any pixel buffer exists; a tiny PNG that declares 100000 x 100000 pixels (a decompression
  bomb) costs a few microseconds. TensorFlow's decoders offer no header-only read.
* the decoder is chosen here from the magic bytes, and only the PNG and JPEG parsers are ever reached (not
  ``Image.open``'s thirty-odd formats: less parser surface for untrusted bytes, and none of its global state).
* JPEG's DCT scaling (``draft``) decodes a large photo at 1/2..1/8 of its size when the model wants a small
  one: less time and memory than decoding it whole and shrinking.
* it releases the GIL while decoding and resizing, so a worker thread decodes beside the inference thread.

Per image: magic bytes -> header -> declared pixels <= ``max_pixels`` -> (JPEG: smallest DCT scale that is
still at least H x W) -> decode, converted to the input's channels (1: Pillow's "L", ITU-R 601-2 luma; 3: "RGB";
4: "RGBA") -> resize to H x W with Pillow's bilinear filter, which widens its support when shrinking so every
source pixel counts (antialiased, like ``tf.image.resize(..., antialias=True)``) -> scale -> cast to the input's
dtype. EXIF orientation is not applied (TensorFlow's decoders do not apply it either). Every bad image of a
batch is reported at once, each by its row (``inputs["x"].string_val[3]``).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, JpegImagePlugin, PngImagePlugin

from tt_server.errors import FieldViolation, InvalidArgument
from tt_server.types import ImageScaling, ImageShape

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
# 32 Mi pixels: a 7000 x 4700 photo passes; decoding one needs at most 128 MiB (RGBA) before it is resized.
MAX_IMAGE_PIXELS = 32 * 1024 * 1024
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
# (divide by, then subtract) per scaling; RAW is left alone.
_SCALING = {ImageScaling.UNIT: (255.0, 0.0), ImageScaling.SYMMETRIC: (127.5, 1.0)}


class _BadImage(ValueError):
    """One image cannot be used; the message says why, for the client."""


def decode_images(
    blobs: Sequence[bytes] | np.ndarray,
    shape: ImageShape,
    dtype: np.dtype,
    scaling: ImageScaling,
    path: str,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """The images as one ``[len(blobs), H, W, C]`` array of ``dtype``, scaled as ``scaling`` says.

    ``path`` (``inputs["image"]``) prefixes the field of each violation. Raises ``InvalidArgument`` listing
    every image that is not a PNG or JPEG, is corrupt or truncated, or declares more than ``max_pixels``.
    """
    batch = np.empty((len(blobs), shape.height, shape.width, shape.channels), dtype=dtype)
    violations: list[FieldViolation] = []
    for row, blob in enumerate(blobs):
        try:
            batch[row] = _pixels(blob, shape, max_pixels)  # uint8 -> dtype; 0..255 fits every image dtype
        except _BadImage as e:
            violations.append(FieldViolation(f"{path}.string_val[{row}]", str(e)))
    if violations:
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        raise InvalidArgument(f"{violations[0].field}: {violations[0].description}{more}", violations)
    if scaling in _SCALING and batch.dtype.kind == "f":  # the registry allows scaling for float inputs only
        divisor, offset = _SCALING[scaling]
        batch /= divisor
        batch -= offset
    return batch


def _pixels(blob: bytes, shape: ImageShape, max_pixels: int) -> np.ndarray:
    """One image as uint8 ``[H, W, C]``."""
    image = _open(blob)
    width, height = image.size
    if width * height > max_pixels:
        raise _BadImage(
            f"the {image.format} image declares {width} x {height} pixels; images of at most {max_pixels} pixels "
            "are decoded"
        )
    if width <= 0 or height <= 0:
        raise _BadImage(f"the {image.format} image declares an empty size ({width} x {height})")
    mode = _MODES[shape.channels]
    target = (shape.width, shape.height)
    try:
        image.draft(mode, target)  # JPEG only (a no-op for PNG): decode at a reduced scale still >= target
        converted = image.convert(mode)  # decodes
        if converted.size != target:
            converted = converted.resize(target, Image.Resampling.BILINEAR)
        pixels = np.asarray(converted, dtype=np.uint8)
    except Exception as e:  # untrusted bytes: Pillow raises OSError, SyntaxError, ValueError, struct.error ...
        raise _BadImage(f"the {image.format} image is corrupt or truncated: {_first_line(e)}") from None
    return pixels.reshape(shape.height, shape.width, shape.channels)


def _open(blob: bytes) -> Image.Image:
    """The image's parser, which has read the header only."""
    if blob.startswith(PNG_MAGIC):
        parser: type[Image.Image] = PngImagePlugin.PngImageFile
    elif blob.startswith(JPEG_MAGIC):
        parser = JpegImagePlugin.JpegImageFile
    else:
        raise _BadImage(f"not a PNG or JPEG image ({_describe(blob)})")
    try:
        return parser(io.BytesIO(blob))  # type: ignore[call-arg]
    except Exception as e:  # as in _pixels: a broken header raises whatever the parser meets first
        kind = "PNG" if parser is PngImagePlugin.PngImageFile else "JPEG"
        raise _BadImage(f"the {kind} image's header is corrupt: {_first_line(e)}") from None


def _describe(blob: bytes) -> str:
    if not blob:
        return "the bytes are empty"
    if blob[:4] == b"RIFF" and blob[8:12] == b"WEBP":
        return "a WebP image"
    if blob[:3] == b"GIF":
        return "a GIF image"
    return f"it starts {blob[:8].hex(' ')}"


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    line = lines[0] if lines else type(error).__name__
    return line if len(line) <= 200 else line[:197] + "..."

"""Images for the TFaaS tests: solid colours as PNG or JPEG, and broken ones (corrupt bytes, a decompression bomb)."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image
from tensortrigger.v1 import tensor_pb2

RGB = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def image(colour: str, fmt: str = "PNG", size: tuple[int, int] = (40, 30)) -> bytes:
    """A solid ``colour`` image of ``size`` (width, height), encoded as ``fmt``."""
    buffer = io.BytesIO()
    Image.new("RGB", size, RGB[colour]).save(buffer, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A small, well-formed PNG whose header declares ``width`` x ``height`` RGB pixels: a decompression bomb
    (its one IDAT chunk is a few bytes; decoding would allocate width * height * 3 bytes)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 4096))
        + _chunk(b"IEND", b"")
    )


def images_tensor(*blobs: bytes) -> tensor_pb2.Tensor:
    """Encoded images as an image input takes them: a string tensor of shape [N]."""
    return tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_STRING, shape=[len(blobs)], string_val=list(blobs))

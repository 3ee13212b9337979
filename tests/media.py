"""Files for tests: real images and PDFs made on the spot, and hostile ones.

Images are drawn with Pillow (noise where a size in bytes matters: noise does not
compress), PDFs written with pypdf; the decompression bomb is a PNG whose header
claims a huge canvas over a few bytes of data, built by hand so that making it
costs nothing.
"""

from __future__ import annotations

import io
import random
import struct
import zlib

from PIL import Image
from pypdf import PdfWriter


def image(
    width: int, height: int, kind: str = "JPEG", *, noise: bool = False, alpha: bool = False
) -> bytes:
    mode = "RGBA" if alpha else "RGB"
    if noise:
        picture = Image.frombytes(
            mode, (width, height), random.randbytes(width * height * len(mode))
        )
    else:
        picture = Image.new(mode, (width, height), (40, 120, 200, 128) if alpha else (40, 120, 200))
        for x in range(0, width, max(1, width // 8)):  # some structure, so it is not trivial
            picture.paste((250, 250, 250, 255) if alpha else (250, 250, 250), (x, 0, x + 2, height))
    out = io.BytesIO()
    picture.save(out, kind, **({"quality": 95} if kind == "JPEG" else {}))
    return out.getvalue()


def jpeg(width: int, height: int, *, noise: bool = False) -> bytes:
    return image(width, height, "JPEG", noise=noise)


def png(width: int, height: int, *, noise: bool = False, alpha: bool = False) -> bytes:
    return image(width, height, "PNG", noise=noise, alpha=alpha)


def pdf(pages: int, *, encrypted: bool = False) -> bytes:
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=612, height=792)
    if encrypted:
        writer.encrypt("secret")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int = 60_000, height: int = 60_000) -> bytes:
    """A valid PNG header for ``width`` x ``height`` pixels (3.6 gigapixels by default)
    over one compressed scanline: decoding it would take gigabytes."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    scanline = zlib.compress(b"\x00" + b"\x00" * (width * 3))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", scanline)
        + _chunk(b"IEND", b"")
    )


def size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as picture:
        return picture.size


def format_of(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as picture:
        return str(picture.format)

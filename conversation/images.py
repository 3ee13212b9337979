"""Images a user sent, made fit for the Messages API: checked, and scaled down if need be.

Only the four formats the API reads are ever decoded (Pillow is told so, so a file
that claims to be an image but is a TIFF, a BMP or anything else is refused without
trying the other decoders). The pixel count is read from the file's header and
checked before a single pixel is decoded: a small file that would unpack into
gigabytes (a decompression bomb) is refused unread. An image that is whole and within
the limits is sent byte for byte as it came; a larger one is scaled down to the long
edge and pixel count past which the API would scale it itself, and re-encoded
(screenshots and drawings as PNG, photos as JPEG) until it is within the byte limit.
JPEGs are decoded at a reduced scale where that still covers the target (Pillow's
``draft``), which keeps a large photo's memory small.

Everything here is blocking and CPU-bound: call it in a worker thread.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

# Pillow's format names -> the media types the Messages API accepts.
IMAGE_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}
# The API's estimate of what an image costs: width x height / 750 tokens.
PIXELS_PER_TOKEN = 750


class ImageRefused(Exception):
    """An image that cannot be sent; ``reason`` says why, in plain words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ImageLimits:
    max_edge: int  # longest side, in pixels, of what is sent
    max_megapixels: float  # pixels of what is sent, in millions
    max_bytes: int  # size of what is sent
    max_pixels: int  # of what is received: more is refused before decoding


@dataclass(frozen=True, slots=True)
class FitImage:
    """An image ready to send: its bytes and media type, and its size as sent."""

    data: bytes
    media_type: str
    width: int
    height: int
    scaled: bool  # scaled down or re-encoded from what was received

    @property
    def tokens(self) -> int:
        return math.ceil(self.width * self.height / PIXELS_PER_TOKEN)


def target_size(width: int, height: int, limits: ImageLimits) -> tuple[int, int]:
    """The largest size of the same shape within the long edge and pixel limits."""
    scale = min(
        1.0,
        limits.max_edge / max(width, height),
        math.sqrt(limits.max_megapixels * 1_000_000 / (width * height)),
    )
    if scale >= 1.0:
        return width, height
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def fit_image(data: bytes, limits: ImageLimits) -> FitImage:
    """``data`` as an image fit to send; raises ImageRefused with the reason if not."""
    try:
        with Image.open(io.BytesIO(data), formats=tuple(IMAGE_TYPES)) as image:
            width, height = image.size
            if width * height > limits.max_pixels:
                raise ImageRefused(
                    f"{width:,}x{height:,} pixels is more than I open: "
                    f"{limits.max_pixels / 1e6:.0f} megapixels at most"
                )
            media_type = IMAGE_TYPES[str(image.format)]
            target = target_size(width, height, limits)
            if target == (width, height) and len(data) <= limits.max_bytes:
                image.load()  # decoded in full: a damaged file is refused here, not by the API
                return FitImage(data, media_type, width, height, scaled=False)
            return _scaled(image, target, limits)
    except ImageRefused:
        raise
    except Image.DecompressionBombError:
        raise ImageRefused("it has more pixels than I open (a decompression bomb?)") from None
    except UnidentifiedImageError:
        raise ImageRefused("not an image I can read: I read JPEG, PNG, GIF and WebP") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError):
        # Pillow's decoders report damaged data in all of these.
        raise ImageRefused("the image is damaged or incomplete") from None


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )


def _scaled(image: Image.Image, target: tuple[int, int], limits: ImageLimits) -> FitImage:
    """``image`` at ``target`` size (or smaller) and at most ``limits.max_bytes``."""
    lossless = image.format in ("PNG", "GIF") or _has_alpha(image)
    if image.format == "JPEG":
        image.draft("RGB", target)  # decode at 1/2, 1/4 or 1/8 scale where it suffices
    frame = image.convert("RGBA" if _has_alpha(image) else "RGB")  # the first frame
    size = target
    for _attempt in range(8):
        resized = frame if frame.size == size else frame.resize(size, Image.Resampling.LANCZOS)
        for kind in ("PNG", "JPEG") if lossless else ("JPEG",):
            encoded = _encode(resized, kind)
            if len(encoded) <= limits.max_bytes:
                return FitImage(encoded, IMAGE_TYPES[kind], size[0], size[1], scaled=True)
        size = max(1, size[0] * 3 // 4), max(1, size[1] * 3 // 4)
    raise ImageRefused("it could not be made small enough to send")


def _encode(image: Image.Image, kind: str) -> bytes:
    out = io.BytesIO()
    if kind == "JPEG":
        if image.mode != "RGB":  # JPEG has no alpha: flatten onto white
            flat = Image.new("RGB", image.size, "white")
            flat.paste(image, mask=image.getchannel("A") if "A" in image.getbands() else None)
            image = flat
        image.save(out, "JPEG", quality=85, optimize=True)
    else:
        image.save(out, "PNG", optimize=False, compress_level=6)
    return out.getvalue()

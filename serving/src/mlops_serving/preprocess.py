"""Turn a real photo or drawing into the 28x28 image the model expects, as MNIST was made.

Accepts PNG, JPEG, WebP, BMP and GIF (its first frame), any size, colour or
grey, dark on light or light on dark. Steps: read the header (size and
pixel limits first: no decompression bombs), decode at a reduced size when the
image is large (JPEG's DCT scaling, else a box reduction right after), honour
the EXIF orientation, flatten transparency onto white, go grey (16-bit grey
scaled, not clipped), invert when the background is light (MNIST
digits are white on black), subtract the background the border shows and
stretch the contrast, crop to the digit, fit it into 20x20 keeping its
aspect, and centre it by its centre of mass in 28x28. An image already in
that format (28x28, light on dark) is only cleaned, not fitted again.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "BMP": "bmp", "GIF": "gif"}
MIME = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "webp": "image/webp",
    "bmp": "image/bmp",
    "gif": "image/gif",
}
BOX = 20
# Pixels above this share of the brightest one outline the digit (its box is fitted to 20x20).
INK_LEVEL = 0.15
SIDE = 28


class ImageRejected(ValueError):
    """The upload is not something we can read as a digit; status is the HTTP answer."""

    def __init__(self, message: str, status: int = 400, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after  # seconds, for a 503 (busy): try again then


@dataclass(frozen=True)
class Prepared:
    pixels: np.ndarray  # uint8 [28, 28], white digit on black
    extension: str  # of the original: png, jpg, webp, bmp, gif
    inverted: bool

    def model_input(self) -> np.ndarray:
        """float32 [1, 1, 28, 28] in 0..1: the model's input contract."""
        return (self.pixels.astype(np.float32) / 255.0)[None, None]

    def png(self) -> bytes:
        buffer = io.BytesIO()
        # Level 1: a third faster than the default and only a few bytes larger at 28x28.
        Image.fromarray(self.pixels, mode="L").save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()


# Past this side the digit gains nothing (it ends up 20x20): bigger images are
# reduced while decoding (JPEG) or right after (the others), before any float work.
WORK_SIDE = 1024
# Border pixels brighter than this share of the digit's peak are ink touching the
# border, not background noise.
NOISE_CAP = 0.5


@dataclass(frozen=True)
class Probe:
    """What the header says, read before any pixel is decoded."""

    format: str
    width: int
    height: int
    # The opened file, pixels not read yet: decode() loads, then closes it (one parse).
    image: Image.Image = field(repr=False, compare=False)

    @property
    def decode_pixels(self) -> int:
        """Pixels the decoder will produce: JPEG decodes at 1/2, 1/4 or 1/8 scale when large."""
        pixels = self.width * self.height
        if self.format != "JPEG":
            return pixels
        scale = 1
        while scale < 8 and max(self.width, self.height) // (scale * 2) >= WORK_SIDE:
            scale *= 2
        return pixels // (scale * scale)


def probe(data: bytes, max_pixels: int) -> Probe:
    """The format and size from the header; refuses what is not worth decoding."""
    if not data:
        raise ImageRejected("the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            header = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected(f"more pixels than the limit of {max_pixels}", 413) from None
    except UnidentifiedImageError:
        raise ImageRejected("not a readable image (PNG, JPEG, WebP, BMP or GIF)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageRejected(f"the image is truncated or corrupt ({error})") from None
    if header.format not in FORMATS:
        raise ImageRejected(
            f"unsupported image format {header.format}; send PNG, JPEG, WebP, BMP or GIF", 415
        )
    width, height = header.size
    if width * height > max_pixels:
        raise ImageRejected(
            f"the image has {width}x{height} pixels, more than the limit of {max_pixels}", 413
        )
    return Probe(header.format, width, height, header)


def decode(found: Probe) -> np.ndarray:
    """The probed image as float32 grey 0..255, at most WORK_SIDE on its longer side."""
    try:
        image = found.image
        image.seek(0)  # GIF: the first frame
        if found.format == "JPEG":
            image.draft(None, (WORK_SIDE, WORK_SIDE))  # DCT scaling: a fraction of the work
        image.load()
        return to_grey(image)
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageRejected(f"the image is truncated or corrupt ({error})") from None
    finally:
        # Its full-size pixels go now, not when the request ends: the decode gate lets
        # the next large image in as soon as this returns.
        found.image.close()


def to_grey(image: Image.Image) -> np.ndarray:
    image = ImageOps.exif_transpose(image) or image
    if image.mode.startswith("I;16"):
        # 16-bit grey: scaled to 8 bits (Pillow's convert("L") clips at 255).
        image = Image.fromarray((np.asarray(image, dtype=np.uint32) // 257).astype(np.uint8))
    elif image.mode == "I":
        wide = np.asarray(image, dtype=np.int64)
        scale = 257 if wide.max(initial=0) > 255 else 1
        image = Image.fromarray((np.clip(wide, 0, 65535) // scale).astype(np.uint8))
    elif image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode == "1":
        image = image.convert("L")
    factor = -(-max(image.size) // WORK_SIDE)  # ceiling division
    if factor > 1:
        image = image.reduce(factor)
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("L"), dtype=np.float32)


def prepare(
    data: bytes, max_pixels: int = 25_000_000, gate: Callable[[int], ContextManager] | None = None
) -> Prepared:
    """The model's input from an upload. gate(decode_pixels) guards the decoding (a limiter)."""
    found = probe(data, max_pixels)
    with gate(found.decode_pixels) if gate else nullcontext():
        grey = decode(found)
    extension = FORMATS[found.format]
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    background = quantile(border, 0.5)
    inverted = background > 127
    if inverted:
        grey, border, background = 255.0 - grey, 255.0 - border, 255.0 - background
    # The background (paper, shadows, a canvas) is what the border mostly shows.
    grey = np.clip(grey - background, 0, None)
    peak = float(grey.max())
    if peak < 32:
        raise ImageRejected("no digit found: the image is almost uniform", 422)
    grey *= 255.0 / peak
    noise = min(
        quantile(np.clip(border - background, 0, None) * 255.0 / peak, 0.95), NOISE_CAP * 255
    )
    grey[grey <= noise] = 0
    if grey.shape == (SIDE, SIDE) and not inverted:
        # Already MNIST's format (28x28, light digit on dark): fitting it again
        # would only resample it.
        return Prepared(pixels=grey.astype(np.uint8), extension=extension, inverted=False)
    ink = grey > max(noise, INK_LEVEL * 255)
    if not ink.any():
        raise ImageRejected("no digit found: nothing stands out from the background", 422)
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    digit = grey[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = digit.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    fitted = np.asarray(
        Image.fromarray(digit.astype(np.uint8), mode="L").resize(size, Image.Resampling.LANCZOS),
        dtype=np.float32,
    )
    canvas = np.zeros((SIDE, SIDE), dtype=np.float32)
    top, left = (SIDE - size[1]) // 2, (SIDE - size[0]) // 2
    canvas[top : top + size[1], left : left + size[0]] = fitted
    canvas = centre_by_mass(canvas)
    return Prepared(
        pixels=np.clip(canvas, 0, 255).astype(np.uint8), extension=extension, inverted=inverted
    )


def quantile(values: np.ndarray, q: float) -> float:
    """np.quantile's default (linear) method without its overhead: it ran three times per
    request and took a fifth of the request's time in the interpreter."""
    ordered = np.sort(values, axis=None)
    position = q * (ordered.size - 1)
    low = int(position)
    high = min(low + 1, ordered.size - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


def centre_by_mass(canvas: np.ndarray) -> np.ndarray:
    """Shift the image so that its centre of mass is at the centre (as MNIST did)."""
    mass = canvas.sum()
    if mass <= 0:
        return canvas
    ys, xs = np.indices(canvas.shape)
    dy = round(SIDE / 2 - 0.5 - (ys * canvas).sum() / mass)
    dx = round(SIDE / 2 - 0.5 - (xs * canvas).sum() / mass)
    shifted = np.zeros_like(canvas)
    src_y = slice(max(0, -dy), min(SIDE, SIDE - dy))
    dst_y = slice(max(0, dy), min(SIDE, SIDE + dy))
    src_x = slice(max(0, -dx), min(SIDE, SIDE - dx))
    dst_x = slice(max(0, dx), min(SIDE, SIDE + dx))
    shifted[dst_y, dst_x] = canvas[src_y, src_x]
    return shifted

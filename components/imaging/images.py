"""Decode untrusted image bytes into 8-bit PNG, or say exactly why not.

One function serves the extract step (source files) and any other place that takes image
bytes from outside, so "what counts as a readable image" is decided once.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

# Formats read by content (the extension is never trusted).
ACCEPTED_FORMATS = {"PNG", "JPEG", "BMP", "PPM", "TIFF"}  # PPM covers PGM/PBM
DEFAULT_MAX_PIXELS = 64_000_000
MIN_SIDE = 8
# Bytes one pixel takes once Pillow has decoded it: the memory a decode costs is pixels x this,
# so a tiny 16-bit or float file that decodes huge is refused before it is decoded.
BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2,
                   "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3, "RGBA": 4, "RGBX": 4, "CMYK": 4, "I": 4, "F": 4}


class ImageRejected(ValueError):
    """The bytes are not an image this product can read; ``str(e)`` is the reason."""


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # uint8, HxW (grayscale) or HxWx3 (RGB)
    source_format: str = ""   # what the bytes were (PNG, JPEG, ...), when decoded from a file
    source_mode: str = ""     # their Pillow mode (L, RGB, I;16, ...)

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    def fit(self, max_side: int) -> "DecodedImage":
        """The image with its longer side at most ``max_side`` (antialiased, aspect kept)."""
        if max(self.height, self.width) <= max_side:
            return self
        image = Image.fromarray(self.pixels)
        image.thumbnail((max_side, max_side), Image.Resampling.BOX)
        return DecodedImage(np.asarray(image))      # no longer the source's pixels: no source

    def png(self, compress_level: int = 3) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(self.pixels).save(buf, format="PNG", compress_level=compress_level)
        return buf.getvalue()


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode ``data`` to 8-bit grayscale or RGB pixels; raise ImageRejected with a reason."""
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    image_format = "image"
    try:
        with warnings.catch_warnings():
            # Pillow warns (and only later raises) on huge images; we check the size ourselves.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image_format = image.format
            if image_format not in ACCEPTED_FORMATS:
                raise ImageRejected(f"unsupported image format {image_format} (accepted: PNG, JPEG, BMP, PGM/PPM, TIFF)")
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected(f"image too large: {width}x{height} pixels exceeds the limit of {max_pixels:,}")
            needed = width * height * BYTES_PER_PIXEL.get(image.mode, 4)
            if needed > 3 * max_pixels:      # the budget of max_pixels RGB pixels
                raise ImageRejected(f"image too large: decoding {width}x{height} {image.mode} takes {needed:,} bytes, "
                                    f"over the budget of {3 * max_pixels:,}")
            if min(width, height) < MIN_SIDE:
                raise ImageRejected(f"image too small: {width}x{height} (at least {MIN_SIDE} px a side)")
            image.load()
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        raise ImageRejected("not an image: the content is no known image format") from None
    except Image.DecompressionBombError as e:
        raise ImageRejected(f"image too large: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        # Pillow reports truncation and corrupt streams as OSError/SyntaxError.
        raise ImageRejected(f"corrupt or truncated {image_format}: {e}") from None
    except Exception as e:    # fuzzed headers reach Pillow code paths that raise anything (TypeError, ...)
        raise ImageRejected(f"unreadable {image_format} ({type(e).__name__}: {e})") from None
    try:
        return DecodedImage(_to_uint8(image), image_format, image.mode)
    except Exception as e:
        raise ImageRejected(f"unreadable {image_format} pixels ({type(e).__name__}: {e})") from None


def _to_uint8(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode.startswith("I;16"):
        # 16-bit grayscale: stretch the stored range to 0..255 (window = full range) through a
        # 65,536-entry lookup table, so the only full-size arrays are the uint16 pixels and the
        # uint8 result (float64 copies cost 8 bytes a pixel: a 78 KB file once took 1.3 GB)
        arr = np.asarray(image).astype(np.uint16, copy=False)
        lo, hi = int(arr.min()), int(arr.max())
        return _stretch_table(lo, hi, 65536)[arr]
    if mode in ("I", "F"):
        # 32-bit integer or float grayscale: one float32 copy, scaled in place
        arr = np.asarray(image, dtype=np.float32).copy()
        lo, hi = float(arr.min()), float(arr.max())
        arr -= lo
        arr *= 0.0 if hi <= lo else 255.0 / (hi - lo)
        np.rint(arr, out=arr)
        return np.clip(arr, 0, 255, out=arr).astype(np.uint8)
    if mode in ("1", "L"):
        return np.asarray(image.convert("L"), dtype=np.uint8)
    if mode == "LA":
        return np.asarray(image.convert("L"), dtype=np.uint8)
    # RGB, RGBA, P, PA, CMYK, YCbCr, LAB, HSV: Pillow's conversions to RGB (CMYK uses its
    # inverted-ink formula; alpha is dropped, not composited, so pixel values are unchanged).
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _stretch_table(lo: int, hi: int, size: int) -> np.ndarray:
    """uint8 lookup table mapping lo..hi linearly onto 0..255 (values outside clipped)."""
    values = np.arange(size, dtype=np.float64)
    scaled = np.zeros(size) if hi <= lo else (values - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def from_raw_gray(data: bytes, height: int, width: int) -> DecodedImage:
    """Raw row-major uint8 grayscale pixels (the DDSM TFRecord ``image`` feature)."""
    if len(data) != height * width:
        raise ImageRejected(f"raw image holds {len(data)} bytes, expected {height}x{width}={height * width}")
    return DecodedImage(np.frombuffer(data, dtype=np.uint8).reshape(height, width).copy())

"""Safe decoding of untrusted image bytes (patient photos) into bare RGB arrays.

The format is identified from the magic bytes (never a file name), the declared size is
checked against a pixel budget before any pixel is decoded, truncated files are rejected
(Pillow is never allowed to pad them), EXIF orientation is applied exactly once, and the
result is a bare HxWx3 uint8 array: no EXIF, GPS, ICC or text metadata survives.

Mode conversions (documented choices):
  1, L, P (no transparency), CMYK, YCbCr -> Pillow's RGB conversion (CMYK JPEGs with an
      Adobe marker are un-inverted by Pillow's decoder). No colour management: ICC
      profiles are ignored.
  LA, PA, RGBA, P with transparency -> composited over white:
      out = round(c * a / 255 + 255 * (1 - a / 255)).
  I;16 / I;16B / I;16L / I (16-bit grey) -> value >> 8 (full 16-bit range kept, no clipping);
      an "I" image with values outside 0..65535 has no defined white level and is rejected.
  F (float) and other modes Pillow cannot convert to RGB -> rejected "unsupported_mode".
Multi-frame files (GIF, TIFF, WebP, MPO): the first frame.

Hashes: ``content_hash`` (raw bytes) identifies an input file and is what the quarantine
and the report key on; ``pixel_hash`` (decoded, oriented pixels) is what dedupe uses, so
the same photo saved under two names, or re-encoded losslessly (e.g. JPEG -> PNG of the
decoded pixels), is one image.
"""
from __future__ import annotations

import hashlib
import io
import struct
import warnings

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 40_000_000

# Stable machine codes carried by ImageRejected.reason.
REJECT_REASONS: tuple[str, ...] = (
    "empty_file",          # zero bytes
    "not_an_image",        # magic bytes of no known image format
    "unsupported_format",  # a recognised image format this pipeline does not decode (HEIC, JPEG 2000, ...)
    "unsupported_mode",    # decodes, but the pixel mode has no defined RGB mapping (float, 32-bit int)
    "too_many_pixels",     # declared width*height over the budget (or Pillow's bomb limit)
    "truncated",           # the file ends before the pixel data does
    "decode_error",        # any other corrupt or invalid content
)

# Magic bytes -> Pillow format name (the only plugin Pillow may use for that file).
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"BM", "BMP"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"II+\x00", "TIFF"),  # BigTIFF
    (0, b"MM\x00+", "TIFF"),
)

# Recognised image containers that are not decoded here (clearer than "not_an_image").
_UNSUPPORTED_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (4, b"ftypheic", "HEIC"),
    (4, b"ftypheix", "HEIC"),
    (4, b"ftypmif1", "HEIF"),
    (4, b"ftypmsf1", "HEIF"),
    (4, b"ftypavif", "AVIF"),
    (0, b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (0, b"\xff\x4f\xff\x51", "JPEG 2000 codestream"),
    (0, b"8BPS", "PSD"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"\xff\x0a", "JPEG XL"),
    (0, b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
)

# Exceptions Pillow's plugins raise on corrupt input (an explicit list, never a bare except).
_PILLOW_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError,
    TypeError, ZeroDivisionError, OverflowError,
)


class ImageRejected(ValueError):
    """An input that cannot become an image; ``reason`` is a stable machine code."""

    def __init__(self, reason: str, message: str):
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown reject reason {reason!r}; known: {', '.join(REJECT_REASONS)}")
        self.reason = reason
        self.message = message
        super().__init__(f"{reason}: {message}")


def sniff_format(data: bytes) -> str:
    """Pillow format name identified from the magic bytes; raises ImageRejected."""
    if not data:
        raise ImageRejected("empty_file", "the file is empty")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for offset, magic, fmt in _MAGIC:
        if data[offset:offset + len(magic)] == magic:
            return fmt
    for offset, magic, name in _UNSUPPORTED_MAGIC:
        if data[offset:offset + len(magic)] == magic:
            raise ImageRejected("unsupported_format", f"{name} images are not supported")
    raise ImageRejected("not_an_image", f"no known image signature (starts with {data[:8]!r})")


def _check_container(data: bytes, fmt: str) -> None:
    """Cheap structural checks Pillow does not make (WebP decodes the whole RIFF at open)."""
    if fmt == "WEBP":
        declared = struct.unpack("<I", data[4:8])[0] + 8
        if len(data) < declared:
            raise ImageRejected(
                "truncated", f"WebP declares {declared} bytes, the file has {len(data)}"
            )


def _rejection(exc: BaseException, fmt: str, stage: str) -> ImageRejected:
    """Map a Pillow exception to an ImageRejected."""
    text = str(exc)
    if "truncated" in text.lower() or isinstance(exc, EOFError):
        return ImageRejected("truncated", f"{fmt} {stage}: {text or type(exc).__name__}")
    if isinstance(exc, UnidentifiedImageError):
        return ImageRejected("decode_error", f"{fmt} {stage}: not a valid {fmt} file")
    return ImageRejected("decode_error", f"{fmt} {stage}: {type(exc).__name__}: {text}")


def _open_checked(data: bytes, fmt: str, max_pixels: int) -> Image.Image:
    """Open lazily, check the declared size, then decode the first frame's pixels."""
    with warnings.catch_warnings():
        # Pillow's own bomb warning becomes an error here only (its global limit is untouched).
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=[fmt])
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRejected("too_many_pixels", str(exc)) from None
        except _PILLOW_ERRORS as exc:
            raise _rejection(exc, fmt, "header") from None
        width, height = image.size
        if width <= 0 or height <= 0:
            raise ImageRejected("decode_error", f"declared size {width}x{height}")
        if width * height > max_pixels:
            raise ImageRejected(
                "too_many_pixels",
                f"declared size {width}x{height} = {width * height} pixels > {max_pixels}",
            )
        try:
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRejected("too_many_pixels", str(exc)) from None
        except _PILLOW_ERRORS as exc:
            raise _rejection(exc, fmt, "pixels") from None
    return image


def _over_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite uint8 colour (HxWxC) with uint8 alpha (HxW) over white, rounded."""
    c = colour.astype(np.uint32)
    a = alpha.astype(np.uint32)[..., None]
    return ((c * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def _to_rgb(image: Image.Image) -> np.ndarray:
    """HxWx3 uint8 RGB array from a loaded Pillow image of any supported mode."""
    mode = image.mode
    keyed = mode in ("P", "L", "RGB") and "transparency" in image.info
    if keyed or mode in ("RGBA", "RGBa", "PA"):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint8)
        return _over_white(rgba[..., :3], rgba[..., 3])
    if mode == "RGB":
        return np.asarray(image, dtype=np.uint8)
    if mode in ("LA", "La"):
        la = np.asarray(image.convert("LA"), dtype=np.uint8)
        grey = _over_white(la[..., :1], la[..., 1])
        return np.repeat(grey, 3, axis=2)
    if mode == "I" or mode.startswith("I;16"):
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 0xFFFF):
            raise ImageRejected(
                "unsupported_mode", f"{mode} values outside 0..65535 have no white level"
            )
        grey = (values.astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        raise ImageRejected("unsupported_mode", "floating-point images have no white level")
    try:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except ValueError as exc:
        raise ImageRejected("unsupported_mode", f"cannot convert {mode} to RGB: {exc}") from None


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode untrusted image bytes to a contiguous HxWx3 uint8 RGB array; raises ImageRejected."""
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise TypeError(f"decode_image needs bytes, got {type(data).__name__}")
    fmt = sniff_format(data)
    _check_container(data, fmt)
    image = _open_checked(data, fmt, max_pixels)
    try:
        # Orientation exactly once: the transposed image has its Orientation tag removed,
        # and only bare pixels leave this function.
        try:
            oriented = ImageOps.exif_transpose(image)
        except _PILLOW_ERRORS as exc:
            raise ImageRejected("decode_error", f"EXIF orientation: {type(exc).__name__}: {exc}") from None
        rgb = _to_rgb(oriented)
    finally:
        image.close()
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageRejected("decode_error", f"unexpected decoded shape {rgb.shape}")
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    return rgb if rgb.flags.writeable else rgb.copy()


def content_hash(data: bytes) -> str:
    """sha256 hex digest of the raw file bytes (identifies an input file)."""
    return hashlib.sha256(data).hexdigest()


def pixel_hash(rgb: np.ndarray) -> str:
    """sha256 hex digest over shape and pixels of a uint8 image (dedupes re-encoded copies)."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim not in (2, 3):
        raise ValueError("pixel_hash needs a 2-D or 3-D uint8 array")
    digest = hashlib.sha256(("x".join(map(str, rgb.shape)) + ";").encode("ascii"))
    digest.update(np.ascontiguousarray(rgb).tobytes())
    return digest.hexdigest()


def encode_png(rgb: np.ndarray) -> bytes:
    """Lossless PNG of an HxWx3 RGB (or HxW grey) uint8 array, with no metadata chunks."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8:
        raise ValueError("encode_png needs a uint8 numpy array")
    if rgb.ndim == 3 and rgb.shape[2] == 3:
        pixels = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    elif rgb.ndim == 2:
        pixels = np.ascontiguousarray(rgb)
    else:
        raise ValueError(f"encode_png needs HxWx3 or HxW, got shape {rgb.shape}")
    ok, buffer = cv2.imencode(".png", pixels)
    if not ok:
        raise ValueError(f"PNG encoding failed for shape {rgb.shape}")
    return buffer.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    """The HxWx3 RGB uint8 array of a PNG written by encode_png (trusted, pipeline-written bytes)."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("not a decodable PNG")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

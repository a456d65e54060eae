"""Decoding of files, encoded bytes and arrays into 8-bit RGB images, with errors that name the input.

What decoding one input may cost is bounded before any pixel is decoded: the file's bytes (`MAX_FILE_BYTES`),
then what its header promises (`dgs_sdk.headers`). Concurrent decodes share a `MemoryBudget`
(`dgs_sdk.limits.DECODE_MEMORY` by default): each holds its file's bytes, its decoder's buffer and its RGB copy
against it until its image is preprocessed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import TypeVar, Union

import cv2
import numpy as np

from .errors import ImageTooLarge, UnreadableImage
from .files import read_regular
from .headers import FORMATS, read_header
from .limits import MAX_DECODED_BYTES, MAX_FILE_BYTES, MAX_PIXELS
from .memory import DEFAULT_BUDGET, MemoryBudget, Reservation

__all__ = [
    "ImageInput",
    "ValueRange",
    "MAX_PIXELS",
    "MAX_FILE_BYTES",
    "MAX_DECODED_BYTES",
    "MemoryBudget",
    "DEFAULT_BUDGET",
    "FORMATS",
    "read_bytes",
    "decode_bytes",
    "to_rgb8",
    "check_value_range",
    "load_image",
    "describe_source",
]


ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray]
# The values that stand for black and white in a float array: (0, 1) or (0, 255) for instance.
ValueRange = tuple[float, float]
T = TypeVar("T")


def describe_source(source: ImageInput, index: int | None = None) -> str:
    """A short name for an input, used in results and error messages."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, np.ndarray):
        kind = "array"
    elif isinstance(source, (bytes, bytearray, memoryview)):
        kind = "bytes"
    else:
        kind = "input"
    return f"<{kind}>" if index is None else f"<{kind} #{index}>"


def read_bytes(path: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """Read a whole regular file, with `UnreadableImage` naming the file for anything else.

    Devices, pipes and sockets are refused before they are opened (reading a FIFO would block forever), and
    so are files larger than ``max_bytes``; no more is read than the size the file had when opened.
    """
    return read_regular(path, max_bytes, UnreadableImage)


def _decode(
    data: bytes, name: str, max_pixels: int, reservation: Reservation, transform: Callable[[np.ndarray], T] | None
) -> np.ndarray | T:
    if not data:
        raise UnreadableImage(f"{name}: empty file (0 bytes)")
    header, encoded = read_header(data, name, max_pixels)
    copy = len(encoded) if encoded is not data else 0  # a PNG without its text chunks is a second buffer
    # The file (and its copy), the decoder's buffer, the RGB copy: held until the caller's transform is done.
    reservation.resize(len(data) + copy + 2 * header.decoded_bytes)
    # JPEG is 8-bit without alpha: libjpeg-turbo writes RGB directly (grey and CMYK converted). Other formats
    # come unchanged (16-bit, alpha, grey) and `to_rgb8` brings them to 8-bit RGB.
    jpeg = header.format == "JPEG"
    flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION if jpeg else cv2.IMREAD_UNCHANGED
    try:
        decoded = cv2.imdecode(np.frombuffer(encoded, np.uint8), flags)
    except cv2.error as e:
        if "MAX_IMAGE_PIXELS" in str(e) or "validateInputImageSize" in str(e):
            raise ImageTooLarge(f"{name}: image too large (a decompression bomb?)") from None
        raise UnreadableImage(f"{name}: corrupt {header.format} ({str(e).strip().splitlines()[-1]})") from None
    if decoded is None:
        raise UnreadableImage(f"{name}: corrupt or truncated {header.format} file")
    image = to_rgb8(decoded, name=name, max_pixels=max_pixels, bgr=not jpeg, value_range=(0.0, 1.0))
    del decoded
    return image if transform is None else transform(image)


def decode_bytes(
    data: bytes | bytearray | memoryview,
    name: str = "<bytes>",
    max_pixels: int = MAX_PIXELS,
    budget: MemoryBudget | None = None,
    transform: Callable[[np.ndarray], T] | None = None,
) -> np.ndarray | T:
    """Decode an encoded image into an 8-bit RGB array `[H, W, 3]` (or ``transform`` of it, see `load_image`).

    Formats: JPEG, PNG, GIF (its first frame), WebP, BMP, TIFF (see `dgs_sdk.headers` for what each may cost).
    EXIF orientation is ignored, as in PIL-based training pipelines: rotating pixels would not change a
    detector's verdict, but resampling would. The decode waits for its share of ``budget`` (`DEFAULT_BUDGET`,
    shared by the whole process, when None).

    Raises:
        UnreadableImage: empty, truncated, corrupt, not an image, or in another format.
        ImageTooLarge: its header promises more pixels, decoded bytes or work than `dgs_sdk.limits` allows.
    """
    data = bytes(data)
    with (budget or DEFAULT_BUDGET).reserve(len(data)) as reservation:
        return _decode(data, name, max_pixels, reservation, transform)


def check_value_range(value_range: ValueRange | None) -> ValueRange | None:
    """``value_range`` as two floats, checked: finite, black below white, a scale to 0..255 that is finite.

    Raises:
        ValueError: anything else.
    """
    if value_range is None:
        return None
    try:
        low, high = (float(v) for v in value_range)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"value_range must be two numbers (black, white), got {value_range!r}") from None
    span = high - low
    if not (math.isfinite(low) and math.isfinite(high) and math.isfinite(span) and span > 0
            and math.isfinite(255.0 / span)):
        raise ValueError(f"value_range must be two finite numbers, black below white; got {value_range!r}")
    return low, high


def _float_to_uint8(image: np.ndarray, name: str, value_range: ValueRange | None) -> np.ndarray:
    if value_range is None:
        raise UnreadableImage(
            f"{name}: a float array needs its value range declared (value_range=(0, 1) or (0, 255)); "
            "uint8 and uint16 arrays need none"
        )
    low, high = check_value_range(value_range)
    if not np.isfinite(image).all():
        raise UnreadableImage(f"{name}: the array holds NaN or infinite values")
    smallest, largest = float(image.min()), float(image.max())
    if smallest < low or largest > high:
        raise UnreadableImage(
            f"{name}: values from {smallest:g} to {largest:g} fall outside the declared range {low:g} to {high:g}"
        )
    scaled = image.astype(np.float64)  # float16 or float32 arithmetic could overflow or lose the scale
    scaled -= low
    scaled *= 255.0 / (high - low)
    scaled += 0.5
    return np.clip(scaled, 0.0, 255.0, out=scaled).astype(np.uint8)


def to_rgb8(
    image: np.ndarray,
    name: str = "<array>",
    max_pixels: int = MAX_PIXELS,
    bgr: bool = False,
    value_range: ValueRange | None = None,
) -> np.ndarray:
    """Bring a decoded image to contiguous 8-bit RGB `[H, W, 3]`.

    Accepts `[H, W]` and `[H, W, 1|2|3|4]` arrays of uint8, uint16 (0..65535) or float. Float values have no
    agreed scale, so a float array needs ``value_range``, the values of black and white (``(0, 1)``,
    ``(0, 255)``...); a value outside it, NaN or infinity is an error, never clipped. Grey is replicated,
    alpha is dropped (as PIL's `convert("RGB")` does), 16-bit is scaled to 8-bit with rounding. ``bgr`` says
    the channel order is OpenCV's; arrays given by users are taken as RGB.
    """
    if not isinstance(image, np.ndarray):
        raise UnreadableImage(f"{name}: expected a numpy array, got {type(image).__name__}")
    if image.ndim == 3 and image.shape[2] in (1, 2):  # grey, grey + alpha
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise UnreadableImage(f"{name}: expected an array of shape [H, W] or [H, W, 1-4], got {list(image.shape)}")
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise UnreadableImage(f"{name}: image has no pixels ({w}x{h})")
    if h * w > max_pixels:
        raise ImageTooLarge(f"{name}: image too large ({w}x{h} is over {max_pixels:,} pixels)")
    if image.dtype == np.uint16:
        # round(x / 257) in one pass with no wider copy; x / 257 is never halfway between integers.
        image = cv2.convertScaleAbs(np.ascontiguousarray(image), alpha=1.0 / 257.0)
    elif image.dtype.kind == "f":
        image = _float_to_uint8(image, name, value_range)
    elif image.dtype != np.uint8:
        raise UnreadableImage(f"{name}: unsupported pixel type {image.dtype} (expected uint8, uint16 or float)")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels == 3 and not bgr:
        return np.ascontiguousarray(image)
    # cvtColor's SIMD channel shuffles are several times faster than numpy's strided copies.
    code = {3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB}[channels]
    return cv2.cvtColor(np.ascontiguousarray(image), code)


def load_image(
    source: ImageInput,
    name: str | None = None,
    max_pixels: int = MAX_PIXELS,
    value_range: ValueRange | None = None,
    budget: MemoryBudget | None = None,
    transform: Callable[[np.ndarray], T] | None = None,
) -> np.ndarray | T:
    """Decode a path, encoded bytes or an array into 8-bit RGB `[H, W, 3]` (arrays are taken as RGB).

    ``value_range`` declares the scale of float arrays (see `to_rgb8`); files and bytes do not need it. A file
    is read and decoded while holding its share of ``budget`` (the file's bytes, then its decoded size), and
    ``transform``, when given, is applied to the image before that share is given back (preprocessing a huge
    image counts against the budget too); its result is returned instead of the image.
    """
    name = name or describe_source(source)
    if isinstance(source, np.ndarray):
        image = to_rgb8(source, name=name, max_pixels=max_pixels, value_range=value_range)
        return image if transform is None else transform(image)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_bytes(source, name=name, max_pixels=max_pixels, budget=budget, transform=transform)
    if isinstance(source, (str, os.PathLike)):
        with (budget or DEFAULT_BUDGET).reserve() as reservation:
            # The file's bytes count against the budget before they are read.
            data = read_regular(source, MAX_FILE_BYTES, UnreadableImage, reserve=reservation.resize)
            return _decode(data, name, max_pixels, reservation, transform)
    raise UnreadableImage(f"{name}: expected a path, encoded bytes or a numpy array, got {type(source).__name__}")

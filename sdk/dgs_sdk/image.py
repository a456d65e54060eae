"""Decoding of files, encoded bytes and arrays into 8-bit RGB images, with errors that name the input.

What decoding one input may cost is bounded before any pixel is decoded: the file's bytes (`MAX_FILE_BYTES`),
the image's pixels (`MAX_PIXELS`) and the decoder's buffer (`MAX_DECODED_BYTES`), all read from the header.
Concurrent decodes share a `MemoryBudget` (`DECODE_MEMORY` by default), so eight workers meeting eight large
images take turns instead of taking eight times the memory.
"""

from __future__ import annotations

import io
import math
import os
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import cv2
import numpy as np
import PIL.Image
from PIL import ImageMode

from .errors import ImageTooLarge, UnreadableImage
from .files import read_regular
from .limits import DECODE_MEMORY, MAX_DECODED_BYTES, MAX_FILE_BYTES, MAX_JPEG_SEGMENTS, MAX_PIXELS

__all__ = [
    "ImageInput",
    "ValueRange",
    "MAX_PIXELS",
    "MAX_FILE_BYTES",
    "MAX_DECODED_BYTES",
    "MemoryBudget",
    "DEFAULT_BUDGET",
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

# A marker in JPEG entropy-coded data: 0xFF followed by a byte that is neither stuffing (0x00),
# a restart marker (0xD0-0xD7) nor fill (0xFF).
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_FILL = re.compile(rb"\xff+")
# Start-of-frame markers carry the image size; 0xC4 (DHT), 0xC8 (JPG) and 0xCC (DAC) share their range.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# PNG colour type -> channels as OpenCV decodes it unchanged (palette and grey + alpha may become BGRA).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 4, 4: 4, 6: 4}


class MemoryBudget:
    """Bytes that concurrent decodes may hold together; `reserve` waits until its share is free.

    A request larger than the whole budget waits until the budget is entirely free, so it always proceeds.
    ``peak`` records the most ever reserved at once.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a memory budget needs a positive capacity, got {capacity}")
        self.capacity = capacity
        self.used = 0
        self.peak = 0
        self._free = threading.Condition()

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        nbytes = max(0, min(int(nbytes), self.capacity))
        with self._free:
            self._free.wait_for(lambda: self.used + nbytes <= self.capacity)
            self.used += nbytes
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._free:
                self.used -= nbytes
                self._free.notify_all()


DEFAULT_BUDGET = MemoryBudget(DECODE_MEMORY)


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


@dataclass(frozen=True)
class _Header:
    """What an image header says: its size and an upper bound of the bytes per pixel OpenCV will decode to."""

    width: int
    height: int
    bytes_per_pixel: int

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def decoded_bytes(self) -> int:
        return self.pixels * self.bytes_per_pixel


def _jpeg_header(data: bytes, name: str) -> _Header:
    """Walk a JPEG's marker segments to its end-of-image marker, taking the size from its start-of-frame.

    libjpeg fills a truncated JPEG with grey and reports success, so truncation has to be found here: lengths
    skip headers (an EXIF thumbnail inside APP1 included), entropy-coded scan data is skipped to the next real
    marker. Runs of fill bytes and scan data are skipped by regular expressions, so the walk costs a few
    operations per segment whatever the file holds, and the number of segments is bounded.
    """
    truncated = UnreadableImage(f"{name}: truncated or corrupt JPEG (no end-of-image marker)")
    i, n, segments, size = 2, len(data), 0, None
    while i < n:
        if data[i] != 0xFF:
            raise truncated
        i = _JPEG_FILL.match(data, i).end()  # the marker byte follows any number of fill bytes
        if i >= n:
            raise truncated
        marker = data[i]
        i += 1
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise UnreadableImage(f"{name}: corrupt JPEG (more than {MAX_JPEG_SEGMENTS:,} marker segments)")
        if marker == 0xD9:  # end of image
            if size is None:
                raise UnreadableImage(f"{name}: corrupt JPEG (no frame header with the image size)")
            return _Header(size[0], size[1], 3)  # decoded straight to 8-bit RGB
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length field
            continue
        if i + 2 > n:
            raise truncated
        length = int.from_bytes(data[i : i + 2], "big")
        if length < 2:
            raise UnreadableImage(f"{name}: corrupt JPEG (a segment of length {length})")
        if marker in _JPEG_SOF and size is None and i + 7 <= n:
            height, width = int.from_bytes(data[i + 3 : i + 5], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
            if width == 0 or height == 0:
                raise UnreadableImage(f"{name}: corrupt JPEG (frame header gives {width}x{height} pixels)")
            size = (width, height)
        i += length
        if marker == 0xDA:  # start of scan: skip the entropy-coded data
            m = _JPEG_MARKER.search(data, i)
            if m is None:
                raise truncated
            i = m.start()
    raise truncated


def _pillow_header(data: bytes, fmt: str | None) -> _Header | None:
    """Size and bytes per pixel from Pillow's header parsers (no pixels are read), or None if not parseable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(io.BytesIO(data)) as header:
                width, height = header.size
                sample = np.dtype(ImageMode.getmode(header.mode).typestr).itemsize
                if fmt == "TIFF":  # Pillow's mode does not keep 16-bit colour; the tags do
                    bits = header.tag_v2.get(258) or (8,)
                    sample = max(sample, math.ceil(max(bits) / 8))
    except PIL.Image.DecompressionBombError as e:
        # Pillow refuses beyond its own bound, which equals MAX_PIXELS; its message carries the size.
        numbers = re.findall(r"\d+", str(e))
        return _Header(int(numbers[0]) if numbers else MAX_PIXELS + 1, 1, 1)
    except Exception:  # not identifiable by Pillow
        return None
    if fmt == "PNG" and len(data) >= 26:  # IHDR, the first chunk: bit depth and colour type
        return _Header(width, height, _PNG_CHANNELS.get(data[25], 4) * (2 if data[24] == 16 else 1))
    return _Header(width, height, 4 * sample)  # up to four channels of the mode's sample size


def _sniff_format(data: bytes) -> str | None:
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data.startswith(b"BM"):
        return "BMP"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    return None


def _read_header(data: bytes, name: str, max_pixels: int) -> tuple[str | None, _Header]:
    """The format and header of an encoded image, refusing what it would cost too much to decode."""
    fmt = _sniff_format(data)
    header = _jpeg_header(data, name) if fmt == "JPEG" else _pillow_header(data, fmt)
    if header is None:
        if fmt is None:
            raise UnreadableImage(f"{name}: not an image (no known image format)")
        raise UnreadableImage(f"{name}: corrupt {fmt} file (its header cannot be read)")
    if header.pixels > max_pixels:
        shape = f"{header.width}x{header.height} is" if header.height > 1 else f"{header.width:,} pixels is"
        raise ImageTooLarge(f"{name}: image too large ({shape} over {max_pixels:,} pixels; a decompression bomb?)")
    if header.decoded_bytes > MAX_DECODED_BYTES:
        raise ImageTooLarge(
            f"{name}: image too large to decode ({header.width}x{header.height} at up to {header.bytes_per_pixel} "
            f"bytes per pixel is {header.decoded_bytes:,} bytes; the limit is {MAX_DECODED_BYTES:,})"
        )
    return fmt, header


def decode_bytes(
    data: bytes | bytearray | memoryview,
    name: str = "<bytes>",
    max_pixels: int = MAX_PIXELS,
    budget: MemoryBudget | None = None,
) -> np.ndarray:
    """Decode an encoded image into an 8-bit RGB array `[H, W, 3]`.

    EXIF orientation is ignored, as in PIL-based training pipelines: rotating pixels would not change a
    detector's verdict, but resampling would. Animated GIFs give their first frame. The decode waits for its
    share of ``budget`` (`DEFAULT_BUDGET`, shared by the whole process, when None).

    Raises:
        UnreadableImage: empty, truncated, corrupt or not an image.
        ImageTooLarge: more than `max_pixels` pixels, or a decoded buffer over `MAX_DECODED_BYTES`.
    """
    data = bytes(data)
    if not data:
        raise UnreadableImage(f"{name}: empty file (0 bytes)")
    fmt, header = _read_header(data, name, max_pixels)
    # JPEG is 8-bit without alpha: libjpeg-turbo writes RGB directly (grey and CMYK converted). Other formats
    # come unchanged (16-bit, alpha, grey) and `to_rgb8` brings them to 8-bit RGB.
    jpeg = fmt == "JPEG"
    flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION if jpeg else cv2.IMREAD_UNCHANGED
    with (budget or DEFAULT_BUDGET).reserve(2 * header.decoded_bytes):  # the decoder's buffer and the RGB copy
        try:
            decoded = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
        except cv2.error as e:
            if "MAX_IMAGE_PIXELS" in str(e) or "validateInputImageSize" in str(e):
                raise ImageTooLarge(f"{name}: image too large (a decompression bomb?)") from None
            raise UnreadableImage(f"{name}: corrupt {fmt or 'image'} ({str(e).strip().splitlines()[-1]})") from None
        if decoded is None:
            raise UnreadableImage(f"{name}: corrupt or truncated {fmt or 'image'} file")
        return to_rgb8(decoded, name=name, max_pixels=max_pixels, bgr=not jpeg, value_range=(0.0, 1.0))


def check_value_range(value_range: ValueRange | None) -> ValueRange | None:
    """``value_range`` as two floats, checked: finite, black below white.

    Raises:
        ValueError: anything else.
    """
    if value_range is None:
        return None
    try:
        low, high = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ValueError(f"value_range must be two numbers (black, white), got {value_range!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
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
    scaled = (image - low) * (255.0 / (high - low))
    scaled += 0.5
    return scaled.astype(np.uint8)


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
) -> np.ndarray:
    """Decode a path, encoded bytes or an array into 8-bit RGB `[H, W, 3]` (arrays are taken as RGB).

    ``value_range`` declares the scale of float arrays (see `to_rgb8`); files and bytes do not need it.
    """
    name = name or describe_source(source)
    if isinstance(source, np.ndarray):
        return to_rgb8(source, name=name, max_pixels=max_pixels, value_range=value_range)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_bytes(source, name=name, max_pixels=max_pixels, budget=budget)
    if isinstance(source, (str, os.PathLike)):
        return decode_bytes(read_bytes(Path(source)), name=name, max_pixels=max_pixels, budget=budget)
    raise UnreadableImage(f"{name}: expected a path, encoded bytes or a numpy array, got {type(source).__name__}")

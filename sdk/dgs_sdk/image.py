"""Decoding of files, encoded bytes and arrays into 8-bit RGB images, with errors that name the input."""

from __future__ import annotations

import io
import os
import re
import stat
import warnings
from pathlib import Path
from typing import Union

import cv2
import numpy as np
import PIL.Image

from .errors import ImageTooLarge, UnreadableImage
from .limits import MAX_FILE_BYTES, MAX_PIXELS

__all__ = [
    "ImageInput",
    "MAX_PIXELS",
    "MAX_FILE_BYTES",
    "read_bytes",
    "decode_bytes",
    "to_rgb8",
    "load_image",
    "describe_source",
]


ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray]

# A marker in JPEG entropy-coded data: 0xFF followed by a byte that is neither stuffing (0x00),
# a restart marker (0xD0-0xD7) nor fill (0xFF).
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


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
    """Read a whole regular file, turning OS errors into `UnreadableImage` naming the file.

    Devices, pipes and sockets are refused before they are opened (reading a FIFO would block forever),
    and so are files larger than ``max_bytes``.
    """
    name = os.fspath(path)
    try:
        st = os.stat(name)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (a device, pipe or socket)"
            raise UnreadableImage(f"{name}: is {kind}, not an image file")
        if st.st_size > max_bytes:
            raise UnreadableImage(f"{name}: file too large ({st.st_size:,} bytes; the limit is {max_bytes:,})")
        with open(name, "rb") as f:
            return f.read()
    except FileNotFoundError:
        if os.path.islink(name):
            target = os.readlink(name)
            raise UnreadableImage(f"{name}: broken symbolic link (target {target!r} does not exist)") from None
        raise UnreadableImage(f"{name}: no such file") from None
    except PermissionError:
        raise UnreadableImage(f"{name}: permission denied") from None
    except OSError as e:
        raise UnreadableImage(f"{name}: cannot be read ({e.strerror or e})") from None


def _jpeg_is_complete(data: bytes) -> bool:
    """Whether a JPEG stream reaches its end-of-image marker.

    libjpeg fills a truncated JPEG with grey and reports success, so truncation has to be found by walking
    the marker segments: lengths skip headers (an EXIF thumbnail inside APP1 included), and entropy-coded
    scan data is skipped to the next real marker.
    """
    i, n = 2, len(data)
    while i + 1 < n:
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker == 0xD9:  # end of image
            return True
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length field
            i += 2
            continue
        if i + 3 >= n:
            return False
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        if marker == 0xDA:  # start of scan: skip the entropy-coded data
            m = _JPEG_MARKER.search(data, i)
            if m is None:
                return False
            i = m.start()
    return False


def _starts_with(data: bytes) -> str:
    head = data[:8].decode("latin-1")
    printable = "".join(c if 32 <= ord(c) < 127 else "." for c in head)
    return f"starts with {printable!r}"


def _declared_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the image header alone (Pillow reads no pixels here), or None if not parseable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(io.BytesIO(data)) as header:
                return header.size
    except PIL.Image.DecompressionBombError as e:
        # Pillow refuses beyond its own bound, which equals MAX_PIXELS; its message carries the size.
        numbers = re.findall(r"\d+", str(e))
        return (int(numbers[0]), 1) if numbers else (MAX_PIXELS + 1, 1)
    except Exception:  # not identifiable by Pillow: OpenCV gets the final word
        return None


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


def decode_bytes(
    data: bytes | bytearray | memoryview, name: str = "<bytes>", max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Decode an encoded image into an 8-bit RGB array `[H, W, 3]`.

    EXIF orientation is ignored, as in PIL-based training pipelines: rotating pixels would not change a
    detector's verdict, but resampling would. Animated GIFs give their first frame.

    Raises:
        UnreadableImage: empty, truncated, corrupt or not an image.
        ImageTooLarge: more than `max_pixels` pixels.
    """
    data = bytes(data)
    if not data:
        raise UnreadableImage(f"{name}: empty file (0 bytes)")
    fmt = _sniff_format(data)
    if fmt == "JPEG" and not _jpeg_is_complete(data):
        raise UnreadableImage(f"{name}: truncated JPEG (no end-of-image marker)")
    # Refuse oversized images from their header, before any pixel buffer is allocated (decompression bombs).
    size = _declared_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        w, h = size
        shape = f"{w}x{h} is" if h > 1 else f"{w:,} pixels is"
        raise ImageTooLarge(f"{name}: image too large ({shape} over {max_pixels:,} pixels; a decompression bomb?)")
    # JPEG is 8-bit without alpha: libjpeg-turbo writes RGB directly (grey and CMYK converted). Other formats
    # come unchanged (16-bit, alpha, grey) and `to_rgb8` brings them to 8-bit RGB.
    jpeg = fmt == "JPEG"
    flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION if jpeg else cv2.IMREAD_UNCHANGED
    try:
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as e:
        if "MAX_IMAGE_PIXELS" in str(e) or "validateInputImageSize" in str(e):
            raise ImageTooLarge(f"{name}: image too large (a decompression bomb?)") from None
        raise UnreadableImage(f"{name}: corrupt {fmt or 'image'} ({str(e).strip().splitlines()[-1]})") from None
    if decoded is None:
        if fmt is None:
            raise UnreadableImage(f"{name}: not an image ({_starts_with(data)})")
        raise UnreadableImage(f"{name}: corrupt or truncated {fmt} file")
    return to_rgb8(decoded, name=name, max_pixels=max_pixels, bgr=not jpeg)


def to_rgb8(image: np.ndarray, name: str = "<array>", max_pixels: int = MAX_PIXELS, bgr: bool = False) -> np.ndarray:
    """Bring a decoded image to contiguous 8-bit RGB `[H, W, 3]`.

    Accepts `[H, W]`, `[H, W, 1|2|3|4]` arrays of uint8, uint16 or float (0..1). Grey is replicated, alpha is
    dropped (as PIL's `convert("RGB")` does), 16-bit is scaled to 8-bit with rounding. `bgr` says the channel
    order is OpenCV's; arrays given by users are taken as RGB.
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
        image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif image.dtype.kind == "f":
        image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
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


def load_image(source: ImageInput, name: str | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a path, encoded bytes or an array into 8-bit RGB `[H, W, 3]` (arrays are taken as RGB)."""
    name = name or describe_source(source)
    if isinstance(source, np.ndarray):
        return to_rgb8(source, name=name, max_pixels=max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_bytes(source, name=name, max_pixels=max_pixels)
    if isinstance(source, (str, os.PathLike)):
        return decode_bytes(read_bytes(Path(source)), name=name, max_pixels=max_pixels)
    raise UnreadableImage(f"{name}: expected a path, encoded bytes or a numpy array, got {type(source).__name__}")

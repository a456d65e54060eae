"""What decoding an encoded image will cost, read from its header before any pixel is decoded.

The decoders (libjpeg-turbo, libpng, libtiff, libwebp through OpenCV) do work in proportion to more than the
pixels: a PNG's compressed text chunks, a TIFF's strip tables, a progressive JPEG's scans. So before decoding,
`read_header` walks each format's structure itself (JPEG segments, PNG chunks, TIFF's first directory; Pillow
for the sizes of GIF, WebP and BMP), and refuses an image whose decoding would cost too much: more pixels than
`MAX_PIXELS`, a decoder buffer over `MAX_DECODED_BYTES`, a file much larger than its pixels could need, or
structures built to be slow (bounds in `dgs_sdk.limits`). For PNG it also hands the decoder only the chunks that
carry pixels, so text and private chunks are never decompressed.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from dataclasses import dataclass

import numpy as np
import PIL.Image
from PIL import ImageMode

from .errors import ImageTooLarge, UnreadableImage
from .limits import (
    MAX_DECODED_BYTES,
    MAX_FILE_BYTES_PER_PIXEL,
    MAX_JPEG_SCAN_PIXELS,
    MAX_JPEG_SCANS,
    MAX_JPEG_SEGMENTS,
    MAX_METADATA_BYTES,
    MAX_PIXELS,
    MAX_PNG_CHUNKS,
    MAX_TIFF_VALUES,
)

__all__ = ["FORMATS", "ImageHeader", "sniff_format", "read_header"]

# The formats dgs decodes; anything else (JPEG 2000, AVIF, HEIC...) is refused, whatever OpenCV could read.
FORMATS = ("JPEG", "PNG", "GIF", "WebP", "BMP", "TIFF")

# A marker in JPEG entropy-coded data: 0xFF followed by a byte that is neither stuffing (0x00),
# a restart marker (0xD0-0xD7) nor fill (0xFF).
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_FILL = re.compile(rb"\xff+")
# Start-of-frame markers carry the image size; 0xC4 (DHT), 0xC8 (JPG) and 0xCC (DAC) share their range.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
# PNG colour type -> channels as OpenCV decodes it unchanged (palette and grey + alpha may become BGRA).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 4, 4: 4, 6: 4}
# The PNG chunks that make the pixels; tRNS decides whether OpenCV gives an alpha channel.
_PNG_PIXEL_CHUNKS = frozenset({b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"})
# Animations, of which the decoder reads the first frame only (a 40 MB GIF's in milliseconds): their size says
# nothing of the decoding cost.
_FIRST_FRAME_ONLY = frozenset({"GIF", "WebP"})
# TIFF field types whose values Pillow unpacks one Python number at a time (BYTE, ASCII and UNDEFINED stay bytes).
_TIFF_NUMBER_TYPES = frozenset({3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 16, 17, 18})


@dataclass(frozen=True)
class ImageHeader:
    """What a header says: the format, the size, and an upper bound of the bytes per pixel the decoder holds."""

    format: str
    width: int
    height: int
    bytes_per_pixel: int

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def decoded_bytes(self) -> int:
        return self.pixels * self.bytes_per_pixel


def sniff_format(data: bytes) -> str | None:
    """The format named by the file's first bytes, among `FORMATS`, or None."""
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
    if data.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "TIFF"
    return None


def _jpeg_header(data: bytes, name: str) -> ImageHeader:
    """Walk a JPEG's marker segments to its end-of-image marker, taking the size from its start-of-frame.

    libjpeg fills a truncated JPEG with grey and reports success, so truncation has to be found here: lengths
    skip headers (an EXIF thumbnail inside APP1 included), entropy-coded scan data is skipped to the next real
    marker. Runs of fill bytes and scan data are skipped by regular expressions, so the walk costs a few
    operations per segment whatever the file holds; segments and scans are bounded.
    """
    truncated = UnreadableImage(f"{name}: truncated or corrupt JPEG (no end-of-image marker)")
    i, n, segments, scans, frame = 2, len(data), 0, 0, None
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
            if frame is None:
                raise UnreadableImage(f"{name}: corrupt JPEG (no frame header with the image size)")
            width, height, progressive = frame
            # A progressive decode keeps every coefficient (2 bytes a sample, 3 samples a pixel at most).
            header = ImageHeader("JPEG", width, height, 9 if progressive else 3)
            if scans > MAX_JPEG_SCANS or scans * header.pixels > MAX_JPEG_SCAN_PIXELS:
                raise ImageTooLarge(f"{name}: JPEG with {scans:,} scans of {width}x{height} pixels; decoding it "
                                    "would take too long")
            return header
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length field
            continue
        if i + 2 > n:
            raise truncated
        length = int.from_bytes(data[i : i + 2], "big")
        if length < 2:
            raise UnreadableImage(f"{name}: corrupt JPEG (a segment of length {length})")
        if marker in _JPEG_SOF and frame is None and i + 7 <= n:
            height, width = int.from_bytes(data[i + 3 : i + 5], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
            if width == 0 or height == 0:
                raise UnreadableImage(f"{name}: corrupt JPEG (frame header gives {width}x{height} pixels)")
            frame = (width, height, marker in _JPEG_PROGRESSIVE)
        i += length
        if marker == 0xDA:  # start of scan: skip the entropy-coded data
            scans += 1
            m = _JPEG_MARKER.search(data, i)
            if m is None:
                raise truncated
            i = m.start()
    raise truncated


def _png_header(data: bytes, name: str) -> tuple[ImageHeader, bytes]:
    """The size and depth from IHDR, and the PNG rebuilt from the chunks that make its pixels.

    Text (zTXt, iTXt), ICC, private and animation chunks are dropped: libpng would decompress and keep them,
    at up to a thousand times their size, and none of them changes the pixels OpenCV decodes.
    """
    kept, i, n, chunks, ihdr = [data[:8]], 8, len(data), 0, None
    while True:
        if i + 12 > n:
            raise UnreadableImage(f"{name}: truncated or corrupt PNG (no IEND chunk)")
        length, kind = int.from_bytes(data[i : i + 4], "big"), data[i + 4 : i + 8]
        end = i + 12 + length
        if end > n:
            raise UnreadableImage(f"{name}: truncated or corrupt PNG (a {kind!r} chunk runs past the end of the file)")
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise UnreadableImage(f"{name}: corrupt PNG (more than {MAX_PNG_CHUNKS:,} chunks)")
        if kind == b"IHDR" and ihdr is None and length >= 13:
            ihdr = data[i + 8 : i + 21]
        if kind in _PNG_PIXEL_CHUNKS:
            kept.append(data[i:end])
        i = end
        if kind == b"IEND":
            break
    if ihdr is None:
        raise UnreadableImage(f"{name}: corrupt PNG (no IHDR chunk)")
    width, height = int.from_bytes(ihdr[0:4], "big"), int.from_bytes(ihdr[4:8], "big")
    if width == 0 or height == 0:
        raise UnreadableImage(f"{name}: corrupt PNG (IHDR gives {width}x{height} pixels)")
    depth, colour = ihdr[8], ihdr[9]
    header = ImageHeader("PNG", width, height, _PNG_CHANNELS.get(colour, 4) * (2 if depth == 16 else 1))
    return header, b"".join(kept)


def _tiff_check(data: bytes, name: str) -> None:
    """Refuse a TIFF whose first directory holds more numbers than reading it should cost (Pillow unpacks every
    value of the first directory, strip and tile tables included, into Python objects when it opens a file)."""
    order = "little" if data[:2] == b"II" else "big"
    big = int.from_bytes(data[2:4], order) == 43  # BigTIFF: 8-byte offsets and counts

    def number(at: int, size: int) -> int:
        if at + size > len(data):
            raise UnreadableImage(f"{name}: truncated or corrupt TIFF (its first directory is cut off)")
        return int.from_bytes(data[at : at + size], order)

    offset_size, entry_size = (8, 20) if big else (4, 12)
    directory = number(8 if big else 4, offset_size)
    entries = number(directory, offset_size if big else 2)
    start = directory + (8 if big else 2)
    if start + entries * entry_size > len(data):
        raise UnreadableImage(f"{name}: truncated or corrupt TIFF (its first directory is cut off)")
    for k in range(entries):
        at = start + k * entry_size
        kind, count = number(at + 2, 2), number(at + 4, offset_size)
        if kind in _TIFF_NUMBER_TYPES and count > MAX_TIFF_VALUES:
            raise ImageTooLarge(f"{name}: TIFF field {number(at, 2)} holds {count:,} numbers (at most "
                                f"{MAX_TIFF_VALUES:,} are read)")


def _pillow_header(data: bytes, fmt: str, name: str) -> ImageHeader:
    """Size and bytes per pixel from Pillow's header parsers (no pixels are read)."""
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
        return ImageHeader(fmt, int(numbers[0]) if numbers else MAX_PIXELS + 1, 1, 1)
    except Exception:
        raise UnreadableImage(f"{name}: corrupt {fmt} file (its header cannot be read)") from None
    return ImageHeader(fmt, width, height, 4 * sample)  # up to four channels of the mode's sample size


def read_header(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> tuple[ImageHeader, bytes]:
    """The header of an encoded image and the bytes to hand its decoder, or an error if decoding would cost
    too much.

    Raises:
        UnreadableImage: not one of `FORMATS`, or a header that is corrupt, truncated or built to be slow.
        ImageTooLarge: over `max_pixels`, a decoder buffer over `MAX_DECODED_BYTES`, or a file larger than
            `MAX_FILE_BYTES_PER_PIXEL` bytes a pixel plus `MAX_METADATA_BYTES`.
    """
    size, fmt = len(data), sniff_format(data)
    if fmt is None:
        raise UnreadableImage(f"{name}: not an image in a supported format ({', '.join(FORMATS)})")
    if fmt == "JPEG":
        header = _jpeg_header(data, name)
    elif fmt == "PNG":
        header, data = _png_header(data, name)
    else:
        if fmt == "TIFF":
            _tiff_check(data, name)
        header = _pillow_header(data, fmt, name)
    if header.pixels > max_pixels:
        shape = f"{header.width}x{header.height} is" if header.height > 1 else f"{header.width:,} pixels is"
        raise ImageTooLarge(f"{name}: image too large ({shape} over {max_pixels:,} pixels; a decompression bomb?)")
    if header.decoded_bytes > MAX_DECODED_BYTES:
        raise ImageTooLarge(
            f"{name}: image too large to decode ({header.width}x{header.height} at up to {header.bytes_per_pixel} "
            f"bytes per pixel is {header.decoded_bytes:,} bytes; the limit is {MAX_DECODED_BYTES:,})"
        )
    allowed = MAX_FILE_BYTES_PER_PIXEL * header.pixels + MAX_METADATA_BYTES
    if size > allowed and fmt not in _FIRST_FRAME_ONLY:
        raise ImageTooLarge(
            f"{name}: {size:,} bytes for a {header.width}x{header.height} image, more than its pixels could "
            f"need ({allowed:,}); refused undecoded"
        )
    return header, data

"""What decoding an encoded image will cost, read from its header before any pixel is decoded.

The decoders (libjpeg-turbo, libpng, libtiff, libwebp, OpenCV's GIF reader) do work in proportion to more than
the pixels: a PNG's compressed text chunks, a TIFF's strip tables, a progressive JPEG's scans, a GIF's data
blocks. So before decoding, `read_header` walks each format's structure itself (JPEG segments, PNG chunks, GIF
blocks to the end of the first frame, WebP chunks, TIFF's first directory; Pillow for the sizes of WebP, BMP
and TIFF), and refuses an image whose decoding would cost too much: more pixels than `MAX_PIXELS`, a decoder
buffer over `MAX_DECODED_BYTES`, far more bytes than its pixels could need, or structures built to be slow
(bounds in `dgs_sdk.limits`). For PNG it also hands the decoder only the chunks that carry pixels, so text and
private chunks are never decompressed.
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
    MAX_GIF_BLOCKS,
    MAX_JPEG_SCAN_PIXELS,
    MAX_JPEG_SCANS,
    MAX_JPEG_SEGMENTS,
    MAX_METADATA_BYTES,
    MAX_PIXELS,
    MAX_PNG_CHUNKS,
    MAX_TIFF_VALUES,
    MAX_WEBP_CHUNKS,
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
# PNG colour type -> channels as OpenCV decodes it unchanged (palette and grey + alpha may become BGRA).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 4, 4: 4, 6: 4}
# The PNG chunks that make the pixels; tRNS decides whether OpenCV gives an alpha channel.
_PNG_PIXEL_CHUNKS = frozenset({b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"})
# Formats whose decoder reads the first frame or page only (a 40 MB animated WebP's in milliseconds), from where
# their headers say it lies: the size of the whole file says nothing of the decoding cost. (GIF's first frame
# is walked to its end, and PNG keeps only its pixel chunks: for those two the rule applies to what is decoded.)
_FIRST_PAGE_ONLY = frozenset({"WebP", "TIFF"})
# TIFF field types whose values Pillow unpacks one Python number at a time (BYTE, ASCII and UNDEFINED stay bytes).
_TIFF_NUMBER_TYPES = frozenset({3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 16, 17, 18})


@dataclass(frozen=True)
class ImageHeader:
    """What a header says: the format, the size, an upper bound of the bytes per pixel the decoder holds, and the
    bytes the decoder works through for the image it decodes (``None``: the whole file)."""

    format: str
    width: int
    height: int
    bytes_per_pixel: float
    payload: int | None = None

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def decoded_bytes(self) -> int:
        return math.ceil(self.pixels * self.bytes_per_pixel)


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
            width, height, coefficients = frame
            # One interleaved scan is decoded row by row; several scans (progressive, or one per component) make
            # libjpeg keep every coefficient (2 bytes each) until the last. The RGB output takes 3 bytes a pixel.
            header = ImageHeader("JPEG", width, height, 3 + (coefficients if scans > 1 else 0))
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
        if marker in _JPEG_SOF and frame is None:
            frame = _jpeg_frame(data[i : i + length], name)
        i += length
        if marker == 0xDA:  # start of scan: skip the entropy-coded data
            scans += 1
            m = _JPEG_MARKER.search(data, i)
            if m is None:
                raise truncated
            i = m.start()
    raise truncated


def _jpeg_frame(segment: bytes, name: str) -> tuple[int, int, float]:
    """Width, height and coefficient bytes per pixel (2 per sample, with each component's subsampling) of a
    start-of-frame segment (its length field included)."""
    if len(segment) < 8 or len(segment) < 8 + 3 * segment[7]:
        raise UnreadableImage(f"{name}: corrupt JPEG (a short frame header)")
    height, width = int.from_bytes(segment[3:5], "big"), int.from_bytes(segment[5:7], "big")
    if width == 0 or height == 0:
        raise UnreadableImage(f"{name}: corrupt JPEG (frame header gives {width}x{height} pixels)")
    sampling = [(segment[9 + 3 * k] >> 4, segment[9 + 3 * k] & 15) for k in range(segment[7])]
    h_max, v_max = max((h for h, _ in sampling), default=1) or 1, max((v for _, v in sampling), default=1) or 1
    return width, height, sum(2 * h * v / (h_max * v_max) for h, v in sampling)


def _png_header(data: bytes, name: str) -> tuple[ImageHeader, bytes]:
    """The size and depth from IHDR, and the PNG rebuilt from the chunks that make its pixels.

    Text (zTXt, iTXt), ICC, private and animation chunks are dropped: libpng would decompress and keep them,
    at up to a thousand times their size, and none of them changes the pixels OpenCV decodes.
    """
    kept, i, n, chunks, ihdr, alpha = [(0, 8)], 8, len(data), 0, None, False
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
        alpha = alpha or kind == b"tRNS"
        if kind in _PNG_PIXEL_CHUNKS:
            kept.append((i, end))
        i = end
        if kind == b"IEND":
            break
    if ihdr is None:
        raise UnreadableImage(f"{name}: corrupt PNG (no IHDR chunk)")
    width, height = int.from_bytes(ihdr[0:4], "big"), int.from_bytes(ihdr[4:8], "big")
    if width == 0 or height == 0:
        raise UnreadableImage(f"{name}: corrupt PNG (IHDR gives {width}x{height} pixels)")
    depth, colour = ihdr[8], ihdr[9]
    channels = 4 if alpha else _PNG_CHANNELS.get(colour, 4)  # tRNS makes OpenCV add an alpha channel
    pixels_only = sum(end - start for start, end in kept)
    if pixels_only < i:  # something was dropped: one copy of the chunks that remain
        view = memoryview(data)
        data = b"".join(view[start:end] for start, end in kept)
    return ImageHeader("PNG", width, height, channels * (2 if depth == 16 else 1), payload=pixels_only), data


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


def _gif_header(data: bytes, name: str) -> ImageHeader:
    """The logical screen's size, after walking the blocks up to the end of the first frame (the one decoded):
    its sub-blocks are counted, since a reader pays for each one."""
    truncated = UnreadableImage(f"{name}: truncated or corrupt GIF (its first frame is cut off)")
    n = len(data)
    if n < 13:
        raise truncated
    width, height, flags = int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little"), data[10]
    i = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # after the global colour table
    blocks = 0

    def sub_blocks(at: int) -> int:  # skip a chain of sub-blocks, ended by a zero length
        nonlocal blocks
        while True:
            if at >= n:
                raise truncated
            blocks += 1
            if blocks > MAX_GIF_BLOCKS:
                raise ImageTooLarge(f"{name}: GIF with more than {MAX_GIF_BLOCKS:,} data blocks before the end of "
                                    "its first frame")
            if data[at] == 0:
                return at + 1
            at += 1 + data[at]

    while i < n:
        if data[i] == 0x21:  # extension: label, then sub-blocks
            i = sub_blocks(i + 2)
        elif data[i] == 0x2C:  # image descriptor, local colour table, LZW code size, image data
            if i + 10 > n:
                raise truncated
            local = data[i + 9]
            i = sub_blocks(i + 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0) + 1)
            if width == 0 or height == 0:
                raise UnreadableImage(f"{name}: corrupt GIF (its screen is {width}x{height} pixels)")
            return ImageHeader("GIF", width, height, 4, payload=i)
        else:
            break
    raise truncated


def _webp_check(data: bytes, name: str) -> None:
    """Count a WebP's RIFF chunks (frames of an animation included) before Pillow walks them."""
    i, n, chunks = 12, min(len(data), 8 + int.from_bytes(data[4:8], "little")), 0
    while i + 8 <= n:
        chunks += 1
        if chunks > MAX_WEBP_CHUNKS:
            raise ImageTooLarge(f"{name}: WebP with more than {MAX_WEBP_CHUNKS:,} chunks")
        size = int.from_bytes(data[i + 4 : i + 8], "little")
        i += 8 + size + (size & 1)


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
    elif fmt == "GIF":
        header = _gif_header(data, name)
    else:
        if fmt == "TIFF":
            _tiff_check(data, name)
        elif fmt == "WebP":
            _webp_check(data, name)
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
    payload = size if header.payload is None else header.payload
    if payload > allowed and fmt not in _FIRST_PAGE_ONLY:
        raise ImageTooLarge(
            f"{name}: {payload:,} bytes for a {header.width}x{header.height} image, more than its pixels could "
            f"need ({allowed:,}); refused undecoded"
        )
    return header, data

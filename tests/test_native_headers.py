"""The native core refuses what the Python SDK refuses before decoding, with the same kind of error.

Every input here, hostile or a real photo, goes through `dgs_native.decode_bytes` and `dgs_sdk.image.decode_bytes`:
either both decode it to the same pixels, or both refuse it with the corresponding exception class and a message
that names the input and carries the same key phrase. The hostile files are the SDK's own test files
(tests/test_image.py, tests/test_hostile_folders.py).

Where they still differ, and why:
- GIF: OpenCV before 4.11 (the native core's 4.6 here) has no GIF decoder. A GIF's blocks are walked, so a hostile
  one is refused as the SDK refuses it; a valid one is refused by the native core and decoded by the SDK.
- An image over the pixel bound that Pillow measures for the SDK (WebP, BMP, TIFF) is named by its pixel count in
  the SDK's message ("10,000,000,000 pixels is over"), by its size in the native core's ("100000x100000 is over"),
  which reads those headers itself: same class, same key phrase ("image too large").
- A WebP, BMP or TIFF header that Pillow refuses but whose size fields are readable goes on to OpenCV's decoder in
  the native core: same class, the decoder's wording ("corrupt or truncated WebP file", not "corrupt WebP file
  (its header cannot be read)").
"""

from __future__ import annotations

import io
import re
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import dgs_sdk.limits
from conftest import bomb_png, png_chunk
from dgs_sdk import ImageTooLarge, UnreadableImage
from dgs_sdk.image import decode_bytes, load_image
from test_hostile_folders import jpeg_skeleton, jpeg_with_fill, png_header, tiff_strips
from test_image import cv2_bytes, exif_with_thumbnail, with_app1

dgs_native = pytest.importorskip("dgs_native")

LIMITS_HPP = Path(__file__).resolve().parents[1] / "cpp_bindings" / "include" / "dgs" / "limits.hpp"
# OpenCV before 4.11 has no GIF decoder: the native core walks a GIF's blocks (so a hostile one gets the SDK's
# refusal), then refuses the rest, where the SDK's cv2 decodes them.
NATIVE_GIF = "GIF cannot be decoded by the native core's OpenCV"
# libjpeg-turbo builds may round their IDCT differently (Debian's for OpenCV 4.6, opencv-python's own).
JPEG_TOLERANCE = 1
# The phrases that say why an input is refused; a refusal's first one in the SDK's message must be in the native
# core's too.
KEY_PHRASES = (
    "not an image in a supported format",
    "empty file",
    "more than 10,000 marker segments",
    "more than 200,000 chunks",
    "data blocks before the end of its first frame",
    "WebP with more than",
    "scans of",
    "numbers (at most",
    "too large to decode",
    "more than its pixels could need",
    "image too large",
    "first directory is cut off",
    "no end-of-image marker",
    "no IEND chunk",
    "runs past the end of the file",
    "no frame header",
)
# Where the two decoders' own errors (not the header walk's) word the same problem differently: the SDK's cv2
# reports a corrupt stream its way, OpenCV 4.6 its own. Both say "corrupt".
DECODER_WORDING = "corrupt"


def outcome(decode, data: bytes, name: str):
    """("ok", pixels) or ("refused", exception)."""
    try:
        return "ok", decode(data, name)
    except (UnreadableImage, dgs_native.UnreadableImage) as e:
        return "refused", e


def assert_same_outcome(data: bytes, name: str, tolerance: int = 0) -> str:
    """Both decoders give the same pixels or the same refusal for ``data``; the outcome's kind."""
    python, native = outcome(decode_bytes, data, name), outcome(dgs_native.decode_bytes, data, name)
    if python[0] == "ok":
        assert native[0] == "ok", f"{name}: the SDK decodes it, the native core says: {native[1]}"
        assert native[1].shape == python[1].shape, name
        assert np.abs(native[1].astype(np.int16) - python[1]).max() <= tolerance, name
        return "ok"
    assert native[0] == "refused", f"{name}: the SDK says {python[1]}, the native core decodes it"
    python_error, native_error = python[1], native[1]
    expected = dgs_native.ImageTooLarge if isinstance(python_error, ImageTooLarge) else dgs_native.UnreadableImage
    assert type(native_error) is expected, (name, str(python_error), str(native_error))
    assert str(native_error).startswith(f"{name}: "), str(native_error)
    key = next((phrase for phrase in KEY_PHRASES if phrase in str(python_error)), DECODER_WORDING)
    assert key in str(native_error), (name, key, str(python_error), str(native_error))
    return type(python_error).__name__


# --- inputs ---------------------------------------------------------------------------------------------------------


def pil_bytes(rgb: np.ndarray, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, fmt, **params)
    return buffer.getvalue()


def valid_files(photos) -> dict[str, tuple[bytes, int]]:
    """Real photos in each format the native core decodes: name -> (bytes, tolerance)."""
    files = {}
    for name, rgb in photos.items():
        files[f"{name}.jpg"] = (cv2_bytes(rgb, ".jpg"), JPEG_TOLERANCE)
        files[f"{name} progressive.jpg"] = (cv2_bytes(rgb, ".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]), JPEG_TOLERANCE)
        files[f"{name}.png"] = (cv2_bytes(rgb, ".png"), 0)
        files[f"{name}.bmp"] = (cv2_bytes(rgb, ".bmp"), 0)
        files[f"{name}.tif"] = (pil_bytes(rgb, "TIFF"), 0)
        files[f"{name} lzw.tif"] = (pil_bytes(rgb, "TIFF", compression="tiff_lzw"), 0)
        files[f"{name}.webp"] = (pil_bytes(rgb, "WEBP", lossless=True), 0)
    return files


def hostile_files(photos) -> dict[str, bytes]:
    """The SDK's hostile test files, by name."""
    coffee, cat = photos["coffee"], photos["chelsea"]
    jpeg = cv2_bytes(coffee, ".jpg")
    png = cv2_bytes(cat, ".png")
    progressive = cv2_bytes(cat, ".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    scan_start = jpeg.index(b"\xff\xda")
    grey = cv2_bytes(np.dstack([np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)] * 3), ".png")
    text = png_chunk(b"zTXt", b"note\0\0" + zlib.compress(b"A" * 8_000_000, 9))
    tiny = cv2_bytes(np.zeros((8, 8, 3), np.uint8), ".png")
    exif = with_app1(cv2_bytes(cat, ".jpg"), exif_with_thumbnail(cv2_bytes(cv2.resize(cat, (80, 53)), ".jpg")))
    buffer = io.BytesIO()
    Image.new("P", (1, 1)).save(buffer, "GIF")
    gif = buffer.getvalue()
    blocks = 13 + (3 << ((gif[10] & 7) + 1) if gif[10] & 0x80 else 0)
    webp = pil_bytes(np.zeros((8, 8, 3), np.uint8), "WEBP")
    junk = webp[12:] + b"JUNK\x00\x00\x00\x00" * 100_001
    one_scan = bytearray(cv2_bytes(cat[:16, :16], ".jpg"))
    sof = one_scan.index(b"\xff\xc0")
    one_scan[sof + 5 : sof + 9] = b"\xfd\xe8\xfd\xe8"  # 65000 x 65000
    bmp = bytearray(cv2_bytes(cat, ".bmp"))
    bmp[18:26] = (100_000).to_bytes(4, "little") * 2
    vp8x = b"RIFF" + (22).to_bytes(4, "little") + b"WEBPVP8X" + (10).to_bytes(4, "little") + b"\x00" * 4
    rng = np.random.default_rng(0)
    pages = [Image.fromarray(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)) for _ in range(3)]
    buffer = io.BytesIO()
    pages[0].save(buffer, "TIFF", save_all=True, append_images=pages[1:])
    multi_page = buffer.getvalue()
    buffer = io.BytesIO()
    pages[0].save(buffer, "PNG", save_all=True, append_images=pages[1:])
    apng = buffer.getvalue()
    ok, jp2 = cv2.imencode(".jp2", np.zeros((64, 64, 3), np.uint8))
    return {
        # test_image.py
        "empty.jpg": b"",
        "page.jpg": b"<!DOCTYPE html>\n<html><body>404</body></html>\n",
        "notes.png": "plain text, ünïcödé\n".encode() * 20,
        "half.jpg": jpeg[: len(jpeg) // 2],
        "half progressive.jpg": progressive[: len(progressive) // 2],
        "half.png": png[: len(png) // 2],
        "noise.jpg": np.random.default_rng(7).bytes(5000),
        "garbage.png": b"\x89PNG\r\n\x1a\n" + np.random.default_rng(8).bytes(5000),
        "bomb 100000.png": bomb_png(100_000, 100_000),
        "bomb 14000.png": bomb_png(14_000, 14_000),
        "big but allowed.png": bomb_png(13_000, 13_000),
        "trailer.jpg": jpeg + b"\x00\xff\xd8 trailing junk from a careless uploader \xff\x00" * 50,
        "camera.jpg": exif,
        "camera cut.jpg": exif[: len(exif) // 2],
        # test_hostile_folders.py
        "filled.jpg": jpeg_with_fill(coffee, 1_000_000),
        "bloated.jpg": jpeg_with_fill(coffee, 25_000_000),
        "many.jpg": jpeg[:2] + b"\xff\xfe\x00\x03x" * 20_000 + jpeg[2:],
        "scans.jpg": jpeg[:scan_start] + jpeg[scan_start:-2] * 101 + b"\xff\xd9",
        "text.png": grey[:-12] + text * 100 + grey[-12:],
        "chunks.png": tiny[:33] + png_chunk(b"abCd", b"") * 200_001 + tiny[33:],
        "strips 1000.tif": tiff_strips(1000),
        "strips.tif": tiff_strips(2_000_000),
        "comment.gif": gif[:blocks] + b"\x21\xfe" + b"\x01x" * 1_000_001 + b"\x00" + gif[blocks:],
        "junk.webp": b"RIFF" + (len(junk) + 4).to_bytes(4, "little") + b"WEBP" + junk,
        "skeleton.jpg": jpeg_skeleton(0xC0, 1000, 800, [0x22, 0x11, 0x11], 1),
        "big444.jpg": jpeg_skeleton(0xC2, 10_000, 8_000, [0x11, 0x11, 0x11], 10),
        "multi page.tif": multi_page,
        "animated.png": apng,
        "jpeg2000.png": jp2.tobytes(),
        "deep.png": png_header(13_000, 13_000, 16, 6),
        "grey.png": png_header(13_000, 13_000, 8, 0),
        # the native core's own tests (tests/cpp/test_headers.cpp, test_preprocess.cpp)
        "bomb.jpg": bytes(one_scan),
        "bomb.bmp": bytes(bmp),
        "canvas.webp": vp8x + b"\xff" * 6,
        "large canvas.webp": vp8x + b"\xff\x1f\x00\xff\x1f\x00",
    }


# --- tests ----------------------------------------------------------------------------------------------------------


def test_real_photos_decode_to_the_same_pixels(photos):
    for name, (data, tolerance) in valid_files(photos).items():
        assert assert_same_outcome(data, name, tolerance) == "ok", name


def test_hostile_files_get_the_same_outcome(photos):
    outcomes = {name: assert_same_outcome(data, name) for name, data in hostile_files(photos).items()}
    # What the SDK's tests expect of them, so that this test fails should a file stop being hostile.
    assert outcomes["text.png"] == outcomes["filled.jpg"] == outcomes["trailer.jpg"] == "ok"
    assert outcomes["multi page.tif"] == outcomes["animated.png"] == outcomes["strips 1000.tif"] == "ok"
    too_large = ["bomb 100000.png", "bomb 14000.png", "bloated.jpg", "scans.jpg", "strips.tif", "comment.gif",
                 "junk.webp", "big444.jpg", "deep.png", "bomb.jpg", "bomb.bmp", "canvas.webp"]
    assert {name: outcomes[name] for name in too_large} == dict.fromkeys(too_large, "ImageTooLarge")
    unreadable = ["empty.jpg", "page.jpg", "notes.png", "half.jpg", "half progressive.jpg", "half.png", "noise.jpg",
                  "garbage.png", "big but allowed.png", "camera cut.jpg", "many.jpg", "chunks.png", "skeleton.jpg",
                  "jpeg2000.png", "grey.png"]
    assert {name: outcomes[name] for name in unreadable} == dict.fromkeys(unreadable, "UnreadableImage")


def test_cut_files_of_every_format_are_refused_alike(photos):
    """Each format cut at a dozen points: the walk (or, for formats read from their header, the decoder) refuses."""
    rgb = photos["chelsea"][:40, :50]
    files = {"jpg": cv2_bytes(rgb, ".jpg"), "png": cv2_bytes(rgb, ".png"), "bmp": cv2_bytes(rgb, ".bmp"),
             "tif": pil_bytes(rgb, "TIFF"), "webp": pil_bytes(rgb, "WEBP", lossless=True)}
    for ext, data in files.items():
        for cut in sorted({1, 2, 5, 9, 13, 20, 30, 40, len(data) // 3, len(data) // 2, len(data) - 20, len(data) - 1}):
            name = f"cut at {cut}.{ext}"
            if ext in ("bmp", "tif") and cut > 200:
                # Pillow reads only the header and OpenCV's BMP and TIFF decoders fill what is missing of a cut
                # file's pixels differently (cv2 5 refuses, OpenCV 4.6 may give the rows it has): outside the walk.
                continue
            assert assert_same_outcome(data[:cut], name, JPEG_TOLERANCE if ext == "jpg" else 0) != "ok", name


def test_gif_is_walked_then_refused_by_the_native_core(photos):
    """The one remaining difference: GIFs the SDK decodes, OpenCV 4.6 cannot; a hostile GIF is refused alike."""
    buffer = io.BytesIO()
    Image.fromarray(photos["chelsea"]).save(buffer, "GIF")
    gif = buffer.getvalue()
    assert decode_bytes(gif, "a.gif").shape == photos["chelsea"].shape
    try:
        decoded = dgs_native.decode_bytes(gif, "a.gif")
    except dgs_native.UnreadableImage as e:
        assert str(e).startswith(f"a.gif: {NATIVE_GIF}"), str(e)
    else:  # an OpenCV with a GIF decoder
        np.testing.assert_array_equal(decoded, decode_bytes(gif, "a.gif"))
    with pytest.raises(dgs_native.UnreadableImage, match="truncated or corrupt GIF"):
        dgs_native.decode_bytes(gif[:200], "cut.gif")


def test_files_on_disk_are_refused_alike_and_named_by_their_path(tmp_path, photos):
    files = hostile_files(photos)
    for name in ("text.png", "bloated.jpg", "scans.jpg", "chunks.png", "strips.tif", "junk.webp", "deep.png"):
        path = tmp_path / name
        path.write_bytes(files[name])
        try:
            expected = ("ok", load_image(path))
        except UnreadableImage as e:
            expected = ("refused", e)
        if expected[0] == "ok":
            np.testing.assert_array_equal(dgs_native.decode_file(str(path)), expected[1])
            continue
        native = dgs_native.ImageTooLarge if isinstance(expected[1], ImageTooLarge) else dgs_native.UnreadableImage
        with pytest.raises(native) as info:
            dgs_native.decode_file(str(path))
        assert type(info.value) is native and str(info.value).startswith(f"{path}: "), str(info.value)


def test_the_limits_are_the_sdks():
    """dgs/limits.hpp holds the same figures as dgs_sdk/limits.py."""
    declared = re.findall(r"inline constexpr [\w:]+ (\w+) = ([^;]+);", LIMITS_HPP.read_text())
    values: dict[str, int] = {}
    for name, expression in declared:
        python = re.sub(r"(?<=\d)'(?=\d)|(?<=\d)LL\b", "", expression)
        values[name] = eval(python, {"__builtins__": {}}, dict(values))  # noqa: S307 - our own header's arithmetic
    shared = {name for name in values if hasattr(dgs_sdk.limits, name.upper())}
    assert {"max_jpeg_segments", "max_png_chunks", "max_tiff_values", "decode_memory", "max_metadata_bytes"} <= shared
    assert {name: values[name] for name in shared} == {name: getattr(dgs_sdk.limits, name.upper()) for name in shared}

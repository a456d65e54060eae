"""Decoding files, encoded bytes and arrays into 8-bit RGB with `dgs_sdk.image`, on real files in tmp_path."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import bomb_png, write_image
from dgs_sdk.errors import ImageTooLarge, UnreadableImage
from dgs_sdk.image import MAX_PIXELS, decode_bytes, load_image, to_rgb8


@pytest.fixture(scope="module")
def cat(photos) -> np.ndarray:
    """A non-square photo with an odd width ([300, 451, 3]) and an orange cast, so transposes and BGR show."""
    return photos["chelsea"]


def pil_bytes(image: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def cv2_bytes(rgb: np.ndarray, ext: str, params: list[int] | None = None) -> bytes:
    ok, encoded = cv2.imencode(ext, np.ascontiguousarray(rgb[:, :, ::-1]), params or [])
    assert ok
    return encoded.tobytes()


def exif_with_thumbnail(thumbnail: bytes) -> bytes:
    """An APP1 EXIF payload (big-endian TIFF) whose IFD1 holds a JPEG thumbnail, as cameras write it."""
    ifd0 = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, 1, 0) + struct.pack(">I", 26)  # orientation
    thumb_at = 26 + 2 + 3 * 12 + 4
    ifd1 = (
        struct.pack(">H", 3)
        + struct.pack(">HHIHH", 0x0103, 3, 1, 6, 0)  # compression: JPEG
        + struct.pack(">HHII", 0x0201, 4, 1, thumb_at)  # JPEGInterchangeFormat
        + struct.pack(">HHII", 0x0202, 4, 1, len(thumbnail))  # JPEGInterchangeFormatLength
        + struct.pack(">I", 0)
    )
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + ifd0 + ifd1
    assert len(tiff) == thumb_at
    return b"Exif\x00\x00" + tiff + thumbnail


def with_app1(jpeg: bytes, payload: bytes) -> bytes:
    """Insert an APP1 segment right after the start-of-image marker."""
    assert jpeg[:2] == b"\xff\xd8" and len(payload) + 2 < 65536
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


# --- formats ------------------------------------------------------------------------------------------------------

LOSSLESS = [
    (".png", "PNG", {}),
    (".bmp", "BMP", {}),
    (".tif", "TIFF", {}),
    (".tiff", "TIFF", {"compression": "tiff_lzw"}),
    (".webp", "WEBP", {"lossless": True}),
]
LOSSY = [
    (".jpg", "JPEG", {"quality": 90}),
    (".jpeg", "JPEG", {"quality": 90, "subsampling": 0}),
    (".webp", "WEBP", {"quality": 90}),
]


@pytest.mark.parametrize(("ext", "fmt", "params"), LOSSLESS, ids=[f"{f}{p}" for _, f, p in LOSSLESS])
def test_lossless_formats_decode_to_the_exact_rgb_pixels(tmp_path, cat, ext, fmt, params):
    path = tmp_path / f"cat{ext}"
    path.write_bytes(pil_bytes(Image.fromarray(cat), fmt, **params))
    out = load_image(path)
    assert out.dtype == np.uint8 and out.shape == cat.shape
    np.testing.assert_array_equal(out, cat)


@pytest.mark.parametrize(("ext", "fmt", "params"), LOSSY, ids=[f"{f}{p}" for _, f, p in LOSSY])
def test_lossy_formats_decode_close_to_the_source_in_rgb_order(tmp_path, cat, ext, fmt, params):
    path = tmp_path / f"cat{ext}"
    path.write_bytes(pil_bytes(Image.fromarray(cat), fmt, **params))
    out = load_image(path)
    assert out.dtype == np.uint8 and out.shape == cat.shape
    error = np.abs(out.astype(np.int16) - cat).mean()
    swapped = np.abs(out.astype(np.int16) - cat[:, :, ::-1]).mean()
    assert error < 4.0, f"mean abs error {error:.2f} against the source"
    assert swapped > 10 * error, "channels look swapped (BGR returned as RGB?)"


def test_animated_gif_gives_its_first_frame(tmp_path, cat):
    first = Image.fromarray(cat).quantize(256)
    second = Image.fromarray(255 - cat).quantize(256)
    path = tmp_path / "anim.gif"
    path.write_bytes(pil_bytes(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0))
    assert Image.open(path).n_frames == 2
    out = load_image(path)
    assert out.dtype == np.uint8 and out.shape == cat.shape
    np.testing.assert_array_equal(out, np.asarray(first.convert("RGB")))


def test_decode_bytes_takes_encoded_bytes_bytearray_and_memoryview(cat):
    data = pil_bytes(Image.fromarray(cat), "PNG")
    for form in (data, bytearray(data), memoryview(data)):
        np.testing.assert_array_equal(decode_bytes(form), cat)
    np.testing.assert_array_equal(load_image(data), cat)


# --- pixel layouts ----------------------------------------------------------------------------------------------


def _rgba(cat: np.ndarray) -> Image.Image:
    alpha = np.tile((np.arange(cat.shape[1]) % 256).astype(np.uint8), (cat.shape[0], 1))  # includes alpha 0 and 255
    return Image.fromarray(np.dstack([cat, alpha]), "RGBA")


LAYOUTS = {
    "grey L": lambda cat: Image.fromarray(cat[:, :, 0]),
    "RGBA": _rgba,
    "palette P": lambda cat: Image.fromarray(cat).convert("P", palette=Image.Palette.ADAPTIVE, colors=64),
    "grey+alpha LA": lambda cat: Image.fromarray(cat).convert("LA"),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_png_layouts_decode_as_pil_convert_rgb(tmp_path, cat, layout):
    image = LAYOUTS[layout](cat)
    path = tmp_path / "layout.png"
    image.save(path)
    assert Image.open(path).mode == image.mode
    out = load_image(path)
    assert out.dtype == np.uint8 and out.shape == cat.shape
    np.testing.assert_array_equal(out, np.asarray(Image.open(path).convert("RGB")))


def test_16_bit_grey_png_is_scaled_to_8_bit_with_rounding(tmp_path):
    ramp = np.arange(65536, dtype=np.uint16).reshape(256, 256)  # every 16-bit value
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode == "I;16"
    out = load_image(path)
    expected = np.round(ramp / 257.0).astype(np.uint8)
    assert not np.array_equal(expected, ramp >> 8)  # rounding and truncation differ on this ramp
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], expected)


def test_16_bit_rgb_png_keeps_channel_order(tmp_path):
    rgb16 = np.random.default_rng(0).integers(0, 65536, (60, 90, 3)).astype(np.uint16)
    path = write_image(tmp_path / "rgb16.png", rgb16)
    out = load_image(path)
    np.testing.assert_array_equal(out, np.round(rgb16 / 257.0).astype(np.uint8))


# --- numpy arrays ---------------------------------------------------------------------------------------------------


def test_uint8_rgb_array_is_taken_as_rgb_unchanged(cat):
    out = load_image(cat)
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, cat)
    np.testing.assert_array_equal(load_image(cat[:, ::-1]), cat[:, ::-1])  # a non-contiguous view


@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(lambda a: a.astype(np.uint16) * 257, id="uint16"),
        pytest.param(lambda a: a.astype(np.float32) / 255, id="float32 0..1"),
        pytest.param(lambda a: a.astype(np.float64) / 255, id="float64 0..1"),
        pytest.param(lambda a: np.dstack([a, np.full(a.shape[:2], 7, np.uint8)]), id="RGBA uint8"),
    ],
)
def test_array_pixel_types_are_brought_to_uint8_rgb(cat, convert):
    out = to_rgb8(convert(cat), value_range=(0, 1))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, cat)


def test_float_arrays_are_scaled_from_their_declared_range():
    np.testing.assert_array_equal(load_image(np.array([[0.0, 0.5, 1.0]]), value_range=(0, 1))[0, :, 0], [0, 128, 255])
    np.testing.assert_array_equal(load_image(np.array([[0.0, 127.5, 255.0]]), value_range=(0, 255))[0, :, 0],
                                  [0, 128, 255])
    np.testing.assert_array_equal(load_image(np.array([[-1.0, 0.0, 1.0]]), value_range=(-1, 1))[0, :, 0],
                                  [0, 128, 255])


@pytest.mark.parametrize(
    ("array", "value_range", "reason"),
    [
        pytest.param(np.full((4, 4, 3), 200.0), None, "value range declared", id="0..255 without a range"),
        pytest.param(np.full((4, 4, 3), 200.0), (0, 1), "outside the declared range 0 to 1", id="0..255 as 0..1"),
        pytest.param(np.full((4, 4, 3), -0.5), (0, 1), "from -0.5 to -0.5", id="negative"),
        pytest.param(np.full((4, 4, 3), np.nan), (0, 1), "NaN", id="NaN"),
        pytest.param(np.full((4, 4, 3), np.inf, np.float32), (0, 1), "infinite", id="inf"),
    ],
)
def test_float_arrays_are_refused_unless_their_values_fit_the_declared_range(array, value_range, reason):
    """A float array in 0..255 used to be clipped to white and a NaN array scored; neither is guessed now."""
    with pytest.raises(UnreadableImage, match=reason) as excinfo:
        load_image(array, name="frame 3", value_range=value_range)
    assert "frame 3" in str(excinfo.value)


@pytest.mark.parametrize("shape", ["HW", "HW1", "HW1 uint16"])
def test_grey_arrays_are_replicated_to_three_channels(cat, shape):
    grey = cat[:, :, 1]
    source = {"HW": grey, "HW1": grey[:, :, None], "HW1 uint16": grey[:, :, None].astype(np.uint16) * 257}[shape]
    out = load_image(source)
    assert out.shape == cat.shape and out.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], grey)


@pytest.mark.parametrize(
    ("array", "reason"),
    [
        pytest.param(np.zeros((4, 5, 5), np.uint8), "[4, 5, 5]", id="5 channels"),
        pytest.param(np.zeros((2, 4, 5, 3), np.uint8), "[2, 4, 5, 3]", id="4-D"),
        pytest.param(np.zeros(10, np.uint8), "[10]", id="1-D"),
        pytest.param(np.zeros((0, 5, 3), np.uint8), "no pixels", id="empty"),
        pytest.param(np.zeros((4, 5, 3), np.int32), "int32", id="int32"),
        pytest.param(np.zeros((4, 5, 3), bool), "bool", id="bool"),
        pytest.param(np.zeros((4, 5, 3), np.complex64), "complex64", id="complex"),
    ],
)
def test_bad_arrays_raise_unreadable_image_naming_the_input(array, reason):
    with pytest.raises(UnreadableImage) as excinfo:
        load_image(array, name="frame 17")
    assert "frame 17" in str(excinfo.value) and reason in str(excinfo.value)
    with pytest.raises(UnreadableImage, match="<array>"):
        load_image(array)


def test_not_an_array_raises_unreadable_image():
    with pytest.raises(UnreadableImage, match="list"):
        load_image([[1, 2], [3, 4]], name="my list")
    with pytest.raises(UnreadableImage, match="my list"):
        to_rgb8([[1, 2], [3, 4]], name="my list")


def test_max_pixels_is_enforced_on_files_and_arrays(cat):
    data = pil_bytes(Image.fromarray(cat), "PNG")
    with pytest.raises(ImageTooLarge, match="cat.png.*too large"):
        decode_bytes(data, name="cat.png", max_pixels=1000)
    with pytest.raises(ImageTooLarge, match="too large"):
        load_image(cat, max_pixels=cat.shape[0] * cat.shape[1] - 1)
    assert load_image(cat, max_pixels=cat.shape[0] * cat.shape[1]).shape == cat.shape


# --- paths ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["with spaces/a photo.png", "ünïcödé ñ/写真 été.jpg", "emoji 🙂/😀 [1] (copy).webp"])
def test_paths_with_spaces_and_unicode(tmp_path, cat, name):
    path = tmp_path / name
    path.parent.mkdir(parents=True)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".webp": "WEBP"}[path.suffix]
    path.write_bytes(pil_bytes(Image.fromarray(cat), fmt, **({} if fmt == "PNG" else {"quality": 95})))
    for source in (path, str(path)):
        out = load_image(source)
        assert out.shape == cat.shape
        assert np.abs(out.astype(np.int16) - cat).mean() < 3.0


# --- unreadable files -----------------------------------------------------------------------------------------------


def _symlink_to_nowhere(tmp_path: Path, cat: np.ndarray) -> Path:
    link = tmp_path / "gone.jpg"
    link.symlink_to(tmp_path / "deleted target.jpg")
    return link


def _write(name: str, make):
    def build(tmp_path: Path, cat: np.ndarray) -> Path:
        path = tmp_path / name
        path.write_bytes(make(cat))
        return path

    return build


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


UNREADABLE = {
    "zero-byte file": (_write("empty.jpg", lambda cat: b""), "empty"),
    "missing file": (lambda tmp_path, cat: tmp_path / "never written.jpg", "no such file"),
    "directory": (lambda tmp_path, cat: (tmp_path / "folder.jpg").mkdir() or tmp_path / "folder.jpg", "directory"),
    "HTML named .jpg": (
        _write("page.jpg", lambda cat: b"<!DOCTYPE html>\n<html><body>404</body></html>\n"),
        "not an image",
    ),
    "text named .png": (_write("notes.png", lambda cat: "plain text, ünïcödé\n".encode() * 20), "not an image"),
    "JPEG cut in half": (_write("half.jpg", lambda cat: _half(cv2_bytes(cat, ".jpg"))), "truncated"),
    "progressive JPEG cut in half": (
        _write("half_progressive.jpg", lambda cat: _half(cv2_bytes(cat, ".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]))),
        "truncated",
    ),
    "PNG cut in half": (_write("half.png", lambda cat: _half(cv2_bytes(cat, ".png"))), "truncated"),
    "random bytes": (_write("noise.jpg", lambda cat: np.random.default_rng(7).bytes(5000)), "not an image"),
    "PNG signature then garbage": (
        _write("garbage.png", lambda cat: b"\x89PNG\r\n\x1a\n" + np.random.default_rng(8).bytes(5000)),
        "corrupt",
    ),
    "broken symlink": (_symlink_to_nowhere, "link"),
}


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_unreadable_files_raise_with_path_and_reason(tmp_path, cat, case):
    build, reason = UNREADABLE[case]
    path = build(tmp_path, cat)
    with pytest.raises(UnreadableImage) as excinfo:
        load_image(path)
    message = str(excinfo.value)
    assert type(excinfo.value) is UnreadableImage
    assert str(path) in message, message
    assert reason in message.lower(), message


def test_unreadable_bytes_are_named_by_the_name_given(cat):
    with pytest.raises(UnreadableImage, match=r"upload #3: truncated"):
        decode_bytes(_half(cv2_bytes(cat, ".jpg")), name="upload #3")
    with pytest.raises(UnreadableImage, match=r"^<bytes>: empty"):
        load_image(b"")


@pytest.fixture
def unreadable_file(tmp_path, cat) -> Path:
    path = write_image(tmp_path / "locked.png", cat)
    path.chmod(0)
    yield path
    path.chmod(0o644)


def test_permission_denied_file(unreadable_file):
    if os.access(unreadable_file, os.R_OK):
        pytest.skip("running as root (or with CAP_DAC_OVERRIDE): a mode-000 file is still readable")
    with pytest.raises(UnreadableImage) as excinfo:
        load_image(unreadable_file)
    assert str(unreadable_file) in str(excinfo.value) and "permission denied" in str(excinfo.value)


# --- decompression bombs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height"),
    [
        pytest.param(100_000, 100_000, id="100000x100000"),
        # Just over MAX_PIXELS (Pillow's bound: 13k x 13k is accepted, 14k x 14k is not), yet under OpenCV's own
        # default limit of 2**30 pixels: only the SDK's bound stops this one.
        pytest.param(14_000, 14_000, id="14000x14000"),
    ],
)
def test_decompression_bomb_png_raises_image_too_large(tmp_path, width, height):
    assert width * height > MAX_PIXELS
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(width, height))
    assert path.stat().st_size < 2000
    with pytest.raises(ImageTooLarge) as excinfo:
        load_image(path)
    assert str(path) in str(excinfo.value) and "too large" in str(excinfo.value)


def test_images_just_under_max_pixels_are_not_refused_as_too_large(tmp_path):
    path = tmp_path / "big but allowed.png"
    path.write_bytes(bomb_png(13_000, 13_000))  # 169M pixels: under the bound; fails only for its missing rows
    with pytest.raises(UnreadableImage) as excinfo:
        load_image(path)
    assert not isinstance(excinfo.value, ImageTooLarge)


def test_pixel_bound_holds_in_a_fresh_interpreter_that_imports_only_dgs_sdk(tmp_path):
    """The bound must not depend on who imported cv2 first; here nothing but dgs_sdk does."""
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(14_000, 14_000))
    code = (
        "import sys\n"
        "from dgs_sdk.image import load_image\n"
        "from dgs_sdk.errors import DgsError\n"
        "try:\n"
        "    load_image(sys.argv[1])\n"
        "except DgsError as e:\n"
        "    print(type(e).__name__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ImageTooLarge", done.stdout + done.stderr


# --- JPEG stream structure --------------------------------------------------------------------------------------


def test_jpeg_with_trailing_bytes_after_end_of_image_decodes(tmp_path, cat):
    jpeg = cv2_bytes(cat, ".jpg")
    path = tmp_path / "trailer.jpg"
    path.write_bytes(jpeg + b"\x00\xff\xd8 trailing junk from a careless uploader \xff\x00" * 50)
    np.testing.assert_array_equal(load_image(path), decode_bytes(jpeg))


@pytest.mark.parametrize(
    "params",
    [
        pytest.param([cv2.IMWRITE_JPEG_PROGRESSIVE, 1], id="progressive"),
        pytest.param([cv2.IMWRITE_JPEG_RST_INTERVAL, 3], id="restart markers"),
    ],
)
def test_jpeg_variants_decode(tmp_path, cat, params):
    path = tmp_path / "variant.jpg"
    path.write_bytes(cv2_bytes(cat, ".jpg", params + [cv2.IMWRITE_JPEG_QUALITY, 95]))
    out = load_image(path)
    assert out.shape == cat.shape
    assert np.abs(out.astype(np.int16) - cat).mean() < 3.0


def test_jpeg_with_exif_thumbnail_decodes_and_its_truncation_is_still_caught(tmp_path, cat):
    thumbnail = cv2_bytes(cv2.resize(cat, (80, 53)), ".jpg")
    jpeg = cv2_bytes(cat, ".jpg")
    with_exif = with_app1(jpeg, exif_with_thumbnail(thumbnail))
    assert Image.open(io.BytesIO(with_exif)).getexif()[0x0112] == 1  # a well-formed EXIF block
    path = tmp_path / "camera.jpg"
    path.write_bytes(with_exif)
    np.testing.assert_array_equal(load_image(path), decode_bytes(jpeg))

    cut = with_exif[: len(with_exif) // 2]
    assert b"\xff\xd9" in cut  # the thumbnail's end-of-image marker survives the cut
    truncated = tmp_path / "camera cut.jpg"
    truncated.write_bytes(cut)
    with pytest.raises(UnreadableImage, match="truncated"):
        load_image(truncated)

"""The native core's decoding and preprocessing against the Python SDK's, on real photographs."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from conftest import bomb_png
from dgs_sdk import ImageTooLarge, ImageTooSmall, UnreadableImage
from dgs_sdk.image import decode_bytes, load_image
from dgs_sdk.preprocess import PreprocessSpec, _gray, _patch_grid, crop_image, normalize, preprocess, spectral_entropy

dgs_native = pytest.importorskip("dgs_native")


def spec_json(spec: PreprocessSpec) -> str:
    return json.dumps(spec.to_dict())


def python_entropies(image: np.ndarray, patch: int) -> np.ndarray:
    gh, gw = image.shape[0] // patch, image.shape[1] // patch
    return spectral_entropy(_patch_grid(_gray(image[: gh * patch, : gw * patch]), patch))


def no_resize_variants(photos):
    """Photos that patch-select takes as they are: as shipped, 1024x1024, odd sizes, a flat-block tie breaker."""
    yield from photos.items()
    yield "astronaut-1024", cv2.resize(photos["astronaut"], (1024, 1024), interpolation=cv2.INTER_CUBIC)
    yield "coffee-odd", np.ascontiguousarray(photos["coffee"][:397, :581])
    yield "hubble-odd", np.ascontiguousarray(photos["hubble_deep_field"][:871, :999])
    # Flat blocks of different greys: their entropies differ only by rounding noise, so the ranking's ties decide.
    levels = np.random.default_rng(0).integers(0, 256, size=(12, 14, 3), dtype=np.uint8)
    yield "flat-blocks", np.kron(levels, np.ones((32, 32, 1), np.uint8))


@pytest.mark.parametrize("patch", [32, 16, 31, 33])
def test_entropies_equal_spectral_entropy(photos, patch):
    for name, image in no_resize_variants(photos):
        native = dgs_native.patch_entropies(image, patch)
        assert native.dtype == np.float64 and native.shape == ((image.shape[0] // patch) * (image.shape[1] // patch),)
        np.testing.assert_allclose(native, python_entropies(image, patch), rtol=0, atol=1e-12, err_msg=name)


def test_entropies_do_not_depend_on_the_number_of_threads(photos):
    image = cv2.resize(photos["astronaut"], (1024, 1024), interpolation=cv2.INTER_CUBIC)  # 1024 patches: shared out
    default = dgs_native.num_threads()
    try:
        dgs_native.set_num_threads(1)
        assert dgs_native.num_threads() == 1
        one = dgs_native.patch_entropies(image, 32)
        dgs_native.set_num_threads(max(2, default))
        many = dgs_native.patch_entropies(image, 32)
    finally:
        dgs_native.set_num_threads(-1)
    np.testing.assert_array_equal(one, many)


@pytest.mark.parametrize("small_images", ["resize", "pad"])
def test_patch_select_mosaic_and_input_are_bit_identical_without_resize(photos, small_images):
    spec = PreprocessSpec.patch_select(small_images=small_images)
    for name, image in no_resize_variants(photos):
        native = dgs_native.crop_image(image, spec_json(spec))
        assert native.shape == (224, 224, 3) and native.dtype == np.uint8
        np.testing.assert_array_equal(native, crop_image(image, spec), err_msg=name)
        np.testing.assert_array_equal(dgs_native.preprocess(image, spec_json(spec)), preprocess(image, spec),
                                      err_msg=name)


def test_pad_policy_on_small_photos_is_bit_identical(photos):
    spec = PreprocessSpec.patch_select(small_images="pad")
    for name, image in photos.items():
        for h, w in [(128, 128), (100, 170), (40, 33)]:
            small = np.ascontiguousarray(image[:h, :w])
            np.testing.assert_array_equal(dgs_native.crop_image(small, spec_json(spec)), crop_image(small, spec),
                                          err_msg=f"{name} {w}x{h}")


def test_crops_with_a_resize_differ_by_at_most_one(photos):
    # OpenCV 4.6's bicubic resize (the native core's) against the SDK's opencv-python: ~3% of bytes differ, by 1.
    differing = total = 0
    for name, image in photos.items():
        small = cv2.resize(image, (150, 110), interpolation=cv2.INTER_AREA)
        for spec, source in [(PreprocessSpec.clip(), image), (PreprocessSpec.clip(336), image),
                             (PreprocessSpec.patch_select(), small)]:
            native, python = dgs_native.crop_image(source, spec_json(spec)), crop_image(source, spec)
            assert native.shape == python.shape
            difference = np.abs(native.astype(np.int16) - python)
            assert difference.max() <= 1, (name, spec.transform)
            differing += np.count_nonzero(difference)
            total += difference.size
    assert differing / total < 0.1


def test_normalised_input_is_bit_identical_for_the_same_crop(photos):
    for spec in (PreprocessSpec.clip(), PreprocessSpec.clip(336)):
        for name, image in photos.items():
            crop = dgs_native.crop_image(image, spec_json(spec))
            native = dgs_native.preprocess(image, spec_json(spec))
            assert native.shape == (3, spec.size, spec.size) and native.dtype == np.float32
            np.testing.assert_array_equal(native, normalize(crop[None], spec)[0], err_msg=name)


def test_spec_json_errors_are_invalid_arguments(photos):
    image = photos["astronaut"]
    with pytest.raises(dgs_native.InvalidArgument, match=r"unknown keys \['colour'\]"):
        dgs_native.crop_image(image, json.dumps({"transform": "clip", "colour": 1}))
    with pytest.raises(dgs_native.InvalidArgument, match="not JSON"):
        dgs_native.crop_image(image, "{")
    with pytest.raises(TypeError):  # not [H, W, 3] uint8
        dgs_native.crop_image(image[:, :, 0], spec_json(PreprocessSpec.clip()))


@pytest.mark.parametrize("layout", ["rgb8", "rgba8", "grey8", "grey-alpha8", "rgb16", "grey16"])
def test_png_decodes_as_the_sdk_decodes(photos, tmp_path, layout):
    rgb = photos["chelsea"]
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    alpha = np.random.default_rng(1).integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    bgr = rgb[:, :, ::-1]
    source = {
        "rgb8": bgr,
        "rgba8": np.dstack([bgr, alpha]),
        "grey8": grey,
        "grey-alpha8": np.dstack([grey, grey, grey, alpha]),
        "rgb16": bgr.astype(np.uint16) * 257 + np.random.default_rng(2).integers(0, 257, bgr.shape, dtype=np.uint16),
        "grey16": grey.astype(np.uint16) * 251,
    }[layout]
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(source))
    assert ok
    data = encoded.tobytes()
    np.testing.assert_array_equal(dgs_native.decode_bytes(data, "a.png"), decode_bytes(data, "a.png"))
    path = tmp_path / "photo ñ.png"
    path.write_bytes(data)
    np.testing.assert_array_equal(dgs_native.decode_file(str(path)), load_image(path))


def test_jpeg_decodes_as_the_sdk_decodes(photos):
    # Both use libjpeg-turbo with the same settings: measured identical on these photos (Debian's libjpeg-turbo
    # for OpenCV 4.6, opencv-python's own); allow a unit should a build's IDCT round differently.
    for name, image in photos.items():
        for quality in (95, 75):
            ok, encoded = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
            data = encoded.tobytes()
            native, python = dgs_native.decode_bytes(data), decode_bytes(data)
            assert native.shape == python.shape
            assert np.abs(native.astype(np.int16) - python).max() <= 1, name


def error_cases(tmp_path, photos) -> dict[str, tuple[str, type]]:
    """Inputs both decoders refuse, by name: (path, the SDK's error)."""
    ok, png = cv2.imencode(".png", photos["astronaut"])
    ok, jpeg = cv2.imencode(".jpg", photos["astronaut"])
    files = {
        "empty.png": (b"", UnreadableImage),
        "page.jpg": (b"<html><body>404</body></html>", UnreadableImage),
        "cut.png": (png.tobytes()[: png.size // 2], UnreadableImage),
        "cut.jpg": (jpeg.tobytes()[:300], UnreadableImage),
        "bomb.png": (bomb_png(20000, 20000), ImageTooLarge),
    }
    cases = {}
    for name, (data, error) in files.items():
        (tmp_path / name).write_bytes(data)
        cases[name] = (str(tmp_path / name), error)
    (tmp_path / "folder").mkdir()
    cases["folder"] = (str(tmp_path / "folder"), UnreadableImage)
    cases["missing.png"] = (str(tmp_path / "missing.png"), UnreadableImage)
    os.mkfifo(tmp_path / "pipe.png")
    cases["pipe.png"] = (str(tmp_path / "pipe.png"), UnreadableImage)
    return cases


def test_refusals_are_the_sdks_and_name_the_file(tmp_path, photos):
    native_error = {UnreadableImage: dgs_native.UnreadableImage, ImageTooLarge: dgs_native.ImageTooLarge}
    for name, (path, error) in error_cases(tmp_path, photos).items():
        with pytest.raises(error) as python:
            load_image(path)
        with pytest.raises(native_error[error]) as native:
            dgs_native.decode_file(path)
        assert str(native.value).startswith(f"{path}: "), (name, str(native.value))
        assert type(native.value) is native_error[error], (name, str(native.value), str(python.value))


def test_too_small_for_pad_is_image_too_small_in_both(photos):
    spec = PreprocessSpec.patch_select(small_images="pad")
    image = np.ascontiguousarray(photos["astronaut"][:20, :100])
    with pytest.raises(ImageTooSmall) as python:
        crop_image(image, spec)
    with pytest.raises(dgs_native.ImageTooSmall) as native:
        dgs_native.crop_image(image, spec_json(spec))
    assert str(native.value) == str(python.value)

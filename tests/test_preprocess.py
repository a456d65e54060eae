"""The one preprocessing definition: patch-select against a per-patch reference, clip against open_clip."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dgs_sdk import ImageTooSmall, UnreadableImage
from dgs_sdk.preprocess import (
    CLIP_STD,
    PreprocessSpec,
    center_crop,
    crop_image,
    preprocess,
    preprocess_batch,
    resize_shortest_side,
    select_patches,
    spectral_entropy,
)

PATCH = 32


def reference_entropy(patch_rgb: np.ndarray) -> float:
    """Spectral entropy of one RGB patch, written out step by step as DGS-Net describes it."""
    gray = np.dot(patch_rgb[..., :3].astype(np.float64), [0.299, 0.587, 0.114]) / 255.0
    power = np.abs(np.fft.fftshift(np.fft.fft2(gray))) ** 2
    p = power.flatten() / (power.sum() + 1e-12)
    return float(-np.sum(p * np.log2(p + 1e-12)))


def reference_patch_select(image: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Straightforward patch selection: one FFT per patch; returns the mosaic and the chosen patch corners."""
    h, w = image.shape[0] - image.shape[0] % PATCH, image.shape[1] - image.shape[1] % PATCH
    corners = [(i, j) for i in range(0, h, PATCH) for j in range(0, w, PATCH)]
    entropies = [reference_entropy(image[i : i + PATCH, j : j + PATCH]) for i, j in corners]
    order = np.argsort(np.round(entropies, 6), kind="stable")
    chosen = [corners[k] for k in list(order[:24]) + list(order[-25:])]
    mosaic = np.zeros((224, 224, 3), np.uint8)
    for n, (i, j) in enumerate(chosen):
        r, c = divmod(n, 7)
        mosaic[r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH] = image[i : i + PATCH, j : j + PATCH]
    return mosaic, chosen


def photo_variants(photos):
    """Every sample photo as shipped, plus sizes that are not multiples of 32 and a 1024x1024 resize."""
    yield from photos.items()
    yield "astronaut-1024", cv2.resize(photos["astronaut"], (1024, 1024), interpolation=cv2.INTER_CUBIC)
    yield "coffee-odd", photos["coffee"][:397, :581]
    # Flat blocks of different greys: their entropies differ only by rounding noise, so ties decide.
    levels = np.random.default_rng(0).integers(0, 256, size=(12, 14, 3), dtype=np.uint8)
    yield "flat-blocks", np.kron(levels, np.ones((32, 32, 1), np.uint8))
    # Flat blocks next to textured ones.
    mixed = np.kron(levels, np.ones((32, 32, 1), np.uint8))
    mixed[:, ::2] = photos["astronaut"][: mixed.shape[0], : mixed.shape[1]][:, ::2]
    yield "flat-and-textured", mixed


def test_patch_select_matches_per_patch_reference_on_photos(photos):
    spec = PreprocessSpec.patch_select()
    for name, image in photo_variants(photos):
        expected, _ = reference_patch_select(image)
        actual = select_patches(image, spec)
        assert actual.shape == (224, 224, 3) and actual.dtype == np.uint8
        np.testing.assert_array_equal(actual, expected, err_msg=name)


def test_vectorised_entropy_equals_per_patch_entropy(photos):
    image = photos["chelsea"]
    h, w = image.shape[0] // PATCH * PATCH, image.shape[1] // PATCH * PATCH
    corners = [(i, j) for i in range(0, h, PATCH) for j in range(0, w, PATCH)]
    gray = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
    batch = np.stack([gray[i : i + PATCH, j : j + PATCH] for i, j in corners])
    expected = [reference_entropy(image[i : i + PATCH, j : j + PATCH]) for i, j in corners]
    np.testing.assert_allclose(spectral_entropy(batch), expected, rtol=0, atol=1e-9)
    # A flat patch has all its power at DC: entropy 0; zero-mean white noise spreads it: close to log2(32*32) = 10 bits.
    flat_and_noise = np.stack([np.full((PATCH, PATCH), 0.5), np.random.default_rng(0).standard_normal((PATCH, PATCH))])
    flat, noise = spectral_entropy(flat_and_noise)
    assert abs(flat) < 1e-9
    assert 9.0 < noise < 10.0


def test_training_shuffle_keeps_the_patch_set_and_is_seeded(photos):
    spec = PreprocessSpec.patch_select()
    image = photos["astronaut"]
    fixed = select_patches(image, spec)

    def patch_set(mosaic):
        tiles = mosaic.reshape(7, PATCH, 7, PATCH, 3).swapaxes(1, 2).reshape(49, -1)
        return sorted(map(bytes, tiles))

    a = select_patches(image, spec, rng=np.random.default_rng(1))
    b = select_patches(image, spec, rng=np.random.default_rng(1))
    c = select_patches(image, spec, rng=np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, fixed) and not np.array_equal(a, c)
    assert patch_set(a) == patch_set(fixed) == patch_set(c)
    # Inference is deterministic.
    np.testing.assert_array_equal(fixed, select_patches(image, spec))


def test_small_images_are_upscaled_to_the_input_size_first(photos):
    spec = PreprocessSpec.patch_select()
    small = photos["coffee"][:150, :200]  # 4 x 6 = 24 patches, fewer than 49
    upscaled = resize_shortest_side(small, 224)
    assert upscaled.shape[:2] == (224, 298)
    np.testing.assert_array_equal(select_patches(small, spec), reference_patch_select(upscaled)[0])
    # A long thin image with enough patches is not resized.
    thin = np.ascontiguousarray(np.tile(photos["coffee"][:64], (1, 5, 1))[:, :2000])  # 2 x 62 patches
    np.testing.assert_array_equal(select_patches(thin, spec), reference_patch_select(thin)[0])


def test_patch_select_normalises_with_imagenet_statistics(photos):
    spec = PreprocessSpec.patch_select()
    image = photos["rocket"]
    x = preprocess(image, spec)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    mosaic = reference_patch_select(image)[0].astype(np.float64) / 255.0
    expected = ((mosaic - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1)
    np.testing.assert_allclose(x, expected, atol=1e-5)


def test_clip_transform_equals_open_clip_when_no_resampling_is_needed(photos):
    open_clip = pytest.importorskip("open_clip")
    from PIL import Image

    reference = open_clip.image_transform(224, is_train=False)
    # Shortest side already 224: resizing is the identity in both, so crop offsets and normalisation must agree.
    for image in (photos["astronaut"][100:324, 40:341], photos["coffee"][:301, :224]):
        expected = reference(Image.fromarray(np.ascontiguousarray(image))).numpy()
        np.testing.assert_allclose(preprocess(image, PreprocessSpec.clip()), expected, atol=1e-5)


def test_clip_transform_stays_close_to_open_clip_after_resampling(photos):
    """OpenCV's bicubic differs from PIL's (no antialiasing when shrinking): a bounded, documented difference."""
    open_clip = pytest.importorskip("open_clip")
    from PIL import Image

    reference = open_clip.image_transform(224, is_train=False)
    std = np.array(CLIP_STD)[:, None, None]
    for name in ("chelsea", "rocket", "coffee"):
        image = photos[name]
        diff = np.abs(preprocess(image, PreprocessSpec.clip()) - reference(Image.fromarray(image)).numpy())
        mean_levels = float((diff * std * 255).mean())  # mean difference in 8-bit grey levels
        assert mean_levels < 2.5, (name, mean_levels)
    upscaled = photos["astronaut"][:150, :200]
    diff = np.abs(preprocess(upscaled, PreprocessSpec.clip()) - reference(Image.fromarray(upscaled)).numpy())
    assert float((diff * std * 255).mean()) < 0.5


def test_resize_and_crop_follow_torchvision_rounding():
    image = np.zeros((301, 457, 3), np.uint8)
    assert resize_shortest_side(image, 224).shape == (224, int(224 * 457 / 301), 3)
    tall = np.zeros((457, 301, 3), np.uint8)
    assert resize_shortest_side(tall, 224).shape == (int(224 * 457 / 301), 224, 3)
    marked = np.arange(7 * 9).reshape(7, 9)
    # torchvision: top = round((7 - 4) / 2) = 2 (round half to even), left = round((9 - 4) / 2) = 2.
    np.testing.assert_array_equal(center_crop(marked, 4), marked[2:6, 2:6])
    with pytest.raises(ValueError, match="cannot centre-crop"):
        center_crop(marked, 8)


def test_batch_of_mixed_sizes_equals_single_images(photos):
    images = [photos["astronaut"], photos["coffee"], photos["chelsea"]]
    for spec in (PreprocessSpec.clip(), PreprocessSpec.patch_select()):
        batch = preprocess_batch(images, spec)
        assert batch.shape == (3, 3, 224, 224) and batch.flags["C_CONTIGUOUS"]
        for i, image in enumerate(images):
            np.testing.assert_array_equal(batch[i], preprocess(image, spec))
        assert crop_image(images[0], spec).dtype == np.uint8
    assert preprocess_batch([], PreprocessSpec.clip()).shape == (0, 3, 224, 224)


def test_spec_round_trips_and_rejects_bad_values():
    for spec in (PreprocessSpec.clip(), PreprocessSpec.patch_select(), PreprocessSpec.clip(size=336)):
        assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    assert "patch_size" not in PreprocessSpec.clip().to_dict()
    with pytest.raises(ValueError, match="unknown"):
        PreprocessSpec(transform="resize")
    with pytest.raises(ValueError, match="multiple of patch_size"):
        PreprocessSpec.patch_select(size=200)
    with pytest.raises(ValueError, match="unknown keys"):
        PreprocessSpec.from_dict({"transform": "clip", "size": 224, "crop": "random"})
    with pytest.raises(ValueError, match="std must be 3 finite numbers"):
        PreprocessSpec(transform="clip", std=(0.2, 0.0, 0.2))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("size", "224", "size must be an integer"),
        ("size", True, "size must be an integer"),
        ("size", 224.0, "size must be an integer"),
        ("size", 4096, "size must be an integer from 16 to 1024"),
        ("size", 0, "size must be an integer"),
        ("std", [0.2, float("nan"), 0.2], "std must be 3 finite numbers"),
        ("std", [0.2, float("inf"), 0.2], "std must be 3 finite numbers"),
        ("std", [0.2, 1e-300, 0.2], "std must be 3 finite numbers"),
        ("std", [0.2, -0.2, 0.2], "std must be 3 finite numbers"),
        ("std", ["0.2", 0.2, 0.2], "std must be 3 finite numbers"),
        ("std", [0.2, 0.2], "std must be a list of 3 numbers"),
        ("mean", [0.5, float("nan"), 0.5], "mean must be 3 finite numbers"),
        ("mean", [0.5, True, 0.5], "mean must be 3 finite numbers"),
        ("mean", "abc", "mean must be a list of 3 numbers"),
        ("patch_size", 0, "patch_size must be an integer"),
        ("patch_size", 2, "patch_size must be an integer of at least 8"),
        ("patch_size", "32", "patch_size must be an integer"),
        ("transform", ["clip"], "transform"),
        ("interpolation", "nearest", "interpolation"),
        ("small_images", "crop", "small_images 'crop' is unknown"),
        ("small_images", None, "small_images None is unknown"),
        ("small_images", ["pad"], "small_images"),
        ("small_images", "PAD", "small_images 'PAD' is unknown"),
    ],
)
def test_spec_from_a_manifest_has_exact_types_and_sane_values(field, value, message):
    d = PreprocessSpec.patch_select().to_dict()
    d[field] = value
    with pytest.raises(ValueError, match=message):
        PreprocessSpec.from_dict(d)


def test_small_images_policy_is_part_of_the_spec():
    pad = PreprocessSpec.patch_select(small_images="pad")
    assert PreprocessSpec.patch_select().small_images == "resize"
    assert pad.to_dict()["small_images"] == "pad"
    assert PreprocessSpec.patch_select().to_dict()["small_images"] == "resize"
    assert PreprocessSpec.from_dict(pad.to_dict()) == pad != PreprocessSpec.patch_select()
    # A spec written before the field existed keeps the behaviour it was trained with.
    old = PreprocessSpec.patch_select().to_dict()
    del old["small_images"]
    assert PreprocessSpec.from_dict(old).small_images == "resize"
    # Only patch-select has patches to pad.
    assert "small_images" not in PreprocessSpec.clip().to_dict()
    with pytest.raises(ValueError, match="small_images 'pad' applies to patch-select only"):
        PreprocessSpec(transform="clip", small_images="pad")
    with pytest.raises(ValueError, match="small_images 'crop' is unknown"):
        PreprocessSpec.patch_select(small_images="crop")


def test_pad_changes_nothing_for_images_with_enough_patches(photos):
    resize, pad = PreprocessSpec.patch_select(), PreprocessSpec.patch_select(small_images="pad")
    for name, image in photo_variants(photos):
        np.testing.assert_array_equal(select_patches(image, pad), select_patches(image, resize), err_msg=name)
    image = photos["coffee"]
    np.testing.assert_array_equal(select_patches(image, pad, np.random.default_rng(5)),
                                  select_patches(image, resize, np.random.default_rng(5)))


def test_pad_keeps_small_images_at_their_size(photos):
    pad = PreprocessSpec.patch_select(small_images="pad")
    small = photos["coffee"][:150, :200]  # 4 x 6 = 24 patches
    mosaic = select_patches(small, pad)
    tiles = mosaic.reshape(7, PATCH, 7, PATCH, 3).swapaxes(1, 2).reshape(49, PATCH, PATCH, 3)
    patches = small[:128, :192].reshape(4, PATCH, 6, PATCH, 3).swapaxes(1, 2).reshape(24, PATCH, PATCH, 3)
    # All 24 patches twice (once as "low", once as "high" entropy), then one black tile: nothing was resized.
    assert sorted(map(bytes, tiles[:48])) == sorted(map(bytes, np.concatenate([patches, patches])))
    assert not tiles[48].any() and all(tile.any() for tile in tiles[:48])
    assert not np.array_equal(mosaic, select_patches(small, PreprocessSpec.patch_select()))


@pytest.mark.parametrize("shape", [(20, 300), (300, 31), (8, 8)])
def test_pad_refuses_images_smaller_than_one_patch(photos, shape):
    image = np.ascontiguousarray(photos["rocket"][: shape[0], : shape[1]])
    with pytest.raises(ImageTooSmall, match=f"a {shape[1]}x{shape[0]} image is smaller than one 32x32 patch"):
        select_patches(image, PreprocessSpec.patch_select(small_images="pad"))
    assert issubclass(ImageTooSmall, UnreadableImage)  # callers that skip unreadable images skip these too
    assert select_patches(image, PreprocessSpec.patch_select()).shape == (224, 224, 3)  # "resize" upscales them

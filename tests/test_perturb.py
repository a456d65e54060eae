"""`dgs_sdk.perturb`: the degradations of robustness sweeps and of training augmentation, on real photographs."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from dgs_sdk.perturb import (
    Degradation,
    Perturbation,
    PerturbationError,
    blur,
    crop,
    image_seed,
    jpeg,
    parse_perturbations,
    resize,
)


@pytest.fixture(scope="module")
def photo(photos) -> np.ndarray:
    return np.ascontiguousarray(photos[sorted(photos)[0]][:200, :300])


def test_jpeg_quality_orders_the_loss(photo):
    errors = [np.abs(jpeg(photo, q).astype(int) - photo).mean() for q in (95, 75, 50, 10)]
    assert errors == sorted(errors) and errors[0] > 0
    # The channels are not swapped: a pure red image stays red through the encoder's YCbCr conversion.
    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 0] = 255
    assert (jpeg(red, 90)[..., 0] > 240).all() and (jpeg(red, 90)[..., 2] < 20).all()
    # The same bytes as encoding the BGR image with OpenCV and decoding it
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 50])
    assert ok and np.array_equal(jpeg(photo, 50), cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR),
                                                               cv2.COLOR_BGR2RGB))


def test_blur_removes_high_frequencies(photo):
    def detail(image):
        return np.abs(cv2.Laplacian(image.astype(np.float64), cv2.CV_64F)).mean()

    levels = [detail(blur(photo, sigma)) for sigma in (0.5, 1, 2, 3)]
    assert levels == sorted(levels, reverse=True) and levels[0] < detail(photo)
    assert blur(photo, 0) is photo
    assert blur(photo, 2).shape == photo.shape and blur(photo, 2).dtype == np.uint8


def test_resize_and_crop_geometry(photo):
    assert resize(photo, 0.5).shape == (100, 150, 3)
    assert resize(photo, 1.5).shape == (300, 450, 3)
    assert resize(photo, 1.0) is photo
    assert resize(np.zeros((3, 3, 3), np.uint8), 0.05).shape == (1, 1, 3)
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    a, b = crop(photo, 0.8, rng_a), crop(photo, 0.8, rng_b)
    assert a.shape == (160, 240, 3) and np.array_equal(a, b)
    # The crop is a window of the photo: find it back
    found = cv2.matchTemplate(photo, a, cv2.TM_SQDIFF)
    assert found.min() == 0
    with pytest.raises(PerturbationError, match="would give"):
        resize(np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (20000, 20000, 3)), 2.0)  # shape only


def test_the_crop_is_fixed_per_image_and_differs_between_images(photo, tmp_path):
    p = Perturbation("crop", 0.5)
    seed = image_seed(tmp_path / "fake" / "1.png", tmp_path)
    assert seed == image_seed(tmp_path / "fake" / "1.png", tmp_path) != image_seed(tmp_path / "fake" / "2.png",
                                                                                  tmp_path)
    assert np.array_equal(p.apply(photo, seed), p.apply(photo, seed))
    positions = {cv2.minMaxLoc(cv2.matchTemplate(photo, p.apply(photo, image_seed(f"{i}.png", ".")),
                                                 cv2.TM_SQDIFF))[2] for i in range(8)}
    assert len(positions) > 1
    # a file name that is not UTF-8 (a surrogate escape from os.listdir) still has a seed
    assert isinstance(image_seed("caf\udce9.png", "."), int)


def test_the_seed_does_not_depend_on_how_the_data_root_is_spelled(tmp_path, monkeypatch):
    (tmp_path / "data" / "fake").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "data")
    manifest = tmp_path / "data" / "list.csv"
    manifest.write_text("path,label\nfake/1.png,1\n")
    monkeypatch.chdir(tmp_path)
    seeds = {image_seed(os.path.join(root, "fake", "1.png"), root)
             for root in ("data", str(tmp_path / "data"), "link", "./data/")}
    seeds.add(image_seed(tmp_path / "data" / "fake" / "1.png", manifest))  # a manifest: its folder is the root
    assert len(seeds) == 1
    assert image_seed("data/fake/1.png", "data") != image_seed("data/fake/1.png", "data/fake")


def test_parse_perturbations():
    assert parse_perturbations("jpeg:95,75,50") == [Perturbation("jpeg", 95), Perturbation("jpeg", 75),
                                                     Perturbation("jpeg", 50)]
    assert [p.description for p in parse_perturbations("blur:1,2.5")] == ["blur sigma 1 px", "blur sigma 2.5 px"]
    assert [p.description for p in parse_perturbations("resize:0.5")] == ["resize x0.5"]
    assert [p.description for p in parse_perturbations("CROP:0.8")] == ["crop 80%"]
    assert parse_perturbations("jpeg:75.0")[0].label == "75"
    for text, message in [
        ("jpeg", "expected KIND:LEVEL"),
        ("jpeg:", "expected KIND:LEVEL"),
        ("sharpen:1", "'sharpen' is unknown"),
        ("jpeg:75,abc", "'abc' is not a number"),
        ("jpeg:75.5", "an integer from 1 to 100"),
        ("jpeg:0", "from 1 to 100"),
        ("jpeg:inf", "must be a number"),
        ("blur:nan", "must be a number"),
        ("resize:3", "from 0.05 to 2"),
        ("crop:1.5", "from 0.05 to 1"),
        ("blur:1,1", "given twice"),
    ]:
        with pytest.raises(PerturbationError, match=message):
            parse_perturbations(text)


def test_training_degradation_is_seeded_and_honours_its_probabilities(photo):
    never = Degradation()
    assert not never.active and never.apply(photo, np.random.default_rng(0)) is photo
    always = Degradation(blur_prob=1.0, blur_sigma=(1.0, 3.0), jpeg_prob=1.0, jpeg_quality=(30, 90))
    a, b = always.apply(photo, np.random.default_rng(3)), always.apply(photo, np.random.default_rng(3))
    assert np.array_equal(a, b) and not np.array_equal(a, photo)
    # With probability one half about half of the images are changed
    half = Degradation(jpeg_prob=0.5)
    changed = sum(not np.array_equal(half.apply(photo, np.random.default_rng(i)), photo) for i in range(40))
    assert 10 <= changed <= 30
    for kwargs, message in [({"blur_prob": 1.5}, "probability"), ({"blur_sigma": (1, 2, 3)}, "one value or two"),
                            ({"jpeg_quality": (0,)}, "from 1 to 100"), ({"jpeg_quality": (50.5,)}, "integers")]:
        with pytest.raises(PerturbationError, match=message):
            Degradation(**kwargs)


def test_training_images_are_degraded_before_preprocessing_and_evaluation_images_never(dataset):
    pytest.importorskip("torch")
    from dgs_sdk import PreprocessSpec
    from dgs_sdk.data import load_samples
    from dgs_trainer.config import TrainConfig
    from dgs_trainer.dataset import ImageDataset

    samples = load_samples(dataset)[:4]
    spec = PreprocessSpec.clip(32)
    config = TrainConfig(data=str(dataset), out="unused", arch="dgs-tiny-vit", pretrained="none", jpeg_prob=1.0,
                         jpeg_quality=(10, 10))
    assert config.degradation() == Degradation(jpeg_prob=1.0, jpeg_quality=(10, 10))

    def images(**kwargs):
        return [ImageDataset(samples, spec, hflip=False, **kwargs)[i]["image"].numpy() for i in range(len(samples))]

    plain = images(train=True)
    degraded = images(train=True, degradation=config.degradation())
    assert all(not np.allclose(a, b) for a, b in zip(plain, degraded, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(degraded, images(train=True, degradation=config.degradation()),
                                                      strict=True))
    # The degradation is what perturb.jpeg does to the decoded image, then the SDK's preprocessing
    from dgs_sdk.image import load_image
    from dgs_sdk.preprocess import preprocess

    assert np.array_equal(degraded[0], preprocess(jpeg(load_image(samples[0].path), 10), spec))
    assert all(np.array_equal(a, b) for a, b in zip(images(train=False), images(train=False,
                                                                                 degradation=config.degradation()),
                                                      strict=True))


def test_train_flags_set_the_degradation():
    pytest.importorskip("torch")
    from dgs_trainer.config import ConfigError, TrainConfig
    from dgs_trainer.flags import config_from_flags

    config = config_from_flags({"data": "d", "out": "o", "arch": "dgs-tiny-vit", "pretrained": "none",
                                "blur_prob": 0.1, "blur_sigma": "0,3", "jpeg_prob": 0.1, "jpeg_quality": "30,100"})
    assert config.degradation() == Degradation(0.1, (0.0, 3.0), 0.1, (30, 100))
    with pytest.raises(ConfigError, match="jpeg_quality must be from 1 to 100"):
        TrainConfig(data="d", out="o", arch="dgs-tiny-vit", pretrained="none", jpeg_quality=(0, 50))

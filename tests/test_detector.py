"""`Detector` on ONNX Runtime against the torch model it was exported from."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from dgs_sdk import BackendUnavailable, Detector, DgsError, ModelPackage, Prediction, PreprocessSpec, preprocess_batch
from dgs_sdk.backends import available_backends


@pytest.mark.parametrize("package_fixture", ["clip_package", "patch_package"])
def test_probabilities_match_torch(request, tiny_model, photos, package_fixture):
    package = request.getfixturevalue(package_fixture)
    detector = Detector(package, batch_size=4)
    images = list(photos.values())
    from dgs_export import torch_probabilities

    expected = torch_probabilities(tiny_model, preprocess_batch(images, detector.spec))
    results = detector.predict(images)
    assert [r.source for r in results] == [f"<array #{i}>" for i in range(len(images))]
    np.testing.assert_allclose([r.probability for r in results], expected, atol=1e-4)
    # The fixture's model is not constant: it separates these photos.
    assert np.ptp(expected) > 0.05


def test_paths_bytes_and_arrays_agree(tmp_path, clip_package, photos):
    detector = Detector(clip_package)
    image = photos["coffee"]
    path = tmp_path / "café photo.png"
    cv2.imwrite(str(tmp_path / "tmp.png"), image[:, :, ::-1])
    (tmp_path / "tmp.png").rename(path)
    by_path = detector.predict(path)
    by_str = detector.predict(str(path))
    by_bytes = detector.predict(path.read_bytes())
    by_array = detector.predict(image)
    assert isinstance(by_path, Prediction) and by_path.ok
    assert by_path.source == str(path) and by_bytes.source == "<bytes>" and by_array.source == "<array>"
    assert by_path.probability == by_str.probability == by_bytes.probability
    assert by_array.probability == pytest.approx(by_path.probability, abs=1e-6)
    assert set(by_path.timings) == {"decode", "preprocess", "inference"}
    assert by_path.timings["decode"] > 0 and by_path.timings["inference"] > 0


def test_batch_size_does_not_change_results(patch_package, photos):
    images = list(photos.values()) * 3  # 18 images: full and partial batches
    reference = [r.probability for r in Detector(patch_package, batch_size=1, workers=1).predict(images)]
    for batch_size in (2, 5, 32):
        got = [r.probability for r in Detector(patch_package, batch_size=batch_size).predict(images)]
        np.testing.assert_allclose(got, reference, atol=1e-6)
    stacked = np.stack([cv2.resize(im, (256, 256)) for im in photos.values()])  # [B, H, W, 3] counts as many
    assert len(Detector(patch_package).predict(stacked)) == len(photos)


def test_bad_inputs_become_error_results_without_losing_others(tmp_path, clip_package, photos):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("<html><body>not an image</body></html>")
    inputs = [photos["chelsea"], empty, b"\x00\x01garbage", text, tmp_path / "missing.jpg", photos["rocket"]]
    results = Detector(clip_package, batch_size=2).predict(inputs)
    assert [r.ok for r in results] == [True, False, False, False, False, True]
    assert str(empty) in results[1].error and "empty file" in results[1].error
    assert "<bytes #2>" in results[2].error and "not an image" in results[2].error
    assert str(text) in results[3].error and "not an image" in results[3].error
    assert "html" not in results[3].error  # an error row never echoes the file's bytes
    assert "no such file" in results[4].error
    assert all(r.probability is None and r.label is None for r in results[1:5])
    alone = Detector(clip_package).predict([photos["chelsea"], photos["rocket"]])
    assert [results[0].probability, results[5].probability] == [r.probability for r in alone]


def test_threshold_decides_the_label(clip_package, photos):
    images = list(photos.values())
    probabilities = [r.probability for r in Detector(clip_package).predict(images)]
    middle = float(np.median(probabilities))
    labels = [r.label for r in Detector(clip_package, threshold=middle).predict(images)]
    assert labels == ["fake" if p >= middle else "real" for p in probabilities]
    assert {"fake", "real"} == set(labels)
    assert Detector(clip_package).threshold == ModelPackage.load(clip_package).manifest.threshold == 0.5


def test_backend_and_device_errors(clip_package):
    with pytest.raises(BackendUnavailable, match="unknown"):
        Detector(clip_package, backend="coreml")
    with pytest.raises(DgsError, match="not understood"):
        Detector(clip_package, device="gpu0")
    with pytest.raises(ValueError, match="batch_size"):
        Detector(clip_package, batch_size=0)
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(BackendUnavailable, match="onnxruntime-gpu"):
            Detector(clip_package, device="cuda")
    assert "onnxruntime" in available_backends()
    detector = Detector(clip_package, device="cpu")
    assert detector.backend.device == "cpu" and "onnxruntime on cpu" in repr(detector)


def test_sdk_imports_without_torch():
    code = (
        "import sys, dgs_sdk, dgs_sdk.cli, dgs_sdk.scan;"
        "heavy = {'torch', 'open_clip', 'onnx', 'tensorrt'} & set(sys.modules);"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_spec_from_package_drives_preprocessing(patch_package, clip_package):
    assert Detector(patch_package).spec == PreprocessSpec.patch_select()
    assert Detector(clip_package).spec == PreprocessSpec.clip()


def test_float_ranges_that_would_lose_the_scale_are_refused_and_float16_is_exact(clip_package):
    detector = Detector(clip_package)
    grey = np.full((32, 32, 3), 0.5, np.float16)
    as_uint8 = detector.predict(np.full((32, 32, 3), 128, np.uint8)).probability
    assert detector.predict(grey, value_range=(0, 1)).probability == pytest.approx(as_uint8, abs=1e-6)
    wide = np.full((32, 32, 3), 0.0, np.float16)  # mid-grey of a -1e5..1e5 range; float16 arithmetic overflows
    assert detector.predict(wide, value_range=(-1e5, 1e5)).probability == pytest.approx(as_uint8, abs=1e-6)
    for bad in ((0, 5e-324), (-1e308, 1e308), (1, 0), (0, float("nan")), ("a", "b")):
        with pytest.raises(ValueError, match="value_range"):
            detector.predict(grey, value_range=bad)


def test_arrays_of_any_shape_are_one_image_and_get_a_clear_error(clip_package):
    detector = Detector(clip_package)
    for array in (np.array(3.0), np.zeros(7, np.uint8), np.zeros((2, 2, 2, 2, 2), np.uint8)):
        result = detector.predict(array)
        assert not isinstance(result, list) and result.error and "expected an array of shape" in result.error


def test_read_ahead_is_bounded_in_bytes_not_only_in_images(clip_package):
    """Large arrays from an endless stream: never more than `MAX_READ_AHEAD_BYTES` of them wait at once."""
    import weakref

    from dgs_sdk.limits import MAX_READ_AHEAD_BYTES

    alive: list[weakref.ref] = []
    most = 0

    def big_arrays():
        nonlocal most
        while True:
            array = np.zeros((1500, 1500, 3), np.uint8)  # 6.75 MB each
            alive.append(weakref.ref(array))
            most = max(most, sum(r() is not None for r in alive[-2000:]))
            yield array

    detector = Detector(clip_package, batch_size=100_000, workers=2)
    first = next(detector.predict_iter(big_arrays()))
    assert first.ok and len(alive) >= detector.batch_size  # the first batch was full
    assert most * 1500 * 1500 * 3 <= MAX_READ_AHEAD_BYTES + 2 * 1500 * 1500 * 3, f"{most} arrays held at once"

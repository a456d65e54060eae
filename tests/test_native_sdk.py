"""dgs_sdk with and without the native core (dgs_native): switching, refusal of another build, identical results."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import dgs_sdk
from dgs_sdk import Detector, PreprocessSpec, native, preprocess_batch
from dgs_sdk.cli import main
from dgs_sdk.preprocess import _gray, _patch_grid, spectral_entropy

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh_probe():
    """Each test sees the module as its own environment and sys.modules make it, not as a previous test did."""
    native._probe.cache_clear()
    yield
    native._probe.cache_clear()


@pytest.fixture
def absent(monkeypatch):
    """dgs_native cannot be imported, whether or not it is installed."""
    monkeypatch.setitem(sys.modules, "dgs_native", None)


def fake_module(monkeypatch, **attributes) -> types.ModuleType:
    """A dgs_native of another build (another interface or version) in sys.modules; it must never be called."""
    def patch_entropies(image, patch_size):
        raise AssertionError("a refused dgs_native was called")

    fake = types.ModuleType("dgs_native")
    fake.patch_entropies = patch_entropies
    fake.opencv_version = lambda: "0.0.0"
    for name, value in {"API": native.API, "__version__": dgs_sdk.__version__, **attributes}.items():
        setattr(fake, name, value)
    monkeypatch.setitem(sys.modules, "dgs_native", fake)
    return fake


def info_line() -> str:
    result = CliRunner().invoke(main, ["info"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("native core")]
    assert len(lines) == 1, result.stdout
    return lines[0]


def numpy_entropies(image: np.ndarray, p: int) -> np.ndarray:
    gh, gw = image.shape[0] // p, image.shape[1] // p
    return spectral_entropy(_patch_grid(_gray(image[: gh * p, : gw * p]), p))


SPECS = [PreprocessSpec.patch_select(), PreprocessSpec.patch_select(448, 64),
         PreprocessSpec.patch_select(small_images="pad"), PreprocessSpec.patch_select(96, 16, small_images="pad"),
         PreprocessSpec.clip()]


# --- switching it off, and the states `dgs info` reports -------------------------------------------------------------


def test_importing_the_sdk_does_not_import_the_module_and_dgs_native_0_turns_it_off():
    code = ("import sys, dgs_sdk; from dgs_sdk import native; assert 'dgs_native' not in sys.modules; "
            "print(native.module()); print(native.status()); assert 'dgs_native' not in sys.modules")
    env = {**os.environ, "DGS_NATIVE": "0", "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["None", "native core turned off by DGS_NATIVE=0"]


def test_dgs_native_0_turns_off_a_module_that_would_be_used(monkeypatch):
    fake = fake_module(monkeypatch)
    assert native.module() is fake
    monkeypatch.setenv("DGS_NATIVE", "0")
    assert native.module() is None
    assert info_line() == "native core turned off by DGS_NATIVE=0"
    monkeypatch.setenv("DGS_NATIVE", "1")
    assert native.module() is fake


def test_info_when_not_installed(absent):
    assert native.module() is None
    assert info_line() == "native core not installed: pip install ./cpp_bindings"


@pytest.mark.parametrize("failure", [
    "raise ImportError('libopencv_core.so.406: cannot open shared object file: No such file or directory')",
    "import dgs_native_dependency_that_is_missing",
])
def test_a_module_that_cannot_be_loaded_is_reported(monkeypatch, tmp_path, photos, failure):
    # A dgs_native found first on the path whose import fails as a build fails that lost a shared library.
    (tmp_path / "dgs_native.py").write_text(failure + "\n")
    monkeypatch.delitem(sys.modules, "dgs_native", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert native.module() is None
    line = info_line()
    assert line.startswith("native core cannot be loaded (") and line.endswith("reinstall it with pip install "
                                                                               "./cpp_bindings")
    assert ("libopencv_core.so.406" if "libopencv" in failure else "dgs_native_dependency_that_is_missing") in line
    assert preprocess_batch([photos["rocket"]], PreprocessSpec.patch_select()).shape == (1, 3, 224, 224)


def test_a_module_of_another_interface_is_refused(monkeypatch, photos):
    fake_module(monkeypatch, API=native.API + 1)
    assert native.module() is None
    line = info_line()
    assert line.startswith(f"native core {dgs_sdk.__version__} not used: it speaks interface {native.API + 1}")
    assert "pip install ./cpp_bindings" in line
    # Preprocessing goes on with numpy (the refused module raises if called).
    batch = preprocess_batch([photos["astronaut"]], PreprocessSpec.patch_select())
    assert batch.shape == (1, 3, 224, 224)


def test_a_module_of_another_version_is_refused(monkeypatch, photos):
    fake_module(monkeypatch, __version__="0.0.1")
    assert native.module() is None
    assert info_line().startswith(f"native core not used: version 0.0.1 does not match dgs {dgs_sdk.__version__}")
    assert preprocess_batch([photos["coffee"]], PreprocessSpec.patch_select()).shape == (1, 3, 224, 224)


def test_a_module_without_the_functions_the_sdk_calls_is_refused(monkeypatch):
    fake = fake_module(monkeypatch)
    del fake.patch_entropies
    assert native.module() is None
    assert info_line().startswith(f"native core {dgs_sdk.__version__} not used: it lacks patch_entropies")


def test_the_sdk_works_without_the_module(absent, patch_package, photos):
    detector = Detector(patch_package)
    names = list(photos)
    predictions = detector.predict([photos[name] for name in names])
    assert len(predictions) == len(names)
    assert all(prediction.error is None and 0.0 <= prediction.probability <= 1.0 for prediction in predictions)
    assert native.status() == "native core not installed: pip install ./cpp_bindings"


# --- with the module: the same numbers ------------------------------------------------------------------------------


def test_info_when_in_use():
    dgs_native = pytest.importorskip("dgs_native")
    assert native.module() is dgs_native
    assert info_line() == f"native core {dgs_native.__version__} in use (OpenCV {dgs_native.opencv_version()})"


@pytest.mark.parametrize("patch_size", [16, 32, 64])
def test_entropies_agree_with_numpy_on_photos(photos, patch_size):
    dgs_native = pytest.importorskip("dgs_native")
    for name, image in photos.items():
        expected = numpy_entropies(image, patch_size)
        got = dgs_native.patch_entropies(image, patch_size)
        assert got.dtype == np.float64 and got.shape == expected.shape, name
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-11, err_msg=name)
        # The ranking compares entropies rounded to 6 decimals: the two must round alike.
        assert np.array_equal(np.round(got, 6), np.round(expected, 6)), name


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.transform}-{s.size}-{s.patch_size}-{s.small_images}")
def test_preprocess_batch_is_identical_with_and_without_the_module(monkeypatch, photos, spec):
    dgs_native = pytest.importorskip("dgs_native")
    # The photos as they are, a strided view (not C-contiguous) and a crop smaller than the mosaic.
    images = [*photos.values(), photos["hubble_deep_field"][::2, ::3], photos["coffee"][50:150, 100:190]]
    calls = []
    entropies = dgs_native.patch_entropies
    monkeypatch.setattr(dgs_native, "patch_entropies", lambda image, p: calls.append(p) or entropies(image, p))
    assert native.module() is dgs_native
    with_module = preprocess_batch(images, spec)
    assert len(calls) == (len(images) if spec.transform == "patch-select" else 0)
    monkeypatch.setenv("DGS_NATIVE", "0")
    assert native.module() is None
    without = preprocess_batch(images, spec)
    assert np.array_equal(with_module, without)


def test_scan_results_are_identical_with_and_without_the_module(monkeypatch, patch_package, photo_folder, tmp_path):
    pytest.importorskip("dgs_native")
    outputs = {}
    for setting in ("1", "0"):
        monkeypatch.setenv("DGS_NATIVE", setting)
        out = tmp_path / f"scan-{setting}.csv"
        args = ["scan", str(photo_folder), "--model", str(patch_package), "--out", str(out), "--no-progress"]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        outputs[setting] = out.read_text()
    assert outputs["1"] == outputs["0"]
    assert len(outputs["1"].splitlines()) == 5  # header and the four photos

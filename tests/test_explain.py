"""`dgs explain`: patches and occlusion maps of real photos through real ONNX Runtime sessions, the figures
decoded back, explain.json checked against the SDK's own preprocessing and against hand-masked inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import graph_package, mean_graph, write_image
from dgs_sdk import Detector, Manifest, ModelPackage, PreprocessSpec, write_package
from dgs_sdk.cli import main
from dgs_sdk.explain import ExplainError, explain_image, write_explanation
from dgs_sdk.image import load_image
from dgs_sdk.occlusion import MAX_WINDOWS, OcclusionSettings
from dgs_sdk.preprocess import crop_image, normalize, resize_shortest_side

FOLDER = "mes photos ñ 写真"


def run_cli(*args) -> object:
    result = CliRunner().invoke(main, ["explain", *(str(a) for a in args)])
    assert "Traceback" not in result.output, result.output
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def read_png(path: Path) -> np.ndarray:
    image = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, f"{path} does not decode"
    return image


def assert_readable_figure(path: Path, min_width: int = 1000) -> np.ndarray:
    """The PNG decodes, has a figure's size and holds a picture, not a blank page."""
    image = read_png(path)
    h, w = image.shape[:2]
    assert min_width <= w <= 3000 and 500 <= h <= 1500, (path, w, h)
    assert image.std() > 20, f"{path} is nearly blank"
    colours = np.unique(image.reshape(-1, 3)[::7], axis=0)
    assert len(colours) > 1000, f"{path} has only {len(colours)} colours"
    return image


def rebuild_mosaic(record: dict, cut_from: np.ndarray) -> np.ndarray:
    """The mosaic made by hand from explain.json's patch coordinates, slot by slot, black where no patch is."""
    patches = record["patches"]
    p, grid = patches["patch_size"], patches["grid"]
    assert cut_from.shape[:2] == (patches["cut_from"]["height"], patches["cut_from"]["width"])
    mosaic = np.zeros((grid * p, grid * p, 3), np.uint8)
    for n, patch in enumerate(patches["selected"]):
        assert patch["slot"] == n
        row, column = divmod(n, grid)
        x, y = patch["x"], patch["y"]
        assert x % p == 0 and y % p == 0
        mosaic[row * p : (row + 1) * p, column * p : (column + 1) * p] = cut_from[y : y + p, x : x + p]
    return mosaic


def pad_package(patch_package: Path, tmp_path: Path) -> Path:
    """The tiny patch-select model, with DGS-Net's own handling of small images ("pad")."""
    package = ModelPackage.load(patch_package)
    spec = PreprocessSpec.patch_select(small_images="pad")
    return write_package(tmp_path / "pad.dgs", Manifest(preprocess=spec), {"model.onnx": package.model_bytes})


# --- the command on real photographs -------------------------------------------------------------------------------


def test_patch_select_explanation_writes_readable_figures_and_json(tmp_path, photos, patch_package):
    image_path = write_image(tmp_path / FOLDER / "coffee.png", photos["coffee"])
    out = tmp_path / "explained ñ"
    result = run_cli(image_path, "--model", patch_package, "--out", out, "--threshold", "0.01", "--stride", "32")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["explain.json", "occlusion.png", "patches.png"]
    assert_readable_figure(out / "patches.png")
    assert_readable_figure(out / "occlusion.png", min_width=1500)  # three panels for patch-select

    record = json.loads((out / "explain.json").read_text(encoding="ascii"))
    expected = Detector(patch_package).predict(str(image_path))
    assert record["image"] == {"path": str(image_path), "width": 600, "height": 400}
    assert record["probability"] == pytest.approx(expected.probability, abs=1e-5)
    assert record["logit"] == pytest.approx(expected.logit, abs=1e-4)
    assert (record["threshold"], record["threshold_source"]) == (0.01, "given")
    assert record["label"] == ("fake" if record["probability"] >= 0.01 else "real")
    package = ModelPackage.load(patch_package)
    assert record["package"] == {"path": str(patch_package), "precision": "fp32", "file": "model.onnx",
                                 "sha256": package.variant_sha256("fp32")}
    assert record["preprocess"] == package.manifest.preprocess.to_dict()
    assert record["figures"] == ["patches.png", "occlusion.png"]
    assert f"P(fake) = {record['probability']:.4f}" in result.output

    # The patches in explain.json are the ones in the mosaic the model saw, byte for byte.
    patches = record["patches"]
    assert not patches["cut_from"]["resized"] and patches["black_slots"] == 0
    assert len(patches["selected"]) == 49 and patches["patches_in_image"] == (400 // 32) * (600 // 32)
    assert len({(p["x"], p["y"]) for p in patches["selected"]}) == 49
    image = load_image(image_path)
    np.testing.assert_array_equal(rebuild_mosaic(record, image), crop_image(image, package.manifest.preprocess))
    kinds = [p["kind"] for p in patches["selected"]]
    assert kinds == ["low"] * 24 + ["high"] * 25
    entropies = [p["entropy"] for p in patches["selected"]]
    assert entropies == sorted(entropies)  # the mosaic is in ascending entropy

    occlusion = record["occlusion"]
    assert (occlusion["window"], occlusion["stride"]) == (32, 32)  # the window defaults to one tile
    assert occlusion["tops"] == occlusion["lefts"] == list(range(0, 193, 32))
    assert np.array(occlusion["drops"]).shape == (7, 7)
    assert OcclusionSettings().resolve(package.manifest.preprocess) == (32, 16)


def test_small_image_outlines_refer_to_the_resized_image(tmp_path, photos, patch_package):
    small = photos["astronaut"][100:228, 150:300]  # 150 x 128: 16 patches, fewer than 49
    image_path = write_image(tmp_path / FOLDER / "small.png", small)
    explanation = explain_image(patch_package, image_path, OcclusionSettings(stride=32))
    record = explanation.to_dict()  # what explain.json holds, less the list of figures
    patches = record["patches"]
    assert patches["cut_from"] == {"width": 262, "height": 224, "resized": True}
    resized = resize_shortest_side(load_image(image_path), 224)
    np.testing.assert_array_equal(rebuild_mosaic(record, resized), crop_image(small, explanation.spec))
    for patch in patches["selected"]:  # the same patch in the original's pixels
        x0, y0, x1, y1 = patch["box_in_image"]
        assert x0 == pytest.approx(patch["x"] * 150 / 262, abs=0.01)
        assert y1 == pytest.approx((patch["y"] + 32) * 128 / 224, abs=0.01)
        assert 0 <= x0 < x1 <= 150 and 0 <= y0 < y1 <= 128


def test_pad_repeats_patches_and_leaves_black_slots(tmp_path, photos, patch_package):
    small = photos["chelsea"][:100, :150]  # 3 x 4 = 12 patches: each picked as low and as high
    image_path = write_image(tmp_path / FOLDER / "thumb.png", small)
    explanation = explain_image(pad_package(patch_package, tmp_path), image_path, OcclusionSettings(stride=32))
    written = write_explanation(explanation, tmp_path / "out")
    record = json.loads(written[-1].read_text())
    patches = record["patches"]
    assert patches["cut_from"] == {"width": 150, "height": 100, "resized": False}
    assert patches["black_slots"] == 25 and len(patches["selected"]) == 24
    assert [p["kind"] for p in patches["selected"]] == ["low"] * 12 + ["high"] * 12
    assert {(p["x"], p["y"]) for p in patches["selected"][:12]} == {(p["x"], p["y"]) for p in patches["selected"][12:]}
    np.testing.assert_array_equal(rebuild_mosaic(record, small), crop_image(small, explanation.spec))
    assert_readable_figure(written[0])


def test_clip_model_in_a_subprocess(tmp_path, photos, clip_package):
    image_path = write_image(tmp_path / FOLDER / "chelsea.jpg", photos["chelsea"])
    out = tmp_path / "out dir"
    out.mkdir()  # holding an earlier patch-select explanation, and a file of someone else's
    (out / "patches.png").write_bytes(b"earlier figure")
    (out / "explain.json").write_text(json.dumps({"figures": ["patches.png", "occlusion.png"]}))
    (out / "notes.png").write_bytes(b"not ours")
    cmd = [sys.executable, "-m", "dgs_sdk.cli", "explain", str(image_path), "-m", str(clip_package), "-o", str(out),
           "--window", "50", "--stride", "24"]
    done = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    # No patches for clip: the earlier explanation's patches.png is gone, the other file stays.
    assert sorted(p.name for p in out.iterdir()) == ["explain.json", "notes.png", "occlusion.png"]
    record = json.loads((out / "explain.json").read_text())
    assert record["patches"] is None and record["figures"] == ["occlusion.png"]
    occlusion = record["occlusion"]
    assert (occlusion["window"], occlusion["stride"]) == (50, 24)
    assert occlusion["tops"] == occlusion["lefts"] == [0, 24, 48, 72, 96, 120, 144, 168, 174]  # the last at the edge
    assert np.array(occlusion["drops"]).shape == (9, 9)
    assert record["probability"] == pytest.approx(Detector(clip_package).predict(str(image_path)).probability,
                                                  abs=1e-5)
    assert_readable_figure(out / "occlusion.png")


# --- occlusion, checked by hand -------------------------------------------------------------------------------------


def test_occlusion_matches_a_window_masked_by_hand(photos, clip_package):
    detector = Detector(clip_package)
    image = photos["rocket"]
    explanation = explain_image(detector, image)
    occlusion = explanation.occlusion
    np.testing.assert_array_equal(explanation.model_input, crop_image(image, detector.spec))
    assert occlusion.drops.shape == (13, 13) and occlusion.heatmap.shape == (224, 224)
    assert occlusion.logit == pytest.approx(detector.predict(image).logit, abs=1e-4)

    x = normalize(explanation.model_input[None], detector.spec)  # [1, 3, 224, 224]
    masked = x.copy()
    masked[:, :, 80 : 80 + 32, 112 : 112 + 32] = 0.0  # window (row 5, column 7): top 80, left 112
    drop = detector.backend.run(x)[0] - detector.backend.run(masked)[0]
    assert abs(drop) > 1e-3  # the check below compares something
    assert occlusion.drops[5, 7] == pytest.approx(drop, abs=1e-4)
    # A corner pixel lies under one window; pixel (20, 20) under the four windows at offsets 0 and 16.
    assert occlusion.heatmap[0, 0] == occlusion.drops[0, 0]
    assert occlusion.heatmap[20, 20] == pytest.approx(occlusion.drops[:2, :2].mean())


def region_graph(size: int, top: int, left: int, side: int) -> bytes:
    """A graph whose logit is the mean of one square region of the input, nothing else."""
    from onnx import TensorProto, helper

    def ints(name: str, values: list[int]):
        return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)

    nodes = [helper.make_node("Slice", ["image", "starts", "ends", "slice_axes"], ["region"]),
             helper.make_node("ReduceMean", ["region", "axes"], ["logit"], keepdims=0)]
    initializers = [ints("starts", [top, left]), ints("ends", [top + side, left + side]), ints("slice_axes", [2, 3])]
    return mean_graph(size=size, output="custom", extra_nodes=nodes, extra_initializers=initializers)


def test_occlusion_map_is_non_zero_only_where_the_logit_looks(tmp_path):
    size, top, left, side = 32, 8, 16, 8
    package = graph_package(tmp_path / "region.dgs", region_graph(size, top, left, side), size=size)
    image = np.random.default_rng(0).integers(0, 256, (48, 48, 3), np.uint8)
    explanation = explain_image(package, image)  # clip at 32 px: window 4, stride 2
    occlusion = explanation.occlusion
    assert (occlusion.window, occlusion.stride) == (4, 2) and occlusion.drops.shape == (15, 15)
    for r, window_top in enumerate(occlusion.tops):
        for c, window_left in enumerate(occlusion.lefts):
            overlaps = (top - 4 < window_top < top + side) and (left - 4 < window_left < left + side)
            assert (abs(occlusion.drops[r, c]) > 1e-3) == overlaps, (window_top, window_left)
    reached = np.zeros((size, size), bool)  # pixels under a window that overlaps the region
    reached[top - 2 : top + side + 2, left - 2 : left + side + 2] = True
    assert np.all(occlusion.heatmap[~reached] == 0)
    assert np.all(np.abs(occlusion.heatmap[top : top + side, left : left + side]) > 1e-3)


# --- large images ---------------------------------------------------------------------------------------------------


def test_large_image_figure_stays_small_and_coordinates_stay_in_its_pixels(tmp_path, patch_package):
    rng = np.random.default_rng(1)
    image = np.full((2400, 3200, 3), 128, np.uint8)  # flat, but for noise in the bottom-right corner
    image[1920:2240, 2560:3072] = rng.integers(0, 256, (320, 512, 3), np.uint8)
    explanation = explain_image(patch_package, image, OcclusionSettings(window=32, stride=32))
    written = write_explanation(explanation, tmp_path / "out")
    record = json.loads(written[-1].read_text())
    assert record["image"]["width"] == 3200 and record["patches"]["cut_from"]["width"] == 3200
    high = [p for p in record["patches"]["selected"] if p["kind"] == "high"]
    assert all(2560 <= p["x"] < 3072 and 1920 <= p["y"] < 2240 for p in high)
    figure = assert_readable_figure(written[0])
    assert figure.shape[1] <= 2000 and written[0].stat().st_size < 4_000_000


# --- what it refuses ------------------------------------------------------------------------------------------------


@pytest.fixture
def photo_path(tmp_path, photos) -> Path:
    return write_image(tmp_path / FOLDER / "coffee.jpg", photos["coffee"])


def test_bad_inputs_exit_2_with_one_line_naming_the_file(tmp_path, photo_path, clip_package):
    not_image = tmp_path / FOLDER / "notes.jpg"
    not_image.write_text("<html>not an image</html>")
    a_file = tmp_path / "a file.txt"
    a_file.write_text("x")
    cases = [
        ((not_image, "-m", clip_package, "-o", tmp_path / "o1"), str(not_image)),
        ((tmp_path / "missing.jpg", "-m", clip_package, "-o", tmp_path / "o2"), "missing.jpg"),
        ((photo_path, "-m", tmp_path / "missing.dgs", "-o", tmp_path / "o3"), "missing.dgs"),
        ((photo_path, "-m", photo_path, "-o", tmp_path / "o4"), "not a dgs model package"),
        ((photo_path, "-m", clip_package, "-o", a_file), f"{a_file}: is a file, not a folder"),
        ((photo_path, "-m", clip_package, "-o", a_file / "sub"), f"{a_file} is a file"),
    ]
    for args, expected in cases:
        result = run_cli(*args)
        assert result.exit_code == 2, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and expected in lines[0], (args, result.output)
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))  # nothing created on the way out


@pytest.mark.parametrize("options, expected", [
    (("--window", "32", "--stride", "1"), f"at most {MAX_WINDOWS:,} are run: use a stride of at least 4 px"),
    (("--window", "32", "--stride", "33"), "stride 33 px: must be from 1 to the window, 32 px"),
    (("--window", "225",), "window 225 px: must be from 1 to the model input's size, 224 px"),
    (("--window", "3",), f"more than {MAX_WINDOWS:,} masked inputs on a 224-px model input at any stride; use a "
                         "window of at least 4 px"),
])
def test_occlusion_settings_are_checked(tmp_path, photo_path, clip_package, options, expected):
    result = run_cli(photo_path, "-m", clip_package, "-o", tmp_path / "out", *options)
    assert result.exit_code == 2 and expected in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_never_writes_over_the_image_or_the_package(tmp_path, photos, clip_package):
    folder = tmp_path / FOLDER
    image_path = write_image(folder / "occlusion.png", photos["coffee"])
    before = image_path.read_bytes()
    result = run_cli(image_path, "-m", clip_package, "-o", folder)
    assert result.exit_code == 2 and f"would replace {image_path}" in result.output, result.output
    assert image_path.read_bytes() == before and sorted(folder.iterdir()) == [image_path]

    package = folder / "explain.json"
    package.write_bytes(clip_package.read_bytes())
    explanation = explain_image(package, write_image(tmp_path / "photo.png", photos["coffee"]),
                                OcclusionSettings(stride=32))
    with pytest.raises(ExplainError, match="would replace"):
        write_explanation(explanation, folder)
    assert package.read_bytes() == clip_package.read_bytes()


def test_missing_matplotlib_names_the_extra(tmp_path, photo_path, clip_package, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    result = run_cli(photo_path, "-m", clip_package, "-o", tmp_path / "out")
    assert result.exit_code == 2 and 'pip install "dgs[report]"' in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_file_names_with_dollars_and_bytes_that_are_not_utf8_are_titles_as_written(tmp_path, photos, clip_package):
    """``$`` would start matplotlib's mathtext (a lone one fails the drawing); a surrogate-escaped byte fails the
    font renderer."""
    for i, name in enumerate(["a$\\frac{$b.png", "caf\udce9.png"]):
        image_path = write_image(tmp_path / name, photos["coffee"][:96, :96])
        result = run_cli(image_path, "-m", clip_package, "-o", tmp_path / f"out{i}", "--stride", "32")
        assert result.exit_code == 0, result.output
        assert_readable_figure(tmp_path / f"out{i}" / "occlusion.png")

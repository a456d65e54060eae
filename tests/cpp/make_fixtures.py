"""Write the fixtures of the C and C++ tests into a folder, with what the Python SDK gives for them.

    python tests/cpp/make_fixtures.py <dir>

<dir>/packages: `.dgs` packages written by the SDK around the hand-built mean graph of tests/conftest.py (its
logit is the mean of the model input [3, S, S]): `clip`, `patch-select`, `patch-select` with the "pad" policy,
a graph of fixed batch 4, one with two variants, and a corrupted copy of `clip`.
<dir>/photos: crops of scikit-image's real photographs in several formats, nested folders, names that need CSV
quoting or formula neutralisation, hidden and non-image files, links, and files that are not images.
<dir>/rgb: raw 8-bit RGB pixels of a few photos (name.WxH.rgb), for the raw-buffer inputs.
<dir>/expected.json: for every package and file, the result of `dgs_sdk.Detector` running the package with ONNX
Runtime on the CPU (probability, label, error) and the class of the error the SDK raises while decoding and
preprocessing, so that the C++ detect path is compared with a real ONNX Runtime session's results.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
# The repository's own SDK and test helpers, whichever dgs the interpreter has installed.
sys.path[:0] = [str(ROOT / "sdk"), str(ROOT / "trainer"), str(ROOT / "tests")]

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from conftest import graph_package, mean_graph, variant_package, write_image  # noqa: E402
from dgs_sdk import Detector, Manifest, PreprocessSpec, write_package  # noqa: E402
from dgs_sdk.errors import DgsError  # noqa: E402
from dgs_sdk.image import load_image  # noqa: E402
from dgs_sdk.preprocess import crop_image  # noqa: E402

SIZE = 64  # both transforms take their input without resizing from photos whose shorter side is 64
PATCH = 16
FIXED_BATCH = 4
THRESHOLD = 0.55  # the clip package's own threshold, so that the tests see it used


def write_packages(folder: Path) -> dict[str, dict]:
    """The packages, by name: their file and what the tests need to know about them."""
    folder.mkdir(parents=True)
    clip = graph_package(folder / "clip.dgs", mean_graph(size=SIZE), size=SIZE, threshold=THRESHOLD,
                         threshold_source="calibrated")
    fixed = graph_package(folder / "fixed.dgs", mean_graph(size=SIZE, batch=FIXED_BATCH), size=SIZE)
    patch = {}
    for policy in ("resize", "pad"):
        spec = PreprocessSpec.patch_select(size=SIZE, patch_size=PATCH, small_images=policy)
        name = "patch" if policy == "resize" else "patch-pad"
        patch[name] = write_package(folder / f"{name}.dgs", Manifest(preprocess=spec),
                                    {"model.onnx": mean_graph(size=SIZE)})
    variants = variant_package(folder / "variants.dgs", precisions=("fp32", "int8-cpu"), size=SIZE)
    corrupt = folder / "corrupt.dgs"
    shutil.copyfile(clip, corrupt)
    with zipfile.ZipFile(clip) as z:  # flip one byte of the stored model: its sha256 no longer matches
        info = z.getinfo("model.onnx")
        offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.compress_size // 2
    data = bytearray(corrupt.read_bytes())
    data[offset] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    return {
        "clip": {"file": clip.name, "threshold": THRESHOLD, "batch": None, "transform": "clip"},
        "fixed": {"file": fixed.name, "threshold": 0.5, "batch": FIXED_BATCH, "transform": "clip"},
        "patch": {"file": "patch.dgs", "threshold": 0.5, "batch": None, "transform": "patch-select"},
        "patch-pad": {"file": "patch-pad.dgs", "threshold": 0.5, "batch": None, "transform": "patch-select"},
        "variants": {"file": variants.name, "threshold": 0.5, "batch": None, "transform": "clip"},
        "corrupt": {"file": corrupt.name},
    }


def crop(photo: np.ndarray, height: int, width: int, top: int = 0, left: int = 0) -> np.ndarray:
    return np.ascontiguousarray(photo[top : top + height, left : left + width])


def write_photos(folder: Path, outside: Path) -> dict[str, bool]:
    """The photo folder; returns, for each image file, whether a transform resizes it (OpenCV 4.6's bicubic then
    differs from opencv-python's by one level in a few percent of bytes, so those compare more loosely)."""
    from dgs_trainer.samples import sample_photos

    photos = sample_photos()
    astronaut, coffee, chelsea = photos["astronaut"], photos["coffee"], photos["chelsea"]
    rocket, tissue = photos["rocket"], photos["immunohistochemistry"]
    exact = {
        "astronaut.png": crop(astronaut, 64, 96, 40, 180),
        "coffee.jpg": crop(coffee, 64, 80, 100, 200),
        "chelsea.webp": crop(chelsea, 96, 64, 50, 120),
        "rocket.bmp": crop(rocket, 64, 64, 200, 250),
        "nested/tissue.tif": crop(tissue, 80, 64, 10, 10),
        "nested/deeper/Astronaut Zoom.PNG": crop(astronaut, 70, 64, 100, 200),
        "nested/my photo ñ 写真.png": crop(coffee, 64, 72, 150, 300),
        "=SUM(A1).png": crop(chelsea, 64, 64, 150, 200),
        "comma, \"quoted\".jpeg": crop(rocket, 64, 100, 300, 100),
        "x.jpg/inside.png": crop(tissue, 64, 64, 200, 200),  # a folder with an image's name is walked into
    }
    resized = {
        "large.jpg": crop(astronaut, 300, 240),
        "tiny.png": crop(coffee, 10, 12, 200, 200),  # under one patch: too small for the "pad" policy
    }
    for name, image in {**exact, **resized}.items():
        params = [cv2.IMWRITE_JPEG_QUALITY, 95] if name.lower().endswith((".jpg", ".jpeg")) else None
        write_image(folder / name, image, params)
    grey = (crop(tissue, 64, 64, 300, 300).mean(axis=2)).astype(np.uint8)
    cv2.imwrite(str(folder / "nested" / "grey.png"), grey)  # a one-channel PNG
    # Not scored: hidden names and other extensions are skipped by the folder walk.
    write_image(folder / ".hidden.png", exact["rocket.bmp"])
    (folder / "notes.txt").write_text("not an image, and not named like one\n")
    # Bad files with image names: each gives an error row.
    (folder / "empty.jpg").write_bytes(b"")
    png = (folder / "astronaut.png").read_bytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "not-an-image.jpg").write_text("<html><body>a web page saved as .jpg</body></html>\n")
    # Links: one inside the folder (scored), one leading out of it (an error row, not followed).
    write_image(outside / "outside.png", exact["rocket.bmp"])
    os.symlink("astronaut.png", folder / "link-in.png")
    os.symlink(os.path.relpath(outside / "outside.png", folder), folder / "link-out.png")
    flags = {name: False for name in exact}
    flags.update({name: True for name in resized})
    flags["nested/grey.png"] = False
    flags["link-in.png"] = False
    return flags


def write_rgb(folder: Path, photos_folder: Path, names: list[str]) -> dict[str, dict]:
    """Raw RGB dumps of some photos (decoded by the SDK), for the raw-buffer inputs."""
    folder.mkdir(parents=True)
    out = {}
    for name in names:
        rgb = load_image(str(photos_folder / name))
        h, w = rgb.shape[:2]
        file = f"{Path(name).stem}.{w}x{h}.rgb"
        (folder / file).write_bytes(rgb.tobytes())
        out[name] = {"file": file, "width": w, "height": h}
    return out


def error_kind(path: str, spec: PreprocessSpec) -> str | None:
    """The SDK's error class for this input while decoding and preprocessing it, or None when it passes."""
    try:
        load_image(path, transform=lambda image: crop_image(image, spec))
    except DgsError as e:
        return type(e).__name__
    return None


def prediction_row(p) -> dict:
    return {"probability": p.probability, "label": p.label, "error": p.error}


STATUS_OF_KIND = {None: "ok", "UnreadableImage": "unreadable_image", "ImageTooLarge": "image_too_large",
                  "ImageTooSmall": "image_too_small"}


def write_c_expectations(out: Path, files: dict[str, bool], results: dict, rgb: dict[str, dict]) -> None:
    """The clip package's expectations as tab-separated lines, for the C test (which has no JSON parser):
    expected_clip.tsv: file, probability (empty on error), status name, 1 if resized;
    expected_rgb.tsv: raw file, width, height, probability."""
    lines = []
    for name, row in results["clip"]["files"].items():
        probability = "" if row["probability"] is None else repr(row["probability"])
        lines.append(f"{name}\t{probability}\t{STATUS_OF_KIND[row['kind']]}\t{int(files[name])}\n")
    (out / "expected_clip.tsv").write_text("".join(lines), encoding="utf-8")
    lines = [f"{info['file']}\t{info['width']}\t{info['height']}\t{results['clip']['rgb'][name]['probability']!r}\n"
             for name, info in rgb.items() if not files[name]]
    (out / "expected_rgb.tsv").write_text("".join(lines), encoding="utf-8")


def main(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    packages = write_packages(out / "packages")
    outside = out / "outside"
    outside.mkdir()
    photos = out / "photos"
    resized = write_photos(photos, outside)
    files = sorted([*resized, "empty.jpg", "truncated.png", "not-an-image.jpg", "x.jpg"])
    rgb = write_rgb(out / "rgb", photos, ["astronaut.png", "rocket.bmp", "nested/grey.png", "large.jpg"])
    results: dict[str, dict] = {}
    for key, package in packages.items():
        if key == "corrupt":
            continue
        # The variants package runs fp32 here (ONNX Runtime's "auto" takes int8-cpu, the test backend runs fp32).
        detector = Detector(out / "packages" / package["file"], backend="onnxruntime", device="cpu", batch_size=3,
                            precision="fp32")
        spec = detector.spec
        predictions = detector.predict([str(photos / f) for f in files])
        rows = {}
        for name, p in zip(files, predictions, strict=True):
            rows[name] = {**prediction_row(p), "kind": error_kind(str(photos / name), spec)}
        arrays = [np.fromfile(out / "rgb" / r["file"], np.uint8).reshape(r["height"], r["width"], 3)
                  for r in rgb.values()]
        rows_rgb = {name: prediction_row(p) for name, p in zip(rgb, detector.predict(arrays), strict=True)}
        results[key] = {"files": rows, "rgb": rows_rgb}
    expected = {
        "size": SIZE,
        "packages": packages,
        "photos": "photos",
        "files": {name: {"resized": resized.get(name, False)} for name in files},
        "rgb": rgb,
        "results": results,
        # Probabilities of images no transform resizes agree to this; resized ones to the looser bound.
        "tolerance": 1e-6,
        "resized_tolerance": 2e-3,
    }
    write_c_expectations(out, {n: f["resized"] for n, f in expected["files"].items()},
                         results, rgb)
    (out / "expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False))
    print(f"fixtures written to {out}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} <fixtures folder>")
    main(Path(sys.argv[1]))

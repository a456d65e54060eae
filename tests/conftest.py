"""Shared fixtures: real photographs, a tiny random-weight CLIP detector and the model packages exported from it."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from dgs_sdk import PreprocessSpec


def pytest_configure(config):
    # ./run.sh test sets this when it built dgs_native: the native tests must then run, not skip.
    if os.environ.get("DGS_REQUIRE_NATIVE") == "1":
        try:
            import dgs_native  # noqa: F401
        except ImportError as error:
            raise pytest.UsageError(f"DGS_REQUIRE_NATIVE=1 but dgs_native cannot be imported: {error}") from error


def pytest_collection_modifyitems(config, items):
    has_trt = importlib.util.find_spec("tensorrt") is not None
    has_gpu = False
    if importlib.util.find_spec("torch") is not None:
        import torch

        has_gpu = torch.cuda.is_available()
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU (none visible to torch)"))
        if "trt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT (pip install 'dgs[trt]')"))


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real RGB photographs shipped with scikit-image, by name."""
    from dgs_trainer.samples import sample_photos

    return sample_photos()


@pytest.fixture(scope="session")
def tiny_model():
    """The `dgs-tiny-vit` image detector with seeded random weights (no download)."""
    import torch

    from dgs_trainer import build_image_detector

    torch.manual_seed(0)
    model = build_image_detector("dgs-tiny-vit", pretrained="none")
    # A random head gives probabilities near 0.5 for every image; widen it so labels differ between images.
    with torch.no_grad():
        model.head.weight.mul_(20.0)
    return model.eval()


def _export(tiny_model, photos, tmp_path_factory, spec: PreprocessSpec) -> Path:
    from dgs_export import export_package

    out = tmp_path_factory.mktemp("models") / f"tiny-{spec.transform}.dgs"
    return export_package(
        tiny_model,
        out,
        spec,
        list(photos.values()),
        architecture={"arch": "dgs-tiny-vit", "head": "linear"},
        provenance={"method": "random-init", "note": "test fixture"},
    )


@pytest.fixture(scope="session")
def clip_package(tiny_model, photos, tmp_path_factory) -> Path:
    """A `.dgs` package of the tiny model with the `clip` transform."""
    return _export(tiny_model, photos, tmp_path_factory, PreprocessSpec.clip())


@pytest.fixture(scope="session")
def patch_package(tiny_model, photos, tmp_path_factory) -> Path:
    """A `.dgs` package of the tiny model with the `patch-select` transform."""
    return _export(tiny_model, photos, tmp_path_factory, PreprocessSpec.patch_select())


def write_image(path: Path, rgb: np.ndarray, params: list[int] | None = None) -> Path:
    """Encode an RGB array to ``path`` (format from the extension), creating folders; unicode paths work."""
    ok, encoded = cv2.imencode(path.suffix, np.ascontiguousarray(rgb[:, :, ::-1]), params or [])
    assert ok, path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encoded.tobytes())
    return path


@pytest.fixture
def photo_folder(tmp_path, photos) -> Path:
    """A folder with spaces and unicode in its name holding the photos as JPEG, PNG and WebP files."""
    folder = tmp_path / "my photos ñ 写真"
    (folder / "nested" / "deeper").mkdir(parents=True)
    names = list(photos)
    write_image(folder / f"{names[0]}.jpg", photos[names[0]])
    write_image(folder / f"{names[1]}.PNG", photos[names[1]])
    write_image(folder / "nested" / f"{names[2]}.webp", photos[names[2]])
    write_image(folder / "nested" / "deeper" / f"{names[3]}.jpeg", photos[names[3]])
    return folder


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int, height: int, rows: int = 4) -> bytes:
    """A few hundred bytes of PNG whose header declares a huge 8-bit grey image; only ``rows`` rows of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # depth 8, grey, deflate, no filter, no interlace
    idat = zlib.compress(b"\x00" * (width + 1) * rows, 9)  # each row: filter byte 0 + zero pixels
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """Two generators in ForenSynths layout: real photo crops, and fakes that are crops blown up from 1/4 size;
    captions.json says which photograph each image shows."""
    from dgs_trainer.samples import SAMPLE_CAPTIONS, sample_photos

    root = tmp_path_factory.mktemp("data") / "train set"
    rng = np.random.default_rng(0)
    names = list(SAMPLE_CAPTIONS)
    photos = sample_photos()
    captions = {}
    for generator in ("blocky", "smooth"):
        for i in range(6):
            photo = photos[names[i % len(names)]]
            for label in ("0_real", "1_fake"):
                captions[f"{generator}/{label}/{i}.png"] = SAMPLE_CAPTIONS[names[i % len(names)]]
            top, left = rng.integers(0, photo.shape[0] - 160), rng.integers(0, photo.shape[1] - 160)
            crop = np.ascontiguousarray(photo[top : top + 160, left : left + 160])
            write_image(root / generator / "0_real" / f"{i}.png", crop)
            small = cv2.resize(crop, (40, 40), interpolation=cv2.INTER_AREA)
            mode = cv2.INTER_NEAREST if generator == "blocky" else cv2.INTER_LINEAR
            write_image(root / generator / "1_fake" / f"{i}.png", cv2.resize(small, (160, 160), interpolation=mode))
    (root / "captions.json").write_text(json.dumps(captions))
    return root


def tiny_config(data: Path, out: Path, **flags):
    """A CPU training config on `dgs-tiny-vit` with random weights; ``flags`` as `dgs train`'s (``lora_rank=4``).

    DGS-Net runs take the captions of the `dataset` fixture's folder.
    """
    from dgs_trainer.flags import config_from_flags

    given = dict(data=str(data), out=str(out), arch="dgs-tiny-vit", pretrained="none", batch_size=4, workers=0,
                 device="cpu", epochs=1, lr=1e-3)
    if flags.get("method", "dgs") == "dgs":
        given.update(probe_epochs=1, captions=str(Path(data) / "captions.json"))
    given.update(flags)
    return config_from_flags(given)


def mean_graph(size: int = 32, batch: int | str = "batch", output: str = "mean", declared: list | None = None,
               input_dims: list | None = None, extra_nodes=(), extra_initializers=()) -> bytes:
    """A small hand-built ONNX graph with a dgs model's interface: image [B, 3, S, S] -> logit [B].

    ``output`` picks what it computes from the image's mean ``mean`` ([B]): ``mean`` itself, ``nan`` (NaN per
    image), ``double`` ([2B], two per image), ``scalar`` (one value per batch), ``pairs`` ([B, 2]), or
    ``custom``: ``extra_nodes`` compute ``logit``. ``declared`` overrides the output shape the graph declares,
    ``input_dims`` the input's.
    """
    from onnx import TensorProto, helper

    nodes = [helper.make_node("ReduceMean", ["image", "axes"], ["mean"], keepdims=0)]
    initializers = [helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3])]
    if output == "nan":
        initializers.append(helper.make_tensor("nan", TensorProto.FLOAT, [], [float("nan")]))
        nodes.append(helper.make_node("Mul", ["mean", "nan"], ["logit"]))
    elif output == "double":
        nodes.append(helper.make_node("Concat", ["mean", "mean"], ["logit"], axis=0))
    elif output == "scalar":
        nodes.append(helper.make_node("ReduceMean", ["mean"], ["logit"], keepdims=0))
    elif output == "pairs":
        initializers.append(helper.make_tensor("unsqueeze_axes", TensorProto.INT64, [1], [1]))
        nodes.append(helper.make_node("Unsqueeze", ["mean", "unsqueeze_axes"], ["column"]))
        nodes.append(helper.make_node("Concat", ["column", "column"], ["logit"], axis=1))
    elif output == "mean":
        nodes.append(helper.make_node("Identity", ["mean"], ["logit"]))
    nodes.extend(extra_nodes)
    initializers.extend(extra_initializers)
    graph = helper.make_graph(
        nodes,
        "mean",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, input_dims or [batch, 3, size, size])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, declared if declared is not None else [batch])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    return model.SerializeToString()


def graph_package(path: Path, model: bytes, size: int = 32, **manifest_fields) -> Path:
    """A package (written by the SDK, so valid unless the graph is not) around a hand-built graph."""
    from dgs_sdk import Manifest, PreprocessSpec, write_package

    spec = PreprocessSpec(transform="clip", size=size)
    return write_package(path, Manifest(preprocess=spec, **manifest_fields), {"model.onnx": model})


def scaled_graph(scale: float, size: int = 32) -> bytes:
    """The mean graph with its logit multiplied by ``scale``: a second variant with a different output."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_model_from_string(mean_graph(size=size))
    graph = model.graph
    old = graph.output[0].name
    graph.node[-1].output[0] = "unscaled"
    graph.initializer.append(numpy_helper.from_array(np.array(scale, np.float32), "scale"))
    graph.node.append(helper.make_node("Mul", ["unscaled", "scale"], [old]))
    return model.SerializeToString()


GATE_FIGURES = {"images": 200, "auc": 0.981, "fp32_auc": 0.984, "max_abs_delta_p": 0.0123, "agreement": 0.995}


def variant_package(path: Path, precisions=("fp32", "int8-cpu"), size: int = 224) -> Path:
    """A package holding the mean graph once per precision, the i-th variant's logit scaled by i + 1, so that
    the logit tells which variant ran."""
    from dgs_sdk import Manifest, PreprocessSpec, write_package
    from dgs_sdk.package import VARIANT_FILES, Variant

    variants = {p: Variant(p, VARIANT_FILES[p], {} if p == "fp32" else GATE_FIGURES)
                for p in precisions}
    manifest = Manifest(preprocess=PreprocessSpec(transform="clip", size=size), variants=variants)
    members = {VARIANT_FILES[p]: scaled_graph(1.0 + i, size) for i, p in enumerate(precisions)}
    return write_package(path, manifest, members)

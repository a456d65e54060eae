"""`dgs bench`: latency and throughput of real ONNX Runtime sessions on the tiny package, preprocessing apart."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from conftest import write_image
from dgs_sdk import Detector, ModelPackage
from dgs_sdk.backends import BACKENDS, Backend
from dgs_sdk.bench import BenchConfig, benchmark, generated_photos
from dgs_sdk.cli import main
from dgs_sdk.image import load_image


class AbsentRuntime(Backend):
    """A stand-in for a backend whose runtime is not installed here (TensorRT on a machine without it)."""

    name = "absent"
    precisions = ("fp32",)

    @classmethod
    def is_available(cls) -> bool:
        return False

    @classmethod
    def unavailable_reason(cls) -> str:
        return "its runtime is not installed (stand-in)"

    def _infer(self, batch):  # pragma: no cover - never created
        raise AssertionError("an unavailable backend was run")

    @property
    def device(self) -> str:  # pragma: no cover
        return "nowhere"


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def test_rows_of_real_sessions_and_of_combinations_that_cannot_run(clip_package, monkeypatch):
    monkeypatch.setitem(BACKENDS, AbsentRuntime.name, AbsentRuntime)
    config = BenchConfig(model=str(clip_package), backends=("onnxruntime", "absent"), precisions=("fp32", "int8-cpu"),
                         batches=(1, 3), iterations=4, warmup=1, device="cpu")
    report = benchmark(config)
    timed = [r for r in report.rows if r.latency is not None]
    assert [(r.backend, r.precision, r.batch, r.device) for r in timed] == [
        ("onnxruntime", "fp32", 1, "cpu"), ("onnxruntime", "fp32", 3, "cpu")]
    for row in timed:
        assert row.reason is None and row.latency.runs == 4
        assert 0 < row.latency.p50 <= row.latency.p95
        assert row.ms_per_image == pytest.approx(row.latency.p50 / row.batch)
        assert row.images_per_second == pytest.approx(1e3 * row.batch / row.latency.mean)
    reasons = {(r.backend, r.precision): r.reason for r in report.rows if r.latency is None}
    assert set(reasons) == {("onnxruntime", "int8-cpu"), ("absent", "fp32"), ("absent", "int8-cpu")}
    assert "has no 'int8-cpu' variant (it has fp32)" in reasons["onnxruntime", "int8-cpu"]
    assert "backend 'absent' cannot be used here: its runtime is not installed" in reasons["absent", "fp32"]
    p = report.preprocess
    assert p.source == "4 generated 1024x768 JPEG photos" and p.images == 4 and p.unreadable == 0
    for stage in (p.decode, p.crop, p.normalize, p.total):
        assert stage.runs == 16 and 0 < stage.p50 <= stage.p95
    assert p.total.mean == pytest.approx(p.decode.mean + p.crop.mean + p.normalize.mean)
    assert report.package["variants"] == {"fp32": ModelPackage.load(clip_package).variant_sha256("fp32")}
    table = report.table()
    assert "img/s" in table and "its runtime is not installed" in table and "decode" in table


def test_generated_photos_are_deterministic_photo_sized_jpegs():
    photos = generated_photos(count=2)
    assert photos == generated_photos(count=2) and photos[0] != photos[1]
    image = load_image(photos[0])
    assert photos[0][:2] == b"\xff\xd8" and image.shape == (768, 1024, 3)
    assert 40 < image.std() < 100  # gradients, not a flat field


def test_cli_table_json_and_images_folder(tmp_path, clip_package, photos):
    folder = tmp_path / "my photos ñ"
    for name in list(photos)[:2]:
        write_image(folder / f"{name}.jpg", photos[name])
    (folder / "broken.png").write_text("not a PNG")
    out = tmp_path / "bench.json"
    result = invoke("bench", clip_package, "--backend", "onnxruntime", "--precision", "all", "--batch", "1,2",
                    "--images", folder, "--iterations", "2", "--warmup", "0", "--device", "cpu", "--json", out)
    assert result.exit_code == 0, result.output
    assert f"3 of the 3 images in {folder}" in result.output and "img/s" in result.output
    report = json.loads(out.read_text())
    assert report["preprocess"]["images"] == 2 and report["preprocess"]["unreadable"] == 1
    rows = {(r["precision"], r["batch"]): r for r in report["inference"]}
    assert set(rows) == {("fp32", 1), ("fp32", 2), ("fp16", None), ("int8", None), ("int8-cpu", None)}
    assert rows["fp32", 2]["latency"]["runs"] == 2 and rows["fp32", 2]["images_per_second"] > 0
    assert "has no 'fp16' variant" in rows["fp16", None]["reason"] and rows["fp16", None]["latency"] is None
    assert report["host"]["cpus"] >= 1 and report["settings"]["batches"] == [1, 2]


def test_bad_options_give_clear_errors(tmp_path, clip_package):
    both = invoke("bench", clip_package, "--seconds", "1", "--iterations", "2")
    assert both.exit_code == 2 and "give one of them" in both.output
    batch = invoke("bench", clip_package, "--batch", "1,0")
    assert batch.exit_code == 2 and "expected batch sizes of at least 1" in batch.output
    precision = invoke("bench", clip_package, "--precision", "fp32,fp8")
    assert precision.exit_code == 2 and "--precision 'fp8' is unknown" in precision.output
    backend = invoke("bench", clip_package, "--backend", "openvino")
    assert backend.exit_code == 2 and "--backend 'openvino' is unknown" in backend.output
    empty = tmp_path / "empty"
    empty.mkdir()
    no_images = invoke("bench", clip_package, "--images", empty, "--iterations", "1")
    assert no_images.exit_code == 2 and f"--images {empty}: holds no image files" in no_images.output
    notes = tmp_path / "notes.dgs"
    notes.write_text("not a zip")
    not_a_package = invoke("bench", notes)
    assert not_a_package.exit_code == 2 and "not a dgs model package" in not_a_package.output


def test_auto_times_what_a_detector_runs(clip_package):
    report = benchmark(BenchConfig(model=str(clip_package), batches=(2,), iterations=1, warmup=0, device="cpu"))
    detector = Detector(clip_package, device="cpu")
    (row,) = report.rows
    assert (row.backend, row.precision, row.device) == (detector.backend.name, detector.precision, "cpu")
    assert row.latency.runs == 1 and row.latency.p50 == row.latency.p95 > 0

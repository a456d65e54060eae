"""`dgs bench MODEL.dgs`: how fast a model package runs here, per backend, precision variant and batch size.

Two parts, timed apart:

- preprocessing, per image on one thread: decoding (`load_image`), the geometric crop or patch selection
  (`crop_image`) and normalisation (`normalize`), on the images of a folder or on generated test photos;
- inference, per backend x precision x batch: the latency of one call (p50, p95) and the throughput, warm-up
  calls excluded, on batches of those images preprocessed.

A combination that cannot run here (a backend not installed, a variant the package lacks, a precision the device
refuses) is a row that says why, never a crash.
"""

from __future__ import annotations

import gc
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

from . import __version__
from .backends import create_backend
from .data import spread
from .errors import DgsError, EvaluationError
from .image import load_image
from .package import ModelPackage
from .preprocess import PreprocessSpec, crop_image, normalize
from .scan import discover

__all__ = ["BenchConfig", "Timing", "PreprocessTiming", "BenchRow", "BenchReport", "parse_list", "parse_batches",
           "generated_photos", "time_preprocessing", "time_inference", "benchmark"]

MIN_TIMED_RUNS = 3  # a percentile over fewer runs says little, however long each takes
MAX_IMAGES = 16  # images of --images timed; their mean cost is what matters, not their number
PREPROCESS_SHARE = 0.5  # of --seconds, spent on preprocessing each image


@dataclass
class BenchConfig:
    """What `dgs bench` takes.

    Attributes:
        model: the `.dgs` package.
        backends: names from `dgs_sdk.backends.BACKENDS`, ``"auto"`` (the best available) or ``"all"``.
        precisions: variants (`dgs_sdk.package.PRECISIONS`), ``"auto"`` (each backend's choice) or ``"all"``.
        batches: batch sizes to time.
        images: a folder whose images are decoded and preprocessed; None: generated test photos.
        seconds: time spent on each measurement (at least `MIN_TIMED_RUNS` runs), when ``iterations`` is None.
        iterations: timed runs per measurement, however long they take.
        warmup: untimed runs before each inference measurement (engine tuning, memory allocation).
        device: ``None`` (best available), ``cpu``, ``cuda`` or ``cuda:N``.
    """

    model: str
    backends: Sequence[str] = ("auto",)
    precisions: Sequence[str] = ("auto",)
    batches: Sequence[int] = (1, 8, 32)
    images: str | None = None
    seconds: float = 2.0
    iterations: int | None = None
    warmup: int = 3
    device: str | None = None


@dataclass
class Timing:
    """Durations of repeated runs, in milliseconds."""

    p50: float
    p95: float
    mean: float
    runs: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Timing:
        ms = np.asarray(seconds, np.float64) * 1e3
        p50, p95 = np.percentile(ms, [50, 95])
        return cls(p50=float(p50), p95=float(p95), mean=float(ms.mean()), runs=len(ms))


@dataclass
class PreprocessTiming:
    """Per-image cost of each preprocessing stage, on one thread; ``total`` is their sum for each run."""

    source: str
    images: int
    unreadable: int
    decode: Timing
    crop: Timing
    normalize: Timing
    total: Timing


@dataclass
class BenchRow:
    """One backend x precision x batch: ``latency`` is one inference call of ``batch`` images, ``ms_per_image``
    its median over the batch; ``reason`` says why a combination was not timed (its timings are then None)."""

    backend: str
    precision: str
    batch: int | None
    device: str | None = None
    latency: Timing | None = None
    images_per_second: float | None = None
    reason: str | None = None

    @property
    def ms_per_image(self) -> float | None:
        return None if self.latency is None or not self.batch else self.latency.p50 / self.batch


@dataclass
class BenchReport:
    """Everything `dgs bench` measured, with what it ran on."""

    package: dict[str, Any]
    preprocess: PreprocessTiming
    rows: list[BenchRow]
    host: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        rows = [{**asdict(row), "ms_per_image": row.ms_per_image} for row in self.rows]
        return {"package": self.package, "host": self.host, "settings": self.settings,
                "preprocess": asdict(self.preprocess), "inference": rows}

    def table(self) -> str:
        """The report as text: what ran, preprocessing per stage, then one line per inference row."""
        p = self.preprocess
        lines = [
            f"{self.package['path']}: {self.package['transform']} {self.package['size']}x{self.package['size']}; "
            f"{self.host['cpu']} ({self.host['cpus']} CPUs), dgs {self.host['dgs']}",
            f"preprocessing, ms per image on one thread ({p.source}; {p.total.runs} runs):",
            f"  {'stage':<10}  {'p50':>8}  {'p95':>8}",
        ]
        for stage in ("decode", "crop", "normalize", "total"):
            t: Timing = getattr(p, stage)
            lines.append(f"  {stage:<10}  {t.p50:8.2f}  {t.p95:8.2f}")
        header = (f"{'backend':<12}  {'precision':<9}  {'device':<7}  {'batch':>5}  {'p50 ms':>8}  {'p95 ms':>8}  "
                  f"{'ms/img':>8}  {'img/s':>8}  note")
        lines += ["inference, one call of a batch (warm-up excluded):", header]
        for r in self.rows:
            if r.latency is None:
                lines.append(f"{r.backend:<12}  {r.precision:<9}  {r.device or '-':<7}  {r.batch or '-':>5}  "
                             f"{'-':>8}  {'-':>8}  {'-':>8}  {'-':>8}  {r.reason}")
                continue
            lines.append(f"{r.backend:<12}  {r.precision:<9}  {r.device:<7}  {r.batch:>5}  {r.latency.p50:8.2f}  "
                         f"{r.latency.p95:8.2f}  {r.ms_per_image:8.2f}  {r.images_per_second:8.1f}  "
                         f"{r.latency.runs} runs")
        return "\n".join(lines)


def parse_list(text: str, known: Sequence[str], option: str) -> list[str]:
    """Comma-separated names, each one of ``known`` (``all`` expands to them all; ``auto`` passes through).

    Raises:
        EvaluationError: naming ``option`` and the unknown name.
    """
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise EvaluationError(f"{option} {text!r}: expected one or more of auto, all, {', '.join(known)}")
    out: list[str] = []
    for name in names:
        if name not in (*known, "auto", "all"):
            raise EvaluationError(f"{option} {name!r} is unknown (known: auto, all, {', '.join(known)})")
        for expanded in known if name == "all" else [name]:
            if expanded not in out:
                out.append(expanded)
    return out


def parse_batches(text: str) -> list[int]:
    """``"1,8,32"`` -> [1, 8, 32].

    Raises:
        EvaluationError: an entry that is not a whole number of at least 1.
    """
    batches = []
    for part in text.split(","):
        if not part.strip().isdigit() or int(part) < 1:
            raise EvaluationError(f"--batch {text!r}: expected batch sizes of at least 1, comma-separated (1,8,32)")
        batches.append(int(part))
    return list(dict.fromkeys(batches))


def generated_photos(count: int = 4, width: int = 1024, height: int = 768, seed: int = 0) -> list[bytes]:
    """Deterministic stand-ins for photographs, JPEG-encoded in memory: smooth colour gradients with sensor-like
    noise, which cost a decoder what a photo of that size costs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    photos = []
    for _ in range(count):
        angles, phases = rng.uniform(0, np.pi, 3), rng.uniform(0, 2 * np.pi, 3)
        channels = [127 + 100 * np.sin((x * np.cos(a) + y * np.sin(a)) / width * 4 + p)
                    for a, p in zip(angles, phases, strict=True)]
        image = np.stack(channels, axis=-1) + rng.normal(0, 6, (height, width, 3))
        ok, encoded = cv2.imencode(".jpg", np.clip(image, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok  # an in-memory array of a supported size always encodes
        photos.append(encoded.tobytes())
    return photos


def _repeat(step: Callable[[], None], seconds: float, iterations: int | None) -> list[float]:
    """Durations of ``step`` run ``iterations`` times, or for about ``seconds`` (at least `MIN_TIMED_RUNS`)."""
    times: list[float] = []
    started = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        if iterations is not None:
            if len(times) >= iterations:
                return times
        elif len(times) >= MIN_TIMED_RUNS and time.perf_counter() - started >= seconds:
            return times


def _image_sources(folder: str | None) -> tuple[list[str | bytes], str]:
    if folder is None:
        photos = generated_photos()
        return list(photos), f"{len(photos)} generated 1024x768 JPEG photos"
    if not os.path.isdir(folder):
        raise EvaluationError(f"--images {folder}: not a folder")
    paths = [t.path for t in discover([folder]) if t.error is None]
    if not paths:
        raise EvaluationError(f"--images {folder}: holds no image files")
    chosen = spread(paths, MAX_IMAGES)
    return chosen, f"{len(chosen)} of the {len(paths)} images in {folder}"


def time_preprocessing(spec: PreprocessSpec, sources: Sequence[str | bytes], source: str, seconds: float,
                       iterations: int | None) -> tuple[PreprocessTiming, list[np.ndarray]]:
    """Time decoding, cropping and normalising each source, one image at a time; also return the crops.

    Raises:
        EvaluationError: none of the sources could be decoded.
    """
    stages: dict[str, list[float]] = {"decode": [], "crop": [], "normalize": [], "total": []}
    crops: list[np.ndarray] = []
    unreadable, first_error = 0, ""
    for item in sources:
        try:
            load_image(item)
        except DgsError as e:
            unreadable, first_error = unreadable + 1, first_error or str(e)
            continue

        def step(item=item) -> None:
            t0 = time.perf_counter()
            image = load_image(item)
            t1 = time.perf_counter()
            crop = crop_image(image, spec)
            t2 = time.perf_counter()
            normalize(crop[None], spec)
            t3 = time.perf_counter()
            for stage, took in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
                stages[stage].append(took)

        _repeat(step, seconds * PREPROCESS_SHARE / len(sources), iterations)
        crops.append(crop_image(load_image(item), spec))
    if not crops:
        raise EvaluationError(f"{source}: none could be decoded ({first_error})")
    timing = PreprocessTiming(source=source, images=len(crops), unreadable=unreadable,
                              **{stage: Timing.of(times) for stage, times in stages.items()})
    return timing, crops


def time_inference(backend, batch: np.ndarray, warmup: int, seconds: float, iterations: int | None) -> BenchRow:
    """Time ``backend.run`` on ``batch`` ``[B, 3, S, S]`` after ``warmup`` untimed runs."""
    row = BenchRow(backend.name, backend.precision, len(batch), backend.device)
    try:
        for _ in range(warmup):
            backend.run(batch)
        times = _repeat(lambda: backend.run(batch), seconds, iterations)
    except DgsError as e:
        row.reason = str(e)
        return row
    row.latency = Timing.of(times)
    row.images_per_second = len(batch) * len(times) / sum(times)
    return row


def _host() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:
        ort = None
    return {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.system(),
            "dgs": __version__, "onnxruntime": ort}


def benchmark(config: BenchConfig) -> BenchReport:
    """Time preprocessing, then every backend x precision x batch size the config names.

    Raises:
        ModelPackageError: the package cannot be loaded.
        EvaluationError: bad settings, or no image to preprocess.
    """
    if config.iterations is not None and config.iterations < 1 or config.seconds <= 0 or config.warmup < 0:
        raise EvaluationError(f"bench settings out of range: iterations {config.iterations}, seconds "
                              f"{config.seconds}, warmup {config.warmup}")
    if not config.batches or min(config.batches) < 1:
        raise EvaluationError(f"batch sizes must be at least 1, got {list(config.batches)}")
    package = ModelPackage.load(config.model)
    spec = package.manifest.preprocess
    sources, described = _image_sources(config.images)
    preprocess_timing, crops = time_preprocessing(spec, sources, described, config.seconds, config.iterations)
    inputs = normalize(np.stack(crops), spec)  # [N, 3, S, S]
    rows: list[BenchRow] = []
    for name in config.backends:
        for precision in config.precisions:
            try:
                backend = create_backend(name, package, config.device, precision)
            except (DgsError, ValueError) as e:
                rows.append(BenchRow(name, precision, None, config.device, reason=str(e)))
                continue
            if any(r.backend == backend.name and r.precision == backend.precision and r.latency for r in rows):
                continue  # "auto" chose a combination already timed
            for batch_size in config.batches:
                batch = inputs[np.arange(batch_size) % len(inputs)]
                rows.append(time_inference(backend, batch, config.warmup, config.seconds, config.iterations))
            del backend
            gc.collect()  # one model in memory at a time
    manifest = package.manifest
    identity = {"path": os.fspath(config.model), "transform": spec.transform, "size": spec.size,
                "variants": {p: package.variant_sha256(p) for p in manifest.variants},
                "architecture": manifest.architecture}
    settings = {"backends": list(config.backends), "precisions": list(config.precisions),
                "batches": list(config.batches), "seconds": config.seconds, "iterations": config.iterations,
                "warmup": config.warmup, "device": config.device}
    return BenchReport(package=identity, preprocess=preprocess_timing, rows=rows, host=_host(), settings=settings)


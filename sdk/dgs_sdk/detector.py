"""`Detector`: a model package plus a backend, scoring images in batches with decoding run in parallel."""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backends import Backend, choose_backend, create_backend
from .errors import DgsError
from .image import (
    DEFAULT_BUDGET,
    ImageInput,
    MemoryBudget,
    ValueRange,
    check_value_range,
    describe_source,
    load_image,
)
from .limits import MAX_BATCH_BYTES, MAX_READ_AHEAD_BYTES
from .package import ModelPackage, read_manifest
from .preprocess import crop_image, normalize

__all__ = ["Prediction", "Detector", "sigmoid"]

FAKE, REAL = "fake", "real"


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Probability from logit, stable for large magnitudes (NaN stays NaN)."""
    with np.errstate(invalid="ignore"):
        return np.exp(-np.logaddexp(0.0, -np.asarray(logits, np.float64)))


@dataclass
class Prediction:
    """The verdict on one image.

    Attributes:
        source: the file path, or ``<bytes #i>`` / ``<array #i>`` for in-memory inputs.
        probability: probability that the image is generated ("fake"); ``None`` when ``error`` is set.
        label: ``"fake"`` when ``probability >= threshold``, else ``"real"``; ``None`` on error.
        error: why the image could not be scored (names the file and the problem), else ``None``.
        logit: the model's raw output.
        variant: the precision variant of the package that scored it (``"fp32"``, ``"int8-cpu"``...).
        timings: milliseconds spent on this image per stage: ``decode``, ``preprocess`` and ``inference``
            (its share of the batch).
    """

    source: str
    probability: float | None = None
    label: str | None = None
    error: str | None = None
    logit: float | None = None
    variant: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.source, "probability": self.probability, "label": self.label, "error": self.error}


@dataclass
class _Prepared:
    source: str
    crop: np.ndarray | None  # [S, S, 3] uint8
    error: str | None
    decode_ms: float
    preprocess_ms: float


def _is_single(images: Any) -> bool:
    if isinstance(images, np.ndarray):
        return images.ndim != 4  # a batch [N, H, W, C]; any other shape is one image, right or wrong
    return isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview))


def _input_bytes(source: ImageInput) -> int:
    """Memory an input holds while it waits to be decoded (a path holds next to none)."""
    if isinstance(source, np.ndarray):
        return source.nbytes
    return len(source) if isinstance(source, (bytes, bytearray, memoryview)) else 0


class Detector:
    """Scores images with a `.dgs` model package.

    Args:
        model: path of a `.dgs` package, or an already loaded `ModelPackage`.
        backend: ``"auto"`` (the first of `dgs_sdk.backends.AUTO_ORDER` that is available here and runs a variant
            of the package: TensorRT, then ONNX Runtime) or a name from `dgs_sdk.backends.BACKENDS`.
        device: ``None`` (best available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: the package variant to run (``"fp32"``, ``"fp16"``, ``"int8"``, ``"int8-cpu"``), or
            ``"auto"``: the fastest variant the package has among those the backend runs well
            (`dgs_sdk.backends.choose_backend`). A variant the package lacks is an error naming those it has.
        batch_size: images per inference call; capped so that one batch takes at most `MAX_BATCH_BYTES`
            (445 images of 224 x 224), which also bounds how far a stream is read ahead.
        threshold: probability of "fake" from which the label is "fake"; the package's threshold by default.
        workers: threads that decode and preprocess while the model runs; ``None`` = one per CPU, at most 8.
        decode_memory: bytes the decoding threads may hold at once (`dgs_sdk.limits.DECODE_MEMORY`, shared
            by every Detector of the process, when None).

    Loading verifies the package (`ModelPackage.load`) and runs the model once on two grey images: a package
    that cannot score images is refused here, not halfway through a scan.

    Example:
        >>> det = Detector("model.dgs")
        >>> det.predict("photo.jpg").probability
    """

    def __init__(
        self,
        model: str | os.PathLike | ModelPackage,
        backend: str = "auto",
        device: str | None = None,
        precision: str = "auto",
        batch_size: int = 32,
        threshold: float | None = None,
        workers: int | None = None,
        decode_memory: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a probability in [0, 1], got {threshold}")
        try:
            if not isinstance(model, ModelPackage):  # choose the variant first: only that one is read into memory
                _, chosen = choose_backend(backend, read_manifest(model), device, precision, str(model))
                model = ModelPackage.load(model, precision=chosen)
            self.package = model
            self.backend: Backend = create_backend(backend, self.package, device, precision)
        except ValueError as e:
            raise DgsError(str(e)) from None
        self.manifest = self.package.manifest
        self.spec = self.manifest.preprocess
        self.threshold = self.manifest.threshold if threshold is None else float(threshold)
        self.batch_size = max(1, min(batch_size, MAX_BATCH_BYTES // (12 * self.spec.size**2)))
        self.workers = workers or min(8, os.cpu_count() or 1)
        self.budget = DEFAULT_BUDGET if decode_memory is None else MemoryBudget(decode_memory)

    @property
    def precision(self) -> str:
        """The variant of the package that runs."""
        return self.backend.precision

    def __repr__(self) -> str:
        return (
            f"Detector({os.fspath(self.package.path)!r}, backend={self.backend.describe()!r}, "
            f"preprocess={self.spec.transform!r}, threshold={self.threshold})"
        )

    def predict(
        self, images: ImageInput | Iterable[ImageInput], value_range: ValueRange | None = None
    ) -> Prediction | list[Prediction]:
        """Score one image or many.

        An image is a file path, encoded bytes (JPEG, PNG, WebP, BMP, TIFF, GIF) or an RGB array ``[H, W]``
        or ``[H, W, 1-4]`` of uint8 or uint16; float arrays need ``value_range``, the values of black and
        white (``(0, 1)`` or ``(0, 255)``), and values outside it are an error, never clipped. One input gives
        one `Prediction`, a sequence gives a list in the same order. Inputs that cannot be decoded give
        predictions with ``error`` set; they never stop the others.
        """
        check_value_range(value_range)
        if _is_single(images):
            (only,) = self._stream(iter([(images, None)]), value_range)
            return only
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        return list(self.predict_iter(images, value_range))

    def predict_iter(
        self,
        images: Iterable[ImageInput],
        value_range: ValueRange | None = None,
        perturb: Callable[[np.ndarray, int], np.ndarray] | None = None,
    ) -> Iterator[Prediction]:
        """Score a stream of images lazily, in input order (inputs as in `predict`).

        Worker threads decode and preprocess ahead of the model (a bounded window of ``2 * batch_size``
        images), so decoding overlaps inference and memory stays flat on long, even endless, streams.

        ``perturb``, for robustness evaluation (`dgs_sdk.perturb`), is called in the worker threads with each
        decoded RGB uint8 image and its position in ``images``; the image it returns is the one preprocessed.
        """
        check_value_range(value_range)
        return self._stream(((source, index) for index, source in enumerate(images)), value_range, perturb)

    def _stream(
        self,
        sources: Iterator[tuple[ImageInput, int | None]],
        value_range: ValueRange | None,
        perturb: Callable[[np.ndarray, int], np.ndarray] | None = None,
    ) -> Iterator[Prediction]:
        window = max(2 * self.batch_size, self.workers)
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="dgs-decode") as pool:
            pending: deque[tuple[Future, int]] = deque()
            held = 0  # bytes of in-memory inputs (arrays, encoded bytes) waiting in the window

            def refill() -> None:
                nonlocal held
                while len(pending) < window and (held < MAX_READ_AHEAD_BYTES or not pending):
                    item = next(sources, None)
                    if item is None:
                        return
                    size = _input_bytes(item[0])
                    pending.append((pool.submit(self._prepare, *item, value_range, perturb), size))
                    held += size

            refill()
            batch: list[_Prepared] = []
            while pending:
                future, size = pending.popleft()
                batch.append(future.result())
                held -= size
                refill()
                if len(batch) == self.batch_size or not pending:
                    yield from self._infer(batch)
                    batch = []

    def _prepare(self, source: ImageInput, index: int | None, value_range: ValueRange | None,
                 perturb: Callable[[np.ndarray, int], np.ndarray] | None = None) -> _Prepared:
        name = describe_source(source, index)
        t0 = time.perf_counter()
        decoded_at = t0

        def crop_decoded(image: np.ndarray) -> np.ndarray:  # runs while the image's share of the budget is held
            nonlocal decoded_at
            decoded_at = time.perf_counter()
            if perturb is not None:
                image = perturb(image, index or 0)
            return crop_image(image, self.spec)

        try:
            crop = load_image(source, name=name, value_range=value_range, budget=self.budget,
                              transform=crop_decoded)
        except DgsError as e:
            return _Prepared(name, None, str(e) if str(e).startswith(name) else f"{name}: {e}",
                             (time.perf_counter() - t0) * 1e3, 0.0)
        except Exception as e:  # a decoder bug must not cost the other images their results
            return _Prepared(name, None, f"{name}: cannot be decoded ({type(e).__name__}: {e})", 0.0, 0.0)
        return _Prepared(name, crop, None, (decoded_at - t0) * 1e3, (time.perf_counter() - decoded_at) * 1e3)

    def _infer(self, batch: list[_Prepared]) -> Iterator[Prediction]:
        good = [p for p in batch if p.crop is not None]
        logits = np.zeros(0, np.float32)
        normalize_ms = inference_ms = 0.0
        if good:
            t0 = time.perf_counter()
            x = normalize(np.stack([p.crop for p in good]), self.spec)  # [B, 3, S, S]
            t1 = time.perf_counter()
            logits = self.backend.run(x)
            t2 = time.perf_counter()
            normalize_ms, inference_ms = (t1 - t0) * 1e3 / len(good), (t2 - t1) * 1e3 / len(good)
        probabilities = sigmoid(logits)
        scored = iter(zip(logits.tolist(), probabilities.tolist(), strict=True))
        for p in batch:
            if p.crop is None:
                yield Prediction(p.source, error=p.error, timings={"decode": p.decode_ms})
                continue
            logit, probability = next(scored)
            if not math.isfinite(logit):
                error = f"{p.source}: the model's output for this image is not a finite number ({logit})"
                yield Prediction(p.source, error=error, timings={"decode": p.decode_ms})
                continue
            yield Prediction(
                p.source,
                probability=probability,
                label=FAKE if probability >= self.threshold else REAL,
                logit=logit,
                variant=self.backend.precision,
                timings={
                    "decode": p.decode_ms,
                    "preprocess": p.preprocess_ms + normalize_ms,
                    "inference": inference_ms,
                },
            )

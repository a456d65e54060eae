"""TensorRT backend: builds an engine from the package's ONNX variant on this GPU, caches it, runs it.

Needs the ``trt`` extra (``tensorrt`` 10 or 11, ``pycuda``) and a CUDA device. What the TensorRT Python API
offers is found by looking at it (``hasattr``), never by parsing its version:

- the network is strongly typed: every tensor keeps the type the ONNX graph gives it. TensorRT 10 has weak
  typing too (precision builder flags such as ``BuilderFlag.FP16``) and a ``STRONGLY_TYPED`` creation flag to
  turn it off, which is set; TensorRT 11 has only strong typing (the precision flags are gone and the creation
  flag is deprecated and ignored), so no flag is set. Precision builder flags are never set: the precision
  comes from the variant itself (casts placed by AutoCast for fp16, Q/DQ nodes for int8);
- one optimisation profile on the batch axis: `DEFAULT_PROFILE` unless given, ``K:K:K`` for a graph of fixed
  batch K. Batches larger than the profile's maximum are run in chunks, smaller than its minimum padded;
- inference with ``execute_async_v3`` on tensor addresses: page-locked host buffers, device buffers and a stream
  from pycuda, in the device's primary context (the one the CUDA runtime, and so TensorRT, uses).

Engines are cached (`dgs_sdk.engine_cache`): built on first use, loaded afterwards.

No GPU: with no CUDA device, creating TensorRT's runtime gives an invalid object and the next call crashes the
process. The CUDA driver is therefore asked (through pycuda) for a device before any TensorRT object is made.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections import deque
from dataclasses import dataclass, replace

import numpy as np

from ..engine_cache import BatchProfile, EngineCache, EngineKey
from ..errors import BackendUnavailable, DgsError, ModelPackageError
from ..package import ModelPackage
from .base import Backend
from .onnxruntime import parse_device

__all__ = [
    "DEFAULT_PROFILE",
    "DEFAULT_WORKSPACE_MIB",
    "CudaDevice",
    "EngineOptions",
    "TensorRTBackend",
    "TensorRTError",
    "TensorRTLog",
    "engine_profile",
    "network_flags",
    "prepare_engine",
    "probe_cuda",
]

# Tuned for full batches of `Detector`'s default batch size; single images run too.
DEFAULT_PROFILE = BatchProfile(1, 32, 32)
DEFAULT_WORKSPACE_MIB = 1024
INSTALL = "pip install 'dgs[trt]' (on Jetson, JetPack's python3-libnvinfer and pip install pycuda)"
log = logging.getLogger("dgs_sdk.tensorrt")


class TensorRTError(DgsError):
    """TensorRT could not build or run an engine, or was given options it cannot use."""


@dataclass(frozen=True)
class EngineOptions:
    """How an engine is built.

    Attributes:
        profile: the batch sizes of the optimisation profile; None: `DEFAULT_PROFILE` (``K:K:K`` for a graph of
            fixed batch K).
        workspace_mib: the builder's workspace limit (`DEFAULT_WORKSPACE_MIB`).
    """

    profile: BatchProfile | None = None
    workspace_mib: int = DEFAULT_WORKSPACE_MIB

    def __post_init__(self) -> None:
        if self.workspace_mib < 1:
            raise ValueError(f"workspace must be at least 1 MiB, got {self.workspace_mib}")


@dataclass(frozen=True)
class CudaDevice:
    """A CUDA device as the driver describes it."""

    index: int
    name: str
    compute_capability: str  # "8.7"
    driver: str  # the CUDA version the driver supports, "12.6"


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as e:
        raise BackendUnavailable(f"tensorrt cannot be imported ({e}); {INSTALL}") from None
    return tensorrt


def import_cuda_driver():
    try:
        import pycuda.driver
    except ImportError as e:  # also when the CUDA driver library itself is missing
        raise BackendUnavailable(f"pycuda cannot be imported ({e}); {INSTALL}") from None
    return pycuda.driver


def probe_cuda(index: int = 0) -> CudaDevice:
    """Device ``index`` as the CUDA driver (through pycuda) reports it; touches nothing of TensorRT.

    Raises:
        BackendUnavailable: pycuda is missing, the driver does not start, or there is no such device.
    """
    cuda = import_cuda_driver()
    try:
        cuda.init()
        count = cuda.Device.count()
    except Exception as e:  # pycuda.driver.Error: "cuInit failed: no CUDA-capable device is detected"...
        raise BackendUnavailable(f"no CUDA device here: the CUDA driver says {str(e).strip() or type(e).__name__}; "
                                 "TensorRT needs an NVIDIA GPU") from None
    if count == 0:
        raise BackendUnavailable("no CUDA device here (the CUDA driver sees none); TensorRT needs an NVIDIA GPU")
    if index >= count:
        raise BackendUnavailable(f"device cuda:{index} does not exist: the CUDA driver sees {count} device(s), "
                                 f"cuda:0 to cuda:{count - 1}")
    device = cuda.Device(index)
    major, minor = device.compute_capability()
    version = cuda.get_driver_version()  # 12060 for CUDA 12.6
    return CudaDevice(index, device.name(), f"{major}.{minor}", f"{version // 1000}.{version % 1000 // 10}")


@functools.lru_cache(maxsize=1)
def _available() -> bool:
    try:
        import_tensorrt()
        probe_cuda(0)
    except BackendUnavailable:
        return False
    return True


def network_flags(trt) -> int:
    """Network creation flags: strongly typed where TensorRT also has weak typing (10.x: the precision builder
    flags exist); none where the flag is gone or every network is strongly typed (11.x)."""
    creation = trt.NetworkDefinitionCreationFlag
    if hasattr(trt.BuilderFlag, "FP16") and hasattr(creation, "STRONGLY_TYPED"):
        return 1 << int(creation.STRONGLY_TYPED)
    return 0


def engine_profile(requested: BatchProfile | None, fixed_batch: int | None) -> BatchProfile:
    """The profile an engine is built with: ``K:K:K`` for a graph of fixed batch K, else ``requested`` or
    `DEFAULT_PROFILE`.

    Raises:
        ValueError: a profile other than K:K:K asked for a graph of fixed batch K.
    """
    if fixed_batch is None:
        return requested or DEFAULT_PROFILE
    fixed = BatchProfile.fixed(fixed_batch)
    if requested is not None and requested != fixed:
        raise ValueError(f"batch profile {requested}: the graph takes batches of exactly {fixed_batch} only "
                         f"(profile {fixed})")
    return fixed


class TensorRTLog:
    """TensorRT's messages: the recent warnings and errors are kept for error messages, and all go to the
    ``dgs_sdk.tensorrt`` logger at debug level. Made an ``ILogger`` by `make_logger`."""

    def __init__(self) -> None:
        super().__init__()  # ILogger's, where this is mixed into it
        self.messages: deque[str] = deque(maxlen=20)

    def log(self, severity, msg: str) -> None:
        if int(severity) <= 2:  # INTERNAL_ERROR 0, ERROR 1, WARNING 2 (INFO 3 and VERBOSE 4 are dropped)
            self.messages.append(msg.strip())
            log.debug("TensorRT: %s", msg.strip())

    def last(self, default: str = "no message from TensorRT") -> str:
        return self.messages[-1] if self.messages else default

    def clear(self) -> None:
        self.messages.clear()


def make_logger(trt) -> TensorRTLog:
    """A `TensorRTLog` that TensorRT accepts as its logger (a subclass of its ``ILogger``)."""
    return type("DgsTensorRTLogger", (TensorRTLog, trt.ILogger), {})()


class TensorRTBackend(Backend):
    """Runs a package's ONNX variant as a TensorRT engine built on, and cached for, this GPU.

    Args:
        package: a loaded package.
        device: ``None``, ``"cuda"`` or ``"cuda:N"`` (``"cpu"`` is refused).
        precision: the variant to run: ``"int8"``, ``"fp16"`` or ``"fp32"``.
        options: profile and workspace of the engine. None: the newest cached engine of this variant for this
            GPU whatever its profile (one `dgs engine` built ahead of time), else the defaults.
        cache: the engine cache (`EngineCache()`: ``$DGS_CACHE_DIR``...).

    Attributes:
        entry: the cached engine in use (its plan's path, its build time).
        built: whether the engine was built now rather than loaded from the cache.
        gpu: the CUDA device.
        profile: the engine's batch profile.
    """

    name = "tensorrt"
    precisions = ("int8", "fp16", "fp32")

    @classmethod
    def is_available(cls) -> bool:
        """tensorrt and pycuda import, and the CUDA driver sees a device (asked once per process)."""
        return _available()

    @classmethod
    def preferred_precisions(cls, device: str | None) -> tuple[str, ...]:
        """None on the CPU (so that ``backend="auto", device="cpu"`` takes ONNX Runtime), else `precisions`."""
        try:
            kind, _ = parse_device(device)
        except ValueError:
            return cls.precisions  # the constructor says what is wrong with it
        return () if kind == "cpu" else cls.precisions

    @classmethod
    def unavailable_reason(cls) -> str:
        try:
            import_tensorrt()
            probe_cuda(0)
        except BackendUnavailable as e:
            return str(e)
        return ""

    def __init__(
        self,
        package: ModelPackage,
        device: str | None = None,
        precision: str = "fp32",
        options: EngineOptions | None = None,
        cache: EngineCache | None = None,
    ) -> None:
        if precision == "int8-cpu":
            raise BackendUnavailable(
                f"{package.path}: the int8-cpu variant holds ONNX Runtime's dynamic quantisation operators, which "
                "TensorRT does not take; run it with --backend onnxruntime, or use the int8 variant (Q/DQ, made "
                "for TensorRT), fp16 or fp32"
            )
        if precision not in self.precisions:
            raise BackendUnavailable(f"precision {precision!r} is not one TensorRT runs here "
                                     f"(it runs {', '.join(self.precisions)})")
        super().__init__(package, device, precision)
        try:
            kind, index = parse_device(device)
        except ValueError as e:
            raise BackendUnavailable(str(e)) from None
        if kind == "cpu":
            raise BackendUnavailable("device 'cpu': TensorRT runs on CUDA devices only; use --backend onnxruntime")
        trt = import_tensorrt()
        cuda = import_cuda_driver()
        self.gpu = probe_cuda(index)  # before any TensorRT object (see the module's docstring)
        self._trt, self._cuda = trt, cuda
        self._engine = self._context = self._runtime = None
        self._buffers: list = []
        self._cuda_context = cuda.Device(index).retain_primary_context()
        self._cuda_context.push()
        try:
            self._log = make_logger(trt)
            self._load(options, cache or EngineCache())
        except BaseException:
            self._cuda_context.pop()
            self.close()
            raise
        self._cuda_context.pop()

    # -- engine -------------------------------------------------------------------------------------------

    def _load(self, options: EngineOptions | None, cache: EngineCache) -> None:
        trt = self._trt
        try:
            profile = engine_profile(options.profile if options else None, self.fixed_batch)
        except ValueError as e:
            raise TensorRTError(f"{self.where}: {e}") from None
        key = EngineKey(
            tensorrt=str(trt.__version__), gpu=self.gpu.name, compute_capability=self.gpu.compute_capability,
            cuda=self.gpu.driver, onnx_sha256=self.model_sha256, precision=self.precision, profile=profile,
            workspace_mib=(options or EngineOptions()).workspace_mib,
        )
        if options is None and (built := cache.find_for_target(key)) is not None:
            key = replace(key, profile=built.profile, workspace_mib=int(built.fields["workspace_mib"]))
        self._runtime = trt.Runtime(self._log)
        engine, self.entry, self.built = cache.get_or_build(
            key, self._deserialize, lambda: self._build(key, cache), package=os.fspath(self.package.path)
        )
        self.profile = key.profile
        self._engine = engine
        self._bind(engine)

    def _deserialize(self, plan: bytes):
        self._log.clear()
        engine = self._runtime.deserialize_cuda_engine(plan)
        if engine is None:
            log.warning("TensorRT %s refuses a cached plan: %s", self._trt.__version__, self._log.last())
        return engine

    def _build(self, key: EngineKey, cache: EngineCache) -> bytes:
        trt, m = self._trt, self.package.manifest
        size = m.preprocess.size
        log.warning("%s: building a TensorRT %s engine (%s, batch %s) for %s; this takes minutes, once: it is "
                    "cached in %s", self.where, trt.__version__, key.precision, key.profile, self.gpu.name,
                    cache.folder)
        self._log.clear()
        builder = trt.Builder(self._log)
        network = builder.create_network(network_flags(trt))
        parser = trt.OnnxParser(network, self._log)
        if not parser.parse(self.model_bytes):
            errors = "; ".join(str(parser.get_error(i)).strip() for i in range(parser.num_errors))
            raise ModelPackageError(f"{self.where}: TensorRT {trt.__version__} cannot parse it ({errors})")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, key.workspace_mib << 20)
        if self.fixed_batch is None:  # a profile is for dynamic axes; a fixed batch has none
            p = key.profile
            profile = builder.create_optimization_profile()
            profile.set_shape(m.input_name, (p.min, 3, size, size), (p.opt, 3, size, size), (p.max, 3, size, size))
            config.add_optimization_profile(profile)
        timing = config.create_timing_cache(cache.read_timing_cache(key))
        if not config.set_timing_cache(timing, False):  # another device's or version's: start afresh
            log.warning("%s: timing cache not usable here; a new one is made", cache.timing_cache_path(key))
            timing = config.create_timing_cache(b"")
            config.set_timing_cache(timing, False)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise TensorRTError(f"{self.where}: TensorRT {trt.__version__} could not build an engine "
                                f"({self._log.last()})")
        cache.store_timing_cache(key, bytes(config.get_timing_cache().serialize()))
        return bytes(plan)

    def _bind(self, engine) -> None:
        """Check the engine's tensors against the manifest, and allocate buffers for the profile's largest batch."""
        trt, cuda, m = self._trt, self._cuda, self.package.manifest
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if inputs != [m.input_name] or outputs != [m.output_name]:
            raise ModelPackageError(f"{self.where}: the engine has inputs {inputs} and outputs {outputs}; the "
                                    f"manifest says {m.input_name!r} -> {m.output_name!r}")
        if engine.get_tensor_dtype(m.input_name) != trt.float32:
            raise ModelPackageError(f"{self.where}: the engine takes {engine.get_tensor_dtype(m.input_name)} input; "
                                    "a dgs model takes float32 images")
        self._context = engine.create_execution_context()
        if self._context is None:
            raise TensorRTError(f"{self.where}: TensorRT cannot make an execution context ({self._log.last()})")
        size, largest = m.preprocess.size, self.profile.max
        self._host_in = cuda.pagelocked_empty((largest, 3, size, size), np.float32)
        shape = self._output_shape(largest)
        self._host_out = cuda.pagelocked_empty(max(1, math.prod(shape)),
                                               np.dtype(trt.nptype(engine.get_tensor_dtype(m.output_name))))
        self._device_in = cuda.mem_alloc(self._host_in.nbytes)
        self._device_out = cuda.mem_alloc(self._host_out.nbytes)
        self._buffers = [self._device_in, self._device_out]
        self._context.set_tensor_address(m.input_name, int(self._device_in))
        self._context.set_tensor_address(m.output_name, int(self._device_out))
        self._stream = cuda.Stream()

    def _output_shape(self, rows: int) -> tuple[int, ...]:
        """Set the input's batch to ``rows`` and return the output's shape then."""
        m, size = self.package.manifest, self.package.manifest.preprocess.size
        if not self._context.set_input_shape(m.input_name, (rows, 3, size, size)):
            raise TensorRTError(f"{self.where}: the engine refuses a batch of {rows} (profile {self.profile}; "
                                f"{self._log.last()})")
        shape = tuple(int(d) for d in self._context.get_tensor_shape(m.output_name))
        if any(d < 0 for d in shape):
            raise ModelPackageError(f"{self.where}: TensorRT cannot tell the output's shape for a batch of {rows} "
                                    f"({list(shape)})")
        return shape

    # -- inference ----------------------------------------------------------------------------------------

    @property
    def device(self) -> str:
        return f"cuda:{self.gpu.index}"

    @property
    def tensorrt_version(self) -> str:
        return str(self._trt.__version__)

    def describe(self) -> str:
        return (f"tensorrt {self.tensorrt_version} on {self.device} ({self.gpu.name}), {self.precision}, "
                f"batch {self.profile}, engine {self.entry.plan}")

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        self._cuda_context.push()
        try:
            chunks = [self._infer_chunk(batch[start : start + self.profile.max])
                      for start in range(0, len(batch), self.profile.max)]
        finally:
            self._cuda_context.pop()
        return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)

    def _infer_chunk(self, chunk: np.ndarray) -> np.ndarray:
        """The engine's output for at most ``profile.max`` images (padded up to ``profile.min``)."""
        cuda = self._cuda
        images = len(chunk)
        rows = max(images, self.profile.min)
        self._host_in[:images] = chunk
        self._host_in[images:rows] = 0.0
        shape = self._output_shape(rows)
        count = math.prod(shape)
        if count > self._host_out.size:  # more than the buffer sized for the largest batch: never written
            raise ModelPackageError(f"{self.where}: the engine gives output of shape {list(shape)} for a batch of "
                                    f"{rows}; a dgs model gives one logit per image ([{rows}])")
        cuda.memcpy_htod_async(self._device_in, self._host_in[:rows], self._stream)
        if not self._context.execute_async_v3(self._stream.handle):
            self._stream.synchronize()
            raise TensorRTError(f"{self.where}: TensorRT failed to run the engine ({self._log.last()})")
        cuda.memcpy_dtoh_async(self._host_out[:count], self._device_out, self._stream)
        self._stream.synchronize()
        output = self._host_out[:count].reshape(shape).copy()
        return output[:images] if shape == (rows,) else output

    def close(self) -> None:
        """Free the engine and the device buffers now, rather than when the backend is collected."""
        if getattr(self, "_cuda_context", None) is None:
            return
        self._cuda_context.push()
        try:
            for allocation in self._buffers:
                allocation.free()
            self._buffers = []
            self._context = self._engine = self._runtime = None
        finally:
            self._cuda_context.pop()
            self._cuda_context.detach()
            self._cuda_context = None


def prepare_engine(
    package: ModelPackage,
    precision: str = "auto",
    device: str | None = None,
    options: EngineOptions | None = None,
    cache: EngineCache | None = None,
) -> TensorRTBackend:
    """Build the engine of a package on this GPU ahead of time, or find it in the cache, and check it on two grey
    images (what `dgs engine` does).

    ``precision="auto"`` takes the fastest variant TensorRT runs that the package has (int8, fp16, fp32).

    Raises:
        BackendUnavailable: no TensorRT, pycuda or CUDA device here, or the package has no variant TensorRT runs.
        ModelPackageError: TensorRT cannot parse the variant, or the engine gives a wrong output.
    """
    from . import choose_backend, smoke_check

    _, precision = choose_backend(TensorRTBackend.name, package.manifest, device, precision, str(package.path))
    backend = TensorRTBackend(package, device, precision, options=options or EngineOptions(), cache=cache)
    smoke_check(backend)
    return backend

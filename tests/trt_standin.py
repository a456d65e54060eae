"""A STAND-IN for TensorRT and pycuda's driver, for tests on machines that have neither. It is not TensorRT.

It has the shape of the parts of their Python APIs that `dgs_sdk.backends.tensorrt` uses, and checks that they are
used as the real ones must be (a CUDA context current, page-locked host buffers for asynchronous copies, batch
shapes within the optimisation profile, copies within their allocations). What it cannot stand in for is
TensorRT's work itself: a stand-in "plan" is a header and the ONNX bytes, and a stand-in "engine" runs the ONNX
graph with ONNX Runtime on the CPU, so its outputs are real but nothing is compiled, timed or run on a GPU.
"Device memory" is host memory behind integer addresses.

`install` puts a stand-in ``tensorrt`` and ``pycuda``/``pycuda.driver`` into ``sys.modules`` (through a pytest
monkeypatch) and returns the `StandIn` that records what was done with them.
"""

from __future__ import annotations

import enum
import functools
import json
import sys
import types
from dataclasses import dataclass, field

import numpy as np

PLAN_MAGIC = b"DGS-STANDIN-PLAN\x00"
TIMING_MAGIC = b"DGS-STANDIN-TIMING "


@dataclass
class StandIn:
    """What the stand-ins saw. ``trt_objects`` counts every TensorRT object made (loggers included)."""

    version: str = "10.3.0"
    weak_typing: bool = True  # TensorRT 10: precision builder flags exist
    strongly_typed_flag: bool = True
    devices: list[tuple[str, tuple[int, int]]] = field(default_factory=lambda: [("Stand-in GPU", (8, 7))])
    driver_error: str | None = None  # cuInit fails with this message
    driver_version: int = 12060
    trt_objects: int = 0
    builds: int = 0
    deserialized: int = 0
    executions: int = 0
    network_flags: list[int] = field(default_factory=list)
    builder_flags: list[object] = field(default_factory=list)
    memory_pool_limits: list[tuple[object, int]] = field(default_factory=list)
    profiles: list[dict] = field(default_factory=list)
    contexts: list[object] = field(default_factory=list)  # the CUDA context stack
    memory: dict[int, np.ndarray] = field(default_factory=dict)  # "device" allocations by address
    pinned: list[tuple[int, int]] = field(default_factory=list)  # page-locked host ranges
    next_address: int = 0x7F0000000000
    build_hook: object = None  # called at each build (tests use it to hold a build back)
    real_cuda: object = None  # the real pycuda.driver, when the stand-in TensorRT works on a real GPU's memory

    def require_context(self, what: str) -> None:
        current = self.real_cuda.Context.get_current() if self.real_cuda is not None else self.contexts
        if not current:
            raise RuntimeError(f"stand-in: {what} with no current CUDA context (the real one would fail too)")

    def read(self, address: int, nbytes: int) -> np.ndarray:
        if self.real_cuda is None:
            return device_view(self, address, nbytes).copy()
        host = np.empty(nbytes, np.uint8)
        self.real_cuda.memcpy_dtoh(host, address)
        return host

    def write(self, address: int, data: np.ndarray) -> None:
        data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        if self.real_cuda is None:
            device_view(self, address, data.nbytes)[:] = data
        else:
            self.real_cuda.memcpy_htod(address, data)


# -- pycuda.driver ----------------------------------------------------------------------------------------


def make_cuda_driver(s: StandIn) -> types.ModuleType:
    cuda = types.ModuleType("pycuda.driver")
    cuda.__doc__ = "stand-in for pycuda.driver (tests only)"

    class Error(Exception):
        pass

    class RuntimeError_(Error):
        pass

    class LogicError(Error):
        pass

    state = {"init": False}

    def init(flags: int = 0) -> None:
        if s.driver_error:
            raise RuntimeError_(s.driver_error)
        state["init"] = True

    def get_driver_version() -> int:
        return s.driver_version

    class Context:
        def __init__(self, device: int) -> None:
            self.device, self.detached = device, False

        def push(self) -> None:
            assert not self.detached
            s.contexts.append(self)

        def pop(self=None) -> None:  # static in pycuda: pops whatever is current
            s.contexts.pop()

        def detach(self) -> None:
            self.detached = True

    class Device:
        def __init__(self, index: int) -> None:
            if not state["init"]:
                raise LogicError("cuDeviceGet failed: initialization error")
            self.index = index

        @staticmethod
        def count() -> int:
            if not state["init"]:
                raise LogicError("cuDeviceGetCount failed: initialization error")
            return len(s.devices)

        def name(self) -> str:
            return s.devices[self.index][0]

        def compute_capability(self) -> tuple[int, int]:
            return s.devices[self.index][1]

        def retain_primary_context(self) -> Context:
            return Context(self.index)

    class DeviceAllocation:
        def __init__(self, nbytes: int) -> None:
            s.require_context("mem_alloc")
            self.address = s.next_address
            s.next_address += max(nbytes, 1) + 4096
            s.memory[self.address] = np.zeros(nbytes, np.uint8)

        def __int__(self) -> int:
            return self.address

        def free(self) -> None:
            s.memory.pop(self.address, None)

    class Stream:
        def __init__(self) -> None:
            s.require_context("Stream")
            self.handle = id(self)

        def synchronize(self) -> None:
            pass

    def pagelocked_empty(shape, dtype) -> np.ndarray:
        s.require_context("pagelocked_empty")
        array = np.empty(shape, dtype)
        s.pinned.append((array.__array_interface__["data"][0], array.nbytes))
        return array

    def _check_pinned(host: np.ndarray) -> None:
        start = host.__array_interface__["data"][0]
        if not any(a <= start and start + host.nbytes <= a + n for a, n in s.pinned):
            raise LogicError("stand-in: asynchronous copy from or to memory that is not page-locked")
        if not host.flags.c_contiguous:
            raise LogicError("stand-in: asynchronous copy of a non-contiguous array")

    def memcpy_htod_async(dest, src: np.ndarray, stream=None) -> None:
        s.require_context("memcpy_htod_async")
        _check_pinned(src)
        device_view(s, int(dest), src.nbytes)[:] = src.reshape(-1).view(np.uint8)

    def memcpy_dtoh_async(dest: np.ndarray, src, stream=None) -> None:
        s.require_context("memcpy_dtoh_async")
        _check_pinned(dest)
        dest.reshape(-1).view(np.uint8)[:] = device_view(s, int(src), dest.nbytes)

    for name, value in dict(Error=Error, RuntimeError=RuntimeError_, LogicError=LogicError, init=init,
                            get_driver_version=get_driver_version, Context=Context, Device=Device,
                            DeviceAllocation=DeviceAllocation, mem_alloc=DeviceAllocation, Stream=Stream,
                            pagelocked_empty=pagelocked_empty, memcpy_htod_async=memcpy_htod_async,
                            memcpy_dtoh_async=memcpy_dtoh_async).items():
        setattr(cuda, name, value)
    return cuda


def device_view(s: StandIn, address: int, nbytes: int) -> np.ndarray:
    """``nbytes`` of stand-in device memory from ``address``, which must lie within one live allocation."""
    for start, block in s.memory.items():
        if start <= address < start + max(len(block), 1):
            if address + nbytes > start + len(block):
                raise RuntimeError(f"stand-in: {nbytes} bytes at {address:#x} run past an allocation of "
                                   f"{len(block)} bytes (an out-of-bounds access on a real GPU)")
            return block[address - start : address - start + nbytes]
    raise RuntimeError(f"stand-in: address {address:#x} is not in any live allocation")


# -- tensorrt ---------------------------------------------------------------------------------------------


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3


_NUMPY = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.INT32: np.int32}
_FROM_ONNX = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32}
# Operators of ONNX Runtime's dynamic quantisation, which TensorRT's ONNX parser does not take.
UNSUPPORTED_OPS = {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"}


def make_tensorrt(s: StandIn) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__doc__ = "stand-in for tensorrt (tests only): not TensorRT"
    trt.__version__ = s.version

    creation = {"PREFER_AOT_PYTHON_PLUGINS": 1, "PREFER_JIT_PYTHON_PLUGINS": 2}
    if s.strongly_typed_flag:
        creation["STRONGLY_TYPED"] = 0
    builder_flags = {"DEBUG": 1, "GPU_FALLBACK": 2, "REFIT": 3, "TF32": 4, "SPARSE_WEIGHTS": 5}
    if s.weak_typing:
        builder_flags.update(FP16=10, INT8=11, BF16=12, FP8=13, OBEY_PRECISION_CONSTRAINTS=14,
                             PREFER_PRECISION_CONSTRAINTS=15)
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", creation)
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", builder_flags)
    precision_flags = {f for f in trt.BuilderFlag if f.name in ("FP16", "INT8", "BF16", "FP8")}
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0, "DLA_MANAGED_SRAM": 1})
    trt.TensorIOMode = enum.IntEnum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
    trt.DataType = DataType
    trt.float32, trt.float16, trt.int8, trt.int32 = DataType.FLOAT, DataType.HALF, DataType.INT8, DataType.INT32
    trt.nptype = lambda dtype: _NUMPY[DataType(dtype)]

    class ILogger:
        Severity = Severity

        def __init__(self) -> None:
            s.trt_objects += 1

        def log(self, severity, msg) -> None:  # overridden
            pass

    class Logger(ILogger):
        WARNING = Severity.WARNING

        def __init__(self, min_severity=Severity.WARNING) -> None:
            super().__init__()

    class Network:
        def __init__(self, flags: int) -> None:
            s.trt_objects += 1
            self.flags, self.onnx = flags, None

    class OnnxParser:
        def __init__(self, network: Network, logger: ILogger) -> None:
            s.trt_objects += 1
            self.network, self.errors = network, []

        def parse(self, model: bytes) -> bool:
            import onnx

            try:
                graph = onnx.load_from_string(bytes(model)).graph
            except Exception as e:
                self.errors.append(f"ModelImporter: failed to parse the ONNX model ({e})")
                return False
            unsupported = sorted({n.op_type for n in graph.node} & UNSUPPORTED_OPS)
            if unsupported:
                self.errors.append(f"In node 0: No importer registered for op: {unsupported[0]}")
                return False
            self.network.onnx = bytes(model)
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, index: int) -> str:
            return self.errors[index]

    class Profile:
        def __init__(self) -> None:
            s.trt_objects += 1
            self.shapes = {}

        def set_shape(self, name, min, opt, max) -> None:
            assert min[0] <= opt[0] <= max[0], (min, opt, max)
            self.shapes[name] = (tuple(min), tuple(opt), tuple(max))

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            s.trt_objects += 1
            self.data = bytes(data)

        def serialize(self) -> bytes:
            return self.data

    class BuilderConfig:
        def __init__(self) -> None:
            s.trt_objects += 1
            self.profiles, self.timing = [], None

        def set_flag(self, flag) -> None:
            s.builder_flags.append(flag)

        def set_memory_pool_limit(self, pool, size: int) -> None:
            s.memory_pool_limits.append((pool, size))

        def add_optimization_profile(self, profile: Profile) -> int:
            self.profiles.append(profile)
            s.profiles.append(dict(profile.shapes))
            return len(self.profiles) - 1

        def create_timing_cache(self, data: bytes) -> TimingCache:
            return TimingCache(data)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            if cache.data and not cache.data.startswith(TIMING_MAGIC + s.version.encode() + b"\n"):
                return False
            self.timing = cache
            return True

        def get_timing_cache(self) -> TimingCache:
            return self.timing

    class Builder:
        def __init__(self, logger: ILogger) -> None:
            s.require_context("Builder")
            s.trt_objects += 1
            self.logger = logger

        def create_network(self, flags: int = 0) -> Network:
            s.network_flags.append(flags)
            return Network(flags)

        def create_builder_config(self) -> BuilderConfig:
            return BuilderConfig()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: BuilderConfig):
            s.require_context("build_serialized_network")
            if s.build_hook is not None:
                s.build_hook()
            if precision_flags & set(s.builder_flags):
                raise AssertionError("stand-in: a precision builder flag was set")
            s.builds += 1
            profile = next(iter(config.profiles[0].shapes.values())) if config.profiles else None
            header = {"version": s.version, "strongly_typed": bool(network.flags & 1), "profile": profile}
            if config.timing is not None:
                entries = config.timing.data.split(b"\n", 1)[1] if config.timing.data else b""
                config.timing.data = TIMING_MAGIC + s.version.encode() + b"\n" + entries + b"entry\n"
            return PLAN_MAGIC + json.dumps(header).encode() + b"\x00" + network.onnx

    class Runtime:
        def __init__(self, logger: ILogger) -> None:
            s.trt_objects += 1
            self.logger = logger

        def deserialize_cuda_engine(self, plan: bytes):
            s.require_context("deserialize_cuda_engine")
            plan = bytes(plan)
            if not plan.startswith(PLAN_MAGIC) or b"\x00" not in plan[len(PLAN_MAGIC) :]:
                self.logger.log(Severity.ERROR, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization "
                                "(Serialization assertion plan magic failed.)")
                return None
            raw, onnx_bytes = plan[len(PLAN_MAGIC) :].split(b"\x00", 1)
            header = json.loads(raw)
            if header["version"] != s.version:
                self.logger.log(Severity.ERROR, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization "
                                "(Serialization assertion stdVersionRead == kSERIALIZATION_VERSION failed."
                                f"Version tag does not match. Note: Current Version: {s.version}, Serialized "
                                f"Engine Version: {header['version']})")
                return None
            s.deserialized += 1
            return Engine(header, onnx_bytes)

    class Engine:
        def __init__(self, header: dict, onnx_bytes: bytes) -> None:
            import onnx
            import onnxruntime as ort

            s.trt_objects += 1
            self.header = header
            model = onnx.load_from_string(onnx_bytes)
            self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
            self.inputs = {i.name: i for i in model.graph.input}
            self.outputs = {o.name: o for o in model.graph.output}
            self.names = [*self.inputs, *self.outputs]

        @property
        def num_io_tensors(self) -> int:
            return len(self.names)

        def get_tensor_name(self, index: int) -> str:
            return self.names[index]

        def get_tensor_mode(self, name: str):
            return trt.TensorIOMode.INPUT if name in self.inputs else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str):
            info = self.inputs.get(name) or self.outputs[name]
            return _FROM_ONNX[info.type.tensor_type.elem_type]

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            info = self.inputs.get(name) or self.outputs[name]
            return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in info.type.tensor_type.shape.dim)

        def create_execution_context(self):
            return ExecutionContext(self)

    class ExecutionContext:
        def __init__(self, engine: Engine) -> None:
            s.trt_objects += 1
            self.engine, self.shapes, self.addresses, self.output_shapes = engine, {}, {}, {}

        def set_input_shape(self, name: str, shape) -> bool:
            shape = tuple(shape)
            declared = self.engine.get_tensor_shape(name)
            profile = self.engine.header["profile"]
            if len(shape) != len(declared) or any(d >= 0 and d != x for d, x in zip(declared, shape, strict=True)):
                return False
            if profile is not None and not profile[0][0] <= shape[0] <= profile[2][0]:
                return False
            self.shapes[name] = shape
            return True

        def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            names = list(self.engine.outputs)
            return dict(zip(names, self.engine.session.run(names, inputs), strict=True))

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            if name in self.engine.inputs:
                return self.shapes.get(name, self.engine.get_tensor_shape(name))
            key = tuple(sorted(self.shapes.items()))
            if key not in self.output_shapes:  # what the graph really gives for these input shapes
                dtype = {n: _NUMPY[self.engine.get_tensor_dtype(n)] for n in self.shapes}
                zeros = {n: np.zeros(shape, dtype[n]) for n, shape in self.shapes.items()}
                self.output_shapes[key] = {n: a.shape for n, a in self._run(zeros).items()}
            return self.output_shapes[key][name]

        def set_tensor_address(self, name: str, address: int) -> bool:
            self.addresses[name] = int(address)
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            s.require_context("execute_async_v3")
            s.executions += 1
            inputs = {}
            for name, shape in self.shapes.items():
                dtype = np.dtype(_NUMPY[self.engine.get_tensor_dtype(name)])
                raw = s.read(self.addresses[name], int(np.prod(shape)) * dtype.itemsize)
                inputs[name] = raw.view(dtype).reshape(shape)
            for name, value in self._run(inputs).items():
                s.write(self.addresses[name], value)
            return True

    for name, value in dict(ILogger=ILogger, Logger=Logger, OnnxParser=OnnxParser, Builder=Builder,
                            Runtime=Runtime, ICudaEngine=Engine, IExecutionContext=ExecutionContext).items():
        setattr(trt, name, value)
    return trt


def install(monkeypatch, **settings) -> StandIn:
    """Put stand-in ``tensorrt`` and ``pycuda.driver`` modules in place of the real ones (for this test only).

    ``settings`` are `StandIn` fields: ``version``, ``weak_typing`` and ``strongly_typed_flag`` give the shape of
    the TensorRT API (10.x: both True; 11.x: no precision flags), ``devices`` the CUDA devices (``[]``: none),
    ``driver_error`` a failing ``cuInit``; ``real_cuda`` (the real ``pycuda.driver``) keeps pycuda and the GPU
    real, and only TensorRT stands in (its engine then reads and writes the GPU's memory).
    """
    from dgs_sdk.backends import tensorrt as backend

    s = StandIn(**settings)
    if s.real_cuda is not None:  # the real pycuda and GPU; TensorRT alone stands in
        monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt(s))
        monkeypatch.setattr(backend, "_available", functools.lru_cache(maxsize=1)(backend._available.__wrapped__))
        return s
    pycuda = types.ModuleType("pycuda")
    pycuda.__doc__ = "stand-in for pycuda (tests only)"
    pycuda.driver = make_cuda_driver(s)
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", pycuda.driver)
    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt(s))
    # A fresh availability cache for this test; the real one is put back, untouched, when it ends.
    monkeypatch.setattr(backend, "_available", functools.lru_cache(maxsize=1)(backend._available.__wrapped__))
    return s


def plan_header(plan: bytes) -> dict:
    """The header of a stand-in plan."""
    assert plan.startswith(PLAN_MAGIC), plan[:32]
    return json.loads(plan[len(PLAN_MAGIC) :].split(b"\x00", 1)[0])

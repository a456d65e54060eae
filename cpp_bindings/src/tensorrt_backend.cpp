// The TensorRT backend: the C++ counterpart of dgs_sdk/backends/tensorrt.py. It builds an engine from the
// package's ONNX variant on this GPU (or loads the one the engine cache holds, under the same key as Python's,
// so an engine built by `dgs engine` serves here and the other way round) and runs batches with it.
//
// Written for TensorRT 10.x (JetPack 6 ships 10.3) and 11.x:
// - the network is strongly typed, as in Python: 10.x also has weak typing, so kSTRONGLY_TYPED is set; in 11.x
//   every network is strongly typed (the flag is deprecated). Precision builder flags are never set in either:
//   the precision comes from the variant itself (AutoCast's casts for fp16, Q/DQ nodes for int8);
// - one optimisation profile on the batch axis (K:K:K for a graph of fixed batch K); larger batches run in
//   chunks of the profile's maximum, smaller ones are padded up to its minimum.
//
// No GPU: with no CUDA device, TensorRT's createInferRuntime gives an invalid object and the next call crashes the
// process, so the CUDA runtime is asked for the device before any TensorRT object is made.
#include "tensorrt_backend.hpp"

#include <NvInfer.h>
#include <NvInferVersion.h>
#include <NvOnnxParser.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <iostream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "dgs/engine_cache.hpp"
#include "dgs/error.hpp"

#if !defined(NV_TENSORRT_MAJOR) || NV_TENSORRT_MAJOR < 10
#error "the dgs TensorRT backend needs TensorRT 10 or later (JetPack 6 ships 10.3)"
#endif

namespace dgs {

namespace {

constexpr int default_workspace_mib = 1024;  // DEFAULT_WORKSPACE_MIB
const std::vector<std::string> trt_precisions = {"int8", "fp16", "fp32"};

// ---- CUDA -------------------------------------------------------------------------------------------------

struct CudaDevice {
  int index = 0;
  std::string name;
  std::string compute_capability;  // "8.7"
  std::string driver;              // the CUDA version the driver supports, "12.6"
};

std::string cuda_text(cudaError_t error) {
  return std::string(cudaGetErrorName(error)) + ": " + cudaGetErrorString(error);
}

// Device `index` as the CUDA runtime reports it; touches nothing of TensorRT. Error(backend_unavailable).
CudaDevice probe_cuda(int index) {
  int count = 0;
  cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    cudaGetLastError();  // clear it: a later probe asks afresh
    throw Error(Status::backend_unavailable, "no CUDA device here: the CUDA runtime says " + cuda_text(status) +
                                                 "; TensorRT needs an NVIDIA GPU");
  }
  if (count == 0) {
    throw Error(Status::backend_unavailable,
                "no CUDA device here (the CUDA driver sees none); TensorRT needs an NVIDIA GPU");
  }
  if (index < 0 || index >= count) {
    throw Error(Status::backend_unavailable, "device cuda:" + std::to_string(index) +
                                                 " does not exist: the CUDA driver sees " + std::to_string(count) +
                                                 " device(s), cuda:0 to cuda:" + std::to_string(count - 1));
  }
  cudaDeviceProp properties{};
  int driver = 0;
  if ((status = cudaGetDeviceProperties(&properties, index)) != cudaSuccess ||
      (status = cudaDriverGetVersion(&driver)) != cudaSuccess) {
    throw Error(Status::backend_unavailable,
                "device cuda:" + std::to_string(index) + " cannot be described: " + cuda_text(status));
  }
  CudaDevice device;
  device.index = index;
  device.name = std::string(properties.name, strnlen(properties.name, sizeof properties.name));
  device.compute_capability = std::to_string(properties.major) + "." + std::to_string(properties.minor);
  device.driver = std::to_string(driver / 1000) + "." + std::to_string(driver % 1000 / 10);  // 12060 -> "12.6"
  return device;
}

void check(cudaError_t status, const std::string& where, const char* what) {
  if (status != cudaSuccess) throw Error(Status::inference, where + ": CUDA " + what + " failed (" + cuda_text(status) + ")");
}

struct CudaFree {
  void operator()(void* p) const { cudaFree(p); }
};
struct StreamDestroy {
  void operator()(CUstream_st* s) const { cudaStreamDestroy(s); }
};

// ---- TensorRT ---------------------------------------------------------------------------------------------

// TensorRT's version as its Python module reports it (the engine key's "tensorrt" field): the Python package's
// version, which has four parts (10.8.0.43, 11.4.0.106) from TensorRT 10.8 on and three (10.3.0) before.
std::string python_version_string(int major, int minor, int patch, int build) {
  std::string version = std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
  if (major > 10 || (major == 10 && minor >= 8)) version += "." + std::to_string(build);
  return version;
}

std::string runtime_version() {
  return python_version_string(getInferLibMajorVersion(), getInferLibMinorVersion(), getInferLibPatchVersion(),
                               getInferLibBuildVersion());
}

// The other spelling of the same version (three parts where the rule gives four, and the other way round): an
// engine keyed under it by a Python whose package spells it so is the same engine.
std::string other_version_string() {
  int major = getInferLibMajorVersion(), minor = getInferLibMinorVersion();
  bool four = major > 10 || (major == 10 && minor >= 8);
  std::string version = std::to_string(major) + "." + std::to_string(minor) + "." +
                        std::to_string(getInferLibPatchVersion());
  return four ? version : version + "." + std::to_string(getInferLibBuildVersion());
}

std::string tensorrt_unavailable_reason() {
  if (getInferLibMajorVersion() != NV_TENSORRT_MAJOR) {
    return "the TensorRT runtime here is " + runtime_version() + "; libdgs was built for TensorRT " +
           std::to_string(NV_TENSORRT_MAJOR) + "." + std::to_string(NV_TENSORRT_MINOR) +
           " (rebuild it against this TensorRT)";
  }
  try {
    probe_cuda(0);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// TensorRT's messages: the recent warnings and errors are kept for error messages; the rest is dropped.
class TrtLogger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, nvinfer1::AsciiChar const* message) noexcept override {
    if (severity > Severity::kWARNING) return;
    try {
      std::lock_guard<std::mutex> guard(mutex_);
      std::string text = message ? message : "";
      while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
      messages_.push_back(std::move(text));
      if (messages_.size() > 20) messages_.pop_front();
    } catch (...) {  // a logger must not throw into TensorRT
    }
  }
  std::string last() const {
    std::lock_guard<std::mutex> guard(mutex_);
    return messages_.empty() ? "no message from TensorRT" : messages_.back();
  }
  void clear() {
    std::lock_guard<std::mutex> guard(mutex_);
    messages_.clear();
  }

 private:
  mutable std::mutex mutex_;
  std::deque<std::string> messages_;
};

std::string dims_text(const nvinfer1::Dims& dims) {
  std::string out = "[";
  for (int i = 0; i < dims.nbDims; ++i) out += (i ? ", " : "") + std::to_string(dims.d[i]);
  return out + "]";
}

const char* type_name(nvinfer1::DataType type) {
  switch (type) {
    case nvinfer1::DataType::kFLOAT: return "float32";
    case nvinfer1::DataType::kHALF: return "float16";
    case nvinfer1::DataType::kINT8: return "int8";
    case nvinfer1::DataType::kINT32: return "int32";
    case nvinfer1::DataType::kBOOL: return "bool";
    default: return "a non-float type";
  }
}

float half_to_float(std::uint16_t h) {
  std::uint32_t sign = (h & 0x8000u) << 16, exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF, bits;
  if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;
    } else {  // subnormal: normalise it
      exponent = 127 - 15 + 1;
      while (!(mantissa & 0x400)) {
        mantissa <<= 1;
        --exponent;
      }
      bits = sign | (exponent << 23) | ((mantissa & 0x3FF) << 13);
    }
  } else if (exponent == 31) {
    bits = sign | 0x7F800000u | (mantissa << 13);
  } else {
    bits = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
  }
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

class TensorRTBackend : public Backend {
 public:
  TensorRTBackend(const ModelPackage& package, const BackendOptions& options)
      : where_(package.path() + " [" + package.precision() + "]") {
    const Manifest& m = package.manifest();
    if (package.precision() == "int8-cpu") {
      throw Error(Status::backend_unavailable,
                  package.path() + ": the int8-cpu variant holds ONNX Runtime's dynamic quantisation operators, "
                                   "which TensorRT does not take; use the int8 variant (Q/DQ, made for TensorRT), "
                                   "fp16 or fp32");
    }
    if (std::find(trt_precisions.begin(), trt_precisions.end(), package.precision()) == trt_precisions.end()) {
      throw Error(Status::backend_unavailable,
                  "precision '" + package.precision() + "' is not one TensorRT runs here (it runs int8, fp16, fp32)");
    }
    if (options.max_batch < 1) {
      throw Error(Status::invalid_argument, "max_batch must be at least 1, got " + std::to_string(options.max_batch));
    }
    input_ = m.input_name;
    output_ = m.output_name;
    size_ = m.preprocess.size;
    if (package.graph().batch) fixed_ = static_cast<int>(*package.graph().batch);
    device_ = probe_cuda(options.device);  // before any TensorRT object (see the top of this file)
    check(cudaSetDevice(device_.index), where_, "cudaSetDevice");
    if (getInferLibMajorVersion() != NV_TENSORRT_MAJOR) {
      throw Error(Status::backend_unavailable, tensorrt_unavailable_reason());
    }
    load(package, options);
    bind();
  }

  ~TensorRTBackend() override {
    cudaSetDevice(device_.index);
    // Context before engine before runtime, then the buffers (TensorRT's order of destruction).
    context_.reset();
    engine_.reset();
    runtime_.reset();
  }

  std::string name() const override { return "tensorrt"; }
  std::optional<int> fixed_batch() const override {
    if (fixed_) return fixed_;
    return std::nullopt;
  }
  int max_batch() const override { return profile_.max; }

  void infer(const float* batch, int n, float* logits) override {
    std::lock_guard<std::mutex> guard(mutex_);  // one execution context, one stream
    check(cudaSetDevice(device_.index), where_, "cudaSetDevice");
    for (int start = 0; start < n; start += profile_.max) {
      int images = std::min(profile_.max, n - start);
      infer_chunk(batch + static_cast<std::size_t>(start) * image_floats(), images, logits + start);
    }
  }

 private:
  std::size_t image_floats() const { return static_cast<std::size_t>(3) * size_ * size_; }

  // The key, and the engine: loaded from the cache or built (under the key's lock, looking again once held).
  void load(const ModelPackage& package, const BackendOptions& options) {
    EngineKey key;
    key.tensorrt = runtime_version();
    key.gpu = device_.name;
    key.compute_capability = device_.compute_capability;
    key.cuda = device_.driver;
    key.onnx_sha256 = package.model_sha256();
    key.precision = package.precision();
    key.profile = fixed_ ? BatchProfile{*fixed_, *fixed_, *fixed_} : BatchProfile{1, options.max_batch, options.max_batch};
    key.workspace_mib = default_workspace_mib;
    EngineCache cache(options.cache_dir);
    // As the Python backend without options: an engine already cached for this graph, GPU, TensorRT and CUDA
    // (one `dgs engine` built ahead of time with its own --batch) is used whatever its profile; so is one keyed
    // under the other spelling of the TensorRT version.
    EngineKey other = key;
    other.tensorrt = other_version_string();
    if (auto found = cache.find_for_target(key)) {
      key = *found;
    } else if (auto found_other = cache.find_for_target(other)) {
      key = *found_other;
    }
    if (fixed_ && !(key.profile == BatchProfile{*fixed_, *fixed_, *fixed_})) {
      throw Error(Status::model_package, where_ + ": batch profile " + key.profile.str() +
                                             ": the graph takes batches of exactly " + std::to_string(*fixed_));
    }
    profile_ = key.profile;
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (!runtime_) throw Error(Status::backend_unavailable, where_ + ": TensorRT cannot start (" + logger_.last() + ")");
    auto deserialize = [&](const std::vector<char>& plan) {
      logger_.clear();
      engine_.reset(runtime_->deserializeCudaEngine(plan.data(), plan.size()));
      if (!engine_) {
        std::cerr << "dgs: TensorRT " << runtime_version() << " refuses a cached plan: " << logger_.last() << '\n';
      }
      return engine_ != nullptr;
    };
    cache.get_or_build(key, deserialize, [&] { return build(package, key, cache); }, package.path());
  }

  std::vector<char> build(const ModelPackage& package, const EngineKey& key, const EngineCache& cache) {
    std::cerr << "dgs: " << where_ << ": building a TensorRT " << key.tensorrt << " engine (" << key.precision
              << ", batch " << key.profile.str() << ") for " << device_.name
              << "; this takes minutes, once: it is cached in " << cache.folder() << '\n';
    logger_.clear();
    std::unique_ptr<nvinfer1::IBuilder> builder(nvinfer1::createInferBuilder(logger_));
    if (!builder) throw Error(Status::inference, where_ + ": TensorRT cannot make a builder (" + logger_.last() + ")");
#if NV_TENSORRT_MAJOR < 11
    // 10.x has weak typing too: ask for strong typing, so every tensor keeps the ONNX graph's type.
    auto flags = 1U << static_cast<std::uint32_t>(nvinfer1::NetworkDefinitionCreationFlag::kSTRONGLY_TYPED);
#else
    // 11.x: every network is strongly typed (the flag is deprecated and ignored).
    nvinfer1::NetworkDefinitionCreationFlags flags = 0;
#endif
    std::unique_ptr<nvinfer1::INetworkDefinition> network(builder->createNetworkV2(flags));
    if (!network) throw Error(Status::inference, where_ + ": TensorRT cannot make a network (" + logger_.last() + ")");
    std::unique_ptr<nvonnxparser::IParser> parser(nvonnxparser::createParser(*network, logger_));
    if (!parser) throw Error(Status::inference, where_ + ": TensorRT cannot make an ONNX parser");
    const auto& model = package.model_bytes();
    if (!parser->parse(model.data(), model.size())) {
      std::string errors;
      for (int i = 0; i < parser->getNbErrors(); ++i) {
        errors += (i ? "; " : "") + std::string(parser->getError(i)->desc());
      }
      throw Error(Status::model_package,
                  where_ + ": TensorRT " + key.tensorrt + " cannot parse it (" + errors + ")");
    }
    std::unique_ptr<nvinfer1::IBuilderConfig> config(builder->createBuilderConfig());
    if (!config) throw Error(Status::inference, where_ + ": TensorRT cannot make a builder config");
    config->setMemoryPoolLimit(nvinfer1::MemoryPoolType::kWORKSPACE, static_cast<std::size_t>(key.workspace_mib) << 20);
    if (!fixed_) {  // a profile is for dynamic axes; a fixed batch has none
      nvinfer1::IOptimizationProfile* profile = builder->createOptimizationProfile();
      const auto& p = key.profile;
      using Selector = nvinfer1::OptProfileSelector;
      if (!profile || !profile->setDimensions(input_.c_str(), Selector::kMIN, nvinfer1::Dims4{p.min, 3, size_, size_}) ||
          !profile->setDimensions(input_.c_str(), Selector::kOPT, nvinfer1::Dims4{p.opt, 3, size_, size_}) ||
          !profile->setDimensions(input_.c_str(), Selector::kMAX, nvinfer1::Dims4{p.max, 3, size_, size_}) ||
          config->addOptimizationProfile(profile) < 0) {
        throw Error(Status::inference, where_ + ": TensorRT refuses the batch profile " + p.str() + " (" +
                                           logger_.last() + ")");
      }
    }
    std::vector<char> timing_bytes = cache.read_timing_cache(key);
    std::unique_ptr<nvinfer1::ITimingCache> timing(config->createTimingCache(timing_bytes.data(), timing_bytes.size()));
    if (!timing || !config->setTimingCache(*timing, false)) {  // another device's or version's: start afresh
      std::cerr << "dgs: " << cache.timing_cache_path(key) << ": timing cache not usable here; a new one is made\n";
      timing.reset(config->createTimingCache(nullptr, 0));
      if (timing) config->setTimingCache(*timing, false);
    }
    std::unique_ptr<nvinfer1::IHostMemory> plan(builder->buildSerializedNetwork(*network, *config));
    if (!plan || plan->size() == 0) {
      throw Error(Status::inference, where_ + ": TensorRT " + key.tensorrt + " could not build an engine (" +
                                         logger_.last() + ")");
    }
    if (const nvinfer1::ITimingCache* used = config->getTimingCache()) {
      std::unique_ptr<nvinfer1::IHostMemory> serialized(used->serialize());
      if (serialized) {
        auto* bytes = static_cast<const char*>(serialized->data());
        cache.store_timing_cache(key, std::vector<char>(bytes, bytes + serialized->size()));
      }
    }
    auto* bytes = static_cast<const char*>(plan->data());
    return std::vector<char>(bytes, bytes + plan->size());
  }

  // Checks the engine's tensors against the manifest, and allocates buffers for the profile's largest batch.
  void bind() {
    std::vector<std::string> inputs, outputs;
    for (int i = 0; i < engine_->getNbIOTensors(); ++i) {
      const char* name = engine_->getIOTensorName(i);
      (engine_->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT ? inputs : outputs).push_back(name);
    }
    if (inputs != std::vector<std::string>{input_} || outputs != std::vector<std::string>{output_}) {
      auto list = [](const std::vector<std::string>& names) {
        std::string out = "[";
        for (std::size_t i = 0; i < names.size(); ++i) out += (i ? ", '" : "'") + names[i] + "'";
        return out + "]";
      };
      throw Error(Status::model_package, where_ + ": the engine has inputs " + list(inputs) + " and outputs " +
                                             list(outputs) + "; the manifest says '" + input_ + "' -> '" + output_ +
                                             "'");
    }
    if (engine_->getTensorDataType(input_.c_str()) != nvinfer1::DataType::kFLOAT) {
      throw Error(Status::model_package, where_ + ": the engine takes " +
                                             type_name(engine_->getTensorDataType(input_.c_str())) +
                                             " input; a dgs model takes float32 images");
    }
    output_type_ = engine_->getTensorDataType(output_.c_str());
    if (output_type_ != nvinfer1::DataType::kFLOAT && output_type_ != nvinfer1::DataType::kHALF) {
      throw Error(Status::model_package, where_ + ": the engine gives " + std::string(type_name(output_type_)) +
                                             " output; a dgs model gives float logits");
    }
    context_.reset(engine_->createExecutionContext());
    if (!context_) {
      throw Error(Status::inference, where_ + ": TensorRT cannot make an execution context (" + logger_.last() + ")");
    }
    std::size_t largest = static_cast<std::size_t>(profile_.max);
    output_capacity_ = std::max<std::size_t>(1, output_count(profile_.max));
    void* memory = nullptr;
    check(cudaMalloc(&memory, largest * image_floats() * sizeof(float)), where_, "cudaMalloc");
    device_in_.reset(memory);
    check(cudaMalloc(&memory, output_capacity_ * element_size()), where_, "cudaMalloc");
    device_out_.reset(memory);
    cudaStream_t stream = nullptr;
    check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), where_, "cudaStreamCreate");
    stream_.reset(stream);
    if (!context_->setTensorAddress(input_.c_str(), device_in_.get()) ||
        !context_->setTensorAddress(output_.c_str(), device_out_.get())) {
      throw Error(Status::inference, where_ + ": TensorRT refuses the buffers (" + logger_.last() + ")");
    }
    host_out_.resize(output_capacity_ * element_size());
  }

  std::size_t element_size() const { return output_type_ == nvinfer1::DataType::kHALF ? 2 : 4; }

  // Sets the input's batch to `rows` and returns the number of output values then.
  std::size_t output_count(int rows) {
    if (!context_->setInputShape(input_.c_str(), nvinfer1::Dims4{rows, 3, size_, size_})) {
      throw Error(Status::inference, where_ + ": the engine refuses a batch of " + std::to_string(rows) +
                                         " (profile " + profile_.str() + "; " + logger_.last() + ")");
    }
    nvinfer1::Dims shape = context_->getTensorShape(output_.c_str());
    std::size_t count = 1;
    for (int i = 0; i < shape.nbDims; ++i) {
      if (shape.d[i] < 0) {
        throw Error(Status::model_package, where_ + ": TensorRT cannot tell the output's shape for a batch of " +
                                               std::to_string(rows) + " (" + dims_text(shape) + ")");
      }
      count *= static_cast<std::size_t>(shape.d[i]);
    }
    last_shape_ = shape;
    return count;
  }

  // The logits of at most profile_.max images (padded with zeros up to profile_.min).
  void infer_chunk(const float* images_in, int images, float* logits) {
    int rows = std::max(images, profile_.min);
    std::size_t count = output_count(rows);
    if (count != static_cast<std::size_t>(rows) || count > output_capacity_) {
      throw Error(Status::model_package, where_ + ": the engine gives output of shape " + dims_text(last_shape_) +
                                             " for a batch of " + std::to_string(rows) +
                                             "; a dgs model gives one logit per image ([" + std::to_string(rows) +
                                             "])");
    }
    cudaStream_t stream = stream_.get();
    auto* device_in = static_cast<float*>(device_in_.get());
    std::size_t in_bytes = static_cast<std::size_t>(images) * image_floats() * sizeof(float);
    check(cudaMemcpyAsync(device_in, images_in, in_bytes, cudaMemcpyHostToDevice, stream), where_, "cudaMemcpyAsync");
    if (rows > images) {
      check(cudaMemsetAsync(device_in + static_cast<std::size_t>(images) * image_floats(), 0,
                            static_cast<std::size_t>(rows - images) * image_floats() * sizeof(float), stream),
            where_, "cudaMemsetAsync");
    }
    logger_.clear();
    if (!context_->enqueueV3(stream)) {
      cudaStreamSynchronize(stream);
      throw Error(Status::inference, where_ + ": TensorRT failed to run the engine (" + logger_.last() + ")");
    }
    check(cudaMemcpyAsync(host_out_.data(), device_out_.get(), count * element_size(), cudaMemcpyDeviceToHost, stream),
          where_, "cudaMemcpyAsync");
    check(cudaStreamSynchronize(stream), where_, "cudaStreamSynchronize");
    for (int i = 0; i < images; ++i) {
      if (output_type_ == nvinfer1::DataType::kHALF) {
        std::uint16_t h;
        std::memcpy(&h, host_out_.data() + 2 * i, 2);
        logits[i] = half_to_float(h);
      } else {
        std::memcpy(&logits[i], host_out_.data() + 4 * i, 4);
      }
    }
  }

  std::string where_;
  std::string input_, output_;
  int size_ = 0;
  std::optional<int> fixed_;
  CudaDevice device_;
  BatchProfile profile_;
  TrtLogger logger_;  // declared before the TensorRT objects: it outlives them
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  std::unique_ptr<void, CudaFree> device_in_, device_out_;
  std::unique_ptr<CUstream_st, StreamDestroy> stream_;
  nvinfer1::DataType output_type_ = nvinfer1::DataType::kFLOAT;
  std::size_t output_capacity_ = 0;
  std::vector<char> host_out_;
  nvinfer1::Dims last_shape_{};
  std::mutex mutex_;
};

}  // namespace

BackendKind tensorrt_backend_kind() {
  BackendKind kind;
  kind.name = "tensorrt";
  kind.precisions = trt_precisions;
  kind.unavailable = tensorrt_unavailable_reason;
  kind.create = [](const ModelPackage& package, const BackendOptions& options) -> std::unique_ptr<Backend> {
    return std::make_unique<TensorRTBackend>(package, options);
  };
  return kind;
}

}  // namespace dgs

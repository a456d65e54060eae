// The inference backend interface, and the registry that chooses one. The library ships the TensorRT backend
// when it is built with it (DGS_WITH_TENSORRT); there is no ONNX Runtime backend in C++.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dgs/package.hpp"

namespace dgs {

struct BackendOptions {
  std::string backend;             // a registered name ("tensorrt"); empty: the first one available
  std::string precision = "auto";  // a variant, or "auto": the backend's fastest one the package has
  int device = 0;                  // CUDA device ordinal
  int max_batch = 32;              // the largest batch the backend is asked to run at once
  std::string cache_dir;           // the dgs cache folder; empty: $DGS_CACHE_DIR, $XDG_CACHE_HOME/dgs, ~/.cache/dgs
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // The graph's fixed batch size; none when it takes any batch up to max_batch().
  virtual std::optional<int> fixed_batch() const = 0;
  virtual int max_batch() const = 0;
  // Raw logits of `n` images at `batch` ([n, 3, S, S] float32, n the fixed batch when there is one) into
  // `logits` (n floats). Throws Error(inference) on failure.
  virtual void infer(const float* batch, int n, float* logits) = 0;
};

struct BackendKind {
  std::string name;
  std::vector<std::string> precisions;           // the variants it runs, fastest first
  std::function<std::string()> unavailable;      // why it cannot run here; empty when it can
  std::function<std::unique_ptr<Backend>(const ModelPackage&, const BackendOptions&)> create;
};

// Registers a backend kind (the TensorRT one registers itself when built in). Later registrations come last.
void register_backend(BackendKind kind);
std::vector<std::string> backend_names();
const BackendKind& backend_kind(const std::string& name);
// The backend and precision `options` ask for: Error(backend_unavailable) naming why when none can run.
// Returns the chosen kind's name and precision; the caller loads the package at that precision.
std::pair<std::string, std::string> choose_backend(const Manifest& manifest, const BackendOptions& options,
                                                   const std::string& package);

}  // namespace dgs

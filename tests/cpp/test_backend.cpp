#include "test_backend.hpp"

#include <string>

#include "dgs/error.hpp"

namespace dgs::testing {

MeanBackend::MeanBackend(int size, std::optional<int> fixed_batch, int max_batch)
    : size_(size), fixed_batch_(fixed_batch), max_batch_(max_batch) {}

void MeanBackend::infer(const float* batch, int n, float* logits) {
  if (fixed_batch_ && n != *fixed_batch_) {
    throw Error(Status::inference, "test-mean: a graph of fixed batch " + std::to_string(*fixed_batch_) +
                                       " was given a batch of " + std::to_string(n));
  }
  if (!fixed_batch_ && (n < 1 || n > max_batch_)) {
    throw Error(Status::inference,
                "test-mean: a batch of " + std::to_string(n) + " is over its maximum " + std::to_string(max_batch_));
  }
  calls_.push_back(n);
  const std::size_t values = 3 * static_cast<std::size_t>(size_) * size_;
  for (int i = 0; i < n; ++i) {
    const float* image = batch + i * values;
    double sum = 0.0;  // in double: the float32 mean ONNX Runtime's ReduceMean gives, to its last bit or so
    for (std::size_t v = 0; v < values; ++v) sum += image[v];
    logits[i] = static_cast<float>(sum / static_cast<double>(values));
  }
}

std::unique_ptr<MeanBackend> make_mean_backend(const ModelPackage& package, int max_batch) {
  std::optional<int> fixed;
  if (package.graph().batch) fixed = static_cast<int>(*package.graph().batch);
  return std::make_unique<MeanBackend>(package.manifest().preprocess.size, fixed, max_batch);
}

namespace {

// Registered when a test binary starts: dgs-detect-test and the C test choose it by name like any backend.
const bool registered = [] {
  BackendKind kind;
  kind.name = mean_backend_name;
  kind.precisions = {"fp32"};
  kind.create = [](const ModelPackage& package, const BackendOptions& options) -> std::unique_ptr<Backend> {
    return make_mean_backend(package, options.max_batch);
  };
  register_backend(std::move(kind));
  return true;
}();

}  // namespace

}  // namespace dgs::testing

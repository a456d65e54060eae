// A backend that exists only in the test binaries: each image's logit is the mean of its [3, S, S] values, which
// is what the fixtures' ONNX graphs compute (tests/conftest.py mean_graph), so C++ results can be compared with
// those of dgs_sdk running the same packages with ONNX Runtime. Registered as "test-mean"; it never ships.
#pragma once

#include <memory>
#include <vector>

#include "dgs/backend.hpp"

namespace dgs::testing {

inline constexpr const char* mean_backend_name = "test-mean";

class MeanBackend : public Backend {
 public:
  // `fixed_batch` as the package's graph declares it; `max_batch` as BackendOptions asks.
  MeanBackend(int size, std::optional<int> fixed_batch, int max_batch);
  std::string name() const override { return mean_backend_name; }
  std::optional<int> fixed_batch() const override { return fixed_batch_; }
  int max_batch() const override { return max_batch_; }
  void infer(const float* batch, int n, float* logits) override;

  // The number of images of every call so far, the smoke check's at load included.
  const std::vector<int>& calls() const { return calls_; }

 private:
  int size_;
  std::optional<int> fixed_batch_;
  int max_batch_;
  std::vector<int> calls_;
};

// The mean backend for a loaded package (its size and the fixed batch of its graph).
std::unique_ptr<MeanBackend> make_mean_backend(const ModelPackage& package, int max_batch = 32);

}  // namespace dgs::testing

// Detector: a model package, its preprocessing and a backend; batched detection in input order, one result
// per input, a failed input an error row that never stops the others (as dgs_sdk.Detector).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dgs/backend.hpp"
#include "dgs/error.hpp"

namespace dgs {

struct DetectorOptions : BackendOptions {
  int batch_size = 32;     // images per backend call (capped by the backend's max and the batch byte limit)
  double threshold = -1;   // probability at or above which an image is "fake"; negative: the manifest's
};

struct Result {
  std::string source;        // the path, or "<bytes #i>" / "<rgb #i>"
  double probability = 0.0;  // of "fake"; meaningless when status != ok
  bool fake = false;
  Status status = Status::ok;
  std::string error;         // names the input and the problem when status != ok
};

struct EncodedImage {
  const std::uint8_t* data;
  std::size_t size;
};

struct RgbImage {
  const std::uint8_t* data;
  int width;
  int height;
  std::size_t stride;  // bytes per row; 0 = width * 3
};

class Detector {
 public:
  // Loads and verifies the package, chooses a backend (Error(backend_unavailable) when none runs here).
  Detector(const std::string& package_path, const DetectorOptions& options = {});
  // Builds around a backend the caller made (tests, custom runtimes).
  Detector(ModelPackage package, std::unique_ptr<Backend> backend, const DetectorOptions& options = {});
  ~Detector();
  Detector(Detector&&) noexcept;
  Detector& operator=(Detector&&) noexcept;

  // With a `confine_root` (a real path), files that lead out of it when opened are error rows (see decode_file).
  std::vector<Result> detect_files(const std::vector<std::string>& paths, const std::string& confine_root = "");
  std::vector<Result> detect_encoded(const std::vector<EncodedImage>& images);
  std::vector<Result> detect_rgb(const std::vector<RgbImage>& images);

  const ModelPackage& package() const;
  const std::string& backend_name() const;
  double threshold() const;
  int batch_size() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dgs

// Errors of the native core. Every message names the file or value at fault and the problem, as the Python
// SDK's do; the status says which kind of problem it is (the C API returns it as a dgs_status).
#pragma once

#include <stdexcept>
#include <string>

namespace dgs {

// The numbers are the C API's dgs_status values (dgs.h); keep both in step.
enum class Status : int {
  ok = 0,
  invalid_argument = 1,     // a bad option or argument (null pointer, negative size, unknown precision)
  unreadable_image = 2,     // missing, empty, truncated, corrupt or not an image
  image_too_large = 3,      // more pixels or bytes than the limits allow (a decompression bomb?)
  image_too_small = 4,      // smaller than one patch, for the "pad" policy
  model_package = 5,        // a .dgs package that is missing, malformed, or fails its checksums
  backend_unavailable = 6,  // no backend can run the package here (TensorRT not built in, no GPU)
  inference = 7,            // the backend failed, or gave a non-finite logit
  io = 8,                   // a file that cannot be written or a folder that cannot be read
  internal = 9,             // a bug: an exception nobody expected
};

// The name of a status ("unreadable_image").
const char* status_name(Status status) noexcept;

class Error : public std::runtime_error {
 public:
  Error(Status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  Status status() const noexcept { return status_; }

 private:
  Status status_;
};

}  // namespace dgs

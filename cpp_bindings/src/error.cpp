#include "dgs/error.hpp"

namespace dgs {

const char* status_name(Status status) noexcept {
  switch (status) {
    case Status::ok: return "ok";
    case Status::invalid_argument: return "invalid_argument";
    case Status::unreadable_image: return "unreadable_image";
    case Status::image_too_large: return "image_too_large";
    case Status::image_too_small: return "image_too_small";
    case Status::model_package: return "model_package";
    case Status::backend_unavailable: return "backend_unavailable";
    case Status::inference: return "inference";
    case Status::io: return "io";
    case Status::internal: return "internal";
  }
  return "unknown";
}

}  // namespace dgs

// The TensorRT backend (tensorrt_backend.cpp, built only with DGS_HAVE_TENSORRT): backend.cpp registers the kind
// this returns under the name "tensorrt".
#pragma once

#include "dgs/backend.hpp"

namespace dgs {

// The TensorRT backend's kind: name "tensorrt", precisions int8, fp16, fp32; `unavailable` names what is missing
// (a CUDA device, a TensorRT runtime of the version the library was built against).
BackendKind tensorrt_backend_kind();

}  // namespace dgs

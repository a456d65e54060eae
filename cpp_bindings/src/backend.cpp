// The backend registry, and the choice of a backend and a variant for a package, as
// dgs_sdk.backends.choose_backend makes it (same order of checks, same refusals where Python has them).
#include "dgs/backend.hpp"

#include <algorithm>
#include <deque>
#include <mutex>

#include "dgs/error.hpp"

#ifdef DGS_HAVE_TENSORRT
#include "tensorrt_backend.hpp"
#endif

namespace dgs {

namespace {

// The variants a package may have (dgs_sdk.package.PRECISIONS).
const std::vector<std::string> known_precisions{"fp32", "fp16", "int8", "int8-cpu"};

std::string joined(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

struct Registry {
  std::mutex mutex;
  std::deque<BackendKind> kinds;  // a deque: references handed out stay valid as kinds are added
};

// The built-in kinds are registered when the registry is first used, not by static initialisers of other files.
Registry& registry() {
  static Registry* instance = [] {
    auto* r = new Registry;  // never destroyed: backends may be looked up from other static destructors
#ifdef DGS_HAVE_TENSORRT
    r->kinds.push_back(tensorrt_backend_kind());
#endif
    return r;
  }();
  return *instance;
}

const BackendKind* find_kind(Registry& r, const std::string& name) {
  for (const auto& kind : r.kinds) {
    if (kind.name == name) return &kind;
  }
  return nullptr;
}

std::string unavailable_reason(const BackendKind& kind) { return kind.unavailable ? kind.unavailable() : ""; }

// What a user asking for a backend this build lacks should know.
std::string missing_backend_note(const std::string& name) {
  if (name == "tensorrt") {
    return "this build of libdgs has no TensorRT backend (it was built without TensorRT: DGS_WITH_TENSORRT=OFF, "
           "or CMake did not find TensorRT and CUDA)";
  }
  if (name == "onnxruntime") {
    return "the C++ library has no ONNX Runtime backend; use the Python SDK (dgs_sdk) to run a package with ONNX "
           "Runtime";
  }
  return "";
}

}  // namespace

void register_backend(BackendKind kind) {
  if (kind.name.empty() || kind.name == "auto") {
    throw Error(Status::invalid_argument, "a backend needs a name other than '' and 'auto'");
  }
  if (!kind.create) throw Error(Status::invalid_argument, "backend '" + kind.name + "' has no create function");
  if (kind.precisions.empty()) throw Error(Status::invalid_argument, "backend '" + kind.name + "' runs no variant");
  for (const auto& precision : kind.precisions) {
    if (std::find(known_precisions.begin(), known_precisions.end(), precision) == known_precisions.end()) {
      throw Error(Status::invalid_argument, "backend '" + kind.name + "': precision '" + precision +
                                                "' is unknown (known: " + joined(known_precisions) + ")");
    }
  }
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  if (find_kind(r, kind.name)) {
    throw Error(Status::invalid_argument, "backend '" + kind.name + "' is already registered");
  }
  r.kinds.push_back(std::move(kind));
}

std::vector<std::string> backend_names() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  std::vector<std::string> names;
  for (const auto& kind : r.kinds) names.push_back(kind.name);
  return names;
}

const BackendKind& backend_kind(const std::string& name) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  if (const BackendKind* kind = find_kind(r, name)) return *kind;
  std::vector<std::string> known{"auto"};
  for (const auto& kind : r.kinds) known.push_back(kind.name);
  std::string message = "backend '" + name + "' is unknown (known: " + joined(known) + ")";
  std::string note = missing_backend_note(name);
  throw Error(Status::backend_unavailable, note.empty() ? message : message + "; " + note);
}

std::pair<std::string, std::string> choose_backend(const Manifest& manifest, const BackendOptions& options,
                                                   const std::string& package) {
  const std::string name = options.backend.empty() ? "auto" : options.backend;
  const std::string precision = options.precision.empty() ? "auto" : options.precision;
  if (precision != "auto") {
    if (std::find(known_precisions.begin(), known_precisions.end(), precision) == known_precisions.end()) {
      throw Error(Status::invalid_argument,
                  "precision '" + precision + "' is unknown (known: auto, " + joined(known_precisions) + ")");
    }
    manifest.variant(precision, package);  // a clear error when the package lacks it
  }

  // Candidates in registration order (TensorRT first, as in Python's AUTO_ORDER), with why the others cannot run.
  std::vector<const BackendKind*> candidates;
  std::vector<std::string> reasons;
  if (name == "auto") {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    for (const auto& kind : r.kinds) {
      std::string why = unavailable_reason(kind);
      if (why.empty()) {
        candidates.push_back(&kind);
      } else {
        reasons.push_back(kind.name + ": " + why);
      }
    }
    if (candidates.empty()) {
      bool has_tensorrt = false;
      for (const auto& kind : r.kinds) has_tensorrt = has_tensorrt || kind.name == "tensorrt";
      if (!has_tensorrt) reasons.push_back(missing_backend_note("tensorrt"));
      reasons.push_back(missing_backend_note("onnxruntime"));
      std::string message = "no inference backend is available";
      for (const auto& reason : reasons) message += "; " + reason;
      throw Error(Status::backend_unavailable, message);
    }
  } else {
    const BackendKind& kind = backend_kind(name);
    if (precision != "auto" &&
        std::find(kind.precisions.begin(), kind.precisions.end(), precision) == kind.precisions.end()) {
      throw Error(Status::backend_unavailable, "the " + name + " backend does not run the '" + precision +
                                                   "' variant (it runs " + joined(kind.precisions) + ")");
    }
    std::string why = unavailable_reason(kind);
    if (!why.empty()) throw Error(Status::backend_unavailable, "backend '" + name + "' cannot be used here: " + why);
    candidates.push_back(&kind);
  }

  for (const BackendKind* kind : candidates) {
    for (const auto& runs : kind->precisions) {  // fastest first
      if (precision != "auto" && runs != precision) continue;
      for (const auto& variant : manifest.variants) {
        if (variant.precision == runs) return {kind->name, runs};
      }
    }
  }
  std::vector<std::string> names, variants;
  for (const BackendKind* kind : candidates) names.push_back(kind->name);
  for (const auto& variant : manifest.variants) variants.push_back(variant.precision);
  std::string wanted =
      precision != "auto" ? "the '" + precision + "' variant" : "its variants (" + joined(variants) + ")";
  throw Error(Status::backend_unavailable,
              (package.empty() ? "" : package + ": ") + "no available backend (" + joined(names) + ") runs " + wanted);
}

}  // namespace dgs

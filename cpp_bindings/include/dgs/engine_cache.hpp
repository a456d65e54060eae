// The TensorRT engine cache shared with dgs_sdk/engine_cache.py: the same folder, key recipe, file names,
// sidecars and locks (see that module's docstring), so an engine built by `dgs engine` serves C++ and the
// other way round.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace dgs {

struct BatchProfile {
  int min = 1, opt = 32, max = 32;
  std::string str() const;  // "1:32:32"
};

struct EngineKey {
  std::string tensorrt;            // "10.3.0"
  std::string gpu;                 // "Orin"
  std::string compute_capability;  // "8.7"
  std::string cuda;                // "12.6"
  std::string onnx_sha256;
  std::string precision;
  BatchProfile profile;
  int workspace_mib = 0;

  std::string canonical_json() const;  // the key fields as the recipe writes them
  std::string digest() const;          // sha256 of canonical_json(), lowercase hex
  std::string file_stem() const;
  std::string timing_cache_stem() const;
};

// $DGS_CACHE_DIR, else $XDG_CACHE_HOME/dgs (when absolute), else ~/.cache/dgs.
std::string cache_dir();

class EngineCache {
 public:
  explicit EngineCache(std::string root = "");  // empty: cache_dir()
  std::string folder() const;                   // <root>/engines
  std::string plan_path(const EngineKey& key) const;
  std::string sidecar_path(const EngineKey& key) const;
  std::string timing_cache_path(const EngineKey& key) const;
  // The cached plan of `key`: there only when its sidecar names the key and matches the plan's size and sha256.
  std::optional<std::vector<char>> load(const EngineKey& key) const;
  // Writes the plan, then its sidecar, each under a temporary name renamed into place.
  void store(const EngineKey& key, const std::vector<char>& plan, const std::string& package,
             double build_seconds) const;

  // An exclusive lock on locks/<name>.lock (flock, as Python's filelock takes it), released on destruction.
  class Lock {
   public:
    Lock(const std::string& path);
    ~Lock();
    Lock(const Lock&) = delete;
    Lock& operator=(const Lock&) = delete;

   private:
    int fd_ = -1;
  };
  std::string lock_path(const std::string& name) const;
};

}  // namespace dgs

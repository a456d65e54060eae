// The TensorRT engine cache shared with dgs_sdk/engine_cache.py: the same folder, key recipe, file names,
// sidecars and locks (see that module's docstring), so an engine built by `dgs engine` serves C++ and the
// other way round.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace dgs {

// The version of the key recipe (dgs_sdk.engine_cache.CACHE_FORMAT).
inline constexpr int engine_cache_format = 1;

struct BatchProfile {
  int min = 1, opt = 32, max = 32;
  std::string str() const;  // "1:32:32"
  // "MIN:OPT:MAX" or one number N for N:N:N, each at least 1 with min <= opt <= max; Error(invalid_argument).
  static BatchProfile parse(const std::string& text);
  bool operator==(const BatchProfile& other) const { return min == other.min && opt == other.opt && max == other.max; }
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
  // Whether `other` names an engine of the same graph, precision, GPU, TensorRT and CUDA, whatever its profile
  // and workspace.
  bool same_target(const EngineKey& other) const;
};

// The canonical JSON of the recipe for any JSON text (sorted keys, no spaces, \uXXXX escapes), as Python's
// json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True). Error(invalid_argument) when
// `json_text` is not JSON.
std::string canonical_json(const std::string& json_text);

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
  // Removes the engine of `key`: its sidecar first (so that it stops counting), then its plan.
  void remove(const EngineKey& key) const;
  // The key of the newest cached engine of the same target as `key` (same_target), with that engine's profile
  // and workspace: an engine `dgs engine` built ahead of time with its own --batch.
  std::optional<EngineKey> find_for_target(const EngineKey& key) const;
  // The builder's timing cache of `key`'s TensorRT version and GPU (empty when there is none), and its
  // replacement, written atomically under its own lock (a failure to write it only costs time: not thrown).
  std::vector<char> read_timing_cache(const EngineKey& key) const;
  void store_timing_cache(const EngineKey& key, const std::vector<char>& data) const;
  // The engine of `key`, as dgs_sdk.engine_cache.EngineCache.get_or_build: `load(plan)` deserialises a plan
  // and returns false when the runtime refuses it (then it is removed and built again); `build()` makes a new
  // plan, under the key's lock after looking again (a process that waited for another's build uses its plan).
  // Returns whether the engine was built now. Error(io) when the cache cannot be written, Error(inference)
  // when the runtime refuses the plan it has just built.
  bool get_or_build(const EngineKey& key, const std::function<bool(const std::vector<char>&)>& load,
                    const std::function<std::vector<char>()>& build, const std::string& package) const;

  // An exclusive lock on locks/<name>.lock (flock, as Python's filelock takes it), released on destruction.
  class Lock {
   public:
    explicit Lock(const std::string& path);  // waits for it; Error(io) when the file cannot be made
    ~Lock();
    Lock(const Lock&) = delete;
    Lock& operator=(const Lock&) = delete;

   private:
    int fd_ = -1;
  };
  std::string lock_path(const std::string& name) const;

 private:
  std::string root_;
};

}  // namespace dgs

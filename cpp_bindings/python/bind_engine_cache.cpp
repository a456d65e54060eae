// dgs_native's view of the engine cache: the key recipe, the cache folder, and reading, writing and locking
// engines as libdgs does, so that tests check C++ against dgs_sdk.engine_cache on the same files.
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <memory>

#include "bindings.hpp"
#include "dgs/engine_cache.hpp"
#include "dgs/error.hpp"

namespace nb = nanobind;

namespace {

std::string text_field(const nb::dict& fields, const char* name) {
  if (!fields.contains(name)) throw dgs::Error(dgs::Status::invalid_argument, std::string("engine key: no field ") + name);
  nb::handle value = fields[name];
  if (!nb::isinstance<nb::str>(value)) {
    throw dgs::Error(dgs::Status::invalid_argument, std::string("engine key: field ") + name + " is not a string");
  }
  return nb::cast<std::string>(value);
}

int int_field(const nb::dict& fields, const char* name) {
  if (!fields.contains(name)) throw dgs::Error(dgs::Status::invalid_argument, std::string("engine key: no field ") + name);
  nb::handle value = fields[name];
  if (!nb::isinstance<nb::int_>(value) || nb::isinstance<nb::bool_>(value)) {
    throw dgs::Error(dgs::Status::invalid_argument, std::string("engine key: field ") + name + " is not an integer");
  }
  return nb::cast<int>(value);
}

// An EngineKey from the fields dgs_sdk.engine_cache.EngineKey.fields() gives.
dgs::EngineKey key_from(const nb::dict& fields) {
  if (fields.contains("cache_format") && int_field(fields, "cache_format") != dgs::engine_cache_format) {
    throw dgs::Error(dgs::Status::invalid_argument, "engine key: cache_format is not " +
                                                        std::to_string(dgs::engine_cache_format));
  }
  dgs::EngineKey key;
  key.tensorrt = text_field(fields, "tensorrt");
  key.gpu = text_field(fields, "gpu");
  key.compute_capability = text_field(fields, "compute_capability");
  key.cuda = text_field(fields, "cuda");
  key.onnx_sha256 = text_field(fields, "onnx_sha256");
  key.precision = text_field(fields, "precision");
  key.profile = dgs::BatchProfile::parse(text_field(fields, "profile"));
  key.workspace_mib = int_field(fields, "workspace_mib");
  return key;
}

// The key fields as a dict: the canonical JSON the key's digest is computed from, read back.
nb::dict fields_of(const dgs::EngineKey& key) {
  return nb::cast<nb::dict>(nb::module_::import_("json").attr("loads")(key.canonical_json()));
}

// The engine cache's lock, held from construction until release() (or the end of a with block).
class EngineLock {
 public:
  explicit EngineLock(const std::string& path) {
    nb::gil_scoped_release unlocked;  // it may wait for another process
    lock_ = std::make_unique<dgs::EngineCache::Lock>(path);
  }
  void release() { lock_.reset(); }
  bool held() const { return lock_ != nullptr; }

 private:
  std::unique_ptr<dgs::EngineCache::Lock> lock_;
};

}  // namespace

void dgs::python::bind_engine_cache(nb::module_& m) {
  m.def(
      "engine_key",
      [](const nb::dict& fields) {
        dgs::EngineKey key = key_from(fields);
        nb::dict out;
        out["canonical_json"] = key.canonical_json();
        out["digest"] = key.digest();
        out["file_stem"] = key.file_stem();
        out["timing_cache_stem"] = key.timing_cache_stem();
        return out;
      },
      nb::arg("fields"),
      "The key of an engine from its fields (as dgs_sdk.engine_cache.EngineKey.fields() gives them): a dict of "
      "canonical_json, digest, file_stem and timing_cache_stem.");
  m.def("canonical_json", [](const std::string& json_text) { return dgs::canonical_json(json_text); },
        nb::arg("json_text"), "Any JSON text written as the key recipe writes its fields.");
  m.def("cache_dir", &dgs::cache_dir, "dgs's cache folder: $DGS_CACHE_DIR, $XDG_CACHE_HOME/dgs or ~/.cache/dgs.");
  m.def(
      "cache_load",
      [](const std::string& root, const nb::dict& fields) -> std::optional<nb::bytes> {
        dgs::EngineKey key = key_from(fields);
        std::optional<std::vector<char>> plan;
        {
          nb::gil_scoped_release unlocked;
          plan = dgs::EngineCache(root).load(key);
        }
        if (!plan) return std::nullopt;
        return nb::bytes(plan->data(), plan->size());
      },
      nb::arg("root"), nb::arg("fields"),
      "The cached plan of the key `fields` in the cache folder `root`, or None when it is not cached whole.");
  m.def(
      "cache_store",
      [](const std::string& root, const nb::dict& fields, const nb::bytes& plan, const std::string& package,
         double build_seconds) {
        dgs::EngineKey key = key_from(fields);
        std::vector<char> data(plan.c_str(), plan.c_str() + plan.size());
        dgs::EngineCache cache(root);
        {
          nb::gil_scoped_release unlocked;
          cache.store(key, data, package, build_seconds);
        }
        return cache.plan_path(key);
      },
      nb::arg("root"), nb::arg("fields"), nb::arg("plan"), nb::arg("package"), nb::arg("build_seconds"),
      "Writes a plan and its sidecar into the cache folder `root`; returns the plan's path.");
  m.def(
      "cache_find_for_target",
      [](const std::string& root, const nb::dict& fields) -> std::optional<nb::dict> {
        auto found = dgs::EngineCache(root).find_for_target(key_from(fields));
        if (!found) return std::nullopt;
        return fields_of(*found);
      },
      nb::arg("root"), nb::arg("fields"),
      "The fields of the newest cached engine of the same target as `fields`, whatever its profile and workspace.");
  m.def(
      "cache_lock_path", [](const std::string& root, const std::string& name) { return dgs::EngineCache(root).lock_path(name); },
      nb::arg("root"), nb::arg("name"), "The lock file of `name` (a key's digest) in the cache folder `root`.");
  nb::class_<EngineLock>(m, "EngineLock", "The engine cache's exclusive lock on a lock file (flock), as libdgs takes it.")
      .def(nb::init<const std::string&>(), nb::arg("path"), "Waits until the lock is held.")
      .def("release", &EngineLock::release)
      .def_prop_ro("held", &EngineLock::held)
      .def("__enter__", [](EngineLock& lock) -> EngineLock& { return lock; }, nb::rv_policy::reference)
      .def("__exit__", [](EngineLock& lock, nb::args) { lock.release(); });
}

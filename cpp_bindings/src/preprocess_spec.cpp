// PreprocessSpec::validate and from_json: the conditions and wording of PreprocessSpec.__post_init__ and
// from_dict. A spec comes from model packages, which are untrusted: types are exact (size "224" or true is
// refused, not converted) and every value is bounded.
#include "preprocess_spec.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "dgs/error.hpp"
#include "dgs/limits.hpp"

namespace dgs {
namespace {

using json::Json;

constexpr int min_input_size = 16;
constexpr int min_patch_size = 8;
constexpr double min_std = 1e-3;

bool is_real(const Json& value) { return json::is_integer(value) || json::is_float(value); }

// Three finite numbers in [low, high] (Python's _triple), as doubles.
std::array<double, 3> triple(const Json& values, const std::string& name, double low, double high) {
  if (!values.is_array() || values.size() != 3) {
    throw json::Invalid("preprocess " + name + " must be a list of 3 numbers, got " + json::repr(values));
  }
  std::array<double, 3> out{};
  for (std::size_t i = 0; i < 3; ++i) {
    double value = is_real(values[i]) ? json::to_double(values[i]) : std::nan("");
    if (!(value >= low && value <= high && std::isfinite(value))) {
      throw json::Invalid("preprocess " + name + " must be 3 finite numbers from " + json::repr_float(low) + " to " +
                          json::repr_float(high) + ", got " + json::repr(values));
    }
    out[i] = value;
  }
  return out;
}

// An integer in [low, high] (a big integer never is), else nothing.
bool bounded_int(const Json& value, long long low, long long high, int& out) {
  if (!value.is_number_integer()) return false;
  if (value.is_number_unsigned() && value.get<std::uint64_t>() > static_cast<std::uint64_t>(high)) return false;
  long long v = value.get<long long>();
  if (v < low || v > high) return false;
  out = static_cast<int>(v);
  return true;
}

// The checks of __post_init__, in its order, on the fields as given.
PreprocessSpec check(const Json& transform, const Json& size, const Json& mean, const Json& std_, const Json& patch_size,
                     const Json& interpolation, const Json& small_images) {
  PreprocessSpec spec;
  spec.mean = triple(mean, "mean", 0.0, 1.0);
  spec.std = triple(std_, "std", min_std, 1.0);
  if (!transform.is_string() || (transform != "clip" && transform != "patch-select")) {
    throw json::Invalid("preprocess transform " + json::repr(transform) +
                        " is unknown (expected one of ('clip', 'patch-select'))");
  }
  spec.transform = transform.get<std::string>();
  if (!bounded_int(size, min_input_size, limits::max_input_size, spec.size)) {
    throw json::Invalid("preprocess size must be an integer from " + std::to_string(min_input_size) + " to " +
                        std::to_string(limits::max_input_size) + ", got " + json::repr(size));
  }
  bool patch_int = patch_size.is_number_integer() || json::is_big_integer(patch_size);
  bool patch_ok = patch_int && !json::is_big_integer(patch_size) &&
                  (patch_size.is_number_unsigned() ? patch_size.get<std::uint64_t>() >= min_patch_size
                                                   : patch_size.get<long long>() >= min_patch_size);
  bool patch_big = json::is_big_integer(patch_size) ? json::big_integer_text(patch_size)[0] != '-' : false;
  if (!(patch_ok || patch_big)) {
    throw json::Invalid("preprocess patch_size must be an integer of at least " + std::to_string(min_patch_size) +
                        ", got " + json::repr(patch_size));
  }
  // A patch larger than any input cannot divide a size; it is kept as a large int for the checks that follow.
  long long patch = patch_big || (patch_size.is_number_unsigned() &&
                                  patch_size.get<std::uint64_t>() > 1'000'000'000ULL)
                        ? 1'000'000'000LL
                        : patch_size.get<long long>();
  if (!(interpolation.is_string() && interpolation == "bicubic")) {
    throw json::Invalid("preprocess interpolation " + json::repr(interpolation) + " is unknown (expected 'bicubic')");
  }
  spec.interpolation = "bicubic";
  if (spec.transform == "patch-select" && spec.size % patch) {
    throw json::Invalid("patch-select size " + std::to_string(spec.size) + " is not a multiple of patch_size " +
                        (patch_big ? json::big_integer_text(patch_size) : patch_size.dump()));
  }
  spec.patch_size = static_cast<int>(std::min<long long>(patch, 1'000'000'000LL));
  if (!small_images.is_string() || (small_images != "resize" && small_images != "pad")) {
    throw json::Invalid("preprocess small_images " + json::repr(small_images, 60) +
                        " is unknown (expected one of ('resize', 'pad'))");
  }
  spec.small_images = small_images.get<std::string>();
  if (spec.transform != "patch-select" && spec.small_images != "resize") {
    throw json::Invalid("preprocess small_images " + json::repr(small_images) + " applies to patch-select only, not to " +
                        spec.transform);
  }
  return spec;
}

Json triple_json(const std::array<double, 3>& values) { return Json::array({values[0], values[1], values[2]}); }

}  // namespace

PreprocessSpec preprocess_spec_from_json(const Json& d) {
  if (!d.is_object()) throw json::Invalid("preprocess spec is not an object, got " + json::repr(d, 60));
  static const char* const known[] = {"interpolation", "mean", "patch_size", "size", "small_images", "std",
                                      "transform"};
  std::vector<std::string> unknown;
  for (const auto& [key, value] : d.items()) {
    bool found = false;
    for (const char* name : known) found = found || key == name;
    if (!found) unknown.push_back(key);
  }
  if (!unknown.empty()) {
    std::sort(unknown.begin(), unknown.end());
    std::string list;
    for (const auto& key : unknown) list += (list.empty() ? "" : ", ") + json::repr_string(key);
    throw json::Invalid("preprocess spec has unknown keys [" + list +
                        "] (known: ['interpolation', 'mean', 'patch_size', 'size', 'small_images', 'std', "
                        "'transform'])");
  }
  if (!d.contains("transform")) throw json::Invalid("preprocess spec has no 'transform'");
  PreprocessSpec defaults;
  auto field = [&](const char* key, Json fallback) { return d.contains(key) ? d.at(key) : fallback; };
  return check(d.at("transform"), field("size", defaults.size), field("mean", triple_json(defaults.mean)),
               field("std", triple_json(defaults.std)), field("patch_size", defaults.patch_size),
               field("interpolation", defaults.interpolation), field("small_images", defaults.small_images));
}

Json preprocess_spec_to_json(const PreprocessSpec& spec) {
  Json d = Json::object();
  d["transform"] = spec.transform;
  d["size"] = spec.size;
  d["mean"] = triple_json(spec.mean);
  d["std"] = triple_json(spec.std);
  if (spec.transform == "patch-select") d["patch_size"] = spec.patch_size;
  d["interpolation"] = spec.interpolation;
  if (spec.transform == "patch-select") d["small_images"] = spec.small_images;
  return d;
}

void PreprocessSpec::validate() const {
  try {
    check(Json(transform), Json(size), triple_json(mean), triple_json(std), Json(patch_size), Json(interpolation),
          Json(small_images));
  } catch (const json::Invalid& e) {
    throw Error(Status::invalid_argument, e.what());
  }
}

PreprocessSpec PreprocessSpec::from_json(const std::string& json_text) {
  json::Json document;
  try {
    document = json::parse(json_text);
  } catch (const json::Invalid& e) {
    throw Error(Status::invalid_argument, std::string("preprocess spec is not JSON: ") + e.what());
  }
  try {
    return preprocess_spec_from_json(document);
  } catch (const json::Invalid& e) {
    throw Error(Status::invalid_argument, e.what());
  }
}

}  // namespace dgs

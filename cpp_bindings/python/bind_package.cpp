// dgs_native.read_manifest and load_package: the C++ package reader, its manifest as a dict shaped like
// dgs_sdk's Manifest.to_dict() (variants as {precision: file}).
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <optional>

#include "bindings.hpp"
#include "dgs/package.hpp"
#include "preprocess_spec.hpp"

namespace nb = nanobind;

namespace {

nb::object from_json(const dgs::json::Json& value) {
  if (value.is_string()) return nb::str(value.get<std::string>().c_str());
  if (value.is_boolean()) return nb::bool_(value.get<bool>());
  if (value.is_number_float()) return nb::float_(value.get<double>());
  if (value.is_number_unsigned()) return nb::int_(value.get<std::uint64_t>());
  if (value.is_number_integer()) return nb::int_(value.get<std::int64_t>());
  if (value.is_array()) {
    nb::list out;
    for (const auto& item : value) out.append(from_json(item));
    return out;
  }
  if (value.is_object()) {
    nb::dict out;
    for (const auto& [key, item] : value.items()) out[key.c_str()] = from_json(item);
    return out;
  }
  return nb::none();
}

nb::dict manifest_dict(const dgs::Manifest& m) {
  nb::dict out;
  out["format_version"] = m.format_version;
  out["preprocess"] = from_json(dgs::preprocess_spec_to_json(m.preprocess));
  nb::dict variants;
  for (const auto& v : m.variants) variants[v.precision.c_str()] = v.file;
  out["variants"] = variants;
  out["threshold"] = m.threshold;
  out["threshold_source"] = m.threshold_source;
  out["input_name"] = m.input_name;
  out["output_name"] = m.output_name;
  nb::dict files;
  for (const auto& [member, entry] : m.files) {
    nb::dict meta;
    meta["sha256"] = entry.sha256;
    meta["size"] = entry.size;
    files[member.c_str()] = meta;
  }
  out["files"] = files;
  out["created"] = m.created;
  return out;
}

}  // namespace

void dgs::python::bind_package(nb::module_& m) {
  m.def(
      "read_manifest",
      [](const std::string& path) {
        dgs::Manifest manifest;
        {
          nb::gil_scoped_release released;
          manifest = dgs::read_manifest(path);
        }
        return manifest_dict(manifest);
      },
      nb::arg("path"), "The validated manifest of the package at `path` (its members' sizes checked, not read).");
  m.def(
      "load_package",
      [](const std::string& path, const std::string& precision) {
        std::optional<dgs::ModelPackage> package;
        {
          nb::gil_scoped_release released;
          package = dgs::ModelPackage::load(path, precision);
        }
        nb::dict out = manifest_dict(package->manifest());
        out["precision"] = package->precision();
        out["model_sha256"] = package->model_sha256();
        out["batch"] = package->graph().batch ? nb::object(nb::int_(*package->graph().batch)) : nb::none();
        return out;
      },
      nb::arg("path"), nb::arg("precision") = "",
      "Load and verify the package at `path` (every member's sha256, the ONNX graph of variant `precision`, the "
      "default one when empty).");
}

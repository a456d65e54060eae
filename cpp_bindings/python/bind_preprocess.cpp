// dgs_native's decoding and preprocessing: numpy arrays in and out, the C++ work done without the GIL.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>

#include "bindings.hpp"
#include "dgs/error.hpp"
#include "dgs/preprocess.hpp"

namespace nb = nanobind;

namespace {

using RgbArray = nb::ndarray<const std::uint8_t, nb::shape<-1, -1, 3>, nb::c_contig, nb::device::cpu>;

// The spec as PreprocessSpec.to_dict() writes it (json.dumps). Only the fields are read here: whether their values
// make sense is PreprocessSpec::validate's concern.
dgs::PreprocessSpec parse_spec(const std::string& text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw dgs::Error(dgs::Status::invalid_argument, std::string("preprocess spec is not JSON: ") + e.what());
  }
  if (!j.is_object()) throw dgs::Error(dgs::Status::invalid_argument, "preprocess spec must be a JSON object");
  dgs::PreprocessSpec spec;
  auto field = [&](const char* key, auto& value) {
    if (!j.contains(key)) return;
    try {
      j.at(key).get_to(value);
    } catch (const nlohmann::json::exception&) {
      throw dgs::Error(dgs::Status::invalid_argument, std::string("preprocess ") + key + " has the wrong type: " +
                                                          j.at(key).dump());
    }
  };
  for (const auto& item : j.items()) {
    static const char* known[] = {"transform", "size", "mean", "std", "patch_size", "interpolation", "small_images"};
    bool found = false;
    for (const char* k : known) found = found || item.key() == k;
    if (!found) throw dgs::Error(dgs::Status::invalid_argument, "preprocess spec has unknown key '" + item.key() + "'");
  }
  if (!j.contains("transform")) throw dgs::Error(dgs::Status::invalid_argument, "preprocess spec has no 'transform'");
  field("transform", spec.transform);
  field("size", spec.size);
  field("mean", spec.mean);
  field("std", spec.std);
  field("patch_size", spec.patch_size);
  field("interpolation", spec.interpolation);
  field("small_images", spec.small_images);
  return spec;
}

// A header over the caller's array (no copy); the array outlives the call.
cv::Mat view(const RgbArray& image) {
  return cv::Mat(static_cast<int>(image.shape(0)), static_cast<int>(image.shape(1)), CV_8UC3,
                 const_cast<std::uint8_t*>(image.data()));
}

// A numpy array that owns `data` (moved into a capsule).
template <typename T, typename Owner>
nb::ndarray<nb::numpy, T> to_numpy(std::unique_ptr<Owner> owner, T* data, std::initializer_list<std::size_t> shape) {
  nb::capsule capsule(owner.get(), [](void* p) noexcept { delete static_cast<Owner*>(p); });
  owner.release();
  return nb::ndarray<nb::numpy, T>(data, shape, capsule);
}

nb::ndarray<nb::numpy, std::uint8_t> rgb_to_numpy(cv::Mat rgb) {
  if (!rgb.isContinuous()) rgb = rgb.clone();
  auto owner = std::make_unique<cv::Mat>(rgb);
  std::uint8_t* data = owner->data;
  const auto h = static_cast<std::size_t>(owner->rows), w = static_cast<std::size_t>(owner->cols);
  return to_numpy(std::move(owner), data, {h, w, 3});
}

}  // namespace

void dgs::python::bind_preprocess(nb::module_& m) {
  m.def("opencv_version", [] { return std::string(CV_VERSION); }, "The OpenCV version the native core was built with.");

  m.def(
      "patch_entropies",
      [](RgbArray image, int patch_size) {
        auto entropies = std::make_unique<std::vector<double>>();
        {
          nb::gil_scoped_release release;
          *entropies = dgs::patch_entropies(view(image), patch_size);
        }
        double* data = entropies->data();
        const std::size_t n = entropies->size();
        return to_numpy(std::move(entropies), data, {n});
      },
      nb::arg("image"), nb::arg("patch_size"),
      "Spectral entropies (bits) of the row-major patch_size patches of an RGB uint8 image's top-left "
      "multiple-of-patch region, as dgs_sdk.preprocess.spectral_entropy gives them.");

  m.def(
      "crop_image",
      [](RgbArray image, const std::string& spec_json) {
        const dgs::PreprocessSpec spec = parse_spec(spec_json);
        cv::Mat crop;
        {
          nb::gil_scoped_release release;
          crop = dgs::crop_image(view(image), spec).clone();  // a crop may be a view of the caller's array
        }
        return rgb_to_numpy(crop);
      },
      nb::arg("image"), nb::arg("spec_json"),
      "The geometric part of a spec (json.dumps(PreprocessSpec.to_dict())): a [S, S, 3] uint8 image.");

  m.def(
      "preprocess",
      [](RgbArray image, const std::string& spec_json) {
        const dgs::PreprocessSpec spec = parse_spec(spec_json);
        const auto s = static_cast<std::size_t>(spec.size);
        auto tensor = std::make_unique<std::vector<float>>();
        {
          nb::gil_scoped_release release;
          const cv::Mat crop = dgs::crop_image(view(image), spec);
          tensor->resize(3 * s * s);
          dgs::normalize(crop, spec, tensor->data());
        }
        float* data = tensor->data();
        return to_numpy(std::move(tensor), data, {3, s, s});
      },
      nb::arg("image"), nb::arg("spec_json"), "One RGB uint8 image to a model input [3, S, S] float32.");

  m.def(
      "decode_file",
      [](const std::string& path) {
        cv::Mat rgb;
        {
          nb::gil_scoped_release release;
          rgb = dgs::decode_file(path);
        }
        return rgb_to_numpy(rgb);
      },
      nb::arg("path"), "Decode an image file into 8-bit RGB [H, W, 3].");

  m.def(
      "decode_bytes",
      [](nb::bytes data, const std::string& name) {
        const auto* bytes = static_cast<const std::uint8_t*>(data.data());
        const std::size_t size = data.size();
        cv::Mat rgb;
        {
          nb::gil_scoped_release release;
          rgb = dgs::decode_bytes(bytes, size, name);
        }
        return rgb_to_numpy(rgb);
      },
      nb::arg("data"), nb::arg("name") = "<bytes>", "Decode an encoded image into 8-bit RGB [H, W, 3].");
}

// dgs_native's decoding and preprocessing: numpy arrays in and out, the C++ work done without the GIL.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <climits>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <opencv2/core.hpp>
#include <opencv2/core/utility.hpp>

#include "bindings.hpp"
#include "dgs/error.hpp"
#include "dgs/preprocess.hpp"

namespace nb = nanobind;

namespace {

using RgbArray = nb::ndarray<const std::uint8_t, nb::shape<-1, -1, 3>, nb::c_contig, nb::device::cpu>;

// A header over the caller's array (no copy); the array outlives the call.
cv::Mat view(const RgbArray& image) {
  if (image.shape(0) > static_cast<std::size_t>(INT_MAX) || image.shape(1) > static_cast<std::size_t>(INT_MAX)) {
    throw dgs::Error(dgs::Status::image_too_large, "an image of " + std::to_string(image.shape(1)) + "x" +
                                                       std::to_string(image.shape(0)) + " pixels is too large");
  }
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
      "set_num_threads", [](int n) { cv::setNumThreads(n); }, nb::arg("n"),
      "Threads the native core's OpenCV shares a large image's patch entropies among (cv::setNumThreads): 1 "
      "keeps the work on the calling thread; a negative number restores OpenCV's default.");
  m.def("num_threads", &cv::getNumThreads, "Threads the native core's OpenCV uses (cv::getNumThreads).");

  m.def(
      "crop_image",
      [](RgbArray image, const std::string& spec_json) {
        const dgs::PreprocessSpec spec = dgs::PreprocessSpec::from_json(spec_json);
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
        const dgs::PreprocessSpec spec = dgs::PreprocessSpec::from_json(spec_json);
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

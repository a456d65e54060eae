// Decoding and preprocessing, mirroring dgs_sdk/image.py and dgs_sdk/preprocess.py (the one definition; see
// its docstring). Images are 8-bit RGB cv::Mat (CV_8UC3, RGB order, not OpenCV's BGR).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

namespace dgs {

struct PreprocessSpec {
  std::string transform = "clip";  // "clip" or "patch-select"
  int size = 224;
  std::array<double, 3> mean{0.48145466, 0.4578275, 0.40821073};
  std::array<double, 3> std{0.26862954, 0.26130258, 0.27577711};
  int patch_size = 32;              // patch-select only
  std::string interpolation = "bicubic";
  std::string small_images = "resize";  // patch-select only: "resize" or "pad"

  int grid() const { return size / patch_size; }
  // Throws Error(invalid_argument) with the same conditions and wording as PreprocessSpec.__post_init__.
  void validate() const;
  // The manifest's "preprocess" object as JSON text; unknown keys and wrong types are errors, as in Python.
  static PreprocessSpec from_json(const std::string& json_text);
};

class MemoryBudget;
class Reservation;

// Decoding: 8-bit RGB, EXIF orientation ignored, 16-bit scaled with rounding, grey replicated, alpha dropped.
// What decoding may cost is bounded before any pixel is decoded (file size, then each format's structure, pixels
// and decoded bytes as its header declares them; dgs/limits.hpp); errors name `name` (or the path). Each decode
// waits for its share of `budget` (dgs/memory_budget.hpp; the process's default_decode_budget() when null).
cv::Mat decode_file(const std::string& path, MemoryBudget* budget = nullptr);
cv::Mat decode_bytes(const std::uint8_t* data, std::size_t size, const std::string& name,
                     MemoryBudget* budget = nullptr);
// The same, growing the caller's `reservation`, which keeps holding the share after the call: while the caller
// works on the image (preprocessing it), other decodes wait for the memory it takes. With a `confine_root` (a real
// path, such as the folder being scanned), a file whose opened real path lies outside it is refused: a symbolic
// link swapped in after the folder was listed is not followed out of it.
cv::Mat decode_file(const std::string& path, Reservation& reservation, const std::string& confine_root = "");
cv::Mat decode_bytes(const std::uint8_t* data, std::size_t size, const std::string& name, Reservation& reservation);
// A caller's buffer of 8-bit RGB pixels (`stride` bytes per row, 0 = width * 3), copied.
cv::Mat rgb_image(const std::uint8_t* data, int width, int height, std::size_t stride, const std::string& name);

// Geometry, as dgs_sdk.preprocess: shortest side to `size` (bicubic, torchvision's truncation), centre crop.
cv::Mat resize_shortest_side(const cv::Mat& rgb, int size);
cv::Mat center_crop(const cv::Mat& rgb, int size);
// Spectral entropy (bits) of every patch_size x patch_size patch of the top-left multiple-of-patch region,
// row-major; grey = (0.299 R + 0.587 G + 0.114 B) / 255 in double, cv::dft in double.
std::vector<double> patch_entropies(const cv::Mat& rgb, int patch_size);
// DGS-Net's patch selection into a size x size x 3 mosaic (no training shuffle); follows spec.small_images.
cv::Mat select_patches(const cv::Mat& rgb, const PreprocessSpec& spec);
// The geometric part of `spec`: a size x size x 3 uint8 image.
cv::Mat crop_image(const cv::Mat& rgb, const PreprocessSpec& spec);
// (x / 255 - mean) / std, HWC uint8 to CHW float32 written at `out` (3 * size * size floats).
void normalize(const cv::Mat& crop, const PreprocessSpec& spec, float* out);

}  // namespace dgs

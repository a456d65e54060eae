// Preprocessing, mirroring dgs_sdk/preprocess.py: the same geometry, the same spectral entropies (to about 1e-13
// bits), the same ranking and mosaic, and the same float32 arithmetic for normalisation, so that a crop needing no
// resize gives Python's model input bit for bit.
#include "dgs/preprocess.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include <opencv2/core/utility.hpp>
#include <opencv2/imgproc.hpp>

#include "dgs/error.hpp"
#include "dgs/limits.hpp"
#include "preprocess_detail.hpp"

namespace dgs {
namespace {

// The 1e-12 guards of spectral_entropy: the total power (an all-black patch has none) and each bin's log.
constexpr double eps = 1e-12;
constexpr double ln2 = 0.69314718055994530942;
// Entropies are ranked rounded to a micro-bit (ENTROPY_DECIMALS = 6), as np.round(x, 6) rounds: x * 1e6 to the
// nearest integer, halves to even, then / 1e6.
constexpr double entropy_scale = 1e6;
// Patches per batch of DFTs: the packed rows, the columns, the powers and logs of 8 patches of 32x32 (about 24 KB
// each) stay in the L2 cache, and memory stays flat on huge images. 4 to 32 measured within noise of each other
// on 1024x1024 photos.
constexpr int patches_per_chunk = 8;
// Images with fewer patches are done on the calling thread (a 224x224 mosaic-sized image has 49).
constexpr std::int64_t min_patches_to_share = 256;
// dgs_sdk's GRAY_WEIGHTS / 255.
constexpr double gray_weight_r = 0.299 / 255.0, gray_weight_g = 0.587 / 255.0, gray_weight_b = 0.114 / 255.0;

std::string dims(int width, int height) { return std::to_string(width) + "x" + std::to_string(height); }

void check_rgb(const cv::Mat& rgb, const char* what) {
  if (rgb.empty() || rgb.type() != CV_8UC3 || rgb.dims != 2) {
    throw Error(Status::invalid_argument, std::string(what) + ": expected a non-empty 8-bit 3-channel image");
  }
}

// Cheap guards against a spec that would index out of bounds; the full check is PreprocessSpec::validate.
void check_spec(const PreprocessSpec& spec) {
  if (spec.size < 1 || spec.size > limits::max_input_size) {
    throw Error(Status::invalid_argument, "preprocess size must be an integer from 1 to " +
                                              std::to_string(limits::max_input_size) + ", got " +
                                              std::to_string(spec.size));
  }
  if (spec.transform == "patch-select" && (spec.patch_size < 1 || spec.size % spec.patch_size != 0)) {
    throw Error(Status::invalid_argument, "patch-select size " + std::to_string(spec.size) +
                                              " is not a multiple of patch_size " + std::to_string(spec.patch_size));
  }
  if (spec.transform != "clip" && spec.transform != "patch-select") {
    throw Error(Status::invalid_argument, "preprocess transform '" + spec.transform + "' is unknown");
  }
}

// Sums with four accumulators: a single one waits on each addition's latency (about a third of the entropy
// time); the order of the additions moves results by rounding only (~1e-16 relative).
double sum(const double* x, int n) {
  double a[4] = {0.0, 0.0, 0.0, 0.0};
  int i = 0;
  for (; i + 4 <= n; i += 4) {
    a[0] += x[i];
    a[1] += x[i + 1];
    a[2] += x[i + 2];
    a[3] += x[i + 3];
  }
  for (; i < n; ++i) a[0] += x[i];
  return (a[0] + a[1]) + (a[2] + a[3]);
}

double dot(const double* x, const double* y, int n) {
  double a[4] = {0.0, 0.0, 0.0, 0.0};
  int i = 0;
  for (; i + 4 <= n; i += 4) {
    a[0] += x[i] * y[i];
    a[1] += x[i + 1] * y[i + 1];
    a[2] += x[i + 2] * y[i + 2];
    a[3] += x[i + 3] * y[i + 3];
  }
  for (; i < n; ++i) a[0] += x[i] * y[i];
  return (a[0] + a[1]) + (a[2] + a[3]);
}

// Grey values in 0..1, float64, as dgs_sdk's _gray: cv::transform of the float64 image with the weights
// (0.299, 0.587, 0.114) / 255, that is (w_r r + w_g g) + w_b b. The products come from tables (the same doubles
// as w * double(v)), without the float64 copy of the image that cv::transform needs (a third of the time). OpenCV's
// SIMD builds fuse some of these multiply-adds, so values may differ from cv::transform's (and Python's cv2's) in
// the last bit (test_preprocess bounds it); entropies move by ~1e-16 for it.
struct GreyTables {
  double r[256], g[256], b[256];
  GreyTables() {
    for (int v = 0; v < 256; ++v) {
      r[v] = gray_weight_r * v;
      g[v] = gray_weight_g * v;
      b[v] = gray_weight_b * v;
    }
  }
  double operator()(const std::uint8_t* px) const { return (r[px[0]] + g[px[1]]) + b[px[2]]; }
};
const GreyTables grey_tables;

// Work buffers of the entropy computation, reused from one chunk of patches to the next.
struct EntropyBuffers {
  cv::Mat rows;      // c * ceil(P/2) x P, CV_64FC2: two rows of a patch as one complex sequence, then their DFT
  cv::Mat columns;   // c * (half + 1) x P, CV_64FC2: the columns of each patch's half spectrum, then their DFT
  cv::Mat power;     // c x bins, CV_64F: |FFT2|^2, the bins of weight 1 first, then those of weight 2
  cv::Mat logs;      // c x bins: ln(power + eps * total)
  std::vector<double> totals;
};

// Spectral entropies (bits) of the c patches side by side in `rgb` (P rows, c * P columns, 8-bit RGB), into `out`.
//
// The same quantity as dgs_sdk.preprocess.spectral_entropy, computed with batches of 1-D DFTs rather than one
// 2-D DFT per patch (OpenCV plans every call: 1024 calls on 32x32 patches cost twice the transforms themselves):
//  1. rows: two rows of a patch, both real, travel as one complex sequence (row 2s + i row 2s+1), and one DFT_ROWS
//     call transforms the rows of every patch of the chunk; the two spectra are separated afterwards
//     (X_a(v) = (Z(v) + conj Z(-v)) / 2, X_b(v) = (Z(v) - conj Z(-v)) / 2i);
//  2. columns: a real patch's spectrum is conjugate-symmetric, so only columns 0..P/2 are needed, as rfft2 gives
//     them. Columns 0 and P/2 are real after the row pass and travel as one complex sequence too; the others are
//     complex. One more DFT_ROWS call transforms them all (the spectra of columns 0 and P/2, real sequences,
//     are mirror-symmetric: only their first halves are kept);
//  3. each bin's power is weighted by how many bins of the full spectrum it stands for (1 or 2), and
//     -sum p ln(p + eps) is computed as spectral_entropy does, with one cv::log over the whole chunk.
void chunk_entropies(const cv::Mat& rgb, int p, EntropyBuffers& b, double* out) {
  const GreyTables& grey = grey_tables;
  const int c = rgb.cols / p;
  const bool even = p % 2 == 0;
  const int pairs = (p + 1) / 2;        // complex rows per patch in the row pass
  const int half = (p - 1) / 2;         // complex columns of the half spectrum; also the mirrored (u, P - u) pairs
  const int per_patch = half + 1;       // rows of `columns` per patch: the real pair, then the complex ones
  const int ones = even ? 4 : 1;        // bins of weight 1: u = 0 (and P/2) of column 0 (and of column P/2)
  const int bins = ones + (even ? 2 : 1) * half + half * p;

  // 1. Grey values, two rows of a patch per complex row: row s * c + k holds rows 2s and 2s+1 of patch k.
  b.rows.create(c * pairs, p, CV_64FC2);
  for (int y = 0; y < p; ++y) {
    const std::uint8_t* src = rgb.ptr<std::uint8_t>(y);
    const int part = y % 2;
    for (int k = 0; k < c; ++k) {
      double* dst = b.rows.ptr<double>((y / 2) * c + k) + part;
      const std::uint8_t* px = src + 3 * k * p;
      for (int x = 0; x < p; ++x, px += 3) dst[2 * x] = grey(px);
    }
  }
  if (!even) {  // the last row of an odd patch has no partner
    for (int k = 0; k < c; ++k) {
      double* dst = b.rows.ptr<double>((pairs - 1) * c + k);
      for (int x = 0; x < p; ++x) dst[2 * x + 1] = 0.0;
    }
  }
  cv::dft(b.rows, b.rows, cv::DFT_ROWS);

  // 2. The half spectrum's columns, one per row of `columns`: for patch k, row k * per_patch holds column 0 +
  // i column P/2 (0 for an odd P), row k * per_patch + j column j.
  b.columns.create(c * per_patch, p, CV_64FC2);
  const std::size_t stride = b.columns.step1() / 2;  // Vec2d per row of `columns`
  for (int s = 0; s < pairs; ++s) {
    const int ya = 2 * s, yb = 2 * s + 1;
    const bool has_b = yb < p;
    for (int k = 0; k < c; ++k) {
      const cv::Vec2d* z = b.rows.ptr<cv::Vec2d>(s * c + k);
      cv::Vec2d* dst = b.columns.ptr<cv::Vec2d>(k * per_patch);
      // Column 0 and column P/2 of a real row are real: X_a = Re, X_b = Im of the packed transform there.
      const double nyquist_a = even ? z[p / 2][0] : 0.0, nyquist_b = even ? z[p / 2][1] : 0.0;
      dst[ya] = cv::Vec2d(z[0][0], nyquist_a);
      if (has_b) dst[yb] = cv::Vec2d(z[0][1], nyquist_b);
      for (int j = 1; j <= half; ++j) {
        const cv::Vec2d& zj = z[j];
        const cv::Vec2d& zm = z[p - j];
        dst[j * stride + ya] = cv::Vec2d(0.5 * (zj[0] + zm[0]), 0.5 * (zj[1] - zm[1]));
        if (has_b) dst[j * stride + yb] = cv::Vec2d(0.5 * (zj[1] + zm[1]), 0.5 * (zm[0] - zj[0]));
      }
    }
  }
  cv::dft(b.columns, b.columns, cv::DFT_ROWS);

  // 3. Power, weights, entropy.
  b.power.create(c, bins, CV_64F);
  b.logs.create(c, bins, CV_64F);
  b.totals.resize(c);
  for (int k = 0; k < c; ++k) {
    double* power = b.power.ptr<double>(k);
    const cv::Vec2d* z = b.columns.ptr<cv::Vec2d>(k * per_patch);
    // z = A + i B for the real columns A (0) and B (P/2): A(u) = (z(u) + conj z(-u)) / 2,
    // B(u) = (z(u) - conj z(-u)) / 2i. Real sequences: |A(-u)| = |A(u)|, so u = 1..half stand for two bins each.
    auto power_a = [&](int u, int m) {
      const double re = 0.5 * (z[u][0] + z[m][0]), im = 0.5 * (z[u][1] - z[m][1]);
      return re * re + im * im;
    };
    auto power_b = [&](int u, int m) {
      const double re = 0.5 * (z[u][1] + z[m][1]), im = 0.5 * (z[m][0] - z[u][0]);
      return re * re + im * im;
    };
    double ones_sum = 0.0;
    power[0] = power_a(0, 0);
    if (even) {
      power[1] = power_a(p / 2, p / 2);
      power[2] = power_b(0, 0);
      power[3] = power_b(p / 2, p / 2);
    }
    for (int i = 0; i < ones; ++i) ones_sum += power[i];
    double* twos = power + ones;
    for (int u = 1; u <= half; ++u) *twos++ = power_a(u, p - u);
    if (even) {
      for (int u = 1; u <= half; ++u) *twos++ = power_b(u, p - u);
    }
    for (int j = 1; j <= half; ++j) {
      const double* zj = reinterpret_cast<const double*>(z + j * stride);
      for (int u = 0; u < p; ++u) twos[u] = zj[2 * u] * zj[2 * u] + zj[2 * u + 1] * zj[2 * u + 1];
      twos += p;
    }
    const double twos_sum = sum(power + ones, bins - ones);
    const double total = ones_sum + 2.0 * twos_sum + eps;
    b.totals[k] = total;
    // The log's argument, written into `logs` and logged in place below.
    double* arg = b.logs.ptr<double>(k);
    const double guard = eps * total;
    for (int i = 0; i < bins; ++i) arg[i] = power[i] + guard;
  }
  cv::log(b.logs, b.logs);
  for (int k = 0; k < c; ++k) {
    const double* power = b.power.ptr<double>(k);
    const double* logs = b.logs.ptr<double>(k);
    double ones_terms = 0.0;
    for (int i = 0; i < ones; ++i) ones_terms += power[i] * logs[i];
    const double twos_terms = dot(power + ones, logs + ones, bins - ones);
    // With p = power / total and sum(power) = total - eps (see spectral_entropy):
    //   -sum p ln(p + eps) = ln(total) (1 - eps / total) - sum power ln(power + eps total) / total.
    const double total = b.totals[k];
    const double nats = std::log(total) * (1.0 - eps / total) - (ones_terms + 2.0 * twos_terms) / total;
    out[k] = nats / ln2;
  }
}

}  // namespace

cv::Mat detail::grey_image(const cv::Mat& rgb) {
  check_rgb(rgb, "grey_image");
  cv::Mat grey(rgb.size(), CV_64F);
  for (int y = 0; y < rgb.rows; ++y) {
    const std::uint8_t* px = rgb.ptr<std::uint8_t>(y);
    double* dst = grey.ptr<double>(y);
    for (int x = 0; x < rgb.cols; ++x, px += 3) dst[x] = grey_tables(px);
  }
  return grey;
}

cv::Mat resize_shortest_side(const cv::Mat& rgb, int size) {
  check_rgb(rgb, "resize_shortest_side");
  if (size < 1) throw Error(Status::invalid_argument, "resize size must be positive, got " + std::to_string(size));
  const std::int64_t h = rgb.rows, w = rgb.cols;
  // torchvision's truncation: int(size * w / h), the division in double as Python's true division.
  std::int64_t new_h, new_w;
  if (h <= w) {
    new_h = size;
    new_w = static_cast<std::int64_t>(static_cast<double>(size * w) / static_cast<double>(h));
  } else {
    new_h = static_cast<std::int64_t>(static_cast<double>(size * h) / static_cast<double>(w));
    new_w = size;
  }
  if (new_h * new_w > limits::max_pixels) {
    throw Error(Status::image_too_large, "a " + dims(rgb.cols, rgb.rows) + " image is too elongated: resizing its "
                                         "short side to " + std::to_string(size) + " would give " +
                                         std::to_string(new_w) + "x" + std::to_string(new_h) + " pixels");
  }
  if (new_h == h && new_w == w) return rgb;
  cv::Mat resized;
  cv::resize(rgb, resized, cv::Size(static_cast<int>(new_w), static_cast<int>(new_h)), 0, 0, cv::INTER_CUBIC);
  return resized;
}

cv::Mat center_crop(const cv::Mat& rgb, int size) {
  check_rgb(rgb, "center_crop");
  if (size < 1 || rgb.rows < size || rgb.cols < size) {
    throw Error(Status::invalid_argument, "cannot centre-crop " + dims(size, size) + " from a " +
                                              dims(rgb.cols, rgb.rows) + " image");
  }
  // int(round((h - size) / 2.0)): Python's round sends halves to even, as nearbyint does by default.
  const int top = static_cast<int>(std::nearbyint((rgb.rows - size) / 2.0));
  const int left = static_cast<int>(std::nearbyint((rgb.cols - size) / 2.0));
  return rgb(cv::Rect(left, top, size, size));
}

std::vector<double> patch_entropies(const cv::Mat& rgb, int patch_size) {
  check_rgb(rgb, "patch_entropies");
  if (patch_size < 1) {
    throw Error(Status::invalid_argument, "patch_size must be positive, got " + std::to_string(patch_size));
  }
  const int p = patch_size, gh = rgb.rows / p, gw = rgb.cols / p;
  std::vector<double> entropies(static_cast<std::size_t>(gh) * gw);
  // Rows of patches are independent: OpenCV's thread pool shares them out (cv::setNumThreads, or
  // OPENCV_FOR_THREADS_NUM, sets its size; 1 keeps everything on the calling thread). Each patch's arithmetic is
  // the same on any thread, so the entropies do not depend on the number of threads.
  const auto rows = [&](const cv::Range& range) {
    EntropyBuffers buffers;
    for (int i = range.start; i < range.end; ++i) {
      for (int k = 0; k < gw; k += patches_per_chunk) {
        const int c = std::min(patches_per_chunk, gw - k);
        chunk_entropies(rgb(cv::Rect(k * p, i * p, c * p, p)), p, buffers,
                        entropies.data() + static_cast<std::size_t>(i) * gw + k);
      }
    }
  };
  // Below a few hundred patches, handing work to other threads costs more than it saves.
  if (static_cast<std::int64_t>(gh) * gw < min_patches_to_share) {
    rows(cv::Range(0, gh));
  } else {
    cv::parallel_for_(cv::Range(0, gh), rows);
  }
  return entropies;
}

cv::Mat select_patches(const cv::Mat& rgb, const PreprocessSpec& spec) {
  check_rgb(rgb, "select_patches");
  check_spec(spec);
  const int p = spec.patch_size, grid = spec.grid();
  const int n_keep = grid * grid;
  cv::Mat image = rgb;
  const std::int64_t n_patches = static_cast<std::int64_t>(rgb.rows / p) * (rgb.cols / p);
  if (n_patches < n_keep) {
    if (spec.small_images == "resize") {
      image = resize_shortest_side(rgb, spec.size);
    } else if (n_patches == 0) {
      throw Error(Status::image_too_small, "a " + dims(rgb.cols, rgb.rows) + " image is smaller than one " +
                                               dims(p, p) + " patch");
    }
  }
  const int gw = image.cols / p;
  const std::vector<double> entropy = patch_entropies(image, p);
  const int n = static_cast<int>(entropy.size());
  std::vector<double> rounded(entropy.size());
  for (std::size_t i = 0; i < entropy.size(); ++i) rounded[i] = std::nearbyint(entropy[i] * entropy_scale) / entropy_scale;
  // Ties, such as flat patches whose entropies differ by rounding noise only, go by position (a stable sort).
  std::vector<int> order(entropy.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return rounded[a] < rounded[b]; });
  // With fewer patches than tiles ("pad") the two ends overlap: a patch may be repeated, the rest stays black.
  const int n_low = std::min(n_keep / 2, n), n_high = std::min(n_keep - n_keep / 2, n);
  std::vector<int> chosen(order.begin(), order.begin() + n_low);
  chosen.insert(chosen.end(), order.end() - n_high, order.end());

  cv::Mat mosaic = cv::Mat::zeros(spec.size, spec.size, CV_8UC3);
  for (int t = 0; t < static_cast<int>(chosen.size()); ++t) {
    const int src = chosen[t];
    image(cv::Rect((src % gw) * p, (src / gw) * p, p, p)).copyTo(mosaic(cv::Rect((t % grid) * p, (t / grid) * p, p, p)));
  }
  return mosaic;
}

cv::Mat crop_image(const cv::Mat& rgb, const PreprocessSpec& spec) {
  check_spec(spec);
  if (spec.transform == "clip") return center_crop(resize_shortest_side(rgb, spec.size), spec.size);
  return select_patches(rgb, spec);
}

// x * scale + offset must be two float32 roundings, as numpy does it: a fused multiply-add (which compilers may
// form on their own on aarch64) would round once and change the last bit of some values.
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=off")))
#endif
void normalize(const cv::Mat& crop, const PreprocessSpec& spec, float* out) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
  check_rgb(crop, "normalize");
  if (crop.rows != spec.size || crop.cols != spec.size) {
    throw Error(Status::invalid_argument, "normalize: expected a " + dims(spec.size, spec.size) + " crop, got " +
                                              dims(crop.cols, crop.rows));
  }
  if (out == nullptr) throw Error(Status::invalid_argument, "normalize: no output buffer");
  // As normalize() in Python: scale = float32(1 / (255 std)) and offset = float32(-mean / std), computed in double.
  float scale[3], offset[3];
  for (int c = 0; c < 3; ++c) {
    scale[c] = static_cast<float>(1.0 / (255.0 * spec.std[c]));
    offset[c] = static_cast<float>(-spec.mean[c] / spec.std[c]);
  }
  const std::size_t plane = static_cast<std::size_t>(spec.size) * spec.size;
  for (int y = 0; y < crop.rows; ++y) {
    const std::uint8_t* row = crop.ptr<std::uint8_t>(y);
    float* r = out + static_cast<std::size_t>(y) * spec.size;
    float* g = r + plane;
    float* b = g + plane;
    for (int x = 0; x < crop.cols; ++x) {
      float vr = static_cast<float>(row[3 * x]) * scale[0];
      float vg = static_cast<float>(row[3 * x + 1]) * scale[1];
      float vb = static_cast<float>(row[3 * x + 2]) * scale[2];
      r[x] = vr + offset[0];
      g[x] = vg + offset[1];
      b[x] = vb + offset[2];
    }
  }
}

}  // namespace dgs

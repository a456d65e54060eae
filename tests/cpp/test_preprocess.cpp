// Decoding and preprocessing of the native core: shapes, both small-image policies, errors, and patch selections
// that are known in advance. Parity with the Python SDK on photographs is tests/test_native_preprocess.py's.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "dgs/error.hpp"
#include "dgs/limits.hpp"
#include "dgs/preprocess.hpp"
#include "preprocess_detail.hpp"
#include "expect_error.hpp"

namespace {

constexpr int P = 32;

dgs::PreprocessSpec patch_spec(int size, const std::string& small_images = "resize") {
  dgs::PreprocessSpec spec;
  spec.transform = "patch-select";
  spec.size = size;
  spec.patch_size = P;
  spec.mean = {0.485, 0.456, 0.406};
  spec.std = {0.229, 0.224, 0.225};
  spec.small_images = small_images;
  return spec;
}

// Spectral entropy of one RGB patch written out directly: grey, full 2-D DFT, p = power / (sum + 1e-12),
// -sum p log2(p + 1e-12).
double reference_entropy(const cv::Mat& patch) {
  cv::Mat rgb64, grey, spectrum;
  patch.convertTo(rgb64, CV_64F);
  cv::transform(rgb64, grey, cv::Matx13d(0.299 / 255.0, 0.587 / 255.0, 0.114 / 255.0));
  cv::dft(grey, spectrum, cv::DFT_COMPLEX_OUTPUT);
  std::vector<double> power;
  double total = 0.0;
  for (int y = 0; y < spectrum.rows; ++y) {
    for (int x = 0; x < spectrum.cols; ++x) {
      const cv::Vec2d z = spectrum.at<cv::Vec2d>(y, x);
      power.push_back(z[0] * z[0] + z[1] * z[1]);
      total += power.back();
    }
  }
  double entropy = 0.0;
  for (double v : power) {
    const double p = v / (total + 1e-12);
    entropy -= p * std::log2(p + 1e-12);
  }
  return entropy;
}

// A textured RGB image: smooth gradients plus noise, so that patch entropies differ.
cv::Mat textured(int height, int width, std::uint64_t seed) {
  cv::Mat image(height, width, CV_8UC3);
  cv::RNG rng(seed);
  rng.fill(image, cv::RNG::UNIFORM, 0, 256);
  cv::GaussianBlur(image, image, cv::Size(0, 0), 1.5);
  return image;
}

// Each patch flat in its own grey (entropy 0), except those in `noisy`, filled with noise of the given amplitude.
cv::Mat flat_with_noise(int rows, int cols, const std::vector<std::pair<int, int>>& noisy) {
  cv::Mat image(rows * P, cols * P, CV_8UC3);
  for (int i = 0; i < rows * cols; ++i) {
    image(cv::Rect((i % cols) * P, (i / cols) * P, P, P)).setTo(cv::Scalar::all(10 + 3 * i));
  }
  cv::RNG rng(7);
  for (const auto& [index, amplitude] : noisy) {
    cv::Mat patch = image(cv::Rect((index % cols) * P, (index / cols) * P, P, P));
    cv::Mat noise(P, P, CV_8UC3);
    rng.fill(noise, cv::RNG::UNIFORM, 128 - amplitude, 128 + amplitude);
    noise.copyTo(patch);
  }
  return image;
}

cv::Mat tile(const cv::Mat& mosaic, int t, int grid) { return mosaic(cv::Rect((t % grid) * P, (t / grid) * P, P, P)); }
cv::Mat patch_at(const cv::Mat& image, int index) {
  const int cols = image.cols / P;
  return image(cv::Rect((index % cols) * P, (index / cols) * P, P, P));
}
bool same(const cv::Mat& a, const cv::Mat& b) { return a.size() == b.size() && cv::norm(a, b, cv::NORM_INF) == 0; }

using dgs::testing::expect_error;

std::vector<std::uint8_t> encode(const std::string& ext, const cv::Mat& image) {
  std::vector<std::uint8_t> out;
  EXPECT_TRUE(cv::imencode(ext, image, out));
  return out;
}

std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + "dgs_test_preprocess_" + std::to_string(::getpid()) + "_" + name;
}

// --- spectral entropies ---

TEST(PatchEntropies, EqualAStraightforwardPerPatchComputation) {
  for (int p : {32, 31, 8}) {
    const cv::Mat image = textured(5 * p + 7, 7 * p + 3, static_cast<std::uint64_t>(p));
    const std::vector<double> entropies = dgs::patch_entropies(image, p);
    ASSERT_EQ(entropies.size(), 35u);  // 5 x 7, row-major; the leftover rows and columns are not patches
    for (int i = 0; i < 35; ++i) {
      const cv::Mat patch = image(cv::Rect((i % 7) * p, (i / 7) * p, p, p));
      EXPECT_NEAR(entropies[i], reference_entropy(patch), 1e-11) << "patch " << i << " of size " << p;
    }
  }
}

TEST(PatchEntropies, FlatPatchHasNoneAndStrongerNoiseMore) {
  const cv::Mat image = flat_with_noise(1, 4, {{1, 127}, {3, 10}});
  cv::Mat black = image.clone();
  black(cv::Rect(2 * P, 0, P, P)).setTo(cv::Scalar::all(0));  // no power at all: the 1e-12 guards
  const std::vector<double> entropies = dgs::patch_entropies(black, P);
  EXPECT_NEAR(entropies[0], 0.0, 1e-9);
  EXPECT_TRUE(std::isfinite(entropies[2]));
  EXPECT_NEAR(entropies[2], 0.0, 1e-9);
  // Noise around mid-grey: the mean (DC) keeps most of the power, the more so the weaker the noise; at most
  // log2(32 * 32) = 10 bits.
  EXPECT_GT(entropies[3], 0.01);
  EXPECT_GT(entropies[1], entropies[3] + 0.5);
  EXPECT_LT(entropies[1], 10.0);
}

TEST(PatchEntropies, GreyEqualsCvTransformToTheLastBit) {
  const cv::Mat image = textured(67, 91, 3);
  cv::Mat rgb64, expected;
  image.convertTo(rgb64, CV_64F);
  cv::transform(rgb64, expected, cv::Matx13d(0.299 / 255.0, 0.587 / 255.0, 0.114 / 255.0));
  const cv::Mat grey = dgs::detail::grey_image(image);
  ASSERT_EQ(grey.type(), CV_64F);
  // OpenCV's SIMD builds fuse some multiply-adds (and differ between builds), so the last bit may differ.
  EXPECT_LE(cv::norm(grey, expected, cv::NORM_INF), 2.3e-16);
}

TEST(PatchEntropies, RefuseWhatIsNotAnRgbImage) {
  expect_error([] { dgs::patch_entropies(cv::Mat(), 32); }, dgs::Status::invalid_argument, "8-bit 3-channel");
  expect_error([] { dgs::patch_entropies(cv::Mat(64, 64, CV_8UC1), 32); }, dgs::Status::invalid_argument, "3-channel");
  expect_error([] { dgs::patch_entropies(cv::Mat(64, 64, CV_8UC3), 0); }, dgs::Status::invalid_argument, "patch_size");
}

// --- patch selection ---

TEST(SelectPatches, KeepsTheLowestAndHighestInAscendingOrderTiesByPosition) {
  // 3 x 4 patches: flat ones (entropy 0, a tie broken by position) and three noisy ones; a 2 x 2 mosaic keeps
  // the two lowest (the first two flat patches) and the two highest (two of the noisy ones), ascending.
  const cv::Mat image = flat_with_noise(3, 4, {{0, 127}, {5, 40}, {10, 3}});
  const std::vector<double> e = dgs::patch_entropies(image, P);
  ASSERT_GT(e[0], e[10]);
  ASSERT_GT(e[5], e[10]);
  const int lower_noisy = e[0] < e[5] ? 0 : 5, higher_noisy = e[0] < e[5] ? 5 : 0;
  const cv::Mat mosaic = dgs::select_patches(image, patch_spec(2 * P));
  ASSERT_EQ(mosaic.size(), cv::Size(2 * P, 2 * P));
  ASSERT_EQ(mosaic.type(), CV_8UC3);
  EXPECT_TRUE(same(tile(mosaic, 0, 2), patch_at(image, 1)));
  EXPECT_TRUE(same(tile(mosaic, 1, 2), patch_at(image, 2)));
  EXPECT_TRUE(same(tile(mosaic, 2, 2), patch_at(image, lower_noisy)));
  EXPECT_TRUE(same(tile(mosaic, 3, 2), patch_at(image, higher_noisy)));
}

TEST(SelectPatches, MatchesARankingOfStraightforwardEntropies) {
  const cv::Mat image = textured(9 * P + 5, 11 * P + 17, 11);
  const int n = 99;
  std::vector<double> rounded(n);
  for (int i = 0; i < n; ++i) rounded[i] = std::nearbyint(reference_entropy(patch_at(image(cv::Rect(0, 0, 11 * P, 9 * P)), i)) * 1e6);
  std::vector<int> order(n);
  for (int i = 0; i < n; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return rounded[a] < rounded[b]; });
  const cv::Mat mosaic = dgs::select_patches(image, patch_spec(7 * P));
  const cv::Mat region = image(cv::Rect(0, 0, 11 * P, 9 * P));
  for (int t = 0; t < 49; ++t) {
    const int chosen = t < 24 ? order[t] : order[n - 49 + t];
    EXPECT_TRUE(same(tile(mosaic, t, 7), patch_at(region, chosen))) << "tile " << t;
  }
}

TEST(SelectPatches, PadRepeatsPatchesAndLeavesTheRestBlack) {
  // 2 x 3 = 6 patches for a 7 x 7 mosaic: the 6 lowest (all, ascending), then the 6 highest (all again), then 37
  // black tiles.
  const cv::Mat image = textured(2 * P + 9, 3 * P + 5, 5);
  const cv::Mat region = image(cv::Rect(0, 0, 3 * P, 2 * P));
  const std::vector<double> e = dgs::patch_entropies(image, P);
  std::vector<int> order = {0, 1, 2, 3, 4, 5};
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return std::nearbyint(e[a] * 1e6) < std::nearbyint(e[b] * 1e6); });
  const cv::Mat mosaic = dgs::select_patches(image, patch_spec(7 * P, "pad"));
  ASSERT_EQ(mosaic.size(), cv::Size(7 * P, 7 * P));
  for (int t = 0; t < 12; ++t) EXPECT_TRUE(same(tile(mosaic, t, 7), patch_at(region, order[t % 6]))) << t;
  for (int t = 12; t < 49; ++t) EXPECT_EQ(cv::countNonZero(tile(mosaic, t, 7).reshape(1)), 0) << t;
}

TEST(SelectPatches, PadRefusesAnImageUnderOnePatch) {
  expect_error([] { dgs::select_patches(textured(20, 100, 1), patch_spec(224, "pad")); },
               dgs::Status::image_too_small, "a 100x20 image is smaller than one 32x32 patch");
}

TEST(SelectPatches, ResizeBringsASmallImageToTheMosaicSize) {
  // 100 x 150: 12 patches; resized to 224 x 336 (short side 224): 7 x 10 patches, enough for 49.
  const cv::Mat image = textured(100, 150, 9);
  const cv::Mat resized = dgs::resize_shortest_side(image, 224);
  EXPECT_EQ(resized.size(), cv::Size(336, 224));
  EXPECT_TRUE(same(dgs::select_patches(image, patch_spec(224)), dgs::select_patches(resized, patch_spec(224))));
}

// --- clip geometry ---

TEST(Clip, ResizeTruncatesAndCropRoundsHalvesToEven) {
  const cv::Mat image = textured(300, 451, 2);
  EXPECT_EQ(dgs::resize_shortest_side(image, 224).size(), cv::Size(336, 224));  // int(224 * 451 / 300) = 336
  EXPECT_EQ(dgs::resize_shortest_side(image, 300).data, image.data);           // no resize: the same pixels
  // (227 - 224) / 2 = 1.5 -> 2 and (225 - 224) / 2 = 0.5 -> 0, as Python's round.
  const cv::Mat tall = textured(227, 225, 4);
  const cv::Mat crop = dgs::center_crop(tall, 224);
  EXPECT_TRUE(same(crop, tall(cv::Rect(0, 2, 224, 224))));
  dgs::PreprocessSpec clip;
  const cv::Mat out = dgs::crop_image(image, clip);
  EXPECT_EQ(out.size(), cv::Size(224, 224));
  EXPECT_EQ(out.type(), CV_8UC3);
}

TEST(Clip, RefusesAnImageTooElongatedToResizeAndACropLargerThanTheImage) {
  expect_error([] { dgs::resize_shortest_side(cv::Mat(1, 800000, CV_8UC3, cv::Scalar::all(1)), 224); },
               dgs::Status::image_too_large, "a 800000x1 image is too elongated");
  expect_error([] { dgs::center_crop(textured(100, 300, 1), 224); }, dgs::Status::invalid_argument,
               "cannot centre-crop 224x224 from a 300x100 image");
}

// --- normalisation ---

TEST(Normalize, ComputesXTimesScalePlusOffsetInFloat32ChannelsFirst) {
  const cv::Mat crop = textured(224, 224, 8);
  const dgs::PreprocessSpec spec;  // CLIP mean and std
  std::vector<float> out(3 * 224 * 224);
  dgs::normalize(crop, spec, out.data());
  for (int c = 0; c < 3; ++c) {
    const float scale = static_cast<float>(1.0 / (255.0 * spec.std[c]));
    const float offset = static_cast<float>(-spec.mean[c] / spec.std[c]);
    for (int y : {0, 100, 223}) {
      for (int x : {0, 57, 223}) {
        const volatile float product = static_cast<float>(crop.at<cv::Vec3b>(y, x)[c]) * scale;
        const float expected = product + offset;
        EXPECT_EQ(out[(c * 224 + y) * 224 + x], expected);
        EXPECT_NEAR(out[(c * 224 + y) * 224 + x], (crop.at<cv::Vec3b>(y, x)[c] / 255.0 - spec.mean[c]) / spec.std[c],
                    1e-5);
      }
    }
  }
  expect_error([&] { dgs::normalize(crop(cv::Rect(0, 0, 100, 100)), spec, out.data()); },
               dgs::Status::invalid_argument, "expected a 224x224 crop");
}

// --- decoding ---

TEST(Decode, PngLayoutsBecome8BitRgb) {
  const cv::Mat bgr = textured(37, 53, 1);
  cv::Mat rgb;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  auto png = encode(".png", bgr);
  EXPECT_TRUE(same(dgs::decode_bytes(png.data(), png.size(), "a.png"), rgb));

  cv::Mat bgra;
  cv::cvtColor(bgr, bgra, cv::COLOR_BGR2BGRA);
  bgra.forEach<cv::Vec4b>([](cv::Vec4b& px, const int*) { px[3] = 17; });  // alpha is dropped, not blended
  png = encode(".png", bgra);
  EXPECT_TRUE(same(dgs::decode_bytes(png.data(), png.size(), "a.png"), rgb));

  cv::Mat grey;
  cv::cvtColor(bgr, grey, cv::COLOR_BGR2GRAY);
  png = encode(".png", grey);
  cv::Mat grey_rgb;
  cv::cvtColor(grey, grey_rgb, cv::COLOR_GRAY2RGB);
  EXPECT_TRUE(same(dgs::decode_bytes(png.data(), png.size(), "a.png"), grey_rgb));

  // 16-bit: round(x / 257). 257 * v maps back to v exactly; 257 * v + 128 is closer to v than to v + 1.
  cv::Mat wide(2, 3, CV_16UC3);
  const std::uint16_t values[] = {0, 257, 65535, 257 * 100 + 128, 257 * 100 + 129, 1000};
  for (int i = 0; i < 6; ++i) wide.at<cv::Vec3w>(i / 3, i % 3) = cv::Vec3w(values[i], values[i], values[i]);
  png = encode(".png", wide);
  const cv::Mat decoded = dgs::decode_bytes(png.data(), png.size(), "wide.png");
  const int expected[] = {0, 1, 255, 100, 101, 4};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(decoded.at<cv::Vec3b>(i / 3, i % 3)[0], expected[i]) << values[i];
}

TEST(Decode, JpegIsRgbAndCloseToTheSource) {
  cv::Mat bgr(64, 64, CV_8UC3, cv::Scalar(20, 120, 230));  // B, G, R: red dominates
  const auto jpeg = encode(".jpg", bgr);
  const cv::Mat rgb = dgs::decode_bytes(jpeg.data(), jpeg.size(), "a.jpg");
  ASSERT_EQ(rgb.size(), cv::Size(64, 64));
  const cv::Vec3b px = rgb.at<cv::Vec3b>(32, 32);
  EXPECT_NEAR(px[0], 230, 3);
  EXPECT_NEAR(px[1], 120, 3);
  EXPECT_NEAR(px[2], 20, 3);
}

TEST(Decode, BadBytesAreUnreadableAndNamed) {
  const std::uint8_t nothing[1] = {0};
  expect_error([&] { dgs::decode_bytes(nothing, 0, "x.png"); }, dgs::Status::unreadable_image,
               "x.png: empty file (0 bytes)");
  const std::string html = "<html><body>not an image</body></html>";
  expect_error([&] { dgs::decode_bytes(reinterpret_cast<const std::uint8_t*>(html.data()), html.size(), "page.jpg"); },
               dgs::Status::unreadable_image, "page.jpg: not an image in a supported format");
  auto png = encode(".png", textured(40, 40, 2));
  expect_error([&] { dgs::decode_bytes(png.data(), png.size() / 2, "cut.png"); }, dgs::Status::unreadable_image,
               "cut.png: ");
  auto jpeg = encode(".jpg", textured(40, 40, 2));
  expect_error([&] { dgs::decode_bytes(jpeg.data(), 200, "cut.jpg"); }, dgs::Status::unreadable_image, "cut.jpg: ");
}

// A PNG whose header declares width x height 8-bit grey pixels, with a few bytes of data.
std::vector<std::uint8_t> bomb_png(std::uint32_t width, std::uint32_t height) {
  auto crc = [](const std::vector<std::uint8_t>& bytes, std::size_t from) {
    std::uint32_t c = 0xFFFFFFFFu;
    for (std::size_t i = from; i < bytes.size(); ++i) {
      c ^= bytes[i];
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return c ^ 0xFFFFFFFFu;
  };
  auto be32 = [](std::vector<std::uint8_t>& out, std::uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<std::uint8_t>(v >> s));
  };
  std::vector<std::uint8_t> out = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  auto chunk = [&](const char* kind, const std::vector<std::uint8_t>& data) {
    be32(out, static_cast<std::uint32_t>(data.size()));
    const std::size_t start = out.size();
    out.insert(out.end(), kind, kind + 4);
    out.insert(out.end(), data.begin(), data.end());
    be32(out, crc(out, start));
  };
  std::vector<std::uint8_t> ihdr;
  be32(ihdr, width);
  be32(ihdr, height);
  ihdr.insert(ihdr.end(), {8, 0, 0, 0, 0});
  chunk("IHDR", ihdr);
  chunk("IDAT", {0x78, 0x9c, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01});
  chunk("IEND", {});
  return out;
}

TEST(Decode, DecompressionBombIsTooLargeBeforeDecoding) {
  const auto bomb = bomb_png(20000, 20000);  // 400 million pixels
  expect_error([&] { dgs::decode_bytes(bomb.data(), bomb.size(), "bomb.png"); }, dgs::Status::image_too_large,
               "bomb.png: image too large");
  // A JPEG whose frame header declares 65000 x 65000: its size is read before decoding.
  auto jpeg = encode(".jpg", textured(16, 16, 1));
  for (std::size_t at = 2; at + 9 < jpeg.size(); at += 2 + (jpeg[at + 2] << 8 | jpeg[at + 3])) {
    if (jpeg[at + 1] == 0xC0) {
      jpeg[at + 5] = jpeg[at + 7] = 0xFD;
      jpeg[at + 6] = jpeg[at + 8] = 0xE8;
      break;
    }
  }
  // Its one scan of 4.2 billion pixels is over the bound of scans x pixels, which the walk checks first (as
  // dgs_sdk/headers.py does).
  expect_error([&] { dgs::decode_bytes(jpeg.data(), jpeg.size(), "bomb.jpg"); }, dgs::Status::image_too_large,
               "bomb.jpg: JPEG with 1 scans of 65000x65000 pixels");
}

TEST(Decode, FilesMustBeRegularAndBounded) {
  const std::string dir = temp_path("folder");
  ::mkdir(dir.c_str(), 0700);
  expect_error([&] { dgs::decode_file(dir); }, dgs::Status::unreadable_image, dir + ": is a directory, not a file");
  expect_error([&] { dgs::decode_file(dir + "/missing.png"); }, dgs::Status::unreadable_image,
               dir + "/missing.png: no such file");

  // A FIFO would block a reader forever: refused unopened.
  const std::string fifo = dir + "/pipe.png";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  expect_error([&] { dgs::decode_file(fifo); }, dgs::Status::unreadable_image, "is not a regular file");

  const std::string empty = dir + "/empty.png";
  std::ofstream(empty).close();
  expect_error([&] { dgs::decode_file(empty); }, dgs::Status::unreadable_image, empty + ": empty file (0 bytes)");

  // A sparse file over the limit: refused by its size, never read.
  const std::string huge = dir + "/huge.png";
  std::ofstream(huge).close();
  ASSERT_EQ(::truncate(huge.c_str(), dgs::limits::max_file_bytes + 1), 0);
  expect_error([&] { dgs::decode_file(huge); }, dgs::Status::unreadable_image, "file too large (536,870,913 bytes");

  const std::string good = dir + "/photo ñ.png";
  const cv::Mat bgr = textured(30, 20, 3);
  const auto png = encode(".png", bgr);
  std::ofstream(good, std::ios::binary).write(reinterpret_cast<const char*>(png.data()), png.size());
  EXPECT_EQ(dgs::decode_file(good).size(), cv::Size(20, 30));

  for (const std::string& path : {fifo, empty, huge, good}) std::remove(path.c_str());
  ::rmdir(dir.c_str());
}

TEST(RgbImage, CopiesAStridedBufferAndChecksIt) {
  std::vector<std::uint8_t> buffer(4 * 10, 0);  // 3 pixels a row, 10 bytes a row
  for (int y = 0; y < 4; ++y) {
    for (int i = 0; i < 9; ++i) buffer[y * 10 + i] = static_cast<std::uint8_t>(y * 9 + i);
  }
  const cv::Mat image = dgs::rgb_image(buffer.data(), 3, 4, 10, "<buffer>");
  ASSERT_EQ(image.size(), cv::Size(3, 4));
  EXPECT_EQ(image.at<cv::Vec3b>(3, 2), cv::Vec3b(33, 34, 35));
  buffer[0] = 99;  // a copy, not a view
  EXPECT_EQ(image.at<cv::Vec3b>(0, 0)[0], 0);
  expect_error([&] { dgs::rgb_image(buffer.data(), 4, 4, 10, "<buffer>"); }, dgs::Status::invalid_argument,
               "stride 10 is less than 12");
  expect_error([&] { dgs::rgb_image(buffer.data(), 0, 4, 0, "<buffer>"); }, dgs::Status::unreadable_image,
               "<buffer>: image has no pixels (0x4)");
  expect_error([&] { dgs::rgb_image(nullptr, 3, 4, 0, "<buffer>"); }, dgs::Status::invalid_argument, "null");
}

}  // namespace

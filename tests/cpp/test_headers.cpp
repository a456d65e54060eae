// The walk of each format's structure before decoding (src/headers.cpp) on hostile byte strings built here, and
// the MemoryBudget that decodes share. Parity of refusals with the Python SDK is tests/test_native_headers.py's.
#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <opencv2/imgcodecs.hpp>

#include "dgs/error.hpp"
#include "dgs/limits.hpp"
#include "dgs/memory_budget.hpp"
#include "dgs/preprocess.hpp"
#include "headers.hpp"
#include "expect_error.hpp"

namespace {

using Bytes = std::vector<std::uint8_t>;

using dgs::testing::expect_error;

cv::Mat decode(const Bytes& data, const std::string& name = "<bytes>") {
  return dgs::decode_bytes(data.data(), data.size(), name);
}

dgs::ImageHeader header_of(const Bytes& data, const std::string& name = "x") {
  Bytes pixels_only;
  return dgs::read_header(data.data(), data.size(), name, pixels_only);
}

bool same(const cv::Mat& a, const cv::Mat& b) { return a.size() == b.size() && cv::norm(a, b, cv::NORM_INF) == 0; }

cv::Mat gradient(int rows, int cols) {
  cv::Mat image(rows, cols, CV_8UC3);
  for (int y = 0; y < rows; ++y) {
    for (int x = 0; x < cols; ++x) image.at<cv::Vec3b>(y, x) = cv::Vec3b(x * 7 % 256, y * 5 % 256, (x + y) % 256);
  }
  return image;
}

Bytes encode(const std::string& ext, const cv::Mat& image, const std::vector<int>& params = {}) {
  Bytes out;
  EXPECT_TRUE(cv::imencode(ext, image, out, params)) << ext;
  return out;
}

Bytes operator+(Bytes a, const Bytes& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

Bytes text(const std::string& s) { return Bytes(s.begin(), s.end()); }

Bytes repeat(const Bytes& part, std::size_t times) {
  Bytes out;
  out.reserve(part.size() * times);
  for (std::size_t k = 0; k < times; ++k) out.insert(out.end(), part.begin(), part.end());
  return out;
}

Bytes slice(const Bytes& data, std::size_t from, std::size_t to) {
  return Bytes(data.begin() + static_cast<std::ptrdiff_t>(from), data.begin() + static_cast<std::ptrdiff_t>(to));
}

Bytes be32(std::uint32_t v) { return {std::uint8_t(v >> 24), std::uint8_t(v >> 16), std::uint8_t(v >> 8), std::uint8_t(v)}; }
Bytes le32(std::uint32_t v) { return {std::uint8_t(v), std::uint8_t(v >> 8), std::uint8_t(v >> 16), std::uint8_t(v >> 24)}; }
Bytes le16(std::uint32_t v) { return {std::uint8_t(v), std::uint8_t(v >> 8)}; }

Bytes deflate(const Bytes& data) {
  uLongf size = compressBound(static_cast<uLong>(data.size()));
  Bytes out(size);
  EXPECT_EQ(compress2(out.data(), &size, data.data(), static_cast<uLong>(data.size()), 9), Z_OK);
  out.resize(size);
  return out;
}

Bytes png_chunk(const std::string& kind, const Bytes& data) {
  const Bytes body = text(kind) + data;
  return be32(static_cast<std::uint32_t>(data.size())) + body +
         be32(static_cast<std::uint32_t>(crc32(0, body.data(), static_cast<uInt>(body.size()))));
}

// A PNG that declares width x height pixels of `depth` bits and colour type `colour`, and holds one row of them.
Bytes png_declaring(std::uint32_t width, std::uint32_t height, std::uint8_t depth = 8, std::uint8_t colour = 0) {
  const Bytes ihdr = be32(width) + be32(height) + Bytes{depth, colour, 0, 0, 0};
  return text("\x89PNG\r\n\x1a\n") + png_chunk("IHDR", ihdr) +
         png_chunk("IDAT", deflate(Bytes(std::size_t{width} * 8 + 1, 0))) + png_chunk("IEND", {});
}

// SOI, a frame header with `sampling` (one byte of factors per component), `scans` empty scans, EOI.
Bytes jpeg_skeleton(std::uint8_t marker, std::uint32_t width, std::uint32_t height, const Bytes& sampling, int scans) {
  Bytes body = {8, std::uint8_t(height >> 8), std::uint8_t(height), std::uint8_t(width >> 8), std::uint8_t(width),
                std::uint8_t(sampling.size())};
  for (std::size_t k = 0; k < sampling.size(); ++k) body = body + Bytes{std::uint8_t(k + 1), sampling[k], 0};
  const Bytes sof = Bytes{0xFF, marker, std::uint8_t((body.size() + 2) >> 8), std::uint8_t(body.size() + 2)} + body;
  const Bytes scan = {0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3F, 0x00, 0x12, 0x34};
  return Bytes{0xFF, 0xD8} + sof + repeat(scan, static_cast<std::size_t>(scans)) + Bytes{0xFF, 0xD9};
}

// A 1-pixel-wide grey TIFF with one strip per row whose strip tables declare `rows` numbers each; the tables and
// pixels are written only when `complete`.
Bytes tiff_strips(std::uint32_t rows, bool complete) {
  const std::uint32_t ifd_size = 2 + 12 * 9 + 4, offsets_at = 8 + ifd_size, counts_at = offsets_at + 4 * rows,
                      pixels_at = counts_at + 4 * rows;
  auto entry = [](std::uint32_t tag, std::uint32_t type, std::uint32_t count, std::uint32_t value) {
    return le16(tag) + le16(type) + le32(count) + le32(value);
  };
  Bytes out = text(std::string("II*\0", 4)) + le32(8) + le16(9) + entry(256, 4, 1, 1) + entry(257, 4, 1, rows) +
              entry(258, 3, 1, 8) + entry(259, 3, 1, 1) + entry(262, 3, 1, 1) + entry(273, 4, rows, offsets_at) +
              entry(277, 3, 1, 1) + entry(278, 4, 1, 1) + entry(279, 4, rows, counts_at) + le32(0);
  if (complete) {
    for (std::uint32_t r = 0; r < rows; ++r) out = out + le32(pixels_at + r);
    for (std::uint32_t r = 0; r < rows; ++r) out = out + le32(1);
    out = out + Bytes(rows, 0x80);
  }
  return out;
}

// A 2x1 GIF with a two-colour global table, `before` inserted ahead of its image descriptor.
Bytes tiny_gif(const Bytes& before = {}) {
  return text("GIF89a") + le16(2) + le16(1) + Bytes{0x80, 0, 0} + Bytes{0, 0, 0, 255, 255, 255} + before +
         Bytes{0x2C, 0, 0, 0, 0, 2, 0, 1, 0, 0} + Bytes{2, 2, 0x44, 0x01, 0} + Bytes{0x3B};
}

// A BMP info header (40 bytes) declaring width x height (a negative height: rows top-down), and no pixels.
Bytes bmp_declaring(std::int32_t width, std::int32_t height, std::uint16_t bits = 24) {
  return text("BM") + le32(54) + le32(0) + le32(54) + le32(40) + le32(static_cast<std::uint32_t>(width)) +
         le32(static_cast<std::uint32_t>(height)) + le16(1) + le16(bits) + Bytes(24, 0);
}

// --- PNG ---

TEST(Headers, PngDeclaringAHugeImageIsTooLargeBeforeDecoding) {
  expect_error([] { decode(png_declaring(100000, 100000), "bomb.png"); }, dgs::Status::image_too_large,
               "bomb.png: image too large (100000x100000 is over 178,956,970 pixels; a decompression bomb?)");
  // A 16-bit RGBA image under the pixel bound whose decoder buffer is not.
  expect_error([] { decode(png_declaring(13000, 13000, 16, 6), "deep.png"); }, dgs::Status::image_too_large,
               "deep.png: image too large to decode (13000x13000 at up to 8 bytes per pixel is 1,352,000,000 bytes; "
               "the limit is 536,870,910)");
  // The same size in 8-bit grey is allowed; it fails only for its missing rows.
  expect_error([] { decode(png_declaring(13000, 13000), "grey.png"); }, dgs::Status::unreadable_image, "grey.png: ");
}

TEST(Headers, PngTextChunksAreDroppedUninflatedAndThePixelsStillDecode) {
  const cv::Mat grey = gradient(64, 64).reshape(1, 64).colRange(0, 64).clone();
  const Bytes plain = encode(".png", grey);
  // Each zTXt chunk is 8 kB that would inflate to 8 MB: 800 MB for libpng to inflate and keep.
  const Bytes bomb_text = png_chunk("zTXt", text(std::string("note\0\0", 6)) + deflate(Bytes(8'000'000, 'A')));
  const Bytes bomb = slice(plain, 0, plain.size() - 12) + repeat(bomb_text, 100) + slice(plain, plain.size() - 12, plain.size());
  ASSERT_LT(bomb.size(), 1'000'000u);
  Bytes pixels_only;
  const dgs::ImageHeader header = dgs::read_header(bomb.data(), bomb.size(), "text.png", pixels_only);
  EXPECT_EQ(pixels_only, plain);  // exactly the chunks that make the pixels
  EXPECT_EQ(header.payload, static_cast<std::int64_t>(plain.size()));
  dgs::MemoryBudget budget(dgs::limits::decode_memory);
  const auto start = std::chrono::steady_clock::now();
  const cv::Mat out = dgs::decode_bytes(bomb.data(), bomb.size(), "text.png", &budget);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
  EXPECT_TRUE(same(out, decode(plain)));
  // The file, its copy without the text, the decoder's buffer and the RGB copy: nothing for 800 MB of text.
  EXPECT_EQ(budget.peak(), static_cast<std::int64_t>(bomb.size() + plain.size()) + 2 * 64 * 64 * 1);
  // A file with no chunk to drop is decoded as it is.
  dgs::read_header(plain.data(), plain.size(), "plain.png", pixels_only);
  EXPECT_TRUE(pixels_only.empty());
}

TEST(Headers, PngWithTooManyChunksIsRefused) {
  const Bytes plain = encode(".png", cv::Mat::zeros(8, 8, CV_8UC1));
  const Bytes many = slice(plain, 0, 33) + repeat(png_chunk("abCd", {}), 200'001) + slice(plain, 33, plain.size());
  expect_error([&] { decode(many, "chunks.png"); }, dgs::Status::unreadable_image,
               "chunks.png: corrupt PNG (more than 200,000 chunks)");
  const Bytes some = slice(plain, 0, 33) + repeat(png_chunk("abCd", {}), 1000) + slice(plain, 33, plain.size());
  EXPECT_TRUE(same(decode(some), decode(plain)));
}

TEST(Headers, PngChunkRunningPastTheEndNamesItsType) {
  const Bytes plain = encode(".png", cv::Mat::zeros(8, 8, CV_8UC1));
  const Bytes cut = slice(plain, 0, 33 + 12 + 1);  // IDAT's length and type, one byte of its data
  expect_error([&] { decode(cut, "cut.png"); }, dgs::Status::unreadable_image,
               "cut.png: truncated or corrupt PNG (a b'IDAT' chunk runs past the end of the file)");
  const Bytes odd = slice(plain, 0, 33) + be32(0xFFFFFFF0u) + Bytes{0, '\'', 0x7F, '\\'} + Bytes(4, 0);
  expect_error([&] { decode(odd, "odd.png"); }, dgs::Status::unreadable_image,
               "(a b\"\\x00'\\x7f\\\\\" chunk runs past the end of the file)");
  expect_error([&] { decode(slice(plain, 0, 33), "no end.png"); }, dgs::Status::unreadable_image,
               "no end.png: truncated or corrupt PNG (no IEND chunk)");
}

// --- JPEG ---

TEST(Headers, JpegWithTooManySegmentsOrScansIsRefused) {
  const Bytes jpeg = encode(".jpg", gradient(40, 60));
  const Bytes comment = {0xFF, 0xFE, 0x00, 0x03, 'x'};
  expect_error([&] { decode(slice(jpeg, 0, 2) + repeat(comment, 20'000) + slice(jpeg, 2, jpeg.size()), "many.jpg"); },
               dgs::Status::unreadable_image, "many.jpg: corrupt JPEG (more than 10,000 marker segments)");
  std::size_t scan_start = 2;
  while (!(jpeg[scan_start] == 0xFF && jpeg[scan_start + 1] == 0xDA)) ++scan_start;
  const Bytes scan = slice(jpeg, scan_start, jpeg.size() - 2);
  expect_error([&] { decode(slice(jpeg, 0, scan_start) + repeat(scan, 101) + Bytes{0xFF, 0xD9}, "scans.jpg"); },
               dgs::Status::image_too_large,
               "scans.jpg: JPEG with 101 scans of 60x40 pixels; decoding it would take too long");
}

TEST(Headers, JpegDecoderMemoryIsEstimatedFromTheFrame) {
  struct Case {
    std::uint8_t marker;
    Bytes sampling;
    int scans;
    double bytes_per_pixel;
  };
  for (const Case& c : {Case{0xC0, {0x22, 0x11, 0x11}, 1, 3}, Case{0xC0, {0x11, 0x11, 0x11}, 3, 9},
                        Case{0xC2, {0x22, 0x11, 0x11}, 10, 6}, Case{0xC2, {0x11, 0x11, 0x11}, 10, 9},
                        Case{0xC2, {0x11}, 6, 5}}) {
    EXPECT_EQ(header_of(jpeg_skeleton(c.marker, 1000, 800, c.sampling, c.scans)).bytes_per_pixel, c.bytes_per_pixel);
  }
  EXPECT_EQ(header_of(jpeg_skeleton(0xC2, 10000, 8000, {0x22, 0x11, 0x11}, 10)).decoded_bytes(), 480'000'000);
  expect_error([] { header_of(jpeg_skeleton(0xC2, 10000, 8000, {0x11, 0x11, 0x11}, 10), "big444.jpg"); },
               dgs::Status::image_too_large,
               "big444.jpg: image too large to decode (10000x8000 at up to 9.0 bytes per pixel is 720,000,000 bytes");
}

TEST(Headers, FileFarLargerThanItsPixelsNeedIsRefusedUndecoded) {
  const Bytes jpeg = encode(".jpg", gradient(16, 16));
  // Fill bytes before a marker are legal: a megabyte of them is within what metadata may take.
  const Bytes filled = slice(jpeg, 0, 2) + Bytes(1'000'000, 0xFF) + slice(jpeg, 2, jpeg.size());
  EXPECT_TRUE(same(decode(filled), decode(jpeg)));
  const Bytes bloated = slice(jpeg, 0, 2) + Bytes(17'000'000, 0xFF) + slice(jpeg, 2, jpeg.size());
  expect_error([&] { decode(bloated, "filled.jpg"); }, dgs::Status::image_too_large,
               "filled.jpg: " + dgs::thousands(bloated.size()) +
                   " bytes for a 16x16 image, more than its pixels could need (16,781,312); refused undecoded");
  const Bytes bmp = encode(".bmp", gradient(16, 16));
  expect_error([&] { decode(bmp + Bytes(17'000'000, 0), "padded.bmp"); }, dgs::Status::image_too_large,
               "bytes for a 16x16 image, more than its pixels could need");
}

// --- TIFF, WebP, BMP, GIF ---

TEST(Headers, TiffWithAHugeFieldCountIsRefusedBeforeItIsRead) {
  const cv::Mat strips = decode(tiff_strips(1000, true));
  EXPECT_TRUE(same(strips, cv::Mat(1000, 1, CV_8UC3, cv::Scalar(128, 128, 128))));
  expect_error([] { decode(tiff_strips(2'000'000, false), "strips.tif"); }, dgs::Status::image_too_large,
               "strips.tif: TIFF field 273 holds 2,000,000 numbers (at most 250,000 are read)");
  Bytes directory_cut = tiff_strips(10, false);
  directory_cut.resize(40);
  expect_error([&] { decode(directory_cut, "cut.tif"); }, dgs::Status::unreadable_image,
               "cut.tif: truncated or corrupt TIFF (its first directory is cut off)");
  // An entry count that would overflow a naive offset computation.
  Bytes entries = text(std::string("II*\0", 4)) + le32(8) + le16(0xFFFF);
  expect_error([&] { decode(entries, "entries.tif"); }, dgs::Status::unreadable_image, "its first directory is cut off");
  const Bytes big = text(std::string("II+\0", 4)) + le16(8) + le16(0) + le32(0xFFFFFFF0u) + le32(0xFFFFFFFFu);
  expect_error([&] { decode(big, "big.tif"); }, dgs::Status::unreadable_image, "its first directory is cut off");
}

TEST(Headers, TiffSizeComesFromItsFirstDirectory) {
  const dgs::ImageHeader header = header_of(encode(".tiff", gradient(30, 50)));
  EXPECT_EQ(header.format, "TIFF");
  EXPECT_EQ(header.width, 50u);
  EXPECT_EQ(header.height, 30u);
  EXPECT_EQ(header.bytes_per_pixel, 4);
  cv::Mat deep;
  gradient(30, 50).convertTo(deep, CV_16UC3, 257);
  EXPECT_EQ(header_of(encode(".tiff", deep)).bytes_per_pixel, 8);
}

TEST(Headers, WebpWithTooManyChunksIsRefused) {
  const Bytes webp = encode(".webp", gradient(8, 8));
  const Bytes body = slice(webp, 12, webp.size()) + repeat(text(std::string("JUNK\0\0\0\0", 8)), 100'001);
  const Bytes junk = text("RIFF") + le32(static_cast<std::uint32_t>(body.size() + 4)) + text("WEBP") + body;
  expect_error([&] { decode(junk, "junk.webp"); }, dgs::Status::image_too_large,
               "junk.webp: WebP with more than 100,000 chunks");
  const dgs::ImageHeader header = header_of(webp);
  EXPECT_EQ(header.width, 8u);
  EXPECT_EQ(header.height, 8u);
  const Bytes lossless = encode(".webp", gradient(20, 30), {cv::IMWRITE_WEBP_QUALITY, 101});
  EXPECT_EQ(header_of(lossless).width, 30u);
  EXPECT_EQ(header_of(lossless).height, 20u);
  // A VP8X canvas of 8192 x 8192 (under the bounds) and 2^24 x 2^24 (over them).
  const Bytes vp8x = text("RIFF") + le32(22) + text("WEBPVP8X") + le32(10) + Bytes{0, 0, 0, 0};
  EXPECT_EQ(header_of(vp8x + Bytes{0xFF, 0x1F, 0, 0xFF, 0x1F, 0}).pixels(), 8192u * 8192u);
  expect_error([&] { decode(vp8x + Bytes{0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF}, "canvas.webp"); },
               dgs::Status::image_too_large, "canvas.webp: image too large (16777216x16777216 is over");
}

TEST(Headers, BmpSizeComesFromItsInfoHeader) {
  const dgs::ImageHeader header = header_of(encode(".bmp", gradient(30, 50)));
  EXPECT_EQ(header.width, 50u);
  EXPECT_EQ(header.height, 30u);
  EXPECT_EQ(header_of(bmp_declaring(50, -30)).height, 30u);  // top-down rows
  expect_error([] { decode(bmp_declaring(100000, 100000), "bomb.bmp"); }, dgs::Status::image_too_large,
               "bomb.bmp: image too large (100000x100000 is over");
  expect_error([] { decode(bmp_declaring(-1, -1), "wide.bmp"); }, dgs::Status::image_too_large,
               "wide.bmp: image too large (4294967295x1 is over");
  expect_error([] { decode(bmp_declaring(8, 8, 7), "bits.bmp"); }, dgs::Status::unreadable_image,
               "bits.bmp: corrupt BMP file (its header cannot be read)");
}

TEST(Headers, GifBlocksAreCountedBeforeTheNativeCoreRefusesGif) {
  const Bytes comment = Bytes{0x21, 0xFE} + repeat(Bytes{0x01, 'x'}, 1'000'001) + Bytes{0x00};
  expect_error([&] { decode(tiny_gif(comment), "comment.gif"); }, dgs::Status::image_too_large,
               "comment.gif: GIF with more than 1,000,000 data blocks before the end of its first frame");
  const dgs::ImageHeader header = header_of(tiny_gif(text(std::string("\x21\xfe\x05hello\0", 9))));
  EXPECT_EQ(header.width, 2u);
  EXPECT_EQ(header.height, 1u);
  EXPECT_EQ(header.payload, static_cast<std::int64_t>(tiny_gif().size() + 9 - 1));  // up to the trailer
  if (CV_VERSION_MAJOR == 4 && CV_VERSION_MINOR < 11) {
    expect_error([] { decode(tiny_gif(), "a.gif"); }, dgs::Status::unreadable_image,
                 "a.gif: GIF cannot be decoded by the native core's OpenCV");
  }
}

// --- any cut, any corrupted byte ---

// Every prefix of a small file of each format, and its header with random bytes overwritten: the walk refuses
// with a dgs::Error or gives a size, never reads out of bounds (run under a sanitizer to see it) nor hangs.
TEST(Headers, EveryTruncationAndCorruptionOfTheHeaderIsHandled) {
  const cv::Mat image = gradient(12, 10);
  const std::vector<Bytes> files = {encode(".jpg", image), encode(".jpg", image, {cv::IMWRITE_JPEG_PROGRESSIVE, 1}),
                                    encode(".png", image),  encode(".webp", image),
                                    encode(".bmp", image),  encode(".tiff", image),
                                    tiny_gif()};
  std::mt19937 random(7);
  for (const Bytes& file : files) {
    const char* format = dgs::sniff_format(file.data(), file.size());
    ASSERT_NE(format, nullptr);
    for (std::size_t size = 1; size < file.size(); ++size) {
      const Bytes prefix = slice(file, 0, size);
      try {
        header_of(prefix);
        // Only formats whose header is read without walking to the end may pass the walk cut short, and a GIF
        // without its trailer (the walk ends with the first frame).
        const std::string f = format;
        EXPECT_TRUE(f == "WebP" || f == "BMP" || f == "TIFF" || (f == "GIF" && size == file.size() - 1))
            << format << " cut to " << size << " bytes passed the walk";
      } catch (const dgs::Error& e) {
        EXPECT_EQ(e.status(), dgs::Status::unreadable_image) << e.what();
      }
    }
    for (int trial = 0; trial < 3000; ++trial) {
      Bytes corrupt = file;
      const std::size_t span = std::min<std::size_t>(corrupt.size(), 200);
      for (int k = 0; k < 3; ++k) corrupt[random() % span] = static_cast<std::uint8_t>(random());
      try {
        header_of(corrupt);
      } catch (const dgs::Error& e) {
        EXPECT_TRUE(e.status() == dgs::Status::unreadable_image || e.status() == dgs::Status::image_too_large)
            << e.what();
      }
    }
  }
}

// --- the memory budget ---

// Runs `work(i)` on `threads` threads; false if they have not all finished within `limit` (they are then left
// running, detached: a deadlock).
template <typename Work>
bool run_threads(int threads, Work work, std::chrono::seconds limit = std::chrono::seconds(30)) {
  std::mutex mutex;
  std::condition_variable finished;
  int done = 0;
  std::vector<std::thread> pool;
  for (int i = 0; i < threads; ++i) {
    pool.emplace_back([&, i] {
      work(i);
      std::lock_guard<std::mutex> lock(mutex);
      ++done;
      finished.notify_all();
    });
  }
  std::unique_lock<std::mutex> lock(mutex);
  const bool all = finished.wait_for(lock, limit, [&] { return done == threads; });
  lock.unlock();
  for (auto& thread : pool) all ? thread.join() : thread.detach();
  return all;
}

TEST(MemoryBudget, NeedsAPositiveCapacity) {
  expect_error([] { dgs::MemoryBudget budget(0); }, dgs::Status::invalid_argument,
               "a memory budget needs a positive capacity, got 0");
}

TEST(MemoryBudget, RequestsWaitAndAnOversizedOneIsCutToTheBudget) {
  dgs::MemoryBudget budget(100);
  std::atomic<bool> second_held{false};
  std::thread second;
  {
    dgs::Reservation first(budget, 80);
    second = std::thread([&] {
      dgs::Reservation r(budget, 50);  // 80 + 50 > 100: waits for the first
      second_held = true;
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    EXPECT_FALSE(second_held);
  }
  second.join();
  EXPECT_TRUE(second_held);
  EXPECT_EQ(budget.peak(), 80);
  EXPECT_EQ(budget.used(), 0);
  dgs::Reservation all(budget, std::int64_t{1} << 40);
  EXPECT_EQ(all.held(), 100);
  EXPECT_EQ(budget.used(), 100);
  all.resize(-5);  // negative: nothing
  EXPECT_EQ(budget.used(), 0);
}

TEST(MemoryBudget, HoldersThatAllWaitToGrowDoNotDeadlock) {
  // Two decodes each hold 40 of 100 bytes and both need 90: one goes ahead, finishes, then the other.
  dgs::MemoryBudget budget(100);
  std::mutex mutex;
  std::condition_variable both;
  int holding = 0;
  ASSERT_TRUE(run_threads(2, [&](int) {
    dgs::Reservation r(budget, 40);
    {
      std::unique_lock<std::mutex> lock(mutex);
      ++holding;
      both.notify_all();
      both.wait(lock, [&] { return holding == 2; });
    }
    r.resize(90);  // while holding 40: never released while it waits
  }));
  EXPECT_EQ(budget.used(), 0);
  EXPECT_EQ(budget.peak(), 130);  // over by one decode's growth, only while the other held its share
}

TEST(MemoryBudget, HoldersThatDoNotGrowNeverExceedTheCapacity) {
  dgs::MemoryBudget budget(1000);
  std::atomic<std::int64_t> held{0}, most{0};
  ASSERT_TRUE(run_threads(8, [&](int i) {
    std::mt19937 random(static_cast<unsigned>(i));
    for (int k = 0; k < 500; ++k) {
      const std::int64_t bytes = 1 + static_cast<std::int64_t>(random() % 600);
      dgs::Reservation r(budget, bytes);
      const std::int64_t now = held += bytes;
      std::int64_t seen = most;
      while (now > seen && !most.compare_exchange_weak(seen, now)) {
      }
      std::this_thread::yield();
      held -= bytes;
    }
  }));
  EXPECT_LE(most.load(), 1000);
  EXPECT_LE(budget.peak(), 1000);
  EXPECT_GT(budget.peak(), 600);  // they did overlap
  EXPECT_EQ(budget.used(), 0);
}

TEST(MemoryBudget, ManyThreadsAllGrowingFinishWithinTwiceTheCapacity) {
  // Each holds a share, then grows while holding it: the anti-deadlock rule lets one stuck holder through at a
  // time, by at most one request, so the peak stays under twice the capacity and every thread finishes.
  dgs::MemoryBudget budget(1000);
  ASSERT_TRUE(run_threads(8, [&](int i) {
    std::mt19937 random(static_cast<unsigned>(100 + i));
    for (int k = 0; k < 300; ++k) {
      dgs::Reservation r(budget, 1 + static_cast<std::int64_t>(random() % 400));
      r.resize(r.held() + 1 + static_cast<std::int64_t>(random() % 800));
      std::this_thread::yield();
      r.resize(r.held() / 2);
    }
  }));
  EXPECT_EQ(budget.used(), 0);
  EXPECT_GT(budget.peak(), 0);
  EXPECT_LE(budget.peak(), 2000);
}

TEST(MemoryBudget, DecodesReserveTheFileThenWhatTheHeaderSaysDecodingTakes) {
  const Bytes png = encode(".png", gradient(40, 30));
  dgs::MemoryBudget budget(dgs::limits::decode_memory);
  dgs::decode_bytes(png.data(), png.size(), "a.png", &budget);
  EXPECT_EQ(budget.peak(), static_cast<std::int64_t>(png.size()) + 2 * 30 * 40 * 3);
  EXPECT_EQ(budget.used(), 0);
  const std::string path = ::testing::TempDir() + "dgs_test_headers_budget.png";
  ASSERT_TRUE(cv::imwrite(path, gradient(40, 30)));
  dgs::MemoryBudget file_budget(dgs::limits::decode_memory);
  EXPECT_TRUE(same(dgs::decode_file(path, &file_budget), dgs::decode_bytes(png.data(), png.size(), "a.png")));
  EXPECT_GT(file_budget.peak(), 2 * 30 * 40 * 3);
  EXPECT_EQ(file_budget.used(), 0);
  std::remove(path.c_str());
  // A refused file gives its share back too.
  expect_error([&] { dgs::decode_bytes(png.data(), 20, "cut.png", &budget); }, dgs::Status::unreadable_image, "cut.png");
  EXPECT_EQ(budget.used(), 0);
}

TEST(MemoryBudget, ConcurrentDecodesShareOneBudget) {
  std::vector<Bytes> files;
  std::int64_t per_image = 0;
  for (int i = 0; i < 16; ++i) {
    files.push_back(encode(".png", gradient(100 + 10 * i, 120)));
    per_image = std::max<std::int64_t>(per_image, static_cast<std::int64_t>(files.back().size()) +
                                                      2 * (100 + 10 * i) * 120 * 3);
  }
  dgs::MemoryBudget budget(2 * per_image);  // room for two decodes at a time
  std::vector<cv::Mat> out(files.size());
  ASSERT_TRUE(run_threads(8, [&](int t) {
    for (std::size_t i = static_cast<std::size_t>(t); i < files.size(); i += 8) {
      out[i] = dgs::decode_bytes(files[i].data(), files[i].size(), "p.png", &budget);
    }
  }));
  for (std::size_t i = 0; i < files.size(); ++i) EXPECT_TRUE(same(out[i], decode(files[i])));
  EXPECT_GT(budget.peak(), 0);
  EXPECT_LE(budget.peak(), 2 * per_image);
  EXPECT_EQ(budget.used(), 0);
}

}  // namespace

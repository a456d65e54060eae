// Decoding into 8-bit RGB, mirroring dgs_sdk/image.py and the file reading of dgs_sdk/files.py: only regular files
// are opened, sizes and pixels are bounded, and every error names the input as Python's messages do.
//
// Not ported (yet): dgs_sdk/headers.py's walk of each format's structure before decoding (JPEG segments and scans,
// PNG chunks and the dropping of text chunks, GIF blocks, TIFF directories, WebP chunks) and the decoded-bytes and
// bytes-per-pixel bounds it enforces, and the shared MemoryBudget. Here OpenCV's own pixel bound
// (OPENCV_IO_MAX_IMAGE_PIXELS) and a check of the decoded size stand in.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "dgs/error.hpp"
#include "dgs/limits.hpp"
#include "dgs/preprocess.hpp"

namespace dgs {
namespace {

// 1234567 -> "1,234,567", as Python's f"{n:,}".
std::string thousands(long long n) {
  std::string digits = std::to_string(n < 0 ? -n : n), out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return n < 0 ? "-" + out : out;
}

Error unreadable(const std::string& name, const std::string& problem) {
  return Error(Status::unreadable_image, name + ": " + problem);
}

// OpenCV 4.6 reads OPENCV_IO_MAX_IMAGE_PIXELS when libopencv_imgcodecs is loaded, so setting it here only helps
// where the library is loaded later (dgs_native imported after dgs_sdk, which sets it too); like
// dgs_sdk/__init__.py, a value the user set is kept. The sizes that declared_pixels reads, and the check after
// decoding, hold the bound either way.
void bound_opencv_pixels() {
  static std::once_flag once;
  std::call_once(once, [] {
    ::setenv("OPENCV_IO_MAX_IMAGE_PIXELS", std::to_string(limits::max_pixels).c_str(), 0);
  });
}

// sniff_format of dgs_sdk/headers.py: the formats dgs decodes, named by their first bytes.
const char* sniff_format(const std::uint8_t* data, std::size_t size) {
  auto starts = [&](const char* magic, std::size_t n) { return size >= n && std::memcmp(data, magic, n) == 0; };
  if (starts("\xff\xd8\xff", 3)) return "JPEG";
  if (starts("\x89PNG\r\n\x1a\n", 8)) return "PNG";
  if (starts("GIF87a", 6) || starts("GIF89a", 6)) return "GIF";
  if (size >= 12 && std::memcmp(data, "RIFF", 4) == 0 && std::memcmp(data + 8, "WEBP", 4) == 0) return "WebP";
  if (starts("BM", 2)) return "BMP";
  if (starts("II*\0", 4) || starts("MM\0*", 4) || starts("II+\0", 4) || starts("MM\0+", 4)) return "TIFF";
  return nullptr;
}

std::uint32_t be16(const std::uint8_t* p) { return (std::uint32_t{p[0]} << 8) | p[1]; }
std::uint32_t be32(const std::uint8_t* p) { return (be16(p) << 16) | be16(p + 2); }
std::uint32_t le32(const std::uint8_t* p) {
  return std::uint32_t{p[0]} | (std::uint32_t{p[1]} << 8) | (std::uint32_t{p[2]} << 16) | (std::uint32_t{p[3]} << 24);
}

// The pixel count a PNG, BMP or JPEG header declares, read before the decoder allocates anything; -1 where it is
// not found here (other formats, or a header the decoder will refuse anyway). Not dgs_sdk/headers.py's walk:
// only the size, so that a small file declaring a huge image is refused undecoded.
long long declared_pixels(const std::string& fmt, const std::uint8_t* data, std::size_t size) {
  if (fmt == "PNG" && size >= 24 && std::memcmp(data + 12, "IHDR", 4) == 0) {
    return static_cast<long long>(be32(data + 16)) * be32(data + 20);
  }
  if (fmt == "BMP" && size >= 26) {
    const auto width = static_cast<std::int32_t>(le32(data + 18)), height = static_cast<std::int32_t>(le32(data + 22));
    return std::llabs(static_cast<long long>(width)) * std::llabs(static_cast<long long>(height));
  }
  if (fmt == "JPEG") {  // marker segments up to the first start-of-frame, which carries the size
    std::size_t at = 2;
    while (at + 4 <= size && data[at] == 0xFF) {
      const std::uint8_t marker = data[at + 1];
      if (marker == 0xFF) {  // fill byte
        ++at;
        continue;
      }
      const std::size_t length = be16(data + at + 2);
      const bool sof = marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
      if (sof && at + 9 <= size) return static_cast<long long>(be16(data + at + 5)) * be16(data + at + 7);
      if (marker == 0xDA || length < 2) break;  // scan data before any frame header: the decoder refuses it
      at += 2 + length;
    }
  }
  return -1;
}

// The last line of an OpenCV error, without surrounding blanks (as Python's str(e).strip().splitlines()[-1]).
std::string last_line(const std::string& text) {
  std::size_t end = text.find_last_not_of(" \t\r\n");
  if (end == std::string::npos) return "";
  std::size_t start = text.rfind('\n', end);
  start = start == std::string::npos ? 0 : start + 1;
  std::size_t first = text.find_first_not_of(" \t\r", start);
  return text.substr(first, end - first + 1);
}

// to_rgb8 of dgs_sdk/image.py for a decoded image: 8-bit RGB, grey replicated, alpha dropped, 16-bit scaled with
// rounding. `bgr` says the channels are in OpenCV's order.
cv::Mat to_rgb8(cv::Mat image, const std::string& name, bool bgr) {
  if (image.channels() == 2) {  // grey + alpha: the grey
    cv::extractChannel(image, image, 0);
  }
  const int channels = image.channels();
  if (image.dims != 2 || (channels != 1 && channels != 3 && channels != 4)) {
    throw unreadable(name, "expected an image of 1 to 4 channels, got " + std::to_string(channels));
  }
  if (image.rows == 0 || image.cols == 0) {
    throw unreadable(name, "image has no pixels (" + std::to_string(image.cols) + "x" + std::to_string(image.rows) + ")");
  }
  if (static_cast<long long>(image.rows) * image.cols > limits::max_pixels) {
    throw Error(Status::image_too_large, name + ": image too large (" + std::to_string(image.cols) + "x" +
                                             std::to_string(image.rows) + " is over " +
                                             thousands(limits::max_pixels) + " pixels)");
  }
  if (image.depth() == CV_16U) {
    // round(x / 257) in one pass; x / 257 is never halfway between two integers.
    cv::Mat scaled;
    cv::convertScaleAbs(image, scaled, 1.0 / 257.0);
    image = scaled;
  } else if (image.depth() != CV_8U) {
    throw unreadable(name, "unsupported pixel type (expected 8 or 16 bits per channel)");
  }
  cv::Mat rgb;
  if (channels == 1) {
    cv::cvtColor(image, rgb, cv::COLOR_GRAY2RGB);
  } else if (channels == 3) {
    if (bgr) {
      cv::cvtColor(image, rgb, cv::COLOR_BGR2RGB);
    } else {
      rgb = image.isContinuous() ? image : image.clone();
    }
  } else {
    cv::cvtColor(image, rgb, bgr ? cv::COLOR_BGRA2RGB : cv::COLOR_RGBA2RGB);
  }
  return rgb;
}

// read_regular of dgs_sdk/files.py: a regular file of at most `max_bytes`, refused unopened otherwise.
std::vector<std::uint8_t> read_regular(const std::string& name, long long max_bytes) {
  struct stat st {};
  if (::stat(name.c_str(), &st) != 0) {
    const int error = errno;
    struct stat link {};
    if (error == ENOENT && ::lstat(name.c_str(), &link) == 0 && S_ISLNK(link.st_mode)) {
      std::vector<char> target(static_cast<std::size_t>(link.st_size > 0 ? link.st_size : 4096) + 1);
      const ssize_t n = ::readlink(name.c_str(), target.data(), target.size() - 1);
      const std::string to = n >= 0 ? std::string(target.data(), static_cast<std::size_t>(n)) : "?";
      throw unreadable(name, "broken symbolic link (target '" + to + "' does not exist)");
    }
    if (error == ENOENT || error == ENOTDIR) throw unreadable(name, "no such file");
    if (error == EACCES) throw unreadable(name, "permission denied");
    throw unreadable(name, std::string("cannot be opened (") + std::strerror(error) + ")");
  }
  if (S_ISDIR(st.st_mode)) throw unreadable(name, "is a directory, not a file");
  if (!S_ISREG(st.st_mode)) throw unreadable(name, "is not a regular file (a device, pipe or socket); it was not opened");
  if (st.st_size > max_bytes) {
    throw unreadable(name, "file too large (" + thousands(st.st_size) + " bytes; the limit is " +
                               thousands(max_bytes) + ")");
  }
  // Non-blocking: should the path have been swapped for a FIFO since stat, opening it does not wait.
  const int fd = ::open(name.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) {
    const int error = errno;
    if (error == ENOENT) throw unreadable(name, "no such file");
    if (error == EACCES) throw unreadable(name, "permission denied");
    throw unreadable(name, std::string("cannot be opened (") + std::strerror(error) + ")");
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat opened {};
  if (::fstat(fd, &opened) != 0 || opened.st_dev != st.st_dev || opened.st_ino != st.st_ino ||
      opened.st_size > max_bytes) {
    throw unreadable(name, "changed while it was being opened");
  }
  // No more than the size at opening: a file that grows meanwhile is read as it was.
  std::vector<std::uint8_t> data(static_cast<std::size_t>(opened.st_size));
  std::size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::read(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw unreadable(name, std::string("cannot be read (") + std::strerror(errno) + ")");
    }
    if (n == 0) break;  // shrank since it was opened
    done += static_cast<std::size_t>(n);
  }
  data.resize(done);
  return data;
}

// OpenCV has a GIF decoder from 4.11 on (built in by default from 4.12); an older one returns an empty image,
// which would read as a corrupt file.
constexpr bool opencv_has_gif = CV_VERSION_MAJOR > 4 || (CV_VERSION_MAJOR == 4 && CV_VERSION_MINOR >= 11);

}  // namespace

cv::Mat decode_bytes(const std::uint8_t* data, std::size_t size, const std::string& name) {
  if (data == nullptr && size > 0) throw Error(Status::invalid_argument, name + ": no data (a null pointer)");
  if (size == 0) throw unreadable(name, "empty file (0 bytes)");
  if (size > static_cast<std::size_t>(limits::max_file_bytes)) {
    throw unreadable(name, "file too large (" + thousands(static_cast<long long>(size)) + " bytes; the limit is " +
                               thousands(limits::max_file_bytes) + ")");
  }
  const char* format = sniff_format(data, size);
  if (format == nullptr) throw unreadable(name, "not an image in a supported format (JPEG, PNG, GIF, WebP, BMP, TIFF)");
  const std::string fmt = format;
  if (fmt == "GIF" && !opencv_has_gif) {
    throw unreadable(name, "GIF cannot be decoded by the native core's OpenCV (" CV_VERSION "; GIF needs 4.11 or later)");
  }
  if (declared_pixels(fmt, data, size) > limits::max_pixels) {
    throw Error(Status::image_too_large, name + ": image too large (over " + thousands(limits::max_pixels) +
                                             " pixels; a decompression bomb?)");
  }
  bound_opencv_pixels();
  // JPEG is 8-bit without alpha: decoded to colour directly (grey and CMYK converted), BGR in OpenCV 4.6 which has
  // no IMREAD_COLOR_RGB. Other formats come unchanged (16-bit, alpha, grey) and to_rgb8 brings them to 8-bit RGB.
  const bool jpeg = fmt == "JPEG";
  const int flags = jpeg ? (cv::IMREAD_COLOR | cv::IMREAD_IGNORE_ORIENTATION) : cv::IMREAD_UNCHANGED;
  cv::Mat decoded;
  try {
    // A header over no copy of the caller's bytes; imdecode only reads them.
    const cv::Mat encoded(1, static_cast<int>(size), CV_8U, const_cast<std::uint8_t*>(data));
    decoded = cv::imdecode(encoded, flags);
  } catch (const cv::Exception& e) {
    const std::string what = e.what();
    if (what.find("MAX_IMAGE_PIXELS") != std::string::npos || what.find("validateInputImageSize") != std::string::npos) {
      throw Error(Status::image_too_large, name + ": image too large (a decompression bomb?)");
    }
    throw unreadable(name, "corrupt " + fmt + " (" + last_line(what) + ")");
  }
  if (decoded.empty()) {
    throw unreadable(name, "corrupt or truncated " + fmt + " file" +
                               (fmt == "GIF" ? " (or an OpenCV built without its GIF decoder)" : ""));
  }
  return to_rgb8(decoded, name, /*bgr=*/true);
}

cv::Mat decode_file(const std::string& path) {
  const std::vector<std::uint8_t> data = read_regular(path, limits::max_file_bytes);
  return decode_bytes(data.data(), data.size(), path);
}

cv::Mat rgb_image(const std::uint8_t* data, int width, int height, std::size_t stride, const std::string& name) {
  if (data == nullptr) throw Error(Status::invalid_argument, name + ": no pixels (a null pointer)");
  if (width <= 0 || height <= 0) {
    throw unreadable(name, "image has no pixels (" + std::to_string(width) + "x" + std::to_string(height) + ")");
  }
  if (static_cast<long long>(width) * height > limits::max_pixels) {
    throw Error(Status::image_too_large, name + ": image too large (" + std::to_string(width) + "x" +
                                             std::to_string(height) + " is over " + thousands(limits::max_pixels) +
                                             " pixels)");
  }
  const std::size_t row_bytes = static_cast<std::size_t>(width) * 3;
  if (stride == 0) stride = row_bytes;
  if (stride < row_bytes) {
    throw Error(Status::invalid_argument, name + ": stride " + std::to_string(stride) + " is less than " +
                                              std::to_string(row_bytes) + " bytes per row of " +
                                              std::to_string(width) + " RGB pixels");
  }
  return cv::Mat(height, width, CV_8UC3, const_cast<std::uint8_t*>(data), stride).clone();
}

}  // namespace dgs

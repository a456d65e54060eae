// Decoding into 8-bit RGB, mirroring dgs_sdk/image.py and the file reading of dgs_sdk/files.py: only regular files
// are opened, sizes and pixels are bounded, and every error names the input as Python's messages do.
//
// Ported from the Python SDK: dgs_sdk/headers.py's walk of each format's structure before decoding (headers.cpp:
// JPEG segments and scans, PNG chunks with the non-pixel ones dropped, GIF blocks, TIFF's first directory, WebP
// chunks) with every bound of dgs_sdk/limits.py it enforces, and the shared MemoryBudget of dgs_sdk/memory.py
// (dgs/memory_budget.hpp), reserved as image.py reserves it: the file's bytes, then what its header says decoding
// takes; a caller that passes its own Reservation (the Detector does) keeps holding it while it preprocesses the
// image, as Python does. One difference remains: GIF is refused after its walk, as OpenCV before 4.11 has no GIF
// decoder (Python's cv2 has one).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "dgs/error.hpp"
#include "dgs/limits.hpp"
#include "dgs/memory_budget.hpp"
#include "dgs/preprocess.hpp"
#include "headers.hpp"

namespace dgs {
namespace {

Error unreadable(const std::string& name, const std::string& problem) {
  return Error(Status::unreadable_image, name + ": " + problem);
}

// OPENCV_IO_MAX_IMAGE_PIXELS is not set here, as dgs_sdk sets it: OpenCV reads it when its imgcodecs library is
// loaded, before this code runs, and setenv on a decoding thread would race with getenv on others. The header walk
// bounds the pixels of every format before OpenCV sees the bytes, and the decoded size is checked after.

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

// Whether the real path `path` is `root` or lies under it (dgs_sdk.files.inside).
bool inside(const std::string& path, const std::string& root) {
  std::string prefix = root;
  while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
  return path == root || path.compare(0, prefix.size() + 1, prefix + "/") == 0;
}

// The real path of the file open at `fd`, from the kernel (dgs_sdk.files.opened_path); else from `name`.
std::string opened_path(int fd, const std::string& name) {
  char target[4096];
  const std::string link = "/proc/self/fd/" + std::to_string(fd);
  const ssize_t n = ::readlink(link.c_str(), target, sizeof target);
  if (n > 0 && static_cast<std::size_t>(n) < sizeof target) return std::string(target, static_cast<std::size_t>(n));
  char* real = ::realpath(name.c_str(), nullptr);
  std::string out = real ? real : name;
  std::free(real);
  return out;
}

// read_regular of dgs_sdk/files.py: a regular file of at most `max_bytes`, refused unopened otherwise; with a
// `root` (a real path), refused when the file actually opened lies outside it (a link swapped in after the folder
// was listed), as for a ConfinedPath. `reserve` is called with its size before anything is read (to account for
// the memory).
std::vector<std::uint8_t> read_regular(const std::string& name, long long max_bytes, const std::string& root,
                                       const std::function<void(std::int64_t)>& reserve) {
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
  if (!root.empty()) {
    const std::string real = opened_path(fd, name);
    if (!inside(real, root)) {
      throw unreadable(name, "leads to " + real + ", outside the scanned folder " + root + "; not read");
    }
  }
  reserve(static_cast<std::int64_t>(opened.st_size));
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

// _decode of dgs_sdk/image.py: `data` checked, its header walked, and decoded while `reservation` holds the file,
// the copy of a PNG without its text chunks, the decoder's buffer and the RGB copy.
cv::Mat decode(const std::uint8_t* data, std::size_t size, const std::string& name, Reservation& reservation) {
  if (size == 0) throw unreadable(name, "empty file (0 bytes)");
  std::vector<std::uint8_t> pixels_only;
  const ImageHeader header = read_header(data, size, name, pixels_only);
  const std::string& fmt = header.format;
  if (fmt == "GIF" && !opencv_has_gif) {
    throw unreadable(name, "GIF cannot be decoded by the native core's OpenCV (" CV_VERSION "; GIF needs 4.11 or later)");
  }
  // Each term is at most 3 x max_decoded_bytes or max_file_bytes: no overflow.
  reservation.resize(static_cast<std::int64_t>(size + pixels_only.size()) + 2 * header.decoded_bytes());
  const std::uint8_t* encoded = pixels_only.empty() ? data : pixels_only.data();
  const std::size_t encoded_size = pixels_only.empty() ? size : pixels_only.size();
  // JPEG is 8-bit without alpha: decoded to colour directly (grey and CMYK converted), BGR in OpenCV 4.6 which has
  // no IMREAD_COLOR_RGB. Other formats come unchanged (16-bit, alpha, grey) and to_rgb8 brings them to 8-bit RGB.
  const bool jpeg = fmt == "JPEG";
  const int flags = jpeg ? (cv::IMREAD_COLOR | cv::IMREAD_IGNORE_ORIENTATION) : cv::IMREAD_UNCHANGED;
  cv::Mat decoded;
  try {
    // A header over no copy of the bytes; imdecode only reads them.
    const cv::Mat bytes(1, static_cast<int>(encoded_size), CV_8U, const_cast<std::uint8_t*>(encoded));
    decoded = cv::imdecode(bytes, flags);
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

}  // namespace

cv::Mat decode_bytes(const std::uint8_t* data, std::size_t size, const std::string& name, Reservation& reservation) {
  if (data == nullptr && size > 0) throw Error(Status::invalid_argument, name + ": no data (a null pointer)");
  if (size > static_cast<std::size_t>(limits::max_file_bytes)) {
    throw unreadable(name, "file too large (" + thousands(size) + " bytes; the limit is " +
                               thousands(limits::max_file_bytes) + ")");
  }
  reservation.resize(static_cast<std::int64_t>(size));
  return decode(data, size, name, reservation);
}

cv::Mat decode_bytes(const std::uint8_t* data, std::size_t size, const std::string& name, MemoryBudget* budget) {
  Reservation reservation(budget != nullptr ? *budget : default_decode_budget());
  return decode_bytes(data, size, name, reservation);
}

cv::Mat decode_file(const std::string& path, Reservation& reservation, const std::string& confine_root) {
  // The file's bytes count against the budget before they are read.
  const std::vector<std::uint8_t> data = read_regular(path, limits::max_file_bytes, confine_root,
                                                      [&](std::int64_t bytes) { reservation.resize(bytes); });
  return decode(data.data(), data.size(), path, reservation);
}

cv::Mat decode_file(const std::string& path, MemoryBudget* budget) {
  Reservation reservation(budget != nullptr ? *budget : default_decode_budget());
  return decode_file(path, reservation);
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

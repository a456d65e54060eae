// dgs_sdk/headers.py in C++: each format's structure walked before decoding, and what decoding it will cost.
// Where Python asks Pillow for the size of a WebP, BMP or TIFF, the same fields are read here directly (Pillow's
// _get_size for WebP, the BMP info header, ImageWidth and ImageLength of a TIFF's first directory).
//
// The file is hostile: every read goes through a bounds check against its size, offsets and counts are compared
// by subtraction so that nothing overflows, and each loop advances through the file or counts against a bound.
#include "headers.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <utility>

#include "dgs/error.hpp"
#include "dgs/limits.hpp"

namespace dgs {
namespace {

Error unreadable(const std::string& name, const std::string& problem) {
  return Error(Status::unreadable_image, name + ": " + problem);
}

Error too_large(const std::string& name, const std::string& problem) {
  return Error(Status::image_too_large, name + ": " + problem);
}

std::string size_text(std::uint64_t width, std::uint64_t height) {
  return std::to_string(width) + "x" + std::to_string(height);
}

// `count` bytes at `at` of a file of `size` bytes, in that byte order; the caller has checked they exist.
std::uint64_t read_number(const std::uint8_t* p, unsigned count, bool little_endian) {
  std::uint64_t value = 0;
  for (unsigned k = 0; k < count; ++k) {
    value = (value << 8) | p[little_endian ? count - 1 - k : k];
  }
  return value;
}

std::uint64_t be16(const std::uint8_t* p) { return read_number(p, 2, false); }
std::uint64_t be32(const std::uint8_t* p) { return read_number(p, 4, false); }
std::uint64_t le16(const std::uint8_t* p) { return read_number(p, 2, true); }
std::uint64_t le32(const std::uint8_t* p) { return read_number(p, 4, true); }

// Whether `count` bytes at offset `at` lie inside a file of `size` bytes, for any 64-bit `at` and `count`.
bool inside(std::uint64_t at, std::uint64_t count, std::size_t size) { return at <= size && count <= size - at; }

// Python's repr of a bytes object (b'IDAT', b'\x00abc'), as its messages show chunk types.
std::string bytes_repr(const std::uint8_t* p, std::size_t n) {
  const bool single = std::memchr(p, '\'', n) != nullptr, dbl = std::memchr(p, '"', n) != nullptr;
  const char quote = single && !dbl ? '"' : '\'';
  std::string out = "b";
  out += quote;
  for (std::size_t k = 0; k < n; ++k) {
    const unsigned char c = p[k];
    if (c == static_cast<unsigned char>(quote) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c < 0x20 || c >= 0x7F) {
      char hex[5];
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      out += hex;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + quote;
}

// A number as Python prints it: an int (8), or a float's shortest round-trip form (9.0, 6.5).
std::string python_number(double value, bool is_float) {
  if (!is_float) return std::to_string(static_cast<long long>(value));
  char text[32];
  for (int digits = 1; digits <= 17; ++digits) {
    std::snprintf(text, sizeof text, "%.*g", digits, value);
    if (std::strtod(text, nullptr) == value) break;
  }
  std::string out = text;
  if (out.find_first_of(".en") == std::string::npos) out += ".0";
  return out;
}

// --- JPEG ----------------------------------------------------------------------------------------------------------

// Start-of-frame markers carry the image size; 0xC4 (DHT), 0xC8 (JPG) and 0xCC (DAC) share their range.
bool is_start_of_frame(std::uint8_t marker) {
  return marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
}

struct JpegFrame {
  std::uint64_t width = 0;
  std::uint64_t height = 0;
  double coefficients = 0;  // coefficient bytes per pixel: 2 per sample, with each component's subsampling
};

// A start-of-frame segment (its length field included, cut to what the file holds).
JpegFrame jpeg_frame(const std::uint8_t* segment, std::size_t length, const std::string& name) {
  if (length < 8 || length < 8 + 3 * static_cast<std::size_t>(segment[7])) {
    throw unreadable(name, "corrupt JPEG (a short frame header)");
  }
  JpegFrame frame;
  frame.height = be16(segment + 3);
  frame.width = be16(segment + 5);
  if (frame.width == 0 || frame.height == 0) {
    throw unreadable(name, "corrupt JPEG (frame header gives " + size_text(frame.width, frame.height) + " pixels)");
  }
  const unsigned components = segment[7];
  unsigned h_max = 0, v_max = 0;
  for (unsigned k = 0; k < components; ++k) {
    h_max = std::max(h_max, static_cast<unsigned>(segment[9 + 3 * k] >> 4));
    v_max = std::max(v_max, static_cast<unsigned>(segment[9 + 3 * k] & 15));
  }
  h_max = h_max == 0 ? 1 : h_max;
  v_max = v_max == 0 ? 1 : v_max;
  for (unsigned k = 0; k < components; ++k) {
    const unsigned h = segment[9 + 3 * k] >> 4, v = segment[9 + 3 * k] & 15;
    frame.coefficients += static_cast<double>(2 * h * v) / static_cast<double>(h_max * v_max);
  }
  return frame;
}

// A marker in entropy-coded data, at or after `from`: 0xFF followed by a byte that is neither stuffing (0x00), a
// restart marker (0xD0-0xD7) nor fill (0xFF). The offset of its 0xFF, or `size` where there is none.
std::size_t next_jpeg_marker(const std::uint8_t* data, std::size_t size, std::size_t from) {
  std::size_t at = from;
  while (at < size) {
    const void* found = std::memchr(data + at, 0xFF, size - at);
    if (found == nullptr) return size;
    at = static_cast<std::size_t>(static_cast<const std::uint8_t*>(found) - data);
    if (at + 1 >= size) return size;
    const std::uint8_t next = data[at + 1];
    if (next != 0x00 && next != 0xFF && !(next >= 0xD0 && next <= 0xD7)) return at;
    ++at;
  }
  return size;
}

// Walks a JPEG's marker segments to its end-of-image marker, taking the size from its start-of-frame. libjpeg fills
// a truncated JPEG with grey and reports success, so truncation has to be found here: lengths skip headers (an EXIF
// thumbnail inside APP1 included), entropy-coded scan data is skipped to the next real marker.
ImageHeader jpeg_header(const std::uint8_t* data, std::size_t size, const std::string& name) {
  const auto truncated = [&] { return unreadable(name, "truncated or corrupt JPEG (no end-of-image marker)"); };
  std::size_t i = 2;
  std::int64_t segments = 0, scans = 0;
  bool have_frame = false;
  JpegFrame frame;
  while (i < size) {
    if (data[i] != 0xFF) throw truncated();
    while (i < size && data[i] == 0xFF) ++i;  // the marker byte follows any number of fill bytes
    if (i >= size) throw truncated();
    const std::uint8_t marker = data[i++];
    if (++segments > limits::max_jpeg_segments) {
      throw unreadable(name, "corrupt JPEG (more than " + thousands(limits::max_jpeg_segments) + " marker segments)");
    }
    if (marker == 0xD9) {  // end of image
      if (!have_frame) throw unreadable(name, "corrupt JPEG (no frame header with the image size)");
      // One interleaved scan is decoded row by row; several scans (progressive, or one per component) make libjpeg
      // keep every coefficient (2 bytes each) until the last. The RGB output takes 3 bytes a pixel.
      ImageHeader header;
      header.format = "JPEG";
      header.width = frame.width;
      header.height = frame.height;
      header.bytes_per_pixel = 3 + (scans > 1 ? frame.coefficients : 0);
      header.bytes_per_pixel_is_float = scans > 1;
      // At most 65535 x 65535 pixels times 10,000 scans: no overflow.
      if (scans > limits::max_jpeg_scans ||
          static_cast<std::uint64_t>(scans) * header.pixels() > static_cast<std::uint64_t>(limits::max_jpeg_scan_pixels)) {
        throw too_large(name, "JPEG with " + thousands(static_cast<std::uint64_t>(scans)) + " scans of " +
                                  size_text(frame.width, frame.height) + " pixels; decoding it would take too long");
      }
      return header;
    }
    if ((marker >= 0xD0 && marker <= 0xD7) || marker == 0x01) continue;  // markers without a length field
    if (size - i < 2) throw truncated();
    const std::size_t length = be16(data + i);
    if (length < 2) throw unreadable(name, "corrupt JPEG (a segment of length " + std::to_string(length) + ")");
    if (is_start_of_frame(marker) && !have_frame) {
      frame = jpeg_frame(data + i, std::min(length, size - i), name);
      have_frame = true;
    }
    i += length;  // may pass the end: the loop ends, and the file is truncated
    if (marker == 0xDA) {  // start of scan: skip the entropy-coded data
      ++scans;
      if (i >= size) throw truncated();
      i = next_jpeg_marker(data, size, i);
      if (i >= size) throw truncated();
    }
  }
  throw truncated();
}

// --- PNG -----------------------------------------------------------------------------------------------------------

// PNG colour type -> channels as OpenCV decodes it unchanged (palette and grey + alpha may become BGRA).
unsigned png_channels(std::uint8_t colour) {
  switch (colour) {
    case 0: return 1;
    case 2: return 3;
    default: return 4;
  }
}

// The PNG chunks that make the pixels; tRNS decides whether OpenCV gives an alpha channel.
bool is_pixel_chunk(const std::uint8_t* kind) {
  for (const char* pixel : {"IHDR", "PLTE", "tRNS", "IDAT", "IEND"}) {
    if (std::memcmp(kind, pixel, 4) == 0) return true;
  }
  return false;
}

// The size and depth from IHDR, and the PNG rebuilt from the chunks that make its pixels. Text (zTXt, iTXt), ICC,
// private and animation chunks are dropped: libpng would decompress and keep them, at up to a thousand times their
// size, and none of them changes the pixels OpenCV decodes.
ImageHeader png_header(const std::uint8_t* data, std::size_t size, const std::string& name,
                       std::vector<std::uint8_t>& pixels_only) {
  std::vector<std::pair<std::size_t, std::size_t>> kept{{0, 8}};
  std::size_t i = 8;
  std::int64_t chunks = 0;
  const std::uint8_t* ihdr = nullptr;
  bool alpha = false;
  while (true) {
    if (size - i < 12) throw unreadable(name, "truncated or corrupt PNG (no IEND chunk)");
    const std::uint64_t length = be32(data + i);
    const std::uint8_t* kind = data + i + 4;
    if (length > size - i - 12) {
      throw unreadable(name, "truncated or corrupt PNG (a " + bytes_repr(kind, 4) +
                                 " chunk runs past the end of the file)");
    }
    const std::size_t end = i + 12 + static_cast<std::size_t>(length);
    if (++chunks > limits::max_png_chunks) {
      throw unreadable(name, "corrupt PNG (more than " + thousands(limits::max_png_chunks) + " chunks)");
    }
    if (std::memcmp(kind, "IHDR", 4) == 0 && ihdr == nullptr && length >= 13) ihdr = data + i + 8;
    alpha = alpha || std::memcmp(kind, "tRNS", 4) == 0;
    if (is_pixel_chunk(kind)) kept.emplace_back(i, end);
    i = end;
    if (std::memcmp(kind, "IEND", 4) == 0) break;
  }
  if (ihdr == nullptr) throw unreadable(name, "corrupt PNG (no IHDR chunk)");
  ImageHeader header;
  header.format = "PNG";
  header.width = be32(ihdr);
  header.height = be32(ihdr + 4);
  if (header.width == 0 || header.height == 0) {
    throw unreadable(name, "corrupt PNG (IHDR gives " + size_text(header.width, header.height) + " pixels)");
  }
  const std::uint8_t depth = ihdr[8], colour = ihdr[9];
  const unsigned channels = alpha ? 4 : png_channels(colour);  // tRNS makes OpenCV add an alpha channel
  header.bytes_per_pixel = channels * (depth == 16 ? 2 : 1);
  std::size_t kept_bytes = 0;
  for (const auto& [start, end] : kept) kept_bytes += end - start;
  header.payload = static_cast<std::int64_t>(kept_bytes);
  if (kept_bytes < i) {  // something was dropped: one copy of the chunks that remain
    pixels_only.reserve(kept_bytes);
    for (const auto& [start, end] : kept) pixels_only.insert(pixels_only.end(), data + start, data + end);
  }
  return header;
}

// --- GIF -----------------------------------------------------------------------------------------------------------

// The logical screen's size, after walking the blocks up to the end of the first frame (the one decoded): its
// sub-blocks are counted, since a reader pays for each one.
ImageHeader gif_header(const std::uint8_t* data, std::size_t size, const std::string& name) {
  const auto truncated = [&] { return unreadable(name, "truncated or corrupt GIF (its first frame is cut off)"); };
  if (size < 13) throw truncated();
  const std::uint64_t width = le16(data + 6), height = le16(data + 8);
  const std::uint8_t flags = data[10];
  std::size_t i = 13 + ((flags & 0x80) ? (std::size_t{3} << ((flags & 7) + 1)) : 0);  // after the global colour table
  std::int64_t blocks = 0;
  // Skips a chain of sub-blocks, ended by a zero length.
  const auto sub_blocks = [&](std::size_t at) {
    while (true) {
      if (at >= size) throw truncated();
      if (++blocks > limits::max_gif_blocks) {
        throw too_large(name, "GIF with more than " + thousands(limits::max_gif_blocks) +
                                  " data blocks before the end of its first frame");
      }
      if (data[at] == 0) return at + 1;
      at += 1 + static_cast<std::size_t>(data[at]);
    }
  };
  while (i < size) {
    if (data[i] == 0x21) {  // extension: label, then sub-blocks
      i = sub_blocks(i + 2);
    } else if (data[i] == 0x2C) {  // image descriptor, local colour table, LZW code size, image data
      if (size - i < 10) throw truncated();
      const std::uint8_t local = data[i + 9];
      i = sub_blocks(i + 10 + ((local & 0x80) ? (std::size_t{3} << ((local & 7) + 1)) : 0) + 1);
      if (width == 0 || height == 0) {
        throw unreadable(name, "corrupt GIF (its screen is " + size_text(width, height) + " pixels)");
      }
      ImageHeader header;
      header.format = "GIF";
      header.width = width;
      header.height = height;
      header.bytes_per_pixel = 4;
      header.payload = static_cast<std::int64_t>(i);
      return header;
    } else {
      break;
    }
  }
  throw truncated();
}

// --- WebP ----------------------------------------------------------------------------------------------------------

// Counts a WebP's RIFF chunks (frames of an animation included) before anything walks them.
void webp_check(const std::uint8_t* data, std::size_t size, const std::string& name) {
  const std::uint64_t riff_end = std::min<std::uint64_t>(size, 8 + le32(data + 4));
  std::uint64_t i = 12;
  std::int64_t chunks = 0;
  while (i + 8 <= riff_end) {
    if (++chunks > limits::max_webp_chunks) {
      throw too_large(name, "WebP with more than " + thousands(limits::max_webp_chunks) + " chunks");
    }
    const std::uint64_t chunk = le32(data + i + 4);
    i += 8 + chunk + (chunk & 1);  // at most 2^32 + 8 a step from below 2^32: no overflow
  }
}

Error unreadable_header(const std::string& name, const std::string& fmt) {
  return unreadable(name, "corrupt " + fmt + " file (its header cannot be read)");
}

// The canvas size, where Pillow's WebP reader takes it (_get_size): the VP8X header, or the VP8 or VP8L bitstream.
ImageHeader webp_header(const std::uint8_t* data, std::size_t size, const std::string& name) {
  ImageHeader header;
  header.format = "WebP";
  header.bytes_per_pixel = 4;
  const std::uint8_t* chunk = data + 12;
  if (size >= 30 && std::memcmp(chunk, "VP8 ", 4) == 0 && std::memcmp(data + 23, "\x9d\x01\x2a", 3) == 0) {
    header.width = le16(data + 26) & 0x3FFF;
    header.height = le16(data + 28) & 0x3FFF;
  } else if (size >= 30 && std::memcmp(chunk, "VP8X", 4) == 0) {
    header.width = read_number(data + 24, 3, true) + 1;
    header.height = read_number(data + 27, 3, true) + 1;
  } else if (size >= 25 && std::memcmp(chunk, "VP8L", 4) == 0 && data[20] == 0x2F) {
    const std::uint64_t bits = le32(data + 21);
    header.width = (bits & 0x3FFF) + 1;
    header.height = ((bits >> 14) & 0x3FFF) + 1;
  }
  if (header.width == 0 || header.height == 0) throw unreadable_header(name, "WebP");
  return header;
}

// --- BMP -----------------------------------------------------------------------------------------------------------

// The size from the info header, as Pillow's BMP reader takes it (a top-down image's negative height made positive).
ImageHeader bmp_header(const std::uint8_t* data, std::size_t size, const std::string& name) {
  if (size < 18) throw unreadable_header(name, "BMP");
  const std::uint64_t header_size = le32(data + 14);
  if (!inside(14, header_size, size)) throw unreadable_header(name, "BMP");
  ImageHeader header;
  header.format = "BMP";
  header.bytes_per_pixel = 4;
  std::uint64_t bits = 0;
  if (header_size == 12) {  // BITMAPCOREHEADER: 16-bit sizes
    header.width = le16(data + 18);
    header.height = le16(data + 20);
    bits = le16(data + 24);
  } else if (header_size == 40 || header_size == 52 || header_size == 56 || header_size == 64 ||
             header_size == 108 || header_size == 124) {
    header.width = le32(data + 18);
    const std::uint64_t height = le32(data + 22);
    header.height = data[25] == 0xFF ? (std::uint64_t{1} << 32) - height : height;  // top-down rows
    bits = le16(data + 28);
  } else {
    throw unreadable_header(name, "BMP");
  }
  if (bits != 1 && bits != 4 && bits != 8 && bits != 16 && bits != 24 && bits != 32) {
    throw unreadable_header(name, "BMP");
  }
  if (header.width == 0 || header.height == 0) throw unreadable_header(name, "BMP");
  return header;
}

// --- TIFF ----------------------------------------------------------------------------------------------------------

// TIFF field types whose values Pillow unpacks one Python number at a time (BYTE, ASCII and UNDEFINED stay bytes).
bool is_tiff_number_type(std::uint64_t type) {
  switch (type) {
    case 3: case 4: case 5: case 6: case 8: case 9: case 10: case 11: case 12: case 13: case 16: case 17: case 18:
      return true;
    default:
      return false;
  }
}

// The first directory of a TIFF or BigTIFF, read with a bounds check on every number.
class TiffDirectory {
 public:
  TiffDirectory(const std::uint8_t* data, std::size_t size, const std::string& name)
      : data_(data), size_(size), name_(name), little_(data[0] == 'I') {
    big_ = number(2, 2) == 43;  // BigTIFF: 8-byte offsets and counts
    offset_size_ = big_ ? 8 : 4;
    entry_size_ = big_ ? 20 : 12;
    const std::uint64_t directory = number(big_ ? 8 : 4, offset_size_);
    entries_ = number(directory, big_ ? 8 : 2);
    start_ = directory + (big_ ? 8 : 2);  // inside the file: the count before it was
    if (entries_ > (size_ - start_) / entry_size_) throw cut();
  }

  std::uint64_t entries() const { return entries_; }
  std::uint64_t tag(std::uint64_t k) const { return number(entry(k), 2); }
  std::uint64_t type(std::uint64_t k) const { return number(entry(k) + 2, 2); }
  std::uint64_t count(std::uint64_t k) const { return number(entry(k) + 4, offset_size_); }

  // Sets `out` to value `index` of entry `k` where it is an unsigned integer (BYTE, SHORT, LONG or LONG8) and there
  // is such a value; false otherwise.
  bool value(std::uint64_t k, std::uint64_t index, std::uint64_t& out) const {
    unsigned width = 0;
    switch (type(k)) {
      case 1: width = 1; break;
      case 3: width = 2; break;
      case 4: width = 4; break;
      case 16: width = 8; break;
      default: return false;
    }
    const std::uint64_t n = count(k);
    if (index >= n) return false;
    const std::uint64_t field = entry(k) + 4 + offset_size_;
    // Values that fit in the offset field are stored in it; others where it points.
    const bool inline_values = n <= offset_size_ / width;
    const std::uint64_t values = inline_values ? field : number(field, offset_size_);
    // A value past the end of the file throws, so a loop over the values of a field ends within the file.
    out = number(values + index * width, width);
    return true;
  }

  Error cut() const { return unreadable(name_, "truncated or corrupt TIFF (its first directory is cut off)"); }

 private:
  std::uint64_t entry(std::uint64_t k) const { return start_ + k * entry_size_; }  // k < entries_: in the file

  std::uint64_t number(std::uint64_t at, unsigned count) const {
    if (!inside(at, count, size_)) throw cut();
    return read_number(data_ + at, count, little_);
  }

  const std::uint8_t* data_;
  std::size_t size_;
  const std::string& name_;
  bool little_;
  bool big_ = false;
  unsigned offset_size_ = 4;
  unsigned entry_size_ = 12;
  std::uint64_t entries_ = 0;
  std::uint64_t start_ = 0;
};

// Refuses a TIFF whose first directory holds more numbers than reading it should cost (Pillow unpacks every value of
// the first directory, strip and tile tables included, when it opens a file; libtiff reads them too), then takes
// the size from ImageWidth and ImageLength and the sample size from BitsPerSample.
ImageHeader tiff_header(const std::uint8_t* data, std::size_t size, const std::string& name) {
  const TiffDirectory directory(data, size, name);
  for (std::uint64_t k = 0; k < directory.entries(); ++k) {
    const std::uint64_t count = directory.count(k);
    if (is_tiff_number_type(directory.type(k)) && count > static_cast<std::uint64_t>(limits::max_tiff_values)) {
      throw too_large(name, "TIFF field " + std::to_string(directory.tag(k)) + " holds " + thousands(count) +
                                " numbers (at most " + thousands(limits::max_tiff_values) + " are read)");
    }
  }
  ImageHeader header;
  header.format = "TIFF";
  std::uint64_t bits = 8;  // Pillow's default when BitsPerSample is absent
  bool have_width = false, have_height = false, have_bits = false;
  for (std::uint64_t k = 0; k < directory.entries(); ++k) {
    const std::uint64_t tag = directory.tag(k);
    if (tag == 256 && !have_width) {
      have_width = directory.value(k, 0, header.width);
    } else if (tag == 257 && !have_height) {
      have_height = directory.value(k, 0, header.height);
    } else if (tag == 258 && !have_bits) {
      // One value per sample; at most max_tiff_values are read, whatever the field's type says (a BYTE field is
      // not bounded above). A sample size is capped where it cannot overflow the sums below.
      std::uint64_t value = 0, most = 0;
      for (std::uint64_t s = 0; s < static_cast<std::uint64_t>(limits::max_tiff_values) && directory.value(k, s, value);
           ++s) {
        most = std::max(most, value);
      }
      have_bits = true;
      if (most > 0) bits = std::min<std::uint64_t>(most, std::uint64_t{1} << 32);
    }
  }
  if (!have_width || !have_height || header.width == 0 || header.height == 0) throw unreadable_header(name, "TIFF");
  // Up to four channels of the sample size: 16-bit colour, 32-bit integer and float samples included.
  header.bytes_per_pixel = 4.0 * static_cast<double>(std::max<std::uint64_t>(1, (bits + 7) / 8));
  return header;
}

}  // namespace

std::string thousands(std::uint64_t n) {
  const std::string digits = std::to_string(n);
  std::string out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

std::uint64_t ImageHeader::pixels() const {
  if (width != 0 && height > std::numeric_limits<std::uint64_t>::max() / width) {
    return std::numeric_limits<std::uint64_t>::max();
  }
  return width * height;
}

std::int64_t ImageHeader::decoded_bytes() const {
  return static_cast<std::int64_t>(std::ceil(static_cast<double>(pixels()) * bytes_per_pixel));
}

const char* sniff_format(const std::uint8_t* data, std::size_t size) {
  const auto starts = [&](const char* magic, std::size_t n) { return size >= n && std::memcmp(data, magic, n) == 0; };
  if (starts("\xff\xd8\xff", 3)) return "JPEG";
  if (starts("\x89PNG\r\n\x1a\n", 8)) return "PNG";
  if (starts("GIF87a", 6) || starts("GIF89a", 6)) return "GIF";
  if (size >= 12 && std::memcmp(data, "RIFF", 4) == 0 && std::memcmp(data + 8, "WEBP", 4) == 0) return "WebP";
  if (starts("BM", 2)) return "BMP";
  if (starts("II*\0", 4) || starts("MM\0*", 4) || starts("II+\0", 4) || starts("MM\0+", 4)) return "TIFF";
  return nullptr;
}

ImageHeader read_header(const std::uint8_t* data, std::size_t size, const std::string& name,
                        std::vector<std::uint8_t>& pixels_only) {
  pixels_only.clear();
  const char* format = sniff_format(data, size);
  if (format == nullptr) {
    throw unreadable(name, "not an image in a supported format (JPEG, PNG, GIF, WebP, BMP, TIFF)");
  }
  const std::string fmt = format;
  ImageHeader header;
  if (fmt == "JPEG") {
    header = jpeg_header(data, size, name);
  } else if (fmt == "PNG") {
    header = png_header(data, size, name, pixels_only);
  } else if (fmt == "GIF") {
    header = gif_header(data, size, name);
  } else if (fmt == "WebP") {
    webp_check(data, size, name);
    header = webp_header(data, size, name);
  } else if (fmt == "BMP") {
    header = bmp_header(data, size, name);
  } else {
    header = tiff_header(data, size, name);
  }
  const std::uint64_t pixels = header.pixels();
  if (pixels > static_cast<std::uint64_t>(limits::max_pixels)) {
    throw too_large(name, "image too large (" + size_text(header.width, header.height) + " is over " +
                              thousands(limits::max_pixels) + " pixels; a decompression bomb?)");
  }
  if (header.decoded_bytes() > limits::max_decoded_bytes) {
    throw too_large(name, "image too large to decode (" + size_text(header.width, header.height) + " at up to " +
                              python_number(header.bytes_per_pixel, header.bytes_per_pixel_is_float) +
                              " bytes per pixel is " + thousands(header.decoded_bytes()) + " bytes; the limit is " +
                              thousands(limits::max_decoded_bytes) + ")");
  }
  // Formats whose decoder reads the first frame or page only, from where their headers say it lies: the size of the
  // whole file says nothing of the decoding cost. (GIF's first frame is walked to its end, and PNG keeps only its
  // pixel chunks: for those two the rule applies to what is decoded.)
  const bool first_page_only = fmt == "WebP" || fmt == "TIFF";
  const std::uint64_t allowed = static_cast<std::uint64_t>(limits::max_file_bytes_per_pixel) * pixels +
                                static_cast<std::uint64_t>(limits::max_metadata_bytes);
  const std::uint64_t payload = header.payload < 0 ? size : static_cast<std::uint64_t>(header.payload);
  if (payload > allowed && !first_page_only) {
    throw too_large(name, thousands(payload) + " bytes for a " + size_text(header.width, header.height) +
                              " image, more than its pixels could need (" + thousands(allowed) +
                              "); refused undecoded");
  }
  return header;
}

}  // namespace dgs

// What decoding an encoded image will cost, read from its header before any pixel is decoded: dgs_sdk/headers.py
// ported (the one definition; see its docstring). Every read is bounds-checked, every loop bounded by the file's
// size or a limit of dgs/limits.hpp, and nothing recurses.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace dgs {

// What a header says: the format, the size, an upper bound of the bytes per pixel the decoder holds, and the bytes
// the decoder works through for the image it decodes (-1: the whole file).
struct ImageHeader {
  std::string format;
  std::uint64_t width = 0;
  std::uint64_t height = 0;
  double bytes_per_pixel = 0;
  // Python computes a JPEG's bytes per pixel as a float (9.0) and the others' as integers (8): messages follow.
  bool bytes_per_pixel_is_float = false;
  std::int64_t payload = -1;

  // width x height, or UINT64_MAX where that would overflow.
  std::uint64_t pixels() const;
  // ceil(pixels x bytes_per_pixel), for an image within dgs::limits::max_pixels.
  std::int64_t decoded_bytes() const;
};

// The format named by the file's first bytes ("JPEG", "PNG", "GIF", "WebP", "BMP", "TIFF"), or nullptr.
const char* sniff_format(const std::uint8_t* data, std::size_t size);

// The header of an encoded image, or an Error if decoding it would cost too much:
//   unreadable_image: not one of the six formats, or a header that is corrupt, truncated or built to be slow;
//   image_too_large: over dgs::limits::max_pixels, a decoder buffer over max_decoded_bytes, or a file larger than
//                    max_file_bytes_per_pixel bytes a pixel plus max_metadata_bytes.
// For a PNG with chunks that do not make pixels (text, ICC, private), `pixels_only` receives the PNG rebuilt from
// the ones that do, to be decoded instead; otherwise it is left empty and the bytes are decoded as they are.
ImageHeader read_header(const std::uint8_t* data, std::size_t size, const std::string& name,
                        std::vector<std::uint8_t>& pixels_only);

// 1234567 -> "1,234,567", as Python's f"{n:,}".
std::string thousands(std::uint64_t n);

}  // namespace dgs

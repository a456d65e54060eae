// Input limits: the same figures as dgs_sdk/limits.py (tests compare them), so a file Python refuses for its
// size, C++ refuses too.
#pragma once

#include <cstdint>

namespace dgs::limits {

inline constexpr std::int64_t max_pixels = 178'956'970;
inline constexpr std::int64_t max_file_bytes = 512LL * 1024 * 1024;
inline constexpr std::int64_t max_decoded_bytes = 3 * max_pixels;
// What the decodes of one process may hold at once, all together (the default MemoryBudget).
inline constexpr std::int64_t decode_memory = 2LL * 1024 * 1024 * 1024;
// A file may hold its pixels at up to this many bytes each, plus this much metadata; more is refused undecoded.
inline constexpr std::int64_t max_file_bytes_per_pixel = 16;
inline constexpr std::int64_t max_metadata_bytes = 16LL * 1024 * 1024;
// Structures walked before decoding (see src/headers.cpp): what real files hold, with a wide margin.
inline constexpr std::int64_t max_jpeg_segments = 10'000;
inline constexpr std::int64_t max_jpeg_scans = 100;
inline constexpr std::int64_t max_jpeg_scan_pixels = 12 * max_pixels;
inline constexpr std::int64_t max_png_chunks = 200'000;
inline constexpr std::int64_t max_gif_blocks = 1'000'000;
inline constexpr std::int64_t max_webp_chunks = 100'000;
inline constexpr std::int64_t max_tiff_values = 250'000;
inline constexpr int max_input_size = 1024;
inline constexpr std::int64_t max_batch_bytes = 256LL * 1024 * 1024;
inline constexpr std::int64_t max_package_bytes = 8LL * 1024 * 1024 * 1024;
inline constexpr std::int64_t max_member_bytes = 2LL * 1024 * 1024 * 1024;
inline constexpr int max_members = 64;
inline constexpr std::int64_t max_manifest_bytes = 1024 * 1024;
inline constexpr std::int64_t max_package_content_bytes = 4LL * 1024 * 1024 * 1024;
inline constexpr std::int64_t max_zip_directory_bytes = 1024 * 1024;
inline constexpr std::int64_t max_graph_nodes = 100'000;

}  // namespace dgs::limits

// Input limits: the same figures as dgs_sdk/limits.py (tests compare them), so a file Python refuses for its
// size, C++ refuses too.
#pragma once

#include <cstdint>

namespace dgs::limits {

inline constexpr std::int64_t max_pixels = 178'956'970;
inline constexpr std::int64_t max_file_bytes = 512LL * 1024 * 1024;
inline constexpr std::int64_t max_decoded_bytes = 3 * max_pixels;
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

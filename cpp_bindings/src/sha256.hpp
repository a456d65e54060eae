// SHA-256 (OpenSSL's EVP), streamed or in one call, as lowercase hexadecimal.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

namespace dgs {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(const void* data, std::size_t size);
  std::string hex();  // finishes the digest

 private:
  struct Context;
  std::unique_ptr<Context> context_;
};

std::string sha256_hex(const void* data, std::size_t size);

}  // namespace dgs

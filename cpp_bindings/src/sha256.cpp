#include "sha256.hpp"

#include <openssl/evp.h>

#include "dgs/error.hpp"

namespace dgs {

struct Sha256::Context {
  EVP_MD_CTX* md = nullptr;
  ~Context() { EVP_MD_CTX_free(md); }
};

Sha256::Sha256() : context_(std::make_unique<Context>()) {
  context_->md = EVP_MD_CTX_new();
  if (!context_->md || EVP_DigestInit_ex(context_->md, EVP_sha256(), nullptr) != 1) {
    throw Error(Status::internal, "OpenSSL cannot start a SHA-256 digest");
  }
}

Sha256::~Sha256() = default;

void Sha256::update(const void* data, std::size_t size) {
  if (EVP_DigestUpdate(context_->md, data, size) != 1) throw Error(Status::internal, "OpenSSL SHA-256 failed");
}

std::string Sha256::hex() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (EVP_DigestFinal_ex(context_->md, digest, &length) != 1) throw Error(Status::internal, "OpenSSL SHA-256 failed");
  static const char digits[] = "0123456789abcdef";
  std::string out(2 * length, '0');
  for (unsigned int i = 0; i < length; ++i) {
    out[2 * i] = digits[digest[i] >> 4];
    out[2 * i + 1] = digits[digest[i] & 15];
  }
  return out;
}

std::string sha256_hex(const void* data, std::size_t size) {
  Sha256 digest;
  digest.update(data, size);
  return digest.hex();
}

}  // namespace dgs

// SecureBytes is a byte buffer for key material, PINs and secrets: cleansed on destruction.
#pragma once

#include <openssl/crypto.h>

#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>
#include <vector>

namespace vaultp11 {

using Bytes = std::vector<uint8_t>;

// Allocator that wipes memory before giving it back, so no copy of a secret
// survives a reallocation either.
template <typename T>
struct CleansingAllocator {
  using value_type = T;
  CleansingAllocator() = default;
  template <typename U>
  CleansingAllocator(const CleansingAllocator<U>&) {}
  T* allocate(std::size_t n) { return std::allocator<T>().allocate(n); }
  void deallocate(T* p, std::size_t n) {
    OPENSSL_cleanse(p, n * sizeof(T));
    std::allocator<T>().deallocate(p, n);
  }
  template <typename U>
  bool operator==(const CleansingAllocator<U>&) const { return true; }
};

using SecureBytes = std::vector<uint8_t, CleansingAllocator<uint8_t>>;
using SecureString = std::basic_string<char, std::char_traits<char>, CleansingAllocator<char>>;

inline SecureBytes ToSecure(std::span<const uint8_t> s) { return SecureBytes(s.begin(), s.end()); }
inline Bytes ToBytes(std::span<const uint8_t> s) { return Bytes(s.begin(), s.end()); }
inline Bytes ToBytes(std::string_view s) { return Bytes(s.begin(), s.end()); }

// Constant-time equality: time depends on the lengths only.
inline bool ConstantTimeEqual(std::span<const uint8_t> a, std::span<const uint8_t> b) {
  if (a.size() != b.size()) return false;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace vaultp11

// Salted slow hashes of client secrets, as written into the config by `vaultp11 hash-secret`.
#pragma once

#include <span>
#include <string>
#include <string_view>

#include "util/result.h"
#include "util/secure_bytes.h"

namespace vaultp11::auth {

struct ScryptCost {
  int log2_n = 15;  // N = 2^log2_n
  int r = 8;
  int p = 1;
};

// Returns "$scrypt$ln=<log2_n>,r=<r>,p=<p>$<salt base64>$<hash base64>" with a random
// 16-byte salt and a 32-byte derived key (OpenSSL EVP_KDF "SCRYPT", module lib ctx).
Result<std::string> HashSecret(std::span<const uint8_t> secret, ScryptCost cost = {});

// Recomputes the hash with the parameters and salt in `encoded` and compares in constant
// time. A malformed `encoded` is CKR_GENERAL_ERROR (config was validated, so it is a bug);
// a mismatch is Result true/false, never an error.
Result<bool> VerifySecret(std::string_view encoded, std::span<const uint8_t> secret);

// True when `encoded` parses as a hash this module can verify (used by config validation).
bool IsWellFormedHash(std::string_view encoded);

}  // namespace vaultp11::auth

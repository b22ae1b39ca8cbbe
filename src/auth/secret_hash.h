// Salted slow hashes of client secrets, as written into the config by `vaultp11 hash-secret`.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "util/result.h"
#include "util/secure_bytes.h"

namespace vaultp11::auth {

struct ScryptCost {
  int log2_n = 15;  // N = 2^log2_n
  int r = 8;
  int p = 1;
  bool operator==(const ScryptCost&) const = default;
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

// The cost parameters of `encoded`; nullopt when it is not a well-formed hash.
std::optional<ScryptCost> CostOf(std::string_view encoded);

// The cost of the dummy verification an unknown principal's login runs, so that it takes as
// long as a known principal's: the most common cost among the configured hashes `encoded`
// (a tie goes to the larger working set; malformed entries are ignored), the default cost
// when there are none.
ScryptCost DummyCost(const std::vector<std::string>& encoded);

// A well-formed hash at `cost` (a fixed salt, an all-zero key) that no secret matches short
// of a 256-bit collision: VerifySecret against it costs one scrypt at `cost` and is false.
std::string DummyHash(ScryptCost cost);

}  // namespace vaultp11::auth

// Salted scrypt hashes of client secrets: "$scrypt$ln=<n>,r=<r>,p=<p>$<salt b64>$<hash b64>".
#include "auth/secret_hash.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "backend/ossl/ossl_backend.h"
#include "util/ossl_ptr.h"

namespace vaultp11::auth {
namespace {

constexpr std::string_view kPrefix = "$scrypt$";
constexpr size_t kSaltLen = 16;
constexpr size_t kHashLen = 32;

// Bounds on the cost parameters. They apply to hashes read from the config as well as to
// new ones, so a hostile or mistyped config cannot make a login allocate gigabytes or spin
// for minutes: besides the per-parameter ranges, the scrypt working set 128 * r * N is
// capped at 1 GiB (ln=20 with r=8 is the largest standard-r cost).
constexpr int kMinLog2N = 1, kMaxLog2N = 20;
constexpr int kMinR = 1, kMaxR = 32;
constexpr int kMinP = 1, kMaxP = 16;
constexpr uint64_t kMaxWorkingSet = uint64_t{1} << 30;

struct ParsedHash {
  ScryptCost cost;
  Bytes salt;
  Bytes hash;
};

uint64_t WorkingSet(const ScryptCost& c) {
  // What OpenSSL's scrypt allocates: B (p * 128 * r) plus V and XY (128 * r * (N + 2)).
  uint64_t n = uint64_t{1} << c.log2_n;
  return 128ULL * static_cast<uint64_t>(c.r) * (n + 2) +
         128ULL * static_cast<uint64_t>(c.r) * static_cast<uint64_t>(c.p);
}

bool CostInRange(const ScryptCost& c) {
  if (c.log2_n < kMinLog2N || c.log2_n > kMaxLog2N) return false;
  if (c.r < kMinR || c.r > kMaxR) return false;
  if (c.p < kMinP || c.p > kMaxP) return false;
  return 128ULL * static_cast<uint64_t>(c.r) * (uint64_t{1} << c.log2_n) <= kMaxWorkingSet;
}

std::string Base64Encode(std::span<const uint8_t> in) {
  std::string out(4 * ((in.size() + 2) / 3) + 1, '\0');  // + NUL written by EVP_EncodeBlock
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), in.data(),
                          static_cast<int>(in.size()));
  out.resize(n < 0 ? 0 : static_cast<size_t>(n));
  return out;
}

bool IsBase64Char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
         c == '/';
}

// Strict, canonical, padded standard base64 (RFC 4648 section 4). EVP_DecodeBlock alone
// would skip whitespace and count the padding as zero bytes, so the input is checked first
// and the result re-encoded to reject non-canonical trailing bits.
std::optional<Bytes> Base64Decode(std::string_view in) {
  if (in.empty() || in.size() % 4 != 0 || in.size() > 1024) return std::nullopt;
  size_t pad = 0;
  if (in.back() == '=') pad = (in[in.size() - 2] == '=') ? 2 : 1;
  for (size_t i = 0; i < in.size() - pad; ++i) {
    if (!IsBase64Char(in[i])) return std::nullopt;
  }
  Bytes out(in.size() / 4 * 3);
  int n = EVP_DecodeBlock(out.data(), reinterpret_cast<const unsigned char*>(in.data()),
                          static_cast<int>(in.size()));
  if (n < 0 || static_cast<size_t>(n) != out.size()) return std::nullopt;
  out.resize(out.size() - pad);
  if (Base64Encode(out) != in) return std::nullopt;
  return out;
}

// A decimal number without sign or leading zero, in [lo, hi].
std::optional<int> ParseSmallInt(std::string_view s, int lo, int hi) {
  if (s.empty() || s.size() > 4 || (s.size() > 1 && s[0] == '0')) return std::nullopt;
  int v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || ptr != s.data() + s.size() || v < lo || v > hi) return std::nullopt;
  return v;
}

// Consumes "<name>=<int>" followed by `sep` from the front of `s`.
std::optional<int> TakeParam(std::string_view& s, std::string_view name, char sep, int lo, int hi) {
  if (s.substr(0, name.size()) != name || s.size() <= name.size() || s[name.size()] != '=')
    return std::nullopt;
  s.remove_prefix(name.size() + 1);
  size_t end = s.find(sep);
  if (end == std::string_view::npos) return std::nullopt;
  auto v = ParseSmallInt(s.substr(0, end), lo, hi);
  s.remove_prefix(end + 1);
  return v;
}

std::optional<ParsedHash> Parse(std::string_view s) {
  if (s.substr(0, kPrefix.size()) != kPrefix) return std::nullopt;
  s.remove_prefix(kPrefix.size());
  ParsedHash h;
  auto ln = TakeParam(s, "ln", ',', kMinLog2N, kMaxLog2N);
  if (!ln) return std::nullopt;
  auto r = TakeParam(s, "r", ',', kMinR, kMaxR);
  if (!r) return std::nullopt;
  auto p = TakeParam(s, "p", '$', kMinP, kMaxP);
  if (!p) return std::nullopt;
  h.cost = ScryptCost{*ln, *r, *p};
  if (!CostInRange(h.cost)) return std::nullopt;
  size_t dollar = s.find('$');
  if (dollar == std::string_view::npos) return std::nullopt;
  auto salt = Base64Decode(s.substr(0, dollar));
  auto hash = Base64Decode(s.substr(dollar + 1));
  if (!salt || !hash || salt->size() != kSaltLen || hash->size() != kHashLen) return std::nullopt;
  h.salt = std::move(*salt);
  h.hash = std::move(*hash);
  return h;
}

EVP_KDF* Scrypt() {
  // Fetched once from the module's context; kept for the life of the process.
  static EVP_KDF* kdf = EVP_KDF_fetch(ossl::LibCtx(), "SCRYPT", nullptr);
  return kdf;
}

Result<SecureBytes> Derive(std::span<const uint8_t> secret, std::span<const uint8_t> salt,
                           const ScryptCost& cost) {
  if (Scrypt() == nullptr) return Err(CKR_FUNCTION_FAILED, "scrypt unavailable: {}", SslErrors());
  EvpKdfCtxPtr ctx(EVP_KDF_CTX_new(Scrypt()));
  if (!ctx) return Err(CKR_HOST_MEMORY, "EVP_KDF_CTX_new failed: {}", SslErrors());
  // OpenSSL reads the password through a non-const pointer but does not modify it; an empty
  // secret still needs a valid pointer.
  static unsigned char empty = 0;
  unsigned char* pass = secret.empty() ? &empty : const_cast<unsigned char*>(secret.data());
  uint64_t n = uint64_t{1} << cost.log2_n;
  uint32_t r = static_cast<uint32_t>(cost.r);
  uint32_t p = static_cast<uint32_t>(cost.p);
  uint64_t maxmem = WorkingSet(cost) + (uint64_t{1} << 20);
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PASSWORD, pass, secret.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, const_cast<uint8_t*>(salt.data()),
                                        salt.size()),
      OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_N, &n),
      OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_R, &r),
      OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_P, &p),
      OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_MAXMEM, &maxmem),
      OSSL_PARAM_construct_end(),
  };
  SecureBytes out(kHashLen);
  if (EVP_KDF_derive(ctx.get(), out.data(), out.size(), params) != 1)
    return Err(CKR_FUNCTION_FAILED, "scrypt failed: {}", SslErrors());
  return out;
}

}  // namespace

Result<std::string> HashSecret(std::span<const uint8_t> secret, ScryptCost cost) {
  if (!CostInRange(cost))
    return Err(CKR_ARGUMENTS_BAD,
               "scrypt cost out of range (ln {}..{}, r {}..{}, p {}..{}, 128*r*2^ln <= 1 GiB)",
               kMinLog2N, kMaxLog2N, kMinR, kMaxR, kMinP, kMaxP);
  Bytes salt(kSaltLen);
  VAULTP11_RETURN_IF_ERROR(ossl::RandomBytes(salt));
  VAULTP11_ASSIGN_OR_RETURN(SecureBytes key, Derive(secret, salt, cost));
  return fmt::format("{}ln={},r={},p={}${}${}", kPrefix, cost.log2_n, cost.r, cost.p,
                     Base64Encode(salt), Base64Encode(key));
}

Result<bool> VerifySecret(std::string_view encoded, std::span<const uint8_t> secret) {
  auto parsed = Parse(encoded);
  if (!parsed) return Err(CKR_GENERAL_ERROR, "malformed secret hash");
  VAULTP11_ASSIGN_OR_RETURN(SecureBytes key, Derive(secret, parsed->salt, parsed->cost));
  return ConstantTimeEqual(key, parsed->hash);
}

bool IsWellFormedHash(std::string_view encoded) { return Parse(encoded).has_value(); }

std::optional<ScryptCost> CostOf(std::string_view encoded) {
  auto parsed = Parse(encoded);
  if (!parsed) return std::nullopt;
  return parsed->cost;
}

ScryptCost DummyCost(const std::vector<std::string>& encoded) {
  std::vector<std::pair<ScryptCost, size_t>> seen;  // few distinct costs: a linear scan
  for (const std::string& e : encoded) {
    auto cost = CostOf(e);
    if (!cost) continue;
    auto it =
        std::find_if(seen.begin(), seen.end(), [&](const auto& s) { return s.first == *cost; });
    if (it == seen.end())
      seen.emplace_back(*cost, 1);
    else
      ++it->second;
  }
  if (seen.empty()) return ScryptCost{};
  auto best = seen.begin();
  for (auto it = seen.begin(); it != seen.end(); ++it)
    if (it->second > best->second ||
        (it->second == best->second && WorkingSet(it->first) > WorkingSet(best->first)))
      best = it;
  return best->first;
}

std::string DummyHash(ScryptCost cost) {
  const Bytes salt(kSaltLen, 0), key(kHashLen, 0);
  return fmt::format("{}ln={},r={},p={}${}${}", kPrefix, cost.log2_n, cost.r, cost.p,
                     Base64Encode(salt), Base64Encode(key));
}

}  // namespace vaultp11::auth

// Compact JWS parsing, verification and signing (RS256, PS256, ES256), JWT claim checks and
// JWKS parsing, all on OpenSSL in the module's private library context.
#include "auth/jwt.h"

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <exception>
#include <memory>
#include <new>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "backend/ossl/ossl_backend.h"
#include "util/ossl_ptr.h"

namespace vaultp11::auth::jwt {
namespace {

using Json = nlohmann::json;
using EcdsaSigPtr = std::unique_ptr<ECDSA_SIG, OsslDeleter<&ECDSA_SIG_free>>;

constexpr int kMinRsaBits = 2048;
// OpenSSL's own ceiling (OPENSSL_RSA_MAX_MODULUS_BITS); a bigger JWKS modulus could only be a
// way to make every verification slow.
constexpr size_t kMaxRsaModulusBytes = 16384 / 8;
// Public exponents are 65537 in practice; 64 bits is OpenSSL's limit for large moduli too.
constexpr size_t kMaxRsaExponentBytes = 8;
constexpr size_t kP256FieldBytes = 32;
constexpr size_t kMaxJtiChars = 256;
// Claim values are attacker-controlled: messages show them only up to this length.
constexpr size_t kMaxShownChars = 64;
// JOSE headers and claim sets are flat; deep nesting only costs time and stack in consumers.
constexpr int kMaxJsonDepth = 32;
// NumericDate values are clamped to +-2^40 s (about 35,000 years) so that sums with `now`,
// leeway and lifetime can never overflow int64.
constexpr int64_t kMaxDate = int64_t{1} << 40;
constexpr int64_t kMaxSkewSeconds = 365LL * 24 * 3600;

enum class Alg { kRs256, kPs256, kEs256 };

std::optional<Alg> AlgFromName(std::string_view name) {
  if (name == kRs256) return Alg::kRs256;
  if (name == kPs256) return Alg::kPs256;
  if (name == kEs256) return Alg::kEs256;
  return std::nullopt;
}

std::string_view AlgName(Alg alg) {
  switch (alg) {
    case Alg::kRs256:
      return kRs256;
    case Alg::kPs256:
      return kPs256;
    case Alg::kEs256:
      return kEs256;
  }
  return "?";
}

// A value from a token for an error message: quoted when short and plain printable ASCII,
// otherwise only its length (never a long or binary attacker-chosen string in the log).
std::string Shown(std::string_view v) {
  bool plain = v.size() <= kMaxShownChars && std::all_of(v.begin(), v.end(), [](char c) {
                 return c >= 0x20 && c <= 0x7e && c != '"' && c != '\\';
               });
  if (plain) return fmt::format("\"{}\"", v);
  return fmt::format("({} chars)", v.size());
}

// Runs `f`, turning any exception into an Error: nlohmann and the standard library may throw
// (allocation, type errors) and nothing may escape into the C ABI. what() is never used, as
// nlohmann's messages can quote the input.
template <typename F>
auto Guarded(std::string_view what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const std::bad_alloc&) {
    return Err(CKR_HOST_MEMORY, "{}: out of memory", what);
  } catch (...) {
    return Err(CKR_GENERAL_ERROR, "{}: internal error", what);
  }
}

// ---- base64url -----------------------------------------------------------------------------

constexpr char kB64Url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

int B64UrlValue(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '-') return 62;
  if (c == '_') return 63;
  return -1;
}

std::string_view AsText(const Bytes& b) {
  return std::string_view(reinterpret_cast<const char*>(b.data()), b.size());
}

std::span<const uint8_t> AsBytes(std::string_view s) {
  return std::span(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

// ---- JSON ----------------------------------------------------------------------------------

enum class JsonError { kNone, kSyntax, kDuplicateKey, kTooDeep, kNotObject };

std::string_view Describe(JsonError e) {
  switch (e) {
    case JsonError::kNone:
      return "ok";
    case JsonError::kSyntax:
      return "is not valid JSON";
    case JsonError::kDuplicateKey:
      return "has duplicate member names";
    case JsonError::kTooDeep:
      return "is nested too deeply";
    case JsonError::kNotObject:
      return "is not a JSON object";
  }
  return "is malformed";
}

// Parses `text` as a JSON object without exceptions, refusing duplicate member names at any
// level (nlohmann would silently keep the last one) and nesting deeper than kMaxJsonDepth.
// The parser callback sees every object's keys in order, so a set per open object suffices.
JsonError ParseJsonObject(std::string_view text, Json* out) {
  JsonError err = JsonError::kNone;
  std::vector<std::set<std::string>> open_objects;
  Json::parser_callback_t cb = [&](int depth, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
        if (depth >= kMaxJsonDepth && err == JsonError::kNone) err = JsonError::kTooDeep;
        open_objects.emplace_back();
        break;
      case Json::parse_event_t::array_start:
        if (depth >= kMaxJsonDepth && err == JsonError::kNone) err = JsonError::kTooDeep;
        break;
      case Json::parse_event_t::key:
        if (const auto* key = parsed.get_ptr<const std::string*>();
            key != nullptr && !open_objects.empty() && !open_objects.back().insert(*key).second &&
            err == JsonError::kNone) {
          err = JsonError::kDuplicateKey;
        }
        break;
      case Json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      default:
        break;
    }
    return true;
  };
  Json j = Json::parse(text.begin(), text.end(), cb, /*allow_exceptions=*/false);
  if (j.is_discarded()) return JsonError::kSyntax;
  if (err != JsonError::kNone) return err;
  if (!j.is_object()) return JsonError::kNotObject;
  *out = std::move(j);
  return JsonError::kNone;
}

// ---- keys ----------------------------------------------------------------------------------

bool IsP256(EVP_PKEY* key) {
  if (EVP_PKEY_is_a(key, "EC") != 1) return false;
  char name[64] = {};
  size_t len = 0;
  if (EVP_PKEY_get_group_name(key, name, sizeof(name), &len) != 1) {
    SslErrors();  // drain: an explicit-parameters key simply is not "P-256"
    return false;
  }
  int nid = OBJ_sn2nid(name);
  if (nid == NID_undef) nid = EC_curve_nist2nid(name);
  return nid == NID_X9_62_prime256v1;
}

// Whether `key` is usable for `alg`; the error carries `rv` (PIN_INCORRECT when verifying a
// login, KEY_TYPE_INCONSISTENT when signing).
Status CheckKey(EVP_PKEY* key, Alg alg, CK_RV rv) {
  switch (alg) {
    case Alg::kRs256:
    case Alg::kPs256:
      if (EVP_PKEY_is_a(key, "RSA") != 1) return Err(rv, "{} needs an RSA key", AlgName(alg));
      if (EVP_PKEY_get_bits(key) < kMinRsaBits)
        return Err(rv, "{} needs an RSA key of at least {} bits (got {})", AlgName(alg),
                   kMinRsaBits, EVP_PKEY_get_bits(key));
      return OkStatus();
    case Alg::kEs256:
      if (!IsP256(key)) return Err(rv, "ES256 needs an EC P-256 key");
      return OkStatus();
  }
  return Err(CKR_GENERAL_ERROR, "unknown algorithm");
}

// PS256 per RFC 7518 section 3.5: MGF1 with SHA-256 and a salt as long as the hash. The salt
// length is fixed rather than "auto" on verify so that only conforming signatures pass.
bool SetPssParams(EVP_PKEY_CTX* pctx) {
  return EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1 &&
         EVP_PKEY_CTX_set_rsa_mgf1_md_name(pctx, "SHA256", nullptr) == 1 &&
         EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, 32) == 1;
}

// JOSE ECDSA signatures are r||s, each left-padded to the field size (RFC 7518 section 3.4);
// OpenSSL speaks DER ECDSA-Sig-Value.
Result<Bytes> JoseToDer(std::span<const uint8_t> sig) {
  if (sig.size() != 2 * kP256FieldBytes)
    return Err(CKR_PIN_INCORRECT, "ES256 signature must be {} bytes (got {})", 2 * kP256FieldBytes,
               sig.size());
  EcdsaSigPtr s(ECDSA_SIG_new());
  BignumPtr r(BN_bin2bn(sig.data(), kP256FieldBytes, nullptr));
  BignumPtr ss(BN_bin2bn(sig.data() + kP256FieldBytes, kP256FieldBytes, nullptr));
  if (!s || !r || !ss || ECDSA_SIG_set0(s.get(), r.get(), ss.get()) != 1)
    return Err(CKR_FUNCTION_FAILED, "ECDSA signature conversion failed: {}", SslErrors());
  r.release();  // owned by s now
  ss.release();
  int len = i2d_ECDSA_SIG(s.get(), nullptr);
  if (len <= 0) return Err(CKR_FUNCTION_FAILED, "ECDSA signature encoding failed: {}", SslErrors());
  Bytes der(static_cast<size_t>(len));
  unsigned char* p = der.data();
  if (i2d_ECDSA_SIG(s.get(), &p) != len)
    return Err(CKR_FUNCTION_FAILED, "ECDSA signature encoding failed: {}", SslErrors());
  return der;
}

Result<Bytes> DerToJose(std::span<const uint8_t> der) {
  const unsigned char* p = der.data();
  EcdsaSigPtr s(d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der.size())));
  if (!s) return Err(CKR_FUNCTION_FAILED, "ECDSA signature decoding failed: {}", SslErrors());
  const BIGNUM* r = nullptr;
  const BIGNUM* ss = nullptr;
  ECDSA_SIG_get0(s.get(), &r, &ss);
  Bytes out(2 * kP256FieldBytes);
  if (r == nullptr || ss == nullptr ||
      BN_bn2binpad(r, out.data(), kP256FieldBytes) != static_cast<int>(kP256FieldBytes) ||
      BN_bn2binpad(ss, out.data() + kP256FieldBytes, kP256FieldBytes) !=
          static_cast<int>(kP256FieldBytes))
    return Err(CKR_FUNCTION_FAILED, "ECDSA signature conversion failed: {}", SslErrors());
  return out;
}

Status VerifySignature(EVP_PKEY* key, Alg alg, std::string_view input,
                       std::span<const uint8_t> signature) {
  Bytes der;
  if (alg == Alg::kEs256) {
    VAULTP11_ASSIGN_OR_RETURN(der, JoseToDer(signature));
    signature = der;
  }
  EvpMdCtxPtr md(EVP_MD_CTX_new());
  EVP_PKEY_CTX* pctx = nullptr;  // owned by md
  if (!md ||
      EVP_DigestVerifyInit_ex(md.get(), &pctx, "SHA256", ossl::LibCtx(), nullptr, key, nullptr) !=
          1 ||
      (alg == Alg::kPs256 && !SetPssParams(pctx)))
    return Err(CKR_FUNCTION_FAILED, "{} verify setup failed: {}", AlgName(alg), SslErrors());
  int rc = EVP_DigestVerify(md.get(), signature.data(), signature.size(),
                            reinterpret_cast<const unsigned char*>(input.data()), input.size());
  if (rc != 1) {
    SslErrors();  // drain; a forged signature is not an OpenSSL failure worth reporting
    return Err(CKR_PIN_INCORRECT, "token signature invalid ({})", AlgName(alg));
  }
  return OkStatus();
}

Result<Bytes> SignBytes(EVP_PKEY* key, Alg alg, std::string_view input) {
  EvpMdCtxPtr md(EVP_MD_CTX_new());
  EVP_PKEY_CTX* pctx = nullptr;  // owned by md
  size_t len = 0;
  if (!md ||
      EVP_DigestSignInit_ex(md.get(), &pctx, "SHA256", ossl::LibCtx(), nullptr, key, nullptr) !=
          1 ||
      (alg == Alg::kPs256 && !SetPssParams(pctx)) ||
      EVP_DigestSign(md.get(), nullptr, &len, AsBytes(input).data(), input.size()) != 1)
    return Err(CKR_FUNCTION_FAILED, "{} sign setup failed: {}", AlgName(alg), SslErrors());
  Bytes sig(len);
  if (EVP_DigestSign(md.get(), sig.data(), &len, AsBytes(input).data(), input.size()) != 1)
    return Err(CKR_FUNCTION_FAILED, "{} signing failed: {}", AlgName(alg), SslErrors());
  sig.resize(len);
  if (alg == Alg::kEs256) return DerToJose(sig);
  return sig;
}

// ---- claims --------------------------------------------------------------------------------

enum class Round { kDown, kUp };

// Reads the NumericDate claim `name` (RFC 7519 section 2: seconds, possibly fractional).
// Fractions are rounded towards the stricter side by the caller's choice.
Status ReadDate(const Json& claims, const char* name, Round round, std::optional<int64_t>* out) {
  auto it = claims.find(name);
  if (it == claims.end()) return OkStatus();
  int64_t v;
  if (it->is_number_unsigned()) {
    uint64_t u = it->get<uint64_t>();
    v = u > static_cast<uint64_t>(kMaxDate) ? kMaxDate : static_cast<int64_t>(u);
  } else if (it->is_number_integer()) {
    v = std::clamp(it->get<int64_t>(), -kMaxDate, kMaxDate);
  } else if (it->is_number_float()) {
    double d = it->get<double>();
    if (!std::isfinite(d))
      return Err(CKR_PIN_INCORRECT, "token claim {} is not a finite number", name);
    d = round == Round::kDown ? std::floor(d) : std::ceil(d);
    d = std::clamp(d, -static_cast<double>(kMaxDate), static_cast<double>(kMaxDate));
    v = static_cast<int64_t>(d);
  } else {
    return Err(CKR_PIN_INCORRECT, "token claim {} is not a number", name);
  }
  *out = v;
  return OkStatus();
}

// A required string claim equal to `want`.
Status CheckStringClaim(const Json& claims, const char* name, std::string_view what,
                        const std::string& want) {
  auto it = claims.find(name);
  if (it == claims.end()) return Err(CKR_PIN_INCORRECT, "token has no {} claim", name);
  const auto* s = it->get_ptr<const std::string*>();
  if (s == nullptr) return Err(CKR_PIN_INCORRECT, "token claim {} is not a string", name);
  if (*s != want) return Err(CKR_PIN_INCORRECT, "wrong {} {}", what, Shown(*s));
  return OkStatus();
}

Status CheckAudience(const Json& claims, const std::string& want) {
  auto it = claims.find("aud");
  if (it == claims.end()) return Err(CKR_PIN_INCORRECT, "token has no aud claim");
  if (const auto* s = it->get_ptr<const std::string*>()) {
    if (*s != want) return Err(CKR_PIN_INCORRECT, "wrong audience {}", Shown(*s));
    return OkStatus();
  }
  if (!it->is_array()) return Err(CKR_PIN_INCORRECT, "token claim aud is not a string or array");
  bool found = false;
  for (const auto& a : *it) {
    const auto* s = a.get_ptr<const std::string*>();
    if (s == nullptr) return Err(CKR_PIN_INCORRECT, "token claim aud has a non-string member");
    found = found || *s == want;
  }
  if (!found) return Err(CKR_PIN_INCORRECT, "wrong audience (not among {} values)", it->size());
  return OkStatus();
}

int64_t ClampSeconds(std::chrono::seconds s, int64_t hi) {
  return std::clamp<int64_t>(s.count(), 0, hi);
}

// ---- JWKS ----------------------------------------------------------------------------------

// An optional string member: absent is fine, another type is an error.
Result<std::string> OptionalString(const Json& k, const char* name, size_t index) {
  auto it = k.find(name);
  if (it == k.end()) return std::string();
  const auto* s = it->get_ptr<const std::string*>();
  if (s == nullptr)
    return Err(CKR_FUNCTION_FAILED, "JWKS key {}: \"{}\" is not a string", index, name);
  return *s;
}

Result<Bytes> B64Member(const Json& k, const char* name, size_t index) {
  auto it = k.find(name);
  const auto* s = it == k.end() ? nullptr : it->get_ptr<const std::string*>();
  if (s == nullptr)
    return Err(CKR_FUNCTION_FAILED, "JWKS key {}: missing or non-string \"{}\"", index, name);
  auto b = Base64UrlDecode(*s);
  if (!b.ok()) return Err(CKR_FUNCTION_FAILED, "JWKS key {}: \"{}\" is not base64url", index, name);
  return std::move(b).value();
}

// Builds a public key of `type` from `params` in the module context and runs OpenSSL's public
// key check on it (for EC: the point lies on the curve and is not the identity).
Result<EvpPkeyPtr> KeyFromParams(const char* type, OSSL_PARAM_BLD* bld, size_t index) {
  OsslParamPtr params(OSSL_PARAM_BLD_to_param(bld));
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(ossl::LibCtx(), type, nullptr));
  EVP_PKEY* raw = nullptr;
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, params.get()) != 1)
    return Err(CKR_FUNCTION_FAILED, "JWKS key {}: invalid {} public key: {}", index, type,
               SslErrors());
  EvpPkeyPtr key(raw);
  EvpPkeyCtxPtr check(EVP_PKEY_CTX_new_from_pkey(ossl::LibCtx(), key.get(), nullptr));
  if (!check || EVP_PKEY_public_check(check.get()) != 1)
    return Err(CKR_FUNCTION_FAILED, "JWKS key {}: {} public key fails validation: {}", index, type,
               SslErrors());
  return key;
}

Result<EvpPkeyPtr> RsaFromJwk(const Json& k, size_t index) {
  VAULTP11_ASSIGN_OR_RETURN(Bytes n, B64Member(k, "n", index));
  VAULTP11_ASSIGN_OR_RETURN(Bytes e, B64Member(k, "e", index));
  // RFC 7518 forbids leading zero octets, but some publishers emit them; they change nothing.
  auto strip = [](Bytes& b) {
    b.erase(b.begin(), std::find_if(b.begin(), b.end(), [](uint8_t x) { return x != 0; }));
  };
  strip(n);
  strip(e);
  if (n.empty() || n.size() > kMaxRsaModulusBytes)
    return Err(CKR_FUNCTION_FAILED, "JWKS key {}: RSA modulus empty or larger than {} bits", index,
               kMaxRsaModulusBytes * 8);
  if (e.empty() || e.size() > kMaxRsaExponentBytes)
    return Err(CKR_FUNCTION_FAILED, "JWKS key {}: RSA exponent empty or longer than {} bytes",
               index, kMaxRsaExponentBytes);
  BignumPtr bn_n(BN_bin2bn(n.data(), static_cast<int>(n.size()), nullptr));
  BignumPtr bn_e(BN_bin2bn(e.data(), static_cast<int>(e.size()), nullptr));
  OsslParamBldPtr bld(OSSL_PARAM_BLD_new());
  if (!bn_n || !bn_e || !bld ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, bn_n.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, bn_e.get()) != 1)
    return Err(CKR_FUNCTION_FAILED, "JWKS key {}: building RSA parameters failed: {}", index,
               SslErrors());
  return KeyFromParams("RSA", bld.get(), index);
}

Result<EvpPkeyPtr> P256FromJwk(const Json& k, size_t index) {
  VAULTP11_ASSIGN_OR_RETURN(Bytes x, B64Member(k, "x", index));
  VAULTP11_ASSIGN_OR_RETURN(Bytes y, B64Member(k, "y", index));
  // RFC 7518 section 6.2.1.2: coordinates are full length, so 32 bytes each for P-256.
  if (x.size() != kP256FieldBytes || y.size() != kP256FieldBytes)
    return Err(CKR_FUNCTION_FAILED, "JWKS key {}: P-256 coordinates must be {} bytes each", index,
               kP256FieldBytes);
  Bytes point;
  point.reserve(1 + 2 * kP256FieldBytes);
  point.push_back(0x04);  // uncompressed
  point.insert(point.end(), x.begin(), x.end());
  point.insert(point.end(), y.begin(), y.end());
  OsslParamBldPtr bld(OSSL_PARAM_BLD_new());
  if (!bld ||
      OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, "P-256", 0) != 1 ||
      OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(),
                                       point.size()) != 1)
    return Err(CKR_FUNCTION_FAILED, "JWKS key {}: building EC parameters failed: {}", index,
               SslErrors());
  return KeyFromParams("EC", bld.get(), index);
}

// One member of "keys": a Jwk, or nullopt when the key is of a kind we skip.
Result<std::optional<Jwk>> ParseJwk(const Json& k, size_t index) {
  if (!k.is_object()) return Err(CKR_FUNCTION_FAILED, "JWKS key {}: not a JSON object", index);
  auto kty_it = k.find("kty");
  const auto* kty = kty_it == k.end() ? nullptr : kty_it->get_ptr<const std::string*>();
  if (kty == nullptr)
    return Err(CKR_FUNCTION_FAILED, "JWKS key {}: missing or non-string \"kty\"", index);
  VAULTP11_ASSIGN_OR_RETURN(std::string use, OptionalString(k, "use", index));
  Jwk jwk;
  VAULTP11_ASSIGN_OR_RETURN(jwk.kid, OptionalString(k, "kid", index));
  VAULTP11_ASSIGN_OR_RETURN(jwk.alg, OptionalString(k, "alg", index));
  if (k.contains("use") && use != "sig") return std::optional<Jwk>();  // an encryption key
  if (*kty == "RSA") {
    VAULTP11_ASSIGN_OR_RETURN(jwk.key, RsaFromJwk(k, index));
  } else if (*kty == "EC") {
    VAULTP11_ASSIGN_OR_RETURN(std::string crv, OptionalString(k, "crv", index));
    if (crv.empty()) return Err(CKR_FUNCTION_FAILED, "JWKS key {}: EC key without \"crv\"", index);
    if (crv != "P-256") return std::optional<Jwk>();
    VAULTP11_ASSIGN_OR_RETURN(jwk.key, P256FromJwk(k, index));
  } else {
    return std::optional<Jwk>();  // OKP, oct, ...: not something we verify with
  }
  return std::optional<Jwk>(std::move(jwk));
}

EVP_MD* Sha256() {
  // Fetched once from the module's context; kept for the life of the process.
  static EVP_MD* md = EVP_MD_fetch(ossl::LibCtx(), "SHA256", nullptr);
  return md;
}

}  // namespace

// ---- public API ----------------------------------------------------------------------------

std::string Base64UrlEncode(std::span<const uint8_t> data) {
  std::string out;
  out.reserve((data.size() * 4 + 2) / 3);
  size_t i = 0;
  for (; i + 3 <= data.size(); i += 3) {
    uint32_t v = uint32_t{data[i]} << 16 | uint32_t{data[i + 1]} << 8 | data[i + 2];
    out += kB64Url[v >> 18 & 63];
    out += kB64Url[v >> 12 & 63];
    out += kB64Url[v >> 6 & 63];
    out += kB64Url[v & 63];
  }
  size_t rest = data.size() - i;
  if (rest == 1) {
    uint32_t v = uint32_t{data[i]} << 16;
    out += kB64Url[v >> 18 & 63];
    out += kB64Url[v >> 12 & 63];
  } else if (rest == 2) {
    uint32_t v = uint32_t{data[i]} << 16 | uint32_t{data[i + 1]} << 8;
    out += kB64Url[v >> 18 & 63];
    out += kB64Url[v >> 12 & 63];
    out += kB64Url[v >> 6 & 63];
  }
  return out;
}

Result<Bytes> Base64UrlDecode(std::string_view text) {
  // A lone trailing character would carry only 6 bits: no byte string encodes to that.
  if (text.size() % 4 == 1) return Err(CKR_ARGUMENTS_BAD, "malformed base64url (length)");
  Bytes out;
  out.reserve(text.size() * 3 / 4);
  uint32_t acc = 0;
  int bits = 0;
  for (char c : text) {
    int v = B64UrlValue(c);
    if (v < 0) return Err(CKR_ARGUMENTS_BAD, "malformed base64url (invalid character)");
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<uint8_t>(acc >> bits));
      acc &= (1u << bits) - 1;
    }
  }
  // The unused low bits of the last character must be zero, or two texts would decode to
  // the same bytes (and a signature could be "changed" without changing what is verified).
  if (acc != 0) return Err(CKR_ARGUMENTS_BAD, "malformed base64url (non-canonical trailing bits)");
  return out;
}

Result<Token> Parse(std::string_view compact) {
  return Guarded("token parse", [&]() -> Result<Token> {
    if (compact.size() > kMaxTokenBytes)
      return Err(CKR_PIN_INVALID, "token too long ({} bytes, limit {})", compact.size(),
                 kMaxTokenBytes);
    size_t d1 = compact.find('.');
    size_t d2 = d1 == std::string_view::npos ? d1 : compact.find('.', d1 + 1);
    if (d2 == std::string_view::npos || compact.find('.', d2 + 1) != std::string_view::npos)
      return Err(CKR_PIN_INVALID, "malformed token: not three dot-separated parts");
    auto header = Base64UrlDecode(compact.substr(0, d1));
    if (!header.ok()) return Err(CKR_PIN_INVALID, "malformed token: header is not base64url");
    auto payload = Base64UrlDecode(compact.substr(d1 + 1, d2 - d1 - 1));
    if (!payload.ok()) return Err(CKR_PIN_INVALID, "malformed token: payload is not base64url");
    auto signature = Base64UrlDecode(compact.substr(d2 + 1));
    if (!signature.ok()) return Err(CKR_PIN_INVALID, "malformed token: signature is not base64url");

    Token t;
    if (JsonError e = ParseJsonObject(AsText(*header), &t.header); e != JsonError::kNone)
      return Err(CKR_PIN_INVALID, "malformed token: header {}", Describe(e));
    if (JsonError e = ParseJsonObject(AsText(*payload), &t.claims); e != JsonError::kNone)
      return Err(CKR_PIN_INVALID, "malformed token: payload {}", Describe(e));
    auto alg = t.header.find("alg");
    const auto* alg_name = alg == t.header.end() ? nullptr : alg->get_ptr<const std::string*>();
    if (alg_name == nullptr)
      return Err(CKR_PIN_INVALID, "malformed token: header has no string \"alg\"");
    // RFC 7515 section 4.1.11: a recipient must refuse extensions it does not understand, and
    // we understand none (this also refuses the unencoded payload option of RFC 7797).
    if (t.header.contains("crit"))
      return Err(CKR_PIN_INVALID, "token uses critical header extensions");
    t.alg = *alg_name;
    t.signing_input = std::string(compact.substr(0, d2));
    t.signature = std::move(signature).value();
    return t;
  });
}

Status Verify(const Token& token, EVP_PKEY* key, std::span<const std::string_view> allowed) {
  return Guarded("token verify", [&]() -> Status {
    auto alg = AlgFromName(token.alg);
    // The allow-list is consulted only after our own list: listing "HS256" or "none" in a
    // config still cannot turn an RSA public key into an HMAC secret.
    if (!alg || std::find(allowed.begin(), allowed.end(), token.alg) == allowed.end())
      return Err(CKR_PIN_INVALID, "token algorithm not allowed: {}", Shown(token.alg));
    if (key == nullptr) return Err(CKR_ARGUMENTS_BAD, "no verification key");
    VAULTP11_RETURN_IF_ERROR(CheckKey(key, *alg, CKR_PIN_INCORRECT));
    return VerifySignature(key, *alg, token.signing_input, token.signature);
  });
}

Status CheckClaims(const Token& token, const ClaimRules& rules,
                   std::chrono::system_clock::time_point now) {
  return Guarded("token claims", [&]() -> Status {
    const Json& c = token.claims;
    if (!c.is_object()) return Err(CKR_PIN_INCORRECT, "token claims are not a JSON object");
    const int64_t now_s = std::clamp<int64_t>(
        std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count(), -kMaxDate,
        kMaxDate);
    const int64_t leeway = ClampSeconds(rules.leeway, kMaxSkewSeconds);
    const int64_t max_lifetime = ClampSeconds(rules.max_lifetime, kMaxDate);

    std::optional<int64_t> exp, nbf, iat;
    VAULTP11_RETURN_IF_ERROR(ReadDate(c, "exp", Round::kDown, &exp));
    VAULTP11_RETURN_IF_ERROR(ReadDate(c, "nbf", Round::kUp, &nbf));
    VAULTP11_RETURN_IF_ERROR(ReadDate(c, "iat", Round::kUp, &iat));
    // A token that never expires is a credential that can never be revoked by waiting.
    if (!exp) return Err(CKR_PIN_INCORRECT, "token has no exp claim");
    if (now_s >= *exp + leeway) return Err(CKR_PIN_INCORRECT, "token expired");
    if (nbf && *nbf > now_s + leeway) return Err(CKR_PIN_INCORRECT, "token not yet valid (nbf)");
    if (iat && *iat > now_s + leeway)
      return Err(CKR_PIN_INCORRECT, "token issued in the future (iat)");
    if (max_lifetime > 0 && *exp > now_s + max_lifetime + leeway)
      return Err(CKR_PIN_INCORRECT, "token lifetime too long (exp more than {} s ahead)",
                 max_lifetime);

    if (!rules.issuer.empty())
      VAULTP11_RETURN_IF_ERROR(CheckStringClaim(c, "iss", "issuer", rules.issuer));
    if (!rules.subject.empty())
      VAULTP11_RETURN_IF_ERROR(CheckStringClaim(c, "sub", "subject", rules.subject));
    if (!rules.audience.empty()) VAULTP11_RETURN_IF_ERROR(CheckAudience(c, rules.audience));
    if (rules.require_jti) {
      auto it = c.find("jti");
      if (it == c.end()) return Err(CKR_PIN_INCORRECT, "token has no jti claim");
      const auto* jti = it->get_ptr<const std::string*>();
      if (jti == nullptr) return Err(CKR_PIN_INCORRECT, "token claim jti is not a string");
      if (jti->empty() || jti->size() > kMaxJtiChars)
        return Err(CKR_PIN_INCORRECT, "token claim jti empty or longer than {} chars",
                   kMaxJtiChars);
    }
    return OkStatus();
  });
}

Result<std::vector<Jwk>> ParseJwks(std::string_view json_text) {
  return Guarded("JWKS parse", [&]() -> Result<std::vector<Jwk>> {
    if (json_text.size() > kMaxJwksBytes)
      return Err(CKR_FUNCTION_FAILED, "JWKS too large ({} bytes, limit {})", json_text.size(),
                 kMaxJwksBytes);
    Json doc;
    if (JsonError e = ParseJsonObject(json_text, &doc); e != JsonError::kNone)
      return Err(CKR_FUNCTION_FAILED, "JWKS document {}", Describe(e));
    auto keys = doc.find("keys");
    if (keys == doc.end() || !keys->is_array())
      return Err(CKR_FUNCTION_FAILED, "JWKS document has no \"keys\" array");
    std::vector<Jwk> out;
    for (size_t i = 0; i < keys->size(); ++i) {
      VAULTP11_ASSIGN_OR_RETURN(std::optional<Jwk> jwk, ParseJwk((*keys)[i], i));
      if (jwk) out.push_back(std::move(*jwk));
    }
    return out;
  });
}

Result<std::string> Sign(nlohmann::json header, const nlohmann::json& claims, EVP_PKEY* private_key,
                         std::string_view alg_name) {
  return Guarded("token sign", [&]() -> Result<std::string> {
    auto alg = AlgFromName(alg_name);
    if (!alg) return Err(CKR_ARGUMENTS_BAD, "unsupported signing algorithm {}", Shown(alg_name));
    if (private_key == nullptr) return Err(CKR_ARGUMENTS_BAD, "no signing key");
    if (header.is_null()) header = Json::object();
    if (!header.is_object()) return Err(CKR_ARGUMENTS_BAD, "token header must be a JSON object");
    if (!claims.is_object()) return Err(CKR_ARGUMENTS_BAD, "token claims must be a JSON object");
    VAULTP11_RETURN_IF_ERROR(CheckKey(private_key, *alg, CKR_KEY_TYPE_INCONSISTENT));
    header["alg"] = std::string(alg_name);
    if (!header.contains("typ")) header["typ"] = "JWT";
    std::string header_text, claims_text;
    try {
      header_text = header.dump();
      claims_text = claims.dump();
    } catch (const Json::type_error&) {  // strings that are not UTF-8
      return Err(CKR_ARGUMENTS_BAD, "token header or claims are not valid UTF-8");
    }
    std::string input =
        Base64UrlEncode(AsBytes(header_text)) + "." + Base64UrlEncode(AsBytes(claims_text));
    VAULTP11_ASSIGN_OR_RETURN(Bytes sig, SignBytes(private_key, *alg, input));
    std::string token = input + "." + Base64UrlEncode(sig);
    if (token.size() > kMaxTokenBytes)
      return Err(CKR_ARGUMENTS_BAD, "token would be {} bytes, over the {} byte limit", token.size(),
                 kMaxTokenBytes);
    return token;
  });
}

Result<std::string> CertificateThumbprint(std::span<const uint8_t> der) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (Sha256() == nullptr ||
      EVP_Digest(der.data(), der.size(), digest, &len, Sha256(), nullptr) != 1)
    return Err(CKR_FUNCTION_FAILED, "SHA-256 failed: {}", SslErrors());
  return Base64UrlEncode(std::span<const uint8_t>(digest, len));
}

}  // namespace vaultp11::auth::jwt

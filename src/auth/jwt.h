// A small JWS/JWT library (RFC 7515/7519) for the two token logins of the module: client
// assertions signed with a client certificate's key (RFC 7523) and OAuth2 bearer tokens checked
// against an issuer's JWKS (RFC 7517). Only the compact serialization and the asymmetric algs
// RS256, PS256 and ES256 exist here: no "none", no HMAC (a public key must never double as an
// HMAC secret), no JWE, no keys taken from the token itself (jwk/jku/x5u are ignored).
//
// Error codes follow the login they feed: a token that is not even a well-formed JWS, or uses an
// algorithm we refuse, is CKR_PIN_INVALID; a well-formed token that fails verification (bad
// signature, unsuitable key, expired, wrong audience, ...) is CKR_PIN_INCORRECT. Messages never
// contain the token text, and claim values only when short and printable.
#pragma once

#include <openssl/evp.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "util/ossl_ptr.h"
#include "util/result.h"
#include "util/secure_bytes.h"

namespace vaultp11::auth::jwt {

// Upper bound on a compact token, checked before anything is decoded.
inline constexpr size_t kMaxTokenBytes = 16 * 1024;
// Upper bound on a JWKS document.
inline constexpr size_t kMaxJwksBytes = 1024 * 1024;

// The algorithms this library implements (JWA names, RFC 7518 section 3.1).
inline constexpr std::string_view kRs256 = "RS256";
inline constexpr std::string_view kPs256 = "PS256";
inline constexpr std::string_view kEs256 = "ES256";

// base64url without padding (RFC 7515 section 2). Decode refuses padding, '+', '/', whitespace,
// a length of 4k+1 and non-canonical trailing bits, so each byte string has exactly one
// accepted encoding (CKR_ARGUMENTS_BAD otherwise).
std::string Base64UrlEncode(std::span<const uint8_t> data);
Result<Bytes> Base64UrlDecode(std::string_view text);

// A parsed compact JWS, NOT yet verified: nothing in it may be trusted before Verify succeeds.
struct Token {
  nlohmann::json header;      // JSON object
  nlohmann::json claims;      // JSON object
  std::string alg;            // header "alg"
  std::string signing_input;  // "<b64 header>.<b64 payload>", exactly as received
  Bytes signature;
};

// Parses "<b64url>.<b64url>.<b64url>": at most kMaxTokenBytes, exactly two dots, header and
// payload JSON objects without duplicate member names (RFC 7515 section 5.2 lets us refuse
// them, and a verifier that keeps the last value while a gateway kept the first is a classic
// confusion), nesting at most 32 deep, "alg" a string, no "crit" header (we understand no
// extension). Any malformation: CKR_PIN_INVALID.
Result<Token> Parse(std::string_view compact);

// Verifies the signature of `token` with a public (or private) key. Only algs that are both
// implemented here and listed in `allowed` are accepted; anything else, "none" and HS* included,
// is CKR_PIN_INVALID ("algorithm not allowed"). A key that does not fit the alg (RSA below 2048
// bits, EC not on P-256, wrong type), a signature of the wrong length or a bad signature:
// CKR_PIN_INCORRECT. A null key is CKR_ARGUMENTS_BAD.
Status Verify(const Token& token, EVP_PKEY* key, std::span<const std::string_view> allowed);

struct ClaimRules {
  std::string issuer;               // required "iss" value when non-empty
  std::string subject;              // required "sub" value when non-empty
  std::string audience;             // when non-empty: "aud" equals it, or is an array containing it
  std::chrono::seconds leeway{60};  // clock skew allowed on exp, nbf and iat
  std::chrono::seconds max_lifetime{0};  // > 0: exp must be at most now + max_lifetime + leeway
  bool require_jti = false;              // "jti": non-empty string of at most 256 chars
};

// Checks the registered claims of a (verified) token against `rules` at time `now`: "exp" is
// required and must be a number with now < exp + leeway; "nbf" and "iat", when present, must be
// numbers no later than now + leeway. Any failure is CKR_PIN_INCORRECT with a short reason.
Status CheckClaims(const Token& token, const ClaimRules& rules,
                   std::chrono::system_clock::time_point now);

// One signing key from a JWKS.
struct Jwk {
  std::string kid;  // "kid", empty when absent
  std::string alg;  // "alg", empty when absent (callers may require it to match the token's)
  EvpPkeyPtr key;   // public key made in ossl::LibCtx()
};

// Parses a JWKS document {"keys":[...]}: RSA (kty RSA, n, e) and EC P-256 (kty EC, crv P-256,
// x, y; each exactly 32 bytes, point on the curve) public keys. Keys of another kty or crv, or
// with a "use" other than "sig", are skipped; malformed JSON or a key with bad fields is
// CKR_FUNCTION_FAILED naming the key's index. Private members ("d", ...) are ignored.
Result<std::vector<Jwk>> ParseJwks(std::string_view json_text);

// Makes a compact JWS: `header` (an object, or null for {}) gets "alg" set and "typ":"JWT" when
// it has no "typ"; `claims` must be an object. RS256/PS256/ES256 with a private key of the right
// type (else CKR_KEY_TYPE_INCONSISTENT); an unknown alg is CKR_ARGUMENTS_BAD. ES256 output is
// the JOSE form r||s (64 bytes). For the admin CLI (client assertions) and tests.
Result<std::string> Sign(nlohmann::json header, const nlohmann::json& claims, EVP_PKEY* private_key,
                         std::string_view alg);

// The "x5t#S256" thumbprint of a DER certificate: base64url(SHA-256(der)). A Result rather than
// a bare string so that a (theoretical) digest failure can never yield "" that compares equal
// to an empty header value.
Result<std::string> CertificateThumbprint(std::span<const uint8_t> der);

}  // namespace vaultp11::auth::jwt

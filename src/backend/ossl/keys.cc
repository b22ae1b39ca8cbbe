// Key generation, import, PKCS#8 conversion and public attribute extraction for the OpenSSL
// backend. Every OpenSSL object is created in the module's own library context (LibCtx()).
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/decoder.h>
#include <openssl/ec.h>
#include <openssl/encoder.h>
#include <openssl/err.h>
#include <openssl/obj_mac.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <memory>
#include <strings.h>

#include "backend/ossl/ossl_backend.h"

namespace vaultp11::ossl {
namespace {

using BnCtxPtr = std::unique_ptr<BN_CTX, OsslDeleter<&BN_CTX_free>>;
using EncoderCtxPtr = std::unique_ptr<OSSL_ENCODER_CTX, OsslDeleter<&OSSL_ENCODER_CTX_free>>;
using DecoderCtxPtr = std::unique_ptr<OSSL_DECODER_CTX, OsslDeleter<&OSSL_DECODER_CTX_free>>;
using EcGroupPtr = std::unique_ptr<EC_GROUP, OsslDeleter<&EC_GROUP_free>>;
using EcPointPtr = std::unique_ptr<EC_POINT, OsslDeleter<&EC_POINT_free>>;

// Import limits: RSA moduli of 1024..16384 bits; any encoded integer longer than this is bad.
constexpr int kRsaMinImportBits = 1024;
constexpr int kRsaMaxImportBits = 16384;
constexpr size_t kMaxIntegerBytes = 4096;

Error SslFailure(std::string_view what) {
  return Err(CKR_FUNCTION_FAILED, "{} failed: {}", what, SslErrors());
}

// A NULL library context would silently mean OpenSSL's default one: refuse instead.
Status CheckLibCtx() {
  if (LibCtx() == nullptr) return Err(CKR_FUNCTION_FAILED, "OpenSSL library context unavailable");
  return OkStatus();
}

// True if the RSA or EC key holds its private part.
bool HasPrivate(EVP_PKEY* pkey) {
  const char* param = EVP_PKEY_is_a(pkey, "RSA") ? OSSL_PKEY_PARAM_RSA_D
                      : EVP_PKEY_is_a(pkey, "EC") ? OSSL_PKEY_PARAM_PRIV_KEY
                                                  : nullptr;
  BIGNUM* bn = nullptr;
  bool has = param != nullptr && EVP_PKEY_get_bn_param(pkey, param, &bn) == 1 && bn != nullptr;
  BN_clear_free(bn);
  ERR_clear_error();
  return has;
}

// ---- named curves ------------------------------------------------------------------------

struct Curve {
  const char* name;      // name given to OpenSSL
  const char* ossl_name; // canonical OpenSSL name (as returned by the group-name parameter)
  int nid;
  std::span<const uint8_t> oid_der;
  size_t field_bytes;
};

constexpr uint8_t kP256Oid[] = {0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07};
constexpr uint8_t kP384Oid[] = {0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22};
constexpr uint8_t kP521Oid[] = {0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x23};
constexpr uint8_t kSecp256k1Oid[] = {0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x0A};

const std::array<Curve, 4> kCurves = {{
    {"P-256", "prime256v1", NID_X9_62_prime256v1, kP256Oid, 32},
    {"P-384", "secp384r1", NID_secp384r1, kP384Oid, 48},
    {"P-521", "secp521r1", NID_secp521r1, kP521Oid, 66},
    {"secp256k1", "secp256k1", NID_secp256k1, kSecp256k1Oid, 32},
}};

// Reads one DER TLV header at the start of `in`; returns false if malformed or if the value
// does not end exactly at the end of `in`.
bool ParseSingleTlv(std::span<const uint8_t> in, uint8_t* tag, std::span<const uint8_t>* value) {
  if (in.size() < 2) return false;
  *tag = in[0];
  if ((in[0] & 0x1F) == 0x1F) return false;  // high tag numbers: not used here
  size_t pos = 1;
  size_t len = in[pos++];
  if (len & 0x80) {
    size_t n = len & 0x7F;
    if (n == 0 || n > 4 || in.size() - pos < n) return false;
    len = 0;
    for (size_t i = 0; i < n; ++i) len = (len << 8) | in[pos++];
    if (len < 128 || (n > 1 && in[2] == 0)) return false;  // not minimal (DER)
  }
  if (in.size() - pos != len) return false;
  *value = in.subspan(pos);
  return true;
}

Result<const Curve*> ParseEcParams(std::span<const uint8_t> der) {
  uint8_t tag = 0;
  std::span<const uint8_t> value;
  if (!ParseSingleTlv(der, &tag, &value))
    return Err(CKR_ATTRIBUTE_VALUE_INVALID, "CKA_EC_PARAMS is not valid DER");
  switch (tag) {
    case 0x06: {  // OBJECT IDENTIFIER
      if (value.empty() || (value.back() & 0x80) != 0)
        return Err(CKR_ATTRIBUTE_VALUE_INVALID, "CKA_EC_PARAMS holds a malformed OID");
      for (const Curve& c : kCurves) {
        if (std::ranges::equal(c.oid_der, der)) return &c;
      }
      return Err(CKR_CURVE_NOT_SUPPORTED, "EC curve not supported (only P-256, P-384, P-521, secp256k1)");
    }
    case 0x30:  // explicit parameters
    case 0x05:  // implicitlyCA
    case 0x13:  // PrintableString curve name (PKCS#11 v3)
      return Err(CKR_CURVE_NOT_SUPPORTED, "only named curves given by OID are supported");
    default:
      return Err(CKR_ATTRIBUTE_VALUE_INVALID, "CKA_EC_PARAMS is neither an OID nor EC parameters");
  }
}

Result<const Curve*> CurveOfKey(EVP_PKEY* pkey) {
  if (pkey == nullptr || !EVP_PKEY_is_a(pkey, "EC"))
    return Err(CKR_KEY_TYPE_INCONSISTENT, "not an EC key");
  char name[64] = {};
  size_t len = 0;
  if (EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, name, sizeof(name), &len) != 1) {
    SslErrors();
    return Err(CKR_CURVE_NOT_SUPPORTED, "EC key has no named curve");
  }
  for (const Curve& c : kCurves) {
    if (strcasecmp(name, c.ossl_name) == 0 || strcasecmp(name, c.name) == 0) return &c;
  }
  return Err(CKR_CURVE_NOT_SUPPORTED, "EC curve {} not supported", name);
}

// DER OCTET STRING around `content`.
Bytes DerOctetString(std::span<const uint8_t> content) {
  Bytes out;
  out.reserve(content.size() + 4);
  out.push_back(0x04);
  size_t n = content.size();
  if (n < 0x80) {
    out.push_back(static_cast<uint8_t>(n));
  } else if (n <= 0xFF) {
    out.push_back(0x81);
    out.push_back(static_cast<uint8_t>(n));
  } else {
    out.push_back(0x82);
    out.push_back(static_cast<uint8_t>(n >> 8));
    out.push_back(static_cast<uint8_t>(n));
  }
  out.insert(out.end(), content.begin(), content.end());
  return out;
}

// The encoded point inside CKA_EC_POINT: either DER OCTET STRING(point) or the raw point.
// A point is 04||X||Y (1 + 2f bytes) or 02/03||X (1 + f bytes).
bool IsPointEncoding(std::span<const uint8_t> p, size_t f) {
  if (p.empty()) return false;
  if (p[0] == 0x04) return p.size() == 1 + 2 * f;
  if (p[0] == 0x02 || p[0] == 0x03) return p.size() == 1 + f;
  return false;
}

std::span<const uint8_t> UnwrapEcPoint(std::span<const uint8_t> ec_point, size_t f) {
  uint8_t tag = 0;
  std::span<const uint8_t> value;
  if (ParseSingleTlv(ec_point, &tag, &value) && tag == 0x04 && IsPointEncoding(value, f)) return value;
  return ec_point;
}

std::span<const uint8_t> StripLeadingZeros(std::span<const uint8_t> v) {
  size_t i = 0;
  while (i < v.size() && v[i] == 0) ++i;
  return v.subspan(i);
}

// BIGNUM from a big-endian integer; `secret` selects secure, constant-time BIGNUMs.
Result<BignumClearPtr> ToBn(std::span<const uint8_t> be, bool secret, std::string_view what) {
  if (be.size() > kMaxIntegerBytes) return Err(CKR_ATTRIBUTE_VALUE_INVALID, "{} is too long", what);
  BignumClearPtr bn(secret ? BN_secure_new() : BN_new());
  if (!bn) return SslFailure("BN_new");
  if (secret) BN_set_flags(bn.get(), BN_FLG_CONSTTIME);
  if (BN_bin2bn(be.data(), static_cast<int>(be.size()), bn.get()) == nullptr) return SslFailure("BN_bin2bn");
  return bn;
}

Result<PkeyRef> FromData(const char* type, int selection, OsslParamBldPtr& bld) {
  VAULTP11_RETURN_IF_ERROR(CheckLibCtx());
  OsslParamPtr params(OSSL_PARAM_BLD_to_param(bld.get()));
  if (!params) return SslFailure("OSSL_PARAM_BLD_to_param");
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(LibCtx(), type, nullptr));
  EVP_PKEY* raw = nullptr;
  if (!ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &raw, selection, params.get()) != 1) {
    return Err(CKR_ATTRIBUTE_VALUE_INVALID, "{} key import rejected: {}", type, SslErrors());
  }
  return Share(EvpPkeyPtr(raw));
}

// Makes EC keys report uncompressed points in SubjectPublicKeyInfo and the like.
void PreferUncompressed(EVP_PKEY* pkey) {
  if (EVP_PKEY_is_a(pkey, "EC") &&
      EVP_PKEY_set_utf8_string_param(pkey, OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT,
                                     OSSL_PKEY_EC_POINT_CONVERSION_FORMAT_UNCOMPRESSED) != 1)
    SslErrors();
}

Status CheckRsaPublic(const BIGNUM* n, const BIGNUM* e) {
  int bits = BN_num_bits(n);
  if (bits < kRsaMinImportBits || bits > kRsaMaxImportBits)
    return Err(CKR_ATTRIBUTE_VALUE_INVALID, "RSA modulus of {} bits not supported (1024..16384)", bits);
  if (!BN_is_odd(n)) return Err(CKR_ATTRIBUTE_VALUE_INVALID, "RSA modulus is even");
  if (!BN_is_odd(e) || BN_is_one(e) || BN_cmp(e, n) >= 0)
    return Err(CKR_ATTRIBUTE_VALUE_INVALID, "RSA public exponent is invalid");
  return OkStatus();
}

// Recovers p and q from (n, e, d) (the classic randomized algorithm, e.g. NIST SP 800-56B
// appendix C); fails if d does not belong to (n, e).
Status RecoverRsaFactors(const BIGNUM* n, const BIGNUM* e, const BIGNUM* d, BN_CTX* ctx, BIGNUM* p,
                         BIGNUM* q) {
  BN_CTX_start(ctx);
  struct End { BN_CTX* c; ~End() { BN_CTX_end(c); } } end{ctx};
  BIGNUM* k = BN_CTX_get(ctx);
  BIGNUM* t = BN_CTX_get(ctx);
  BIGNUM* n1 = BN_CTX_get(ctx);
  BIGNUM* g = BN_CTX_get(ctx);
  BIGNUM* x = BN_CTX_get(ctx);
  BIGNUM* y = BN_CTX_get(ctx);
  BIGNUM* rem = BN_CTX_get(ctx);
  if (y == nullptr || rem == nullptr) return SslFailure("BN_CTX_get");
  BN_set_flags(k, BN_FLG_CONSTTIME);
  BN_set_flags(t, BN_FLG_CONSTTIME);
  // k = d*e - 1 = 2^s * t with t odd.
  if (BN_mul(k, d, e, ctx) != 1 || BN_sub_word(k, 1) != 1 || BN_copy(n1, n) == nullptr ||
      BN_sub_word(n1, 1) != 1)
    return SslFailure("BN arithmetic");
  if (BN_is_zero(k) || BN_is_odd(k))
    return Err(CKR_ATTRIBUTE_VALUE_INVALID, "RSA private exponent does not match the public key");
  int s = 0;
  if (BN_copy(t, k) == nullptr) return SslFailure("BN_copy");
  while (!BN_is_odd(t)) {
    if (BN_rshift1(t, t) != 1) return SslFailure("BN_rshift1");
    ++s;
  }
  static constexpr BN_ULONG kBases[] = {2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53,
                                        59, 61, 67, 71, 73, 79, 83, 89, 97, 101, 103, 107, 109, 113};
  for (BN_ULONG base : kBases) {
    if (BN_set_word(g, base) != 1 || BN_mod_exp(x, g, t, n, ctx) != 1) return SslFailure("BN_mod_exp");
    if (BN_is_one(x) || BN_cmp(x, n1) == 0) continue;
    for (int i = 0; i < s; ++i) {
      if (BN_mod_sqr(y, x, n, ctx) != 1) return SslFailure("BN_mod_sqr");
      if (BN_is_one(y)) {
        // x is a non-trivial square root of 1: gcd(x - 1, n) is a factor.
        if (BN_sub_word(x, 1) != 1 || BN_gcd(p, x, n, ctx) != 1 || BN_div(q, rem, n, p, ctx) != 1)
          return SslFailure("BN arithmetic");
        if (BN_is_one(p) || !BN_is_zero(rem)) break;
        return OkStatus();
      }
      if (BN_cmp(y, n1) == 0) break;
      if (BN_copy(x, y) == nullptr) return SslFailure("BN_copy");
    }
  }
  SslErrors();
  return Err(CKR_ATTRIBUTE_VALUE_INVALID, "RSA private exponent does not match the public key");
}

}  // namespace

// ---- generation ----------------------------------------------------------------------------

Result<PkeyRef> GenerateRsa(CK_ULONG bits, std::span<const uint8_t> public_exponent) {
  if (bits != 2048 && bits != 3072 && bits != 4096)
    return Err(CKR_KEY_SIZE_RANGE, "RSA key size {} not supported (2048, 3072, 4096)", bits);
  VAULTP11_RETURN_IF_ERROR(CheckLibCtx());
  if (!public_exponent.empty()) {
    static constexpr uint8_t kF4[] = {0x01, 0x00, 0x01};
    if (!std::ranges::equal(StripLeadingZeros(public_exponent), kF4))
      return Err(CKR_ATTRIBUTE_VALUE_INVALID, "only the public exponent 65537 is supported");
  }
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(LibCtx(), "RSA", nullptr));
  EVP_PKEY* raw = nullptr;
  if (!ctx || EVP_PKEY_keygen_init(ctx.get()) != 1 ||
      EVP_PKEY_CTX_set_rsa_keygen_bits(ctx.get(), static_cast<int>(bits)) != 1 ||
      EVP_PKEY_generate(ctx.get(), &raw) != 1)
    return SslFailure("RSA key generation");
  return Share(EvpPkeyPtr(raw));
}

Result<PkeyRef> GenerateEc(std::span<const uint8_t> ec_params) {
  VAULTP11_ASSIGN_OR_RETURN(const Curve* curve, ParseEcParams(ec_params));
  VAULTP11_RETURN_IF_ERROR(CheckLibCtx());
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(LibCtx(), "EC", nullptr));
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, const_cast<char*>(curve->name), 0),
      OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT,
                                       const_cast<char*>(OSSL_PKEY_EC_POINT_CONVERSION_FORMAT_UNCOMPRESSED), 0),
      OSSL_PARAM_construct_end(),
  };
  EVP_PKEY* raw = nullptr;
  if (!ctx || EVP_PKEY_keygen_init(ctx.get()) != 1 || EVP_PKEY_CTX_set_params(ctx.get(), params) != 1 ||
      EVP_PKEY_generate(ctx.get(), &raw) != 1)
    return SslFailure("EC key generation");
  return Share(EvpPkeyPtr(raw));
}

// ---- PKCS#8 --------------------------------------------------------------------------------

Result<SecureBytes> PrivateKeyToDer(EVP_PKEY* pkey) {
  if (pkey == nullptr) return Err(CKR_ARGUMENTS_BAD, "no key");
  if (!HasPrivate(pkey)) return Err(CKR_KEY_TYPE_INCONSISTENT, "not an RSA or EC private key");
  EncoderCtxPtr ctx(OSSL_ENCODER_CTX_new_for_pkey(pkey, EVP_PKEY_KEYPAIR, "DER", "PrivateKeyInfo", nullptr));
  if (!ctx || OSSL_ENCODER_CTX_get_num_encoders(ctx.get()) == 0) {
    SslErrors();
    return Err(CKR_KEY_TYPE_INCONSISTENT, "key cannot be encoded as PKCS#8 (not a private key?)");
  }
  unsigned char* data = nullptr;
  size_t len = 0;
  if (OSSL_ENCODER_to_data(ctx.get(), &data, &len) != 1 || data == nullptr)
    return SslFailure("PKCS#8 encoding");
  SecureBytes out(data, data + len);
  OPENSSL_clear_free(data, len);
  return out;
}

Result<PkeyRef> PrivateKeyFromDer(std::span<const uint8_t> der) {
  if (der.empty()) return Err(CKR_ATTRIBUTE_VALUE_INVALID, "empty private key DER");
  VAULTP11_RETURN_IF_ERROR(CheckLibCtx());
  EVP_PKEY* raw = nullptr;
  DecoderCtxPtr ctx(OSSL_DECODER_CTX_new_for_pkey(&raw, "DER", "PrivateKeyInfo", nullptr, EVP_PKEY_KEYPAIR,
                                                  LibCtx(), nullptr));
  if (!ctx) return SslFailure("OSSL_DECODER_CTX_new_for_pkey");
  const unsigned char* p = der.data();
  size_t left = der.size();
  int ok = OSSL_DECODER_from_data(ctx.get(), &p, &left);
  EvpPkeyPtr pkey(raw);
  if (ok != 1 || !pkey) {
    SslErrors();
    return Err(CKR_ATTRIBUTE_VALUE_INVALID, "not a valid PKCS#8 private key");
  }
  if (left != 0) return Err(CKR_ATTRIBUTE_VALUE_INVALID, "trailing data after the PKCS#8 private key");
  if (EVP_PKEY_is_a(pkey.get(), "RSA")) {
    int bits = EVP_PKEY_get_bits(pkey.get());
    if (bits < kRsaMinImportBits || bits > kRsaMaxImportBits)
      return Err(CKR_ATTRIBUTE_VALUE_INVALID, "RSA modulus of {} bits not supported (1024..16384)", bits);
  } else if (EVP_PKEY_is_a(pkey.get(), "EC")) {
    VAULTP11_RETURN_IF_ERROR(CurveOfKey(pkey.get()).status());
    PreferUncompressed(pkey.get());
  } else {
    return Err(CKR_ATTRIBUTE_VALUE_INVALID, "PKCS#8 key of type {} not supported",
               EVP_PKEY_get0_type_name(pkey.get()) ? EVP_PKEY_get0_type_name(pkey.get()) : "?");
  }
  return Share(std::move(pkey));
}

// ---- import --------------------------------------------------------------------------------

Result<PkeyRef> RsaPublicFromComponents(std::span<const uint8_t> n, std::span<const uint8_t> e) {
  VAULTP11_ASSIGN_OR_RETURN(BignumClearPtr bn_n, ToBn(StripLeadingZeros(n), false, "CKA_MODULUS"));
  VAULTP11_ASSIGN_OR_RETURN(BignumClearPtr bn_e, ToBn(StripLeadingZeros(e), false, "CKA_PUBLIC_EXPONENT"));
  VAULTP11_RETURN_IF_ERROR(CheckRsaPublic(bn_n.get(), bn_e.get()));
  OsslParamBldPtr bld(OSSL_PARAM_BLD_new());
  if (!bld || OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, bn_n.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, bn_e.get()) != 1)
    return SslFailure("OSSL_PARAM_BLD");
  return FromData("RSA", EVP_PKEY_PUBLIC_KEY, bld);
}

Result<PkeyRef> RsaPrivateFromComponents(const RsaComponents& c) {
  VAULTP11_ASSIGN_OR_RETURN(BignumClearPtr n, ToBn(StripLeadingZeros(c.n), false, "CKA_MODULUS"));
  VAULTP11_ASSIGN_OR_RETURN(BignumClearPtr e, ToBn(StripLeadingZeros(c.e), false, "CKA_PUBLIC_EXPONENT"));
  VAULTP11_RETURN_IF_ERROR(CheckRsaPublic(n.get(), e.get()));
  VAULTP11_ASSIGN_OR_RETURN(BignumClearPtr d, ToBn(c.d, true, "CKA_PRIVATE_EXPONENT"));
  if (BN_is_zero(d.get()) || BN_cmp(d.get(), n.get()) >= 0)
    return Err(CKR_ATTRIBUTE_VALUE_INVALID, "RSA private exponent out of range");

  int crt_given = !c.p.empty() + !c.q.empty() + !c.dp.empty() + !c.dq.empty() + !c.qinv.empty();
  if (crt_given != 0 && crt_given != 5)
    return Err(CKR_ATTRIBUTE_VALUE_INVALID, "RSA CRT components must be given all or none");

  VAULTP11_RETURN_IF_ERROR(CheckLibCtx());
  BnCtxPtr bctx(BN_CTX_secure_new_ex(LibCtx()));
  if (!bctx) return SslFailure("BN_CTX_new");
  BignumClearPtr p, q, dp, dq, qinv;
  if (crt_given == 5) {
    VAULTP11_ASSIGN_OR_RETURN(p, ToBn(c.p, true, "CKA_PRIME_1"));
    VAULTP11_ASSIGN_OR_RETURN(q, ToBn(c.q, true, "CKA_PRIME_2"));
    VAULTP11_ASSIGN_OR_RETURN(dp, ToBn(c.dp, true, "CKA_EXPONENT_1"));
    VAULTP11_ASSIGN_OR_RETURN(dq, ToBn(c.dq, true, "CKA_EXPONENT_2"));
    VAULTP11_ASSIGN_OR_RETURN(qinv, ToBn(c.qinv, true, "CKA_COEFFICIENT"));
  } else {
    p.reset(BN_secure_new());
    q.reset(BN_secure_new());
    dp.reset(BN_secure_new());
    dq.reset(BN_secure_new());
    qinv.reset(BN_secure_new());
    if (!p || !q || !dp || !dq || !qinv) return SslFailure("BN_new");
    for (BIGNUM* b : {p.get(), q.get(), dp.get(), dq.get(), qinv.get()}) BN_set_flags(b, BN_FLG_CONSTTIME);
    VAULTP11_RETURN_IF_ERROR(RecoverRsaFactors(n.get(), e.get(), d.get(), bctx.get(), p.get(), q.get()));
  }

  // Consistency: n = p*q, dp = d mod (p-1), dq = d mod (q-1), qinv*q = 1 mod p, and
  // (2^e)^d = 2 mod n (d inverts e).
  {
    BN_CTX* ctx = bctx.get();
    BN_CTX_start(ctx);
    struct End { BN_CTX* c; ~End() { BN_CTX_end(c); } } end{ctx};
    BIGNUM* t = BN_CTX_get(ctx);
    BIGNUM* pm1 = BN_CTX_get(ctx);
    BIGNUM* qm1 = BN_CTX_get(ctx);
    BIGNUM* two = BN_CTX_get(ctx);
    if (two == nullptr) return SslFailure("BN_CTX_get");
    BN_set_flags(t, BN_FLG_CONSTTIME);
    if (BN_is_zero(p.get()) || BN_is_zero(q.get()) || BN_is_one(p.get()) || BN_is_one(q.get()))
      return Err(CKR_ATTRIBUTE_VALUE_INVALID, "RSA primes are invalid");
    if (BN_mul(t, p.get(), q.get(), ctx) != 1) return SslFailure("BN_mul");
    if (BN_cmp(t, n.get()) != 0) return Err(CKR_ATTRIBUTE_VALUE_INVALID, "RSA primes do not match the modulus");
    if (BN_copy(pm1, p.get()) == nullptr || BN_sub_word(pm1, 1) != 1 || BN_copy(qm1, q.get()) == nullptr ||
        BN_sub_word(qm1, 1) != 1)
      return SslFailure("BN arithmetic");
    if (crt_given == 5) {
      if (BN_mod(t, d.get(), pm1, ctx) != 1) return SslFailure("BN_mod");
      if (BN_cmp(t, dp.get()) != 0) return Err(CKR_ATTRIBUTE_VALUE_INVALID, "RSA CRT exponent 1 is wrong");
      if (BN_mod(t, d.get(), qm1, ctx) != 1) return SslFailure("BN_mod");
      if (BN_cmp(t, dq.get()) != 0) return Err(CKR_ATTRIBUTE_VALUE_INVALID, "RSA CRT exponent 2 is wrong");
      if (BN_cmp(qinv.get(), p.get()) >= 0 || BN_mod_mul(t, qinv.get(), q.get(), p.get(), ctx) != 1 ||
          !BN_is_one(t))
        return Err(CKR_ATTRIBUTE_VALUE_INVALID, "RSA CRT coefficient is wrong");
    } else {
      if (BN_mod(dp.get(), d.get(), pm1, ctx) != 1 || BN_mod(dq.get(), d.get(), qm1, ctx) != 1 ||
          BN_mod_inverse(qinv.get(), q.get(), p.get(), ctx) == nullptr)
        return Err(CKR_ATTRIBUTE_VALUE_INVALID, "RSA components are inconsistent: {}", SslErrors());
    }
    if (BN_set_word(two, 2) != 1 || BN_mod_exp(t, two, e.get(), n.get(), ctx) != 1 ||
        BN_mod_exp(t, t, d.get(), n.get(), ctx) != 1)
      return SslFailure("BN_mod_exp");
    if (BN_cmp(t, two) != 0)
      return Err(CKR_ATTRIBUTE_VALUE_INVALID, "RSA private exponent does not match the public key");
  }

  OsslParamBldPtr bld(OSSL_PARAM_BLD_new());
  if (!bld || OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, n.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, e.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_D, d.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_FACTOR1, p.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_FACTOR2, q.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_EXPONENT1, dp.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_EXPONENT2, dq.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_COEFFICIENT1, qinv.get()) != 1)
    return SslFailure("OSSL_PARAM_BLD");
  return FromData("RSA", EVP_PKEY_KEYPAIR, bld);
}

Result<PkeyRef> EcPublicFromPoint(std::span<const uint8_t> ec_params, std::span<const uint8_t> ec_point) {
  VAULTP11_ASSIGN_OR_RETURN(const Curve* curve, ParseEcParams(ec_params));
  std::span<const uint8_t> point = UnwrapEcPoint(ec_point, curve->field_bytes);
  if (!IsPointEncoding(point, curve->field_bytes))
    return Err(CKR_ATTRIBUTE_VALUE_INVALID, "CKA_EC_POINT has the wrong length or format for {}", curve->name);
  OsslParamBldPtr bld(OSSL_PARAM_BLD_new());
  if (!bld || OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, curve->name, 0) != 1 ||
      OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size()) != 1 ||
      OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT,
                                      OSSL_PKEY_EC_POINT_CONVERSION_FORMAT_UNCOMPRESSED, 0) != 1)
    return SslFailure("OSSL_PARAM_BLD");
  VAULTP11_ASSIGN_OR_RETURN(PkeyRef key, FromData("EC", EVP_PKEY_PUBLIC_KEY, bld));
  // fromdata decodes the point onto the curve; the public check also rejects points outside
  // the prime-order subgroup.
  EvpPkeyCtxPtr check(EVP_PKEY_CTX_new_from_pkey(LibCtx(), key.get(), nullptr));
  if (!check) return SslFailure("EVP_PKEY_CTX_new_from_pkey");
  if (EVP_PKEY_public_check(check.get()) != 1) {
    SslErrors();
    return Err(CKR_ATTRIBUTE_VALUE_INVALID, "CKA_EC_POINT is not a valid point on {}", curve->name);
  }
  return key;
}

Result<PkeyRef> EcPrivateFromScalar(std::span<const uint8_t> ec_params, std::span<const uint8_t> d) {
  VAULTP11_ASSIGN_OR_RETURN(const Curve* curve, ParseEcParams(ec_params));
  std::span<const uint8_t> scalar = StripLeadingZeros(d);
  if (scalar.empty() || scalar.size() > curve->field_bytes)
    return Err(CKR_ATTRIBUTE_VALUE_INVALID, "EC private value out of range for {}", curve->name);
  VAULTP11_ASSIGN_OR_RETURN(BignumClearPtr priv, ToBn(scalar, true, "CKA_VALUE"));

  VAULTP11_RETURN_IF_ERROR(CheckLibCtx());
  EcGroupPtr group(EC_GROUP_new_by_curve_name_ex(LibCtx(), nullptr, curve->nid));
  BnCtxPtr bctx(BN_CTX_secure_new_ex(LibCtx()));
  if (!group || !bctx) return SslFailure("EC_GROUP_new");
  const BIGNUM* order = EC_GROUP_get0_order(group.get());
  if (order == nullptr || BN_cmp(priv.get(), order) >= 0)
    return Err(CKR_ATTRIBUTE_VALUE_INVALID, "EC private value out of range for {}", curve->name);
  EcPointPtr pub(EC_POINT_new(group.get()));
  std::array<uint8_t, 1 + 2 * 66> pub_oct{};
  size_t pub_len = 0;
  if (!pub || EC_POINT_mul(group.get(), pub.get(), priv.get(), nullptr, nullptr, bctx.get()) != 1 ||
      (pub_len = EC_POINT_point2oct(group.get(), pub.get(), POINT_CONVERSION_UNCOMPRESSED, pub_oct.data(),
                                    pub_oct.size(), bctx.get())) == 0)
    return SslFailure("EC public key derivation");

  OsslParamBldPtr bld(OSSL_PARAM_BLD_new());
  if (!bld || OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, curve->name, 0) != 1 ||
      OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, pub_oct.data(), pub_len) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_PRIV_KEY, priv.get()) != 1 ||
      OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT,
                                      OSSL_PKEY_EC_POINT_CONVERSION_FORMAT_UNCOMPRESSED, 0) != 1)
    return SslFailure("OSSL_PARAM_BLD");
  return FromData("EC", EVP_PKEY_KEYPAIR, bld);
}

// ---- attributes ----------------------------------------------------------------------------

namespace {
Result<Bytes> PublicBn(EVP_PKEY* pkey, const char* key_type, const char* param) {
  if (pkey == nullptr || !EVP_PKEY_is_a(pkey, key_type))
    return Err(CKR_KEY_TYPE_INCONSISTENT, "not an {} key", key_type);
  BIGNUM* raw = nullptr;
  if (EVP_PKEY_get_bn_param(pkey, param, &raw) != 1) return SslFailure("EVP_PKEY_get_bn_param");
  BignumPtr bn(raw);
  Bytes out(BN_num_bytes(bn.get()));
  BN_bn2bin(bn.get(), out.data());
  return out;
}
}  // namespace

Result<Bytes> RsaModulus(EVP_PKEY* pkey) { return PublicBn(pkey, "RSA", OSSL_PKEY_PARAM_RSA_N); }

Result<Bytes> RsaPublicExponent(EVP_PKEY* pkey) { return PublicBn(pkey, "RSA", OSSL_PKEY_PARAM_RSA_E); }

CK_ULONG RsaModulusBits(EVP_PKEY* pkey) {
  if (pkey == nullptr || !EVP_PKEY_is_a(pkey, "RSA")) return 0;
  int bits = EVP_PKEY_get_bits(pkey);
  return bits > 0 ? static_cast<CK_ULONG>(bits) : 0;
}

Result<Bytes> EcParams(EVP_PKEY* pkey) {
  VAULTP11_ASSIGN_OR_RETURN(const Curve* curve, CurveOfKey(pkey));
  return Bytes(curve->oid_der.begin(), curve->oid_der.end());
}

Result<Bytes> EcPoint(EVP_PKEY* pkey) {
  VAULTP11_ASSIGN_OR_RETURN(const Curve* curve, CurveOfKey(pkey));
  BIGNUM* rx = nullptr;
  BIGNUM* ry = nullptr;
  int ok = EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_EC_PUB_X, &rx) == 1 &&
           EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_EC_PUB_Y, &ry) == 1;
  BignumPtr x(rx), y(ry);
  if (!ok) return SslFailure("EC public point export");
  const size_t f = curve->field_bytes;
  std::array<uint8_t, 1 + 2 * 66> point{};
  point[0] = 0x04;
  if (BN_bn2binpad(x.get(), point.data() + 1, static_cast<int>(f)) < 0 ||
      BN_bn2binpad(y.get(), point.data() + 1 + f, static_cast<int>(f)) < 0)
    return SslFailure("BN_bn2binpad");
  return DerOctetString(std::span<const uint8_t>(point.data(), 1 + 2 * f));
}

Result<Bytes> PublicKeyInfo(EVP_PKEY* pkey) {
  if (pkey == nullptr) return Err(CKR_ARGUMENTS_BAD, "no key");
  unsigned char* der = nullptr;
  int len = i2d_PUBKEY(pkey, &der);
  if (len <= 0 || der == nullptr) return SslFailure("SubjectPublicKeyInfo encoding");
  Bytes out(der, der + len);
  OPENSSL_free(der);
  return out;
}

Result<PkeyRef> PublicFromPrivate(EVP_PKEY* pkey) {
  if (pkey == nullptr) return Err(CKR_ARGUMENTS_BAD, "no key");
  const char* type = EVP_PKEY_is_a(pkey, "RSA") ? "RSA" : EVP_PKEY_is_a(pkey, "EC") ? "EC" : nullptr;
  if (type == nullptr) return Err(CKR_KEY_TYPE_INCONSISTENT, "not an RSA or EC key");
  VAULTP11_RETURN_IF_ERROR(CheckLibCtx());
  OSSL_PARAM* raw = nullptr;
  if (EVP_PKEY_todata(pkey, EVP_PKEY_PUBLIC_KEY, &raw) != 1) return SslFailure("EVP_PKEY_todata");
  OsslParamPtr params(raw);
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(LibCtx(), type, nullptr));
  EVP_PKEY* out = nullptr;
  if (!ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &out, EVP_PKEY_PUBLIC_KEY, params.get()) != 1)
    return SslFailure("public key extraction");
  EvpPkeyPtr pub(out);
  PreferUncompressed(pub.get());
  return Share(std::move(pub));
}

Result<SecureBytes> RsaPrivateComponent(EVP_PKEY* pkey, CK_ATTRIBUTE_TYPE type) {
  if (pkey == nullptr || !EVP_PKEY_is_a(pkey, "RSA")) return Err(CKR_KEY_TYPE_INCONSISTENT, "not an RSA key");
  const char* param = nullptr;
  switch (type) {
    case CKA_PRIVATE_EXPONENT: param = OSSL_PKEY_PARAM_RSA_D; break;
    case CKA_PRIME_1: param = OSSL_PKEY_PARAM_RSA_FACTOR1; break;
    case CKA_PRIME_2: param = OSSL_PKEY_PARAM_RSA_FACTOR2; break;
    case CKA_EXPONENT_1: param = OSSL_PKEY_PARAM_RSA_EXPONENT1; break;
    case CKA_EXPONENT_2: param = OSSL_PKEY_PARAM_RSA_EXPONENT2; break;
    case CKA_COEFFICIENT: param = OSSL_PKEY_PARAM_RSA_COEFFICIENT1; break;
    default: return Err(CKR_ATTRIBUTE_TYPE_INVALID, "attribute 0x{:x} is not an RSA private component", type);
  }
  BIGNUM* raw = nullptr;
  if (EVP_PKEY_get_bn_param(pkey, param, &raw) != 1 || raw == nullptr) {
    SslErrors();
    return Err(CKR_KEY_TYPE_INCONSISTENT, "not an RSA private key (no component 0x{:x})", type);
  }
  BignumClearPtr bn(raw);
  SecureBytes out(BN_num_bytes(bn.get()));
  BN_bn2bin(bn.get(), out.data());
  return out;
}

Result<SecureBytes> EcPrivateScalar(EVP_PKEY* pkey) {
  VAULTP11_ASSIGN_OR_RETURN(const Curve* curve, CurveOfKey(pkey));
  BIGNUM* raw = nullptr;
  if (EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_PRIV_KEY, &raw) != 1 || raw == nullptr) {
    SslErrors();
    return Err(CKR_KEY_TYPE_INCONSISTENT, "not an EC private key");
  }
  BignumClearPtr bn(raw);
  SecureBytes out(curve->field_bytes);
  if (BN_bn2binpad(bn.get(), out.data(), static_cast<int>(out.size())) < 0) return SslFailure("BN_bn2binpad");
  return out;
}

size_t EcFieldBytes(EVP_PKEY* pkey) {
  if (pkey == nullptr || !EVP_PKEY_is_a(pkey, "EC")) return 0;
  int bits = EVP_PKEY_get_bits(pkey);
  return bits > 0 ? (static_cast<size_t>(bits) + 7) / 8 : 0;
}

Result<CertFields> ParseCertificate(std::span<const uint8_t> der) {
  if (der.size() > static_cast<size_t>(std::numeric_limits<long>::max()))
    return Err(CKR_ATTRIBUTE_VALUE_INVALID, "certificate too large");
  const unsigned char* p = der.data();
  std::unique_ptr<X509, decltype(&X509_free)> cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())), X509_free);
  if (!cert || p != der.data() + der.size())
    return Err(CKR_ATTRIBUTE_VALUE_INVALID, "CKA_VALUE is not one DER X.509 certificate");
  auto encode = [](auto* thing, auto i2d) -> Result<Bytes> {
    int n = i2d(thing, nullptr);
    if (n <= 0) return Err(CKR_ATTRIBUTE_VALUE_INVALID, "certificate field cannot be encoded");
    Bytes out(static_cast<size_t>(n));
    unsigned char* q = out.data();
    if (i2d(thing, &q) != n) return Err(CKR_ATTRIBUTE_VALUE_INVALID, "certificate field cannot be encoded");
    return out;
  };
  CertFields f;
  VAULTP11_ASSIGN_OR_RETURN(f.subject, encode(X509_get_subject_name(cert.get()), i2d_X509_NAME));
  VAULTP11_ASSIGN_OR_RETURN(f.issuer, encode(X509_get_issuer_name(cert.get()), i2d_X509_NAME));
  VAULTP11_ASSIGN_OR_RETURN(f.serial, encode(X509_get0_serialNumber(cert.get()), i2d_ASN1_INTEGER));
  VAULTP11_ASSIGN_OR_RETURN(f.public_key_info, encode(X509_get_X509_PUBKEY(cert.get()), i2d_X509_PUBKEY));
  unsigned char md[SHA_DIGEST_LENGTH];
  SHA1(der.data(), der.size(), md);
  f.check_value.assign(md, md + 3);
  return f;
}

}  // namespace vaultp11::ossl

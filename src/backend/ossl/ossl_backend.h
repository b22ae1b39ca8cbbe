// The software backend: keys and operations run in-process on OpenSSL 3, in a private
// OSSL_LIB_CTX that loads only the default provider (a host's openssl.cnf may route back into
// this very module, so the process default context is never used).
#pragma once

#include <p11-kit/pkcs11.h>
#include <openssl/evp.h>

#include <array>
#include <atomic>
#include <memory>
#include <span>
#include <string>

#include "util/ossl_ptr.h"
#include "util/result.h"
#include "util/secure_bytes.h"

namespace vaultp11::ossl {

// The module's library context (created on first use, thread-safe, never freed before exit).
OSSL_LIB_CTX* LibCtx();

using PkeyRef = std::shared_ptr<EVP_PKEY>;  // shared by all sessions using the key
PkeyRef Share(EvpPkeyPtr p);

// The signature contexts of one key, each prepared once per mechanism setting (the
// EVP_PKEY_CTX after EVP_PKEY_sign_init or verify_init, with its padding, digest and salt set)
// and duplicated for each operation: the hot path does no algorithm fetch and no setup.
// Thread-safe without a lock: prepared contexts are only added (at most kMax) and only read
// (duplicated) until the key goes.
class PreparedContexts {
 public:
  // What a prepared context was set up for: the mechanism, sign or verify, the PSS parameters.
  struct Setting {
    CK_MECHANISM_TYPE mechanism = 0;
    bool sign = false;
    CK_MECHANISM_TYPE pss_hash = 0;
    CK_RSA_PKCS_MGF_TYPE pss_mgf = 0;
    CK_ULONG pss_salt = 0;
    bool operator==(const Setting&) const = default;
  };
  PreparedContexts() = default;
  ~PreparedContexts();
  PreparedContexts(const PreparedContexts&) = delete;
  PreparedContexts& operator=(const PreparedContexts&) = delete;

  // A new duplicate of the context prepared for `setting`; null when there is none (or the
  // duplicate failed).
  EvpPkeyCtxPtr Dup(const Setting& setting) const;
  // Keeps a duplicate of `ctx`, prepared for `setting` (unless one is kept already or kMax are).
  void Keep(const Setting& setting, EVP_PKEY_CTX* ctx);

 private:
  struct Entry {
    Setting setting;
    EVP_PKEY_CTX* ctx;
  };
  static constexpr size_t kMax = 8;
  std::array<std::atomic<Entry*>, kMax> entries_{};
};

// Key material handed to an operation: an RSA/EC EVP_PKEY (public or private), or the raw
// bytes of an AES key. Exactly one of pkey / secret is set. `prepared`, when set, holds the
// key's prepared signature contexts (the same for every KeyRef of one stored key).
struct KeyRef {
  CK_KEY_TYPE key_type = CKK_RSA;
  CK_OBJECT_CLASS object_class = CKO_PRIVATE_KEY;
  PkeyRef pkey;
  std::shared_ptr<const SecureBytes> secret;
  std::shared_ptr<PreparedContexts> prepared;
};

// ---- key generation and conversion -------------------------------------------------------

// bits in {2048, 3072, 4096} (else CKR_KEY_SIZE_RANGE); exponent big-endian, empty = 65537;
// an exponent other than 65537 is CKR_ATTRIBUTE_VALUE_INVALID.
Result<PkeyRef> GenerateRsa(CK_ULONG bits, std::span<const uint8_t> public_exponent);
// ec_params: DER of the curve OID (CKA_EC_PARAMS) for P-256, P-384, P-521 or secp256k1;
// anything else is CKR_CURVE_NOT_SUPPORTED (malformed DER: CKR_ATTRIBUTE_VALUE_INVALID).
Result<PkeyRef> GenerateEc(std::span<const uint8_t> ec_params);
// Random bytes from the module's DRBG.
Status RandomBytes(std::span<uint8_t> out);

// PKCS#8 DER of a private key, and back (the stored form of software private keys).
Result<SecureBytes> PrivateKeyToDer(EVP_PKEY* pkey);
Result<PkeyRef> PrivateKeyFromDer(std::span<const uint8_t> der);

// Import: RSA public (n, e) / private (n, e, d and optionally p, q, dp, dq, qinv: all or
// none of the CRT parts); EC public (params, CKA_EC_POINT as DER OCTET STRING or raw point)
// / private (params, CKA_VALUE = private scalar big-endian). Bad values:
// CKR_ATTRIBUTE_VALUE_INVALID; unsupported curve CKR_CURVE_NOT_SUPPORTED.
struct RsaComponents {
  Bytes n, e;
  SecureBytes d, p, q, dp, dq, qinv;
};
Result<PkeyRef> RsaPublicFromComponents(std::span<const uint8_t> n, std::span<const uint8_t> e);
Result<PkeyRef> RsaPrivateFromComponents(const RsaComponents& c);
Result<PkeyRef> EcPublicFromPoint(std::span<const uint8_t> ec_params, std::span<const uint8_t> ec_point);
Result<PkeyRef> EcPrivateFromScalar(std::span<const uint8_t> ec_params, std::span<const uint8_t> d);

// Public attribute values of a key (private or public EVP_PKEY).
Result<Bytes> RsaModulus(EVP_PKEY* pkey);          // CKA_MODULUS, big-endian, no leading zero
Result<Bytes> RsaPublicExponent(EVP_PKEY* pkey);   // CKA_PUBLIC_EXPONENT
CK_ULONG RsaModulusBits(EVP_PKEY* pkey);           // CKA_MODULUS_BITS
Result<Bytes> EcParams(EVP_PKEY* pkey);            // CKA_EC_PARAMS: DER OID of the named curve
Result<Bytes> EcPoint(EVP_PKEY* pkey);             // CKA_EC_POINT: DER OCTET STRING(04||X||Y)
Result<Bytes> PublicKeyInfo(EVP_PKEY* pkey);       // CKA_PUBLIC_KEY_INFO: SubjectPublicKeyInfo DER
Result<PkeyRef> PublicFromPrivate(EVP_PKEY* pkey); // the public half as its own EVP_PKEY
// Private components of an RSA key (for extractable, non-sensitive keys only; the caller checks).
Result<SecureBytes> RsaPrivateComponent(EVP_PKEY* pkey, CK_ATTRIBUTE_TYPE type);  // CKA_PRIVATE_EXPONENT, CKA_PRIME_1, ...
Result<SecureBytes> EcPrivateScalar(EVP_PKEY* pkey);                              // CKA_VALUE of an EC private key
// Field size in bytes of an EC key's curve (32 for P-256, 66 for P-521).
size_t EcFieldBytes(EVP_PKEY* pkey);

// ---- operations --------------------------------------------------------------------------
// Factories check that the mechanism fits the key (type, class; else CKR_KEY_TYPE_INCONSISTENT)
// and parse the mechanism parameter (NULL/short/wrong parameter: CKR_MECHANISM_PARAM_INVALID;
// unknown mechanism: CKR_MECHANISM_INVALID). They never check CKA_SIGN etc. (the model does).
// Ops are used by one session at a time; a failed call leaves the op unusable.

// Sign: CKM_RSA_PKCS (input: DigestInfo, at most k-11 bytes), CKM_SHA{1,224,256,384,512}_RSA_PKCS,
// CKM_RSA_PKCS_PSS (input: the hash; CK_RSA_PKCS_PSS_PARAMS), CKM_SHA{256,384,512}_RSA_PKCS_PSS
// (hashAlg must match), CKM_ECDSA (input: the hash, any length), CKM_ECDSA_SHA{256,384,512}.
// ECDSA signatures are r||s, each padded to the field size (PKCS#11 form, not DER).
class SignOp {
 public:
  virtual ~SignOp() = default;
  virtual size_t SignatureLength() const = 0;
  // Multi-part: only the hashing mechanisms (CKM_SHA*_RSA_PKCS*, CKM_ECDSA_SHA*) support
  // Update; the raw ones return CKR_FUNCTION_NOT_SUPPORTED... see SupportsMultiPart().
  virtual bool SupportsMultiPart() const = 0;
  virtual Status Update(std::span<const uint8_t> data) = 0;
  virtual Result<Bytes> Final() = 0;
  // Single part: wrong input length for the raw mechanisms is CKR_DATA_LEN_RANGE.
  virtual Result<Bytes> Sign(std::span<const uint8_t> data) = 0;
};
Result<std::unique_ptr<SignOp>> NewSignOp(const KeyRef& key, const CK_MECHANISM& mech);

// Verify: the same mechanisms with a public (or private) key. A wrong signature is
// CKR_SIGNATURE_INVALID; a signature of the wrong length CKR_SIGNATURE_LEN_RANGE.
class VerifyOp {
 public:
  virtual ~VerifyOp() = default;
  virtual bool SupportsMultiPart() const = 0;
  virtual Status Update(std::span<const uint8_t> data) = 0;
  virtual Status Final(std::span<const uint8_t> signature) = 0;
  virtual Status Verify(std::span<const uint8_t> data, std::span<const uint8_t> signature) = 0;
};
Result<std::unique_ptr<VerifyOp>> NewVerifyOp(const KeyRef& key, const CK_MECHANISM& mech);

// Encrypt / decrypt: CKM_RSA_PKCS and CKM_RSA_PKCS_OAEP (CK_RSA_PKCS_OAEP_PARAMS: SHA-1/224/256/
// 384/512 with matching MGF1, source CKZ_DATA_SPECIFIED with optional label) with RSA keys
// (encrypt with the public key, decrypt with the private one; single-part only); CKM_AES_ECB and
// CKM_AES_CBC (input a multiple of 16: else CKR_DATA_LEN_RANGE / CKR_ENCRYPTED_DATA_LEN_RANGE),
// CKM_AES_CBC_PAD (PKCS#7; bad padding on decrypt: CKR_ENCRYPTED_DATA_INVALID), CKM_AES_CTR
// (CK_AES_CTR_PARAMS, counter bits 1..128), CKM_AES_GCM (CK_GCM_PARAMS: IV 1..128 bytes (OpenSSL 3 limit), tag
// 96..128 bits in multiples of 8, AAD; decrypt buffers until Final and fails with
// CKR_ENCRYPTED_DATA_INVALID on a bad tag). IV length for CBC/CBC_PAD is exactly 16.
class CipherOp {
 public:
  virtual ~CipherOp() = default;
  virtual bool SupportsMultiPart() const = 0;
  // Upper bound of the output of Update(in_len) / Final() / OneShot(in_len), for size queries.
  virtual size_t MaxOutput(size_t in_len, bool final) const = 0;
  virtual Result<SecureBytes> Update(std::span<const uint8_t> in) = 0;
  virtual Result<SecureBytes> Final() = 0;
  virtual Result<SecureBytes> OneShot(std::span<const uint8_t> in) = 0;
};
Result<std::unique_ptr<CipherOp>> NewEncryptOp(const KeyRef& key, const CK_MECHANISM& mech);
Result<std::unique_ptr<CipherOp>> NewDecryptOp(const KeyRef& key, const CK_MECHANISM& mech);

// Wrap / unwrap: CKM_RSA_PKCS_OAEP and CKM_RSA_PKCS with an RSA key (the wrapped key must be a
// secret key), CKM_AES_KEY_WRAP (RFC 3394; key length multiple of 8, >= 16) and
// CKM_AES_KEY_WRAP_PAD (RFC 5649) with an AES key. `key_bytes` is the raw secret key value or
// the PKCS#8 DER of a private key. Unwrap returns the same form; an integrity failure is
// CKR_WRAPPED_KEY_INVALID, a wrong length CKR_WRAPPED_KEY_LEN_RANGE.
Result<Bytes> Wrap(const KeyRef& wrapping_key, const CK_MECHANISM& mech, std::span<const uint8_t> key_bytes);
Result<SecureBytes> Unwrap(const KeyRef& unwrapping_key, const CK_MECHANISM& mech,
                           std::span<const uint8_t> wrapped);

// Digest: CKM_SHA_1, CKM_SHA224, CKM_SHA256, CKM_SHA384, CKM_SHA512 (no parameter).
class DigestOp {
 public:
  virtual ~DigestOp() = default;
  virtual size_t Length() const = 0;
  virtual Status Update(std::span<const uint8_t> data) = 0;
  virtual Result<Bytes> Final() = 0;
};
Result<std::unique_ptr<DigestOp>> NewDigestOp(const CK_MECHANISM& mech);

// Helpers also used by the store: AES-256-GCM with a random 12-byte IV.
// Seal returns iv(12) || ciphertext || tag(16); Open fails with CKR_DEVICE_ERROR on a bad tag.
Result<Bytes> SealAesGcm(std::span<const uint8_t> key32, std::span<const uint8_t> plaintext,
                         std::span<const uint8_t> aad);
Result<SecureBytes> OpenAesGcm(std::span<const uint8_t> key32, std::span<const uint8_t> sealed,
                               std::span<const uint8_t> aad);

// The fields of an X.509 certificate a token keeps beside its DER (spec 4.6.3): subject,
// issuer and serial number (DER of the Name and of the INTEGER), CKA_CHECK_VALUE (the first 3
// bytes of SHA-1 of the DER) and the subjectPublicKeyInfo.
struct CertFields {
  Bytes subject, issuer, serial, check_value, public_key_info;
};
// Parses one DER certificate (nothing may follow it); else CKR_ATTRIBUTE_VALUE_INVALID.
Result<CertFields> ParseCertificate(std::span<const uint8_t> der);

}  // namespace vaultp11::ossl

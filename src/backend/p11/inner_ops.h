// Operations on HSM-backed keys that run in the inner PKCS#11 module: the same SignOp / CipherOp
// shapes as the OpenSSL backend, so the core drives both alike. Each op holds one leased inner
// session from C_*Init to the end of the operation: no session open, attribute lookup or lock
// on the per-call path beyond that lease.
#pragma once

#include <p11-kit/pkcs11.h>

#include <memory>
#include <span>

#include "backend/ossl/ossl_backend.h"
#include "backend/p11/inner_token.h"
#include "util/result.h"
#include "util/secure_bytes.h"

namespace vaultp11::p11 {

// OwnedMechanism is a CK_MECHANISM whose parameter is a private copy, including the buffers
// it points to for the parameter types that have any (CK_RSA_PKCS_OAEP_PARAMS source data,
// CK_GCM_PARAMS IV and AAD), so it stays valid after the caller's buffers are gone.
class OwnedMechanism {
 public:
  static OwnedMechanism Copy(const CK_MECHANISM& m);
  OwnedMechanism() = default;
  OwnedMechanism(OwnedMechanism&&) = default;  // vectors keep their heap buffers on move
  OwnedMechanism& operator=(OwnedMechanism&&) = default;
  CK_MECHANISM* get() { return &mech_; }
  const CK_MECHANISM& mech() const { return mech_; }

 private:
  CK_MECHANISM mech_{};
  SecureBytes param_;          // the parameter structure (heap: suitably aligned)
  SecureBytes data1_, data2_;  // buffers the structure points to
};

// Sign in the inner token with `inner_key` (a private key, or a secret key for MACs).
// Leases a session and calls C_SignInit at once (so key and mechanism errors surface here,
// inner CK_RV unchanged); the session goes back to the pool when the signature is produced or
// an inner call fails, or is closed if the op is dropped half-way (an inner operation would
// still be active on it).
// `signature_length` is what SignatureLength() reports for the size-query idiom: the modulus
// length for RSA, twice the field size for ECDSA (r||s), the MAC length for HMAC/CMAC. A longer
// inner signature is still returned (the inner CKR_BUFFER_TOO_SMALL is handled).
// Multi-part: every mechanism but the raw ones (CKM_RSA_PKCS, CKM_RSA_X_509, CKM_RSA_PKCS_PSS,
// CKM_ECDSA, CKM_DSA, CKM_EDDSA). CKM_SHA*_RSA_PKCS, CKM_SHA*_RSA_PKCS_PSS and CKM_ECDSA_SHA* are
// hashed in-process and signed with the raw mechanism when the token lacks the hashing one
// (SoftHSMv2 2.6 lists CKM_ECDSA only) or InnerToken::Options::hash_in_process is set.
Result<std::unique_ptr<ossl::SignOp>> NewInnerSignOp(std::shared_ptr<InnerToken> token,
                                                     CK_OBJECT_HANDLE inner_key,
                                                     const CK_MECHANISM& mech,
                                                     size_t signature_length);

// Decrypt / encrypt in the inner token. Single-part for CKM_RSA_PKCS, CKM_RSA_PKCS_OAEP and
// CKM_RSA_X_509; multi-part too for the others (AES modes). Outputs are sized with the inner
// size query, so no length needs to be known up front. For encrypt with an RSA key,
// `rsa_modulus_bytes` bounds MaxOutput (0: unknown, then in_len + 32).
Result<std::unique_ptr<ossl::CipherOp>> NewInnerDecryptOp(std::shared_ptr<InnerToken> token,
                                                          CK_OBJECT_HANDLE inner_key,
                                                          const CK_MECHANISM& mech);
Result<std::unique_ptr<ossl::CipherOp>> NewInnerEncryptOp(std::shared_ptr<InnerToken> token,
                                                          CK_OBJECT_HANDLE inner_key,
                                                          const CK_MECHANISM& mech,
                                                          size_t rsa_modulus_bytes = 0);

// Unwraps `wrapped` under `unwrapping_key` into a new inner object made from `tmpl`; the key
// material never leaves the HSM. Returns the inner handle.
Result<CK_OBJECT_HANDLE> UnwrapKey(const InnerToken& token, const CK_MECHANISM& mech,
                                   CK_OBJECT_HANDLE unwrapping_key,
                                   std::span<const uint8_t> wrapped,
                                   std::span<const CK_ATTRIBUTE> tmpl);

// True for mechanisms that exist only as single-part operations.
bool IsSinglePartMechanism(CK_MECHANISM_TYPE type);

}  // namespace vaultp11::p11

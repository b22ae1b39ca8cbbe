#include "backend/p11/inner_ops.h"

#include <algorithm>
#include <array>
#include <cstring>

namespace vaultp11::p11 {
namespace {

// DER DigestInfo prefixes (RFC 8017 section 9.2 note 1) for hashing RSA PKCS#1 v1.5 emulation.
constexpr uint8_t kSha1Prefix[] = {0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e,
                                   0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14};
constexpr uint8_t kSha224Prefix[] = {0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                     0x65, 0x03, 0x04, 0x02, 0x04, 0x05, 0x00, 0x04, 0x1c};
constexpr uint8_t kSha256Prefix[] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                     0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};
constexpr uint8_t kSha384Prefix[] = {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                     0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30};
constexpr uint8_t kSha512Prefix[] = {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                     0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40};

enum class RawKind { kRsaPkcs, kRsaPss, kEcdsa };

// A hashing signature mechanism and how to emulate it: digest here, sign the digest with `raw`.
struct HashedSignMech {
  CK_MECHANISM_TYPE hashed;
  CK_MECHANISM_TYPE digest;
  CK_MECHANISM_TYPE raw;
  RawKind kind;
  std::span<const uint8_t> prefix;  // DigestInfo prefix (RSA PKCS#1 v1.5 only)
};

constexpr std::span<const uint8_t> kNone{};
const HashedSignMech kHashed[] = {
    {CKM_SHA1_RSA_PKCS, CKM_SHA_1, CKM_RSA_PKCS, RawKind::kRsaPkcs, kSha1Prefix},
    {CKM_SHA224_RSA_PKCS, CKM_SHA224, CKM_RSA_PKCS, RawKind::kRsaPkcs, kSha224Prefix},
    {CKM_SHA256_RSA_PKCS, CKM_SHA256, CKM_RSA_PKCS, RawKind::kRsaPkcs, kSha256Prefix},
    {CKM_SHA384_RSA_PKCS, CKM_SHA384, CKM_RSA_PKCS, RawKind::kRsaPkcs, kSha384Prefix},
    {CKM_SHA512_RSA_PKCS, CKM_SHA512, CKM_RSA_PKCS, RawKind::kRsaPkcs, kSha512Prefix},
    {CKM_SHA1_RSA_PKCS_PSS, CKM_SHA_1, CKM_RSA_PKCS_PSS, RawKind::kRsaPss, kNone},
    {CKM_SHA224_RSA_PKCS_PSS, CKM_SHA224, CKM_RSA_PKCS_PSS, RawKind::kRsaPss, kNone},
    {CKM_SHA256_RSA_PKCS_PSS, CKM_SHA256, CKM_RSA_PKCS_PSS, RawKind::kRsaPss, kNone},
    {CKM_SHA384_RSA_PKCS_PSS, CKM_SHA384, CKM_RSA_PKCS_PSS, RawKind::kRsaPss, kNone},
    {CKM_SHA512_RSA_PKCS_PSS, CKM_SHA512, CKM_RSA_PKCS_PSS, RawKind::kRsaPss, kNone},
    {CKM_ECDSA_SHA1, CKM_SHA_1, CKM_ECDSA, RawKind::kEcdsa, kNone},
    {CKM_ECDSA_SHA224, CKM_SHA224, CKM_ECDSA, RawKind::kEcdsa, kNone},
    {CKM_ECDSA_SHA256, CKM_SHA256, CKM_ECDSA, RawKind::kEcdsa, kNone},
    {CKM_ECDSA_SHA384, CKM_SHA384, CKM_ECDSA, RawKind::kEcdsa, kNone},
    {CKM_ECDSA_SHA512, CKM_SHA512, CKM_ECDSA, RawKind::kEcdsa, kNone},
};

const HashedSignMech* FindHashed(CK_MECHANISM_TYPE t) {
  for (const HashedSignMech& h : kHashed)
    if (h.hashed == t) return &h;
  return nullptr;
}

// Input buffers go to the inner API through non-const pointers; modules only read them. Empty
// input still gets a valid pointer: some modules (SoftHSMv2) refuse NULL data of length 0.
CK_BYTE_PTR In(std::span<const uint8_t> s) {
  static CK_BYTE empty[1] = {0};
  return s.empty() ? empty : const_cast<CK_BYTE_PTR>(s.data());
}

// Runs the PKCS#11 output idiom: `call(buf, &len)` with a buffer of `guess` bytes (a size
// query first when guess is 0), once more after CKR_BUFFER_TOO_SMALL (which does not end the
// operation). Returns the rv of the last call; `out` holds the output when it is CKR_OK.
template <typename Buf, typename Call>
CK_RV Collect(size_t guess, Buf* out, Call&& call) {
  CK_ULONG n = static_cast<CK_ULONG>(guess);
  if (n == 0) {
    CK_RV rv = call(nullptr, &n);
    if (rv != CKR_OK) return rv;
  }
  for (int attempt = 0; attempt < 2; ++attempt) {
    // Never a NULL buffer here, even for an expected empty output: NULL is a size query, which
    // would not consume the input.
    out->resize(std::max<CK_ULONG>(n, 1));
    n = static_cast<CK_ULONG>(out->size());
    CK_RV rv = call(out->data(), &n);
    if (rv == CKR_BUFFER_TOO_SMALL) continue;  // n is the size it wants now
    if (rv == CKR_OK) out->resize(n);
    return rv;
  }
  // Not the caller's CKR_BUFFER_TOO_SMALL (which would keep the outer operation alive).
  return CKR_GENERAL_ERROR;
}

// An inner operation in progress on one leased session. When it ends (done, or an inner call
// failed) the lease goes back at once; if it never ended, the session is closed on destruction
// so no half-done operation is left on a pooled session.
class LeasedOp {
 protected:
  LeasedOp(std::shared_ptr<InnerToken> token, SessionLease lease, OwnedMechanism mech)
      : token_(std::move(token)), lease_(std::move(lease)), mech_(std::move(mech)) {}
  ~LeasedOp() {
    if (lease_) lease_.MarkBroken();
  }
  const InnerModule& module() const { return *token_->module(); }
  CK_SESSION_HANDLE session() const { return lease_.handle(); }
  bool active() const { return static_cast<bool>(lease_); }
  Status NotActive() const {
    return Err(CKR_OPERATION_NOT_INITIALIZED, "the inner operation has ended");
  }

  // Ends the operation after a terminating call. Any failure closes the session instead of
  // pooling it: modules differ on whether an error really ends the operation.
  Status End(CK_RV rv, const char* what) {
    if (rv != CKR_OK) {
      lease_.Check(rv);
      lease_.MarkBroken();
    }
    lease_.Release();
    if (rv != CKR_OK)
      return Err(rv, "{} on {} failed ({})", what, token_->description(), RvName(rv));
    return OkStatus();
  }
  // Ends the operation without finishing the inner one: the session is closed, not pooled.
  void Abandon() {
    lease_.MarkBroken();
    lease_.Release();
  }
  // For a call that keeps the operation going when it succeeds.
  Status Continue(CK_RV rv, const char* what) {
    if (rv == CKR_OK) return OkStatus();
    return End(rv, what);
  }

  std::shared_ptr<InnerToken> token_;
  SessionLease lease_;
  OwnedMechanism mech_;
};

class InnerSignOp final : public ossl::SignOp, private LeasedOp {
 public:
  InnerSignOp(std::shared_ptr<InnerToken> token, SessionLease lease, OwnedMechanism mech,
              size_t sig_len, bool multi_part, std::unique_ptr<ossl::DigestOp> digest,
              std::span<const uint8_t> prefix)
      : LeasedOp(std::move(token), std::move(lease), std::move(mech)),
        sig_len_(sig_len),
        multi_part_(multi_part),
        digest_(std::move(digest)),
        prefix_(prefix) {}

  size_t SignatureLength() const override { return sig_len_; }
  bool SupportsMultiPart() const override { return multi_part_; }

  Status Update(std::span<const uint8_t> data) override {
    if (!active()) return NotActive();
    if (!multi_part_) return End(CKR_FUNCTION_NOT_SUPPORTED, "C_SignUpdate");
    if (digest_) {
      Status st = digest_->Update(data);
      if (!st.ok()) Abandon();
      return st;
    }
    CK_RV rv = VAULTP11_P11_CALL(module(), C_SignUpdate, session(), In(data),
                                 static_cast<CK_ULONG>(data.size()));
    return Continue(rv, "C_SignUpdate");
  }

  Result<Bytes> Final() override {
    if (!active()) return NotActive();
    if (!multi_part_) return End(CKR_FUNCTION_NOT_SUPPORTED, "C_SignFinal").error();
    if (digest_) return SignDigest();
    Bytes sig;
    CK_RV rv = Collect(sig_len_, &sig, [&](CK_BYTE_PTR out, CK_ULONG_PTR n) {
      return VAULTP11_P11_CALL(module(), C_SignFinal, session(), out, n);
    });
    VAULTP11_RETURN_IF_ERROR(End(rv, "C_SignFinal"));
    return sig;
  }

  Result<Bytes> Sign(std::span<const uint8_t> data) override {
    if (!active()) return NotActive();
    if (digest_) {
      Status st = digest_->Update(data);
      if (!st.ok()) {
        Abandon();
        return st.error();
      }
      return SignDigest();
    }
    Bytes sig;
    CK_RV rv = Collect(sig_len_, &sig, [&](CK_BYTE_PTR out, CK_ULONG_PTR n) {
      return VAULTP11_P11_CALL(module(), C_Sign, session(), In(data),
                               static_cast<CK_ULONG>(data.size()), out, n);
    });
    VAULTP11_RETURN_IF_ERROR(End(rv, "C_Sign"));
    return sig;
  }

 private:
  // Emulated hashing mechanism: the raw inner mechanism signs prefix || digest.
  Result<Bytes> SignDigest() {
    auto hash = digest_->Final();
    if (!hash.ok()) {
      Abandon();
      return hash.error();
    }
    Bytes input;  // prefix || digest; the digest alone (ECDSA, PSS) needs no copy
    if (!prefix_.empty()) {
      input.reserve(prefix_.size() + hash->size());
      input.assign(prefix_.begin(), prefix_.end());
      input.insert(input.end(), hash->begin(), hash->end());
    } else {
      input = std::move(hash).value();
    }
    Bytes sig;
    CK_RV rv = Collect(sig_len_, &sig, [&](CK_BYTE_PTR out, CK_ULONG_PTR n) {
      return VAULTP11_P11_CALL(module(), C_Sign, session(), input.data(),
                               static_cast<CK_ULONG>(input.size()), out, n);
    });
    VAULTP11_RETURN_IF_ERROR(End(rv, "C_Sign"));
    return sig;
  }

  const size_t sig_len_;
  const bool multi_part_;
  std::unique_ptr<ossl::DigestOp> digest_;  // set when hashing in-process
  const std::span<const uint8_t> prefix_;   // static storage
};

class InnerCipherOp final : public ossl::CipherOp, private LeasedOp {
 public:
  InnerCipherOp(std::shared_ptr<InnerToken> token, SessionLease lease, OwnedMechanism mech,
                bool encrypt, bool multi_part, size_t rsa_modulus_bytes)
      : LeasedOp(std::move(token), std::move(lease), std::move(mech)),
        encrypt_(encrypt),
        multi_part_(multi_part),
        modulus_(rsa_modulus_bytes) {}

  bool SupportsMultiPart() const override { return multi_part_; }

  size_t MaxOutput(size_t in_len, bool final) const override {
    if (!multi_part_) {
      if (!encrypt_) return in_len;  // RSA plaintext is never longer than the ciphertext
      return modulus_ != 0 ? modulus_ : in_len + 32;
    }
    // Block modes hold back at most a block; GCM holds everything until Final (plus a tag).
    size_t held = in_total_ > out_total_ ? in_total_ - out_total_ : 0;
    return held + (final ? 0 : in_len) + 32;
  }

  Result<SecureBytes> Update(std::span<const uint8_t> in) override {
    if (!active()) return NotActive().error();
    if (!multi_part_) return End(CKR_FUNCTION_NOT_SUPPORTED, Name(kUpdate)).error();
    SecureBytes out;
    CK_RV rv = Collect(0, &out, [&](CK_BYTE_PTR o, CK_ULONG_PTR n) {
      return encrypt_ ? VAULTP11_P11_CALL(module(), C_EncryptUpdate, session(), In(in),
                                          static_cast<CK_ULONG>(in.size()), o, n)
                      : VAULTP11_P11_CALL(module(), C_DecryptUpdate, session(), In(in),
                                          static_cast<CK_ULONG>(in.size()), o, n);
    });
    VAULTP11_RETURN_IF_ERROR(Continue(rv, Name(kUpdate)));
    in_total_ += in.size();
    out_total_ += out.size();
    return out;
  }

  Result<SecureBytes> Final() override {
    if (!active()) return NotActive().error();
    if (!multi_part_) return End(CKR_FUNCTION_NOT_SUPPORTED, Name(kFinal)).error();
    SecureBytes out;
    CK_RV rv = Collect(0, &out, [&](CK_BYTE_PTR o, CK_ULONG_PTR n) {
      return encrypt_ ? VAULTP11_P11_CALL(module(), C_EncryptFinal, session(), o, n)
                      : VAULTP11_P11_CALL(module(), C_DecryptFinal, session(), o, n);
    });
    VAULTP11_RETURN_IF_ERROR(End(rv, Name(kFinal)));
    return out;
  }

  Result<SecureBytes> OneShot(std::span<const uint8_t> in) override {
    if (!active()) return NotActive().error();
    SecureBytes out;
    CK_RV rv = Collect(0, &out, [&](CK_BYTE_PTR o, CK_ULONG_PTR n) {
      return encrypt_ ? VAULTP11_P11_CALL(module(), C_Encrypt, session(), In(in),
                                          static_cast<CK_ULONG>(in.size()), o, n)
                      : VAULTP11_P11_CALL(module(), C_Decrypt, session(), In(in),
                                          static_cast<CK_ULONG>(in.size()), o, n);
    });
    VAULTP11_RETURN_IF_ERROR(End(rv, Name(kOneShot)));
    return out;
  }

 private:
  enum Step { kUpdate, kFinal, kOneShot };
  const char* Name(Step s) const {
    static const char* const kNames[2][3] = {{"C_DecryptUpdate", "C_DecryptFinal", "C_Decrypt"},
                                             {"C_EncryptUpdate", "C_EncryptFinal", "C_Encrypt"}};
    return kNames[encrypt_ ? 1 : 0][s];
  }

  const bool encrypt_;
  const bool multi_part_;
  const size_t modulus_;
  size_t in_total_ = 0, out_total_ = 0;
};

// Leases a session and runs `init` (a C_*Init) on it. A session that turns out to be gone,
// logged out or busy with a leftover operation is dropped and the init tried once more on
// another: the call surely did not start anything there.
template <typename Init>
Result<SessionLease> LeaseAndInit(const InnerToken& token, const char* what, Init&& init) {
  CK_RV rv = CKR_OK;
  for (int attempt = 0; attempt < 2; ++attempt) {
    VAULTP11_ASSIGN_OR_RETURN(SessionLease lease, token.Acquire());
    rv = lease.Check(init(lease.handle()));
    if (rv == CKR_OK) return lease;
    const bool retry = rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED ||
                       rv == CKR_OPERATION_ACTIVE || rv == CKR_USER_NOT_LOGGED_IN;
    if (!retry) break;
  }
  return Err(rv, "{} on {} failed ({})", what, token.description(), RvName(rv));
}

Result<std::unique_ptr<ossl::CipherOp>> NewCipherOp(std::shared_ptr<InnerToken> token,
                                                    CK_OBJECT_HANDLE key, const CK_MECHANISM& mech,
                                                    bool encrypt, size_t modulus) {
  if (!token) return Err(CKR_GENERAL_ERROR, "no inner token");
  OwnedMechanism m = OwnedMechanism::Copy(mech);
  const InnerModule& mod = *token->module();
  VAULTP11_ASSIGN_OR_RETURN(
      SessionLease lease,
      LeaseAndInit(*token, encrypt ? "C_EncryptInit" : "C_DecryptInit", [&](CK_SESSION_HANDLE h) {
        return encrypt ? VAULTP11_P11_CALL(mod, C_EncryptInit, h, m.get(), key)
                       : VAULTP11_P11_CALL(mod, C_DecryptInit, h, m.get(), key);
      }));
  const bool multi = !IsSinglePartMechanism(mech.mechanism);
  return std::unique_ptr<ossl::CipherOp>(
      new InnerCipherOp(std::move(token), std::move(lease), std::move(m), encrypt, multi, modulus));
}

}  // namespace

OwnedMechanism OwnedMechanism::Copy(const CK_MECHANISM& m) {
  OwnedMechanism o;
  o.mech_.mechanism = m.mechanism;
  if (m.pParameter == nullptr || m.ulParameterLen == 0) {
    o.mech_.pParameter = nullptr;
    o.mech_.ulParameterLen = m.ulParameterLen;
    return o;
  }
  const auto* p = static_cast<const uint8_t*>(m.pParameter);
  o.param_.assign(p, p + m.ulParameterLen);
  o.mech_.pParameter = o.param_.data();
  o.mech_.ulParameterLen = m.ulParameterLen;
  // Deep-copy the buffers of the parameter structures that point elsewhere. Other layouts are
  // copied flat: their nested pointers (if any) are only read by the inner C_*Init, which runs
  // before the factory returns.
  if (m.mechanism == CKM_RSA_PKCS_OAEP && m.ulParameterLen == sizeof(CK_RSA_PKCS_OAEP_PARAMS)) {
    auto* op = reinterpret_cast<CK_RSA_PKCS_OAEP_PARAMS*>(o.param_.data());
    if (op->pSourceData != nullptr && op->ulSourceDataLen != 0) {
      const auto* s = static_cast<const uint8_t*>(op->pSourceData);
      o.data1_.assign(s, s + op->ulSourceDataLen);
      op->pSourceData = o.data1_.data();
    }
  } else if (m.mechanism == CKM_AES_GCM && m.ulParameterLen == sizeof(CK_GCM_PARAMS)) {
    auto* gp = reinterpret_cast<CK_GCM_PARAMS*>(o.param_.data());
    if (gp->pIv != nullptr && gp->ulIvLen != 0) {
      o.data1_.assign(gp->pIv, gp->pIv + gp->ulIvLen);
      gp->pIv = o.data1_.data();
    }
    if (gp->pAAD != nullptr && gp->ulAADLen != 0) {
      o.data2_.assign(gp->pAAD, gp->pAAD + gp->ulAADLen);
      gp->pAAD = o.data2_.data();
    }
  }
  return o;
}

bool IsSinglePartMechanism(CK_MECHANISM_TYPE type) {
  switch (type) {
    case CKM_RSA_PKCS:
    case CKM_RSA_X_509:
    case CKM_RSA_PKCS_OAEP:
    case CKM_RSA_PKCS_PSS:
    case CKM_ECDSA:
    case CKM_DSA:
#ifdef CKM_EDDSA
    case CKM_EDDSA:
#endif
      return true;
    default:
      return false;
  }
}

Result<std::unique_ptr<ossl::SignOp>> NewInnerSignOp(std::shared_ptr<InnerToken> token,
                                                     CK_OBJECT_HANDLE inner_key,
                                                     const CK_MECHANISM& mech,
                                                     size_t signature_length) {
  if (!token) return Err(CKR_GENERAL_ERROR, "no inner token");
  OwnedMechanism m = OwnedMechanism::Copy(mech);

  // Hash here and sign the digest with the raw mechanism when asked to, or when the token
  // cannot do the hashing mechanism itself but can do the raw one.
  const HashedSignMech* hashed = FindHashed(mech.mechanism);
  std::unique_ptr<ossl::DigestOp> digest;
  std::span<const uint8_t> prefix;
  if (hashed != nullptr &&
      (token->options().hash_in_process || !token->SupportsMechanism(hashed->hashed)) &&
      token->SupportsMechanism(hashed->raw)) {
    if (hashed->kind == RawKind::kRsaPss) {
      // The raw PSS mechanism cannot check that hashAlg matches the data's hash: check here.
      if (mech.pParameter == nullptr || mech.ulParameterLen != sizeof(CK_RSA_PKCS_PSS_PARAMS))
        return Err(CKR_MECHANISM_PARAM_INVALID, "PSS needs a CK_RSA_PKCS_PSS_PARAMS parameter");
      const auto* pp = static_cast<const CK_RSA_PKCS_PSS_PARAMS*>(mech.pParameter);
      if (pp->hashAlg != hashed->digest)
        return Err(CKR_MECHANISM_PARAM_INVALID,
                   "PSS hashAlg 0x{:x} does not match mechanism 0x{:x}", pp->hashAlg,
                   mech.mechanism);
    }
    CK_MECHANISM dm{hashed->digest, nullptr, 0};
    VAULTP11_ASSIGN_OR_RETURN(digest, ossl::NewDigestOp(dm));
    prefix = hashed->prefix;
    m.get()->mechanism = hashed->raw;
    if (hashed->kind != RawKind::kRsaPss) {
      m.get()->pParameter = nullptr;
      m.get()->ulParameterLen = 0;
    }
  }

  const InnerModule& mod = *token->module();
  VAULTP11_ASSIGN_OR_RETURN(SessionLease lease,
                            LeaseAndInit(*token, "C_SignInit", [&](CK_SESSION_HANDLE h) {
                              return VAULTP11_P11_CALL(mod, C_SignInit, h, m.get(), inner_key);
                            }));
  // Emulated hashing mechanisms are multi-part (the digest is ours); raw ones are not.
  const bool multi = digest != nullptr || !IsSinglePartMechanism(mech.mechanism);
  return std::unique_ptr<ossl::SignOp>(new InnerSignOp(std::move(token), std::move(lease),
                                                       std::move(m), signature_length, multi,
                                                       std::move(digest), prefix));
}

Result<std::unique_ptr<ossl::CipherOp>> NewInnerDecryptOp(std::shared_ptr<InnerToken> token,
                                                          CK_OBJECT_HANDLE inner_key,
                                                          const CK_MECHANISM& mech) {
  return NewCipherOp(std::move(token), inner_key, mech, false, 0);
}

Result<std::unique_ptr<ossl::CipherOp>> NewInnerEncryptOp(std::shared_ptr<InnerToken> token,
                                                          CK_OBJECT_HANDLE inner_key,
                                                          const CK_MECHANISM& mech,
                                                          size_t rsa_modulus_bytes) {
  return NewCipherOp(std::move(token), inner_key, mech, true, rsa_modulus_bytes);
}

Result<CK_OBJECT_HANDLE> UnwrapKey(const InnerToken& token, const CK_MECHANISM& mech,
                                   CK_OBJECT_HANDLE unwrapping_key,
                                   std::span<const uint8_t> wrapped,
                                   std::span<const CK_ATTRIBUTE> tmpl) {
  return token.UnwrapKey(mech, unwrapping_key, wrapped, tmpl);
}

}  // namespace vaultp11::p11

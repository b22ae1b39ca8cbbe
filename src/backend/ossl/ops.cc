// Cryptographic operations of the OpenSSL backend: sign, verify, encrypt, decrypt, wrap,
// unwrap and digest. Digests and ciphers are fetched once from the module's library context
// and cached for the life of the process; each operation creates its own EVP_PKEY_CTX /
// EVP_CIPHER_CTX / EVP_MD_CTX.
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/rsa.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstring>
#include <limits>
#include <optional>

#include "backend/ossl/ossl_backend.h"

namespace vaultp11::ossl {
namespace {

// ---- cached algorithms -------------------------------------------------------------------

enum class HashAlg : int { kSha1 = 0, kSha224, kSha256, kSha384, kSha512 };
constexpr size_t kNumHashes = 5;
constexpr const char* kMdNames[kNumHashes] = {"SHA1", "SHA2-224", "SHA2-256", "SHA2-384", "SHA2-512"};
constexpr size_t kMdLens[kNumHashes] = {20, 28, 32, 48, 64};

const EVP_MD* Md(HashAlg h) {
  // Fetched once, never freed (like the library context itself).
  static const std::array<EVP_MD*, kNumHashes> mds = [] {
    std::array<EVP_MD*, kNumHashes> a{};
    for (size_t i = 0; i < kNumHashes; ++i) a[i] = EVP_MD_fetch(LibCtx(), kMdNames[i], nullptr);
    ERR_clear_error();
    return a;
  }();
  return mds[static_cast<int>(h)];
}
size_t MdLen(HashAlg h) { return kMdLens[static_cast<int>(h)]; }

std::optional<HashAlg> HashOfMech(CK_MECHANISM_TYPE t) {
  switch (t) {
    case CKM_SHA_1: return HashAlg::kSha1;
    case CKM_SHA224: return HashAlg::kSha224;
    case CKM_SHA256: return HashAlg::kSha256;
    case CKM_SHA384: return HashAlg::kSha384;
    case CKM_SHA512: return HashAlg::kSha512;
    default: return std::nullopt;
  }
}

std::optional<HashAlg> HashOfMgf(CK_RSA_PKCS_MGF_TYPE t) {
  switch (t) {
    case CKG_MGF1_SHA1: return HashAlg::kSha1;
    case CKG_MGF1_SHA224: return HashAlg::kSha224;
    case CKG_MGF1_SHA256: return HashAlg::kSha256;
    case CKG_MGF1_SHA384: return HashAlg::kSha384;
    case CKG_MGF1_SHA512: return HashAlg::kSha512;
    default: return std::nullopt;
  }
}

enum class AesMode : int { kEcb = 0, kCbc, kCtr, kGcm, kWrap, kWrapPad };
constexpr size_t kNumAesModes = 6;

const EVP_CIPHER* Aes(AesMode mode, size_t key_len) {
  static const auto table = [] {
    static constexpr const char* kNames[kNumAesModes][3] = {
        {"AES-128-ECB", "AES-192-ECB", "AES-256-ECB"},
        {"AES-128-CBC", "AES-192-CBC", "AES-256-CBC"},
        {"AES-128-CTR", "AES-192-CTR", "AES-256-CTR"},
        {"AES-128-GCM", "AES-192-GCM", "AES-256-GCM"},
        {"AES-128-WRAP", "AES-192-WRAP", "AES-256-WRAP"},
        {"AES-128-WRAP-PAD", "AES-192-WRAP-PAD", "AES-256-WRAP-PAD"},
    };
    std::array<std::array<EVP_CIPHER*, 3>, kNumAesModes> t{};
    for (size_t m = 0; m < kNumAesModes; ++m)
      for (size_t k = 0; k < 3; ++k) t[m][k] = EVP_CIPHER_fetch(LibCtx(), kNames[m][k], nullptr);
    ERR_clear_error();
    return t;
  }();
  size_t idx = key_len == 16 ? 0 : key_len == 24 ? 1 : 2;
  return table[static_cast<int>(mode)][idx];
}

// ---- small helpers -----------------------------------------------------------------------

Error SslFailure(std::string_view what) { return Err(CKR_FUNCTION_FAILED, "{} failed: {}", what, SslErrors()); }

// A NULL library context would silently mean OpenSSL's default one: refuse instead.
Status CheckLibCtx() {
  if (LibCtx() == nullptr) return Err(CKR_FUNCTION_FAILED, "OpenSSL library context unavailable");
  return OkStatus();
}

Error Dead() { return Err(CKR_OPERATION_NOT_INITIALIZED, "operation already finished or failed"); }

// Mechanisms without a parameter accept none (a NULL or ignored pointer with length 0).
Status NoParam(const CK_MECHANISM& mech) {
  if (mech.ulParameterLen != 0)
    return Err(CKR_MECHANISM_PARAM_INVALID, "mechanism 0x{:x} takes no parameter", mech.mechanism);
  return OkStatus();
}

// Copies the mechanism parameter into T if it has exactly T's size.
template <typename T>
bool ReadParam(const CK_MECHANISM& mech, T* out) {
  if (mech.pParameter == nullptr || mech.ulParameterLen != sizeof(T)) return false;
  std::memcpy(out, mech.pParameter, sizeof(T));
  return true;
}

bool IsA(const KeyRef& key, CK_KEY_TYPE type) {
  switch (type) {
    case CKK_RSA: return key.key_type == CKK_RSA && key.pkey && EVP_PKEY_is_a(key.pkey.get(), "RSA");
    case CKK_EC: return key.key_type == CKK_EC && key.pkey && EVP_PKEY_is_a(key.pkey.get(), "EC");
    case CKK_AES: return key.key_type == CKK_AES && key.object_class == CKO_SECRET_KEY && key.secret != nullptr;
    default: return false;
  }
}

Status CheckAesKeySize(const KeyRef& key) {
  size_t n = key.secret->size();
  if (n != 16 && n != 24 && n != 32) return Err(CKR_KEY_SIZE_RANGE, "AES key of {} bytes (need 16, 24 or 32)", n);
  return OkStatus();
}

// EVP_CipherUpdate takes int lengths: feed large inputs in chunks (a multiple of the block size).
bool CipherUpdate(EVP_CIPHER_CTX* ctx, uint8_t* out, size_t* out_len, const uint8_t* in, size_t in_len) {
  constexpr size_t kChunk = size_t{1} << 30;
  size_t total = 0;
  while (in_len > 0) {
    size_t step = std::min(in_len, kChunk);
    int n = 0;
    if (EVP_CipherUpdate(ctx, out == nullptr ? nullptr : out + total, &n, in, static_cast<int>(step)) != 1) return false;
    total += static_cast<size_t>(n);
    in += step;
    in_len -= step;
  }
  *out_len = total;
  return true;
}

// ---- ECDSA signature format: DER SEQUENCE{r, s} <-> r||s -----------------------------------

constexpr size_t kMaxEcField = 66;
constexpr size_t kMaxEcDer = 2 * (kMaxEcField + 3) + 3;
constexpr size_t kEcDerBuf = 256;

// Reads one DER INTEGER (short-form length) at `pos`, writes it right-aligned into out[0..f).
bool ReadDerUint(const uint8_t* der, size_t len, size_t* pos, uint8_t* out, size_t f) {
  if (len - *pos < 2 || der[*pos] != 0x02) return false;
  size_t n = der[*pos + 1];
  *pos += 2;
  if ((n & 0x80) != 0 || n == 0 || len - *pos < n) return false;
  const uint8_t* v = der + *pos;
  *pos += n;
  while (n > 0 && *v == 0) { ++v; --n; }
  if (n > f) return false;
  std::memset(out, 0, f - n);
  std::memcpy(out + (f - n), v, n);
  return true;
}

bool DerToRaw(const uint8_t* der, size_t len, uint8_t* out, size_t f) {
  if (len < 2 || der[0] != 0x30) return false;
  size_t pos = 1;
  size_t seq_len = der[pos++];
  if (seq_len == 0x81) {
    if (len < 3) return false;
    seq_len = der[pos++];
  } else if (seq_len & 0x80) {
    return false;
  }
  if (len - pos != seq_len) return false;
  return ReadDerUint(der, len, &pos, out, f) && ReadDerUint(der, len, &pos, out + f, f) && pos == len;
}

// Writes INTEGER(v) for an unsigned big-endian v of f bytes; returns the bytes written.
size_t WriteDerUint(const uint8_t* v, size_t f, uint8_t* out) {
  size_t skip = 0;
  while (skip + 1 < f && v[skip] == 0) ++skip;
  size_t n = f - skip;
  bool pad = (v[skip] & 0x80) != 0;
  out[0] = 0x02;
  out[1] = static_cast<uint8_t>(n + (pad ? 1 : 0));
  size_t pos = 2;
  if (pad) out[pos++] = 0x00;
  std::memcpy(out + pos, v + skip, n);
  return pos + n;
}

size_t RawToDer(const uint8_t* raw, size_t f, uint8_t* out) {
  uint8_t body[kMaxEcDer];
  size_t n = WriteDerUint(raw, f, body);
  n += WriteDerUint(raw + f, f, body + n);
  size_t pos = 0;
  out[pos++] = 0x30;
  if (n >= 0x80) out[pos++] = 0x81;
  out[pos++] = static_cast<uint8_t>(n);
  std::memcpy(out + pos, body, n);
  return pos + n;
}

// ---- sign / verify -----------------------------------------------------------------------

enum class SigKind { kRsaPkcs, kRsaPss, kEcdsa };
struct SigMech {
  SigKind kind;
  std::optional<HashAlg> hash;  // hashed by the op itself (multi-part capable)
};

std::optional<SigMech> SigMechOf(CK_MECHANISM_TYPE t) {
  switch (t) {
    case CKM_RSA_PKCS: return SigMech{SigKind::kRsaPkcs, std::nullopt};
    case CKM_SHA1_RSA_PKCS: return SigMech{SigKind::kRsaPkcs, HashAlg::kSha1};
    case CKM_SHA224_RSA_PKCS: return SigMech{SigKind::kRsaPkcs, HashAlg::kSha224};
    case CKM_SHA256_RSA_PKCS: return SigMech{SigKind::kRsaPkcs, HashAlg::kSha256};
    case CKM_SHA384_RSA_PKCS: return SigMech{SigKind::kRsaPkcs, HashAlg::kSha384};
    case CKM_SHA512_RSA_PKCS: return SigMech{SigKind::kRsaPkcs, HashAlg::kSha512};
    case CKM_RSA_PKCS_PSS: return SigMech{SigKind::kRsaPss, std::nullopt};
    case CKM_SHA1_RSA_PKCS_PSS: return SigMech{SigKind::kRsaPss, HashAlg::kSha1};
    case CKM_SHA224_RSA_PKCS_PSS: return SigMech{SigKind::kRsaPss, HashAlg::kSha224};
    case CKM_SHA256_RSA_PKCS_PSS: return SigMech{SigKind::kRsaPss, HashAlg::kSha256};
    case CKM_SHA384_RSA_PKCS_PSS: return SigMech{SigKind::kRsaPss, HashAlg::kSha384};
    case CKM_SHA512_RSA_PKCS_PSS: return SigMech{SigKind::kRsaPss, HashAlg::kSha512};
    case CKM_ECDSA: return SigMech{SigKind::kEcdsa, std::nullopt};
    case CKM_ECDSA_SHA1: return SigMech{SigKind::kEcdsa, HashAlg::kSha1};
    case CKM_ECDSA_SHA224: return SigMech{SigKind::kEcdsa, HashAlg::kSha224};
    case CKM_ECDSA_SHA256: return SigMech{SigKind::kEcdsa, HashAlg::kSha256};
    case CKM_ECDSA_SHA384: return SigMech{SigKind::kEcdsa, HashAlg::kSha384};
    case CKM_ECDSA_SHA512: return SigMech{SigKind::kEcdsa, HashAlg::kSha512};
    default: return std::nullopt;
  }
}

}  // namespace

PreparedContexts::~PreparedContexts() {
  for (auto& e : entries_)
    if (Entry* p = e.load(std::memory_order_acquire)) {
      EVP_PKEY_CTX_free(p->ctx);
      delete p;
    }
}

EvpPkeyCtxPtr PreparedContexts::Dup(const Setting& setting) const {
  for (const auto& e : entries_) {
    const Entry* p = e.load(std::memory_order_acquire);
    if (p == nullptr) break;  // filled in order
    if (p->setting == setting) {
      EvpPkeyCtxPtr copy(EVP_PKEY_CTX_dup(p->ctx));
      if (!copy) ERR_clear_error();  // the caller sets a context up itself
      return copy;
    }
  }
  return nullptr;
}

void PreparedContexts::Keep(const Setting& setting, EVP_PKEY_CTX* ctx) {
  if (entries_.back().load(std::memory_order_acquire) != nullptr) return;  // kMax kept already
  EVP_PKEY_CTX* copy = EVP_PKEY_CTX_dup(ctx);
  if (copy == nullptr) {
    ERR_clear_error();
    return;
  }
  auto* entry = new Entry{setting, copy};
  for (auto& e : entries_) {
    Entry* expected = nullptr;
    if (e.compare_exchange_strong(expected, entry, std::memory_order_acq_rel)) return;
    if (expected->setting == setting) break;  // another thread kept one first
  }
  EVP_PKEY_CTX_free(copy);  // kept already, or kMax settings kept
  delete entry;
}

namespace {

// State shared by sign and verify: a configured EVP_PKEY_CTX and, for the hashing mechanisms,
// a digest context.
class Signature {
 public:
  Status Init(const KeyRef& key, const CK_MECHANISM& mech, bool sign) {
    std::optional<SigMech> m = SigMechOf(mech.mechanism);
    if (!m) return Err(CKR_MECHANISM_INVALID, "mechanism 0x{:x} cannot sign or verify", mech.mechanism);
    mech_ = *m;
    const bool rsa = mech_.kind != SigKind::kEcdsa;
    if (!IsA(key, rsa ? CKK_RSA : CKK_EC))
      return Err(CKR_KEY_TYPE_INCONSISTENT, "mechanism 0x{:x} needs an {} key", mech.mechanism, rsa ? "RSA" : "EC");
    if (sign ? key.object_class != CKO_PRIVATE_KEY
             : key.object_class != CKO_PUBLIC_KEY && key.object_class != CKO_PRIVATE_KEY)
      return Err(CKR_KEY_TYPE_INCONSISTENT, "{} needs a {} key", sign ? "signing" : "verification",
                 sign ? "private" : "public or private");
    EVP_PKEY* pkey = key.pkey.get();

    std::optional<HashAlg> pss_hash, pss_mgf;
    int salt_len = 0;
    if (rsa) {
      int size = EVP_PKEY_get_size(pkey);
      if (size <= 0) return SslFailure("EVP_PKEY_get_size");
      sig_len_ = static_cast<size_t>(size);
    } else {
      field_ = EcFieldBytes(pkey);
      if (field_ == 0 || field_ > kMaxEcField || EVP_PKEY_get_size(pkey) > static_cast<int>(kEcDerBuf))
        return Err(CKR_KEY_TYPE_INCONSISTENT, "unsupported EC key");
      sig_len_ = 2 * field_;
    }
    CK_RSA_PKCS_PSS_PARAMS p{};  // PSS: the parameters as read once (the context is set from them)
    if (mech_.kind == SigKind::kRsaPss) {
      if (!ReadParam(mech, &p)) return Err(CKR_MECHANISM_PARAM_INVALID, "PSS needs CK_RSA_PKCS_PSS_PARAMS");
      pss_hash = HashOfMech(p.hashAlg);
      pss_mgf = HashOfMgf(p.mgf);
      if (!pss_hash) return Err(CKR_MECHANISM_PARAM_INVALID, "PSS hashAlg 0x{:x} not supported", p.hashAlg);
      if (!pss_mgf) return Err(CKR_MECHANISM_PARAM_INVALID, "PSS mgf 0x{:x} not supported", p.mgf);
      if (mech_.hash && *mech_.hash != *pss_hash)
        return Err(CKR_MECHANISM_PARAM_INVALID, "PSS hashAlg does not match the mechanism");
      // emLen = ceil((modBits - 1) / 8) must hold hLen + sLen + 2.
      size_t em_len = (static_cast<size_t>(EVP_PKEY_get_bits(pkey)) - 1 + 7) / 8;
      size_t h_len = MdLen(*pss_hash);
      if (em_len < h_len + 2 || p.sLen > em_len - h_len - 2)
        return Err(CKR_MECHANISM_PARAM_INVALID, "PSS salt length {} too large for the key", p.sLen);
      salt_len = static_cast<int>(p.sLen);
      raw_len_ = h_len;
    } else {
      VAULTP11_RETURN_IF_ERROR(NoParam(mech));
    }
    if (mech_.kind == SigKind::kRsaPkcs) {
      if (sig_len_ < 11) return Err(CKR_KEY_SIZE_RANGE, "RSA key too small");
      raw_len_ = sig_len_ - 11;  // maximum DigestInfo length for CKM_RSA_PKCS
    }

    // The key's context prepared for this setting, duplicated; else one set up here (and kept).
    // ECDSA contexts do not depend on the hash (the digest is made here, in md_): one setting.
    PreparedContexts::Setting setting{mech_.kind == SigKind::kEcdsa ? CKM_ECDSA : mech.mechanism, sign};
    if (mech_.kind == SigKind::kRsaPss) {
      setting.pss_hash = p.hashAlg;
      setting.pss_mgf = p.mgf;
      setting.pss_salt = p.sLen;
    }
    if (key.prepared) pctx_ = key.prepared->Dup(setting);
    if (!pctx_) {
      VAULTP11_RETURN_IF_ERROR(NewContext(pkey, sign, pss_hash, pss_mgf, salt_len));
      if (key.prepared) key.prepared->Keep(setting, pctx_.get());
    }
    if (mech_.hash) {
      const EVP_MD* md = Md(*mech_.hash);
      md_.reset(EVP_MD_CTX_new());
      if (md == nullptr || !md_ || EVP_DigestInit_ex2(md_.get(), md, nullptr) != 1) return SslFailure("digest setup");
    }
    return OkStatus();
  }

  bool hashing() const { return md_ != nullptr; }
  size_t sig_len() const { return sig_len_; }

  // Sets pctx_ up for the mechanism on `pkey` (fetching the algorithm, setting the padding).
  Status NewContext(EVP_PKEY* pkey, bool sign, std::optional<HashAlg> pss_hash, std::optional<HashAlg> pss_mgf,
                    int salt_len) {
    pctx_.reset(EVP_PKEY_CTX_new_from_pkey(LibCtx(), pkey, nullptr));
    if (!pctx_ || (sign ? EVP_PKEY_sign_init(pctx_.get()) : EVP_PKEY_verify_init(pctx_.get())) != 1)
      return SslFailure("signature context setup");
    if (mech_.kind == SigKind::kRsaPkcs) {
      if (EVP_PKEY_CTX_set_rsa_padding(pctx_.get(), RSA_PKCS1_PADDING) != 1 ||
          (mech_.hash && EVP_PKEY_CTX_set_signature_md(pctx_.get(), Md(*mech_.hash)) != 1))
        return SslFailure("RSA PKCS#1 setup");
    } else if (mech_.kind == SigKind::kRsaPss) {
      if (Md(*pss_hash) == nullptr || Md(*pss_mgf) == nullptr) return SslFailure("digest fetch");
      if (EVP_PKEY_CTX_set_rsa_padding(pctx_.get(), RSA_PKCS1_PSS_PADDING) != 1 ||
          EVP_PKEY_CTX_set_signature_md(pctx_.get(), Md(*pss_hash)) != 1 ||
          EVP_PKEY_CTX_set_rsa_mgf1_md(pctx_.get(), Md(*pss_mgf)) != 1 ||
          EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx_.get(), salt_len) != 1)
        return SslFailure("RSA PSS setup");
    }
    return OkStatus();
  }

  Status Update(std::span<const uint8_t> data) {
    if (!hashing()) return Err(CKR_FUNCTION_NOT_SUPPORTED, "this mechanism is single-part only");
    if (EVP_DigestUpdate(md_.get(), data.data(), data.size()) != 1) return SslFailure("EVP_DigestUpdate");
    return OkStatus();
  }

  // The input given to EVP_PKEY_sign/verify for single-part raw data: checks its length.
  Status CheckRawInput(std::span<const uint8_t> data) const {
    switch (mech_.kind) {
      case SigKind::kRsaPkcs:
        if (data.size() > raw_len_)
          return Err(CKR_DATA_LEN_RANGE, "CKM_RSA_PKCS input of {} bytes exceeds {}", data.size(), raw_len_);
        break;
      case SigKind::kRsaPss:
        if (data.size() != raw_len_)
          return Err(CKR_DATA_LEN_RANGE, "CKM_RSA_PKCS_PSS input must be the {}-byte hash", raw_len_);
        break;
      case SigKind::kEcdsa:
        if (data.empty()) return Err(CKR_DATA_LEN_RANGE, "CKM_ECDSA input is empty");
        break;
    }
    return OkStatus();
  }

  // Finishes the digest (hashing mechanisms) into `buf`, returns the hash.
  Result<std::span<const uint8_t>> FinishHash(std::span<const uint8_t> data, uint8_t* buf) {
    if (!data.empty() && EVP_DigestUpdate(md_.get(), data.data(), data.size()) != 1)
      return SslFailure("EVP_DigestUpdate");
    unsigned int n = 0;
    if (EVP_DigestFinal_ex(md_.get(), buf, &n) != 1) return SslFailure("EVP_DigestFinal_ex");
    return std::span<const uint8_t>(buf, n);
  }

  Result<Bytes> SignTbs(std::span<const uint8_t> tbs) {
    if (mech_.kind == SigKind::kEcdsa) {
      uint8_t der[kEcDerBuf];
      size_t der_len = sizeof(der);
      if (EVP_PKEY_sign(pctx_.get(), der, &der_len, tbs.data(), tbs.size()) != 1) return SslFailure("ECDSA sign");
      Bytes out(sig_len_);
      if (!DerToRaw(der, der_len, out.data(), field_)) return Err(CKR_FUNCTION_FAILED, "unexpected ECDSA signature");
      return out;
    }
    Bytes out(sig_len_);
    size_t len = out.size();
    if (EVP_PKEY_sign(pctx_.get(), out.data(), &len, tbs.data(), tbs.size()) != 1) return SslFailure("RSA sign");
    out.resize(len);
    return out;
  }

  Status VerifyTbs(std::span<const uint8_t> tbs, std::span<const uint8_t> sig) {
    int rc;
    if (mech_.kind == SigKind::kEcdsa) {
      uint8_t der[kEcDerBuf];
      size_t der_len = RawToDer(sig.data(), field_, der);
      rc = EVP_PKEY_verify(pctx_.get(), der, der_len, tbs.data(), tbs.size());
    } else {
      rc = EVP_PKEY_verify(pctx_.get(), sig.data(), sig.size(), tbs.data(), tbs.size());
    }
    if (rc != 1) {
      ERR_clear_error();
      return Err(CKR_SIGNATURE_INVALID, "signature does not verify");
    }
    return OkStatus();
  }

  Status CheckSigLen(std::span<const uint8_t> sig) const {
    if (sig.size() != sig_len_)
      return Err(CKR_SIGNATURE_LEN_RANGE, "signature of {} bytes, expected {}", sig.size(), sig_len_);
    return OkStatus();
  }

 private:
  SigMech mech_{};
  EvpPkeyCtxPtr pctx_;
  EvpMdCtxPtr md_;
  size_t sig_len_ = 0;
  size_t field_ = 0;
  size_t raw_len_ = 0;
};

class SignOpImpl final : public SignOp {
 public:
  Status Init(const KeyRef& key, const CK_MECHANISM& mech) { return sig_.Init(key, mech, /*sign=*/true); }
  size_t SignatureLength() const override { return sig_.sig_len(); }
  bool SupportsMultiPart() const override { return sig_.hashing(); }
  Status Update(std::span<const uint8_t> data) override {
    if (dead_) return Dead();
    Status st = sig_.Update(data);
    dead_ = !st.ok();
    return st;
  }
  Result<Bytes> Final() override {
    if (dead_) return Dead();
    dead_ = true;
    if (!sig_.hashing()) return Err(CKR_FUNCTION_NOT_SUPPORTED, "this mechanism is single-part only");
    uint8_t hash[EVP_MAX_MD_SIZE];
    VAULTP11_ASSIGN_OR_RETURN(auto h, sig_.FinishHash({}, hash));
    return sig_.SignTbs(h);
  }
  Result<Bytes> Sign(std::span<const uint8_t> data) override {
    if (dead_) return Dead();
    dead_ = true;
    if (sig_.hashing()) {
      uint8_t hash[EVP_MAX_MD_SIZE];
      VAULTP11_ASSIGN_OR_RETURN(auto h, sig_.FinishHash(data, hash));
      return sig_.SignTbs(h);
    }
    VAULTP11_RETURN_IF_ERROR(sig_.CheckRawInput(data));
    return sig_.SignTbs(data);
  }

 private:
  Signature sig_;
  bool dead_ = false;
};

class VerifyOpImpl final : public VerifyOp {
 public:
  Status Init(const KeyRef& key, const CK_MECHANISM& mech) { return sig_.Init(key, mech, /*sign=*/false); }
  bool SupportsMultiPart() const override { return sig_.hashing(); }
  Status Update(std::span<const uint8_t> data) override {
    if (dead_) return Dead();
    Status st = sig_.Update(data);
    dead_ = !st.ok();
    return st;
  }
  Status Final(std::span<const uint8_t> signature) override {
    if (dead_) return Dead();
    dead_ = true;
    if (!sig_.hashing()) return Err(CKR_FUNCTION_NOT_SUPPORTED, "this mechanism is single-part only");
    VAULTP11_RETURN_IF_ERROR(sig_.CheckSigLen(signature));
    uint8_t hash[EVP_MAX_MD_SIZE];
    VAULTP11_ASSIGN_OR_RETURN(auto h, sig_.FinishHash({}, hash));
    return sig_.VerifyTbs(h, signature);
  }
  Status Verify(std::span<const uint8_t> data, std::span<const uint8_t> signature) override {
    if (dead_) return Dead();
    dead_ = true;
    if (sig_.hashing()) {
      VAULTP11_RETURN_IF_ERROR(sig_.CheckSigLen(signature));
      uint8_t hash[EVP_MAX_MD_SIZE];
      VAULTP11_ASSIGN_OR_RETURN(auto h, sig_.FinishHash(data, hash));
      return sig_.VerifyTbs(h, signature);
    }
    VAULTP11_RETURN_IF_ERROR(sig_.CheckRawInput(data));
    VAULTP11_RETURN_IF_ERROR(sig_.CheckSigLen(signature));
    return sig_.VerifyTbs(data, signature);
  }

 private:
  Signature sig_;
  bool dead_ = false;
};

// ---- RSA encrypt / decrypt -----------------------------------------------------------------

class RsaCipherOp final : public CipherOp {
 public:
  Status Init(const KeyRef& key, const CK_MECHANISM& mech, bool encrypt) {
    encrypt_ = encrypt;
    if (mech.mechanism != CKM_RSA_PKCS && mech.mechanism != CKM_RSA_PKCS_OAEP)
      return Err(CKR_MECHANISM_INVALID, "mechanism 0x{:x} is not an RSA cipher", mech.mechanism);
    if (!IsA(key, CKK_RSA) || key.object_class != (encrypt ? CKO_PUBLIC_KEY : CKO_PRIVATE_KEY))
      return Err(CKR_KEY_TYPE_INCONSISTENT, "RSA {} needs an RSA {} key", encrypt ? "encryption" : "decryption",
                 encrypt ? "public" : "private");
    EVP_PKEY* pkey = key.pkey.get();
    int size = EVP_PKEY_get_size(pkey);
    if (size <= 0) return SslFailure("EVP_PKEY_get_size");
    k_ = static_cast<size_t>(size);

    std::optional<HashAlg> hash;
    CK_RSA_PKCS_OAEP_PARAMS p{};
    if (mech.mechanism == CKM_RSA_PKCS_OAEP) {
      if (!ReadParam(mech, &p)) return Err(CKR_MECHANISM_PARAM_INVALID, "OAEP needs CK_RSA_PKCS_OAEP_PARAMS");
      hash = HashOfMech(p.hashAlg);
      std::optional<HashAlg> mgf = HashOfMgf(p.mgf);
      if (!hash) return Err(CKR_MECHANISM_PARAM_INVALID, "OAEP hashAlg 0x{:x} not supported", p.hashAlg);
      if (!mgf || *mgf != *hash) return Err(CKR_MECHANISM_PARAM_INVALID, "OAEP mgf must be MGF1 with hashAlg");
      if (p.source != CKZ_DATA_SPECIFIED && !(p.source == 0 && p.ulSourceDataLen == 0))
        return Err(CKR_MECHANISM_PARAM_INVALID, "OAEP source must be CKZ_DATA_SPECIFIED");
      if (p.ulSourceDataLen > 0 && p.pSourceData == nullptr)
        return Err(CKR_MECHANISM_PARAM_INVALID, "OAEP label pointer is NULL");
      if (p.ulSourceDataLen > static_cast<CK_ULONG>(INT_MAX))
        return Err(CKR_MECHANISM_PARAM_INVALID, "OAEP label too long");
      size_t h = MdLen(*hash);
      if (k_ < 2 * h + 2) return Err(CKR_KEY_SIZE_RANGE, "RSA key too small for OAEP with this hash");
      max_plain_ = k_ - 2 * h - 2;
    } else {
      VAULTP11_RETURN_IF_ERROR(NoParam(mech));
      if (k_ < 11) return Err(CKR_KEY_SIZE_RANGE, "RSA key too small");
      max_plain_ = k_ - 11;
    }

    pctx_.reset(EVP_PKEY_CTX_new_from_pkey(LibCtx(), pkey, nullptr));
    if (!pctx_ || (encrypt ? EVP_PKEY_encrypt_init(pctx_.get()) : EVP_PKEY_decrypt_init(pctx_.get())) != 1)
      return SslFailure("RSA cipher setup");
    if (!hash) {
      if (EVP_PKEY_CTX_set_rsa_padding(pctx_.get(), RSA_PKCS1_PADDING) != 1) return SslFailure("RSA padding setup");
      return OkStatus();
    }
    const EVP_MD* md = Md(*hash);
    if (md == nullptr || EVP_PKEY_CTX_set_rsa_padding(pctx_.get(), RSA_PKCS1_OAEP_PADDING) != 1 ||
        EVP_PKEY_CTX_set_rsa_oaep_md(pctx_.get(), md) != 1 || EVP_PKEY_CTX_set_rsa_mgf1_md(pctx_.get(), md) != 1)
      return SslFailure("RSA OAEP setup");
    if (p.ulSourceDataLen > 0) {
      // OpenSSL takes ownership of the label copy on success.
      void* label = OPENSSL_memdup(p.pSourceData, p.ulSourceDataLen);
      if (label == nullptr) return SslFailure("OPENSSL_memdup");
      if (EVP_PKEY_CTX_set0_rsa_oaep_label(pctx_.get(), label, static_cast<int>(p.ulSourceDataLen)) != 1) {
        OPENSSL_free(label);
        return SslFailure("OAEP label setup");
      }
    }
    return OkStatus();
  }

  bool SupportsMultiPart() const override { return false; }
  size_t MaxOutput(size_t, bool) const override { return encrypt_ ? k_ : max_plain_; }
  Result<SecureBytes> Update(std::span<const uint8_t>) override {
    dead_ = true;
    return Err(CKR_FUNCTION_NOT_SUPPORTED, "RSA encryption is single-part only");
  }
  Result<SecureBytes> Final() override {
    dead_ = true;
    return Err(CKR_FUNCTION_NOT_SUPPORTED, "RSA encryption is single-part only");
  }
  Result<SecureBytes> OneShot(std::span<const uint8_t> in) override {
    if (dead_) return Dead();
    dead_ = true;
    if (encrypt_) {
      if (in.size() > max_plain_)
        return Err(CKR_DATA_LEN_RANGE, "RSA plaintext of {} bytes exceeds {}", in.size(), max_plain_);
      SecureBytes out(k_);
      size_t len = out.size();
      if (EVP_PKEY_encrypt(pctx_.get(), out.data(), &len, in.data(), in.size()) != 1)
        return SslFailure("RSA encrypt");
      out.resize(len);
      return out;
    }
    if (in.size() != k_)
      return Err(CKR_ENCRYPTED_DATA_LEN_RANGE, "RSA ciphertext of {} bytes, expected {}", in.size(), k_);
    SecureBytes out(k_);
    size_t len = out.size();
    if (EVP_PKEY_decrypt(pctx_.get(), out.data(), &len, in.data(), in.size()) != 1) {
      ERR_clear_error();
      return Err(CKR_ENCRYPTED_DATA_INVALID, "RSA decryption failed (bad padding or wrong key)");
    }
    out.resize(len);
    return out;
  }

 private:
  EvpPkeyCtxPtr pctx_;
  size_t k_ = 0;
  size_t max_plain_ = 0;
  bool encrypt_ = true;
  bool dead_ = false;
};

// ---- AES ECB / CBC / CBC_PAD / CTR ---------------------------------------------------------

class AesStreamOp final : public CipherOp {
 public:
  Status Init(const KeyRef& key, const CK_MECHANISM& mech, bool encrypt) {
    enc_ = encrypt;
    mech_ = mech.mechanism;
    VAULTP11_RETURN_IF_ERROR(CheckAesKeySize(key));
    const uint8_t* iv = nullptr;
    CK_AES_CTR_PARAMS ctr{};
    AesMode mode = AesMode::kEcb;
    switch (mech_) {
      case CKM_AES_ECB:
        VAULTP11_RETURN_IF_ERROR(NoParam(mech));
        break;
      case CKM_AES_CBC:
      case CKM_AES_CBC_PAD:
        mode = AesMode::kCbc;
        if (mech.pParameter == nullptr || mech.ulParameterLen != 16)
          return Err(CKR_MECHANISM_PARAM_INVALID, "AES-CBC needs a 16-byte IV");
        iv = static_cast<const uint8_t*>(mech.pParameter);
        break;
      case CKM_AES_CTR: {
        mode = AesMode::kCtr;
        if (!ReadParam(mech, &ctr)) return Err(CKR_MECHANISM_PARAM_INVALID, "AES-CTR needs CK_AES_CTR_PARAMS");
        if (ctr.ulCounterBits == 0 || ctr.ulCounterBits > 128)
          return Err(CKR_MECHANISM_PARAM_INVALID, "AES-CTR counter bits must be 1..128");
        // OpenSSL increments the whole block; refuse to let the counter field wrap, so the
        // result equals the PKCS#11 definition (and the keystream never repeats).
        unsigned __int128 c = 0;
        for (uint8_t b : ctr.cb) c = (c << 8) | b;
        unsigned bits = static_cast<unsigned>(ctr.ulCounterBits);
        if (bits < 128) c &= ((static_cast<unsigned __int128>(1) << bits) - 1);
        unsigned __int128 remaining = bits == 128 ? (c == 0 ? ~static_cast<unsigned __int128>(0) : -c)
                                                  : (static_cast<unsigned __int128>(1) << bits) - c;
        ctr_blocks_left_ = remaining > std::numeric_limits<uint64_t>::max() ? std::numeric_limits<uint64_t>::max()
                                                                            : static_cast<uint64_t>(remaining);
        iv = ctr.cb;
        break;
      }
      default:
        return Err(CKR_MECHANISM_INVALID, "mechanism 0x{:x} is not an AES cipher", mech_);
    }
    const EVP_CIPHER* cipher = Aes(mode, key.secret->size());
    ctx_.reset(EVP_CIPHER_CTX_new());
    if (cipher == nullptr || !ctx_ ||
        EVP_CipherInit_ex2(ctx_.get(), cipher, key.secret->data(), iv, enc_ ? 1 : 0, nullptr) != 1 ||
        EVP_CIPHER_CTX_set_padding(ctx_.get(), mech_ == CKM_AES_CBC_PAD ? 1 : 0) != 1)
      return SslFailure("AES setup");
    return OkStatus();
  }

  bool SupportsMultiPart() const override { return true; }

  size_t MaxOutput(size_t in_len, bool final) const override {
    uint64_t total = total_in_ + in_len;
    size_t n = static_cast<size_t>(OutAfter(total) - total_out_);
    if (final) n += FinalOut();
    return n;
  }

  Result<SecureBytes> Update(std::span<const uint8_t> in) override {
    if (dead_) return Dead();
    dead_ = true;
    VAULTP11_RETURN_IF_ERROR(Admit(in.size()));
    SecureBytes out(in.size() + 16);
    size_t n = 0;
    if (!CipherUpdate(ctx_.get(), out.data(), &n, in.data(), in.size())) return SslFailure("AES update");
    total_in_ += in.size();
    total_out_ += n;
    out.resize(n);
    dead_ = false;
    return out;
  }

  Result<SecureBytes> Final() override {
    if (dead_) return Dead();
    dead_ = true;
    VAULTP11_RETURN_IF_ERROR(CheckFinalLength(total_in_));
    SecureBytes out(16);
    size_t n = 0;
    VAULTP11_RETURN_IF_ERROR(DoFinal(out.data(), &n));
    out.resize(n);
    return out;
  }

  Result<SecureBytes> OneShot(std::span<const uint8_t> in) override {
    if (dead_) return Dead();
    dead_ = true;
    VAULTP11_RETURN_IF_ERROR(Admit(in.size()));
    VAULTP11_RETURN_IF_ERROR(CheckFinalLength(total_in_ + in.size()));
    SecureBytes out(in.size() + 32);
    size_t n = 0, m = 0;
    if (!CipherUpdate(ctx_.get(), out.data(), &n, in.data(), in.size())) return SslFailure("AES update");
    VAULTP11_RETURN_IF_ERROR(DoFinal(out.data() + n, &m));
    out.resize(n + m);
    return out;
  }

 private:
  // Output produced by all updates once `total` input bytes have been given.
  uint64_t OutAfter(uint64_t total) const {
    if (mech_ == CKM_AES_CTR) return total;
    if (mech_ == CKM_AES_CBC_PAD && !enc_) return total == 0 ? 0 : (total - 1) / 16 * 16;  // last block held back
    return total / 16 * 16;
  }
  size_t FinalOut() const {
    if (mech_ != CKM_AES_CBC_PAD) return 0;
    return enc_ ? 16 : 15;  // decrypt: at most 15 bytes of the last block survive unpadding
  }

  Status Admit(size_t in_len) {
    if (in_len > std::numeric_limits<uint64_t>::max() / 2 - total_in_)
      return Err(enc_ ? CKR_DATA_LEN_RANGE : CKR_ENCRYPTED_DATA_LEN_RANGE, "input too long");
    if (mech_ == CKM_AES_CTR) {
      uint64_t blocks = (total_in_ + in_len + 15) / 16;
      if (blocks > ctr_blocks_left_)
        return Err(enc_ ? CKR_DATA_LEN_RANGE : CKR_ENCRYPTED_DATA_LEN_RANGE,
                   "input would wrap the AES-CTR counter");
    }
    return OkStatus();
  }

  Status CheckFinalLength(uint64_t total) const {
    CK_RV rv = enc_ ? CKR_DATA_LEN_RANGE : CKR_ENCRYPTED_DATA_LEN_RANGE;
    if ((mech_ == CKM_AES_ECB || mech_ == CKM_AES_CBC) && total % 16 != 0)
      return Err(rv, "input of {} bytes is not a multiple of the AES block size", total);
    if (mech_ == CKM_AES_CBC_PAD && !enc_ && (total == 0 || total % 16 != 0))
      return Err(rv, "padded AES ciphertext of {} bytes is not a positive multiple of 16", total);
    return OkStatus();
  }

  Status DoFinal(uint8_t* out, size_t* n) {
    int len = 0;
    if (EVP_CipherFinal_ex(ctx_.get(), out, &len) != 1) {
      if (mech_ == CKM_AES_CBC_PAD && !enc_) {
        ERR_clear_error();
        return Err(CKR_ENCRYPTED_DATA_INVALID, "bad CBC padding");
      }
      return SslFailure("AES final");
    }
    *n = static_cast<size_t>(len);
    return OkStatus();
  }

  EvpCipherCtxPtr ctx_;
  CK_MECHANISM_TYPE mech_ = CKM_AES_ECB;
  bool enc_ = true;
  bool dead_ = false;
  uint64_t total_in_ = 0;
  uint64_t total_out_ = 0;
  uint64_t ctr_blocks_left_ = std::numeric_limits<uint64_t>::max();
};

// ---- AES GCM -------------------------------------------------------------------------------

// The v2.40 header's CK_GCM_PARAMS, without ulIvBits (still sent by some applications).
struct GcmParamsV240 {
  CK_BYTE_PTR pIv;
  CK_ULONG ulIvLen;
  CK_BYTE_PTR pAAD;
  CK_ULONG ulAADLen;
  CK_ULONG ulTagBits;
};

class AesGcmOp final : public CipherOp {
 public:
  Status Init(const KeyRef& key, const CK_MECHANISM& mech, bool encrypt) {
    enc_ = encrypt;
    VAULTP11_RETURN_IF_ERROR(CheckAesKeySize(key));
    GcmParamsV240 p{};
    CK_GCM_PARAMS full{};
    if (ReadParam(mech, &full)) {
      p = {full.pIv, full.ulIvLen, full.pAAD, full.ulAADLen, full.ulTagBits};
    } else if (!ReadParam(mech, &p)) {
      return Err(CKR_MECHANISM_PARAM_INVALID, "AES-GCM needs CK_GCM_PARAMS");
    }
    if (p.ulIvLen < 1 || p.ulIvLen > 256 || p.pIv == nullptr)
      return Err(CKR_MECHANISM_PARAM_INVALID, "AES-GCM IV must be 1..256 bytes");
    if (p.ulTagBits < 96 || p.ulTagBits > 128 || p.ulTagBits % 8 != 0)
      return Err(CKR_MECHANISM_PARAM_INVALID, "AES-GCM tag must be 96..128 bits in steps of 8");
    if (p.ulAADLen > 0 && p.pAAD == nullptr) return Err(CKR_MECHANISM_PARAM_INVALID, "AES-GCM AAD pointer is NULL");
    tag_len_ = p.ulTagBits / 8;

    const EVP_CIPHER* cipher = Aes(AesMode::kGcm, key.secret->size());
    ctx_.reset(EVP_CIPHER_CTX_new());
    if (cipher == nullptr || !ctx_ || EVP_CipherInit_ex2(ctx_.get(), cipher, nullptr, nullptr, enc_ ? 1 : 0, nullptr) != 1)
      return SslFailure("AES-GCM setup");
    if (EVP_CIPHER_CTX_ctrl(ctx_.get(), EVP_CTRL_AEAD_SET_IVLEN, static_cast<int>(p.ulIvLen), nullptr) != 1) {
      SslErrors();
      return Err(CKR_MECHANISM_PARAM_INVALID, "AES-GCM IV length {} not supported", p.ulIvLen);
    }
    size_t ignored = 0;
    if (EVP_CipherInit_ex2(ctx_.get(), nullptr, key.secret->data(), p.pIv, enc_ ? 1 : 0, nullptr) != 1 ||
        !CipherUpdate(ctx_.get(), nullptr, &ignored, p.pAAD, p.ulAADLen))
      return SslFailure("AES-GCM setup");
    return OkStatus();
  }

  bool SupportsMultiPart() const override { return true; }

  size_t MaxOutput(size_t in_len, bool final) const override {
    if (enc_) return in_len + (final ? tag_len_ : 0);
    if (!final) return 0;
    size_t total = buffered_.size() + in_len;
    return total > tag_len_ ? total - tag_len_ : 0;
  }

  Result<SecureBytes> Update(std::span<const uint8_t> in) override {
    if (dead_) return Dead();
    if (!enc_) {
      buffered_.insert(buffered_.end(), in.begin(), in.end());
      return SecureBytes();
    }
    dead_ = true;
    SecureBytes out(in.size());
    size_t n = 0;
    if (!CipherUpdate(ctx_.get(), out.data(), &n, in.data(), in.size())) return SslFailure("AES-GCM update");
    out.resize(n);
    dead_ = false;
    return out;
  }

  Result<SecureBytes> Final() override {
    if (dead_) return Dead();
    dead_ = true;
    if (!enc_) return Decrypt(buffered_);
    SecureBytes out(tag_len_);
    VAULTP11_RETURN_IF_ERROR(FinishEncrypt(out.data()));
    return out;
  }

  Result<SecureBytes> OneShot(std::span<const uint8_t> in) override {
    if (dead_) return Dead();
    dead_ = true;
    if (!enc_) {
      if (buffered_.empty()) return Decrypt(in);
      buffered_.insert(buffered_.end(), in.begin(), in.end());
      return Decrypt(buffered_);
    }
    SecureBytes out(in.size() + tag_len_);
    size_t n = 0;
    if (!CipherUpdate(ctx_.get(), out.data(), &n, in.data(), in.size()) || n != in.size())
      return SslFailure("AES-GCM update");
    VAULTP11_RETURN_IF_ERROR(FinishEncrypt(out.data() + n));
    return out;
  }

 private:
  Status FinishEncrypt(uint8_t* tag_out) {
    uint8_t scratch[16];
    int len = 0;
    if (EVP_CipherFinal_ex(ctx_.get(), scratch, &len) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx_.get(), EVP_CTRL_AEAD_GET_TAG, static_cast<int>(tag_len_), tag_out) != 1)
      return SslFailure("AES-GCM final");
    return OkStatus();
  }

  Result<SecureBytes> Decrypt(std::span<const uint8_t> in) {
    if (in.size() < tag_len_)
      return Err(CKR_ENCRYPTED_DATA_LEN_RANGE, "AES-GCM input shorter than the tag");
    size_t ct_len = in.size() - tag_len_;
    uint8_t tag[16];
    std::memcpy(tag, in.data() + ct_len, tag_len_);
    SecureBytes out(ct_len);
    size_t n = 0;
    int len = 0;
    uint8_t scratch[16];
    if (!CipherUpdate(ctx_.get(), out.data(), &n, in.data(), ct_len) ||
        EVP_CIPHER_CTX_ctrl(ctx_.get(), EVP_CTRL_AEAD_SET_TAG, static_cast<int>(tag_len_), tag) != 1)
      return SslFailure("AES-GCM decrypt");
    if (EVP_CipherFinal_ex(ctx_.get(), scratch, &len) != 1) {
      ERR_clear_error();
      OPENSSL_cleanse(out.data(), out.size());
      return Err(CKR_ENCRYPTED_DATA_INVALID, "AES-GCM tag does not verify");
    }
    out.resize(n);
    return out;
  }

  EvpCipherCtxPtr ctx_;
  size_t tag_len_ = 16;
  bool enc_ = true;
  bool dead_ = false;
  Bytes buffered_;  // decrypt: all input until Final
};

Result<std::unique_ptr<CipherOp>> NewCipherOp(const KeyRef& key, const CK_MECHANISM& mech, bool encrypt) {
  VAULTP11_RETURN_IF_ERROR(CheckLibCtx());
  switch (mech.mechanism) {
    case CKM_RSA_PKCS:
    case CKM_RSA_PKCS_OAEP: {
      auto op = std::make_unique<RsaCipherOp>();
      VAULTP11_RETURN_IF_ERROR(op->Init(key, mech, encrypt));
      return std::unique_ptr<CipherOp>(std::move(op));
    }
    case CKM_AES_ECB:
    case CKM_AES_CBC:
    case CKM_AES_CBC_PAD:
    case CKM_AES_CTR:
    case CKM_AES_GCM: {
      if (!IsA(key, CKK_AES))
        return Err(CKR_KEY_TYPE_INCONSISTENT, "mechanism 0x{:x} needs an AES secret key", mech.mechanism);
      if (mech.mechanism == CKM_AES_GCM) {
        auto op = std::make_unique<AesGcmOp>();
        VAULTP11_RETURN_IF_ERROR(op->Init(key, mech, encrypt));
        return std::unique_ptr<CipherOp>(std::move(op));
      }
      auto op = std::make_unique<AesStreamOp>();
      VAULTP11_RETURN_IF_ERROR(op->Init(key, mech, encrypt));
      return std::unique_ptr<CipherOp>(std::move(op));
    }
    default:
      return Err(CKR_MECHANISM_INVALID, "mechanism 0x{:x} cannot encrypt or decrypt", mech.mechanism);
  }
}

// ---- wrap helpers --------------------------------------------------------------------------

constexpr size_t kMaxWrapInput = size_t{1} << 24;

CK_RV MapRsaWrapError(CK_RV rv, bool wrap) {
  switch (rv) {
    case CKR_KEY_TYPE_INCONSISTENT: return wrap ? CKR_WRAPPING_KEY_TYPE_INCONSISTENT : CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT;
    case CKR_KEY_SIZE_RANGE: return wrap ? CKR_WRAPPING_KEY_SIZE_RANGE : CKR_UNWRAPPING_KEY_SIZE_RANGE;
    case CKR_DATA_LEN_RANGE: return CKR_KEY_SIZE_RANGE;
    case CKR_ENCRYPTED_DATA_LEN_RANGE: return CKR_WRAPPED_KEY_LEN_RANGE;
    case CKR_ENCRYPTED_DATA_INVALID: return CKR_WRAPPED_KEY_INVALID;
    default: return rv;
  }
}

Result<SecureBytes> RsaWrap(const KeyRef& key, const CK_MECHANISM& mech, std::span<const uint8_t> in, bool wrap) {
  RsaCipherOp op;
  Status st = op.Init(key, mech, wrap);
  if (!st.ok()) {
    st.error().rv = MapRsaWrapError(st.error().rv, wrap);
    return st.error();
  }
  Result<SecureBytes> r = op.OneShot(in);
  if (!r.ok()) r.error().rv = MapRsaWrapError(r.error().rv, wrap);
  return r;
}

Result<SecureBytes> AesWrap(const KeyRef& key, const CK_MECHANISM& mech, std::span<const uint8_t> in, bool wrap) {
  const bool pad = mech.mechanism == CKM_AES_KEY_WRAP_PAD;
  if (!IsA(key, CKK_AES))
    return Err(wrap ? CKR_WRAPPING_KEY_TYPE_INCONSISTENT : CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT,
               "AES key wrap needs an AES secret key");
  size_t key_len = key.secret->size();
  if (key_len != 16 && key_len != 24 && key_len != 32)
    return Err(wrap ? CKR_WRAPPING_KEY_SIZE_RANGE : CKR_UNWRAPPING_KEY_SIZE_RANGE, "AES key of {} bytes", key_len);
  const size_t iv_len = pad ? 4 : 8;
  const uint8_t* iv = nullptr;
  if (mech.ulParameterLen != 0) {
    if (mech.ulParameterLen != iv_len || mech.pParameter == nullptr)
      return Err(CKR_MECHANISM_PARAM_INVALID, "AES key wrap IV must be {} bytes or absent", iv_len);
    iv = static_cast<const uint8_t*>(mech.pParameter);
  }
  if (wrap) {
    if (in.empty() || in.size() > kMaxWrapInput || (!pad && (in.size() < 16 || in.size() % 8 != 0)))
      return Err(CKR_KEY_SIZE_RANGE, "key of {} bytes cannot be wrapped with {}", in.size(),
                 pad ? "CKM_AES_KEY_WRAP_PAD" : "CKM_AES_KEY_WRAP (multiple of 8, at least 16)");
  } else {
    if (in.size() > kMaxWrapInput + 16 || in.size() % 8 != 0 || in.size() < (pad ? 16u : 24u))
      return Err(CKR_WRAPPED_KEY_LEN_RANGE, "wrapped key of {} bytes has an invalid length", in.size());
  }
  const EVP_CIPHER* cipher = Aes(pad ? AesMode::kWrapPad : AesMode::kWrap, key_len);
  EvpCipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  if (cipher == nullptr || !ctx) return SslFailure("AES key wrap setup");
  EVP_CIPHER_CTX_set_flags(ctx.get(), EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
  if (EVP_CipherInit_ex2(ctx.get(), cipher, key.secret->data(), iv, wrap ? 1 : 0, nullptr) != 1)
    return SslFailure("AES key wrap setup");
  SecureBytes out(in.size() + 16);
  int n = 0;
  if (EVP_CipherUpdate(ctx.get(), out.data(), &n, in.data(), static_cast<int>(in.size())) != 1 || n <= 0) {
    if (wrap) return SslFailure("AES key wrap");
    ERR_clear_error();
    return Err(CKR_WRAPPED_KEY_INVALID, "wrapped key failed the integrity check");
  }
  out.resize(static_cast<size_t>(n));
  return out;
}

// ---- digest --------------------------------------------------------------------------------

class DigestOpImpl final : public DigestOp {
 public:
  Status Init(HashAlg h) {
    const EVP_MD* md = Md(h);
    len_ = MdLen(h);
    ctx_.reset(EVP_MD_CTX_new());
    if (md == nullptr || !ctx_ || EVP_DigestInit_ex2(ctx_.get(), md, nullptr) != 1) return SslFailure("digest setup");
    return OkStatus();
  }
  size_t Length() const override { return len_; }
  Status Update(std::span<const uint8_t> data) override {
    if (dead_) return Dead();
    if (EVP_DigestUpdate(ctx_.get(), data.data(), data.size()) != 1) {
      dead_ = true;
      return SslFailure("EVP_DigestUpdate");
    }
    return OkStatus();
  }
  Result<Bytes> Final() override {
    if (dead_) return Dead();
    dead_ = true;
    Bytes out(len_);
    unsigned int n = 0;
    if (EVP_DigestFinal_ex(ctx_.get(), out.data(), &n) != 1) return SslFailure("EVP_DigestFinal_ex");
    out.resize(n);
    return out;
  }

 private:
  EvpMdCtxPtr ctx_;
  size_t len_ = 0;
  bool dead_ = false;
};

}  // namespace

// ---- factories -----------------------------------------------------------------------------

Result<std::unique_ptr<SignOp>> NewSignOp(const KeyRef& key, const CK_MECHANISM& mech) {
  VAULTP11_RETURN_IF_ERROR(CheckLibCtx());
  auto op = std::make_unique<SignOpImpl>();
  VAULTP11_RETURN_IF_ERROR(op->Init(key, mech));
  return std::unique_ptr<SignOp>(std::move(op));
}

Result<std::unique_ptr<VerifyOp>> NewVerifyOp(const KeyRef& key, const CK_MECHANISM& mech) {
  VAULTP11_RETURN_IF_ERROR(CheckLibCtx());
  auto op = std::make_unique<VerifyOpImpl>();
  VAULTP11_RETURN_IF_ERROR(op->Init(key, mech));
  return std::unique_ptr<VerifyOp>(std::move(op));
}

Result<std::unique_ptr<CipherOp>> NewEncryptOp(const KeyRef& key, const CK_MECHANISM& mech) {
  return NewCipherOp(key, mech, /*encrypt=*/true);
}

Result<std::unique_ptr<CipherOp>> NewDecryptOp(const KeyRef& key, const CK_MECHANISM& mech) {
  return NewCipherOp(key, mech, /*encrypt=*/false);
}

Result<Bytes> Wrap(const KeyRef& wrapping_key, const CK_MECHANISM& mech, std::span<const uint8_t> key_bytes) {
  VAULTP11_RETURN_IF_ERROR(CheckLibCtx());
  Result<SecureBytes> r = [&]() -> Result<SecureBytes> {
    switch (mech.mechanism) {
      case CKM_AES_KEY_WRAP:
      case CKM_AES_KEY_WRAP_PAD: return AesWrap(wrapping_key, mech, key_bytes, /*wrap=*/true);
      case CKM_RSA_PKCS:
      case CKM_RSA_PKCS_OAEP: return RsaWrap(wrapping_key, mech, key_bytes, /*wrap=*/true);
      default: return Err(CKR_MECHANISM_INVALID, "mechanism 0x{:x} cannot wrap keys", mech.mechanism);
    }
  }();
  if (!r.ok()) return r.error();
  return Bytes(r->begin(), r->end());
}

Result<SecureBytes> Unwrap(const KeyRef& unwrapping_key, const CK_MECHANISM& mech,
                           std::span<const uint8_t> wrapped) {
  VAULTP11_RETURN_IF_ERROR(CheckLibCtx());
  switch (mech.mechanism) {
    case CKM_AES_KEY_WRAP:
    case CKM_AES_KEY_WRAP_PAD: return AesWrap(unwrapping_key, mech, wrapped, /*wrap=*/false);
    case CKM_RSA_PKCS:
    case CKM_RSA_PKCS_OAEP: return RsaWrap(unwrapping_key, mech, wrapped, /*wrap=*/false);
    default: return Err(CKR_MECHANISM_INVALID, "mechanism 0x{:x} cannot unwrap keys", mech.mechanism);
  }
}

Result<std::unique_ptr<DigestOp>> NewDigestOp(const CK_MECHANISM& mech) {
  std::optional<HashAlg> h = HashOfMech(mech.mechanism);
  if (!h) return Err(CKR_MECHANISM_INVALID, "mechanism 0x{:x} is not a digest", mech.mechanism);
  VAULTP11_RETURN_IF_ERROR(NoParam(mech));
  VAULTP11_RETURN_IF_ERROR(CheckLibCtx());
  auto op = std::make_unique<DigestOpImpl>();
  VAULTP11_RETURN_IF_ERROR(op->Init(*h));
  return std::unique_ptr<DigestOp>(std::move(op));
}

}  // namespace vaultp11::ossl

// The HSM seal (seal.h).
#include "store/seal.h"

#include <cstdlib>
#include <cstring>
#include <optional>

#include "backend/ossl/ossl_backend.h"
#include "backend/p11/inner_module.h"
#include "backend/p11/inner_token.h"
#include "util/pin_file.h"
#include "util/strings.h"

namespace vaultp11::store {

namespace {

constexpr uint8_t kBlobVersion = 1;
constexpr size_t kIvLen = 12, kTagLen = 16;

Result<SecureString> SealPin(const Options::Seal& s) {
  return ReadPin("store.seal: hsm " + s.hsm, s.pin_env, s.pin_file);
}

// One single-part AES-GCM operation in the token.
Result<SecureBytes> GcmOp(const p11::InnerToken& token, CK_OBJECT_HANDLE key, bool encrypt, std::span<const uint8_t> iv,
                          std::string_view aad, std::span<const uint8_t> in, const std::string& what) {
  CK_GCM_PARAMS gcm{};
  gcm.pIv = const_cast<uint8_t*>(iv.data());
  gcm.ulIvLen = iv.size();
  gcm.ulIvBits = iv.size() * 8;
  gcm.pAAD = reinterpret_cast<uint8_t*>(const_cast<char*>(aad.data()));
  gcm.ulAADLen = aad.size();
  gcm.ulTagBits = kTagLen * 8;
  CK_MECHANISM mech{CKM_AES_GCM, &gcm, sizeof(gcm)};
  VAULTP11_ASSIGN_OR_RETURN(p11::SessionLease lease, token.Acquire());
  const p11::InnerModule& m = lease.module();
  CK_RV rv = encrypt ? lease.Check(VAULTP11_P11_CALL(m, C_EncryptInit, lease.handle(), &mech, key))
                     : lease.Check(VAULTP11_P11_CALL(m, C_DecryptInit, lease.handle(), &mech, key));
  if (rv != CKR_OK) return Err(rv, "{}: {} init failed ({})", what, encrypt ? "C_Encrypt" : "C_Decrypt", p11::RvName(rv));
  SecureBytes out(in.size() + kTagLen + 32);
  CK_ULONG n = out.size();
  rv = encrypt ? VAULTP11_P11_CALL(m, C_Encrypt, lease.handle(), const_cast<uint8_t*>(in.data()), in.size(),
                                   out.data(), &n)
               : VAULTP11_P11_CALL(m, C_Decrypt, lease.handle(), const_cast<uint8_t*>(in.data()), in.size(),
                                   out.data(), &n);
  lease.Check(rv);
  if (rv == CKR_BUFFER_TOO_SMALL) lease.MarkBroken();  // the operation would still be active
  if (rv != CKR_OK) return Err(rv, "{}: {} failed ({})", what, encrypt ? "C_Encrypt" : "C_Decrypt", p11::RvName(rv));
  out.resize(n);
  return out;
}

}  // namespace

HsmSeal::~HsmSeal() = default;

Result<std::unique_ptr<HsmSeal>> HsmSeal::Open(const Options::Seal& seal, bool create, bool* created) {
  if (created != nullptr) *created = false;
  std::unique_ptr<HsmSeal> s(new HsmSeal());
  const std::string where = fmt::format("store.seal: key {} in hsm {}", QuotePrintable(seal.key_label), seal.hsm);
  auto fail = [&](const Error& e) { return Err(e.rv, "{}: {}", where, e.message); };
  auto quirks = p11::Quirks::Parse(seal.quirks);
  if (!quirks.ok()) return fail(quirks.error());
  auto module = p11::InnerModule::Load(seal.module, *quirks);
  if (!module.ok()) return fail(module.error());
  auto pin = SealPin(seal);
  if (!pin.ok()) return fail(pin.error());
  auto token = p11::InnerToken::Open(*module, seal.token, *pin);
  if (!token.ok()) return fail(token.error());
  s->token_ = std::move(token).value();
  s->description_ = fmt::format("key {} in hsm {} ({})", QuotePrintable(seal.key_label), seal.hsm,
                                s->token_->description());

  const CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  const CK_KEY_TYPE kt = CKK_AES;
  p11::AttrTemplate find;
  find.Ulong(CKA_CLASS, cls).Ulong(CKA_KEY_TYPE, kt).Bool(CKA_TOKEN, true).Str(CKA_LABEL, seal.key_label);
  VAULTP11_ASSIGN_OR_RETURN(auto found, s->token_->FindObjects(find, 2));
  if (found.size() > 1)
    return Err(CKR_FUNCTION_FAILED, "{}: several AES keys have that label in {}; the seal needs exactly one", where,
               s->token_->description());
  if (found.empty()) {
    if (!create)
      return Err(CKR_KEY_HANDLE_INVALID,
                 "{}: no such AES key in {} (a wrong store.seal.key_label or hsm, or a key deleted from the HSM; "
                 "`vaultp11 init` creates it for a new store)",
                 where, s->token_->description());
    CK_MECHANISM gen{CKM_AES_KEY_GEN, nullptr, 0};
    p11::AttrTemplate t;
    t.Ulong(CKA_CLASS, cls)
        .Ulong(CKA_KEY_TYPE, kt)
        .Ulong(CKA_VALUE_LEN, 32)
        .Bool(CKA_TOKEN, true)
        .Bool(CKA_PRIVATE, true)
        .Bool(CKA_SENSITIVE, true)
        .Bool(CKA_EXTRACTABLE, false)
        .Bool(CKA_ENCRYPT, true)
        .Bool(CKA_DECRYPT, true)
        .Bool(CKA_WRAP, false)
        .Bool(CKA_UNWRAP, false)
        .Bool(CKA_SIGN, false)
        .Bool(CKA_VERIFY, false)
        .Bool(CKA_DERIVE, false)
        .Str(CKA_LABEL, seal.key_label);
    auto key = s->token_->GenerateKey(gen, t);
    if (!key.ok()) return fail(key.error());
    s->key_ = *key;
    if (created != nullptr) *created = true;
    return s;
  }
  s->key_ = found[0];
  // A key that can leave the HSM would make the seal a file again.
  const CK_ATTRIBUTE_TYPE types[] = {CKA_EXTRACTABLE, CKA_SENSITIVE, CKA_VALUE_LEN};
  VAULTP11_ASSIGN_OR_RETURN(p11::AttributeValues attrs, s->token_->GetAttributes(s->key_, types));
  auto flag = [&](CK_ATTRIBUTE_TYPE t) -> std::optional<bool> {
    auto it = attrs.find(t);
    if (it == attrs.end() || !it->second.ok() || it->second.value.size() != sizeof(CK_BBOOL)) return std::nullopt;
    return it->second.value[0] != CK_FALSE;
  };
  if (flag(CKA_EXTRACTABLE).value_or(true) || !flag(CKA_SENSITIVE).value_or(false))
    return Err(CKR_KEY_FUNCTION_NOT_PERMITTED,
               "{}: the key in {} is extractable or not sensitive; the seal needs a key that never leaves the HSM",
               where, s->token_->description());
  if (auto it = attrs.find(CKA_VALUE_LEN);
      it != attrs.end() && it->second.ok() && it->second.value.size() == sizeof(CK_ULONG)) {
    CK_ULONG len = 0;
    std::memcpy(&len, it->second.value.data(), sizeof(len));
    if (len != 32)
      return Err(CKR_KEY_SIZE_RANGE, "{}: the key in {} is AES-{}, the seal needs AES-256", where,
                 s->token_->description(), len * 8);
  }
  return s;
}

Result<Bytes> HsmSeal::Seal(std::span<const uint8_t> plain, std::string_view aad) const {
  uint8_t iv[kIvLen];
  VAULTP11_RETURN_IF_ERROR(ossl::RandomBytes(iv));
  VAULTP11_ASSIGN_OR_RETURN(SecureBytes ct, GcmOp(*token_, key_, true, iv, aad, plain, "sealing with " + description_));
  if (ct.size() != plain.size() + kTagLen)
    return Err(CKR_DEVICE_ERROR, "sealing with {}: unexpected ciphertext length", description_);
  Bytes out;
  out.push_back(kBlobVersion);
  out.insert(out.end(), iv, iv + kIvLen);
  out.insert(out.end(), ct.begin(), ct.end());
  return out;
}

Result<SecureBytes> HsmSeal::Unseal(std::span<const uint8_t> blob, std::string_view aad) const {
  if (blob.size() < 1 + kIvLen + kTagLen || blob[0] != kBlobVersion)
    return Err(CKR_DEVICE_ERROR, "the sealed root key is malformed (tampered database)");
  auto plain = GcmOp(*token_, key_, false, blob.subspan(1, kIvLen), aad, blob.subspan(1 + kIvLen),
                     "unsealing with " + description_);
  if (!plain.ok()) {
    if (plain.rv() == CKR_ENCRYPTED_DATA_INVALID || plain.rv() == CKR_ENCRYPTED_DATA_LEN_RANGE ||
        plain.rv() == CKR_FUNCTION_FAILED || plain.rv() == CKR_GENERAL_ERROR)
      return Err(CKR_DEVICE_ERROR,
                 "the sealed root key does not open with {} (another HSM key than the store was sealed with, or a "
                 "tampered database)",
                 description_);
    return plain.error();
  }
  return plain;
}

}  // namespace vaultp11::store

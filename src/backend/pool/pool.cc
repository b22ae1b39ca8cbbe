#include "backend/pool/pool.h"

#include "backend/ossl/ossl_backend.h"
#include "util/ossl_ptr.h"

#include <openssl/evp.h>

#include <algorithm>

#include "util/log.h"

namespace vaultp11::pool {
namespace {

std::span<const uint8_t> DomainId() {
  return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(kDomainLabel.data()), kDomainLabel.size());
}

CK_BYTE_PTR Ptr(std::span<const uint8_t> s) { return const_cast<CK_BYTE_PTR>(s.data()); }

// A raw session on one slot of a module, closed (and logged out, if it logged in) at scope end.
class RawSession {
 public:
  RawSession(std::shared_ptr<p11::InnerModule> m, CK_SLOT_ID slot) : m_(std::move(m)), slot_(slot) {}
  ~RawSession() {
    if (logged_in_) VAULTP11_P11_CALL(*m_, C_Logout, h_);
    if (h_ != CK_INVALID_HANDLE) VAULTP11_P11_CALL(*m_, C_CloseSession, h_);
  }
  Status Open(bool rw) {
    CK_FLAGS flags = CKF_SERIAL_SESSION | (rw ? CKF_RW_SESSION : 0);
    CK_RV rv = VAULTP11_P11_CALL(*m_, C_OpenSession, slot_, flags, nullptr, nullptr, &h_);
    if (rv != CKR_OK) return Err(rv, "opening a session on slot {} of {} failed ({})", slot_, m_->path(), p11::RvName(rv));
    return OkStatus();
  }
  Status LoginSo(const SecureString& pin) {
    CK_RV rv = VAULTP11_P11_CALL(*m_, C_Login, h_, CKU_SO,
                                 reinterpret_cast<CK_UTF8CHAR_PTR>(const_cast<char*>(pin.data())),
                                 static_cast<CK_ULONG>(pin.size()));
    if (rv == CKR_USER_ALREADY_LOGGED_IN) rv = CKR_OK;
    if (rv != CKR_OK) return Err(rv, "SO login to slot {} of {} failed ({})", slot_, m_->path(), p11::RvName(rv));
    logged_in_ = true;
    return OkStatus();
  }
  // The domain key's handle, or CK_INVALID_HANDLE.
  Result<CK_OBJECT_HANDLE> FindDomain() {
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                        {CKA_LABEL, Ptr(DomainId()), DomainId().size()},
                        {CKA_ID, Ptr(DomainId()), DomainId().size()},
                        {CKA_TRUSTED, &yes, sizeof(yes)}};
    CK_RV rv = VAULTP11_P11_CALL(*m_, C_FindObjectsInit, h_, t, 4);
    if (rv != CKR_OK) return Err(rv, "C_FindObjectsInit on {} failed ({})", m_->path(), p11::RvName(rv));
    CK_OBJECT_HANDLE found[2];
    CK_ULONG n = 0;
    rv = VAULTP11_P11_CALL(*m_, C_FindObjects, h_, found, 2, &n);
    VAULTP11_P11_CALL(*m_, C_FindObjectsFinal, h_);
    if (rv != CKR_OK) return Err(rv, "C_FindObjects on {} failed ({})", m_->path(), p11::RvName(rv));
    if (n > 1) return Err(CKR_DEVICE_ERROR, "slot {} of {} holds two security-domain keys", slot_, m_->path());
    return n == 0 ? CK_INVALID_HANDLE : found[0];
  }
  Result<Bytes> CheckValue(CK_OBJECT_HANDLE k) {
    uint8_t buf[16];
    CK_ATTRIBUTE a = {CKA_CHECK_VALUE, buf, sizeof(buf)};
    CK_RV rv = VAULTP11_P11_CALL(*m_, C_GetAttributeValue, h_, k, &a, 1);
    if (rv != CKR_OK || a.ulValueLen == CK_UNAVAILABLE_INFORMATION || a.ulValueLen == 0 || a.ulValueLen > sizeof(buf))
      return Err(CKR_DEVICE_ERROR, "slot {} of {} did not give the security domain's CKA_CHECK_VALUE ({})", slot_,
                 m_->path(), p11::RvName(rv));
    return Bytes(buf, buf + a.ulValueLen);
  }
  CK_SESSION_HANDLE handle() const { return h_; }
  const p11::InnerModule& module() const { return *m_; }

 private:
  std::shared_ptr<p11::InnerModule> m_;
  CK_SLOT_ID slot_;
  CK_SESSION_HANDLE h_ = CK_INVALID_HANDLE;
  bool logged_in_ = false;
};

}  // namespace

Result<CK_OBJECT_HANDLE> FindDomainKey(const p11::InnerToken& t) {
  p11::AttrTemplate tmpl;
  tmpl.Ulong(CKA_CLASS, CKO_SECRET_KEY).Data(CKA_LABEL, DomainId()).Data(CKA_ID, DomainId()).Bool(CKA_TRUSTED, true);
  VAULTP11_ASSIGN_OR_RETURN(auto found, t.FindObjects(tmpl, 2));
  if (found.size() > 1) return Err(CKR_DEVICE_ERROR, "{} holds two security-domain keys", t.description());
  return found.empty() ? CK_INVALID_HANDLE : found[0];
}

HsmPool::HsmPool(std::string name, std::vector<Member> members, size_t quorum)
    : name_(std::move(name)), members_(std::move(members)), quorum_(quorum) {}

size_t HsmPool::healthy() const {
  return static_cast<size_t>(std::count_if(members_.begin(), members_.end(), [](const Member& m) { return m.token != nullptr; }));
}

size_t HsmPool::Quorum() const {
  if (quorum_ > 0) return quorum_;
  size_t floor = members_.size() >= 2 ? 2 : 1;
  return std::max(healthy(), floor);
}

Result<size_t> HsmPool::GenerationMember() const {
  size_t h = healthy();
  if (h < Quorum()) {
    std::string why;
    for (const Member& m : members_)
      if (!m.token) why += fmt::format("; hsm {}: {}", m.name, m.unavailable);
    return Err(CKR_DEVICE_ERROR, "pool {}: {} of {} members are available, the quorum is {}{}", name_, h,
               members_.size(), Quorum(), why);
  }
  std::string lacking;
  for (size_t i = 0; i < members_.size(); ++i) {
    if (!members_[i].token) continue;
    auto dk = FindDomainKey(*members_[i].token);
    if (!dk.ok()) {
      log::Warning("pool {}: hsm {}: {}", name_, members_[i].name, dk.error().message);
      continue;
    }
    if (dk.value() != CK_INVALID_HANDLE) return i;
    lacking += (lacking.empty() ? "" : ", ") + members_[i].name;
  }
  return Err(CKR_FUNCTION_FAILED,
             "pool {} has no security domain (members without it: {}): run `vaultp11 pool init {}` first", name_,
             lacking.empty() ? "none reachable" : lacking, name_);
}

Result<std::vector<size_t>> HsmPool::Replicate(size_t source, CK_OBJECT_HANDLE key, std::span<const uint8_t> inner_id,
                                               std::span<const CK_ATTRIBUTE> unwrap_template,
                                               std::span<const CK_ATTRIBUTE> public_template) const {
  if (source >= members_.size() || !members_[source].token) return Err(CKR_GENERAL_ERROR, "bad source member");
  const p11::InnerToken& src = *members_[source].token;
  VAULTP11_ASSIGN_OR_RETURN(CK_OBJECT_HANDLE sd, FindDomainKey(src));
  if (sd == CK_INVALID_HANDLE)
    return Err(CKR_DEVICE_ERROR, "pool {}: hsm {} lost its security domain", name_, members_[source].name);
  CK_MECHANISM mech{kReplicationMechanism, nullptr, 0};
  VAULTP11_ASSIGN_OR_RETURN(Bytes wrapped, src.WrapKey(mech, sd, key));
  std::vector<size_t> have{source};
  std::string failures;
  auto fail = [&](size_t i, const std::string& why) {
    failures += fmt::format("; hsm {}: {}", members_[i].name, why);
    log::Warning("pool {}: copying a key to hsm {} failed: {}", name_, members_[i].name, why);
  };
  for (size_t i = 0; i < members_.size(); ++i) {
    if (i == source) continue;
    const Member& m = members_[i];
    if (!m.token) {
      fail(i, "unavailable: " + m.unavailable);
      continue;
    }
    auto dk = FindDomainKey(*m.token);
    if (!dk.ok()) {
      fail(i, dk.error().message);
      continue;
    }
    if (dk.value() == CK_INVALID_HANDLE) {
      fail(i, "it has no security domain (restore it, or run `vaultp11 pool init`)");
      continue;
    }
    auto h = m.token->UnwrapKey(mech, dk.value(), wrapped, unwrap_template);
    if (!h.ok()) {
      fail(i, h.error().message);
      continue;
    }
    if (!public_template.empty()) {
      auto ph = m.token->CreateObject(public_template);
      if (!ph.ok()) {
        (void)m.token->DestroyObject(h.value());
        fail(i, ph.error().message);
        continue;
      }
    }
    have.push_back(i);
  }
  if (have.size() < Quorum()) {
    for (size_t i : have)
      if (i != source) DestroyOn(i, inner_id);
    return Err(CKR_DEVICE_ERROR, "pool {}: the new key reached {} of {} members, the quorum is {}{}", name_, have.size(),
               members_.size(), Quorum(), failures);
  }
  return have;
}

void HsmPool::DestroyOn(size_t i, std::span<const uint8_t> inner_id) const {
  if (i >= members_.size() || !members_[i].token || inner_id.empty()) return;
  p11::AttrTemplate t;
  t.Data(CKA_ID, inner_id);
  auto found = members_[i].token->FindObjects(t);
  if (!found.ok()) {
    log::Warning("pool {}: hsm {}: {}", name_, members_[i].name, found.error().message);
    return;
  }
  for (CK_OBJECT_HANDLE h : found.value()) {
    Status st = members_[i].token->DestroyObject(h);
    if (!st.ok()) log::Warning("pool {}: hsm {}: removing a key object failed: {}", name_, members_[i].name, st.error().message);
  }
}

void HsmPool::DestroyEverywhere(std::span<const uint8_t> inner_id) const {
  for (size_t i = 0; i < members_.size(); ++i) DestroyOn(i, inner_id);
}

// ---- security domain administration ------------------------------------------------------------

Result<DomainState> ReadDomain(const std::shared_ptr<p11::InnerModule>& m, CK_SLOT_ID slot) {
  RawSession s(m, slot);
  VAULTP11_RETURN_IF_ERROR(s.Open(false));
  VAULTP11_ASSIGN_OR_RETURN(CK_OBJECT_HANDLE k, s.FindDomain());
  DomainState st;
  if (k == CK_INVALID_HANDLE) return st;
  st.present = true;
  VAULTP11_ASSIGN_OR_RETURN(st.kcv, s.CheckValue(k));
  return st;
}

Result<Bytes> InstallDomain(const std::shared_ptr<p11::InnerModule>& m, CK_SLOT_ID slot, const SecureString& so_pin,
                            std::span<const uint8_t> value) {
  if (value.size() != kDomainKeyBytes) return Err(CKR_ARGUMENTS_BAD, "the security domain is an AES-256 key");
  RawSession s(m, slot);
  VAULTP11_RETURN_IF_ERROR(s.Open(true));
  VAULTP11_RETURN_IF_ERROR(s.LoginSo(so_pin));
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE type = CKK_AES;
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  // Public (CKA_PRIVATE false) so user sessions of every process find it; trusted, wrap and
  // unwrap only: no encrypt, so nobody can forge wrapped keys with it; never extractable.
  CK_ATTRIBUTE t[] = {
      {CKA_CLASS, &cls, sizeof(cls)},          {CKA_KEY_TYPE, &type, sizeof(type)},
      {CKA_TOKEN, &yes, 1},                    {CKA_PRIVATE, &no, 1},
      {CKA_SENSITIVE, &yes, 1},                {CKA_EXTRACTABLE, &no, 1},
      {CKA_TRUSTED, &yes, 1},                  {CKA_WRAP, &yes, 1},
      {CKA_UNWRAP, &yes, 1},                   {CKA_ENCRYPT, &no, 1},
      {CKA_DECRYPT, &no, 1},                   {CKA_SIGN, &no, 1},
      {CKA_VERIFY, &no, 1},                    {CKA_DERIVE, &no, 1},
      {CKA_LABEL, Ptr(DomainId()), DomainId().size()},
      {CKA_ID, Ptr(DomainId()), DomainId().size()},
      {CKA_VALUE, Ptr(value), static_cast<CK_ULONG>(value.size())},
  };
  CK_OBJECT_HANDLE k = CK_INVALID_HANDLE;
  CK_RV rv = VAULTP11_P11_CALL(*m, C_CreateObject, s.handle(), t, static_cast<CK_ULONG>(std::size(t)), &k);
  if (rv != CKR_OK)
    return Err(rv, "creating the security-domain key on slot {} of {} failed ({})", slot, m->path(), p11::RvName(rv));
  auto kcv = s.CheckValue(k);
  if (!kcv.ok()) VAULTP11_P11_CALL(*m, C_DestroyObject, s.handle(), k);
  return kcv;
}

Status RemoveDomain(const std::shared_ptr<p11::InnerModule>& m, CK_SLOT_ID slot, const SecureString& so_pin) {
  RawSession s(m, slot);
  VAULTP11_RETURN_IF_ERROR(s.Open(true));
  VAULTP11_RETURN_IF_ERROR(s.LoginSo(so_pin));
  VAULTP11_ASSIGN_OR_RETURN(CK_OBJECT_HANDLE k, s.FindDomain());
  if (k == CK_INVALID_HANDLE) return OkStatus();
  CK_RV rv = VAULTP11_P11_CALL(*m, C_DestroyObject, s.handle(), k);
  if (rv != CKR_OK) return Err(rv, "removing the security-domain key failed ({})", p11::RvName(rv));
  return OkStatus();
}

Result<Bytes> AesCheckValue(std::span<const uint8_t> key) {
  const char* name = key.size() == 16 ? "AES-128-ECB" : key.size() == 24 ? "AES-192-ECB"
                     : key.size() == 32 ? "AES-256-ECB" : nullptr;
  if (name == nullptr) return Err(CKR_KEY_SIZE_RANGE, "not an AES key length");
  // The module's own library context, never the process default one.
  EvpCipherPtr c(EVP_CIPHER_fetch(ossl::LibCtx(), name, nullptr));
  EvpCipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  if (!c || !ctx) return Err(CKR_HOST_MEMORY, "AES-ECB is not available");
  uint8_t zero[16] = {0}, out[32];
  int n = 0;
  bool ok = EVP_EncryptInit_ex2(ctx.get(), c.get(), key.data(), nullptr, nullptr) == 1 &&
            EVP_CIPHER_CTX_set_padding(ctx.get(), 0) == 1 &&
            EVP_EncryptUpdate(ctx.get(), out, &n, zero, sizeof(zero)) == 1 && n == 16;
  if (!ok) return Err(CKR_FUNCTION_FAILED, "AES check value computation failed");
  return Bytes(out, out + 3);
}

}  // namespace vaultp11::pool

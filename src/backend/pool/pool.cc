#include "backend/pool/pool.h"

#include "backend/ossl/ossl_backend.h"
#include "util/ossl_ptr.h"

#include <openssl/evp.h>
#include <pthread.h>

#include <algorithm>
#include <cstring>
#include <utility>

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

// ---- members and balancing ---------------------------------------------------------------------

struct HsmPool::MemberState {
  std::string name;
  std::function<Result<std::shared_ptr<p11::InnerToken>>()> reopen;
  mutable std::mutex mu;                   // guards token and unavailable
  std::shared_ptr<p11::InnerToken> token;  // the last one opened; kept while out of service (probed)
  std::string unavailable;                 // why it is out of service
  std::atomic<bool> up{false};
  std::atomic<uint64_t> generation{1};
  std::atomic<int64_t> outstanding{0};
  std::atomic<bool> needs_reconcile{true};
  std::vector<Bytes> pending_destroy;  // guarded by mu: keys deleted while it was out of service
};

MemberLease& MemberLease::operator=(MemberLease&& o) noexcept {
  if (this != &o) {
    Release();
    index = o.index;
    generation = o.generation;
    token = std::move(o.token);
    pool_ = std::exchange(o.pool_, nullptr);
  }
  return *this;
}

void MemberLease::Release() {
  if (pool_ != nullptr) pool_->members_[index]->outstanding.fetch_sub(1, std::memory_order_relaxed);
  pool_ = nullptr;
  token.reset();
}

HsmPool::HsmPool(std::string name, std::vector<MemberSpec> members, Options options)
    : name_(std::move(name)), options_(options) {
  for (MemberSpec& m : members) {
    auto st = std::make_unique<MemberState>();
    st->name = std::move(m.name);
    st->reopen = std::move(m.reopen);
    st->token = std::move(m.token);
    st->unavailable = st->token ? "" : std::move(m.unavailable);
    st->up = st->token != nullptr;
    members_.push_back(std::move(st));
  }
}

HsmPool::~HsmPool() { StopHealthCheck(); }

const std::string& HsmPool::member_name(size_t i) const { return members_[i]->name; }

std::shared_ptr<p11::InnerToken> HsmPool::Token(size_t i) const {
  const MemberState& m = *members_[i];
  if (!m.up.load(std::memory_order_acquire)) return nullptr;
  std::lock_guard<std::mutex> l(m.mu);
  return m.token;
}

std::string HsmPool::Unavailable(size_t i) const {
  const MemberState& m = *members_[i];
  std::lock_guard<std::mutex> l(m.mu);
  return m.up ? "" : m.unavailable;
}

uint64_t HsmPool::Generation(size_t i) const { return members_[i]->generation.load(std::memory_order_acquire); }

size_t HsmPool::healthy() const {
  return static_cast<size_t>(std::count_if(members_.begin(), members_.end(),
                                           [](const auto& m) { return m->up.load(std::memory_order_acquire); }));
}

size_t HsmPool::Quorum() const {
  if (options_.quorum > 0) return options_.quorum;
  size_t floor = members_.size() >= 2 ? 2 : 1;
  return std::max(healthy(), floor);
}

bool HsmPool::IsMemberFailure(CK_RV rv) {
  switch (rv) {
    case CKR_DEVICE_ERROR:
    case CKR_DEVICE_REMOVED:
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_TOKEN_NOT_RECOGNIZED:
    case CKR_SESSION_HANDLE_INVALID:
    case CKR_SESSION_CLOSED:
    case CKR_CRYPTOKI_NOT_INITIALIZED:
    case CKR_GENERAL_ERROR:
      return true;
    default:
      return false;
  }
}

Result<MemberLease> HsmPool::Acquire(const std::vector<bool>& tried) const {
  const size_t n = members_.size();
  std::vector<bool> skip = tried;
  skip.resize(n, false);
  for (;;) {
    const size_t start = round_robin_.fetch_add(1, std::memory_order_relaxed);
    size_t best = n;
    int64_t best_out = 0;
    for (size_t k = 0; k < n; ++k) {
      size_t i = (start + k) % n;
      const MemberState& m = *members_[i];
      if (skip[i] || !m.up.load(std::memory_order_acquire)) continue;
      int64_t out = m.outstanding.load(std::memory_order_relaxed);
      if (best == n || out < best_out) {
        best = i;
        best_out = out;
      }
    }
    if (best == n) {
      std::string why;
      for (size_t i = 0; i < n; ++i) {
        std::string u = Unavailable(i);
        why += fmt::format("; hsm {}: {}", members_[i]->name, u.empty() ? "failed for this request" : u);
      }
      return Err(CKR_DEVICE_ERROR, "pool {}: no member can serve the request{}", name_, why);
    }
    MemberState& m = *members_[best];
    MemberLease lease;
    {
      std::lock_guard<std::mutex> l(m.mu);
      if (!m.up.load(std::memory_order_acquire) || !m.token) {
        skip[best] = true;  // taken out meanwhile
        continue;
      }
      lease.token = m.token;
      lease.generation = m.generation.load(std::memory_order_acquire);
    }
    lease.index = best;
    lease.pool_ = this;
    m.outstanding.fetch_add(1, std::memory_order_relaxed);
    return lease;
  }
}

bool HsmPool::ReportFailure(size_t i, uint64_t generation, const Error& e) const {
  if (!IsMemberFailure(e.rv)) return false;
  MemberState& m = *members_[i];
  // Some HSMs answer a bad request with CKR_DEVICE_ERROR or CKR_GENERAL_ERROR: a member that
  // still answers a simple question is not down, and the error is the request's.
  if (auto t = Token(i); t && (e.rv == CKR_DEVICE_ERROR || e.rv == CKR_GENERAL_ERROR) && FindDomainKey(*t).ok())
    return false;
  bool taken_out = false;
  {
    std::lock_guard<std::mutex> l(m.mu);
    if (m.up.load() && m.generation.load() == generation) {
      m.up.store(false, std::memory_order_release);
      m.unavailable = fmt::format("failed with {}: {}", p11::RvName(e.rv), e.message);
      taken_out = true;
    }
  }
  if (!taken_out) return true;
  log::Warning("pool {}: hsm {} taken out of service ({}): {}", name_, m.name, p11::RvName(e.rv), e.message);
  std::function<void()> notify;
  {
    std::lock_guard<std::mutex> l(health_mu_);
    notify = on_change_;
  }
  if (notify) notify();
  Wake();
  return true;
}

void HsmPool::ReportMissingKey(size_t i) const {
  members_[i]->needs_reconcile.store(true, std::memory_order_release);
  Wake();
}

Result<size_t> HsmPool::GenerationMember(const std::vector<bool>& exclude) const {
  size_t h = healthy();
  if (h < Quorum()) {
    std::string why;
    for (size_t i = 0; i < members_.size(); ++i)
      if (!members_[i]->up) why += fmt::format("; hsm {}: {}", members_[i]->name, Unavailable(i));
    return Err(CKR_DEVICE_ERROR, "pool {}: {} of {} members are available, the quorum is {}{}", name_, h,
               members_.size(), Quorum(), why);
  }
  std::string lacking;
  const size_t n = members_.size(), start = round_robin_.fetch_add(1, std::memory_order_relaxed);
  for (size_t k = 0; k < n; ++k) {
    size_t i = (start + k) % n;
    if (i < exclude.size() && exclude[i]) continue;
    const uint64_t generation = Generation(i);
    auto token = Token(i);
    if (!token) continue;
    auto dk = FindDomainKey(*token);
    if (!dk.ok()) {
      ReportFailure(i, generation, dk.error());
      log::Warning("pool {}: hsm {}: {}", name_, members_[i]->name, dk.error().message);
      continue;
    }
    if (dk.value() != CK_INVALID_HANDLE) return i;
    lacking += (lacking.empty() ? "" : ", ") + members_[i]->name;
  }
  if (lacking.empty()) return Err(CKR_DEVICE_ERROR, "pool {}: no member can generate the key", name_);
  return Err(CKR_FUNCTION_FAILED,
             "pool {} has no security domain (members without it: {}): run `vaultp11 pool init {}` first", name_,
             lacking, name_);
}

// ---- copies ----------------------------------------------------------------------------------

namespace {

// Usage attributes a pool key copy carries, and the public values of a private key's pair.
constexpr CK_ATTRIBUTE_TYPE kUsage[] = {CKA_SIGN, CKA_DECRYPT, CKA_ENCRYPT, CKA_WRAP, CKA_UNWRAP};

std::vector<CK_ATTRIBUTE_TYPE> PublicTypes(CK_KEY_TYPE type) {
  if (type == CKK_RSA) return {CKA_MODULUS, CKA_PUBLIC_EXPONENT};
  if (type == CKK_EC) return {CKA_EC_PARAMS, CKA_EC_POINT};
  return {};
}

Result<std::shared_ptr<p11::InnerToken>> InService(const HsmPool& p, size_t i) {
  auto t = p.Token(i);
  if (!t) return Err(CKR_DEVICE_ERROR, "pool {}: hsm {} is out of service: {}", p.name(), p.member_name(i), p.Unavailable(i));
  return t;
}

Result<CK_OBJECT_HANDLE> DomainOn(const HsmPool& p, size_t i, const p11::InnerToken& t) {
  VAULTP11_ASSIGN_OR_RETURN(CK_OBJECT_HANDLE sd, FindDomainKey(t));
  if (sd == CK_INVALID_HANDLE)
    return Err(CKR_FUNCTION_FAILED, "pool {}: hsm {} holds no security domain (run `vaultp11 pool init {}`)", p.name(),
               p.member_name(i), p.name());
  return sd;
}

Result<CK_OBJECT_HANDLE> FindOne(const p11::InnerToken& t, CK_OBJECT_CLASS cls, std::span<const uint8_t> id) {
  p11::AttrTemplate tmpl;
  tmpl.Ulong(CKA_CLASS, cls).Data(CKA_ID, id);
  VAULTP11_ASSIGN_OR_RETURN(auto found, t.FindObjects(tmpl, 1));
  // Two copies (two processes copied a missed key at once) are the same key: either serves.
  if (found.empty()) return Err(CKR_KEY_HANDLE_INVALID, "{} holds no object of the key", t.description());
  return found[0];
}

}  // namespace

namespace {

Result<bool> HoldsOn(const p11::InnerToken& t, CK_OBJECT_CLASS cls, std::span<const uint8_t> inner_id) {
  p11::AttrTemplate tmpl;
  tmpl.Ulong(CKA_CLASS, cls).Data(CKA_ID, inner_id);
  VAULTP11_ASSIGN_OR_RETURN(auto found, t.FindObjects(tmpl, 1));
  return !found.empty();
}

}  // namespace

Result<bool> HsmPool::Holds(size_t i, CK_OBJECT_CLASS cls, std::span<const uint8_t> inner_id) const {
  VAULTP11_ASSIGN_OR_RETURN(auto t, InService(*this, i));
  return HoldsOn(*t, cls, inner_id);
}

Result<WrappedKey> HsmPool::Export(size_t i, CK_OBJECT_CLASS cls, std::span<const uint8_t> inner_id) const {
  VAULTP11_ASSIGN_OR_RETURN(auto t, InService(*this, i));
  VAULTP11_ASSIGN_OR_RETURN(CK_OBJECT_HANDLE sd, DomainOn(*this, i, *t));
  VAULTP11_ASSIGN_OR_RETURN(CK_OBJECT_HANDLE key, FindOne(*t, cls, inner_id));
  WrappedKey wk;
  wk.object_class = cls;
  wk.inner_id.assign(inner_id.begin(), inner_id.end());
  std::vector<CK_ATTRIBUTE_TYPE> want = {CKA_KEY_TYPE};
  want.insert(want.end(), std::begin(kUsage), std::end(kUsage));
  VAULTP11_ASSIGN_OR_RETURN(auto values, t->GetAttributes(key, want));
  if (!values[CKA_KEY_TYPE].ok() || values[CKA_KEY_TYPE].value.size() != sizeof(CK_ULONG))
    return Err(CKR_DEVICE_ERROR, "{} did not give the key's CKA_KEY_TYPE", t->description());
  std::memcpy(&wk.key_type, values[CKA_KEY_TYPE].value.data(), sizeof(CK_ULONG));
  for (CK_ATTRIBUTE_TYPE u : kUsage)
    if (values[u].ok() && values[u].value.size() == 1) wk.usage.emplace_back(u, values[u].value[0] != 0);
  if (cls == CKO_PRIVATE_KEY) {
    VAULTP11_ASSIGN_OR_RETURN(CK_OBJECT_HANDLE pub, FindOne(*t, CKO_PUBLIC_KEY, inner_id));
    auto types = PublicTypes(wk.key_type);
    if (types.empty()) return Err(CKR_KEY_TYPE_INCONSISTENT, "pool keys are RSA, EC or AES");
    VAULTP11_ASSIGN_OR_RETURN(auto pv, t->GetAttributes(pub, types));
    for (CK_ATTRIBUTE_TYPE type : types) {
      if (!pv[type].ok()) return Err(CKR_DEVICE_ERROR, "{} did not give the public key's values", t->description());
      wk.public_values.emplace_back(type, Bytes(pv[type].value.begin(), pv[type].value.end()));
    }
  }
  CK_MECHANISM mech{kReplicationMechanism, nullptr, 0};
  VAULTP11_ASSIGN_OR_RETURN(wk.wrapped, t->WrapKey(mech, sd, key));
  return wk;
}

Status HsmPool::Import(size_t i, const WrappedKey& wk) const {
  // Backups come from outside: only the shapes Export makes are accepted.
  if (wk.object_class != CKO_PRIVATE_KEY && wk.object_class != CKO_SECRET_KEY)
    return Err(CKR_TEMPLATE_INCONSISTENT, "a pool key is a private or secret key");
  if (wk.object_class == CKO_SECRET_KEY ? wk.key_type != CKK_AES : (wk.key_type != CKK_RSA && wk.key_type != CKK_EC))
    return Err(CKR_TEMPLATE_INCONSISTENT, "pool keys are RSA, EC or AES");
  if (wk.inner_id.empty() || wk.inner_id.size() > 64) return Err(CKR_TEMPLATE_INCONSISTENT, "bad key id");
  auto types = wk.object_class == CKO_PRIVATE_KEY ? PublicTypes(wk.key_type) : std::vector<CK_ATTRIBUTE_TYPE>{};
  if (wk.public_values.size() != types.size()) return Err(CKR_TEMPLATE_INCONSISTENT, "the public key's values are missing");
  for (size_t k = 0; k < types.size(); ++k)
    if (wk.public_values[k].first != types[k]) return Err(CKR_TEMPLATE_INCONSISTENT, "unexpected public key value");
  for (const auto& [type, on] : wk.usage)
    if (std::find(std::begin(kUsage), std::end(kUsage), type) == std::end(kUsage))
      return Err(CKR_TEMPLATE_INCONSISTENT, "unexpected key usage attribute 0x{:x}", type);

  VAULTP11_ASSIGN_OR_RETURN(auto t, InService(*this, i));
  return ImportTo(i, *t, wk);
}

Status HsmPool::ImportTo(size_t i, const p11::InnerToken& target, const WrappedKey& wk) const {
  const p11::InnerToken* t = &target;
  VAULTP11_ASSIGN_OR_RETURN(CK_OBJECT_HANDLE sd, DomainOn(*this, i, *t));
  p11::AttrTemplate uw;
  uw.Ulong(CKA_CLASS, wk.object_class).Ulong(CKA_KEY_TYPE, wk.key_type).Bool(CKA_TOKEN, true).Bool(CKA_PRIVATE, true)
      .Bool(CKA_SENSITIVE, true).Bool(CKA_EXTRACTABLE, true).Bool(CKA_WRAP_WITH_TRUSTED, true).Data(CKA_ID, wk.inner_id);
  for (const auto& [type, on] : wk.usage)
    if (wk.object_class == CKO_SECRET_KEY || type == CKA_SIGN || type == CKA_DECRYPT || type == CKA_UNWRAP)
      uw.Bool(type, on);
  CK_MECHANISM mech{kReplicationMechanism, nullptr, 0};
  VAULTP11_ASSIGN_OR_RETURN(CK_OBJECT_HANDLE h, t->UnwrapKey(mech, sd, wk.wrapped, uw));
  if (wk.object_class == CKO_PRIVATE_KEY) {
    p11::AttrTemplate pt;
    pt.Ulong(CKA_CLASS, CKO_PUBLIC_KEY).Ulong(CKA_KEY_TYPE, wk.key_type).Bool(CKA_TOKEN, true).Bool(CKA_PRIVATE, false)
        .Bool(CKA_VERIFY, true).Data(CKA_ID, wk.inner_id);
    if (wk.key_type == CKK_RSA) pt.Bool(CKA_ENCRYPT, true);
    for (const auto& [type, value] : wk.public_values) pt.Data(type, value);
    auto ph = t->CreateObject(pt);
    if (!ph.ok()) {
      (void)t->DestroyObject(h);
      return ph.error();
    }
  }
  return OkStatus();
}

Result<std::vector<size_t>> HsmPool::Replicate(size_t source, CK_OBJECT_CLASS cls,
                                               std::span<const uint8_t> inner_id) const {
  VAULTP11_ASSIGN_OR_RETURN(WrappedKey wk, Export(source, cls, inner_id));
  std::vector<size_t> have{source};
  std::string failures;
  for (size_t i = 0; i < members_.size(); ++i) {
    if (i == source) continue;
    uint64_t gen = Generation(i);
    Status st = Import(i, wk);
    if (st.ok()) {
      have.push_back(i);
      continue;
    }
    ReportFailure(i, gen, st.error());
    failures += fmt::format("; hsm {}: {}", members_[i]->name, st.error().message);
    log::Warning("pool {}: copying a key to hsm {} failed: {}", name_, members_[i]->name, st.error().message);
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
  if (inner_id.empty()) return;
  auto token = Token(i);
  if (!token) {
    // Out of service: destroyed there before it serves again (this process's deletions).
    std::lock_guard<std::mutex> l(members_[i]->mu);
    members_[i]->pending_destroy.emplace_back(inner_id.begin(), inner_id.end());
    return;
  }
  DestroyOnToken(i, *token, inner_id);
}

void HsmPool::DestroyOnToken(size_t i, const p11::InnerToken& token, std::span<const uint8_t> inner_id) const {
  p11::AttrTemplate t;
  t.Data(CKA_ID, inner_id);
  auto found = token.FindObjects(t);
  if (!found.ok()) {
    log::Warning("pool {}: hsm {}: {}", name_, members_[i]->name, found.error().message);
    return;
  }
  for (CK_OBJECT_HANDLE h : found.value()) {
    Status st = token.DestroyObject(h);
    if (!st.ok())
      log::Warning("pool {}: hsm {}: removing a key object failed: {}", name_, members_[i]->name, st.error().message);
  }
}

void HsmPool::DestroyEverywhere(std::span<const uint8_t> inner_id) const {
  for (size_t i = 0; i < members_.size(); ++i) DestroyOn(i, inner_id);
}

// ---- health check ------------------------------------------------------------------------------

void HsmPool::StartHealthCheck(Catalog catalog, std::function<void()> on_change) {
  Parking::Track(this);  // before health_mu_: the fork handlers take the list's lock first
  std::lock_guard<std::mutex> l(health_mu_);
  if (health_thread_.joinable() || stopped_) return;
  catalog_ = std::move(catalog);
  on_change_ = std::move(on_change);
  stop_ = false;
  health_thread_ = std::thread([this] { HealthLoop(); });
}

void HsmPool::StopHealthCheck() {
  std::thread t;
  {
    std::lock_guard<std::mutex> l(health_mu_);
    stop_ = true;
    stopped_ = true;
    on_change_ = nullptr;
    t = std::move(health_thread_);
  }
  health_cv_.notify_all();
  if (t.joinable()) t.join();
  Parking::Forget(this);
}

void HsmPool::Wake() const {
  {
    std::lock_guard<std::mutex> l(health_mu_);
    wake_ = true;
  }
  health_cv_.notify_all();
}

void HsmPool::HealthLoop() {
  std::unique_lock<std::mutex> l(health_mu_);
  while (!stop_) {
    wake_ = false;
    l.unlock();
    try {
      CheckNow();
    } catch (const std::exception& e) {  // never let the thread end the host process
      log::Error("pool {}: health check failed: {}", name_, e.what());
    } catch (...) {
      log::Error("pool {}: health check failed", name_);
    }
    l.lock();
    health_cv_.wait_for(l, options_.health_check_interval, [&] { return stop_ || wake_; });
  }
}

std::shared_ptr<p11::InnerToken> HsmPool::Probe(size_t i) const {
  MemberState& m = *members_[i];
  std::shared_ptr<p11::InnerToken> token;
  {
    std::lock_guard<std::mutex> l(m.mu);
    token = m.token;
  }
  std::string why;
  auto answers = [&](const p11::InnerToken& t) {
    auto dk = FindDomainKey(t);
    if (!dk.ok()) why = dk.error().message;
    return dk.ok();
  };
  bool ok = token && answers(*token);
  if (!ok && m.reopen) {
    // A member never opened, or whose module or token was reset: open it afresh.
    auto fresh = m.reopen();
    if (fresh.ok() && answers(*fresh.value())) {
      token = std::move(fresh).value();
      ok = true;
    } else if (!fresh.ok()) {
      why = fresh.error().message;
    }
  }
  if (ok) return token;
  std::lock_guard<std::mutex> l(m.mu);
  if (!why.empty()) m.unavailable = why;
  return nullptr;
}

Status HsmPool::Reconcile(size_t i, const p11::InnerToken& target) const {
  Catalog catalog;
  {
    std::lock_guard<std::mutex> l(health_mu_);
    catalog = catalog_;
  }
  if (!catalog) return OkStatus();
  size_t copied = 0;
  VAULTP11_ASSIGN_OR_RETURN(const std::vector<CatalogEntry> entries, catalog());
  for (const CatalogEntry& e : entries) {
    VAULTP11_ASSIGN_OR_RETURN(bool has, HoldsOn(target, e.object_class, e.inner_id));
    if (has) continue;
    Status done = Err(CKR_DEVICE_ERROR, "no member in service holds the key");
    for (size_t s = 0; s < members_.size() && !done.ok(); ++s) {
      if (s == i || !members_[s]->up) continue;
      uint64_t sgen = Generation(s);
      auto wk = Export(s, e.object_class, e.inner_id);
      if (!wk.ok()) {
        ReportFailure(s, sgen, wk.error());
        done = wk.error();
        continue;
      }
      done = ImportTo(i, target, wk.value());
      if (!done.ok() && IsMemberFailure(done.rv())) return done;
    }
    // Deleted (by this or another process) while it was being copied: no copy may outlive it.
    if (done.ok()) {
      // (A catalog that cannot be read now keeps the copy.)
      auto now = catalog();
      const bool still = !now.ok() || std::any_of(now->begin(), now->end(),
                                                   [&](const CatalogEntry& c) { return c.inner_id == e.inner_id; });
      if (!still) {
        DestroyOnToken(i, target, e.inner_id);
        continue;
      }
    }
    if (!done.ok() && done.rv() == CKR_KEY_HANDLE_INVALID) continue;  // on no member (being destroyed)
    if (!done.ok()) return done;
    ++copied;
  }
  if (copied > 0) log::Info("pool {}: copied {} missed key(s) to hsm {}", name_, copied, members_[i]->name);
  return OkStatus();
}

void HsmPool::CheckNow() const {
  std::lock_guard<std::mutex> check(check_mu_);
  bool changed = false;
  for (size_t i = 0; i < members_.size(); ++i) {
    MemberState& m = *members_[i];
    if (m.up.load(std::memory_order_acquire)) {
      // In service, but a key was found missing there (or the first pass since start).
      if (!m.needs_reconcile.exchange(false)) continue;
      auto token = Token(i);
      uint64_t gen = Generation(i);
      Status st = token ? Reconcile(i, *token) : OkStatus();
      if (!st.ok()) {
        m.needs_reconcile.store(true);
        if (!ReportFailure(i, gen, st.error()))
          log::Warning("pool {}: copying missed keys to hsm {} failed: {}", name_, m.name, st.error().message);
      }
      continue;
    }
    // Out of service: back once it answers, has lost the keys deleted meanwhile and holds
    // every key it missed.
    auto token = Probe(i);
    if (!token) continue;
    std::vector<Bytes> deleted;
    {
      std::lock_guard<std::mutex> l(m.mu);
      deleted.swap(m.pending_destroy);
    }
    for (const Bytes& id : deleted) DestroyOnToken(i, *token, id);
    Status st = Reconcile(i, *token);
    if (!st.ok()) {
      std::lock_guard<std::mutex> l(m.mu);
      m.unavailable = "copying the keys it missed failed: " + st.error().message;
      continue;
    }
    {
      std::lock_guard<std::mutex> l(m.mu);
      m.token = std::move(token);
      m.unavailable.clear();
      m.generation.fetch_add(1, std::memory_order_acq_rel);
      m.needs_reconcile.store(false);
      m.up.store(true, std::memory_order_release);
    }
    log::Info("pool {}: hsm {} is back in service", name_, m.name);
    changed = true;
  }
  if (!changed) return;
  std::function<void()> notify;
  {
    std::lock_guard<std::mutex> l(health_mu_);
    notify = on_change_;
  }
  if (notify) notify();
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

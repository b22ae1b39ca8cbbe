#include "backend/p11/inner_token.h"

#include <p11-kit/uri.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>

namespace vaultp11::p11 {

namespace internal {

// The shared state of one InnerToken: its pool of sessions and its login session. Leases hold
// it too, so a lease may outlive the InnerToken.
struct PoolState {
  std::shared_ptr<InnerModule> module;
  InnerToken::Options options;
  SecureString pin;  // kept to log in again after a fork or a lost login
  CK_TOKEN_INFO info{};
  std::string label, serial, description;
  CK_FLAGS session_flags = CKF_SERIAL_SESSION | CKF_RW_SESSION;
  std::vector<CK_MECHANISM_TYPE> mechanisms;  // sorted
  bool mechanisms_known = false;

  std::mutex mu;               // guards slot, idle, open, closed
  std::condition_variable cv;  // signalled when a session goes back or the pool resets
  CK_SLOT_ID slot = 0;
  std::vector<CK_SESSION_HANDLE> idle;
  size_t open = 0;                      // pool sessions of the current generation, leased or idle
  bool closed = false;                  // the InnerToken is gone: returned sessions are closed
  std::atomic<uint64_t> generation{0};  // module generation the pool's sessions belong to
  std::atomic<uint64_t> opened_total{0};
  std::atomic<uint64_t> closed_total{0};

  // Guards the login session and logging in. Held across inner calls, but only on the rare
  // paths (open, re-login, fork recovery, session objects), never by a pooled call.
  std::mutex anchor_mu;
  CK_SESSION_HANDLE anchor = CK_INVALID_HANDLE;
  std::atomic<bool> login_lost{true};

  bool Owns() const {
    return !module->ForkedSinceInit() && generation.load() == module->generation();
  }

  ~PoolState() {
    // Sessions of another generation or of the parent process are not ours to close: in a
    // re-initialised child the same numbers may name new sessions.
    if (!module || !Owns()) return;
    for (CK_SESSION_HANDLE h : idle) VAULTP11_P11_CALL(*module, C_CloseSession, h);
    if (anchor != CK_INVALID_HANDLE) VAULTP11_P11_CALL(*module, C_CloseSession, anchor);
  }
};

}  // namespace internal

using internal::PoolState;

namespace {

constexpr CK_SLOT_ID kNoSlotId = static_cast<CK_SLOT_ID>(-1);

template <size_t N>
std::string Field(const unsigned char (&f)[N]) {
  std::string s(reinterpret_cast<const char*>(f), N);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\0')) s.pop_back();
  return s;
}

// The spec as shown in messages: a pin-value in a URI is blanked.
std::string Shown(const std::string& spec) {
  if (spec.rfind("pkcs11:", 0) != 0) return spec;
  std::string out = spec;
  size_t p = out.find("pin-value=");
  if (p != std::string::npos) {
    size_t start = p + 10;
    size_t end = out.find_first_of(";&", start);
    out.replace(start, end == std::string::npos ? std::string::npos : end - start, "***");
  }
  return out;
}

bool SessionGone(CK_RV rv) { return rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED; }

struct UriDeleter {
  void operator()(P11KitUri* u) const { p11_kit_uri_free(u); }
};
using UriPtr = std::unique_ptr<P11KitUri, UriDeleter>;

using TokenPredicate = std::function<bool(CK_SLOT_ID, const CK_SLOT_INFO&, const CK_TOKEN_INFO&)>;

struct TokenMatch {
  CK_SLOT_ID slot = 0;
  CK_TOKEN_INFO info{};
};

// Finds the one initialised token present in `m` that `pred` accepts.
Result<TokenMatch> FindToken(const InnerModule& m, const std::string& shown,
                             const TokenPredicate& pred) {
  std::vector<CK_SLOT_ID> slots;
  CK_RV rv = CKR_OK;
  for (int attempt = 0; attempt < 4; ++attempt) {
    CK_ULONG n = 0;
    rv = VAULTP11_P11_CALL(m, C_GetSlotList, CK_TRUE, nullptr, &n);
    if (rv != CKR_OK) break;
    slots.resize(n);
    rv = VAULTP11_P11_CALL(m, C_GetSlotList, CK_TRUE, slots.data(), &n);
    if (rv == CKR_BUFFER_TOO_SMALL) continue;  // a token appeared between the two calls
    if (rv == CKR_OK) slots.resize(n);
    break;
  }
  if (rv != CKR_OK)
    return Err(rv, "inner module '{}': C_GetSlotList failed ({})", m.path(), RvName(rv));

  std::vector<TokenMatch> found;
  std::string present;
  for (CK_SLOT_ID slot : slots) {
    CK_TOKEN_INFO ti{};
    if (VAULTP11_P11_CALL(m, C_GetTokenInfo, slot, &ti) != CKR_OK) continue;
    if ((ti.flags & CKF_TOKEN_INITIALIZED) == 0) continue;  // e.g. SoftHSM's free slot
    CK_SLOT_INFO si{};
    if (VAULTP11_P11_CALL(m, C_GetSlotInfo, slot, &si) != CKR_OK) si = CK_SLOT_INFO{};
    if (!present.empty()) present += ", ";
    present += fmt::format("'{}' (serial {})", Field(ti.label), Field(ti.serialNumber));
    if (pred(slot, si, ti)) found.push_back(TokenMatch{slot, ti});
  }
  if (found.empty())
    return Err(CKR_TOKEN_NOT_PRESENT,
               "no token matching '{}' in inner module '{}' (tokens present: {})", shown, m.path(),
               present.empty() ? "none" : present);
  if (found.size() > 1)
    return Err(CKR_FUNCTION_FAILED,
               "'{}' matches {} tokens in inner module '{}' ({}); name one with a pkcs11: URI with "
               "serial=",
               shown, found.size(), m.path(), present);
  return found.front();
}

// Logs in on the login session (anchor_mu held).
CK_RV Login(PoolState& s) {
  const bool pin_pad = (s.info.flags & CKF_PROTECTED_AUTHENTICATION_PATH) != 0;
  if (s.pin.empty() && (s.info.flags & CKF_LOGIN_REQUIRED) == 0) return CKR_OK;
  CK_UTF8CHAR_PTR pin = nullptr;
  CK_ULONG len = 0;
  if (!(pin_pad && s.pin.empty())) {
    pin = reinterpret_cast<CK_UTF8CHAR_PTR>(s.pin.data());
    len = s.pin.size();
  }
  CK_RV rv = VAULTP11_P11_CALL(*s.module, C_Login, s.anchor, CKU_USER, pin, len);
  return rv == CKR_USER_ALREADY_LOGGED_IN ? CKR_OK : rv;
}

// Opens the login session if needed and logs in if needed (anchor_mu held).
Status EnsureLoggedIn(PoolState& s) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (s.anchor == CK_INVALID_HANDLE) {
      CK_SLOT_ID slot;
      {
        std::lock_guard<std::mutex> l(s.mu);
        slot = s.slot;
      }
      CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
      CK_RV rv =
          VAULTP11_P11_CALL(*s.module, C_OpenSession, slot, s.session_flags, nullptr, nullptr, &h);
      if (rv != CKR_OK)
        return Err(rv, "opening the login session on {} failed ({})", s.description, RvName(rv));
      s.anchor = h;
      s.login_lost = true;
    }
    if (!s.login_lost) return OkStatus();
    CK_RV rv = Login(s);
    if (rv == CKR_OK) {
      s.login_lost = false;
      return OkStatus();
    }
    if (SessionGone(rv) && attempt == 0) {
      s.anchor = CK_INVALID_HANDLE;
      continue;
    }
    return Err(rv, "login as user to {} failed ({})", s.description, RvName(rv));
  }
  return Err(CKR_GENERAL_ERROR, "login to {} failed", s.description);
}

bool NeedsRecover(const PoolState& s) {
  return s.login_lost.load(std::memory_order_acquire) || s.module->ForkedSinceInit() ||
         s.module->generation() != s.generation.load(std::memory_order_acquire);
}

std::vector<CK_ATTRIBUTE> Mutable(std::span<const CK_ATTRIBUTE> t) {
  return std::vector<CK_ATTRIBUTE>(t.begin(), t.end());
}

// What a Run callback sees: the session and a way to say it must not be reused.
struct CallCtx {
  CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
  bool broken = false;
};

}  // namespace

// ---- AttrTemplate ---------------------------------------------------------------------------

AttrTemplate& AttrTemplate::Add(CK_ATTRIBUTE_TYPE type, std::span<const uint8_t> value) {
  values_.emplace_back(value.begin(), value.end());
  SecureBytes& v = values_.back();
  attrs_.push_back(
      CK_ATTRIBUTE{type, v.empty() ? nullptr : v.data(), static_cast<CK_ULONG>(v.size())});
  return *this;
}
AttrTemplate& AttrTemplate::Bool(CK_ATTRIBUTE_TYPE type, bool value) {
  CK_BBOOL b = value ? CK_TRUE : CK_FALSE;
  return Add(type, std::span<const uint8_t>(&b, 1));
}
AttrTemplate& AttrTemplate::Ulong(CK_ATTRIBUTE_TYPE type, CK_ULONG value) {
  return Add(type,
             std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(&value), sizeof(value)));
}
AttrTemplate& AttrTemplate::Data(CK_ATTRIBUTE_TYPE type, std::span<const uint8_t> value) {
  return Add(type, value);
}
AttrTemplate& AttrTemplate::Str(CK_ATTRIBUTE_TYPE type, std::string_view value) {
  return Add(
      type, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(value.data()), value.size()));
}

bool IsSessionObject(std::span<const CK_ATTRIBUTE> tmpl) {
  for (const CK_ATTRIBUTE& a : tmpl) {
    if (a.type == CKA_TOKEN && a.pValue != nullptr && a.ulValueLen == sizeof(CK_BBOOL))
      return *static_cast<const CK_BBOOL*>(a.pValue) == CK_FALSE;
  }
  return true;  // CKA_TOKEN defaults to false
}

// ---- SessionLease ---------------------------------------------------------------------------

SessionLease& SessionLease::operator=(SessionLease&& o) noexcept {
  if (this != &o) {
    Release();
    pool_ = std::move(o.pool_);
    handle_ = o.handle_;
    generation_ = o.generation_;
    broken_ = o.broken_;
    o.pool_.reset();
    o.handle_ = CK_INVALID_HANDLE;
    o.broken_ = false;
  }
  return *this;
}

const InnerModule& SessionLease::module() const { return *pool_->module; }

CK_RV SessionLease::Check(CK_RV rv) {
  switch (rv) {
    case CKR_SESSION_HANDLE_INVALID:
    case CKR_SESSION_CLOSED:
    case CKR_DEVICE_REMOVED:
    case CKR_DEVICE_ERROR:
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_CRYPTOKI_NOT_INITIALIZED:
    case CKR_OPERATION_ACTIVE:  // something was left running on it
      broken_ = true;
      break;
    case CKR_USER_NOT_LOGGED_IN:
      if (pool_) pool_->login_lost = true;
      break;
    default:
      break;
  }
  return rv;
}

void SessionLease::Release() {
  if (!pool_) return;
  std::shared_ptr<PoolState> pool = std::move(pool_);
  pool_.reset();
  PoolState& s = *pool;
  bool close = false;
  {
    std::lock_guard<std::mutex> l(s.mu);
    if (generation_ != s.generation.load() || s.module->ForkedSinceInit()) {
      // The parent's session (or an older generation's): dropped, never closed here.
    } else if (broken_ || s.closed) {
      --s.open;
      close = true;
    } else {
      s.idle.push_back(handle_);
    }
  }
  s.cv.notify_one();
  if (close) {
    VAULTP11_P11_CALL(*s.module, C_CloseSession, handle_);
    if (broken_) s.closed_total.fetch_add(1, std::memory_order_relaxed);
  }
  handle_ = CK_INVALID_HANDLE;
  broken_ = false;
}

// ---- InnerToken: open, pool, recovery ------------------------------------------------------

namespace {
// The predicate that picks the token named by `token_spec` (a label or a pkcs11: URI).
Result<TokenPredicate> PredicateFor(const std::shared_ptr<InnerModule>& mp, const std::string& token_spec) {
  const InnerModule* m = mp.get();
  const std::string shown = Shown(token_spec);
  TokenPredicate pred;
  std::shared_ptr<P11KitUri> uri;
  if (token_spec.rfind("pkcs11:", 0) == 0) {
    uri.reset(p11_kit_uri_new(), [](P11KitUri* u) { p11_kit_uri_free(u); });
    if (!uri) return Err(CKR_HOST_MEMORY, "p11_kit_uri_new failed");
    int r =
        p11_kit_uri_parse(token_spec.c_str(),
                          static_cast<P11KitUriType>(P11_KIT_URI_FOR_TOKEN | P11_KIT_URI_FOR_SLOT |
                                                     P11_KIT_URI_FOR_MODULE_WITH_VERSION),
                          uri.get());
    if (r != P11_KIT_URI_OK)
      return Err(CKR_FUNCTION_FAILED, "token URI '{}' for inner module '{}' is invalid: {}", shown,
                 m->path(), p11_kit_uri_message(r));
    // Object attributes (object=, id=, type=) would make every match fail silently.
    if (p11_kit_uri_any_unrecognized(uri.get()))
      return Err(CKR_FUNCTION_FAILED,
                 "token URI '{}' for inner module '{}' has attributes that do not name a token, "
                 "slot or library",
                 shown, m->path());
    const CK_INFO module_info = m->info();
    pred = [uri, module_info](CK_SLOT_ID slot, const CK_SLOT_INFO& si, const CK_TOKEN_INFO& ti) {
      CK_SLOT_ID want = p11_kit_uri_get_slot_id(uri.get());
      if (want != kNoSlotId && want != slot) return false;
      return p11_kit_uri_match_module_info(uri.get(), &module_info) == 1 &&
             p11_kit_uri_match_slot_info(uri.get(), &si) == 1 &&
             p11_kit_uri_match_token_info(uri.get(), &ti) == 1;
    };
  } else {
    if (token_spec.empty())
      return Err(CKR_FUNCTION_FAILED, "empty token label for inner module '{}'", m->path());
    pred = [token_spec](CK_SLOT_ID, const CK_SLOT_INFO&, const CK_TOKEN_INFO& ti) {
      return Field(ti.label) == token_spec;
    };
  }
  return pred;
}

}  // namespace

Result<CK_SLOT_ID> FindTokenSlot(const std::shared_ptr<InnerModule>& m, const std::string& token_spec) {
  if (!m) return Err(CKR_DEVICE_ERROR, "no inner module for token '{}'", Shown(token_spec));
  VAULTP11_RETURN_IF_ERROR(m->ReinitializeIfForked());
  VAULTP11_ASSIGN_OR_RETURN(TokenPredicate pred, PredicateFor(m, token_spec));
  VAULTP11_ASSIGN_OR_RETURN(TokenMatch match, FindToken(*m, Shown(token_spec), pred));
  return match.slot;
}


Result<std::unique_ptr<InnerToken>> InnerToken::Open(std::shared_ptr<InnerModule> m,
                                                     const std::string& token_spec,
                                                     const SecureString& pin) {
  return Open(std::move(m), token_spec, pin, Options{});
}

Result<std::unique_ptr<InnerToken>> InnerToken::Open(std::shared_ptr<InnerModule> m,
                                                     const std::string& token_spec,
                                                     const SecureString& pin,
                                                     const Options& options) {
  if (!m) return Err(CKR_DEVICE_ERROR, "no inner module for token '{}'", Shown(token_spec));
  if (options.max_sessions == 0) return Err(CKR_ARGUMENTS_BAD, "max_sessions must be at least 1");
  VAULTP11_RETURN_IF_ERROR(m->ReinitializeIfForked());
  const std::string shown = Shown(token_spec);

  VAULTP11_ASSIGN_OR_RETURN(TokenPredicate pred, PredicateFor(m, token_spec));
  VAULTP11_ASSIGN_OR_RETURN(TokenMatch match, FindToken(*m, shown, pred));

  auto s = std::make_shared<PoolState>();
  s->module = m;
  s->options = options;
  s->pin = pin;
  s->info = match.info;
  s->slot = match.slot;
  s->label = Field(match.info.label);
  s->serial = Field(match.info.serialNumber);
  s->description = fmt::format("token '{}' (serial {}) in {}", s->label, s->serial, m->path());
  if (match.info.flags & CKF_WRITE_PROTECTED) s->session_flags = CKF_SERIAL_SESSION;
  s->generation = m->generation();

  CK_ULONG n = 0;
  if (VAULTP11_P11_CALL(*m, C_GetMechanismList, match.slot, nullptr, &n) == CKR_OK) {
    s->mechanisms.resize(n);
    if (VAULTP11_P11_CALL(*m, C_GetMechanismList, match.slot, s->mechanisms.data(), &n) == CKR_OK) {
      s->mechanisms.resize(n);
      std::sort(s->mechanisms.begin(), s->mechanisms.end());
      s->mechanisms_known = true;
    } else {
      s->mechanisms.clear();
    }
  }

  std::unique_ptr<InnerToken> token(new InnerToken(s));
  if (!options.login_at_open) {
    // login_lost is still true: the first Acquire or Run logs in (through Recover).
    log::Info("found inner {} (slot {}); it is logged in to at first use", s->description,
              match.slot);
    return token;
  }
  {
    std::lock_guard<std::mutex> g(s->anchor_mu);
    VAULTP11_RETURN_IF_ERROR(EnsureLoggedIn(*s));
  }
  log::Info("opened inner {} (slot {})", s->description, match.slot);
  return token;
}

InnerToken::~InnerToken() {
  if (!state_) return;
  std::vector<CK_SESSION_HANDLE> to_close;
  {
    std::lock_guard<std::mutex> l(state_->mu);
    state_->closed = true;
    if (state_->Owns()) to_close.swap(state_->idle);
    state_->open -= to_close.size();
  }
  for (CK_SESSION_HANDLE h : to_close) VAULTP11_P11_CALL(*state_->module, C_CloseSession, h);
  // The login session closes with the last lease (PoolState's destructor).
}

const std::shared_ptr<InnerModule>& InnerToken::module() const { return state_->module; }
const InnerToken::Options& InnerToken::options() const { return state_->options; }
CK_SLOT_ID InnerToken::slot_id() const {
  std::lock_guard<std::mutex> l(state_->mu);
  return state_->slot;
}
const CK_TOKEN_INFO& InnerToken::token_info() const { return state_->info; }
const std::string& InnerToken::label() const { return state_->label; }
const std::string& InnerToken::serial() const { return state_->serial; }
const std::string& InnerToken::description() const { return state_->description; }
const std::vector<CK_MECHANISM_TYPE>& InnerToken::mechanisms() const { return state_->mechanisms; }

bool InnerToken::SupportsMechanism(CK_MECHANISM_TYPE type) const {
  if (!state_->mechanisms_known) return true;
  return std::binary_search(state_->mechanisms.begin(), state_->mechanisms.end(), type);
}

Result<CK_MECHANISM_INFO> InnerToken::MechanismInfo(CK_MECHANISM_TYPE type) const {
  CK_MECHANISM_INFO info{};
  CK_RV rv = VAULTP11_P11_CALL(*state_->module, C_GetMechanismInfo, slot_id(), type, &info);
  if (rv != CKR_OK)
    return Err(rv, "C_GetMechanismInfo(0x{:x}) on {}: {}", type, state_->description, RvName(rv));
  return info;
}

Status InnerToken::Recover() const {
  PoolState& s = *state_;
  std::lock_guard<std::mutex> g(s.anchor_mu);
  VAULTP11_RETURN_IF_ERROR(s.module->ReinitializeIfForked());
  const uint64_t gen = s.module->generation();
  if (gen != s.generation.load()) {
    // A forked child: every session we knew belongs to the parent. Forget them (closing them
    // could close the child's own new sessions, which may reuse the numbers).
    {
      std::lock_guard<std::mutex> l(s.mu);
      s.idle.clear();
      s.open = 0;
      s.generation = gen;
    }
    s.cv.notify_all();
    s.anchor = CK_INVALID_HANDLE;
    s.login_lost = true;
    // A module that reset its state may number its slots differently: find ours again.
    const std::string label = s.label, serial = s.serial;
    VAULTP11_ASSIGN_OR_RETURN(
        TokenMatch match, FindToken(*s.module, s.description,
                                    [&](CK_SLOT_ID, const CK_SLOT_INFO&, const CK_TOKEN_INFO& ti) {
                                      return Field(ti.label) == label &&
                                             Field(ti.serialNumber) == serial;
                                    }));
    std::lock_guard<std::mutex> l(s.mu);
    s.slot = match.slot;
  }
  Status st = EnsureLoggedIn(s);
  // A deferred login that fails (a wrong PIN, a device that does not answer) is reported to
  // the caller's operation as a device failure, not as a PIN error the operation cannot have;
  // login_lost stays true, so the next call tries again.
  if (!st.ok() && !s.options.login_at_open && st.rv() != CKR_DEVICE_ERROR)
    return Err(CKR_DEVICE_ERROR, "{}", st.error().message);
  return st;
}

Result<SessionLease> InnerToken::Acquire() const {
  PoolState& s = *state_;
  if (NeedsRecover(s)) VAULTP11_RETURN_IF_ERROR(Recover());

  std::optional<std::chrono::steady_clock::time_point> deadline;  // read when first waiting
  std::unique_lock<std::mutex> l(s.mu);
  for (;;) {
    if (!s.idle.empty()) {
      CK_SESSION_HANDLE h = s.idle.back();
      s.idle.pop_back();
      return SessionLease(state_, h, s.generation.load());
    }
    if (s.open < s.options.max_sessions) {
      ++s.open;
      const CK_SLOT_ID slot = s.slot;
      const uint64_t gen = s.generation.load();
      l.unlock();  // never hold the pool lock across an inner call
      CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
      CK_RV rv =
          VAULTP11_P11_CALL(*s.module, C_OpenSession, slot, s.session_flags, nullptr, nullptr, &h);
      if (rv != CKR_OK) {
        l.lock();
        if (gen == s.generation.load()) --s.open;
        l.unlock();
        s.cv.notify_one();
        return Err(rv, "opening a session on {} failed ({})", s.description, RvName(rv));
      }
      s.opened_total.fetch_add(1, std::memory_order_relaxed);
      return SessionLease(state_, h, gen);
    }
    if (!deadline) deadline = std::chrono::steady_clock::now() + s.options.acquire_timeout;
    if (s.cv.wait_until(l, *deadline) == std::cv_status::timeout && s.idle.empty() &&
        s.open >= s.options.max_sessions) {
      return Err(CKR_FUNCTION_FAILED, "all {} sessions of {} stayed in use for {} ms",
                 s.options.max_sessions, s.description, s.options.acquire_timeout.count());
    }
  }
}

InnerToken::PoolStats InnerToken::Stats() const {
  std::lock_guard<std::mutex> l(state_->mu);
  PoolStats st;
  st.open = state_->open;
  st.idle = state_->idle.size();
  st.max = state_->options.max_sessions;
  st.opened_total = state_->opened_total.load();
  st.closed_total = state_->closed_total.load();
  return st;
}

template <typename Fn>
Status InnerToken::Run(const char* what, bool on_login_session, Fn&& fn) const {
  PoolState& s = *state_;
  CK_RV rv = CKR_OK;
  for (int attempt = 0; attempt < 2; ++attempt) {
    bool retry = false;
    if (on_login_session) {
      if (NeedsRecover(s)) VAULTP11_RETURN_IF_ERROR(Recover());
      std::lock_guard<std::mutex> g(s.anchor_mu);
      VAULTP11_RETURN_IF_ERROR(EnsureLoggedIn(s));
      CallCtx c{s.anchor};
      rv = fn(c);
      if (rv == CKR_OK) return OkStatus();
      if (SessionGone(rv)) {
        s.anchor = CK_INVALID_HANDLE;  // reopened (and logged in) by the next EnsureLoggedIn
        s.login_lost = true;
        retry = true;
      } else if (rv == CKR_USER_NOT_LOGGED_IN) {
        s.login_lost = true;
        retry = true;
      }
    } else {
      VAULTP11_ASSIGN_OR_RETURN(SessionLease lease, Acquire());
      CallCtx c{lease.handle()};
      rv = lease.Check(fn(c));
      if (c.broken) lease.MarkBroken();
      if (rv == CKR_OK) return OkStatus();
      // Retry only when the call surely did not run: the session or the login was gone.
      retry = SessionGone(rv) || rv == CKR_USER_NOT_LOGGED_IN;
    }
    if (!retry) break;
  }
  return Err(rv, "{} on {} failed ({})", what, s.description, RvName(rv));
}

// ---- typed calls ----------------------------------------------------------------------------

Result<KeyPairHandles> InnerToken::GenerateKeyPair(
    const CK_MECHANISM& mech, std::span<const CK_ATTRIBUTE> public_template,
    std::span<const CK_ATTRIBUTE> private_template) const {
  auto pub = Mutable(public_template);
  auto priv = Mutable(private_template);
  CK_MECHANISM m = mech;
  KeyPairHandles out;
  const bool session_objects =
      IsSessionObject(public_template) || IsSessionObject(private_template);
  VAULTP11_RETURN_IF_ERROR(Run("C_GenerateKeyPair", session_objects, [&](CallCtx& c) {
    return VAULTP11_P11_CALL(*state_->module, C_GenerateKeyPair, c.h, &m, pub.data(),
                             static_cast<CK_ULONG>(pub.size()), priv.data(),
                             static_cast<CK_ULONG>(priv.size()), &out.public_key, &out.private_key);
  }));
  return out;
}

Result<CK_OBJECT_HANDLE> InnerToken::GenerateKey(const CK_MECHANISM& mech,
                                                 std::span<const CK_ATTRIBUTE> tmpl) const {
  auto t = Mutable(tmpl);
  CK_MECHANISM m = mech;
  CK_OBJECT_HANDLE out = CK_INVALID_HANDLE;
  VAULTP11_RETURN_IF_ERROR(Run("C_GenerateKey", IsSessionObject(tmpl), [&](CallCtx& c) {
    return VAULTP11_P11_CALL(*state_->module, C_GenerateKey, c.h, &m, t.data(),
                             static_cast<CK_ULONG>(t.size()), &out);
  }));
  return out;
}

Result<CK_OBJECT_HANDLE> InnerToken::CreateObject(std::span<const CK_ATTRIBUTE> tmpl) const {
  auto t = Mutable(tmpl);
  CK_OBJECT_HANDLE out = CK_INVALID_HANDLE;
  VAULTP11_RETURN_IF_ERROR(Run("C_CreateObject", IsSessionObject(tmpl), [&](CallCtx& c) {
    return VAULTP11_P11_CALL(*state_->module, C_CreateObject, c.h, t.data(),
                             static_cast<CK_ULONG>(t.size()), &out);
  }));
  return out;
}

Result<std::vector<CK_OBJECT_HANDLE>> InnerToken::FindObjects(std::span<const CK_ATTRIBUTE> tmpl,
                                                              size_t max_results) const {
  auto t = Mutable(tmpl);
  std::vector<CK_OBJECT_HANDLE> out;
  VAULTP11_RETURN_IF_ERROR(Run("C_FindObjects", false, [&](CallCtx& c) {
    const InnerModule& m = *state_->module;
    out.clear();
    CK_RV rv =
        VAULTP11_P11_CALL(m, C_FindObjectsInit, c.h, t.data(), static_cast<CK_ULONG>(t.size()));
    if (rv != CKR_OK) return rv;
    CK_OBJECT_HANDLE batch[64];
    for (;;) {
      CK_ULONG want = 64;
      if (max_results != 0) want = std::min<CK_ULONG>(want, max_results - out.size());
      if (want == 0) break;
      CK_ULONG n = 0;
      rv = VAULTP11_P11_CALL(m, C_FindObjects, c.h, batch, want, &n);
      if (rv != CKR_OK || n == 0) break;
      out.insert(out.end(), batch, batch + n);
    }
    CK_RV frv = VAULTP11_P11_CALL(m, C_FindObjectsFinal, c.h);
    if (frv != CKR_OK) c.broken = true;  // a search may still be active on it
    return rv != CKR_OK ? rv : frv;
  }));
  return out;
}

Result<AttributeValues> InnerToken::GetAttributes(CK_OBJECT_HANDLE object,
                                                  std::span<const CK_ATTRIBUTE_TYPE> types) const {
  AttributeValues out;
  VAULTP11_RETURN_IF_ERROR(Run("C_GetAttributeValue", false, [&](CallCtx& c) -> CK_RV {
    const InnerModule& m = *state_->module;
    out.clear();
    // Pass 1: lengths. Array attributes hold nested pointers and are not read here.
    std::vector<CK_ATTRIBUTE> q;
    q.reserve(types.size());
    for (CK_ATTRIBUTE_TYPE t : types) {
      if (t & CKF_ARRAY_ATTRIBUTE) {
        out[t].rv = CKR_ATTRIBUTE_TYPE_INVALID;
      } else {
        q.push_back(CK_ATTRIBUTE{t, nullptr, 0});
      }
    }
    if (q.empty()) return CKR_OK;
    CK_RV rv = VAULTP11_P11_CALL(m, C_GetAttributeValue, c.h, object, q.data(),
                                 static_cast<CK_ULONG>(q.size()));
    if (rv != CKR_OK && rv != CKR_ATTRIBUTE_SENSITIVE && rv != CKR_ATTRIBUTE_TYPE_INVALID)
      return rv;

    std::vector<CK_ATTRIBUTE> unavailable, fetch;
    for (const CK_ATTRIBUTE& a : q) {
      if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION) {
        unavailable.push_back(a);
      } else {
        AttributeValue& v = out[a.type];
        v.value.resize(a.ulValueLen);
        fetch.push_back(
            CK_ATTRIBUTE{a.type, v.value.empty() ? nullptr : v.value.data(), a.ulValueLen});
      }
    }
    // Pass 2: values. The call answers one code for all unavailable attributes, so tell
    // sensitive from invalid one by one when there are several.
    if (!fetch.empty()) {
      CK_RV vrv = VAULTP11_P11_CALL(m, C_GetAttributeValue, c.h, object, fetch.data(),
                                    static_cast<CK_ULONG>(fetch.size()));
      // A value that grew between the two calls is the module's race, not the caller's
      // CKR_BUFFER_TOO_SMALL.
      if (vrv == CKR_BUFFER_TOO_SMALL) return CKR_GENERAL_ERROR;
      if (vrv != CKR_OK) return vrv;
      for (const CK_ATTRIBUTE& a : fetch) out[a.type].value.resize(a.ulValueLen);
    }
    for (CK_ATTRIBUTE& a : unavailable) {
      AttributeValue& v = out[a.type];
      if (unavailable.size() == 1 && rv != CKR_OK) {
        v.rv = rv;
        continue;
      }
      CK_ATTRIBUTE one{a.type, nullptr, 0};
      CK_RV orv = VAULTP11_P11_CALL(m, C_GetAttributeValue, c.h, object, &one, 1);
      if (orv == CKR_OK) orv = CKR_ATTRIBUTE_TYPE_INVALID;  // unavailable, but no reason given
      if (orv != CKR_ATTRIBUTE_SENSITIVE && orv != CKR_ATTRIBUTE_TYPE_INVALID) return orv;
      v.rv = orv;
    }
    return CKR_OK;
  }));
  return out;
}

Status InnerToken::SetAttributes(CK_OBJECT_HANDLE object,
                                 std::span<const CK_ATTRIBUTE> tmpl) const {
  auto t = Mutable(tmpl);
  return Run("C_SetAttributeValue", false, [&](CallCtx& c) {
    return VAULTP11_P11_CALL(*state_->module, C_SetAttributeValue, c.h, object, t.data(),
                             static_cast<CK_ULONG>(t.size()));
  });
}

Status InnerToken::DestroyObject(CK_OBJECT_HANDLE object) const {
  return Run("C_DestroyObject", false, [&](CallCtx& c) {
    return VAULTP11_P11_CALL(*state_->module, C_DestroyObject, c.h, object);
  });
}

Result<Bytes> InnerToken::WrapKey(const CK_MECHANISM& mech, CK_OBJECT_HANDLE wrapping_key,
                                  CK_OBJECT_HANDLE key) const {
  CK_MECHANISM m = mech;
  Bytes out;
  VAULTP11_RETURN_IF_ERROR(Run("C_WrapKey", false, [&](CallCtx& c) {
    const InnerModule& mod = *state_->module;
    CK_ULONG n = 0;
    CK_RV rv = VAULTP11_P11_CALL(mod, C_WrapKey, c.h, &m, wrapping_key, key, nullptr, &n);
    if (rv != CKR_OK) return rv;
    for (int attempt = 0; attempt < 2; ++attempt) {
      out.resize(std::max<CK_ULONG>(n, 1));
      n = static_cast<CK_ULONG>(out.size());
      rv = VAULTP11_P11_CALL(mod, C_WrapKey, c.h, &m, wrapping_key, key, out.data(), &n);
      if (rv != CKR_BUFFER_TOO_SMALL) break;
    }
    if (rv == CKR_BUFFER_TOO_SMALL) return CKR_GENERAL_ERROR;  // not the caller's buffer
    if (rv == CKR_OK) out.resize(n);
    return rv;
  }));
  return out;
}

Result<CK_OBJECT_HANDLE> InnerToken::UnwrapKey(const CK_MECHANISM& mech,
                                               CK_OBJECT_HANDLE unwrapping_key,
                                               std::span<const uint8_t> wrapped,
                                               std::span<const CK_ATTRIBUTE> tmpl) const {
  auto t = Mutable(tmpl);
  CK_MECHANISM m = mech;
  // The inner API takes a non-const pointer for an input buffer.
  Bytes in(wrapped.begin(), wrapped.end());
  CK_OBJECT_HANDLE out = CK_INVALID_HANDLE;
  VAULTP11_RETURN_IF_ERROR(Run("C_UnwrapKey", IsSessionObject(tmpl), [&](CallCtx& c) {
    return VAULTP11_P11_CALL(*state_->module, C_UnwrapKey, c.h, &m, unwrapping_key, in.data(),
                             static_cast<CK_ULONG>(in.size()), t.data(),
                             static_cast<CK_ULONG>(t.size()), &out);
  }));
  return out;
}

}  // namespace vaultp11::p11

// InnerToken models one token of an inner PKCS#11 module (one HSM partition), logged in as
// CKU_USER once and reached through a bounded pool of R/W inner sessions.
//
// Inner object handles: keep them only while the InnerToken that found or made them lives. Its
// login session keeps them valid (PKCS#11 only promises a handle for as long as a session that
// used it exists; SoftHSMv2 forgets all of a slot's handles when the slot's last session
// closes). After InnerModule::object_epoch() changes (a forked child whose module reset
// itself) they must be found again, e.g. by CKA_ID.
#pragma once

#include <p11-kit/pkcs11.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "backend/p11/inner_module.h"
#include "util/result.h"
#include "util/secure_bytes.h"

namespace vaultp11::p11 {

namespace internal {
struct PoolState;
}  // namespace internal

// AttrTemplate is a CK_ATTRIBUTE array that owns its values (addresses stay valid while it
// lives and is not added to).
class AttrTemplate {
 public:
  AttrTemplate() = default;
  AttrTemplate(const AttrTemplate&) = delete;
  AttrTemplate& operator=(const AttrTemplate&) = delete;
  AttrTemplate(AttrTemplate&&) = default;
  AttrTemplate& operator=(AttrTemplate&&) = default;

  AttrTemplate& Bool(CK_ATTRIBUTE_TYPE type, bool value);
  AttrTemplate& Ulong(CK_ATTRIBUTE_TYPE type, CK_ULONG value);
  AttrTemplate& Data(CK_ATTRIBUTE_TYPE type, std::span<const uint8_t> value);
  AttrTemplate& Str(CK_ATTRIBUTE_TYPE type, std::string_view value);

  std::span<const CK_ATTRIBUTE> view() const { return attrs_; }
  operator std::span<const CK_ATTRIBUTE>() const { return attrs_; }  // NOLINT: pass as a template
  size_t size() const { return attrs_.size(); }

 private:
  AttrTemplate& Add(CK_ATTRIBUTE_TYPE type, std::span<const uint8_t> value);
  std::vector<CK_ATTRIBUTE> attrs_;
  std::deque<SecureBytes> values_;  // deque: element addresses never move
};

// One attribute read by InnerToken::GetAttributes: its value, or why it has none
// (CKR_ATTRIBUTE_SENSITIVE, CKR_ATTRIBUTE_TYPE_INVALID; C_GetAttributeValue cases 1 and 2).
struct AttributeValue {
  CK_RV rv = CKR_OK;
  SecureBytes value;  // set when rv == CKR_OK; SecureBytes because it may be a secret
  bool ok() const { return rv == CKR_OK; }
};
using AttributeValues = std::map<CK_ATTRIBUTE_TYPE, AttributeValue>;

struct KeyPairHandles {
  CK_OBJECT_HANDLE public_key = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE private_key = CK_INVALID_HANDLE;
};

// SessionLease lends one inner session of an InnerToken's pool to one user at a time. It goes
// back to the pool when destroyed (or Release()d), or is closed instead if marked broken.
// Safe to outlive the InnerToken (it then closes its session).
class SessionLease {
 public:
  SessionLease() = default;
  SessionLease(SessionLease&& o) noexcept { *this = std::move(o); }
  SessionLease& operator=(SessionLease&& o) noexcept;
  SessionLease(const SessionLease&) = delete;
  SessionLease& operator=(const SessionLease&) = delete;
  ~SessionLease() { Release(); }

  explicit operator bool() const { return pool_ != nullptr; }
  CK_SESSION_HANDLE handle() const { return handle_; }
  const InnerModule& module() const;
  // The session is unusable (state unknown, operation left active): close it on release.
  void MarkBroken() { broken_ = true; }
  bool broken() const { return broken_; }
  // Returns `rv` unchanged, first marking the lease broken when rv says the session is gone
  // or in an unknown state, and the token for re-login when rv is CKR_USER_NOT_LOGGED_IN.
  CK_RV Check(CK_RV rv);
  // Gives the session back now (or closes it when broken). Idempotent.
  void Release();

 private:
  friend class InnerToken;
  SessionLease(std::shared_ptr<internal::PoolState> pool, CK_SESSION_HANDLE h, uint64_t generation)
      : pool_(std::move(pool)), handle_(h), generation_(generation) {}
  std::shared_ptr<internal::PoolState> pool_;
  CK_SESSION_HANDLE handle_ = CK_INVALID_HANDLE;
  uint64_t generation_ = 0;
  bool broken_ = false;
};

class InnerToken {
 public:
  struct Options {
    size_t max_sessions = 32;  // pool bound (the login session is extra)
    // How long Acquire waits for a session when all are leased; then CKR_FUNCTION_FAILED.
    std::chrono::milliseconds acquire_timeout{30000};
    // For CKM_SHA*_RSA_PKCS, CKM_SHA*_RSA_PKCS_PSS and CKM_ECDSA_SHA*: hash in-process and send
    // only the digest (less data to a networked HSM). Always done when the token lacks the
    // hashing mechanism but has the raw one (SoftHSMv2 2.6 has CKM_ECDSA only).
    bool hash_in_process = false;
    // false: Open finds the token and reads its mechanisms but opens no session and does not
    // log in; the first call that needs a session does (once, under the login lock). Some
    // HSMs write their token storage at each login (SoftHSMv2 rewrites its token file), so a
    // process that never uses the HSM should never log in to it. A failed deferred login is
    // CKR_DEVICE_ERROR (naming the inner error) and is tried again by the next call.
    bool login_at_open = true;
  };

  // Opens the token named by `token_spec` (a token label, or a pkcs11: URI with token, slot or
  // library attributes) in module `m`: finds the one initialised token present that matches,
  // opens the login session and logs in as CKU_USER (CKR_USER_ALREADY_LOGGED_IN accepted; an
  // empty PIN with CKF_PROTECTED_AUTHENTICATION_PATH logs in through the device's PIN pad); with
  // options.login_at_open false, the first call that needs a session does the last two.
  // Errors name the module path and the token, never the PIN: no match is
  // CKR_TOKEN_NOT_PRESENT (listing the tokens present), several matches CKR_FUNCTION_FAILED,
  // a bad URI CKR_FUNCTION_FAILED; inner errors (CKR_PIN_INCORRECT, ...) pass through.
  static Result<std::unique_ptr<InnerToken>> Open(std::shared_ptr<InnerModule> m,
                                                  const std::string& token_spec,
                                                  const SecureString& pin);
  static Result<std::unique_ptr<InnerToken>> Open(std::shared_ptr<InnerModule> m,
                                                  const std::string& token_spec,
                                                  const SecureString& pin, const Options& options);
  // Closes idle sessions and the login session (never C_Logout: another InnerToken of this
  // process may share the login). Leases still out close their session when returned.
  ~InnerToken();
  InnerToken(const InnerToken&) = delete;
  InnerToken& operator=(const InnerToken&) = delete;

  const std::shared_ptr<InnerModule>& module() const;
  const Options& options() const;
  CK_SLOT_ID slot_id() const;
  const CK_TOKEN_INFO& token_info() const;  // as read at Open
  const std::string& label() const;         // trailing blanks removed
  const std::string& serial() const;
  // "token 'alpha' (serial 1234) in /usr/lib/softhsm/libsofthsm2.so", for messages.
  const std::string& description() const;

  // The token's mechanisms as read at Open (C_GetMechanismList). When the module cannot list
  // them, SupportsMechanism answers true and the inner call decides.
  const std::vector<CK_MECHANISM_TYPE>& mechanisms() const;
  bool SupportsMechanism(CK_MECHANISM_TYPE type) const;
  Result<CK_MECHANISM_INFO> MechanismInfo(CK_MECHANISM_TYPE type) const;

  // Lends a pooled session: an idle one, else a new one while fewer than max_sessions are
  // open, else waits up to acquire_timeout. In a forked child it first re-initialises the
  // module, drops the parent's sessions (without closing them) and logs in again.
  Result<SessionLease> Acquire() const;

  struct PoolStats {
    size_t open = 0;  // pool sessions open now (leased + idle), login session excluded
    size_t idle = 0;
    size_t max = 0;
    uint64_t opened_total = 0;  // C_OpenSession calls for the pool since Open
    uint64_t closed_total = 0;  // pool sessions closed because they were broken
  };
  PoolStats Stats() const;

  // Typed calls: each leases a session for the call (and retries once on a fresh session when
  // the first one turns out to be gone or logged out). Inner CK_RVs pass through unchanged.
  // Calls that create session objects (CKA_TOKEN false or absent) run on the login session so
  // the objects live as long as this InnerToken, not as long as one pooled session.
  Result<KeyPairHandles> GenerateKeyPair(const CK_MECHANISM& mech,
                                         std::span<const CK_ATTRIBUTE> public_template,
                                         std::span<const CK_ATTRIBUTE> private_template) const;
  Result<CK_OBJECT_HANDLE> GenerateKey(const CK_MECHANISM& mech,
                                       std::span<const CK_ATTRIBUTE> tmpl) const;
  Result<CK_OBJECT_HANDLE> CreateObject(std::span<const CK_ATTRIBUTE> tmpl) const;
  // max_results 0 = all.
  Result<std::vector<CK_OBJECT_HANDLE>> FindObjects(std::span<const CK_ATTRIBUTE> tmpl,
                                                    size_t max_results = 0) const;
  // Reads `types` of `object`. Per attribute: a value, or CKR_ATTRIBUTE_SENSITIVE /
  // CKR_ATTRIBUTE_TYPE_INVALID (array attributes such as CKA_WRAP_TEMPLATE are reported as
  // CKR_ATTRIBUTE_TYPE_INVALID: not read by this layer). Other errors fail the whole call.
  Result<AttributeValues> GetAttributes(CK_OBJECT_HANDLE object,
                                        std::span<const CK_ATTRIBUTE_TYPE> types) const;
  Status SetAttributes(CK_OBJECT_HANDLE object, std::span<const CK_ATTRIBUTE> tmpl) const;
  Status DestroyObject(CK_OBJECT_HANDLE object) const;
  Result<Bytes> WrapKey(const CK_MECHANISM& mech, CK_OBJECT_HANDLE wrapping_key,
                        CK_OBJECT_HANDLE key) const;
  Result<CK_OBJECT_HANDLE> UnwrapKey(const CK_MECHANISM& mech, CK_OBJECT_HANDLE unwrapping_key,
                                     std::span<const uint8_t> wrapped,
                                     std::span<const CK_ATTRIBUTE> tmpl) const;

 private:
  explicit InnerToken(std::shared_ptr<internal::PoolState> state) : state_(std::move(state)) {}
  Status Recover() const;
  // Runs fn(CK_SESSION_HANDLE) -> CK_RV on a leased session (retrying once as described above),
  // or on the login session when `on_login_session`.
  template <typename Fn>
  Status Run(const char* what, bool on_login_session, Fn&& fn) const;

  std::shared_ptr<internal::PoolState> state_;
};

// The slot of the one initialised token matching `token_spec` (found as InnerToken::Open finds
// it), for callers that run their own sessions (the SO login of `vaultp11 pool init`).
Result<CK_SLOT_ID> FindTokenSlot(const std::shared_ptr<InnerModule>& m, const std::string& token_spec);

// True when `tmpl` makes a session object (CKA_TOKEN absent or false).
bool IsSessionObject(std::span<const CK_ATTRIBUTE> tmpl);

}  // namespace vaultp11::p11

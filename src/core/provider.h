// Provider models one C_Initialize..C_Finalize run of the module in one process: the
// configuration, the store, one token per vault and the open sessions.
#pragma once

#include <p11-kit/pkcs11.h>
#include <sys/types.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>
#include <vector>

#include "audit/recorder.h"
#include "config/config.h"
#include "core/session.h"
#include "core/token.h"
#include "store/store.h"
#include "util/result.h"

namespace vaultp11::core {

class Provider {
 public:
  // Loads and validates the config, opens the store and builds the tokens. Nothing is
  // left behind on failure.
  // `threads` false: the caller forbids threads (CKF_LIBRARY_CANT_CREATE_OS_THREADS), so audit
  // events are written synchronously.
  static Result<std::unique_ptr<Provider>> Create(const std::string& config_path, bool threads = true);
  // Closes the sessions (operations in progress are audited as cancelled), then flushes and
  // stops the audit recorder.
  ~Provider();

  const config::Config& config() const { return config_; }
  const std::vector<std::unique_ptr<Token>>& tokens() const { return tokens_; }
  Result<Token*> GetToken(CK_SLOT_ID slot) const;

  Result<CK_SESSION_HANDLE> OpenSession(Token* token, CK_FLAGS flags);
  Result<SessionPtr> GetSession(CK_SESSION_HANDLE h) const;
  Status CloseSession(CK_SESSION_HANDLE h);
  Status CloseAllSessions(Token* token);
  // Number of sessions (and R/W sessions) open on a token.
  void CountSessions(const Token* token, CK_ULONG* all, CK_ULONG* rw) const;
  // The sessions open on a token.
  std::vector<SessionPtr> SessionsOn(const Token* token) const;

  // The configuration that decides logins and grants. When the config file changed since the
  // last check (size, mtime or inode), it is read again; a valid new version with the same store,
  // vaults and pools replaces it, so principals, role assignments, access policies and login
  // settings apply at the next login. Anything else (an invalid file, other vaults) keeps the
  // one in use and logs why. Called at C_Login; AuthConfig(false) never reads the file.
  std::shared_ptr<const config::Config> AuthConfig(bool refresh = true);

  // The store's deployment id (part of every token's resource id).
  const std::string& deployment_id() const { return deployment_id_; }

  // Applies changes other processes committed to the store (cheap when nothing changed).
  void SyncFromStore();

  // The audit recorder (null when audit.sinks is empty).
  audit::Recorder* audit() const { return audit_.get(); }

  // Starts the health check of a managed HSM pool's token when the pool is first used (a
  // session opened on its slot): its thread logs in to the members, which a process that
  // never uses the pool must not do. Idempotent; a no-op for vault tokens.
  void StartPoolHealthCheck(Token* t);

 private:
  Provider() = default;

  std::unique_ptr<audit::Recorder> audit_;  // first: destroyed last
  config::Config config_;
  std::unique_ptr<store::Store> store_;
  std::string deployment_id_;
  std::mutex auth_mu_;  // guards the two fields below
  std::shared_ptr<const config::Config> auth_config_;
  std::string config_stamp_;  // size, mtime and inode of the config file when last read
  std::vector<std::unique_ptr<Token>> tokens_;
  std::atomic<CK_OBJECT_HANDLE> next_object_{1};
  std::atomic<CK_SESSION_HANDLE> next_session_{1};

  mutable std::shared_mutex sessions_mu_;  // guards sessions_
  std::unordered_map<CK_SESSION_HANDLE, SessionPtr> sessions_;
  std::mutex sync_mu_;  // serialises SyncFromStore
  uint64_t event_run_ = 0;  // the slot-event run of this C_Initialize (see SlotEvents)
};

// Opens one configured HSM's token (its module is loaded once per process). With `login_now`
// false the token is only found (module loaded, token looked up, no session, no login): the
// first operation on it logs in (p11::InnerToken::Options::login_at_open).
Result<std::shared_ptr<p11::InnerToken>> OpenHsmToken(const config::HsmConfig& h,
                                                      bool login_now = true);
// A managed HSM pool as configured; `open` gives each member's token (or why it is missing),
// the default opens them now. Members that fail are reopened by the pool's health check.
std::shared_ptr<pool::HsmPool> MakePool(const config::Config& cfg, const config::ManagedHsmPoolConfig& pc,
                                        const std::function<model::HsmKey(const config::HsmConfig&)>& open);
std::shared_ptr<pool::HsmPool> MakePool(const config::Config& cfg, const config::ManagedHsmPoolConfig& pc);

// CallScope marks one PKCS#11 call in flight (abi/entry_points.cc holds one around every
// call but C_Initialize and C_Finalize). C_Finalize first makes GetProvider fail for new
// calls, then waits until no CallScope is left before it frees the provider, so a call in
// flight finishes on a live provider and a later one gets CKR_CRYPTOKI_NOT_INITIALIZED
// (issue 16 item 11). The cost per call is one atomic increment and one decrement.
class CallScope {
 public:
  CallScope();
  ~CallScope();
  CallScope(const CallScope&) = delete;
  CallScope& operator=(const CallScope&) = delete;
};

// Whether C_Initialize has succeeded in this process (and C_Finalize has not started), for the
// functions this module does not support: before C_Initialize they answer
// CKR_CRYPTOKI_NOT_INITIALIZED like every other function (PKCS#11 2.40 section 5.4).
bool Initialized();

// The provider of this process, or CKR_CRYPTOKI_NOT_INITIALIZED (also in a forked child that
// has not called C_Initialize again: the pid recorded at C_Initialize is checked lazily).
Result<Provider*> GetProvider();

}  // namespace vaultp11::core

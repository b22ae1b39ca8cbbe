// C_Initialize / C_Finalize, slots, tokens, mechanisms, sessions and login (spec 5.4-5.6).
#include "core/provider.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <iterator>
#include <cerrno>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <map>
#include <new>
#include <set>
#include <thread>
#include <vector>

#include "auth/access.h"
#include "auth/jwt.h"
#include "auth/secret_hash.h"
#include "auth/throttle.h"
#include "core/authenticate.h"
#include "backend/p11/inner_module.h"
#include "backend/p11/inner_token.h"
#include "core/audit_hooks.h"
#include "core/calls.h"
#include "core/context.h"
#include "core/mechanisms.h"
#include "util/log.h"
#include "util/pin_file.h"

namespace vaultp11::core {

namespace {

std::mutex g_init_mu;  // serialises C_Initialize / C_Finalize
std::atomic<Provider*> g_provider{nullptr};
std::atomic<pid_t> g_pid{0};
// In a forked child: the parent's provider, abandoned (see Initialize).
std::atomic<Provider*> g_abandoned_provider{nullptr};

// Calls in flight (CallScope). Paired with g_provider as in Dekker's algorithm, every access
// sequentially consistent: a call increments g_in_flight then reads g_provider; C_Finalize
// clears g_provider then reads g_in_flight. So either C_Finalize sees the call and waits for
// it, or the call sees no provider. The waiter sleeps on g_quiesce_cv; the call that brings the
// count to zero wakes it only when g_finalize_waiting says someone waits (no lock otherwise).
std::atomic<int64_t> g_in_flight{0};
std::atomic<bool> g_finalize_waiting{false};
std::mutex g_quiesce_mu;
std::condition_variable g_quiesce_cv;
// How long C_Finalize waits for calls in flight. A call can outlast it only inside an inner
// module that does not answer (a hung HSM): C_Finalize then returns and leaves the provider
// allocated (g_left_behind), never freeing memory under that call.
constexpr auto kFinalizeWait = std::chrono::seconds(30);
// The parent's calls in flight have no thread in a forked child: a C_Finalize there must not
// wait for them. A fork may also come while another thread's C_Finalize waits holding
// g_init_mu (and g_quiesce_mu for a moment): the child's copies are made anew, unlocked, so its
// C_Initialize and exit handlers never wait for a thread it does not have. Registered when the
// module is loaded, so it holds even for a fork that comes before the first C_Initialize.
const int g_in_flight_atfork = pthread_atfork(nullptr, nullptr, [] {
  g_in_flight.store(0);
  g_finalize_waiting.store(false);
  // Only this thread runs in the child: nothing else can hold or wait on these.
  new (&g_init_mu) std::mutex();
  new (&g_quiesce_mu) std::mutex();
  new (&g_quiesce_cv) std::condition_variable();
});
// Providers a C_Finalize could not free (a call was still in flight when it gave up waiting, or
// the process is exiting): kept reachable, never used again.
std::vector<Provider*>* g_left_behind = nullptr;  // guarded by g_init_mu

void Pad(CK_UTF8CHAR* dst, size_t n, std::string_view s) {
  std::memset(dst, ' ', n);
  std::memcpy(dst, s.data(), std::min(n, s.size()));
}

log::Level ParseLevel(const std::string& s) {
  if (s == "debug") return log::Level::kDebug;
  if (s == "info") return log::Level::kInfo;
  if (s == "error") return log::Level::kError;
  if (s == "off") return log::Level::kOff;
  return log::Level::kWarning;
}

// Reads an HSM's user PIN from its pin_file (trailing newline removed) or pin_env.
Result<SecureString> ReadPin(const config::HsmConfig& h) {
  return vaultp11::ReadPin("hsm " + h.name, h.pin_env, h.pin_file);
}

// Finds one configured HSM's token at C_Initialize, without logging in: the first operation
// that needs it logs in (issue 16 item 10: SoftHSM rewrites its token file at each login, and
// a process killed in that window lost every HSM key, even one that only used software
// vaults). A failure is kept as the reason the vault's HSM is unavailable: the module still
// initialises and its software keys keep working.
model::HsmKey OpenHsm(const config::HsmConfig& h) {
  model::HsmKey k;
  auto token = OpenHsmToken(h, /*login_now=*/false);
  if (!token.ok()) {
    k.unavailable = token.error().message;
    log::Error("hsm {}: unavailable: {}", h.name, k.unavailable);
    return k;
  }
  k.token = std::move(token).value();
  log::Info("hsm {}: {}", h.name, k.token->description());
  return k;
}

// Slot events (C_WaitForSlotEvent): a pool member leaving or rejoining service changes what
// the pool's slot reports. Kept outside the Provider (and never destroyed) so C_Finalize can
// release blocked waiters; `run` counts C_Initialize / C_Finalize so stale posts are dropped.
struct SlotEvents {
  std::mutex mu;
  std::condition_variable cv;
  std::set<CK_SLOT_ID> pending;
  uint64_t run = 0;
};

SlotEvents& Events() {
  static SlotEvents* events = new SlotEvents();
  return *events;
}

void PostSlotEvent(uint64_t run, CK_SLOT_ID slot) {
  SlotEvents& e = Events();
  {
    std::lock_guard<std::mutex> l(e.mu);
    if (e.run != run) return;
    e.pending.insert(slot);
  }
  e.cv.notify_all();
}

// Starts a new run of slot events (C_Initialize, C_Finalize) and wakes waiters of the old one.
uint64_t NewEventRun() {
  SlotEvents& e = Events();
  uint64_t run;
  {
    std::lock_guard<std::mutex> l(e.mu);
    run = ++e.run;
    e.pending.clear();
  }
  e.cv.notify_all();
  return run;
}

int64_t UnixNow() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

auth::ThrottlePolicy ThrottlePolicyOf(const config::Config& cfg) {
  auth::ThrottlePolicy p;
  p.max_failures = cfg.login.max_failures;
  p.lockout_seconds = cfg.login.lockout_seconds;
  p.base_delay = std::chrono::milliseconds(cfg.login.delay_ms);
  p.max_delay = std::chrono::milliseconds(cfg.login.max_delay_ms);
  return p;
}

// The audit event of a config reload at login: what changed in principals, role assignments
// and access policies (names only, never a secret hash), or why the new file was not taken
// (`refused`). The operator is the OS user owning the file.
audit::Event AuthorizationChangeEvent(const std::string& path, const config::Config* before,
                                      const config::Config* after, const std::string& refused) {
  audit::Event e = audit::Start("AuthorizationChange");
  e.critical = true;
  struct stat st {};
  if (stat(path.c_str(), &st) == 0) {
    e.principal = "os:" + audit::UserName(st.st_uid);
    e.auth_method = "config-file";
  }
  nlohmann::json props = {{"config", path}};
  if (before != nullptr && after != nullptr) {
    auto principals = [](const config::Config& c) {
      std::map<std::string, std::string> m;
      for (const auto& p : c.principals) {
        std::string form = p.auth + "|" + p.certificate_file + "|" + p.issuer + "|" + p.audience + "|" + p.jwks_file +
                           "|" + p.claim + "|" + p.subject + "|" + (p.uid ? std::to_string(*p.uid) : "") + "|" +
                           (p.gid ? std::to_string(*p.gid) : "");
        // Compared only, never written: a secret added, removed or re-dated changes the principal.
        for (const auto& sec : p.secrets)
          form += "|" + sec.hash + (sec.expires ? std::to_string(sec.expires->time_since_epoch().count()) : "");
        m[p.name] = form;
      }
      return m;
    };
    auto roles = [](const config::Config& c) {
      std::set<std::string> out;
      for (const auto& r : c.role_assignments) out.insert(r.principal + " | " + r.role + " | " + r.scope);
      return out;
    };
    auto policies = [](const config::Config& c) {
      std::set<std::string> out;
      for (const auto& v : c.vaults)
        for (const auto& ap : v.access_policies)
          out.insert(fmt::format("{} | {} | keys {:x} secrets {:x} certificates {:x}", v.name, ap.principal, ap.keys,
                                 ap.secrets, ap.certificates));
      return out;
    };
    auto pb = principals(*before), pa = principals(*after);
    std::vector<std::string> added, removed, changed;
    for (const auto& [n, form] : pa) {
      auto it = pb.find(n);
      if (it == pb.end()) added.push_back(n);
      else if (it->second != form) changed.push_back(n);
    }
    for (const auto& [n, form] : pb)
      if (!pa.count(n)) removed.push_back(n);
    auto diff = [](const std::set<std::string>& a, const std::set<std::string>& b) {
      std::vector<std::string> out;
      std::set_difference(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(out));
      return out;
    };
    auto rb = roles(*before), ra = roles(*after), ab = policies(*before), aa = policies(*after);
    props["principalsAdded"] = added;
    props["principalsRemoved"] = removed;
    props["principalsChanged"] = changed;
    props["roleAssignmentsAdded"] = diff(ra, rb);
    props["roleAssignmentsRemoved"] = diff(rb, ra);
    props["accessPoliciesAdded"] = diff(aa, ab);
    props["accessPoliciesRemoved"] = diff(ab, aa);
  }
  e.extra = std::move(props);
  e.Finish(refused.empty() ? CKR_OK : CKR_ARGUMENTS_BAD, refused.empty() ? "" : "not applied: " + refused);
  return e;
}

// Stops the pools' health threads of this process's provider (see Provider::Create).
void StopHealthChecksAtExit() {
  std::lock_guard<std::mutex> l(g_init_mu);  // not while a C_Finalize deletes the provider
  Provider* p = g_provider.load(std::memory_order_acquire);
  if (p == nullptr || g_pid.load(std::memory_order_relaxed) != getpid()) return;
  for (const auto& t : p->tokens())
    if (t->is_pool()) t->pool()->StopHealthCheck();
}

// Writes out the audit events still queued when the process exits without C_Finalize.
void FlushAuditAtExit() {
  std::lock_guard<std::mutex> l(g_init_mu);
  Provider* p = g_provider.load(std::memory_order_acquire);
  if (p == nullptr || g_pid.load(std::memory_order_relaxed) != getpid() || p->audit() == nullptr) return;
  p->audit()->Stop();
}

}  // namespace

Result<std::shared_ptr<p11::InnerToken>> OpenHsmToken(const config::HsmConfig& h, bool login_now) {
  VAULTP11_ASSIGN_OR_RETURN(auto quirks, p11::Quirks::Parse(h.quirks));
  VAULTP11_ASSIGN_OR_RETURN(auto module, p11::InnerModule::Load(h.module, quirks));
  VAULTP11_ASSIGN_OR_RETURN(auto pin, ReadPin(h));
  p11::InnerToken::Options options;
  options.login_at_open = login_now;
  VAULTP11_ASSIGN_OR_RETURN(auto token, p11::InnerToken::Open(module, h.token, pin, options));
  return std::shared_ptr<p11::InnerToken>(std::move(token));
}

std::shared_ptr<pool::HsmPool> MakePool(const config::Config& cfg, const config::ManagedHsmPoolConfig& pc,
                                        const std::function<model::HsmKey(const config::HsmConfig&)>& open) {
  std::vector<pool::MemberSpec> members;
  for (const auto& name : pc.hsms) {
    config::HsmConfig hc = *cfg.FindHsm(name);
    model::HsmKey h = open(hc);
    members.push_back(pool::MemberSpec{name, h.token, h.unavailable, [hc] { return OpenHsmToken(hc); }});
  }
  pool::HsmPool::Options options;
  options.quorum = static_cast<size_t>(pc.quorum);
  options.health_check_interval = std::chrono::milliseconds(pc.health_check_ms);
  return std::make_shared<pool::HsmPool>(pc.name, std::move(members), options);
}

std::shared_ptr<pool::HsmPool> MakePool(const config::Config& cfg, const config::ManagedHsmPoolConfig& pc) {
  return MakePool(cfg, pc, [](const config::HsmConfig& h) {
    model::HsmKey k;
    auto t = OpenHsmToken(h);
    if (t.ok()) k.token = std::move(t).value();
    else k.unavailable = t.error().message;
    return k;
  });
}

CallScope::CallScope() { g_in_flight.fetch_add(1, std::memory_order_seq_cst); }

CallScope::~CallScope() {
  if (g_in_flight.fetch_sub(1, std::memory_order_seq_cst) == 1 &&
      g_finalize_waiting.load(std::memory_order_seq_cst)) {
    std::lock_guard<std::mutex> l(g_quiesce_mu);  // the waiter is in wait() or has not checked yet
    g_quiesce_cv.notify_all();
  }
}

bool Initialized() { return g_provider.load(std::memory_order_seq_cst) != nullptr; }

Result<Provider*> GetProvider() {
  // A forked child finds no provider (the fork handler clears it): no getpid() per call.
  // Sequentially consistent: see g_in_flight.
  Provider* p = g_provider.load(std::memory_order_seq_cst);
  if (p == nullptr) return Err(CKR_CRYPTOKI_NOT_INITIALIZED, "C_Initialize has not been called in this process");
  return p;
}

namespace {

// The config path carried by C_Initialize's pReserved (non-standard: kmsp11 does it, and p11-kit
// passes its `x-init-reserved` string there). The pointer is the caller's and may be anything
// (PKCS#11 2.40 section 5.4 reserves it): its bytes are never read directly. Each byte is
// copied through a pipe, so an unreadable address is an EFAULT from write(), not a crash; one
// byte at a time, and stopping at the first byte that cannot belong to a path, so nothing past
// the string (or past a short non-string object) is touched. Recognised: an absolute path ('/'
// first) of printable bytes (no control characters; UTF-8 allowed) ended by a NUL within
// PATH_MAX bytes. An empty string is no path (`$VAULTP11_CONF` or the default apply, as for
// NULL). Anything else is CKR_ARGUMENTS_BAD.
Result<std::string> ReservedConfigPath(const void* reserved) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0)
    return Err(CKR_FUNCTION_FAILED, "C_Initialize: cannot check pReserved: pipe: {}",
               std::strerror(errno));
  struct Closer {
    int* fds;
    ~Closer() {
      close(fds[0]);
      close(fds[1]);
    }
  } closer{fds};
  const auto* p = static_cast<const char*>(reserved);
  std::string out;
  for (size_t i = 0; i < PATH_MAX; ++i) {
    ssize_t w;
    do {
      w = write(fds[1], p + i, 1);
    } while (w < 0 && errno == EINTR);
    if (w != 1)
      return Err(CKR_ARGUMENTS_BAD,
                 "C_Initialize: pReserved is neither NULL nor a readable path string");
    char c = 0;
    ssize_t r;
    do {
      r = read(fds[0], &c, 1);
    } while (r < 0 && errno == EINTR);
    if (r != 1)
      return Err(CKR_FUNCTION_FAILED, "C_Initialize: cannot check pReserved: pipe read failed");
    if (c == '\0') return out;  // empty: no path given
    const auto u = static_cast<unsigned char>(c);
    if ((i == 0 && c != '/') || u < 0x20 || u == 0x7f)
      return Err(CKR_ARGUMENTS_BAD, "C_Initialize: pReserved is not an absolute config path");
    out.push_back(c);
  }
  return Err(CKR_ARGUMENTS_BAD,
             "C_Initialize: pReserved is not a path string of fewer than {} bytes", PATH_MAX);
}

std::string ConfigStamp(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return "";
  return fmt::format("{}:{}.{}:{}", st.st_size, st.st_mtim.tv_sec, st.st_mtim.tv_nsec, st.st_ino);
}

// Whether `next` may replace `cur` for logins: the same store, vaults (in order, with their HSMs)
// and pools, so slots, tokens and stored objects stay what they are.
bool SameDeployment(const config::Config& cur, const config::Config& next) {
  if (cur.store != next.store || cur.vaults.size() != next.vaults.size() ||
      cur.managed_hsm_pools.size() != next.managed_hsm_pools.size())
    return false;
  for (size_t i = 0; i < cur.vaults.size(); ++i)
    if (cur.vaults[i].name != next.vaults[i].name || cur.vaults[i].hsms != next.vaults[i].hsms) return false;
  for (size_t i = 0; i < cur.managed_hsm_pools.size(); ++i)
    if (cur.managed_hsm_pools[i].name != next.managed_hsm_pools[i].name) return false;
  return true;
}

}  // namespace

std::shared_ptr<const config::Config> Provider::AuthConfig(bool refresh) {
  std::lock_guard<std::mutex> l(auth_mu_);
  if (!refresh) return auth_config_;
  std::string stamp = ConfigStamp(config_.source);
  if (stamp.empty() || stamp == config_stamp_) return auth_config_;
  config_stamp_ = stamp;
  auto next = config::LoadFile(config_.source);
  if (!next.ok()) {
    log::Warning("config {} changed but is not valid; logins keep the version in use: {}", config_.source,
                 next.error().message);
    SubmitAuditEvent(AuthorizationChangeEvent(config_.source, nullptr, nullptr, next.error().message));
    return auth_config_;
  }
  if (!SameDeployment(*auth_config_, next.value())) {
    log::Warning("config {} changed its store, vaults or pools: those need C_Initialize; logins keep the version in use",
                 config_.source);
    SubmitAuditEvent(AuthorizationChangeEvent(config_.source, nullptr, nullptr,
                                              "the store, vaults or pools changed: they need C_Initialize"));
    return auth_config_;
  }
  auto before = auth_config_;
  auth_config_ = std::make_shared<const config::Config>(std::move(next).value());
  log::Info("config {} reloaded: principals, roles and access policies apply from the next login", config_.source);
  SubmitAuditEvent(AuthorizationChangeEvent(config_.source, before.get(), auth_config_.get(), ""));
  return auth_config_;
}

Provider::~Provider() {
  {
    std::unique_lock<std::shared_mutex> l(sessions_mu_);
    auto sessions = std::move(sessions_);
    sessions_.clear();
    l.unlock();
    sessions.clear();  // operations in progress are submitted as cancelled
  }
  if (audit_) {
    audit_->Stop();
    SetAuditRecorder(nullptr);
  }
}

namespace {
// The token's soft-delete settings: the config's; purge protection, once on, is recorded in the
// store and keeps soft-delete on even when the config no longer asks for it.
Status ApplySoftDelete(store::Store& st, Token& t, const std::string& name, config::SoftDeleteConfig sd) {
  if (sd.purge_protection && !st.read_only()) VAULTP11_RETURN_IF_ERROR(st.EnablePurgeProtection(name));
  VAULTP11_ASSIGN_OR_RETURN(bool recorded, st.PurgeProtection(name));
  if (recorded && !sd.purge_protection) {
    log::Warning("{}: purge protection was turned on before and stays on (soft_delete{})", name,
                 sd.enabled ? ".purge_protection is ignored" : " is kept on with the default retention");
    sd.enabled = true;
    sd.purge_protection = true;
  }
  t.SetSoftDelete(sd);
  return OkStatus();
}
}  // namespace

Result<std::unique_ptr<Provider>> Provider::Create(const std::string& config_path, bool threads) {
  VAULTP11_ASSIGN_OR_RETURN(config::Config cfg, config::LoadFile(config_path));
  log::Configure(ParseLevel(cfg.log.level), cfg.log.sink);
  std::unique_ptr<Provider> p(new Provider());
  p->config_stamp_ = ConfigStamp(cfg.source);
  p->auth_config_ = std::make_shared<const config::Config>(cfg);
  p->config_ = std::move(cfg);
  // The store is created on first use (like `vaultp11 init`), so a fresh deployment works.
  VAULTP11_ASSIGN_OR_RETURN(p->store_, store::Store::Open(p->config_.store, true));
  std::map<std::string, model::HsmKey> hsms;
  for (const auto& v : p->config_.vaults)
    for (const auto& name : v.hsms)
      if (!hsms.count(name)) hsms[name] = OpenHsm(*p->config_.FindHsm(name));
  for (const auto& pc : p->config_.managed_hsm_pools)
    for (const auto& name : pc.hsms)
      if (!hsms.count(name)) hsms[name] = OpenHsm(*p->config_.FindHsm(name));
  CK_SLOT_ID slot = 0;
  for (const auto& v : p->config_.vaults) {
    if (!p->store_->read_only()) VAULTP11_RETURN_IF_ERROR(p->store_->EnsureVault(v.name));
    auto t = std::make_unique<Token>(slot++, v, p->store_.get(), &p->next_object_);
    if (!v.hsms.empty()) t->SetHsm(hsms[v.hsms.front()], v.default_protection == "hsm");
    VAULTP11_RETURN_IF_ERROR(ApplySoftDelete(*p->store_, *t, v.name, v.soft_delete));
    VAULTP11_RETURN_IF_ERROR(t->Load());
    p->tokens_.push_back(std::move(t));
  }
  // Managed HSM pools: one slot each after the vaults, in config order. Their key metadata
  // lives in the store under the pool's name (names never clash with vaults).
  for (const auto& pc : p->config_.managed_hsm_pools) {
    auto hp = MakePool(p->config_, pc, [&](const config::HsmConfig& h) { return hsms[h.name]; });
    if (hp->healthy() < hp->size())
      log::Warning("pool {}: {} of {} members available", pc.name, hp->healthy(), hp->size());
    if (!p->store_->read_only()) VAULTP11_RETURN_IF_ERROR(p->store_->EnsureVault(pc.name));
    auto t = std::make_unique<Token>(slot++, std::move(hp), p->store_.get(), &p->next_object_);
    VAULTP11_RETURN_IF_ERROR(ApplySoftDelete(*p->store_, *t, pc.name, pc.soft_delete));
    VAULTP11_RETURN_IF_ERROR(t->Load());
    p->tokens_.push_back(std::move(t));
  }
  (void)p->store_->ExternalChange();  // first call primes the data_version baseline
  // Part of every token's resource id (the audience of client assertions).
  VAULTP11_ASSIGN_OR_RETURN(p->deployment_id_, p->store_->DeploymentId());
  // The audit log: its file sinks' heads are MACed with a key derived from the master key.
  if (!p->config_.audit.sinks.empty()) {
    VAULTP11_ASSIGN_OR_RETURN(SecureBytes head_key, p->store_->DeriveKey("audit-head"));
    // File sinks anchor their chain's end in the store (audit_hooks.h); it outlives audit_.
    VAULTP11_ASSIGN_OR_RETURN(p->audit_, audit::Recorder::Create(p->config_.audit, std::move(head_key), threads,
                                                                 StoreAnchor(p->store_.get())));
    static std::once_flag audit_exit_hook;
    std::call_once(audit_exit_hook, [] { std::atexit(FlushAuditAtExit); });
    SetAuditRecorder(p->audit_.get());
  }
  // Pools: the health check copies missed keys (the token's catalog) and reports members
  // leaving or rejoining service as slot events. Its threads must be stopped before the inner
  // modules' own static destructors run when the process exits without C_Finalize (or calls
  // it from a late atexit handler, as OpenSSL's engine cleanup does): an exit handler
  // registered now, after those modules were loaded, runs before their destructors.
  static std::once_flag exit_hook;
  if (!p->config_.managed_hsm_pools.empty()) std::call_once(exit_hook, [] { std::atexit(StopHealthChecksAtExit); });
  {
    std::lock_guard<std::mutex> l(Events().mu);
    p->event_run_ = Events().run;
  }
  // The health checks start when their pool is first used (StartPoolHealthCheck).
  return p;
}

void Provider::StartPoolHealthCheck(Token* t) {
  if (!t->is_pool()) return;
  t->pool()->StartHealthCheck(
      [t] { return t->PoolCatalog(); },
      [run = event_run_, slot = t->slot_id()] { PostSlotEvent(run, slot); });
}

Result<Token*> Provider::GetToken(CK_SLOT_ID slot) const {
  if (slot >= tokens_.size()) return Err(CKR_SLOT_ID_INVALID, "slot {} does not exist", slot);
  return tokens_[slot].get();
}

Result<CK_SESSION_HANDLE> Provider::OpenSession(Token* token, CK_FLAGS flags) {
  CK_SESSION_HANDLE h = next_session_.fetch_add(1);
  auto s = std::make_shared<Session>(h, token, flags);
  std::unique_lock<std::shared_mutex> l(sessions_mu_);
  sessions_.emplace(h, std::move(s));
  return h;
}

Result<SessionPtr> Provider::GetSession(CK_SESSION_HANDLE h) const {
  std::shared_lock<std::shared_mutex> l(sessions_mu_);
  auto it = sessions_.find(h);
  if (it == sessions_.end()) return Err(CKR_SESSION_HANDLE_INVALID, "session handle {} is not valid", h);
  return it->second;
}

Status Provider::CloseSession(CK_SESSION_HANDLE h) {
  SessionPtr s;
  bool last = false;
  {
    std::unique_lock<std::shared_mutex> l(sessions_mu_);
    auto it = sessions_.find(h);
    if (it == sessions_.end()) return Err(CKR_SESSION_HANDLE_INVALID, "session handle {} is not valid", h);
    s = it->second;
    sessions_.erase(it);
    last = std::none_of(sessions_.begin(), sessions_.end(),
                        [&](const auto& e) { return e.second->token() == s->token(); });
  }
  s->token()->RemoveSessionObjects(h);
  // Closing the application's last session on a token logs it out (spec 5.6 C_CloseSession).
  if (last) s->token()->Logout();
  return OkStatus();
}

Status Provider::CloseAllSessions(Token* token) {
  std::vector<CK_SESSION_HANDLE> hs;
  {
    std::shared_lock<std::shared_mutex> l(sessions_mu_);
    for (const auto& [h, s] : sessions_)
      if (s->token() == token) hs.push_back(h);
  }
  for (auto h : hs) (void)CloseSession(h);
  token->Logout();
  return OkStatus();
}

void Provider::CountSessions(const Token* token, CK_ULONG* all, CK_ULONG* rw) const {
  std::shared_lock<std::shared_mutex> l(sessions_mu_);
  *all = 0;
  *rw = 0;
  for (const auto& [h, s] : sessions_) {
    if (s->token() != token) continue;
    ++*all;
    if (s->read_write()) ++*rw;
  }
}

std::vector<SessionPtr> Provider::SessionsOn(const Token* token) const {
  std::shared_lock<std::shared_mutex> l(sessions_mu_);
  std::vector<SessionPtr> out;
  for (const auto& [h, s] : sessions_)
    if (s->token() == token) out.push_back(s);
  return out;
}

void Provider::SyncFromStore() {
  std::lock_guard<std::mutex> l(sync_mu_);
  auto changed = store_->ExternalChange();
  if (!changed.ok() || !changed.value()) return;
  for (auto& t : tokens_) {
    Status st = t->ApplyChanges();
    if (!st.ok()) log::Warning("vault {}: reading changes from the store failed: {}", t->name(), st.error().message);
  }
}

// ---- general purpose ------------------------------------------------------------------------

Status Initialize(CK_VOID_PTR init_args) {
  std::lock_guard<std::mutex> l(g_init_mu);
  Provider* existing = g_provider.load();
  if (existing != nullptr) {
    if (g_pid.load() == getpid())
      return Err(CKR_CRYPTOKI_ALREADY_INITIALIZED, "C_Initialize called twice");
    // A forked child re-initialises: the parent's provider is abandoned, not destroyed (its
    // locks and database connection belong to the parent).
    g_provider.store(nullptr);
  }
  std::string reserved_path;
  bool cant_create_threads = false;
  if (init_args != nullptr) {
    auto* a = static_cast<CK_C_INITIALIZE_ARGS*>(init_args);
    int given = (a->CreateMutex != nullptr) + (a->DestroyMutex != nullptr) + (a->LockMutex != nullptr) +
                (a->UnlockMutex != nullptr);
    if (given != 0 && given != 4)
      return Err(CKR_ARGUMENTS_BAD, "C_Initialize: mutex callbacks must be all set or all NULL");
    // Application mutexes without CKF_OS_LOCKING_OK: this module can only use OS locking.
    if (given == 4 && !(a->flags & CKF_OS_LOCKING_OK))
      return Err(CKR_CANT_LOCK, "C_Initialize: only OS locking is supported (set CKF_OS_LOCKING_OK)");
    // Non-standard but common (kmsp11): pReserved may carry the config path.
    if (a->pReserved != nullptr) {
      VAULTP11_ASSIGN_OR_RETURN(reserved_path, ReservedConfigPath(a->pReserved));
    }
    cant_create_threads = (a->flags & CKF_LIBRARY_CANT_CREATE_OS_THREADS) != 0;
  }
  std::string path = config::ResolvePath(reserved_path.empty() ? nullptr : reserved_path.c_str());
  if (cant_create_threads) {
    // Managed HSM pools need their health-check threads.
    auto cfg = config::LoadFile(path);
    if (cfg.ok() && !cfg->managed_hsm_pools.empty())
      return Err(CKR_NEED_TO_CREATE_THREADS, "managed HSM pools need a health-check thread, which the caller forbids");
  }
  NewEventRun();
  auto p = Provider::Create(path, !cant_create_threads);
  if (!p.ok()) {
    log::Error("C_Initialize: {}", p.error().message);
    // C_Initialize may only fail with the codes of spec 5.4; the log has the detail.
    return Error{CKR_FUNCTION_FAILED, p.error().message, 0};
  }
  g_pid.store(getpid());
  // In a forked child the parent's provider is abandoned, not destroyed (its locks, threads and
  // database connection belong to the parent): the child starts uninitialised.
  static std::once_flag atfork;
  std::call_once(atfork, [] {
    pthread_atfork(nullptr, nullptr, [] {
      // Kept reachable (the parent owns it), not leaked: the child never frees it.
      g_abandoned_provider.store(g_provider.load());
      g_provider.store(nullptr);
    });
  });
  g_provider.store(p.value().release(), std::memory_order_release);
  return OkStatus();
}

Status Finalize(CK_VOID_PTR reserved) {
  std::lock_guard<std::mutex> l(g_init_mu);
  VAULTP11_ASSIGN_OR_RETURN(Provider * p, GetProvider());
  if (reserved != nullptr) return Err(CKR_ARGUMENTS_BAD, "C_Finalize: pReserved must be NULL");
  // Calls that start from now on get CKR_CRYPTOKI_NOT_INITIALIZED.
  g_provider.store(nullptr, std::memory_order_seq_cst);
  NewEventRun();  // C_WaitForSlotEvent waiters return CKR_CRYPTOKI_NOT_INITIALIZED
  // Calls in flight finish on the provider before it is freed (the spec leaves C_Finalize
  // during other calls undefined; a server's shutdown path does it). Once the process is exiting
  // no inner module answers any more (p11::ProcessExiting), so a call stuck in one never
  // returns: C_Finalize does not wait then. Nor does it wait forever otherwise (kFinalizeWait).
  bool idle;
  {
    auto no_calls = [] { return g_in_flight.load(std::memory_order_seq_cst) == 0; };
    g_finalize_waiting.store(true, std::memory_order_seq_cst);
    std::unique_lock<std::mutex> q(g_quiesce_mu);
    idle = p11::ProcessExiting() ? no_calls() : g_quiesce_cv.wait_for(q, kFinalizeWait, no_calls);
    g_finalize_waiting.store(false, std::memory_order_seq_cst);
  }
  if (!idle) {
    log::Error("C_Finalize: {} call(s) still in flight {}; their state is left allocated", g_in_flight.load(),
               p11::ProcessExiting() ? std::string("as the process exits")
                                     : fmt::format("after {} s (an inner module that does not answer?)",
                                                   kFinalizeWait.count()));
    if (g_left_behind == nullptr) g_left_behind = new std::vector<Provider*>();
    g_left_behind->push_back(p);
    return OkStatus();
  }
  delete p;
  return OkStatus();
}

Status GetInfo(CK_INFO_PTR info) {
  VAULTP11_RETURN_IF_ERROR(GetProvider());
  if (info == nullptr) return Err(CKR_ARGUMENTS_BAD, "C_GetInfo: pInfo is NULL");
  std::memset(info, 0, sizeof(*info));
  info->cryptokiVersion = {2, 40};
  Pad(info->manufacturerID, sizeof(info->manufacturerID), "vaultp11");
  Pad(info->libraryDescription, sizeof(info->libraryDescription), "vaultp11 key vault module");
  info->libraryVersion = {0, 1};
  return OkStatus();
}

// ---- slots and tokens -----------------------------------------------------------------------

Status GetSlotList(CK_BBOOL, CK_SLOT_ID_PTR list, CK_ULONG_PTR count) {
  VAULTP11_ASSIGN_OR_RETURN(Provider * p, GetProvider());
  if (count == nullptr) return Err(CKR_ARGUMENTS_BAD, "C_GetSlotList: pulCount is NULL");
  // tokenPresent is ignored: every slot always holds its vault's token.
  CK_ULONG n = p->tokens().size();
  if (list == nullptr) {
    *count = n;
    return OkStatus();
  }
  if (*count < n) {
    *count = n;
    return Err(CKR_BUFFER_TOO_SMALL, "C_GetSlotList: {} slots", n);
  }
  for (CK_ULONG i = 0; i < n; ++i) list[i] = p->tokens()[i]->slot_id();
  *count = n;
  return OkStatus();
}

Status GetSlotInfo(CK_SLOT_ID slot, CK_SLOT_INFO_PTR info) {
  VAULTP11_ASSIGN_OR_RETURN(Provider * p, GetProvider());
  VAULTP11_ASSIGN_OR_RETURN(Token * t, p->GetToken(slot));
  if (info == nullptr) return Err(CKR_ARGUMENTS_BAD, "C_GetSlotInfo: pInfo is NULL");
  std::memset(info, 0, sizeof(*info));
  // An unavailable HSM shows in the slot description (the log has the full reason).
  std::string desc;
  if (t->is_pool()) {
    size_t up = t->pool()->healthy(), all = t->pool()->size();
    desc = "vaultp11 managed HSM pool " + t->name() + (up < all ? fmt::format(" ({}/{} HSMs up)", up, all) : "");
  } else {
    bool hsm_down = t->hsm() != nullptr && t->hsm()->token == nullptr;
    desc = "vaultp11 vault " + t->name() + (hsm_down ? " (HSM unavailable)" : "");
  }
  Pad(info->slotDescription, sizeof(info->slotDescription), desc);
  Pad(info->manufacturerID, sizeof(info->manufacturerID), "vaultp11");
  info->flags = CKF_TOKEN_PRESENT;
  info->hardwareVersion = {0, 1};
  info->firmwareVersion = {0, 1};
  return OkStatus();
}

// A slot event is a managed HSM pool's member leaving or rejoining service (the slot's
// description and token info change); vault slots have none.
Status WaitForSlotEvent(CK_FLAGS flags, CK_SLOT_ID_PTR slot, CK_VOID_PTR reserved) {
  SlotEvents& e = Events();
  // The provider is checked under the events lock: C_Finalize clears it before starting a new
  // run, so a waiter either sees no provider or is woken by that new run.
  std::unique_lock<std::mutex> l(e.mu);
  VAULTP11_RETURN_IF_ERROR(GetProvider());
  if (slot == nullptr || reserved != nullptr) return Err(CKR_ARGUMENTS_BAD, "C_WaitForSlotEvent: bad arguments");
  const uint64_t run = e.run;
  for (;;) {
    if (e.run != run) return Err(CKR_CRYPTOKI_NOT_INITIALIZED, "C_Finalize was called while waiting for a slot event");
    if (!e.pending.empty()) {
      *slot = *e.pending.begin();
      e.pending.erase(e.pending.begin());
      return OkStatus();
    }
    if (flags & CKF_DONT_BLOCK) return Err(CKR_NO_EVENT, "no slot event");
    e.cv.wait(l);
  }
}

Status GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info) {
  VAULTP11_ASSIGN_OR_RETURN(Provider * p, GetProvider());
  VAULTP11_ASSIGN_OR_RETURN(Token * t, p->GetToken(slot));
  if (info == nullptr) return Err(CKR_ARGUMENTS_BAD, "C_GetTokenInfo: pInfo is NULL");
  std::memset(info, 0, sizeof(*info));
  Pad(info->label, sizeof(info->label), t->name());
  Pad(info->manufacturerID, sizeof(info->manufacturerID), "vaultp11");
  Pad(info->model, sizeof(info->model), t->is_pool() ? "managed HSM pool" : "vault");
  Pad(info->serialNumber, sizeof(info->serialNumber), t->serial());
  info->flags = CKF_RNG | CKF_LOGIN_REQUIRED | CKF_USER_PIN_INITIALIZED | CKF_TOKEN_INITIALIZED;
  if (!t->store()->Writable()) info->flags |= CKF_WRITE_PROTECTED;
  // The failed-login state of the principal this process last tried on the token.
  if (std::string who = t->last_claimed(); !who.empty()) {
    auto f = t->store()->GetLoginFailures(who);
    if (f.ok()) info->flags |= auth::PinFlags(f.value(), ThrottlePolicyOf(*p->AuthConfig(false)), UnixNow());
  }
  // The calling process has a managed identity with rights on this token: it logs in with an
  // empty PIN, which consumers send when the token reports a protected authentication path.
  const auto auth_cfg = p->AuthConfig(false);
  if (const config::PrincipalConfig* mi = ManagedIdentityOfCaller(*auth_cfg)) {
    auth::Grants g = auth::ComputeGrants(*auth_cfg, t->name(), mi->name);
    bool any = !g.per_object.empty();
    for (uint32_t k : g.vault_wide) any |= k != 0;
    if (any) info->flags |= CKF_PROTECTED_AUTHENTICATION_PATH;
  }
  CK_ULONG all = 0, rw = 0;
  p->CountSessions(t, &all, &rw);
  info->ulMaxSessionCount = CK_EFFECTIVELY_INFINITE;
  info->ulSessionCount = all;
  info->ulMaxRwSessionCount = CK_EFFECTIVELY_INFINITE;
  info->ulRwSessionCount = rw;
  info->ulMaxPinLen = 4096;
  info->ulMinPinLen = 1;
  info->ulTotalPublicMemory = CK_UNAVAILABLE_INFORMATION;
  info->ulFreePublicMemory = CK_UNAVAILABLE_INFORMATION;
  info->ulTotalPrivateMemory = CK_UNAVAILABLE_INFORMATION;
  info->ulFreePrivateMemory = CK_UNAVAILABLE_INFORMATION;
  info->hardwareVersion = {0, 1};
  info->firmwareVersion = {0, 1};
  auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  struct tm tm;
  gmtime_r(&now, &tm);
  char buf[17];
  strftime(buf, sizeof(buf), "%Y%m%d%H%M%S00", &tm);
  std::memcpy(info->utcTime, buf, 16);
  return OkStatus();
}

Status GetMechanismList(CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count) {
  VAULTP11_ASSIGN_OR_RETURN(Provider * p, GetProvider());
  VAULTP11_ASSIGN_OR_RETURN(Token * t, p->GetToken(slot));
  if (count == nullptr) return Err(CKR_ARGUMENTS_BAD, "C_GetMechanismList: pulCount is NULL");
  std::vector<CK_MECHANISM_TYPE> mechs;
  for (const MechanismEntry& m : Mechanisms())
    if (FlagsOn(m, t->is_pool()) != 0) mechs.push_back(m.type);
  if (list == nullptr) {
    *count = mechs.size();
    return OkStatus();
  }
  if (*count < mechs.size()) {
    *count = mechs.size();
    return Err(CKR_BUFFER_TOO_SMALL, "C_GetMechanismList: {} mechanisms", mechs.size());
  }
  std::copy(mechs.begin(), mechs.end(), list);
  *count = mechs.size();
  return OkStatus();
}

Status GetMechanismInfo(CK_SLOT_ID slot, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR info) {
  VAULTP11_ASSIGN_OR_RETURN(Provider * p, GetProvider());
  VAULTP11_ASSIGN_OR_RETURN(Token * t, p->GetToken(slot));
  if (info == nullptr) return Err(CKR_ARGUMENTS_BAD, "C_GetMechanismInfo: pInfo is NULL");
  const MechanismEntry* m = FindMechanism(type);
  if (m == nullptr || FlagsOn(*m, t->is_pool()) == 0)
    return Err(CKR_MECHANISM_INVALID, "mechanism 0x{:x} is not supported", type);
  info->ulMinKeySize = m->min_key;
  info->ulMaxKeySize = m->max_key;
  info->flags = FlagsOn(*m, t->is_pool());
  return OkStatus();
}

// ---- sessions and login ---------------------------------------------------------------------

Status OpenSession(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR, CK_NOTIFY, CK_SESSION_HANDLE_PTR out) {
  VAULTP11_ASSIGN_OR_RETURN(Provider * p, GetProvider());
  VAULTP11_ASSIGN_OR_RETURN(Token * t, p->GetToken(slot));
  if (out == nullptr) return Err(CKR_ARGUMENTS_BAD, "C_OpenSession: phSession is NULL");
  if (!(flags & CKF_SERIAL_SESSION))
    return Err(CKR_SESSION_PARALLEL_NOT_SUPPORTED, "C_OpenSession: CKF_SERIAL_SESSION must be set");
  if ((flags & CKF_RW_SESSION) && !t->store()->Writable())
    return Err(CKR_TOKEN_WRITE_PROTECTED, "vault {} is read-only", t->name());
  p->SyncFromStore();
  VAULTP11_ASSIGN_OR_RETURN(*out, p->OpenSession(t, flags & (CKF_RW_SESSION | CKF_SERIAL_SESSION)));
  p->StartPoolHealthCheck(t);  // a pool's first use
  return OkStatus();
}

Status CloseSession(CK_SESSION_HANDLE h) {
  VAULTP11_ASSIGN_OR_RETURN(Provider * p, GetProvider());
  return p->CloseSession(h);
}

Status CloseAllSessions(CK_SLOT_ID slot) {
  VAULTP11_ASSIGN_OR_RETURN(Provider * p, GetProvider());
  VAULTP11_ASSIGN_OR_RETURN(Token * t, p->GetToken(slot));
  return p->CloseAllSessions(t);
}

Status GetSessionInfo(CK_SESSION_HANDLE h, CK_SESSION_INFO_PTR info) {
  VAULTP11_ASSIGN_OR_RETURN(Provider * p, GetProvider());
  VAULTP11_ASSIGN_OR_RETURN(SessionPtr s, p->GetSession(h));
  if (info == nullptr) return Err(CKR_ARGUMENTS_BAD, "C_GetSessionInfo: pInfo is NULL");
  info->slotID = s->token()->slot_id();
  bool in = s->token()->logged_in();
  info->state = s->read_write() ? (in ? CKS_RW_USER_FUNCTIONS : CKS_RW_PUBLIC_SESSION)
                                : (in ? CKS_RO_USER_FUNCTIONS : CKS_RO_PUBLIC_SESSION);
  info->flags = s->flags();
  info->ulDeviceError = 0;
  return OkStatus();
}

Status Login(CK_SESSION_HANDLE h, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len) {
  AuditOperation("Authentication", /*critical=*/true);
  VAULTP11_ASSIGN_OR_RETURN(Provider * p, GetProvider());
  VAULTP11_ASSIGN_OR_RETURN(SessionPtr s, p->GetSession(h));
  AuditToken(*s->token());
  if (user == CKU_CONTEXT_SPECIFIC)
    return Err(CKR_OPERATION_NOT_INITIALIZED, "no key needs a context-specific login");
  if (user != CKU_USER && user != CKU_SO) return Err(CKR_USER_TYPE_INVALID, "user type {} is not valid", user);
  if (pin == nullptr && pin_len > 0) return Err(CKR_ARGUMENTS_BAD, "C_Login: pPin is NULL");
  // Room for a JWT (client assertion or bearer token); a longer PIN is no credential: a failed
  // authentication, CKR_PIN_INCORRECT like every other (spec C_Login).
  if (pin_len > auth::jwt::kMaxTokenBytes)
    return Err(CKR_PIN_INCORRECT, "C_Login: PIN of {} bytes is too long", pin_len);
  Token* t = s->token();
  if (t->logged_in()) {
    // Spec C_Login: the SO while a normal user is logged in is "another user".
    if (user == CKU_SO)
      return Err(CKR_USER_ANOTHER_ALREADY_LOGGED_IN, "vault {}: a user is logged in; no SO login",
                 t->name());
    return Err(CKR_USER_ALREADY_LOGGED_IN, "already logged in to vault {}", t->name());
  }
  // Vault tokens have no security officer: administration goes through the config and CLI.
  if (user == CKU_SO) return Err(CKR_PIN_INCORRECT, "vault tokens have no security officer");
  SecureBytes pin_bytes(pin, pin + pin_len);
  const std::shared_ptr<const config::Config> cfg = p->AuthConfig();
  const std::string resource = ResourceId(*cfg, p->deployment_id(), t->name());
  // Brute force: attempts count per claimed principal in the store (every process sees them).
  // Each attempt is counted before the credential is checked, so parallel attempts cannot
  // outrun the limit; a success resets the count, a failure answers after a growing delay, and
  // too many in a row lock the principal.
  const auth::ThrottlePolicy policy = ThrottlePolicyOf(*cfg);
  // A claimed name that is no configured principal is counted, audited and logged under a
  // keyed hash (RecordedName), never as text: it may be a secret typed before the ':'.
  VAULTP11_ASSIGN_OR_RETURN(const SecureBytes names_key, t->store()->DeriveKey("login-names"));
  const std::string claimed = RecordedName(*cfg, ClaimedPrincipal(*cfg, pin_bytes), names_key);
  t->SetLastClaimed(claimed);
  AuditPrincipal(claimed, "");
  const int64_t now = UnixNow();
  store::LoginFailures counted;
  if (!claimed.empty()) {
    VAULTP11_ASSIGN_OR_RETURN(store::LoginFailures before, t->store()->GetLoginFailures(claimed));
    const bool locked = auth::Decide(before, policy, now).locked;
    if (!locked) {
      VAULTP11_ASSIGN_OR_RETURN(counted, t->store()->RecordLoginFailure(claimed, now, policy.max_failures,
                                                                        policy.lockout_seconds));
    }
    if (locked || (policy.max_failures > 0 && counted.failures > policy.max_failures)) {
      log::Warning("vault {}: login refused: principal {} is locked after failed logins", t->name(), claimed);
      return Err(CKR_PIN_LOCKED, "principal {} is locked after failed logins", claimed);
    }
  } else {
    counted.failures = 1;  // no name to count (a malformed credential): the first failure's delay
  }
  auto who = Authenticate(*cfg, t->store(), resource, pin_bytes);
  if (!who.ok()) {
    // The challenge says where a valid credential comes from; the credential is never logged.
    log::Warning("vault {}: login failed: {}; a valid credential: {}", t->name(), who.error().message,
                 Challenge(*cfg, resource));
    const bool credential_failed = who.rv() == CKR_PIN_INCORRECT || who.rv() == CKR_PIN_INVALID;
    if (!credential_failed) {
      // A store or file error says nothing about the credential: not a failed attempt, and
      // reported with a code C_Login may return.
      if (!claimed.empty()) (void)t->store()->ForgiveLoginFailure(claimed);
      return Err(CKR_FUNCTION_FAILED, "{}", who.error().message);
    }
    std::this_thread::sleep_for(auth::Decide(counted, policy, now).delay);
    return who.error();
  }
  if (!claimed.empty()) (void)t->store()->ResetLoginFailures(claimed);
  if (claimed != who->principal && !who->principal.empty()) (void)t->store()->ResetLoginFailures(who->principal);
  auto grants = std::make_shared<auth::Grants>(auth::ComputeGrants(*cfg, t->name(), who->principal));
  grants->method = who->method;
  AuditPrincipal(who->principal, who->method);
  // Re-checked under the login lock: of two logins that both passed the check above, the
  // later one is refused (issue 16 item 9) and the token keeps the winner's grants.
  VAULTP11_RETURN_IF_ERROR(t->SetLogin(std::move(grants)));
  log::Info("vault {}: principal {} logged in ({})", t->name(), who->principal, who->method);
  return OkStatus();
}

Status LoginUser(CK_SESSION_HANDLE h, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len,
                 CK_UTF8CHAR_PTR username, CK_ULONG username_len) {
  if (username == nullptr && username_len > 0) return Err(CKR_ARGUMENTS_BAD, "C_LoginUser: pUsername is NULL");
  if (pin == nullptr && pin_len > 0) return Err(CKR_ARGUMENTS_BAD, "C_LoginUser: pPin is NULL");
  if (username_len == 0) return Login(h, user, pin, pin_len);  // the PIN names the principal
  if (username_len > 256 || pin_len > auth::jwt::kMaxTokenBytes)
    return Err(CKR_PIN_INCORRECT, "C_LoginUser: username or PIN too long");
  // The principal is the username: the same as C_Login with "principal:secret".
  SecureBytes combined;
  combined.reserve(username_len + 1 + pin_len);
  combined.insert(combined.end(), username, username + username_len);
  combined.push_back(':');
  if (pin_len > 0) combined.insert(combined.end(), pin, pin + pin_len);
  return Login(h, user, combined.data(), static_cast<CK_ULONG>(combined.size()));
}

Status Logout(CK_SESSION_HANDLE h) {
  AuditOperation("Logout");
  VAULTP11_ASSIGN_OR_RETURN(Provider * p, GetProvider());
  VAULTP11_ASSIGN_OR_RETURN(SessionPtr s, p->GetSession(h));
  AuditToken(*s->token());
  if (!s->token()->logged_in()) return Err(CKR_USER_NOT_LOGGED_IN, "C_Logout: not logged in");
  s->token()->Logout();
  EndPrivateOperations(*p, s->token());
  return OkStatus();
}

}  // namespace vaultp11::core

// State the module's logins share through the store: the deployment id, one-time JWT ids (replay
// protection) and failed logins (throttling and lockout).
#include <algorithm>
#include <limits>

#include "backend/ossl/ossl_backend.h"
#include "store/impl.h"
#include "util/strings.h"

namespace vaultp11::store {

namespace {

constexpr size_t kDeploymentIdBytes = 16;

bool IsDeploymentId(std::string_view s) {
  if (s.size() != 2 * kDeploymentIdBytes) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

int64_t SaturatingAdd(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r))
    return b > 0 ? std::numeric_limits<int64_t>::max() : std::numeric_limits<int64_t>::min();
  return r;
}

}  // namespace

LoginFailures NextLoginFailures(LoginFailures s, int64_t now, int64_t lock_after, int64_t lock_seconds) {
  if (s.locked_until != 0 && s.locked_until <= now) {  // the lockout is over: start again
    s.failures = 0;
    s.locked_until = 0;
  }
  if (s.failures < std::numeric_limits<int64_t>::max()) ++s.failures;
  s.last_failure = now;
  if (lock_after > 0 && s.failures >= lock_after)
    s.locked_until = std::max(s.locked_until, SaturatingAdd(now, std::max<int64_t>(lock_seconds, 0)));
  return s;
}

// Reads meta.deployment_id into `deployment_id`; false when there is none yet.
Result<bool> Store::Impl::ReadDeploymentId() {
  std::string id;
  VAULTP11_ASSIGN_OR_RETURN(bool found, RunOne(*db, "SELECT value FROM meta WHERE key = 'deployment_id'", {},
                                               [&](const Row& r) { id = r.Text(0); }, "reading the deployment id"));
  if (!found) return false;
  if (!IsDeploymentId(id)) return Err(CKR_DEVICE_ERROR, "{} has a malformed deployment id", name());
  deployment_id = std::move(id);
  return true;
}

// The deployment id, created when missing. The first creator wins (ON CONFLICT DO NOTHING);
// every process then reads back the stored value, never the one it generated.
Result<std::string> Store::Impl::EnsureDeploymentId() {
  if (!deployment_id.empty()) return deployment_id;
  VAULTP11_ASSIGN_OR_RETURN(bool found, ReadDeploymentId());
  if (found) return deployment_id;
  if (!db->Writable())
    return Err(CKR_TOKEN_WRITE_PROTECTED, "{} has no deployment id yet and is read-only (open it writable once)",
               name());
  uint8_t raw[kDeploymentIdBytes];
  VAULTP11_RETURN_IF_ERROR(ossl::RandomBytes(raw));
  const std::string fresh = HexOf(raw);
  VAULTP11_RETURN_IF_ERROR(db->Transaction("creating the deployment id", [&]() -> Status {
    return db->Run("INSERT INTO meta(key, value) VALUES('deployment_id', ?) ON CONFLICT(key) DO NOTHING", {fresh}, {},
                   "creating the deployment id")
        .status();
  }));
  VAULTP11_ASSIGN_OR_RETURN(found, ReadDeploymentId());
  if (!found) return Err(CKR_DEVICE_ERROR, "{}: the deployment id vanished after creation", name());
  return deployment_id;
}

// The principal's recorded failures (zero when none).
Result<LoginFailures> Store::Impl::ReadLoginFailures(std::string_view principal) {
  LoginFailures out;
  if (!have_auth_tables) return out;  // a read-only store of an earlier version: nothing recorded
  VAULTP11_RETURN_IF_ERROR(
      RunOne(*db, "SELECT failures, last_failure, locked_until FROM login_failures WHERE principal = ?", {principal},
             [&](const Row& r) { out = LoginFailures{r.Int(0), r.Int(1), r.Int(2)}; }, "reading failed logins")
          .status());
  return out;
}

Result<std::string> Store::DeploymentId() {
  std::lock_guard<std::mutex> lock(mu_);
  return impl_->EnsureDeploymentId();
}

Result<bool> Store::UseJti(std::string_view issuer_and_jti, int64_t expires_unix, int64_t now_unix) {
  if (issuer_and_jti.empty() || issuer_and_jti.size() > kMaxJtiBytes)
    return Err(CKR_ARGUMENTS_BAD, "JWT id of {} bytes (must be 1 to {})", issuer_and_jti.size(), kMaxJtiBytes);
  std::lock_guard<std::mutex> lock(mu_);
  Db& db = *impl_->db;
  if (!db.Writable()) return impl_->ReadOnly("record a one-time JWT id");
  // PostgreSQL's text holds no NUL byte (nor invalid UTF-8), which a JWT id may have (issuer +
  // '\0' + jti; a jti of "\u0000"): there the value is kept as hex. SQLite's keeps any bytes.
  const bool hex = db.kind() == Db::Kind::kPostgres;
  const std::string hex_value = hex ? HexOf(AsBytes(issuer_and_jti)) : std::string();
  const std::string_view value = hex ? std::string_view(hex_value) : issuer_and_jti;
  bool fresh = false;
  VAULTP11_RETURN_IF_ERROR(db.Transaction("recording a JWT id", [&]() -> Status {
    VAULTP11_RETURN_IF_ERROR(
        db.Run("DELETE FROM used_jtis WHERE expires < ?", {now_unix}, {}, "purging expired JWT ids").status());
    VAULTP11_ASSIGN_OR_RETURN(int64_t added,
                              db.Run("INSERT INTO used_jtis(value, expires) VALUES(?, ?) ON CONFLICT(value) DO NOTHING",
                                     {value, expires_unix}, {}, "recording a JWT id"));
    fresh = added == 1;
    return OkStatus();
  }));
  return fresh;
}

Result<LoginFailures> Store::GetLoginFailures(std::string_view principal) {
  std::lock_guard<std::mutex> lock(mu_);
  return impl_->ReadLoginFailures(principal);
}

Result<LoginFailures> Store::RecordLoginFailure(std::string_view principal, int64_t now_unix, int64_t lock_after,
                                                int64_t lock_seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  Db& db = *impl_->db;
  if (!db.Writable()) {
    VAULTP11_ASSIGN_OR_RETURN(LoginFailures old, impl_->ReadLoginFailures(principal));
    return NextLoginFailures(old, now_unix, lock_after, lock_seconds);
  }
  LoginFailures next;
  VAULTP11_RETURN_IF_ERROR(db.Transaction("recording a failed login", [&]() -> Status {
    VAULTP11_ASSIGN_OR_RETURN(LoginFailures old, impl_->ReadLoginFailures(principal));
    next = NextLoginFailures(old, now_unix, lock_after, lock_seconds);
    VAULTP11_RETURN_IF_ERROR(db.Run("INSERT INTO login_failures(principal, failures, last_failure, locked_until) "
                                    "VALUES(?1, ?2, ?3, ?4) ON CONFLICT(principal) DO UPDATE SET "
                                    "failures = excluded.failures, last_failure = excluded.last_failure, "
                                    "locked_until = excluded.locked_until",
                                    {principal, next.failures, next.last_failure, next.locked_until}, {},
                                    "recording a failed login")
                                 .status());
    // Counts not locked and a day old are forgotten (C_Login counts names that are no
    // principal too, so guessing names cannot grow the table without bound).
    return db.Run("DELETE FROM login_failures WHERE last_failure < ?1 AND locked_until <= ?2 AND principal != ?3",
                  {now_unix - 86400, now_unix, principal}, {}, "forgetting old failed logins")
        .status();
  }));
  return next;
}

Status Store::ResetLoginFailures(std::string_view principal) {
  std::lock_guard<std::mutex> lock(mu_);
  Db& db = *impl_->db;
  // Reading first keeps the common case (no failures recorded) free of a write transaction.
  VAULTP11_ASSIGN_OR_RETURN(LoginFailures now, impl_->ReadLoginFailures(principal));
  if (now == LoginFailures{}) return OkStatus();
  if (!db.Writable()) return OkStatus();  // cannot be forgotten now; the lockout rules still apply
  return db.Transaction("clearing failed logins", [&]() -> Status {
    return db.Run("DELETE FROM login_failures WHERE principal = ?", {principal}, {}, "clearing failed logins").status();
  });
}

Status Store::ForgiveLoginFailure(std::string_view principal) {
  std::lock_guard<std::mutex> lock(mu_);
  Db& db = *impl_->db;
  if (!db.Writable()) return OkStatus();
  return db.Transaction("forgiving a failed login", [&]() -> Status {
    return db.Run("UPDATE login_failures SET failures = CASE WHEN failures > 0 THEN failures - 1 ELSE 0 END "
                  "WHERE principal = ?",
                  {principal}, {}, "forgiving a failed login")
        .status();
  });
}

}  // namespace vaultp11::store

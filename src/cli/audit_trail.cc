#include "cli/audit_trail.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <optional>
#include <system_error>

#include "audit/event.h"
#include "core/audit_hooks.h"
#include "store/store.h"
#include "util/log.h"

namespace vaultp11::cli {
namespace {

bool Exists(const std::string& path) {
  std::error_code ec;
  return std::filesystem::exists(path, ec);
}

std::filesystem::path Normal(const std::string& path) {
  std::error_code ec;
  std::filesystem::path abs = std::filesystem::absolute(path, ec);
  return (ec ? std::filesystem::path(path) : abs).lexically_normal();
}

// Whether `dir` is `inner` or one of its ancestors.
bool OnTheWayTo(const std::filesystem::path& dir, const std::filesystem::path& inner) {
  auto d = dir.begin(), i = inner.begin();
  for (; d != dir.end() && i != inner.end(); ++d, ++i) {
    if (d->empty()) continue;  // a trailing "/"
    if (*d != *i) return false;
  }
  for (; d != dir.end(); ++d)
    if (!d->empty()) return false;
  return true;
}

}  // namespace

std::string AbsolutePath(const std::string& path) { return Normal(path).string(); }

std::string OperatorAudit::OperatorPrincipal() { return "os:" + audit::UserName(getuid()); }

Result<OperatorAudit> OperatorAudit::Open(const config::Config& cfg, std::string_view consequence) {
  OperatorAudit a;
  a.principal_ = OperatorPrincipal();
  for (const config::ManagedHsmPoolConfig& p : cfg.managed_hsm_pools) a.pools_.insert(p.name);
  a.since_ = std::chrono::system_clock::now();
  a.since_steady_ = std::chrono::steady_clock::now();
  if (cfg.audit.sinks.empty()) return a;  // `sinks: []`: auditing is off
  std::optional<SecureBytes> head_key;
  if (cfg.store.sealed() || Exists(cfg.store.master_key_file)) {
    auto key = store::DeriveKeyFromOptions(cfg.store, "audit-head");
    if (key.ok()) {
      head_key = std::move(key).value();
    } else if (cfg.audit.required) {
      return Err(key.rv(), "audit head key: {} (audit.required is true); {}", key.error().message, consequence);
    } else {
      log::Error("audit head key: {}; the audit files' heads are not signed by this command", key.error().message);
    }
  }
  // The file sinks' chain ends are anchored in the store like the module's (audit verify's
  // rollback check).
  auto r = audit::Recorder::Create(cfg.audit, std::move(head_key), /*threaded=*/false,
                                   core::StoreAnchor(cfg.store));
  if (!r.ok()) return Err(r.rv(), "{}; {}", r.error().message, consequence);
  a.recorder_ = std::move(r).value();
  return a;
}

Status OperatorAudit::CheckSinks(const config::Config& cfg, const std::vector<std::string>& dirs_to_create) {
  if (!cfg.audit.required || cfg.audit.sinks.empty()) return OkStatus();
  config::AuditConfig probe = cfg.audit;
  probe.sinks.clear();
  for (const config::AuditSinkConfig& s : cfg.audit.sinks) {
    if (s.type == "file") {
      std::filesystem::path dir = Normal(s.path).parent_path();
      std::error_code ec;
      if (!std::filesystem::exists(dir, ec) &&
          std::any_of(dirs_to_create.begin(), dirs_to_create.end(),
                      [&](const std::string& d) { return OnTheWayTo(dir, Normal(d)); }))
        continue;  // init makes its directory: opened once it exists
    }
    probe.sinks.push_back(s);
  }
  if (probe.sinks.empty()) return OkStatus();
  auto r = audit::Recorder::Create(probe, std::nullopt, /*threaded=*/false);
  if (!r.ok()) return Err(r.rv(), "{}; nothing changed", r.error().message);
  r.value()->Stop();
  return OkStatus();
}

OperatorAudit::~OperatorAudit() {
  if (recorder_) recorder_->Stop();
}

void OperatorAudit::Record(const char* operation, const Status& result, nlohmann::json properties, std::string name,
                           std::string vault) {
  const auto now = std::chrono::system_clock::now();
  const auto now_steady = std::chrono::steady_clock::now();
  if (recorder_) {
    audit::Event e = audit::Start(operation);
    e.time = since_;
    e.start = since_steady_;
    e.principal = principal_;
    e.auth_method = "os-user";
    e.critical = true;
    e.pool = pools_.count(vault) != 0;
    e.resource = std::move(vault);
    e.name = std::move(name);
    if (properties.is_object() && !properties.empty()) e.extra = std::move(properties);
    CK_RV rv = result.ok() ? CKR_OK : (result.rv() == CKR_OK ? CKR_FUNCTION_FAILED : result.rv());
    e.Finish(rv, result.ok() ? std::string() : result.error().message);
    recorder_->Submit(std::move(e));
  }
  since_ = now;
  since_steady_ = now_steady;
}

}  // namespace vaultp11::cli

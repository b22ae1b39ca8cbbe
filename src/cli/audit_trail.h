// The admin tool's audit trail: every `vaultp11` command that changes something writes one
// audit event per change (and one for a failure), to the sinks of `audit:` (the module's own),
// under the operator's identity: the OS user running the tool (identity.principal
// "os:<login name>", authMethod "os-user"; caller pid, uid and executable of this process).
// Read-only commands never open it.
#pragma once

#include <chrono>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "audit/recorder.h"
#include "config/config.h"
#include "util/result.h"

namespace vaultp11::cli {

class OperatorAudit {
 public:
  // Opens every sink of cfg.audit now, unthreaded (each Record writes before it returns). File
  // sinks' heads are signed with the key derived from the master key file ("audit-head") when
  // that file exists. With audit.required, a sink that cannot be opened (or a master key file
  // that cannot be read) is an error: "audit sink ...: ...; <consequence>". Otherwise the sink
  // is logged as failing and the command goes on.
  static Result<OperatorAudit> Open(const config::Config& cfg, std::string_view consequence = "nothing changed");

  // For `init` before the master key file exists (Open must wait for it): with audit.required,
  // opens and closes every sink once to check that it can be opened ("...; nothing changed"
  // when not). A file sink whose directory is missing and lies on the way to one of
  // `dirs_to_create` (which init creates) is left to Open. Without audit.required: nothing.
  static Status CheckSinks(const config::Config& cfg, const std::vector<std::string>& dirs_to_create);

  OperatorAudit(OperatorAudit&&) noexcept = default;
  OperatorAudit& operator=(OperatorAudit&&) noexcept = default;
  ~OperatorAudit();

  // One event: `operation` ("VaultCreate", "KeyBackup", ...) with `result` (a failure gives
  // resultType Failure and its message as resultDescription: messages never hold secrets),
  // `properties` added to the event's properties, `name` as properties.name and `vault` as
  // properties.pool when cfg names a pool of that name, else properties.vault (each left out
  // when empty). Its duration is the time since Open or the previous Record.
  void Record(const char* operation, const Status& result, nlohmann::json properties = nlohmann::json::object(),
              std::string name = "", std::string vault = "");

  // "os:<login name of getuid()>".
  static std::string OperatorPrincipal();

 private:
  OperatorAudit() = default;

  std::unique_ptr<audit::Recorder> recorder_;  // null: no sinks
  std::set<std::string> pools_;
  std::string principal_;
  std::chrono::system_clock::time_point since_;
  std::chrono::steady_clock::time_point since_steady_;
};

// `path` absolute and lexically normal (for audit properties), or as given when that fails.
std::string AbsolutePath(const std::string& path);

}  // namespace vaultp11::cli

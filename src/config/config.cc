// Loads the YAML config with yaml-cpp into the plain structs of config.h and validates it.
// yaml-cpp reports problems by throwing; every exception is caught here and turned into a
// CKR_FUNCTION_FAILED error "<file>:<line>: <key path>: <problem>".
#include "config/config.h"

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <yaml-cpp/yaml.h>

#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <initializer_list>
#include <map>
#include <string>
#include <utility>

#include "auth/roles.h"
#include "auth/secret_hash.h"
#include "util/file_check.h"
#include "util/log.h"
#include "util/strings.h"

#ifndef VAULTP11_DEFAULT_CONFIG
#error "VAULTP11_DEFAULT_CONFIG must be defined by the build"
#endif

namespace vaultp11::config {
namespace {

// The built-in role names of one kind (vault or pool), for messages.
std::string RoleNames(bool pool) {
  std::string out;
  for (const auto& r : auth::Roles())
    if (r.pool == pool) out += (out.empty() ? "" : ", ") + std::string(r.name);
  return out;
}

// Auth methods this release can verify.
constexpr std::array<std::string_view, 4> kSupportedAuthMethods = {"client_secret", "client_certificate",
                                                                  "managed_identity", "oauth2"};

constexpr std::array<std::string_view, 5> kLogLevels = {"debug", "info", "warning", "error", "off"};
constexpr std::array<std::string_view, 2> kSkus = {"standard", "premium"};
constexpr std::array<std::string_view, 3> kScopeKinds = {"keys", "secrets", "certificates"};

constexpr size_t kMaxConfigBytes = 4 << 20;

template <size_t N>
bool Contains(const std::array<std::string_view, N>& list, std::string_view v) {
  for (std::string_view s : list) {
    if (s == v) return true;
  }
  return false;
}

template <size_t N>
std::string JoinList(const std::array<std::string_view, N>& list, std::string_view sep) {
  std::string out;
  for (std::string_view s : list) {
    if (!out.empty()) out += sep;
    out += s;
  }
  return out;
}

// Quotes a user-supplied value for a message, escaping anything unprintable.
std::string Quote(std::string_view s) { return QuotePrintable(s, 200); }

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

std::string Child(std::string_view parent, std::string_view key) {
  if (parent.empty()) return std::string(key);
  return fmt::format("{}.{}", parent, key);
}

std::string Index(std::string_view parent, size_t i) { return fmt::format("{}[{}]", parent, i); }

// Strict YYYY-MM-DD (a valid Gregorian date).
std::optional<std::chrono::sys_days> ParseDate(std::string_view s) {
  if (s.size() != 10 || s[4] != '-' || s[7] != '-') return std::nullopt;
  auto digits = [&](size_t pos, size_t len) -> std::optional<int> {
    int v = 0;
    for (size_t i = pos; i < pos + len; ++i) {
      if (s[i] < '0' || s[i] > '9') return std::nullopt;
      v = v * 10 + (s[i] - '0');
    }
    return v;
  };
  auto y = digits(0, 4), m = digits(5, 2), d = digits(8, 2);
  if (!y || !m || !d) return std::nullopt;
  std::chrono::year_month_day ymd{std::chrono::year(*y),
                                  std::chrono::month(static_cast<unsigned>(*m)),
                                  std::chrono::day(static_cast<unsigned>(*d))};
  if (!ymd.ok()) return std::nullopt;
  return std::chrono::sys_days(ymd);
}

// One key/value pair of a YAML map.
struct Entry {
  YAML::Node key;
  YAML::Node value;
};

// Loader walks the document once, filling a Config; the first problem found stops it.
class Loader {
 public:
  Loader(std::string_view source, std::string_view base_dir)
      : source_(source), base_dir_(base_dir) {}

  Result<Config> Load(std::string_view yaml);

 private:
  // Line of a node, or `fallback` for nodes without a position (absent keys).
  static int LineOf(const YAML::Node& n, int fallback) {
    if (!n.IsDefined()) return fallback;
    YAML::Mark m = n.Mark();
    return m.is_null() ? fallback : m.line + 1;
  }
  // Line of a map value; an empty (null) value has its mark where the next token starts,
  // often the next line, so the key's line is used instead.
  static int LineOf(const Entry& e, int fallback) {
    int key_line = LineOf(e.key, fallback);
    return e.value.IsNull() ? key_line : LineOf(e.value, key_line);
  }

  template <typename... Args>
  Error Fail(int line, std::string_view path, fmt::format_string<Args...> f, Args&&... args) {
    return Err(CKR_FUNCTION_FAILED, "{}:{}: {}: {}", source_, line,
               path.empty() ? "(top level)" : path, fmt::format(f, std::forward<Args>(args)...));
  }

  // Collects the entries of a map node, rejecting unknown and duplicate keys.
  Result<std::map<std::string, Entry>> Fields(const YAML::Node& map, std::string_view path,
                                              int line,
                                              std::initializer_list<std::string_view> allowed);
  Result<std::string> String(const Entry& e, std::string_view path);
  // The `name` of list item `path`: required, valid (IsValidName) and unique in `seen`, ignoring
  // case (names that differ only in case would be confusable as token labels and in logs).
  // Returns the name and its line; `kind` names the list in the duplicate message.
  Result<std::pair<std::string, int>> UniqueName(std::map<std::string, Entry>& f, std::string_view path, int line,
                                                 std::string_view kind, std::map<std::string, int>& seen);
  Status RequireMap(const YAML::Node& n, std::string_view path, int line);
  Status RequireList(const YAML::Node& n, std::string_view path, int line);
  std::string Resolve(const std::string& p) const;

  Status LoadLog(const Entry& e, Config& cfg);
  Status LoadStore(const Entry* e, int root_line, Config& cfg);
  Status LoadHsms(const Entry& e, Config& cfg);
  Status LoadVaults(const Entry* e, int root_line, Config& cfg);
  Status LoadPools(const Entry& e, Config& cfg);
  Result<std::vector<std::string>> StringList(const Entry& e, std::string_view path);
  Status LoadPrincipals(const Entry& e, Config& cfg);
  Status LoadSecrets(const Entry* e, std::string_view path, int line, PrincipalConfig& pc);
  Status LoadRoleAssignments(const Entry& e, Config& cfg);
  Status LoadAccessPolicies(const Entry& e, const std::string& path, VaultConfig& v);
  Status LoadLogin(const Entry& e, Config& cfg);
  Status LoadAudit(const Entry& e, Config& cfg);
  Result<long long> Number(const Entry& e, std::string_view path, long long lo, long long hi);
  Result<bool> Bool(const Entry& e, std::string_view path);
  Status LoadSoftDelete(const Entry& e, const std::string& path, int line, SoftDeleteConfig& sd);
  Status LoadManagedIdentity(std::map<std::string, Entry>& f, const std::string& path, PrincipalConfig& pc);
  Status LoadClientCertificate(std::map<std::string, Entry>& f, const std::string& path, PrincipalConfig& pc);
  Status LoadOAuth2(std::map<std::string, Entry>& f, const std::string& path, PrincipalConfig& pc);
  Status CheckScope(const Config& cfg, const std::string& scope, std::string_view path, int line,
                    bool pool_role);

  std::string source_;
  std::string base_dir_;
  int seal_line_ = 0;  // of store.seal.hsm
};

Result<std::map<std::string, Entry>> Loader::Fields(
    const YAML::Node& map, std::string_view path, int line,
    std::initializer_list<std::string_view> allowed) {
  VAULTP11_RETURN_IF_ERROR(RequireMap(map, path, line));
  std::map<std::string, Entry> out;
  for (const auto& kv : map) {
    YAML::Node k = kv.first;
    int kline = LineOf(k, line);
    if (!k.IsScalar()) return Fail(kline, path, "keys must be strings");
    std::string name = k.Scalar();
    bool known = false;
    for (std::string_view a : allowed) known = known || a == name;
    if (!known) {
      // `{hash: $scrypt$ln=15,r=8,p=1$...}` unquoted in a flow map splits at the commas.
      if (name.find('=') != std::string::npos)
        return Fail(kline, Child(path, name), "unknown key (quote values that contain commas)");
      return Fail(kline, Child(path, name), "unknown key");
    }
    if (out.count(name) != 0) return Fail(kline, Child(path, name), "duplicate key");
    out.emplace(name, Entry{k, kv.second});
  }
  return out;
}

Result<std::pair<std::string, int>> Loader::UniqueName(std::map<std::string, Entry>& f, std::string_view path,
                                                       int line, std::string_view kind,
                                                       std::map<std::string, int>& seen) {
  auto name = f.find("name");
  if (name == f.end()) return Fail(line, Child(path, "name"), "is required");
  VAULTP11_ASSIGN_OR_RETURN(std::string v, String(name->second, Child(path, "name")));
  int nline = LineOf(name->second, line);
  if (!IsValidName(v))
    return Fail(nline, Child(path, "name"), "invalid name {}: use 1-127 characters of 0-9 a-z A-Z -", Quote(v));
  auto [it, inserted] = seen.emplace(Lower(v), nline);
  if (!inserted)
    return Fail(nline, Child(path, "name"), "duplicate {} name {} (first defined at line {})", kind, Quote(v),
                it->second);
  return std::make_pair(std::move(v), nline);
}

Status Loader::RequireMap(const YAML::Node& n, std::string_view path, int line) {
  if (!n.IsMap()) return Fail(LineOf(n, line), path, "must be a map");
  return OkStatus();
}

Status Loader::RequireList(const YAML::Node& n, std::string_view path, int line) {
  if (!n.IsSequence()) return Fail(LineOf(n, line), path, "must be a list");
  return OkStatus();
}

Result<std::string> Loader::String(const Entry& e, std::string_view path) {
  int line = LineOf(e, 0);
  if (e.value.IsNull()) return Fail(line, path, "needs a value");
  if (!e.value.IsScalar()) return Fail(line, path, "must be a string");
  const std::string& s = e.value.Scalar();
  if (s.empty()) return Fail(line, path, "must not be empty");
  if (s.find('\0') != std::string::npos) return Fail(line, path, "must not contain NUL characters");
  return s;
}

std::string Loader::Resolve(const std::string& p) const {
  std::filesystem::path path(p);
  if (path.is_absolute() || base_dir_.empty()) return path.lexically_normal().string();
  return (std::filesystem::path(base_dir_) / path).lexically_normal().string();
}

Status Loader::LoadLogin(const Entry& e, Config& cfg) {
  int line = LineOf(e, 1);
  if (e.value.IsNull()) return OkStatus();
  VAULTP11_ASSIGN_OR_RETURN(auto f, Fields(e.value, "login", line, {"max_failures", "lockout_seconds", "delay_ms",
                                                                   "max_delay_ms"}));
  const struct {
    const char* key;
    int lo, hi;
    int* out;
  } numbers[] = {{"max_failures", 0, 1000000, &cfg.login.max_failures},
                 {"lockout_seconds", 1, 31 * 86400, &cfg.login.lockout_seconds},
                 {"delay_ms", 0, 60000, &cfg.login.delay_ms},
                 {"max_delay_ms", 0, 600000, &cfg.login.max_delay_ms}};
  for (const auto& n : numbers) {
    auto it = f.find(n.key);
    if (it == f.end()) continue;
    std::string path = Child("login", n.key);
    VAULTP11_ASSIGN_OR_RETURN(std::string v, String(it->second, path));
    char* end = nullptr;
    errno = 0;
    long x = std::strtol(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || errno != 0 || x < n.lo || x > n.hi)
      return Fail(LineOf(it->second, line), path, "must be a whole number from {} to {}, got {}", n.lo, n.hi, Quote(v));
    *n.out = static_cast<int>(x);
  }
  return OkStatus();
}

Result<long long> Loader::Number(const Entry& e, std::string_view path, long long lo, long long hi) {
  VAULTP11_ASSIGN_OR_RETURN(std::string v, String(e, path));
  char* end = nullptr;
  errno = 0;
  long long x = std::strtoll(v.c_str(), &end, 10);
  if (*end != '\0' || errno != 0 || x < lo || x > hi)
    return Fail(LineOf(e, 0), path, "must be a whole number from {} to {}, got {}", lo, hi, Quote(v));
  return x;
}

Result<bool> Loader::Bool(const Entry& e, std::string_view path) {
  VAULTP11_ASSIGN_OR_RETURN(std::string v, String(e, path));
  if (v == "true") return true;
  if (v == "false") return false;
  return Fail(LineOf(e, 0), path, "must be true or false, got {}", Quote(v));
}

Status Loader::LoadSoftDelete(const Entry& e, const std::string& path, int line, SoftDeleteConfig& sd) {
  sd.enabled = true;
  if (e.value.IsNull()) return OkStatus();
  int sline = LineOf(e, line);
  VAULTP11_ASSIGN_OR_RETURN(auto f, Fields(e.value, path, sline, {"retention_days", "purge_protection"}));
  if (auto it = f.find("retention_days"); it != f.end()) {
    VAULTP11_ASSIGN_OR_RETURN(long long days, Number(it->second, Child(path, "retention_days"), 7, 90));
    sd.retention_days = static_cast<int>(days);
  }
  if (auto it = f.find("purge_protection"); it != f.end()) {
    VAULTP11_ASSIGN_OR_RETURN(sd.purge_protection, Bool(it->second, Child(path, "purge_protection")));
  }
  return OkStatus();
}

Status Loader::LoadAudit(const Entry& e, Config& cfg) {
  int line = LineOf(e, 1);
  cfg.audit.configured = true;
  if (e.value.IsNull()) return OkStatus();
  VAULTP11_ASSIGN_OR_RETURN(auto f, Fields(e.value, "audit", line, {"sinks", "required", "queue_size", "overflow", "coalesce_seconds"}));
  if (auto it = f.find("required"); it != f.end()) {
    VAULTP11_ASSIGN_OR_RETURN(cfg.audit.required, Bool(it->second, "audit.required"));
  }
  if (auto it = f.find("queue_size"); it != f.end()) {
    VAULTP11_ASSIGN_OR_RETURN(cfg.audit.queue_size, Number(it->second, "audit.queue_size", 16, 10000000));
  }
  if (auto it = f.find("overflow"); it != f.end()) {
    VAULTP11_ASSIGN_OR_RETURN(cfg.audit.overflow, String(it->second, "audit.overflow"));
    if (cfg.audit.overflow != "block" && cfg.audit.overflow != "drop")
      return Fail(LineOf(it->second, line), "audit.overflow", "must be block or drop");
  }
  if (auto it = f.find("coalesce_seconds"); it != f.end()) {
    VAULTP11_ASSIGN_OR_RETURN(cfg.audit.coalesce_seconds, Number(it->second, "audit.coalesce_seconds", 0, 86400));
  }
  auto sinks = f.find("sinks");
  if (sinks == f.end() || sinks->second.value.IsNull()) return OkStatus();
  VAULTP11_RETURN_IF_ERROR(RequireList(sinks->second.value, "audit.sinks", line));
  static constexpr std::array<std::string_view, 12> kFacilities = {
      "auth", "authpriv", "daemon", "user", "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7"};
  size_t i = 0;
  for (const YAML::Node& n : sinks->second.value) {
    const std::string path = Index("audit.sinks", i++);
    const int sline = LineOf(n, line);
    VAULTP11_ASSIGN_OR_RETURN(auto sf, Fields(n, path, sline, {"type", "path", "max_bytes", "daily", "retention_days",
                                                               "max_total_bytes", "facility", "ident", "socket",
                                                               "buffer_bytes"}));
    AuditSinkConfig sc;
    sc.line = sline;
    auto type = sf.find("type");
    if (type == sf.end()) return Fail(sline, Child(path, "type"), "is required (file, syslog or socket)");
    VAULTP11_ASSIGN_OR_RETURN(sc.type, String(type->second, Child(path, "type")));
    static const std::map<std::string, std::vector<std::string_view>> kKeys = {
        {"file", {"type", "path", "max_bytes", "daily", "retention_days", "max_total_bytes"}},
        {"syslog", {"type", "facility", "ident", "socket"}},
        {"socket", {"type", "socket", "buffer_bytes"}}};
    auto keys = kKeys.find(sc.type);
    if (keys == kKeys.end()) return Fail(LineOf(type->second, sline), Child(path, "type"), "must be file, syslog or socket");
    for (const auto& [k, entry] : sf)
      if (std::find(keys->second.begin(), keys->second.end(), k) == keys->second.end())
        return Fail(LineOf(entry, sline), Child(path, k), "is not a setting of a {} sink", sc.type);
    if (auto it = sf.find("path"); it != sf.end()) {
      VAULTP11_ASSIGN_OR_RETURN(std::string p, String(it->second, Child(path, "path")));
      sc.path = Resolve(p);
    } else if (sc.type == "file") {
      return Fail(sline, Child(path, "path"), "is required for a file sink");
    }
    if (auto it = sf.find("max_bytes"); it != sf.end()) {
      VAULTP11_ASSIGN_OR_RETURN(sc.max_bytes, Number(it->second, Child(path, "max_bytes"), 0, 1ll << 50));
    }
    if (sc.max_bytes != 0 && sc.max_bytes < 4096)
      return Fail(LineOf(sf.at("max_bytes"), sline), Child(path, "max_bytes"), "must be 0 (no size rotation) or at least 4096");
    if (auto it = sf.find("daily"); it != sf.end()) {
      VAULTP11_ASSIGN_OR_RETURN(sc.daily, Bool(it->second, Child(path, "daily")));
    }
    if (auto it = sf.find("retention_days"); it != sf.end()) {
      VAULTP11_ASSIGN_OR_RETURN(sc.retention_days, Number(it->second, Child(path, "retention_days"), 0, 36500));
    }
    if (auto it = sf.find("max_total_bytes"); it != sf.end()) {
      VAULTP11_ASSIGN_OR_RETURN(sc.max_total_bytes, Number(it->second, Child(path, "max_total_bytes"), 0, 1ll << 50));
      if (sc.max_total_bytes != 0 && sc.max_total_bytes < 4096)
        return Fail(LineOf(it->second, sline), Child(path, "max_total_bytes"), "must be 0 (no cap) or at least 4096");
    }
    if (auto it = sf.find("facility"); it != sf.end()) {
      VAULTP11_ASSIGN_OR_RETURN(sc.facility, String(it->second, Child(path, "facility")));
      if (!Contains(kFacilities, sc.facility))
        return Fail(LineOf(it->second, sline), Child(path, "facility"), "must be one of {}", JoinList(kFacilities, ", "));
    }
    if (auto it = sf.find("ident"); it != sf.end()) {
      VAULTP11_ASSIGN_OR_RETURN(sc.ident, String(it->second, Child(path, "ident")));
      if (sc.ident.size() > 48 || sc.ident.find_first_of(" \t\n\r:[]") != std::string::npos)
        return Fail(LineOf(it->second, sline), Child(path, "ident"), "must be 1-48 characters without spaces, ':' or brackets");
    }
    if (auto it = sf.find("socket"); it != sf.end()) {
      VAULTP11_ASSIGN_OR_RETURN(std::string p, String(it->second, Child(path, "socket")));
      sc.socket = Resolve(p);
    } else if (sc.type == "socket") {
      return Fail(sline, Child(path, "socket"), "is required for a socket sink");
    } else if (sc.type == "syslog") {
      sc.socket = "/dev/log";
    }
    if (!sc.socket.empty() && sc.socket.size() >= 108)
      return Fail(sline, Child(path, "socket"), "socket path is longer than 107 bytes");
    if (auto it = sf.find("buffer_bytes"); it != sf.end()) {
      VAULTP11_ASSIGN_OR_RETURN(sc.buffer_bytes, Number(it->second, Child(path, "buffer_bytes"), 4096, 1ll << 32));
    }
    for (const AuditSinkConfig& other : cfg.audit.sinks)
      if (other.type == "file" && sc.type == "file" && other.path == sc.path)
        return Fail(sline, Child(path, "path"), "the file {} is already a sink (line {})", Quote(sc.path), other.line);
    cfg.audit.sinks.push_back(std::move(sc));
  }
  return OkStatus();
}

Status Loader::LoadLog(const Entry& e, Config& cfg) {
  int line = LineOf(e, 1);
  if (e.value.IsNull()) return OkStatus();  // "log:" with every entry commented out
  VAULTP11_ASSIGN_OR_RETURN(auto f, Fields(e.value, "log", line, {"level", "sink"}));
  if (auto it = f.find("level"); it != f.end()) {
    VAULTP11_ASSIGN_OR_RETURN(std::string level, String(it->second, "log.level"));
    if (!Contains(kLogLevels, level))
      return Fail(LineOf(it->second, line), "log.level", "must be one of {}",
                  JoinList(kLogLevels, ", "));
    cfg.log.level = level;
  }
  if (auto it = f.find("sink"); it != f.end()) {
    VAULTP11_ASSIGN_OR_RETURN(std::string sink, String(it->second, "log.sink"));
    int sline = LineOf(it->second, line);
    if (sink == "stderr" || sink == "syslog") {
      cfg.log.sink = sink;
    } else if (sink.rfind("file:", 0) == 0) {
      if (sink.size() == 5) return Fail(sline, "log.sink", "file: needs a path");
      cfg.log.sink = "file:" + Resolve(sink.substr(5));
    } else {
      return Fail(sline, "log.sink", "must be stderr, syslog or file:<path>");
    }
  }
  return OkStatus();
}

Status Loader::LoadStore(const Entry* e, int root_line, Config& cfg) {
  if (e == nullptr) return Fail(root_line, "store", "is required");
  int line = LineOf(*e, root_line);
  VAULTP11_ASSIGN_OR_RETURN(auto f, Fields(e->value, "store", line,
                                           {"backend", "path", "dsn", "password_file", "master_key_file", "seal"}));
  const auto text = [&](const char* key, std::string* out) -> Result<bool> {
    auto it = f.find(key);
    if (it == f.end()) return false;
    VAULTP11_ASSIGN_OR_RETURN(*out, String(it->second, std::string("store.") + key));
    return true;
  };
  const auto line_of = [&](const char* key) { return LineOf(f.find(key)->second, line); };
  std::string backend = "sqlite";
  VAULTP11_RETURN_IF_ERROR(text("backend", &backend).status());
  // store.seal: { hsm, key_label }; the hsm name is checked once hsms[] is read (Load).
  if (auto it = f.find("seal"); it != f.end()) {
    const int sline = LineOf(it->second, line);
    VAULTP11_ASSIGN_OR_RETURN(auto sf, Fields(it->second.value, "store.seal", sline, {"hsm", "key_label"}));
    for (const char* required : {"hsm", "key_label"})
      if (sf.count(required) == 0) return Fail(sline, std::string("store.seal.") + required, "is required");
    VAULTP11_ASSIGN_OR_RETURN(cfg.store.seal.hsm, String(sf["hsm"], "store.seal.hsm"));
    VAULTP11_ASSIGN_OR_RETURN(cfg.store.seal.key_label, String(sf["key_label"], "store.seal.key_label"));
    if (cfg.store.seal.hsm.empty()) return Fail(LineOf(sf["hsm"], sline), "store.seal.hsm", "must name an hsm of hsms");
    if (cfg.store.seal.key_label.empty() || cfg.store.seal.key_label.size() > 128)
      return Fail(LineOf(sf["key_label"], sline), "store.seal.key_label", "must be 1-128 characters");
    seal_line_ = LineOf(sf["hsm"], sline);
  }
  if (backend == "postgresql") {
    cfg.store.backend = store::Options::Backend::kPostgres;
    if (f.count("path") != 0)
      return Fail(line_of("path"), "store.path", "is for backend sqlite; backend postgresql takes store.dsn");
    VAULTP11_ASSIGN_OR_RETURN(bool have_dsn, text("dsn", &cfg.store.dsn));
    if (!have_dsn || cfg.store.dsn.empty())
      return Fail(line, "store.dsn", "is required with backend postgresql (a libpq connection string or URI)");
    std::string pw;
    VAULTP11_ASSIGN_OR_RETURN(bool have_pw, text("password_file", &pw));
    if (have_pw) cfg.store.password_file = Resolve(pw);
    std::string key;
    VAULTP11_ASSIGN_OR_RETURN(bool have_key, text("master_key_file", &key));
    if (!have_key && !cfg.store.sealed())
      return Fail(line, "store.master_key_file",
                  "is required with backend postgresql (the same file on every host of the store), unless "
                  "store.seal keeps the root key in an HSM");
    if (have_key) cfg.store.master_key_file = Resolve(key);
    return OkStatus();
  }
  if (backend != "sqlite") return Fail(line_of("backend"), "store.backend", "must be sqlite or postgresql");
  for (const char* pg_only : {"dsn", "password_file"})
    if (f.count(pg_only) != 0)
      return Fail(line_of(pg_only), std::string("store.") + pg_only, "is for backend postgresql");
  std::string db;
  VAULTP11_ASSIGN_OR_RETURN(bool have_path, text("path", &db));
  if (!have_path) return Fail(line, "store.path", "is required");
  cfg.store.path = Resolve(db);
  std::string key;
  VAULTP11_ASSIGN_OR_RETURN(bool have_key, text("master_key_file", &key));
  if (have_key) {
    cfg.store.master_key_file = Resolve(key);
    if (cfg.store.master_key_file == cfg.store.path)
      return Fail(line_of("master_key_file"), "store.master_key_file", "must not be the database file");
  } else if (!cfg.store.sealed()) {
    cfg.store.master_key_file = cfg.store.path + ".masterkey";
  }
  return OkStatus();
}

Result<std::vector<std::string>> Loader::StringList(const Entry& e, std::string_view path) {
  int line = LineOf(e, 1);
  VAULTP11_RETURN_IF_ERROR(RequireList(e.value, path, line));
  std::vector<std::string> out;
  for (size_t i = 0; i < e.value.size(); ++i) {
    Entry item{e.key, e.value[i]};
    VAULTP11_ASSIGN_OR_RETURN(std::string v, String(item, Index(path, i)));
    out.push_back(std::move(v));
  }
  return out;
}

Status Loader::LoadHsms(const Entry& e, Config& cfg) {
  int line = LineOf(e, 1);
  if (e.value.IsNull()) return OkStatus();
  VAULTP11_RETURN_IF_ERROR(RequireList(e.value, "hsms", line));
  std::map<std::string, int> seen;
  for (size_t i = 0; i < e.value.size(); ++i) {
    const YAML::Node item = e.value[i];
    std::string path = Index("hsms", i);
    HsmConfig h;
    h.line = LineOf(item, line);
    VAULTP11_ASSIGN_OR_RETURN(
        auto f, Fields(item, path, h.line,
                              {"name", "module", "token", "pin_file", "pin_env", "so_pin_file", "quirks"}));
    for (const char* required : {"name", "module", "token"})
      if (f.find(required) == f.end()) return Fail(h.line, Child(path, required), "is required");
    VAULTP11_ASSIGN_OR_RETURN(auto name, UniqueName(f, path, h.line, "hsm", seen));
    h.name = std::move(name.first);
    VAULTP11_ASSIGN_OR_RETURN(std::string module, String(f["module"], Child(path, "module")));
    h.module = Resolve(module);
    VAULTP11_ASSIGN_OR_RETURN(h.token, String(f["token"], Child(path, "token")));
    if (h.token.empty()) return Fail(LineOf(f["token"], h.line), Child(path, "token"), "must not be empty");
    bool has_file = f.count("pin_file") != 0, has_env = f.count("pin_env") != 0;
    if (has_file == has_env) return Fail(h.line, path, "give exactly one of pin_file and pin_env");
    if (has_file) {
      VAULTP11_ASSIGN_OR_RETURN(std::string pf, String(f["pin_file"], Child(path, "pin_file")));
      h.pin_file = Resolve(pf);
    } else {
      VAULTP11_ASSIGN_OR_RETURN(h.pin_env, String(f["pin_env"], Child(path, "pin_env")));
    }
    if (auto so = f.find("so_pin_file"); so != f.end()) {
      VAULTP11_ASSIGN_OR_RETURN(h.so_pin_file, String(so->second, Child(path, "so_pin_file")));
      h.so_pin_file = Resolve(h.so_pin_file);
    }
    if (auto q = f.find("quirks"); q != f.end()) {
      VAULTP11_ASSIGN_OR_RETURN(h.quirks, StringList(q->second, Child(path, "quirks")));
      for (const auto& quirk : h.quirks)
        if (quirk != "no-deinit" && quirk != "fork-finalize")
          return Fail(LineOf(q->second, h.line), Child(path, "quirks"),
                      "unknown quirk {} (known: no-deinit, fork-finalize)", Quote(quirk));
    }
    cfg.hsms.push_back(std::move(h));
  }
  return OkStatus();
}

Status Loader::LoadVaults(const Entry* e, int root_line, Config& cfg) {
  if (e == nullptr) return Fail(root_line, "vaults", "at least one vault is required");
  int line = LineOf(*e, root_line);
  if (e->value.IsNull()) return Fail(line, "vaults", "at least one vault is required");
  VAULTP11_RETURN_IF_ERROR(RequireList(e->value, "vaults", line));
  if (e->value.size() == 0) return Fail(line, "vaults", "at least one vault is required");
  std::map<std::string, int> seen;  // lower-cased name -> line
  for (size_t i = 0; i < e->value.size(); ++i) {
    const YAML::Node item = e->value[i];
    std::string path = Index("vaults", i);
    VaultConfig v;
    v.line = LineOf(item, line);
    VAULTP11_ASSIGN_OR_RETURN(auto f, Fields(item, path, v.line, {"name", "sku", "hsms", "default_protection",
                                                                  "authorization", "access_policies", "soft_delete"}));
    if (auto sd = f.find("soft_delete"); sd != f.end())
      VAULTP11_RETURN_IF_ERROR(LoadSoftDelete(sd->second, Child(path, "soft_delete"), v.line, v.soft_delete));
    VAULTP11_ASSIGN_OR_RETURN(auto name, UniqueName(f, path, v.line, "vault", seen));
    v.name = std::move(name.first);
    if (auto sku = f.find("sku"); sku != f.end()) {
      VAULTP11_ASSIGN_OR_RETURN(v.sku, String(sku->second, Child(path, "sku")));
      if (!Contains(kSkus, v.sku))
        return Fail(LineOf(sku->second, v.line), Child(path, "sku"), "must be standard or premium");
    }
    if (auto hs = f.find("hsms"); hs != f.end()) {
      int hline = LineOf(hs->second, v.line);
      if (v.sku != "premium") return Fail(hline, Child(path, "hsms"), "only premium vaults hold HSM keys");
      VAULTP11_ASSIGN_OR_RETURN(v.hsms, StringList(hs->second, Child(path, "hsms")));
      if (v.hsms.size() != 1)
        return Fail(hline, Child(path, "hsms"), "a vault uses exactly one HSM (spread over several with a managed HSM pool)");
      for (const auto& h : v.hsms)
        if (cfg.FindHsm(h) == nullptr) return Fail(hline, Child(path, "hsms"), "no hsm named {} in hsms", Quote(h));
    }
    if (auto dp = f.find("default_protection"); dp != f.end()) {
      VAULTP11_ASSIGN_OR_RETURN(v.default_protection, String(dp->second, Child(path, "default_protection")));
      int dline = LineOf(dp->second, v.line);
      if (v.default_protection != "software" && v.default_protection != "hsm")
        return Fail(dline, Child(path, "default_protection"), "must be software or hsm");
      if (v.default_protection == "hsm" && v.hsms.empty())
        return Fail(dline, Child(path, "default_protection"), "hsm needs a premium vault with hsms");
    }
    if (auto az = f.find("authorization"); az != f.end()) {
      VAULTP11_ASSIGN_OR_RETURN(v.authorization, String(az->second, Child(path, "authorization")));
      if (v.authorization != "rbac" && v.authorization != "access_policy")
        return Fail(LineOf(az->second, v.line), Child(path, "authorization"), "must be rbac or access_policy");
    }
    if (auto ap = f.find("access_policies"); ap != f.end()) {
      if (v.authorization != "access_policy")
        return Fail(LineOf(ap->second, v.line), Child(path, "access_policies"),
                    "only with authorization: access_policy (a vault uses RBAC or access policies, never both)");
      VAULTP11_RETURN_IF_ERROR(LoadAccessPolicies(ap->second, Child(path, "access_policies"), v));
    }
    cfg.vaults.push_back(std::move(v));
  }
  return OkStatus();
}

Status Loader::LoadAccessPolicies(const Entry& e, const std::string& path, VaultConfig& v) {
  int line = LineOf(e, v.line);
  VAULTP11_RETURN_IF_ERROR(RequireList(e.value, path, line));
  for (size_t i = 0; i < e.value.size(); ++i) {
    const YAML::Node item = e.value[i];
    std::string ipath = Index(path, i);
    AccessPolicyConfig ap;
    ap.line = LineOf(item, line);
    VAULTP11_ASSIGN_OR_RETURN(auto f, Fields(item, ipath, ap.line, {"principal", "keys", "secrets", "certificates"}));
    auto p = f.find("principal");
    if (p == f.end()) return Fail(ap.line, Child(ipath, "principal"), "is required");
    VAULTP11_ASSIGN_OR_RETURN(ap.principal, String(p->second, Child(ipath, "principal")));
    for (const auto& other : v.access_policies)
      if (other.principal == ap.principal)
        return Fail(ap.line, Child(ipath, "principal"), "{} already has an access policy on this vault (line {})",
                    Quote(ap.principal), other.line);
    const std::pair<const char*, auth::Kind> kinds[] = {
        {"keys", auth::Kind::kKey}, {"secrets", auth::Kind::kSecret}, {"certificates", auth::Kind::kCertificate}};
    for (const auto& [key, kind] : kinds) {
      auto it = f.find(key);
      if (it == f.end()) continue;
      VAULTP11_ASSIGN_OR_RETURN(auto names, StringList(it->second, Child(ipath, key)));
      uint32_t& bits = kind == auth::Kind::kKey ? ap.keys : kind == auth::Kind::kSecret ? ap.secrets : ap.certificates;
      for (const auto& n : names) {
        auto bit = auth::PermissionByName(kind, n);
        if (!bit)
          return Fail(LineOf(it->second, ap.line), Child(ipath, key), "unknown permission {} (known: {})", Quote(n),
                      auth::PermissionNames(kind));
        bits |= *bit;
      }
    }
    v.access_policies.push_back(std::move(ap));
  }
  return OkStatus();
}

Status Loader::LoadPools(const Entry& e, Config& cfg) {
  int line = LineOf(e, 1);
  if (e.value.IsNull()) return OkStatus();
  VAULTP11_RETURN_IF_ERROR(RequireList(e.value, "managed_hsm_pools", line));
  std::map<std::string, int> seen;  // lower-cased pool name -> line
  for (size_t i = 0; i < e.value.size(); ++i) {
    const YAML::Node item = e.value[i];
    std::string path = Index("managed_hsm_pools", i);
    ManagedHsmPoolConfig pc;
    pc.line = LineOf(item, line);
    VAULTP11_ASSIGN_OR_RETURN(auto f, Fields(item, path, pc.line, {"name", "hsms", "quorum", "health_check_ms", "soft_delete"}));
    if (auto sd = f.find("soft_delete"); sd != f.end())
      VAULTP11_RETURN_IF_ERROR(LoadSoftDelete(sd->second, Child(path, "soft_delete"), pc.line, pc.soft_delete));
    for (const char* required : {"name", "hsms"})
      if (f.find(required) == f.end()) return Fail(pc.line, Child(path, required), "is required");
    VAULTP11_ASSIGN_OR_RETURN(auto name, UniqueName(f, path, pc.line, "pool", seen));
    pc.name = std::move(name.first);
    int nline = name.second;
    // Pools and vaults share the slot list and the store: one namespace, case-insensitive.
    for (const VaultConfig& v : cfg.vaults)
      if (Lower(v.name) == Lower(pc.name))
        return Fail(nline, Child(path, "name"), "{} is already the name of a vault (line {})",
                    Quote(pc.name), v.line);
    const Entry& hs = f["hsms"];
    int hline = LineOf(hs, pc.line);
    VAULTP11_ASSIGN_OR_RETURN(pc.hsms, StringList(hs, Child(path, "hsms")));
    if (pc.hsms.empty()) return Fail(hline, Child(path, "hsms"), "a pool needs at least one hsm");
    std::map<std::string, size_t> members;
    for (size_t j = 0; j < pc.hsms.size(); ++j) {
      const std::string& h = pc.hsms[j];
      if (cfg.FindHsm(h) == nullptr)
        return Fail(hline, Index(Child(path, "hsms"), j), "no hsm named {} in hsms", Quote(h));
      auto [m, fresh] = members.emplace(h, j);
      if (!fresh)
        return Fail(hline, Index(Child(path, "hsms"), j),
                    "hsm {} is listed twice (also hsms[{}]): each member holds one copy", Quote(h),
                    m->second);
    }
    // Whole numbers from lo to hi.
    auto number = [&](const char* key, int lo, int hi, const char* unit, int& out) -> Status {
      auto q = f.find(key);
      if (q == f.end()) return OkStatus();
      int qline = LineOf(q->second, pc.line);
      VAULTP11_ASSIGN_OR_RETURN(std::string qs, String(q->second, Child(path, key)));
      long long n = 0;
      bool ok = !qs.empty() && qs.size() <= 9;
      for (char c : qs) {
        ok = ok && c >= '0' && c <= '9';
        if (ok) n = n * 10 + (c - '0');
      }
      if (!ok || n < lo || n > hi)
        return Fail(qline, Child(path, key), "must be a whole number from {} to {}{}, got {}", lo, hi, unit, Quote(qs));
      out = static_cast<int>(n);
      return OkStatus();
    };
    VAULTP11_RETURN_IF_ERROR(number("quorum", 1, static_cast<int>(pc.hsms.size()), " (the pool's members)", pc.quorum));
    VAULTP11_RETURN_IF_ERROR(number("health_check_ms", 10, 3600000, " (milliseconds)", pc.health_check_ms));
    cfg.managed_hsm_pools.push_back(std::move(pc));
  }
  return OkStatus();
}

Status Loader::LoadSecrets(const Entry* e, std::string_view path, int line, PrincipalConfig& pc) {
  std::string spath = Child(path, "secrets");
  if (e == nullptr) return Fail(line, spath, "is required for auth client_secret");
  int sline = LineOf(*e, line);
  VAULTP11_RETURN_IF_ERROR(RequireList(e->value, spath, sline));
  if (e->value.size() == 0) return Fail(sline, spath, "at least one secret is required");
  for (size_t j = 0; j < e->value.size(); ++j) {
    const YAML::Node item = e->value[j];
    std::string ipath = Index(spath, j);
    int iline = LineOf(item, sline);
    VAULTP11_ASSIGN_OR_RETURN(auto f, Fields(item, ipath, iline, {"hash", "expires"}));
    ClientSecret cs;
    auto hash = f.find("hash");
    if (hash == f.end()) return Fail(iline, Child(ipath, "hash"), "is required");
    VAULTP11_ASSIGN_OR_RETURN(cs.hash, String(hash->second, Child(ipath, "hash")));
    // The value is not echoed: it is a hash, but there is no need to spread it into logs.
    if (!auth::IsWellFormedHash(cs.hash))
      return Fail(LineOf(hash->second, iline), Child(ipath, "hash"),
                  "not a valid secret hash (generate one with `vaultp11 hash-secret`)");
    if (auto exp = f.find("expires"); exp != f.end()) {
      VAULTP11_ASSIGN_OR_RETURN(std::string date, String(exp->second, Child(ipath, "expires")));
      cs.expires = ParseDate(date);
      if (!cs.expires)
        return Fail(LineOf(exp->second, iline), Child(ipath, "expires"),
                    "must be a date YYYY-MM-DD, got {}", Quote(date));
    }
    pc.secrets.push_back(std::move(cs));
  }
  return OkStatus();
}

// A managed identity is bound to one OS identity: a user (by name or uid) or a group. Names
// are resolved now, so a typo fails at load rather than at every login.
Status Loader::LoadManagedIdentity(std::map<std::string, Entry>& f, const std::string& path, PrincipalConfig& pc) {
  int given = static_cast<int>(f.count("unix_user") + f.count("uid") + f.count("unix_group"));
  if (given != 1) return Fail(pc.line, path, "give exactly one of unix_user, uid and unix_group for auth managed_identity");
  if (f.count("uid")) {
    VAULTP11_ASSIGN_OR_RETURN(std::string v, String(f["uid"], Child(path, "uid")));
    char* end = nullptr;
    errno = 0;
    unsigned long n = std::strtoul(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || errno != 0 || n > 0x7fffffffUL || v[0] == '-')
      return Fail(LineOf(f["uid"], pc.line), Child(path, "uid"), "must be a numeric user id, got {}", Quote(v));
    pc.uid = static_cast<uid_t>(n);
  } else if (f.count("unix_user")) {
    VAULTP11_ASSIGN_OR_RETURN(std::string v, String(f["unix_user"], Child(path, "unix_user")));
    struct passwd pw, *res = nullptr;
    std::vector<char> buf(16384);
    if (getpwnam_r(v.c_str(), &pw, buf.data(), buf.size(), &res) != 0 || res == nullptr)
      return Fail(LineOf(f["unix_user"], pc.line), Child(path, "unix_user"), "no user named {} on this host", Quote(v));
    pc.uid = pw.pw_uid;
  } else {
    VAULTP11_ASSIGN_OR_RETURN(std::string v, String(f["unix_group"], Child(path, "unix_group")));
    struct group gr, *res = nullptr;
    std::vector<char> buf(65536);
    if (getgrnam_r(v.c_str(), &gr, buf.data(), buf.size(), &res) != 0 || res == nullptr)
      return Fail(LineOf(f["unix_group"], pc.line), Child(path, "unix_group"), "no group named {} on this host",
                  Quote(v));
    pc.gid = gr.gr_gid;
  }
  return OkStatus();
}

// The registered certificate of a client_certificate principal: a PEM file read now, so a
// missing or unreadable certificate fails at load. Its validity is checked at each login.
Status Loader::LoadClientCertificate(std::map<std::string, Entry>& f, const std::string& path, PrincipalConfig& pc) {
  auto it = f.find("certificate_file");
  if (it == f.end()) return Fail(pc.line, Child(path, "certificate_file"), "is required for auth client_certificate");
  int line = LineOf(it->second, pc.line);
  VAULTP11_ASSIGN_OR_RETURN(std::string file, String(it->second, Child(path, "certificate_file")));
  pc.certificate_file = Resolve(file);
  std::string warning;
  VAULTP11_RETURN_IF_ERROR(CheckNotWritableByOthers(pc.certificate_file, "certificate file", &warning));
  if (!warning.empty()) log::Warning("{}", warning);
  BIO* bio = BIO_new_file(pc.certificate_file.c_str(), "r");
  if (bio == nullptr) return Fail(line, Child(path, "certificate_file"), "cannot read {}", pc.certificate_file);
  X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  ERR_clear_error();
  if (cert == nullptr)
    return Fail(line, Child(path, "certificate_file"), "{} holds no PEM certificate", pc.certificate_file);
  unsigned char* der = nullptr;
  int n = i2d_X509(cert, &der);
  X509_free(cert);
  if (n <= 0) return Fail(line, Child(path, "certificate_file"), "{}: the certificate cannot be encoded", pc.certificate_file);
  pc.certificate_der.assign(der, der + n);
  OPENSSL_free(der);
  return OkStatus();
}

// An oauth2 principal: tokens from `issuer` for `audience`, signed by a key of `jwks_file`
// (read at each login, so the provider's key rotation needs no restart).
Status Loader::LoadOAuth2(std::map<std::string, Entry>& f, const std::string& path, PrincipalConfig& pc) {
  for (const char* k : {"issuer", "audience", "jwks_file"})
    if (!f.count(k)) return Fail(pc.line, Child(path, k), "is required for auth oauth2");
  VAULTP11_ASSIGN_OR_RETURN(pc.issuer, String(f["issuer"], Child(path, "issuer")));
  VAULTP11_ASSIGN_OR_RETURN(pc.audience, String(f["audience"], Child(path, "audience")));
  VAULTP11_ASSIGN_OR_RETURN(std::string jwks, String(f["jwks_file"], Child(path, "jwks_file")));
  pc.jwks_file = Resolve(jwks);
  for (auto [k, v] : {std::pair<const char*, std::string*>{"issuer", &pc.issuer}, {"audience", &pc.audience}})
    if (v->empty() || v->size() > 512) return Fail(LineOf(f[k], pc.line), Child(path, k), "must be 1-512 characters");
  if (f.count("claim")) {
    VAULTP11_ASSIGN_OR_RETURN(pc.claim, String(f["claim"], Child(path, "claim")));
    if (pc.claim.empty() || pc.claim.size() > 64) return Fail(LineOf(f["claim"], pc.line), Child(path, "claim"), "must be 1-64 characters");
  }
  pc.subject = pc.name;
  if (f.count("subject")) {
    VAULTP11_ASSIGN_OR_RETURN(pc.subject, String(f["subject"], Child(path, "subject")));
    if (pc.subject.empty()) return Fail(LineOf(f["subject"], pc.line), Child(path, "subject"), "must not be empty");
  }
  if (f.count("leeway_seconds")) {
    VAULTP11_ASSIGN_OR_RETURN(std::string v, String(f["leeway_seconds"], Child(path, "leeway_seconds")));
    char* end = nullptr;
    long n = std::strtol(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || n < 0 || n > 600)
      return Fail(LineOf(f["leeway_seconds"], pc.line), Child(path, "leeway_seconds"),
                  "must be a whole number of seconds from 0 to 600, got {}", Quote(v));
    pc.leeway_seconds = static_cast<int>(n);
  }
  return OkStatus();
}

Status Loader::LoadPrincipals(const Entry& e, Config& cfg) {
  int line = LineOf(e, 1);
  if (e.value.IsNull()) return OkStatus();
  VAULTP11_RETURN_IF_ERROR(RequireList(e.value, "principals", line));
  std::map<std::string, int> seen;  // lower-cased name -> line
  for (size_t i = 0; i < e.value.size(); ++i) {
    const YAML::Node item = e.value[i];
    std::string path = Index("principals", i);
    PrincipalConfig pc;
    pc.line = LineOf(item, line);
    VAULTP11_ASSIGN_OR_RETURN(auto f, Fields(item, path, pc.line,
                                             {"name", "auth", "secrets", "unix_user", "uid", "unix_group",
                                              "certificate_file", "issuer", "audience", "jwks_file", "claim",
                                              "subject", "leeway_seconds"}));
    VAULTP11_ASSIGN_OR_RETURN(auto name, UniqueName(f, path, pc.line, "principal", seen));
    pc.name = std::move(name.first);
    auto auth = f.find("auth");
    if (auth == f.end()) return Fail(pc.line, Child(path, "auth"), "is required");
    VAULTP11_ASSIGN_OR_RETURN(pc.auth, String(auth->second, Child(path, "auth")));
    if (!Contains(kSupportedAuthMethods, pc.auth))
      return Fail(LineOf(auth->second, pc.line), Child(path, "auth"),
                  "auth method {} is not supported yet (supported: {})", Quote(pc.auth),
                  JoinList(kSupportedAuthMethods, ", "));
    // Keys that belong to one method only.
    const std::pair<const char*, const char*> owned[] = {
        {"unix_user", "managed_identity"}, {"uid", "managed_identity"},    {"unix_group", "managed_identity"},
        {"certificate_file", "client_certificate"}, {"issuer", "oauth2"}, {"audience", "oauth2"},
        {"jwks_file", "oauth2"},          {"claim", "oauth2"},             {"subject", "oauth2"},
        {"leeway_seconds", "oauth2"},     {"secrets", "client_secret"}};
    for (const auto& [k, method] : owned)
      if (f.count(k) && pc.auth != method)
        return Fail(LineOf(f[k], pc.line), Child(path, k), "only for auth {}", method);
    if (pc.auth == "managed_identity") {
      VAULTP11_RETURN_IF_ERROR(LoadManagedIdentity(f, path, pc));
    } else if (pc.auth == "client_certificate") {
      VAULTP11_RETURN_IF_ERROR(LoadClientCertificate(f, path, pc));
    } else if (pc.auth == "oauth2") {
      VAULTP11_RETURN_IF_ERROR(LoadOAuth2(f, path, pc));
    } else {
      auto secrets = f.find("secrets");
      VAULTP11_RETURN_IF_ERROR(
          LoadSecrets(secrets == f.end() ? nullptr : &secrets->second, path, pc.line, pc));
    }
    cfg.principals.push_back(std::move(pc));
  }
  return OkStatus();
}

Status Loader::CheckScope(const Config& cfg, const std::string& scope, std::string_view path,
                          int line, bool pool_role) {
  const std::string_view help =
      pool_role ? "must be /managedHsms/<pool> or /managedHsms/<pool>/keys/<name>"
                : "must be /vaults/<vault> or /vaults/<vault>/keys|secrets|certificates/<name>";
  std::vector<std::string_view> parts;
  std::string_view rest(scope);
  if (rest.empty() || rest[0] != '/') return Fail(line, path, "{}, got {}", help, Quote(scope));
  rest.remove_prefix(1);
  while (true) {
    size_t slash = rest.find('/');
    parts.push_back(rest.substr(0, slash));
    if (slash == std::string_view::npos) break;
    rest.remove_prefix(slash + 1);
  }
  std::string_view root = pool_role ? "managedHsms" : "vaults";
  if ((parts.size() != 2 && parts.size() != 4) || parts[0] != root) {
    if (!parts.empty() && parts[0] == (pool_role ? "vaults" : "managedHsms"))
      return Fail(line, path, "a {} role's scope {}, got {}",
                  pool_role ? "managed HSM pool" : "vault", help, Quote(scope));
    return Fail(line, path, "{}, got {}", help, Quote(scope));
  }
  if (!IsValidName(parts[1]))
    return Fail(line, path, "invalid {} name {} in scope", pool_role ? "pool" : "vault", Quote(parts[1]));
  if (pool_role && cfg.FindPool(parts[1]) == nullptr)
    return Fail(line, path, "no pool named {} in managed_hsm_pools", Quote(parts[1]));
  if (!pool_role && cfg.FindVault(parts[1]) == nullptr)
    return Fail(line, path, "no vault named {} in vaults", Quote(parts[1]));
  if (parts.size() == 4) {
    // Pools hold keys only.
    if (pool_role ? parts[2] != "keys" : !Contains(kScopeKinds, parts[2]))
      return Fail(line, path, "{}, got {}", help, Quote(scope));
    if (!IsValidName(parts[3]))
      return Fail(line, path,
                  "invalid object name {} in scope: use 1-127 characters of 0-9 a-z A-Z -",
                  Quote(parts[3]));
  }
  return OkStatus();
}

Status Loader::LoadRoleAssignments(const Entry& e, Config& cfg) {
  int line = LineOf(e, 1);
  if (e.value.IsNull()) return OkStatus();
  VAULTP11_RETURN_IF_ERROR(RequireList(e.value, "role_assignments", line));
  for (size_t i = 0; i < e.value.size(); ++i) {
    const YAML::Node item = e.value[i];
    std::string path = Index("role_assignments", i);
    RoleAssignmentConfig ra;
    ra.line = LineOf(item, line);
    VAULTP11_ASSIGN_OR_RETURN(auto f, Fields(item, path, ra.line, {"principal", "role", "scope"}));
    for (std::string_view key : {"principal", "role", "scope"}) {
      if (f.find(std::string(key)) == f.end())
        return Fail(ra.line, Child(path, key), "is required");
    }
    const Entry& principal = f.at("principal");
    VAULTP11_ASSIGN_OR_RETURN(ra.principal, String(principal, Child(path, "principal")));
    if (cfg.FindPrincipal(ra.principal) == nullptr)
      return Fail(LineOf(principal, ra.line), Child(path, "principal"),
                  "no principal named {} in principals", Quote(ra.principal));
    const Entry& role = f.at("role");
    VAULTP11_ASSIGN_OR_RETURN(ra.role, String(role, Child(path, "role")));
    const auth::RoleDef* def = auth::FindRole(ra.role);
    if (def == nullptr)
      return Fail(LineOf(role, ra.line), Child(path, "role"), "unknown role {} (built-in roles: {})", Quote(ra.role),
                  RoleNames(ra.role.rfind("Managed HSM ", 0) == 0));
    const bool pool_role = def->pool;
    const Entry& scope = f.at("scope");
    VAULTP11_ASSIGN_OR_RETURN(ra.scope, String(scope, Child(path, "scope")));
    VAULTP11_RETURN_IF_ERROR(
        CheckScope(cfg, ra.scope, Child(path, "scope"), LineOf(scope, ra.line), pool_role));
    // A vault uses either RBAC or access policies, never both.
    if (!pool_role) {
      std::string_view v(ra.scope);
      v.remove_prefix(std::string_view("/vaults/").size());
      const VaultConfig* vc = cfg.FindVault(v.substr(0, v.find('/')));
      if (vc != nullptr && vc->authorization == "access_policy")
        return Fail(LineOf(scope, ra.line), Child(path, "scope"),
                    "vault {} uses access policies (authorization: access_policy), not role assignments", vc->name);
    }
    cfg.role_assignments.push_back(std::move(ra));
  }
  return OkStatus();
}

Result<Config> Loader::Load(std::string_view yaml) {
  std::vector<YAML::Node> docs;
  try {
    docs = YAML::LoadAll(std::string(yaml));
  } catch (const YAML::Exception& e) {
    int line = e.mark.is_null() ? 1 : e.mark.line + 1;
    return Err(CKR_FUNCTION_FAILED, "{}:{}: syntax error: {}", source_, line, e.msg);
  }
  if (docs.size() > 1) return Fail(LineOf(docs[1], 1), "", "only one YAML document is allowed");
  YAML::Node root = docs.empty() ? YAML::Node(YAML::NodeType::Map) : docs[0];
  if (root.IsNull()) root = YAML::Node(YAML::NodeType::Map);  // an empty file
  int root_line = LineOf(root, 1);

  Config cfg;
  cfg.source = source_;
  VAULTP11_ASSIGN_OR_RETURN(
      auto f,
      Fields(root, "", root_line,
             {"log", "login", "store", "audit", "hsms", "vaults", "managed_hsm_pools", "principals",
              "role_assignments"}));
  auto find = [&](const char* k) -> const Entry* {
    auto it = f.find(k);
    return it == f.end() ? nullptr : &it->second;
  };
  if (const Entry* log = find("log")) VAULTP11_RETURN_IF_ERROR(LoadLog(*log, cfg));
  if (const Entry* login = find("login")) VAULTP11_RETURN_IF_ERROR(LoadLogin(*login, cfg));
  VAULTP11_RETURN_IF_ERROR(LoadStore(find("store"), root_line, cfg));
  if (const Entry* a = find("audit")) VAULTP11_RETURN_IF_ERROR(LoadAudit(*a, cfg));
  if (!cfg.audit.configured) {
    // Default: one file sink beside the store's database (PostgreSQL: beside this host's
    // master key file).
    AuditSinkConfig sc;
    sc.type = "file";
    // (A sealed PostgreSQL store without a master key file: beside the config file.)
    const std::string& beside =
        cfg.store.backend == store::Options::Backend::kPostgres ? cfg.store.master_key_file : cfg.store.path;
    sc.path = beside.empty() ? Resolve("audit.log")
                             : (std::filesystem::path(beside).parent_path() / "audit.log").string();
    cfg.audit.sinks.push_back(std::move(sc));
  }
  if (const Entry* h = find("hsms")) VAULTP11_RETURN_IF_ERROR(LoadHsms(*h, cfg));
  if (cfg.store.sealed()) {
    const HsmConfig* h = cfg.FindHsm(cfg.store.seal.hsm);
    if (h == nullptr)
      return Fail(seal_line_, "store.seal.hsm", "no hsm named {} in hsms", Quote(cfg.store.seal.hsm));
    cfg.store.seal.module = h->module;
    cfg.store.seal.token = h->token;
    cfg.store.seal.pin_file = h->pin_file;
    cfg.store.seal.pin_env = h->pin_env;
    cfg.store.seal.quirks = h->quirks;
  }
  VAULTP11_RETURN_IF_ERROR(LoadVaults(find("vaults"), root_line, cfg));
  if (const Entry* mp = find("managed_hsm_pools")) VAULTP11_RETURN_IF_ERROR(LoadPools(*mp, cfg));
  if (const Entry* p = find("principals")) VAULTP11_RETURN_IF_ERROR(LoadPrincipals(*p, cfg));
  // Access policies name principals, which are read after the vaults.
  for (size_t i = 0; i < cfg.vaults.size(); ++i)
    for (size_t j = 0; j < cfg.vaults[i].access_policies.size(); ++j) {
      const AccessPolicyConfig& ap = cfg.vaults[i].access_policies[j];
      if (cfg.FindPrincipal(ap.principal) == nullptr)
        return Fail(ap.line, Child(Index(Child(Index("vaults", i), "access_policies"), j), "principal"),
                    "no principal named {} in principals", Quote(ap.principal));
    }
  if (const Entry* r = find("role_assignments"))
    VAULTP11_RETURN_IF_ERROR(LoadRoleAssignments(*r, cfg));
  return cfg;
}

}  // namespace

const HsmConfig* Config::FindHsm(std::string_view name) const {
  for (const HsmConfig& h : hsms)
    if (h.name == name) return &h;
  return nullptr;
}

const ManagedHsmPoolConfig* Config::FindPool(std::string_view name) const {
  for (const ManagedHsmPoolConfig& p : managed_hsm_pools)
    if (p.name == name) return &p;
  return nullptr;
}

SoftDeleteConfig Config::SoftDeleteOf(std::string_view name) const {
  if (const VaultConfig* v = FindVault(name)) return v->soft_delete;
  if (const ManagedHsmPoolConfig* p = FindPool(name)) return p->soft_delete;
  return SoftDeleteConfig{};
}

const VaultConfig* Config::FindVault(std::string_view name) const {
  for (const VaultConfig& v : vaults) {
    if (v.name == name) return &v;
  }
  return nullptr;
}

const PrincipalConfig* Config::FindPrincipal(std::string_view name) const {
  for (const PrincipalConfig& p : principals) {
    if (p.name == name) return &p;
  }
  return nullptr;
}

Result<Config> LoadString(std::string_view yaml, std::string_view source,
                          std::string_view base_dir) {
  try {
    return Loader(source, base_dir).Load(yaml);
  } catch (const YAML::Exception& e) {
    // Conversions inside the walk should not throw (types are checked first); be safe anyway.
    int line = e.mark.is_null() ? 1 : e.mark.line + 1;
    return Err(CKR_FUNCTION_FAILED, "{}:{}: {}", source, line, e.msg);
  } catch (const std::bad_alloc&) {
    return Err(CKR_HOST_MEMORY, "{}: out of memory while reading the config", source);
  } catch (const std::exception& e) {
    return Err(CKR_FUNCTION_FAILED, "{}: {}", source, e.what());
  }
}

Result<Config> LoadFile(const std::string& path) {
  if (path.empty()) return Err(CKR_FUNCTION_FAILED, "no config file given");
  // Whoever can change the config decides who may use every key.
  std::string warning;
  VAULTP11_RETURN_IF_ERROR(CheckNotWritableByOthers(path, "config file", &warning));
  if (!warning.empty()) log::Warning("{}", warning);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0)
    return Err(CKR_FUNCTION_FAILED, "cannot open config file {}: {}", path, std::strerror(errno));
  std::string text;
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return Err(CKR_FUNCTION_FAILED, "config file {} is not a regular file", path);
  }
  char buf[8192];
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      return Err(CKR_FUNCTION_FAILED, "cannot read config file {}: {}", path, std::strerror(err));
    }
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
    if (text.size() > kMaxConfigBytes) {
      ::close(fd);
      return Err(CKR_FUNCTION_FAILED, "config file {} is larger than {} bytes", path,
                 kMaxConfigBytes);
    }
  }
  ::close(fd);
  // Relative paths inside the file are relative to its directory, made absolute so that a
  // later chdir of the host process does not move the store.
  std::error_code ec;
  std::filesystem::path abs = std::filesystem::absolute(path, ec);
  if (ec) return Err(CKR_FUNCTION_FAILED, "config file {}: {}", path, ec.message());
  return LoadString(text, path, abs.lexically_normal().parent_path().string());
}

std::string ResolvePath(const char* reserved) {
  if (reserved != nullptr && *reserved != '\0') return reserved;
  const char* env = std::getenv("VAULTP11_CONF");
  if (env != nullptr && *env != '\0') return env;
  return VAULTP11_DEFAULT_CONFIG;
}

bool IsValidName(std::string_view name) {
  if (name.empty() || name.size() > 127) return false;
  for (char c : name) {
    bool ok =
        (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-';
    if (!ok) return false;
  }
  return true;
}

}  // namespace vaultp11::config

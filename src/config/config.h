// Config models the one YAML file that describes a deployment: store, vaults, principals, roles.
#pragma once

#include <chrono>
#include <optional>
#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "store/options.h"
#include "util/result.h"

namespace vaultp11::config {

struct LogConfig {
  std::string level = "warning";  // debug | info | warning | error | off
  std::string sink = "stderr";    // stderr | syslog | file:<path>
};

// Failed-login throttling (per principal, shared through the store).
struct LoginConfig {
  int max_failures = 10;     // failures in a row before a lockout; 0: never locked
  int lockout_seconds = 900;  // how long a lockout lasts
  int delay_ms = 100;         // a failed attempt answers after delay_ms * 2^(n-1) ...
  int max_delay_ms = 3000;    // ... at most this
};

// One audit sink (`audit.sinks[]`).
struct AuditSinkConfig {
  std::string type;  // file | syslog | socket
  // file: the current file; rotated files sit beside it (audit/file_sink.h names them).
  std::string path;
  uint64_t max_bytes = 100ull << 20;  // rotate before the file would pass this (0: never by size)
  bool daily = true;                  // rotate at the first write of a new UTC day
  int retention_days = 0;             // delete rotated files older than this (0: keep them all)
  // Delete the oldest rotated files once the sink's files pass this in all (0: no cap).
  uint64_t max_total_bytes = 1ull << 30;
  // syslog: facility and ident of each message, sent to the syslog daemon's datagram socket.
  std::string facility = "auth";  // auth | authpriv | daemon | user | local0 .. local7
  std::string ident = "vaultp11";
  // syslog: the daemon's socket (default /dev/log); socket: the collector's stream socket.
  std::string socket;
  uint64_t buffer_bytes = 1ull << 20;  // socket: events kept while the collector is away
  int line = 0;
};

// The audit log (`audit:`). Without the section, one file sink writes audit.log beside the
// store's database; `sinks: []` turns auditing off.
struct AuditConfig {
  std::vector<AuditSinkConfig> sinks;
  bool required = false;        // a sink that cannot be opened fails C_Initialize
  size_t queue_size = 65536;    // events waiting for the writer thread
  std::string overflow = "block";  // block | drop (a full queue; denials and logins always wait)
  // Identical denials within this many seconds are written as the first one plus one summary
  // event with their count (0: every one is written).
  int coalesce_seconds = 5;
  bool configured = false;      // the section was present
};

// The `store` section: backend sqlite (path; master_key_file defaults to <path>.masterkey) or
// postgresql (dsn, optional password_file, master_key_file required).
using StoreConfig = store::Options;

// An inner PKCS#11 driver and the token on it that holds HSM-backed keys.
struct HsmConfig {
  std::string name;      // referenced by vaults[].hsms
  std::string module;    // path of the vendor PKCS#11 module
  std::string token;     // token label, or a pkcs11: URI matching the token
  std::string pin_file;  // file holding the token's user PIN (one of pin_file / pin_env)
  std::string pin_env;   // environment variable holding the PIN
  std::string so_pin_file;  // file holding the SO PIN (`vaultp11 pool init` only; optional)
  std::vector<std::string> quirks;  // no-deinit: never C_Finalize the module (SoftHSMv2);
                                    // fork-finalize: C_Finalize before C_Initialize in a forked child
  int line = 0;
};

// One principal's access policy on a vault: its permissions per kind (auth::Permission bits).
struct AccessPolicyConfig {
  std::string principal;
  uint32_t keys = 0, secrets = 0, certificates = 0;
  int line = 0;
};

// Soft-delete of a vault's or pool's items (`soft_delete:`). Off when the section is absent:
// deleting then destroys at once.
struct SoftDeleteConfig {
  bool enabled = false;
  int retention_days = 90;        // 7..90: how long a deleted item can be recovered
  bool purge_protection = false;  // no purge before retention ends; once on, stays on (store)
};

struct VaultConfig {
  std::string name;               // 1-127 chars of 0-9 a-z A-Z -
  std::string sku = "standard";   // standard | premium
  std::vector<std::string> hsms;  // premium only: names from hsms[]
  std::string default_protection = "software";  // software | hsm (hsm: premium with hsms)
  std::string authorization = "rbac";            // rbac | access_policy
  std::vector<AccessPolicyConfig> access_policies;  // access_policy vaults only
  SoftDeleteConfig soft_delete;
  int line = 0;                   // 1-based line in the file, for messages
};

// A managed HSM pool: one slot after the vaults, whose keys live on every member HSM.
struct ManagedHsmPoolConfig {
  std::string name;               // 1-127 chars of 0-9 a-z A-Z -; distinct from every vault
  std::vector<std::string> hsms;  // members: names from hsms[], each once
  int quorum = 0;                 // copies needed before a new key is handed out; 0: default
  int health_check_ms = 5000;     // how often members out of service are probed (10..3600000)
  SoftDeleteConfig soft_delete;
  int line = 0;

  // The quorum for `healthy` members now: the configured one, else all healthy members but
  // at least 2 when the pool has 2 or more members.
  size_t EffectiveQuorum(size_t healthy) const {
    if (quorum > 0) return static_cast<size_t>(quorum);
    size_t floor = hsms.size() >= 2 ? 2 : 1;
    return healthy > floor ? healthy : floor;
  }
};

struct ClientSecret {
  std::string hash;  // output of `vaultp11 hash-secret`
  std::optional<std::chrono::sys_days> expires;  // secret refused from this day on (UTC)
};

struct PrincipalConfig {
  std::string name;
  std::string auth;  // client_secret | managed_identity
  std::vector<ClientSecret> secrets;  // client_secret
  // managed_identity: the OS identity it is bound to (one of them), resolved at load.
  std::optional<uid_t> uid;  // unix_user or uid
  std::optional<gid_t> gid;  // unix_group
  // client_certificate: the registered certificate (PEM file, read at load).
  std::string certificate_file;
  std::vector<uint8_t> certificate_der;
  // oauth2: the identity provider's tokens and which claim names the principal.
  std::string issuer, audience, jwks_file;
  std::string claim = "sub";  // the claim that names the principal
  std::string subject;        // its expected value (default: the principal's name)
  int leeway_seconds = 60;    // clock skew allowed on exp and nbf (0..600)
  int line = 0;
};

struct RoleAssignmentConfig {
  std::string principal;
  std::string role;   // e.g. "Key Vault Administrator"
  std::string scope;  // /vaults/<v> or /vaults/<v>/keys|secrets|certificates/<name>, or
                      // /managedHsms/<pool> or /managedHsms/<pool>/keys/<name>
  int line = 0;
};

struct Config {
  std::string source;  // file the config was read from
  LogConfig log;
  LoginConfig login;
  StoreConfig store;
  AuditConfig audit;
  std::vector<HsmConfig> hsms;
  std::vector<VaultConfig> vaults;
  std::vector<ManagedHsmPoolConfig> managed_hsm_pools;
  std::vector<PrincipalConfig> principals;
  std::vector<RoleAssignmentConfig> role_assignments;

  const VaultConfig* FindVault(std::string_view name) const;
  const HsmConfig* FindHsm(std::string_view name) const;
  const ManagedHsmPoolConfig* FindPool(std::string_view name) const;
  // The soft-delete settings of the vault or pool `name` (disabled when there is none).
  SoftDeleteConfig SoftDeleteOf(std::string_view name) const;
  const PrincipalConfig* FindPrincipal(std::string_view name) const;
};

// Reads and validates a config file. Every error is CKR_FUNCTION_FAILED with a message of
// the form "<file>:<line>: <key path>: <what is wrong>" (e.g.
// "/etc/vaultp11/vaultp11.yaml:7: vaults[1].sku: must be standard or premium").
// Relative paths in the file are resolved against the file's directory.
Result<Config> LoadFile(const std::string& path);

// Same as LoadFile for text already in memory; `source` names it in messages and
// `base_dir` resolves relative paths.
Result<Config> LoadString(std::string_view yaml, std::string_view source, std::string_view base_dir);

// The path C_Initialize uses: `reserved` (pReserved, if it is a string), else
// $VAULTP11_CONF, else the compiled-in default VAULTP11_DEFAULT_CONFIG.
std::string ResolvePath(const char* reserved);

// True for 1-127 characters of 0-9 a-z A-Z -.
bool IsValidName(std::string_view name);

}  // namespace vaultp11::config

// Access models who may do what in a vault: permissions, the grants a principal holds after
// login, and the one check every PKCS#11 call goes through.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>

#include "config/config.h"
#include "util/result.h"

namespace vaultp11::auth {

// What an object is in the vault model (REFERENCE.md "Object kinds").
enum class Kind : uint8_t { kKey = 0, kSecret = 1, kCertificate = 2 };

// Data-plane permissions (REFERENCE.md access policy lists), one bit each.
enum Permission : uint32_t {
  kList = 1u << 0,
  kGet = 1u << 1,
  kCreate = 1u << 2,
  kImport = 1u << 3,
  kUpdate = 1u << 4,
  kDelete = 1u << 5,
  kSign = 1u << 6,
  kVerify = 1u << 7,
  kEncrypt = 1u << 8,
  kDecrypt = 1u << 9,
  kWrapKey = 1u << 10,
  kUnwrapKey = 1u << 11,
  kSet = 1u << 12,  // secrets: set
  kAll = 0xffffffffu,
};

// A principal's grants on one vault, computed once at login so the hot path is a bit test.
struct Grants {
  std::string principal;
  uint32_t vault_wide[3] = {0, 0, 0};  // per Kind
  std::map<std::pair<Kind, std::string>, uint32_t, std::less<>> per_object;

  bool Allows(Kind kind, std::string_view name, uint32_t perm) const;
};

// Built-in role -> permissions per kind. Unknown roles grant nothing (config validation
// rejects them earlier).
bool RolePermissions(std::string_view role, Kind kind, uint32_t* out);

// True for the roles of managed HSM pools ("Managed HSM ..."), scoped /managedHsms/<pool>.
bool IsPoolRole(std::string_view role);

// The grants of `principal` on vault (or managed HSM pool) `vault` from the config's role assignments.
Grants ComputeGrants(const config::Config& cfg, std::string_view vault, std::string_view principal);

// Kind of a PKCS#11 object class: CKO_DATA is a secret, CKO_CERTIFICATE a certificate,
// everything else a key.
Kind KindOfClass(unsigned long object_class);

}  // namespace vaultp11::auth

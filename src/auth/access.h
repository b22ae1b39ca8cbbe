// Access models who may do what in a vault: permissions, the grants a principal holds after
// login, and the one check every PKCS#11 call goes through.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>

#include "auth/roles.h"
#include "config/config.h"
#include "util/result.h"

namespace vaultp11::auth {

// A principal's grants on one vault, computed once at login so the hot path is a bit test.
struct Grants {
  std::string principal;
  std::string method;  // how the principal logged in (audit events)
  uint32_t vault_wide[3] = {0, 0, 0};  // per Kind
  std::map<std::pair<Kind, std::string>, uint32_t, std::less<>> per_object;

  bool Allows(Kind kind, std::string_view name, uint32_t perm) const;     // every bit of perm
  bool AllowsAny(Kind kind, std::string_view name, uint32_t perm) const;  // some bit of perm
};

// The grants of `principal` on vault (or managed HSM pool) `vault`: from the role assignments
// (RBAC), or from the vault's access policy for the principal (authorization access_policy).
Grants ComputeGrants(const config::Config& cfg, std::string_view vault, std::string_view principal);

// Kind of a PKCS#11 object class: CKO_DATA is a secret, CKO_CERTIFICATE a certificate,
// everything else a key.
Kind KindOfClass(unsigned long object_class);

}  // namespace vaultp11::auth

// The vault model's permissions and built-in roles (REFERENCE.md "Roles (RBAC)" and "Access
// policies"), as data: config validation and the login-time grant computation read the same
// tables. No dependency on the config, so both can include it.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

namespace vaultp11::auth {

// What an object is in the vault model (REFERENCE.md "Object kinds").
enum class Kind : uint8_t { kKey = 0, kSecret = 1, kCertificate = 2 };

// Data-plane permissions (the access policy lists), one bit each. A bit means the same action
// for every kind that has it (kGet on a secret is reading its value).
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
  kRecover = 1u << 13,
  kBackup = 1u << 14,
  kRestore = 1u << 15,
  kPurge = 1u << 16,
  kRelease = 1u << 17,
  kRotate = 1u << 18,
  kGetRotationPolicy = 1u << 19,
  kSetRotationPolicy = 1u << 20,
  kManageContacts = 1u << 21,
  kManageIssuers = 1u << 22,
  kGetIssuers = 1u << 23,
  kListIssuers = 1u << 24,
  kSetIssuers = 1u << 25,
  kDeleteIssuers = 1u << 26,
  kAll = 0xffffffffu,
};

// Every permission an access policy may list for `kind` (REFERENCE.md "Access policies").
uint32_t PermissionsOf(Kind kind);
// An access policy permission name ("unwrapKey", case-insensitive; "all" = PermissionsOf(kind)).
std::optional<uint32_t> PermissionByName(Kind kind, std::string_view name);
// The canonical names for messages, comma separated.
std::string_view PermissionNames(Kind kind);

struct RoleDef {
  std::string_view name;
  bool pool;  // a managed HSM pool role (scope /managedHsms/...), else a vault role
  uint32_t keys, secrets, certificates;
  uint32_t For(Kind k) const { return k == Kind::kKey ? keys : k == Kind::kSecret ? secrets : certificates; }
};

// Every built-in role, vault roles first.
std::span<const RoleDef> Roles();
// The role named exactly `name`, or null.
const RoleDef* FindRole(std::string_view name);

}  // namespace vaultp11::auth

#include "auth/roles.h"

#include <array>
#include <cctype>

namespace vaultp11::auth {
namespace {

struct NamedPermission {
  std::string_view name;
  uint32_t bit;
};

constexpr NamedPermission kKeyPermissions[] = {
    {"get", kGet},         {"list", kList},         {"update", kUpdate},   {"create", kCreate},
    {"import", kImport},   {"delete", kDelete},     {"recover", kRecover}, {"backup", kBackup},
    {"restore", kRestore}, {"decrypt", kDecrypt},   {"encrypt", kEncrypt}, {"unwrapKey", kUnwrapKey},
    {"wrapKey", kWrapKey}, {"verify", kVerify},     {"sign", kSign},       {"purge", kPurge},
    {"release", kRelease}, {"rotate", kRotate},     {"getrotationpolicy", kGetRotationPolicy},
    {"setrotationpolicy", kSetRotationPolicy},
};
constexpr NamedPermission kSecretPermissions[] = {
    {"get", kGet},         {"list", kList},       {"set", kSet},     {"delete", kDelete},
    {"recover", kRecover}, {"backup", kBackup},   {"restore", kRestore}, {"purge", kPurge},
};
constexpr NamedPermission kCertificatePermissions[] = {
    {"get", kGet},
    {"list", kList},
    {"update", kUpdate},
    {"create", kCreate},
    {"import", kImport},
    {"delete", kDelete},
    {"recover", kRecover},
    {"backup", kBackup},
    {"restore", kRestore},
    {"managecontacts", kManageContacts},
    {"manageissuers", kManageIssuers},
    {"getissuers", kGetIssuers},
    {"listissuers", kListIssuers},
    {"setissuers", kSetIssuers},
    {"deleteissuers", kDeleteIssuers},
    {"purge", kPurge},
};

std::span<const NamedPermission> Table(Kind kind) {
  if (kind == Kind::kKey) return kKeyPermissions;
  if (kind == Kind::kSecret) return kSecretPermissions;
  return kCertificatePermissions;
}

constexpr uint32_t Or(std::span<const NamedPermission> t) {
  uint32_t all = 0;
  for (const auto& p : t) all |= p.bit;
  return all;
}

constexpr uint32_t kAllKeys = Or(kKeyPermissions);
constexpr uint32_t kAllSecrets = Or(kSecretPermissions);
constexpr uint32_t kAllCertificates = Or(kCertificatePermissions);
constexpr uint32_t kKeyCrypto = kSign | kVerify | kEncrypt | kDecrypt | kWrapKey | kUnwrapKey;
constexpr uint32_t kRead = kGet | kList;

// REFERENCE.md "Roles (RBAC)". "Read" is get + list; public-key use (verify, encrypt, wrap
// with a public key) needs only read, which the permission check applies per call.
constexpr RoleDef kRoles[] = {
    // Vaults.
    {"Key Vault Administrator", false, kAllKeys, kAllSecrets, kAllCertificates},
    {"Key Vault Reader", false, kRead, kList, kRead},  // secrets: metadata only, never the value
    {"Key Vault Crypto Officer", false, kAllKeys, 0, 0},
    {"Key Vault Crypto User", false, kRead | kUpdate | kBackup | kKeyCrypto, 0, 0},
    {"Key Vault Crypto Service Encryption User", false, kRead | kWrapKey | kUnwrapKey, 0, 0},
    {"Key Vault Crypto Service Release User", false, kRelease, 0, 0},
    {"Key Vault Secrets Officer", false, 0, kAllSecrets, 0},
    {"Key Vault Secrets User", false, 0, kRead, 0},
    {"Key Vault Certificates Officer", false, 0, 0, kAllCertificates},
    // Certificates and their key's public part (the private key's use is not granted).
    {"Key Vault Certificate User", false, kRead, 0, kRead},
    // Managed HSM pools: keys only. The administrator and policy roles act outside the data
    // plane (security domain, backup, role management with the CLI): no key use.
    {"Managed HSM Administrator", true, 0, 0, 0},
    {"Managed HSM Crypto Officer", true, kList | kRecover | kPurge, 0, 0},
    {"Managed HSM Crypto User", true,
     kRead | kCreate | kImport | kUpdate | kRotate | kDelete | kBackup | kRestore | kRelease | kKeyCrypto, 0, 0},
    {"Managed HSM Policy Administrator", true, 0, 0, 0},
    {"Managed HSM Crypto Auditor", true, kRead, 0, 0},
    {"Managed HSM Crypto Service Encryption User", true, kRead | kWrapKey | kUnwrapKey, 0, 0},
    {"Managed HSM Crypto Service Release User", true, kRelease, 0, 0},
    {"Managed HSM Backup", true, kBackup, 0, 0},
    {"Managed HSM Restore", true, kRestore, 0, 0},
};

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
  return true;
}

}  // namespace

uint32_t PermissionsOf(Kind kind) {
  return kind == Kind::kKey ? kAllKeys : kind == Kind::kSecret ? kAllSecrets : kAllCertificates;
}

std::optional<uint32_t> PermissionByName(Kind kind, std::string_view name) {
  if (EqualsIgnoreCase(name, "all")) return PermissionsOf(kind);
  for (const auto& p : Table(kind))
    if (EqualsIgnoreCase(name, p.name)) return p.bit;
  return std::nullopt;
}

std::string_view PermissionNames(Kind kind) {
  if (kind == Kind::kKey)
    return "get, list, update, create, import, delete, recover, backup, restore, decrypt, encrypt, unwrapKey, "
           "wrapKey, verify, sign, purge, release, rotate, getrotationpolicy, setrotationpolicy, all";
  if (kind == Kind::kSecret) return "get, list, set, delete, recover, backup, restore, purge, all";
  return "get, list, update, create, import, delete, recover, backup, restore, managecontacts, manageissuers, "
         "getissuers, listissuers, setissuers, deleteissuers, purge, all";
}

std::span<const RoleDef> Roles() { return kRoles; }

const RoleDef* FindRole(std::string_view name) {
  for (const RoleDef& r : kRoles)
    if (r.name == name) return &r;
  return nullptr;
}

}  // namespace vaultp11::auth

#include "auth/access.h"

#include <p11-kit/pkcs11.h>

namespace vaultp11::auth {

bool Grants::Allows(Kind kind, std::string_view name, uint32_t perm) const {
  uint32_t have = vault_wide[static_cast<int>(kind)];
  if ((have & perm) == perm) return true;
  if (!per_object.empty()) {
    auto it = per_object.find(std::make_pair(kind, std::string(name)));
    if (it != per_object.end()) have |= it->second;
  }
  return (have & perm) == perm;
}

bool RolePermissions(std::string_view role, Kind kind, uint32_t* out) {
  // Key Vault Administrator: every data action on keys, secrets and certificates.
  if (role == "Key Vault Administrator") {
    *out = kAll;
    return true;
  }
  // Managed HSM pools (scope /managedHsms/...): pools hold keys only.
  // Administrator: security domain, backup/restore and role management, all outside the data
  // plane (CLI with SO PINs): no key use, so no data-plane permission at all.
  if (role == "Managed HSM Administrator") {
    *out = 0;
    return true;
  }
  // Crypto User: create, import, read, update, delete and every crypto operation on keys.
  if (role == "Managed HSM Crypto User") {
    *out = kind == Kind::kKey ? (kList | kGet | kCreate | kImport | kUpdate | kDelete | kSign | kVerify | kEncrypt |
                                 kDecrypt | kWrapKey | kUnwrapKey)
                              : 0;
    return true;
  }
  *out = 0;
  return false;
}

bool IsPoolRole(std::string_view role) { return role.rfind("Managed HSM ", 0) == 0; }

Kind KindOfClass(unsigned long object_class) {
  if (object_class == CKO_DATA) return Kind::kSecret;
  if (object_class == CKO_CERTIFICATE) return Kind::kCertificate;
  return Kind::kKey;
}

Grants ComputeGrants(const config::Config& cfg, std::string_view vault, std::string_view principal) {
  Grants g;
  g.principal = std::string(principal);
  // A token is a vault or a managed HSM pool (names never clash: config validation).
  const bool pool = cfg.FindPool(vault) != nullptr;
  const std::string vault_scope = (pool ? "/managedHsms/" : "/vaults/") + std::string(vault);
  for (const auto& ra : cfg.role_assignments) {
    if (ra.principal != principal) continue;
    for (Kind kind : {Kind::kKey, Kind::kSecret, Kind::kCertificate}) {
      uint32_t perms = 0;
      if (!RolePermissions(ra.role, kind, &perms)) continue;
      // A vault role never applies to a pool and a pool role never to a vault.
      if (IsPoolRole(ra.role) != pool) continue;
      if (ra.scope == vault_scope || ra.scope == vault_scope + "/") {
        g.vault_wide[static_cast<int>(kind)] |= perms;
        continue;
      }
      static constexpr std::pair<Kind, std::string_view> kSub[] = {
          {Kind::kKey, "/keys/"}, {Kind::kSecret, "/secrets/"}, {Kind::kCertificate, "/certificates/"}};
      for (const auto& [k, sub] : kSub) {
        std::string prefix = vault_scope + std::string(sub);
        if (k == kind && ra.scope.size() > prefix.size() && ra.scope.compare(0, prefix.size(), prefix) == 0)
          g.per_object[{kind, ra.scope.substr(prefix.size())}] |= perms;
      }
    }
  }
  return g;
}

}  // namespace vaultp11::auth

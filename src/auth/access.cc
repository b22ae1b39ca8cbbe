#include "auth/access.h"

#include <p11-kit/pkcs11.h>

namespace vaultp11::auth {

bool Grants::AllowsAny(Kind kind, std::string_view name, uint32_t perm) const {
  uint32_t have = vault_wide[static_cast<int>(kind)];
  if (!per_object.empty()) {
    auto it = per_object.find(std::make_pair(kind, std::string(name)));
    if (it != per_object.end()) have |= it->second;
  }
  return (have & perm) != 0;
}

bool Grants::Allows(Kind kind, std::string_view name, uint32_t perm) const {
  uint32_t have = vault_wide[static_cast<int>(kind)];
  if ((have & perm) == perm) return true;
  if (!per_object.empty()) {
    auto it = per_object.find(std::make_pair(kind, std::string(name)));
    if (it != per_object.end()) have |= it->second;
  }
  return (have & perm) == perm;
}

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
  const config::VaultConfig* vc = pool ? nullptr : cfg.FindVault(vault);
  if (vc != nullptr && vc->authorization == "access_policy") {
    for (const auto& ap : vc->access_policies) {
      if (ap.principal != principal) continue;
      g.vault_wide[static_cast<int>(Kind::kKey)] |= ap.keys;
      g.vault_wide[static_cast<int>(Kind::kSecret)] |= ap.secrets;
      g.vault_wide[static_cast<int>(Kind::kCertificate)] |= ap.certificates;
    }
    return g;
  }
  const std::string vault_scope = (pool ? "/managedHsms/" : "/vaults/") + std::string(vault);
  for (const auto& ra : cfg.role_assignments) {
    if (ra.principal != principal) continue;
    const RoleDef* role = FindRole(ra.role);
    // Unknown roles are refused by config validation; a vault role never applies to a pool
    // and a pool role never to a vault.
    if (role == nullptr || role->pool != pool) continue;
    for (Kind kind : {Kind::kKey, Kind::kSecret, Kind::kCertificate}) {
      uint32_t perms = role->For(kind);
      if (perms == 0) continue;
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

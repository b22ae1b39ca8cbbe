#include "auth/access.h"

#include <gtest/gtest.h>
#include <p11-kit/pkcs11.h>

namespace vaultp11::auth {
namespace {

config::Config MakeConfig() {
  config::Config c;
  c.vaults.resize(2);
  c.vaults[0].name = "payments";
  c.vaults[1].name = "archive";
  c.role_assignments = {
      {"app", "Key Vault Administrator", "/vaults/payments", 1},
      {"tls", "Key Vault Administrator", "/vaults/archive/keys/web", 2},
  };
  return c;
}

TEST(AccessTest, VaultScopeGrantsEveryKindOnThatVaultOnly) {
  auto cfg = MakeConfig();
  Grants g = ComputeGrants(cfg, "payments", "app");
  EXPECT_TRUE(g.Allows(Kind::kKey, "any", kSign | kCreate));
  EXPECT_TRUE(g.Allows(Kind::kSecret, "db", kGet));
  Grants other = ComputeGrants(cfg, "archive", "app");
  EXPECT_FALSE(other.Allows(Kind::kKey, "any", kList));
}

TEST(AccessTest, ObjectScopeGrantsOnlyThatObject) {
  auto cfg = MakeConfig();
  Grants g = ComputeGrants(cfg, "archive", "tls");
  EXPECT_TRUE(g.Allows(Kind::kKey, "web", kSign));
  EXPECT_FALSE(g.Allows(Kind::kKey, "web2", kSign));
  EXPECT_FALSE(g.Allows(Kind::kSecret, "web", kGet));
  EXPECT_FALSE(ComputeGrants(cfg, "payments", "tls").Allows(Kind::kKey, "web", kList));
}

TEST(AccessTest, UnknownPrincipalHasNoGrants) {
  auto cfg = MakeConfig();
  Grants g = ComputeGrants(cfg, "payments", "nobody");
  EXPECT_FALSE(g.Allows(Kind::kKey, "k", kList));
}

TEST(AccessTest, ObjectClassesMapToKinds) {
  EXPECT_EQ(KindOfClass(CKO_DATA), Kind::kSecret);
  EXPECT_EQ(KindOfClass(CKO_CERTIFICATE), Kind::kCertificate);
  EXPECT_EQ(KindOfClass(CKO_PRIVATE_KEY), Kind::kKey);
  EXPECT_EQ(KindOfClass(CKO_SECRET_KEY), Kind::kKey);
}

TEST(AccessTest, PoolRolesApplyToPoolScopesOnly) {
  config::Config c;
  c.vaults.resize(1);
  c.vaults[0].name = "payments";
  c.managed_hsm_pools.resize(1);
  c.managed_hsm_pools[0].name = "hsmpool";
  c.role_assignments = {
      {"app", "Managed HSM Crypto User", "/managedHsms/hsmpool", 1},
      {"one", "Managed HSM Crypto User", "/managedHsms/hsmpool/keys/k1", 2},
      {"adm", "Managed HSM Administrator", "/managedHsms/hsmpool", 3},
      {"kv", "Key Vault Administrator", "/vaults/payments", 4},
  };
  Grants user = ComputeGrants(c, "hsmpool", "app");
  EXPECT_TRUE(user.Allows(Kind::kKey, "any", kCreate | kImport | kGet | kUpdate | kDelete | kSign | kDecrypt |
                                                kEncrypt | kVerify | kWrapKey | kUnwrapKey | kList));
  EXPECT_FALSE(user.Allows(Kind::kSecret, "s", kGet));
  EXPECT_FALSE(ComputeGrants(c, "payments", "app").Allows(Kind::kKey, "any", kList));
  Grants one = ComputeGrants(c, "hsmpool", "one");
  EXPECT_TRUE(one.Allows(Kind::kKey, "k1", kSign));
  EXPECT_FALSE(one.Allows(Kind::kKey, "k2", kSign));
  Grants adm = ComputeGrants(c, "hsmpool", "adm");
  EXPECT_FALSE(adm.Allows(Kind::kKey, "any", kSign));
  EXPECT_FALSE(adm.Allows(Kind::kKey, "any", kCreate));
  EXPECT_TRUE(ComputeGrants(c, "payments", "kv").Allows(Kind::kKey, "any", kSign));
  EXPECT_FALSE(ComputeGrants(c, "hsmpool", "kv").Allows(Kind::kKey, "any", kList));
  EXPECT_TRUE(FindRole("Managed HSM Crypto User")->pool);
  EXPECT_FALSE(FindRole("Key Vault Administrator")->pool);
  EXPECT_EQ(FindRole("Key Vault administrator"), nullptr);  // names are exact
}

// The role table of REFERENCE.md, written out as permission names per kind ("-" = none), and
// checked against the grants a vault-wide assignment gives.
struct RoleRow {
  const char* role;
  const char* keys;
  const char* secrets;
  const char* certificates;
};
constexpr RoleRow kRoleTable[] = {
    {"Key Vault Administrator", "all", "all", "all"},
    {"Key Vault Reader", "get list", "list", "get list"},
    {"Key Vault Crypto Officer", "all", "-", "-"},
    {"Key Vault Crypto User", "get list update backup encrypt decrypt wrapKey unwrapKey sign verify", "-", "-"},
    {"Key Vault Crypto Service Encryption User", "get list wrapKey unwrapKey", "-", "-"},
    {"Key Vault Crypto Service Release User", "release", "-", "-"},
    {"Key Vault Secrets Officer", "-", "all", "-"},
    {"Key Vault Secrets User", "-", "get list", "-"},
    {"Key Vault Certificates Officer", "-", "-", "all"},
    {"Key Vault Certificate User", "get list", "-", "get list"},
    {"Managed HSM Administrator", "-", "-", "-"},
    {"Managed HSM Crypto Officer", "list recover purge", "-", "-"},
    {"Managed HSM Crypto User",
     "get list create import update rotate delete backup restore release encrypt decrypt wrapKey unwrapKey sign verify",
     "-", "-"},
    {"Managed HSM Policy Administrator", "-", "-", "-"},
    {"Managed HSM Crypto Auditor", "get list", "-", "-"},
    {"Managed HSM Crypto Service Encryption User", "get list wrapKey unwrapKey", "-", "-"},
    {"Managed HSM Crypto Service Release User", "release", "-", "-"},
    {"Managed HSM Backup", "backup", "-", "-"},
    {"Managed HSM Restore", "restore", "-", "-"},
};

uint32_t Bits(Kind kind, const std::string& names) {
  if (names == "-") return 0;
  uint32_t bits = 0;
  size_t start = 0;
  while (start < names.size()) {
    size_t end = names.find(' ', start);
    if (end == std::string::npos) end = names.size();
    auto b = PermissionByName(kind, names.substr(start, end - start));
    EXPECT_TRUE(b.has_value()) << names.substr(start, end - start);
    bits |= b.value_or(0);
    start = end + 1;
  }
  return bits;
}

TEST(AccessTest, EveryBuiltInRoleGrantsExactlyItsTableRow) {
  EXPECT_EQ(Roles().size(), std::size(kRoleTable));
  for (const RoleRow& row : kRoleTable) {
    const RoleDef* def = FindRole(row.role);
    ASSERT_NE(def, nullptr) << row.role;
    config::Config c;
    c.vaults.resize(1);
    c.vaults[0].name = "v";
    c.managed_hsm_pools.resize(1);
    c.managed_hsm_pools[0].name = "p";
    const std::string where = def->pool ? "p" : "v";
    c.role_assignments = {{"x", row.role, (def->pool ? "/managedHsms/" : "/vaults/") + where, 1}};
    Grants g = ComputeGrants(c, where, "x");
    const std::pair<Kind, const char*> kinds[] = {
        {Kind::kKey, row.keys}, {Kind::kSecret, row.secrets}, {Kind::kCertificate, row.certificates}};
    for (const auto& [kind, names] : kinds) {
      uint32_t want = Bits(kind, names);
      EXPECT_EQ(g.vault_wide[static_cast<int>(kind)], want) << row.role << " kind " << static_cast<int>(kind);
      // Every single permission of the kind: allowed exactly when listed.
      for (uint32_t bit = 1; bit != 0 && bit <= PermissionsOf(kind); bit <<= 1) {
        if (PermissionsOf(kind) & bit) {
          EXPECT_EQ(g.Allows(kind, "obj", bit), (want & bit) != 0) << row.role;
        }
      }
    }
    // Never across vault and pool.
    EXPECT_EQ(ComputeGrants(c, def->pool ? "v" : "p", "x").vault_wide[0], 0u) << row.role;
  }
}

TEST(AccessTest, AccessPoliciesReplaceRoleAssignments) {
  config::Config c;
  c.vaults.resize(1);
  c.vaults[0].name = "legacy";
  c.vaults[0].authorization = "access_policy";
  c.vaults[0].access_policies = {{"app", kGet | kList | kSign, kGet, 0, 1}};
  c.role_assignments = {{"app", "Key Vault Administrator", "/vaults/legacy", 2}};  // ignored
  Grants g = ComputeGrants(c, "legacy", "app");
  EXPECT_TRUE(g.Allows(Kind::kKey, "k", kSign | kGet));
  EXPECT_FALSE(g.Allows(Kind::kKey, "k", kDecrypt));
  EXPECT_TRUE(g.Allows(Kind::kSecret, "s", kGet));
  EXPECT_FALSE(g.Allows(Kind::kSecret, "s", kSet));
  EXPECT_FALSE(g.Allows(Kind::kCertificate, "c", kList));
  EXPECT_FALSE(ComputeGrants(c, "legacy", "other").Allows(Kind::kKey, "k", kList));
  EXPECT_EQ(PermissionByName(Kind::kKey, "UNWRAPKEY"), std::optional<uint32_t>(kUnwrapKey));
  EXPECT_EQ(PermissionByName(Kind::kSecret, "sign"), std::nullopt);
  EXPECT_EQ(PermissionByName(Kind::kCertificate, "all"), std::optional<uint32_t>(PermissionsOf(Kind::kCertificate)));
}

}  // namespace
}  // namespace vaultp11::auth

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
  EXPECT_TRUE(IsPoolRole("Managed HSM Crypto User"));
  EXPECT_FALSE(IsPoolRole("Key Vault Administrator"));
}

}  // namespace
}  // namespace vaultp11::auth

#include "auth/roles.h"
#include "config/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

#include "matchers.h"
#include "temp_dir.h"

namespace vaultp11::config {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;
using vaultp11::testing::TempDir;
using namespace std::chrono_literals;

// A well-formed scrypt hash (fixed salt/key; its secret is irrelevant to config loading).
constexpr const char* kHash =
    "$scrypt$ln=10,r=8,p=1$AAECAwQFBgcICQoLDA0ODw==$AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

// Three valid lines that the error cases extend (their own lines start at 4).
constexpr const char* kBase =
    "store: {path: store.db}\n"
    "vaults:\n"
    "  - name: payments\n";

std::string WithHash(std::string yaml) {
  for (size_t pos; (pos = yaml.find("HASH")) != std::string::npos;) yaml.replace(pos, 4, kHash);
  return yaml;
}

Result<Config> Load(const std::string& yaml) {
  return LoadString(WithHash(yaml), "vp.yaml", "/etc/vp");
}

std::string ErrorOf(const std::string& yaml) {
  auto r = Load(yaml);
  if (r.ok()) return "<loaded fine>";
  if (r.rv() != CKR_FUNCTION_FAILED) return "<wrong rv>";
  return r.error().message;
}

// ---- valid files -----------------------------------------------------------------------

constexpr const char* kFull = R"(# every key
log:
  level: debug
  sink: file:log/vaultp11.log
store:
  path: /var/lib/vaultp11/store.db
  master_key_file: keys/master.key
vaults:
  - name: payments
    sku: premium
  - name: dev-soft
principals:
  - name: ci
    auth: client_secret
    secrets:
      - hash: 'HASH'
        expires: 2027-06-01
      - { hash: 'HASH' }
  - name: web
    auth: client_secret
    secrets: [{hash: 'HASH', expires: "2030-12-31"}]
role_assignments:
  - principal: ci
    role: Key Vault Administrator
    scope: /vaults/payments
  - { principal: web, role: Key Vault Administrator, scope: /vaults/dev-soft/keys/tls-1 }
  - { principal: web, role: Key Vault Administrator, scope: /vaults/payments/secrets/db-pass }
  - { principal: web, role: Key Vault Administrator, scope: /vaults/payments/certificates/www }
)";

TEST(ConfigTest, LoadsFullExample) {
  ASSERT_OK_AND_ASSIGN(Config c, Load(kFull));
  EXPECT_EQ(c.source, "vp.yaml");
  EXPECT_EQ(c.log.level, "debug");
  EXPECT_EQ(c.log.sink, "file:/etc/vp/log/vaultp11.log");
  EXPECT_EQ(c.store.path, "/var/lib/vaultp11/store.db");
  EXPECT_EQ(c.store.master_key_file, "/etc/vp/keys/master.key");
  ASSERT_EQ(c.vaults.size(), 2u);
  EXPECT_EQ(c.vaults[0].name, "payments");
  EXPECT_EQ(c.vaults[0].sku, "premium");
  EXPECT_EQ(c.vaults[0].line, 9);
  EXPECT_EQ(c.vaults[1].name, "dev-soft");
  EXPECT_EQ(c.vaults[1].sku, "standard");
  EXPECT_EQ(c.vaults[1].line, 11);
  ASSERT_EQ(c.principals.size(), 2u);
  EXPECT_EQ(c.principals[0].name, "ci");
  EXPECT_EQ(c.principals[0].auth, "client_secret");
  EXPECT_EQ(c.principals[0].line, 13);
  ASSERT_EQ(c.principals[0].secrets.size(), 2u);
  EXPECT_EQ(c.principals[0].secrets[0].hash, kHash);
  ASSERT_TRUE(c.principals[0].secrets[0].expires.has_value());
  EXPECT_EQ(*c.principals[0].secrets[0].expires,
            std::chrono::sys_days(std::chrono::year(2027) / 6 / 1));
  EXPECT_EQ(c.principals[0].secrets[1].hash, kHash);
  EXPECT_FALSE(c.principals[0].secrets[1].expires.has_value());
  ASSERT_EQ(c.principals[1].secrets.size(), 1u);
  EXPECT_EQ(*c.principals[1].secrets[0].expires,
            std::chrono::sys_days(std::chrono::year(2030) / 12 / 31));
  ASSERT_EQ(c.role_assignments.size(), 4u);
  EXPECT_EQ(c.role_assignments[0].principal, "ci");
  EXPECT_EQ(c.role_assignments[0].role, "Key Vault Administrator");
  EXPECT_EQ(c.role_assignments[0].scope, "/vaults/payments");
  EXPECT_EQ(c.role_assignments[0].line, 23);
  EXPECT_EQ(c.role_assignments[1].scope, "/vaults/dev-soft/keys/tls-1");
  EXPECT_EQ(c.role_assignments[1].line, 26);
}

TEST(ConfigTest, MinimalFileGetsDefaults) {
  ASSERT_OK_AND_ASSIGN(Config c, Load(kBase));
  EXPECT_EQ(c.log.level, "warning");
  EXPECT_EQ(c.log.sink, "stderr");
  EXPECT_EQ(c.store.path, "/etc/vp/store.db");
  EXPECT_EQ(c.store.master_key_file, "/etc/vp/store.db.masterkey");
  ASSERT_EQ(c.vaults.size(), 1u);
  EXPECT_EQ(c.vaults[0].sku, "standard");
  EXPECT_TRUE(c.principals.empty());
  EXPECT_TRUE(c.role_assignments.empty());
}

TEST(ConfigTest, EmptyOptionalSectionsAreAccepted) {
  ASSERT_OK_AND_ASSIGN(Config c,
                       Load(std::string(kBase) + "log:\nprincipals:\nrole_assignments: []\n"));
  EXPECT_TRUE(c.principals.empty());
}

TEST(ConfigTest, MasterKeyDefaultsBesideAnAbsoluteStorePath) {
  ASSERT_OK_AND_ASSIGN(Config c, Load("store: {path: /srv/vp/s.db}\nvaults: [{name: v}]\n"));
  EXPECT_EQ(c.store.master_key_file, "/srv/vp/s.db.masterkey");
}

TEST(ConfigTest, RelativePathsAreResolvedAgainstBaseDir) {
  ASSERT_OK_AND_ASSIGN(Config c, LoadString("log: {sink: 'file:../log/a.log'}\n"
                                            "store: {path: data/./s.db, master_key_file: ../k/mk}\n"
                                            "vaults: [{name: v}]\n",
                                            "x.yaml", "/opt/vp/conf"));
  EXPECT_EQ(c.store.path, "/opt/vp/conf/data/s.db");
  EXPECT_EQ(c.store.master_key_file, "/opt/vp/k/mk");
  EXPECT_EQ(c.log.sink, "file:/opt/vp/log/a.log");
}

TEST(ConfigTest, LoadFileResolvesRelativePathsAgainstTheFilesDirectory) {
  TempDir dir;
  std::filesystem::create_directory(dir.file("conf"));
  std::ofstream(dir.file("conf/vp.yaml")) << kBase;
  ASSERT_OK_AND_ASSIGN(Config c, LoadFile(dir.file("conf/vp.yaml")));
  EXPECT_EQ(c.source, dir.file("conf/vp.yaml"));
  EXPECT_EQ(c.store.path, dir.file("conf/store.db"));
  EXPECT_EQ(c.store.master_key_file, dir.file("conf/store.db.masterkey"));
}

TEST(ConfigTest, LoadFileWithRelativeConfigPathGivesAbsoluteStorePath) {
  TempDir dir;
  std::ofstream(dir.file("vp.yaml")) << kBase;
  auto cwd = std::filesystem::current_path();
  std::filesystem::current_path(dir.path());
  auto r = LoadFile("vp.yaml");
  std::filesystem::current_path(cwd);
  ASSERT_OK(r);
  EXPECT_EQ(r->store.path, dir.file("store.db"));
  EXPECT_EQ(r->source, "vp.yaml");
}

TEST(ConfigTest, LoadFileMessagesNameTheFile) {
  TempDir dir;
  std::ofstream(dir.file("vp.yaml")) << kBase << "colour: blue\n";
  auto r = LoadFile(dir.file("vp.yaml"));
  EXPECT_THAT(r, RvIs(CKR_FUNCTION_FAILED));
  EXPECT_EQ(r.error().message, dir.file("vp.yaml") + ":4: colour: unknown key");
}

TEST(ConfigTest, MissingFileIsAnErrorNamingIt) {
  TempDir dir;
  auto r = LoadFile(dir.file("nope.yaml"));
  EXPECT_THAT(r, RvIs(CKR_FUNCTION_FAILED));
  EXPECT_THAT(r.error().message, HasSubstr(dir.file("nope.yaml")));
  EXPECT_THAT(r.error().message, HasSubstr("No such file"));
}

TEST(ConfigTest, DirectoryIsNotAConfigFile) {
  TempDir dir;
  auto r = LoadFile(dir.path());
  EXPECT_THAT(r, RvIs(CKR_FUNCTION_FAILED));
  EXPECT_THAT(r.error().message, HasSubstr(dir.path()));
}

TEST(ConfigTest, UnreadableFileIsAnErrorNamingIt) {
  if (geteuid() == 0) GTEST_SKIP() << "root reads any file";
  TempDir dir;
  std::ofstream(dir.file("vp.yaml")) << kBase;
  std::filesystem::permissions(dir.file("vp.yaml"), std::filesystem::perms::none);
  auto r = LoadFile(dir.file("vp.yaml"));
  EXPECT_THAT(r, RvIs(CKR_FUNCTION_FAILED));
  EXPECT_THAT(r.error().message, HasSubstr(dir.file("vp.yaml")));
}

TEST(ConfigTest, FindVaultAndFindPrincipal) {
  ASSERT_OK_AND_ASSIGN(Config c, Load(kFull));
  ASSERT_NE(c.FindVault("dev-soft"), nullptr);
  EXPECT_EQ(c.FindVault("dev-soft")->name, "dev-soft");
  EXPECT_EQ(c.FindVault("Dev-Soft"), nullptr);
  EXPECT_EQ(c.FindVault("nope"), nullptr);
  ASSERT_NE(c.FindPrincipal("web"), nullptr);
  EXPECT_EQ(c.FindPrincipal("web")->name, "web");
  EXPECT_EQ(c.FindPrincipal("payments"), nullptr);
}

TEST(ConfigTest, PremiumSkuIsAccepted) {
  ASSERT_OK_AND_ASSIGN(Config c, Load("store: {path: s}\nvaults: [{name: v, sku: premium}]\n"));
  EXPECT_EQ(c.vaults[0].sku, "premium");
}

TEST(ConfigTest, EveryLogLevelIsAccepted) {
  for (const char* level : {"debug", "info", "warning", "error", "off"}) {
    auto r = Load(std::string(kBase) + "log: {level: " + level + ", sink: syslog}\n");
    ASSERT_OK(r);
    EXPECT_EQ(r->log.level, level);
    EXPECT_EQ(r->log.sink, "syslog");
  }
}

TEST(ConfigTest, ExpiresLeapDayIsAccepted) {
  ASSERT_OK_AND_ASSIGN(
      Config c, Load(std::string(kBase) + "principals: [{name: p, auth: client_secret, "
                                          "secrets: [{hash: 'HASH', expires: 2028-02-29}]}]\n"));
  EXPECT_EQ(*c.principals[0].secrets[0].expires,
            std::chrono::sys_days(std::chrono::year(2028) / 2 / 29));
}

TEST(ConfigTest, DeeplyNestedInputIsAnErrorNotACrash) {
  std::string deep = "store: " + std::string(100000, '[') + std::string(100000, ']') + "\n";
  auto r = Load(deep);
  EXPECT_THAT(r, RvIs(CKR_FUNCTION_FAILED));
  EXPECT_THAT(r.error().message, StartsWith("vp.yaml:1: "));
}

TEST(ConfigTest, NumericNamesAreStrings) {
  ASSERT_OK_AND_ASSIGN(Config c, Load("store: {path: s}\nvaults: [{name: 123}]\n"));
  EXPECT_EQ(c.vaults[0].name, "123");
}

// ---- every validation rule: one case each, checking the whole message -------------------

struct BadCase {
  const char* name;
  std::string yaml;
  std::string message;
};

void PrintTo(const BadCase& c, std::ostream* os) { *os << c.name; }

class ConfigErrorTest : public ::testing::TestWithParam<BadCase> {};

TEST_P(ConfigErrorTest, FailsWithFileLineAndKeyPath) {
  EXPECT_EQ(ErrorOf(GetParam().yaml), GetParam().message);
}

std::string B(const std::string& more) { return kBase + more; }
std::string P(const std::string& principal_item) { return B("principals:\n" + principal_item); }
std::string RA(const std::string& item) {
  return B(
      "principals: [{name: ci, auth: client_secret, secrets: [{hash: 'HASH'}]}]\n"
      "role_assignments:\n" +
      item);
}

INSTANTIATE_TEST_SUITE_P(
    Rules, ConfigErrorTest,
    ::testing::Values(
        // document shape
        BadCase{"SyntaxError", B("vaults: [\n"),
                "vp.yaml:5: syntax error: end of sequence flow not found"},
        BadCase{"TabIndentation", "store:\n\tpath: x\n",
                "vp.yaml:2: syntax error: illegal map value"},
        BadCase{"TwoDocuments", B("---\nstore: {path: s}\n"),
                "vp.yaml:5: (top level): only one YAML document is allowed"},
        BadCase{"EmptyFile", "", "vp.yaml:1: store: is required"},
        BadCase{"RootIsAList", "- a\n- b\n", "vp.yaml:1: (top level): must be a map"},
        BadCase{"RootIsAScalar", "hello\n", "vp.yaml:1: (top level): must be a map"},
        BadCase{"UnknownTopLevelKey", B("managed_hsm_pool: []\n"), "vp.yaml:4: managed_hsm_pool: unknown key"},
        BadCase{"DuplicateTopLevelKey", B("store: {path: other}\n"),
                "vp.yaml:4: store: duplicate key"},
        BadCase{"NonScalarKey", B("[a, b]: c\n"), "vp.yaml:4: (top level): keys must be strings"},
        // log
        BadCase{"LogNotAMap", B("log: debug\n"), "vp.yaml:4: log: must be a map"},
        BadCase{"LogUnknownKey", B("log:\n  level: info\n  format: json\n"),
                "vp.yaml:6: log.format: unknown key"},
        BadCase{"LogLevelInvalid", B("log: {level: verbose}\n"),
                "vp.yaml:4: log.level: must be one of debug, info, warning, error, off"},
        BadCase{"LogLevelNotAString", B("log:\n  level: [debug]\n"),
                "vp.yaml:5: log.level: must be a string"},
        BadCase{"LogSinkInvalid", B("log: {sink: journald}\n"),
                "vp.yaml:4: log.sink: must be stderr, syslog or file:<path>"},
        BadCase{"LogSinkFileWithoutPath", B("log: {sink: 'file:'}\n"),
                "vp.yaml:4: log.sink: file: needs a path"},
        // store
        BadCase{"StoreMissing", "vaults: [{name: v}]\n", "vp.yaml:1: store: is required"},
        BadCase{"StoreNotAMap", "store: /var/lib/s.db\nvaults: [{name: v}]\n",
                "vp.yaml:1: store: must be a map"},
        BadCase{"StorePathMissing", "vaults: [{name: v}]\nstore:\n  master_key_file: k\n",
                "vp.yaml:3: store.path: is required"},
        BadCase{"StorePathEmpty", "store: {path: ''}\nvaults: [{name: v}]\n",
                "vp.yaml:1: store.path: must not be empty"},
        BadCase{"StorePathNull", "store:\n  path:\nvaults: [{name: v}]\n",
                "vp.yaml:2: store.path: needs a value"},
        BadCase{"StorePathNotAString", "store:\n  path: {a: b}\nvaults: [{name: v}]\n",
                "vp.yaml:2: store.path: must be a string"},
        BadCase{"StorePathWithNul", "store: {path: \"a\\0b\"}\nvaults: [{name: v}]\n",
                "vp.yaml:1: store.path: must not contain NUL characters"},
        BadCase{"StoreUnknownKey", "store: {path: s, replica: r}\nvaults: [{name: v}]\n",
                "vp.yaml:1: store.replica: unknown key"},
        BadCase{"MasterKeyIsTheDatabase",
                "store: {path: s.db, master_key_file: ./s.db}\nvaults: [{name: v}]\n",
                "vp.yaml:1: store.master_key_file: must not be the database file"},
        // vaults
        BadCase{"VaultsMissing", "store: {path: s}\n",
                "vp.yaml:1: vaults: at least one vault is required"},
        BadCase{"VaultsEmptyList", "store: {path: s}\nvaults: []\n",
                "vp.yaml:2: vaults: at least one vault is required"},
        BadCase{"VaultsNull", "store: {path: s}\nvaults:\n",
                "vp.yaml:2: vaults: at least one vault is required"},
        BadCase{"VaultsNotAList", "store: {path: s}\nvaults: {name: v}\n",
                "vp.yaml:2: vaults: must be a list"},
        BadCase{"VaultItemNotAMap", B("  - other\n"), "vp.yaml:4: vaults[1]: must be a map"},
        BadCase{"VaultNameMissing", B("  - sku: premium\n"),
                "vp.yaml:4: vaults[1].name: is required"},
        BadCase{"VaultNameInvalid", B("  - name: pay_ments\n"),
                "vp.yaml:4: vaults[1].name: invalid name \"pay_ments\": use 1-127 characters of "
                "0-9 a-z A-Z -"},
        BadCase{"VaultNameTooLong", B("  - name: " + std::string(128, 'a') + "\n"),
                "vp.yaml:4: vaults[1].name: invalid name \"" + std::string(128, 'a') +
                    "\": use 1-127 characters of 0-9 a-z A-Z -"},
        BadCase{"VaultNameNotAString", B("  - name: [a]\n"),
                "vp.yaml:4: vaults[1].name: must be a string"},
        BadCase{"VaultNameDuplicate", B("  - name: dev\n  - name: payments\n"),
                "vp.yaml:5: vaults[2].name: duplicate vault name \"payments\" (first defined at "
                "line 3)"},
        BadCase{"VaultNameDuplicateIgnoringCase", B("  - name: Payments\n"),
                "vp.yaml:4: vaults[1].name: duplicate vault name \"Payments\" (first defined at "
                "line 3)"},
        BadCase{"VaultSkuInvalid", B("  - name: v2\n    sku: gold\n"),
                "vp.yaml:5: vaults[1].sku: must be standard or premium"},
        BadCase{"VaultSkuNull", B("  - name: v2\n    sku:\n"),
                "vp.yaml:5: vaults[1].sku: needs a value"},
        BadCase{"VaultUnknownKey", B("    recovery: {retention_days: 7}\n"),
                "vp.yaml:4: vaults[0].recovery: unknown key"},
        BadCase{"VaultDuplicateKey", B("    name: again\n"),
                "vp.yaml:4: vaults[0].name: duplicate key"},
        // principals
        BadCase{"PrincipalsNotAList", B("principals: {name: ci}\n"),
                "vp.yaml:4: principals: must be a list"},
        BadCase{"PrincipalNotAMap", P("  - ci\n"), "vp.yaml:5: principals[0]: must be a map"},
        BadCase{"PrincipalNameMissing", P("  - auth: client_secret\n"),
                "vp.yaml:5: principals[0].name: is required"},
        BadCase{"PrincipalNameInvalid", P("  - name: ci bot\n"),
                "vp.yaml:5: principals[0].name: invalid name \"ci bot\": use 1-127 characters of "
                "0-9 a-z A-Z -"},
        BadCase{"PrincipalNameDuplicate",
                P("  - {name: ci, auth: client_secret, secrets: [{hash: 'HASH'}]}\n  - {name: CI, "
                  "auth: client_secret, secrets: [{hash: 'HASH'}]}\n"),
                "vp.yaml:6: principals[1].name: duplicate principal name \"CI\" (first defined at "
                "line 5)"},
        BadCase{"PrincipalAuthMissing", P("  - name: ci\n"),
                "vp.yaml:5: principals[0].auth: is required"},
        BadCase{"PrincipalAuthUnknown", P("  - name: web\n    auth: kerberos\n"),
                "vp.yaml:6: principals[0].auth: auth method \"kerberos\" is not supported "
                "yet (supported: client_secret, client_certificate, managed_identity, oauth2)"},
        BadCase{"OAuth2WithoutIssuer", P("  - name: web\n    auth: oauth2\n"),
                "vp.yaml:5: principals[0].issuer: is required for auth oauth2"},
        BadCase{"CertificateFileMissing", P("  - name: web\n    auth: client_certificate\n"),
                "vp.yaml:5: principals[0].certificate_file: is required for auth client_certificate"},
        BadCase{"PrincipalUnknownKey",
                P("  - {name: web, auth: client_secret, colour: blue}\n"),
                "vp.yaml:5: principals[0].colour: unknown key"},
        BadCase{"ManagedIdentityWithoutOsIdentity", P("  - name: web\n    auth: managed_identity\n"),
                "vp.yaml:5: principals[0]: give exactly one of unix_user, uid and unix_group for auth "
                "managed_identity"},
        BadCase{"SecretsMissing", P("  - {name: ci, auth: client_secret}\n"),
                "vp.yaml:5: principals[0].secrets: is required for auth client_secret"},
        BadCase{"SecretsEmpty", P("  - name: ci\n    auth: client_secret\n    secrets: []\n"),
                "vp.yaml:7: principals[0].secrets: at least one secret is required"},
        BadCase{"SecretsNotAList", P("  - name: ci\n    auth: client_secret\n    secrets: HASH\n"),
                "vp.yaml:7: principals[0].secrets: must be a list"},
        BadCase{"SecretNotAMap",
                P("  - name: ci\n    auth: client_secret\n    secrets:\n      - HASH\n"),
                "vp.yaml:8: principals[0].secrets[0]: must be a map"},
        BadCase{
            "SecretHashMissing",
            P("  - name: ci\n    auth: client_secret\n    secrets:\n      - expires: 2027-01-01\n"),
            "vp.yaml:8: principals[0].secrets[0].hash: is required"},
        BadCase{"SecretHashMalformed",
                P("  - name: ci\n    auth: client_secret\n    secrets:\n      - hash: HASH\n      "
                  "- hash: plaintext-password\n"),
                "vp.yaml:9: principals[0].secrets[1].hash: not a valid secret hash (generate one "
                "with `vaultp11 hash-secret`)"},
        BadCase{"SecretUnknownKey",
                P("  - name: ci\n    auth: client_secret\n    secrets:\n      - {hash: 'HASH', "
                  "value: hunter2}\n"),
                "vp.yaml:8: principals[0].secrets[0].value: unknown key"},
        BadCase{"ExpiresNotPadded",
                P("  - name: ci\n    auth: client_secret\n    secrets:\n      - hash: HASH\n       "
                  " expires: 2027-6-1\n"),
                "vp.yaml:9: principals[0].secrets[0].expires: must be a date YYYY-MM-DD, got "
                "\"2027-6-1\""},
        BadCase{"ExpiresImpossibleDate",
                P("  - name: ci\n    auth: client_secret\n    secrets:\n      - hash: HASH\n       "
                  " expires: 2027-02-29\n"),
                "vp.yaml:9: principals[0].secrets[0].expires: must be a date YYYY-MM-DD, got "
                "\"2027-02-29\""},
        BadCase{"ExpiresMonth13",
                P("  - {name: ci, auth: client_secret, secrets: [{hash: 'HASH', expires: "
                  "2027-13-01}]}\n"),
                "vp.yaml:5: principals[0].secrets[0].expires: must be a date YYYY-MM-DD, got "
                "\"2027-13-01\""},
        BadCase{"ExpiresWithTime",
                P("  - {name: ci, auth: client_secret, secrets: [{hash: 'HASH', expires: "
                  "'2027-01-01T00:00:00Z'}]}\n"),
                "vp.yaml:5: principals[0].secrets[0].expires: must be a date YYYY-MM-DD, got "
                "\"2027-01-01T00:00:00Z\""},
        BadCase{
            "ExpiresNotAString",
            P("  - {name: ci, auth: client_secret, secrets: [{hash: 'HASH', expires: [2027]}]}\n"),
            "vp.yaml:5: principals[0].secrets[0].expires: must be a string"},
        // role assignments
        BadCase{"RoleAssignmentsNotAList", RA("  principal: ci\n"),
                "vp.yaml:6: role_assignments: must be a list"},
        BadCase{"RoleAssignmentNotAMap", RA("  - ci\n"),
                "vp.yaml:6: role_assignments[0]: must be a map"},
        BadCase{"RoleAssignmentPrincipalMissing",
                RA("  - {role: Key Vault Administrator, scope: /vaults/payments}\n"),
                "vp.yaml:6: role_assignments[0].principal: is required"},
        BadCase{"RoleAssignmentRoleMissing", RA("  - {principal: ci, scope: /vaults/payments}\n"),
                "vp.yaml:6: role_assignments[0].role: is required"},
        BadCase{"RoleAssignmentScopeMissing",
                RA("  - {principal: ci, role: Key Vault Administrator}\n"),
                "vp.yaml:6: role_assignments[0].scope: is required"},
        BadCase{
            "RoleAssignmentUnknownPrincipal",
            RA("  - principal: cd\n    role: Key Vault Administrator\n    scope: "
               "/vaults/payments\n"),
            "vp.yaml:6: role_assignments[0].principal: no principal named \"cd\" in principals"},
        BadCase{"UnknownRole",
                RA("  - principal: ci\n    role: Key Vault Janitor\n    scope: /vaults/payments\n"),
                "vp.yaml:7: role_assignments[0].role: unknown role \"Key Vault Janitor\" (built-in roles: Key "
                "Vault Administrator, Key Vault Reader, Key Vault Crypto Officer, Key Vault Crypto User, Key Vault "
                "Crypto Service Encryption User, Key Vault Crypto Service Release User, Key Vault Secrets Officer, "
                "Key Vault Secrets User, Key Vault Certificates Officer, Key Vault Certificate User)"},
        BadCase{"RoleNameIsCaseSensitive",
                RA("  - {principal: ci, role: key vault administrator, scope: /vaults/payments}\n"),
                "vp.yaml:6: role_assignments[0].role: unknown role \"key vault administrator\" (built-in roles: "
                "Key Vault Administrator, Key Vault Reader, Key Vault Crypto Officer, Key Vault Crypto User, Key "
                "Vault Crypto Service Encryption User, Key Vault Crypto Service Release User, Key Vault Secrets "
                "Officer, Key Vault Secrets User, Key Vault Certificates Officer, Key Vault Certificate User)"},
        BadCase{"ScopeUnknownVault",
                RA("  - principal: ci\n    role: Key Vault Administrator\n    scope: "
                   "/vaults/payroll\n"),
                "vp.yaml:8: role_assignments[0].scope: no vault named \"payroll\" in vaults"},
        BadCase{"ScopeUnknownVaultOfObject",
                RA("  - {principal: ci, role: Key Vault Administrator, scope: "
                   "/vaults/payroll/keys/k}\n"),
                "vp.yaml:6: role_assignments[0].scope: no vault named \"payroll\" in vaults"},
        BadCase{"ScopeNotAbsolute",
                RA("  - {principal: ci, role: Key Vault Administrator, scope: vaults/payments}\n"),
                "vp.yaml:6: role_assignments[0].scope: must be /vaults/<vault> or "
                "/vaults/<vault>/keys|secrets|certificates/<name>, got \"vaults/payments\""},
        BadCase{
            "ScopeTrailingSlash",
            RA("  - {principal: ci, role: Key Vault Administrator, scope: /vaults/payments/}\n"),
            "vp.yaml:6: role_assignments[0].scope: must be /vaults/<vault> or "
            "/vaults/<vault>/keys|secrets|certificates/<name>, got \"/vaults/payments/\""},
        BadCase{"ScopeRoot", RA("  - {principal: ci, role: Key Vault Administrator, scope: /}\n"),
                "vp.yaml:6: role_assignments[0].scope: must be /vaults/<vault> or "
                "/vaults/<vault>/keys|secrets|certificates/<name>, got \"/\""},
        BadCase{
            "ScopeUnknownObjectKind",
            RA("  - {principal: ci, role: Key Vault Administrator, scope: "
               "/vaults/payments/blobs/b}\n"),
            "vp.yaml:6: role_assignments[0].scope: must be /vaults/<vault> or "
            "/vaults/<vault>/keys|secrets|certificates/<name>, got \"/vaults/payments/blobs/b\""},
        BadCase{"ScopeKindWithoutName",
                RA("  - {principal: ci, role: Key Vault Administrator, scope: "
                   "/vaults/payments/keys}\n"),
                "vp.yaml:6: role_assignments[0].scope: must be /vaults/<vault> or "
                "/vaults/<vault>/keys|secrets|certificates/<name>, got \"/vaults/payments/keys\""},
        BadCase{
            "ScopeTooDeep",
            RA("  - {principal: ci, role: Key Vault Administrator, scope: "
               "/vaults/payments/keys/k/v1}\n"),
            "vp.yaml:6: role_assignments[0].scope: must be /vaults/<vault> or "
            "/vaults/<vault>/keys|secrets|certificates/<name>, got \"/vaults/payments/keys/k/v1\""},
        BadCase{"ScopePoolsNotSupported",
                RA("  - {principal: ci, role: Key Vault Administrator, scope: /pools/p1}\n"),
                "vp.yaml:6: role_assignments[0].scope: must be /vaults/<vault> or "
                "/vaults/<vault>/keys|secrets|certificates/<name>, got \"/pools/p1\""},
        BadCase{
            "ScopeInvalidVaultName",
            RA("  - {principal: ci, role: Key Vault Administrator, scope: /vaults/pay.ments}\n"),
            "vp.yaml:6: role_assignments[0].scope: invalid vault name \"pay.ments\" in scope"},
        BadCase{"ScopeInvalidObjectName",
                RA("  - {principal: ci, role: Key Vault Administrator, scope: "
                   "/vaults/payments/keys/..}\n"),
                "vp.yaml:6: role_assignments[0].scope: invalid object name \"..\" in scope: use "
                "1-127 characters of 0-9 a-z A-Z -"},
        BadCase{"RoleAssignmentUnknownKey",
                RA("  - {principal: ci, role: Key Vault Administrator, scope: /vaults/payments, "
                   "condition: x}\n"),
                "vp.yaml:6: role_assignments[0].condition: unknown key"},
        BadCase{"UnquotedHashInFlowMap",
                P("  - {name: ci, auth: client_secret, secrets: [{hash: HASH}]}\n"),
                "vp.yaml:5: principals[0].secrets[0].r=8: unknown key (quote values that contain "
                "commas)"},
        BadCase{"MessageEscapesControlCharacters", B("  - name: \"a\\tb\"\n"),
                "vp.yaml:4: vaults[1].name: invalid name \"a\\x09b\": use 1-127 characters of 0-9 "
                "a-z A-Z -"}),
    [](const ::testing::TestParamInfo<BadCase>& info) { return std::string(info.param.name); });

// ---- ResolvePath and IsValidName ----------------------------------------------------------

class ResolvePathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (const char* v = std::getenv("VAULTP11_CONF")) saved_ = v;
    unsetenv("VAULTP11_CONF");
  }
  void TearDown() override {
    if (saved_) {
      setenv("VAULTP11_CONF", saved_->c_str(), 1);
    } else {
      unsetenv("VAULTP11_CONF");
    }
  }
  std::optional<std::string> saved_;
};

TEST_F(ResolvePathTest, ReservedWinsOverEnvironment) {
  setenv("VAULTP11_CONF", "/from/env.yaml", 1);
  EXPECT_EQ(ResolvePath("/from/reserved.yaml"), "/from/reserved.yaml");
}

TEST_F(ResolvePathTest, EnvironmentWinsOverDefault) {
  setenv("VAULTP11_CONF", "/from/env.yaml", 1);
  EXPECT_EQ(ResolvePath(nullptr), "/from/env.yaml");
}

TEST_F(ResolvePathTest, DefaultWhenNothingElse) {
  EXPECT_EQ(ResolvePath(nullptr), VAULTP11_DEFAULT_CONFIG);
}

TEST_F(ResolvePathTest, EmptyValuesAreIgnored) {
  setenv("VAULTP11_CONF", "", 1);
  EXPECT_EQ(ResolvePath(""), VAULTP11_DEFAULT_CONFIG);
  setenv("VAULTP11_CONF", "/from/env.yaml", 1);
  EXPECT_EQ(ResolvePath(""), "/from/env.yaml");
}

TEST(IsValidNameTest, AcceptsTheDocumentedAlphabet) {
  EXPECT_TRUE(IsValidName("a"));
  EXPECT_TRUE(IsValidName("Payments-2024"));
  EXPECT_TRUE(IsValidName("0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOPQRSTUVWXYZ"));
  EXPECT_TRUE(IsValidName(std::string(127, 'x')));
}

TEST(IsValidNameTest, RejectsEverythingElse) {
  EXPECT_FALSE(IsValidName(""));
  EXPECT_FALSE(IsValidName(std::string(128, 'x')));
  for (const char* bad : {"a_b", "a.b", "a b", "a/b", "ä", "a\nb", "a:b", "*"}) {
    EXPECT_FALSE(IsValidName(bad)) << bad;
  }
  EXPECT_FALSE(IsValidName(std::string_view("a\0b", 3)));
}

// ---- hsms and premium vaults -------------------------------------------------------------

constexpr const char* kHsm =
    "store: {path: store.db}\n"
    "hsms:\n"
    "  - { name: hsm-a, module: /usr/lib/softhsm/libsofthsm2.so, token: vault-a, pin_file: a.pin, quirks: [no-deinit] }\n"
    "  - { name: hsm-b, module: lib/hsm.so, token: 'pkcs11:token=b', pin_env: HSM_B_PIN }\n";

TEST(ConfigHsmTest, LoadsHsmsAndPremiumVaults) {
  ASSERT_OK_AND_ASSIGN(Config c, Load(std::string(kHsm) +
                                      "vaults:\n"
                                      "  - { name: v1, sku: premium, hsms: [hsm-a], default_protection: hsm }\n"
                                      "  - { name: v2, sku: premium, hsms: [hsm-b] }\n"));
  ASSERT_EQ(c.hsms.size(), 2u);
  EXPECT_EQ(c.hsms[0].pin_file, "/etc/vp/a.pin");
  EXPECT_EQ(c.hsms[0].quirks, std::vector<std::string>{"no-deinit"});
  EXPECT_EQ(c.hsms[1].module, "/etc/vp/lib/hsm.so");
  EXPECT_EQ(c.hsms[1].token, "pkcs11:token=b");
  EXPECT_EQ(c.hsms[1].pin_env, "HSM_B_PIN");
  EXPECT_EQ(c.vaults[0].default_protection, "hsm");
  EXPECT_EQ(c.vaults[1].default_protection, "software");
  EXPECT_EQ(c.vaults[1].hsms, std::vector<std::string>{"hsm-b"});
  ASSERT_NE(c.FindHsm("hsm-b"), nullptr);
  EXPECT_EQ(c.FindHsm("nope"), nullptr);
}

TEST(ConfigHsmTest, RejectsBadHsmEntries) {
  EXPECT_THAT(ErrorOf("store: {path: s.db}\nhsms:\n  - { name: a, token: t, pin_env: X }\nvaults: [ {name: v} ]\n"),
              HasSubstr("vp.yaml:3: hsms[0].module: is required"));
  EXPECT_THAT(ErrorOf("store: {path: s.db}\nhsms:\n  - { name: a, module: m.so, token: t }\nvaults: [ {name: v} ]\n"),
              HasSubstr("vp.yaml:3: hsms[0]: give exactly one of pin_file and pin_env"));
  EXPECT_THAT(ErrorOf("store: {path: s.db}\nhsms:\n  - { name: a, module: m.so, token: t, pin_env: X, pin_file: f }\n"
                      "vaults: [ {name: v} ]\n"),
              HasSubstr("give exactly one of pin_file and pin_env"));
  EXPECT_THAT(ErrorOf("store: {path: s.db}\nhsms:\n  - { name: a, module: m.so, token: t, pin_env: X, quirks: [fast] }\n"
                      "vaults: [ {name: v} ]\n"),
              HasSubstr("hsms[0].quirks: unknown quirk \"fast\""));
  EXPECT_THAT(ErrorOf("store: {path: s.db}\nhsms:\n  - { name: a, module: m.so, token: t, pin_env: X }\n"
                      "  - { name: a, module: m.so, token: u, pin_env: Y }\nvaults: [ {name: v} ]\n"),
              HasSubstr("vp.yaml:4: hsms[1].name: duplicate hsm name \"a\""));
  EXPECT_THAT(ErrorOf("store: {path: s.db}\nhsms:\n  - { name: a, module: m.so, token: t, pin_env: X, colour: red }\n"
                      "vaults: [ {name: v} ]\n"),
              HasSubstr("colour"));
}

TEST(ConfigHsmTest, RejectsInconsistentVaults) {
  EXPECT_THAT(ErrorOf(std::string(kHsm) + "vaults:\n  - { name: v, hsms: [hsm-a] }\n"),
              HasSubstr("vp.yaml:6: vaults[0].hsms: only premium vaults hold HSM keys"));
  EXPECT_THAT(ErrorOf(std::string(kHsm) + "vaults:\n  - { name: v, sku: premium, hsms: [hsm-c] }\n"),
              HasSubstr("vaults[0].hsms: no hsm named \"hsm-c\" in hsms"));
  EXPECT_THAT(ErrorOf(std::string(kHsm) + "vaults:\n  - { name: v, sku: premium, default_protection: hsm }\n"),
              HasSubstr("vaults[0].default_protection: hsm needs a premium vault with hsms"));
  EXPECT_THAT(ErrorOf(std::string(kHsm) + "vaults:\n  - { name: v, sku: premium, hsms: [hsm-a], default_protection: cloud }\n"),
              HasSubstr("vaults[0].default_protection: must be software or hsm"));
  EXPECT_THAT(ErrorOf(std::string(kHsm) + "vaults:\n  - { name: v, sku: premium, hsms: [hsm-a, hsm-b] }\n"),
              HasSubstr("vaults[0].hsms: a vault uses exactly one HSM"));
}

// ---- managed HSM pools -------------------------------------------------------------------

constexpr const char* kPoolBase =
    "store: {path: store.db}\n"
    "hsms:\n"
    "  - { name: a, module: m.so, token: ta, pin_file: a.pin, so_pin_file: a.so }\n"
    "  - { name: b, module: m.so, token: tb, pin_env: B }\n"
    "  - { name: c, module: m.so, token: tc, pin_env: C }\n"
    "vaults:\n"
    "  - name: payments\n"
    "principals:\n"
    "  - { name: app, auth: client_secret, secrets: [ {hash: \"HASH\"} ] }\n";

TEST(ConfigPoolTest, LoadsPoolsAndPoolRoles) {
  ASSERT_OK_AND_ASSIGN(Config c, Load(std::string(kPoolBase) +
                                      "managed_hsm_pools:\n"
                                      "  - { name: hsmpool, hsms: [a, b, c], quorum: 2, health_check_ms: 250 }\n"
                                      "  - { name: duo, hsms: [b, c] }\n"
                                      "role_assignments:\n"
                                      "  - { principal: app, role: Managed HSM Crypto User, scope: /managedHsms/hsmpool }\n"
                                      "  - { principal: app, role: Managed HSM Administrator, scope: /managedHsms/duo/keys/k1 }\n"
                                      "  - { principal: app, role: Key Vault Administrator, scope: /vaults/payments }\n"));
  ASSERT_EQ(c.managed_hsm_pools.size(), 2u);
  EXPECT_EQ(c.hsms[0].so_pin_file, "/etc/vp/a.so");
  EXPECT_EQ(c.managed_hsm_pools[0].hsms, (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(c.managed_hsm_pools[0].quorum, 2);
  EXPECT_EQ(c.managed_hsm_pools[0].EffectiveQuorum(3), 2u);
  EXPECT_EQ(c.managed_hsm_pools[1].quorum, 0);
  EXPECT_EQ(c.managed_hsm_pools[0].health_check_ms, 250);
  EXPECT_EQ(c.managed_hsm_pools[1].health_check_ms, 5000);  // the default
  // Default: every healthy member, at least 2 for a pool of 2 or more.
  EXPECT_EQ(c.managed_hsm_pools[1].EffectiveQuorum(2), 2u);
  EXPECT_EQ(c.managed_hsm_pools[1].EffectiveQuorum(1), 2u);
  ASSERT_NE(c.FindPool("duo"), nullptr);
  EXPECT_EQ(c.FindPool("payments"), nullptr);
}

TEST(ConfigPoolTest, RejectsBadPools) {
  std::string b(kPoolBase);
  EXPECT_THAT(ErrorOf(b + "managed_hsm_pools:\n  - { name: p, hsms: [a, x] }\n"),
              HasSubstr("vp.yaml:11: managed_hsm_pools[0].hsms[1]: no hsm named \"x\" in hsms"));
  EXPECT_THAT(ErrorOf(b + "managed_hsm_pools:\n  - { name: p, hsms: [a, b, a] }\n"),
              HasSubstr("managed_hsm_pools[0].hsms[2]: hsm \"a\" is listed twice"));
  EXPECT_THAT(ErrorOf(b + "managed_hsm_pools:\n  - { name: p, hsms: [a, b], quorum: 3 }\n"),
              HasSubstr("managed_hsm_pools[0].quorum: must be a whole number from 1 to 2"));
  EXPECT_THAT(ErrorOf(b + "managed_hsm_pools:\n  - { name: p, hsms: [a, b], quorum: 0 }\n"),
              HasSubstr("managed_hsm_pools[0].quorum: must be a whole number from 1 to 2"));
  EXPECT_THAT(ErrorOf(b + "managed_hsm_pools:\n  - { name: p, hsms: [a], quorum: x }\n"),
              HasSubstr("managed_hsm_pools[0].quorum"));
  EXPECT_THAT(ErrorOf(b + "managed_hsm_pools:\n  - { name: p, hsms: [a], health_check_ms: 5 }\n"),
              HasSubstr("managed_hsm_pools[0].health_check_ms: must be a whole number from 10 to 3600000"));
  EXPECT_THAT(ErrorOf(b + "managed_hsm_pools:\n  - { name: p, hsms: [a], health_check_ms: -1 }\n"),
              HasSubstr("managed_hsm_pools[0].health_check_ms"));
  EXPECT_THAT(ErrorOf(b + "managed_hsm_pools:\n  - { name: Payments, hsms: [a] }\n"),
              HasSubstr("managed_hsm_pools[0].name: \"Payments\" is already the name of a vault"));
  EXPECT_THAT(ErrorOf(b + "managed_hsm_pools:\n  - { name: p, hsms: [a] }\n  - { name: P, hsms: [b] }\n"),
              HasSubstr("managed_hsm_pools[1].name: duplicate pool name"));
  EXPECT_THAT(ErrorOf(b + "managed_hsm_pools:\n  - { name: p, hsms: [] }\n"),
              HasSubstr("managed_hsm_pools[0].hsms: a pool needs at least one hsm"));
  EXPECT_THAT(ErrorOf(b + "managed_hsm_pools:\n  - { name: p }\n"), HasSubstr("managed_hsm_pools[0].hsms: is required"));
  EXPECT_THAT(ErrorOf(b + "managed_hsm_pools:\n  - { name: p, hsms: [a], size: 3 }\n"),
              HasSubstr("managed_hsm_pools[0].size: unknown key"));
}

TEST(ConfigPoolTest, PoolRolesNeedPoolScopes) {
  std::string b = std::string(kPoolBase) + "managed_hsm_pools:\n  - { name: p, hsms: [a, b] }\nrole_assignments:\n";
  EXPECT_THAT(ErrorOf(b + "  - { principal: app, role: Managed HSM Crypto User, scope: /vaults/payments }\n"),
              HasSubstr("a managed HSM pool role's scope must be /managedHsms/<pool>"));
  EXPECT_THAT(ErrorOf(b + "  - { principal: app, role: Key Vault Administrator, scope: /managedHsms/p }\n"),
              HasSubstr("a vault role's scope must be /vaults/<vault>"));
  EXPECT_THAT(ErrorOf(b + "  - { principal: app, role: Managed HSM Crypto User, scope: /managedHsms/q }\n"),
              HasSubstr("no pool named \"q\" in managed_hsm_pools"));
  EXPECT_THAT(ErrorOf(b + "  - { principal: app, role: Managed HSM Crypto User, scope: /managedHsms/p/secrets/s }\n"),
              HasSubstr("must be /managedHsms/<pool> or /managedHsms/<pool>/keys/<name>"));
  EXPECT_TRUE(Load(b + "  - { principal: app, role: Managed HSM Crypto Officer, scope: /managedHsms/p }\n").ok());
  EXPECT_THAT(ErrorOf(b + "  - { principal: app, role: Managed HSM Janitor, scope: /managedHsms/p }\n"),
              HasSubstr("unknown role \"Managed HSM Janitor\" (built-in roles: Managed HSM Administrator, Managed "
                        "HSM Crypto Officer"));
  EXPECT_TRUE(Load(b + "  - { principal: app, role: Managed HSM Crypto User, scope: /managedHsms/p/keys/k-1 }\n").ok());
}

TEST(ConfigAccessPolicyTest, LoadsPoliciesAndRefusesMixing) {
  const std::string base =
      "store: { path: /var/lib/vp/store.db }\n"
      "vaults:\n"
      "  - name: legacy\n"
      "    authorization: access_policy\n"
      "    access_policies:\n"
      "      - { principal: app, keys: [get, list, Sign, unwrapKey], secrets: [all] }\n"
      "  - name: modern\n"
      "principals:\n"
      "  - { name: app, auth: client_secret, secrets: [ {hash: \"HASH\"} ] }\n";
  ASSERT_OK_AND_ASSIGN(Config c, Load(base));
  ASSERT_EQ(c.vaults[0].access_policies.size(), 1u);
  EXPECT_EQ(c.vaults[0].authorization, "access_policy");
  EXPECT_EQ(c.vaults[1].authorization, "rbac");
  const AccessPolicyConfig& ap = c.vaults[0].access_policies[0];
  EXPECT_EQ(ap.keys, auth::kGet | auth::kList | auth::kSign | auth::kUnwrapKey);
  EXPECT_EQ(ap.secrets, auth::PermissionsOf(auth::Kind::kSecret));
  EXPECT_EQ(ap.certificates, 0u);
  EXPECT_THAT(ErrorOf(base + "role_assignments:\n  - { principal: app, role: Key Vault Reader, scope: /vaults/legacy }\n"),
              HasSubstr("role_assignments[0].scope: vault legacy uses access policies"));
  EXPECT_TRUE(Load(base + "role_assignments:\n  - { principal: app, role: Key Vault Reader, scope: /vaults/modern }\n").ok());
  auto with = [](const std::string& policy) {
    return "store: { path: /s.db }\nvaults:\n  - name: v\n    authorization: access_policy\n    access_policies:\n      - " + policy +
           "\nprincipals:\n  - { name: app, auth: client_secret, secrets: [ {hash: \"HASH\"} ] }\n";
  };
  EXPECT_THAT(ErrorOf(with("{ principal: app, keys: [fly] }")),
              HasSubstr("vaults[0].access_policies[0].keys: unknown permission \"fly\" (known: get, list"));
  EXPECT_THAT(ErrorOf(with("{ principal: app, secrets: [sign] }")), HasSubstr("unknown permission \"sign\""));
  EXPECT_THAT(ErrorOf(with("{ principal: nobody, keys: [get] }")),
              HasSubstr("vaults[0].access_policies[0].principal: no principal named \"nobody\""));
  EXPECT_THAT(ErrorOf(with("{ keys: [get] }")), HasSubstr("access_policies[0].principal: is required"));
  EXPECT_THAT(ErrorOf("store: { path: /s.db }\nvaults:\n  - { name: v, access_policies: [] }\n"),
              HasSubstr("vaults[0].access_policies: only with authorization: access_policy"));
  EXPECT_THAT(ErrorOf("store: { path: /s.db }\nvaults:\n  - { name: v, authorization: acl }\n"),
              HasSubstr("vaults[0].authorization: must be rbac or access_policy"));
}


TEST(ConfigManagedIdentityTest, BindsToOneOsIdentity) {
  const std::string base = "store: { path: /s.db }\nvaults:\n  - name: v\nprincipals:\n";
  ASSERT_OK_AND_ASSIGN(Config c, Load(base + "  - { name: svc, auth: managed_identity, uid: 1001 }\n"
                                             "  - { name: rootish, auth: managed_identity, unix_user: root }\n"
                                             "  - { name: team, auth: managed_identity, unix_group: root }\n"));
  EXPECT_EQ(c.principals[0].uid, std::optional<uid_t>(1001));
  EXPECT_EQ(c.principals[1].uid, std::optional<uid_t>(0));
  EXPECT_EQ(c.principals[2].gid, std::optional<gid_t>(0));
  EXPECT_FALSE(c.principals[2].uid.has_value());
  EXPECT_THAT(ErrorOf(base + "  - { name: a, auth: managed_identity }\n"),
              HasSubstr("principals[0]: give exactly one of unix_user, uid and unix_group"));
  EXPECT_THAT(ErrorOf(base + "  - { name: a, auth: managed_identity, uid: 1, unix_group: root }\n"),
              HasSubstr("give exactly one of unix_user, uid and unix_group"));
  EXPECT_THAT(ErrorOf(base + "  - { name: a, auth: managed_identity, uid: -1 }\n"),
              HasSubstr("principals[0].uid: must be a numeric user id"));
  EXPECT_THAT(ErrorOf(base + "  - { name: a, auth: managed_identity, unix_user: no-such-user-here }\n"),
              HasSubstr("principals[0].unix_user: no user named \"no-such-user-here\" on this host"));
  EXPECT_THAT(ErrorOf(base + "  - { name: a, auth: managed_identity, uid: 5, secrets: [] }\n"),
              HasSubstr("principals[0].secrets: only for auth client_secret"));
  EXPECT_THAT(ErrorOf(base + "  - { name: a, auth: client_secret, uid: 5, secrets: [ {hash: \"H\"} ] }\n"),
              HasSubstr("principals[0].uid: only for auth managed_identity"));
}

}  // namespace
}  // namespace vaultp11::config

namespace vaultp11::config {
namespace {

// audit: absent means one file sink beside the store; every setting parses; mistakes are named.
TEST(ConfigAuditTest, DefaultsSettingsAndMistakes) {
  auto plain = Load(kBase);
  ASSERT_TRUE(plain.ok()) << plain.error().message;
  ASSERT_EQ(plain->audit.sinks.size(), 1u);
  EXPECT_EQ(plain->audit.sinks[0].type, "file");
  EXPECT_EQ(plain->audit.sinks[0].path, "/etc/vp/audit.log");
  EXPECT_FALSE(plain->audit.required);
  EXPECT_EQ(plain->audit.overflow, "block");
  // Issue 16, item 8: without a word in the config, the files are capped and identical
  // denials coalesced.
  EXPECT_EQ(plain->audit.sinks[0].max_bytes, 100ull << 20);
  EXPECT_EQ(plain->audit.sinks[0].max_total_bytes, 1ull << 30);
  EXPECT_EQ(plain->audit.coalesce_seconds, 5);

  auto off = Load(std::string(kBase) + "audit: { sinks: [] }\n");
  ASSERT_TRUE(off.ok()) << off.error().message;
  EXPECT_TRUE(off->audit.sinks.empty());

  auto full = Load(std::string(kBase) +
                   "audit:\n"
                   "  required: true\n"
                   "  queue_size: 1024\n"
                   "  overflow: drop\n"
                   "  coalesce_seconds: 0\n"
                   "  sinks:\n"
                   "    - { type: file, path: logs/a.log, max_bytes: 0, daily: false, retention_days: 30, "
                   "max_total_bytes: 0 }\n"
                   "    - { type: syslog, facility: local4, ident: vp }\n"
                   "    - { type: socket, socket: /run/c.sock, buffer_bytes: 65536 }\n");
  ASSERT_TRUE(full.ok()) << full.error().message;
  const AuditConfig& a = full->audit;
  EXPECT_TRUE(a.required);
  EXPECT_EQ(a.queue_size, 1024u);
  EXPECT_EQ(a.overflow, "drop");
  ASSERT_EQ(a.sinks.size(), 3u);
  EXPECT_EQ(a.sinks[0].path, "/etc/vp/logs/a.log");
  EXPECT_EQ(a.sinks[0].max_bytes, 0u);
  EXPECT_FALSE(a.sinks[0].daily);
  EXPECT_EQ(a.sinks[0].retention_days, 30);
  EXPECT_EQ(a.sinks[0].max_total_bytes, 0u);
  EXPECT_EQ(a.coalesce_seconds, 0);
  EXPECT_EQ(a.sinks[1].facility, "local4");
  EXPECT_EQ(a.sinks[1].ident, "vp");
  EXPECT_EQ(a.sinks[1].socket, "/dev/log");
  EXPECT_EQ(a.sinks[2].socket, "/run/c.sock");
  EXPECT_EQ(a.sinks[2].buffer_bytes, 65536u);

  auto error = [](const std::string& audit) { return ErrorOf(std::string(kBase) + "audit:\n" + audit); };
  EXPECT_THAT(error("  sinks: [ { type: tape } ]\n"), HasSubstr("audit.sinks[0].type: must be file, syslog or socket"));
  EXPECT_THAT(error("  sinks: [ { type: file } ]\n"), HasSubstr("audit.sinks[0].path: is required for a file sink"));
  EXPECT_THAT(error("  sinks: [ { type: socket } ]\n"), HasSubstr("audit.sinks[0].socket: is required"));
  EXPECT_THAT(error("  sinks: [ { path: x } ]\n"), HasSubstr("audit.sinks[0].type: is required"));
  EXPECT_THAT(error("  sinks: [ { type: syslog, path: x } ]\n"), HasSubstr("is not a setting of a syslog sink"));
  EXPECT_THAT(error("  sinks: [ { type: syslog, facility: kern } ]\n"), HasSubstr("facility: must be one of"));
  EXPECT_THAT(error("  sinks: [ { type: syslog, ident: \"a b\" } ]\n"), HasSubstr("ident: must be"));
  EXPECT_THAT(error("  sinks: [ { type: file, path: a, max_bytes: 10 } ]\n"), HasSubstr("at least 4096"));
  EXPECT_THAT(error("  sinks: [ { type: file, path: a, daily: sometimes } ]\n"), HasSubstr("must be true or false"));
  EXPECT_THAT(error("  sinks: [ { type: file, path: a }, { type: file, path: a } ]\n"),
              HasSubstr("is already a sink"));
  EXPECT_THAT(error("  overflow: spill\n"), HasSubstr("audit.overflow: must be block or drop"));
  EXPECT_THAT(error("  queue_size: 1\n"), HasSubstr("audit.queue_size: must be a whole number from 16"));
  EXPECT_THAT(error("  colour: red\n"), HasSubstr("audit.colour: unknown key"));
  EXPECT_THAT(error("  sinks: [ { type: file, path: a, max_total_bytes: 100 } ]\n"), HasSubstr("0 (no cap) or at least 4096"));
  EXPECT_THAT(error("  sinks: [ { type: syslog, max_total_bytes: 4096 } ]\n"), HasSubstr("is not a setting of a syslog sink"));
  EXPECT_THAT(error("  coalesce_seconds: -1\n"), HasSubstr("audit.coalesce_seconds: must be a whole number from 0"));
}

TEST(ConfigSoftDeleteTest, SectionOnVaultsAndPools) {
  const std::string yaml =
      "store: {path: store.db}\n"
      "hsms: [ { name: h1, module: m.so, token: t, pin_env: X } ]\n"
      "vaults:\n"
      "  - { name: plain }\n"
      "  - { name: kept, soft_delete: {} }\n"
      "  - { name: locked, soft_delete: { retention_days: 7, purge_protection: true } }\n"
      "managed_hsm_pools:\n"
      "  - { name: pool, hsms: [h1], soft_delete: { retention_days: 30 } }\n";
  ASSERT_OK_AND_ASSIGN(Config c, Load(yaml));
  EXPECT_FALSE(c.SoftDeleteOf("plain").enabled);
  EXPECT_TRUE(c.SoftDeleteOf("kept").enabled);
  EXPECT_EQ(c.SoftDeleteOf("kept").retention_days, 90);
  EXPECT_FALSE(c.SoftDeleteOf("kept").purge_protection);
  EXPECT_EQ(c.SoftDeleteOf("locked").retention_days, 7);
  EXPECT_TRUE(c.SoftDeleteOf("locked").purge_protection);
  EXPECT_EQ(c.SoftDeleteOf("pool").retention_days, 30);
  EXPECT_FALSE(c.SoftDeleteOf("nowhere").enabled);

  auto error = [](const std::string& sd) {
    return ErrorOf("store: {path: s.db}\nvaults:\n  - { name: v, soft_delete: " + sd + " }\n");
  };
  EXPECT_THAT(error("{ retention_days: 6 }"), HasSubstr("soft_delete.retention_days: must be a whole number from 7 to 90"));
  EXPECT_THAT(error("{ retention_days: 91 }"), HasSubstr("from 7 to 90"));
  EXPECT_THAT(error("{ purge_protection: maybe }"), HasSubstr("must be true or false"));
  EXPECT_THAT(error("{ retention: 10 }"), HasSubstr("soft_delete.retention: unknown key"));
}


// ---- store.seal ------------------------------------------------------------------------------

TEST(ConfigSealTest, SealNamesAnHsmAndTakesItsToken) {
  ASSERT_OK_AND_ASSIGN(Config c, Load("store:\n"
                                      "  path: store.db\n"
                                      "  seal: { hsm: hsm-a, key_label: vaultp11-seal }\n"
                                      "hsms:\n"
                                      "  - { name: hsm-a, module: /usr/lib/softhsm/libsofthsm2.so, token: vault-a, "
                                      "pin_file: a.pin, quirks: [no-deinit] }\n"
                                      "vaults: [{name: v}]\n"));
  EXPECT_TRUE(c.store.sealed());
  EXPECT_EQ(c.store.seal.hsm, "hsm-a");
  EXPECT_EQ(c.store.seal.key_label, "vaultp11-seal");
  EXPECT_EQ(c.store.seal.module, "/usr/lib/softhsm/libsofthsm2.so");
  EXPECT_EQ(c.store.seal.token, "vault-a");
  EXPECT_EQ(c.store.seal.pin_file, "/etc/vp/a.pin");
  EXPECT_EQ(c.store.seal.quirks, std::vector<std::string>{"no-deinit"});
  // No master key file by default beside a seal.
  EXPECT_EQ(c.store.master_key_file, "");
  EXPECT_FALSE(c.store.create_seal_key);
}

TEST(ConfigSealTest, PostgresqlWithASealNeedsNoMasterKeyFileAndBothMayBeGiven) {
  const std::string hsms = "hsms:\n  - { name: h, module: m.so, token: t, pin_env: P }\nvaults: [{name: v}]\n";
  ASSERT_OK_AND_ASSIGN(Config c, Load("store: {backend: postgresql, dsn: 'host=db', seal: {hsm: h, key_label: s}}\n" +
                                      hsms));
  EXPECT_EQ(c.store.master_key_file, "");
  EXPECT_EQ(c.store.seal.pin_env, "P");
  ASSERT_EQ(c.audit.sinks.size(), 1u);
  EXPECT_EQ(c.audit.sinks[0].path, "/etc/vp/audit.log");
  ASSERT_OK_AND_ASSIGN(Config both, Load("store: {path: s.db, master_key_file: mk, seal: {hsm: h, key_label: s}}\n" +
                                         hsms));
  EXPECT_EQ(both.store.master_key_file, "/etc/vp/mk");
  EXPECT_TRUE(both.store.sealed());
}

TEST(ConfigSealTest, RejectsBadSeals) {
  const std::string hsms = "hsms:\n  - { name: h, module: m.so, token: t, pin_env: P }\nvaults: [{name: v}]\n";
  EXPECT_THAT(ErrorOf("store:\n  path: s.db\n  seal: {hsm: nope, key_label: s}\n" + hsms),
              HasSubstr("vp.yaml:3: store.seal.hsm: no hsm named \"nope\" in hsms"));
  EXPECT_THAT(ErrorOf("store:\n  path: s.db\n  seal: {hsm: h}\n" + hsms),
              HasSubstr("vp.yaml:3: store.seal.key_label: is required"));
  EXPECT_THAT(ErrorOf("store:\n  path: s.db\n  seal: {key_label: s}\n" + hsms),
              HasSubstr("vp.yaml:3: store.seal.hsm: is required"));
  EXPECT_THAT(ErrorOf("store:\n  path: s.db\n  seal: {hsm: h, key_label: s, mechanism: gcm}\n" + hsms),
              HasSubstr("store.seal.mechanism: unknown key"));
  EXPECT_THAT(ErrorOf("store:\n  path: s.db\n  seal: {hsm: h, key_label: ''}\n" + hsms),
              HasSubstr("store.seal.key_label"));
  EXPECT_THAT(ErrorOf("store:\n  path: s.db\n  seal: vaultp11-seal\n" + hsms), HasSubstr("store.seal: must be a map"));
  EXPECT_THAT(ErrorOf("store: {backend: postgresql, dsn: 'host=db'}\n" + hsms),
              HasSubstr("store.master_key_file: is required with backend postgresql"));
}

}  // namespace
}  // namespace vaultp11::config

// Tests of the `vaultp11` admin tool: the command functions in-process, and the built binary
// (path in $VAULTP11_CLI, set by tests/cli/meson.build) run as a child process in a temp dir.
#include <fcntl.h>
#include <pwd.h>
#include <sqlite3.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "auth/secret_hash.h"
#include "audit/chain.h"
#include "audit/event.h"
#include "audit/file_sink.h"
#include "cli/commands.h"
#include "config/config.h"
#include "matchers.h"
#include "model/attributes.h"
#include "store/store.h"
#include "vaultp11/vaultp11.h"
#include "run_cli.h"
#include "temp_dir.h"

namespace vaultp11::cli {
namespace {

using ::testing::AllOf;
using ::testing::ContainsRegex;
using ::testing::EndsWith;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::StartsWith;
using vaultp11::testing::TempDir;
using Outcome = vaultp11::testing::CliOutcome;
using vaultp11::testing::RunCli;

std::string ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

Result<bool> Verify(const std::string& hash, std::string_view secret) {
  return auth::VerifySecret(hash, ToBytes(secret));
}

// ---- the built binary ----------------------------------------------------------------------


constexpr const char* kConfig =
    "store:\n"
    "  path: data/store.db\n"
    "vaults:\n"
    "  - name: payments\n"
    "    sku: premium\n"
    "  - name: dev\n";

mode_t ModeOf(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return 0;
  return st.st_mode & 07777;
}

TEST(CliBinaryTest, HelpExitsZeroAndListsSubcommands) {
  TempDir dir;
  Outcome o = RunCli(dir, {"--help"});
  EXPECT_EQ(o.exit_code, 0);
  EXPECT_THAT(o.out, AllOf(HasSubstr("Usage"), HasSubstr("--config"), HasSubstr("hash-secret"),
                           HasSubstr("init"), HasSubstr("list")));
  EXPECT_THAT(o.err, IsEmpty());
}

TEST(CliBinaryTest, SubcommandHelpExitsZero) {
  TempDir dir;
  Outcome o = RunCli(dir, {"hash-secret", "--help"});
  EXPECT_EQ(o.exit_code, 0);
  EXPECT_THAT(o.out, HasSubstr("--cost-log2n"));
}

TEST(CliBinaryTest, VersionPrintsTheBuildVersion) {
  TempDir dir;
  Outcome o = RunCli(dir, {"--version"});
  EXPECT_EQ(o.exit_code, 0);
  EXPECT_EQ(o.out, std::string("vaultp11 ") + VAULTP11_VERSION + "\n");
}

TEST(CliBinaryTest, UnknownSubcommandExitsTwo) {
  TempDir dir;
  Outcome o = RunCli(dir, {"frobnicate"});
  EXPECT_EQ(o.exit_code, 2);
  EXPECT_THAT(o.err, StartsWith("vaultp11: unknown subcommand \"frobnicate\"\n"));
  EXPECT_THAT(o.out, IsEmpty());
}

TEST(CliBinaryTest, MissingSubcommandExitsTwo) {
  TempDir dir;
  Outcome o = RunCli(dir, {});
  EXPECT_EQ(o.exit_code, 2);
  EXPECT_THAT(o.err, StartsWith("vaultp11: "));
}

TEST(CliBinaryTest, UnknownOptionExitsTwo) {
  TempDir dir;
  Outcome o = RunCli(dir, {"list", "--colour"});
  EXPECT_EQ(o.exit_code, 2);
  EXPECT_THAT(o.err, StartsWith("vaultp11: "));
}

TEST(CliBinaryTest, HashSecretReadsStdinAndPrintsAVerifiableHash) {
  TempDir dir;
  Outcome o = RunCli(dir, {"hash-secret", "--cost-log2n", "10"}, "s3cret-value\n");
  ASSERT_EQ(o.exit_code, 0) << o.err;
  ASSERT_THAT(o.out, AllOf(StartsWith("$scrypt$ln=10,r=8,p=1$"), EndsWith("\n")));
  std::string hash = o.out.substr(0, o.out.size() - 1);
  EXPECT_EQ(hash.find('\n'), std::string::npos);
  EXPECT_TRUE(auth::IsWellFormedHash(hash));
  ASSERT_OK_AND_ASSIGN(bool ok, Verify(hash, "s3cret-value"));
  EXPECT_TRUE(ok);
  ASSERT_OK_AND_ASSIGN(ok, Verify(hash, "s3cret-value\n"));
  EXPECT_FALSE(ok);
  EXPECT_THAT(o.err, Not(HasSubstr("s3cret")));
}

TEST(CliBinaryTest, HashSecretStripsExactlyOneTrailingNewline) {
  TempDir dir;
  Outcome o = RunCli(dir, {"hash-secret", "--cost-log2n=10"}, "two\n\n");
  ASSERT_EQ(o.exit_code, 0) << o.err;
  ASSERT_OK_AND_ASSIGN(bool ok, Verify(o.out.substr(0, o.out.size() - 1), "two\n"));
  EXPECT_TRUE(ok);
}

TEST(CliBinaryTest, HashSecretWithoutNewlineKeepsEveryByte) {
  TempDir dir;
  Outcome o = RunCli(dir, {"hash-secret", "--cost-log2n=10"}, "no newline");
  ASSERT_EQ(o.exit_code, 0) << o.err;
  ASSERT_OK_AND_ASSIGN(bool ok, Verify(o.out.substr(0, o.out.size() - 1), "no newline"));
  EXPECT_TRUE(ok);
}

TEST(CliBinaryTest, HashSecretUsesTheDefaultCost) {
  TempDir dir;
  Outcome o = RunCli(dir, {"hash-secret"}, "pw");
  ASSERT_EQ(o.exit_code, 0) << o.err;
  EXPECT_THAT(o.out, StartsWith("$scrypt$ln=15,r=8,p=1$"));
}

TEST(CliBinaryTest, HashSecretRefusesAnEmptySecret) {
  TempDir dir;
  for (const char* input : {"", "\n"}) {
    Outcome o = RunCli(dir, {"hash-secret", "--cost-log2n=10"}, input);
    EXPECT_EQ(o.exit_code, 1);
    EXPECT_THAT(o.out, IsEmpty());
    EXPECT_THAT(o.err, StartsWith("vaultp11: empty secret"));
  }
}

TEST(CliBinaryTest, HashSecretRefusesASecretOnTheCommandLineWithoutEchoingIt) {
  TempDir dir;
  Outcome o = RunCli(dir, {"hash-secret", "hunter2-on-argv"}, "pw\n");
  EXPECT_EQ(o.exit_code, 2);
  EXPECT_THAT(o.out, IsEmpty());
  EXPECT_THAT(o.err, AllOf(StartsWith("vaultp11: "), Not(HasSubstr("hunter2"))));
}

TEST(CliBinaryTest, HashSecretCostOutOfRangeIsAUsageError) {
  TempDir dir;
  EXPECT_EQ(RunCli(dir, {"hash-secret", "--cost-log2n", "9"}, "pw").exit_code, 2);
  EXPECT_EQ(RunCli(dir, {"hash-secret", "--cost-log2n", "21"}, "pw").exit_code, 2);
  EXPECT_EQ(RunCli(dir, {"hash-secret", "--cost-log2n", "x"}, "pw").exit_code, 2);
}

TEST(CliBinaryTest, InitCreatesStoreAndMasterKeyWithMode0600) {
  TempDir dir;
  WriteFile(dir.file("vp.yaml"), kConfig);
  Outcome o = RunCli(dir, {"--config", "vp.yaml", "init"});
  ASSERT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(ModeOf(dir.file("data/store.db")), 0600u);
  EXPECT_EQ(ModeOf(dir.file("data/store.db.masterkey")), 0600u);
  EXPECT_EQ(ModeOf(dir.file("data")), 0700u);
  EXPECT_THAT(o.out,
              AllOf(HasSubstr("created store " + dir.file("data/store.db") + "\n"),
                    HasSubstr("created master key file " + dir.file("data/store.db.masterkey")),
                    HasSubstr("created vault payments\n"), HasSubstr("created vault dev\n")));
  EXPECT_THAT(o.err, IsEmpty());
}

// One master key for the fleet: `init` on a host whose master key file is not the one the
// store's data keys are wrapped with stops before creating anything, naming the file.
TEST(CliBinaryTest, InitRefusesASecondMasterKeyAgainstAStoreItCannotOpen) {
  TempDir dir;
  WriteFile(dir.file("vp.yaml"), kConfig);
  ASSERT_EQ(RunCli(dir, {"--config", "vp.yaml", "init"}).exit_code, 0);
  const std::string key = dir.file("data/store.db.masterkey");
  const std::string good = ReadAll(key);
  // Another host's file (a key of its own) at the same path.
  WriteFile(key, std::string(32, 'o'));
  WriteFile(dir.file("vp.yaml"), std::string(kConfig) + "  - name: new-one\n");
  Outcome wrong = RunCli(dir, {"--config", "vp.yaml", "init"});
  EXPECT_EQ(wrong.exit_code, kExitFailed);
  EXPECT_THAT(wrong.err, AllOf(HasSubstr(key), HasSubstr("does not open the data keys")));
  EXPECT_THAT(wrong.out, Not(HasSubstr("created vault new-one")));
  // No file: refused too, and none is made.
  ASSERT_EQ(unlink(key.c_str()), 0);
  Outcome missing = RunCli(dir, {"--config", "vp.yaml", "init"});
  EXPECT_EQ(missing.exit_code, kExitFailed);
  EXPECT_THAT(missing.err, AllOf(HasSubstr(key), HasSubstr("is missing")));
  EXPECT_FALSE(std::filesystem::exists(key));
  // The right file: the new vault is made.
  WriteFile(key, good);
  chmod(key.c_str(), 0600);
  Outcome right = RunCli(dir, {"--config", "vp.yaml", "init"});
  ASSERT_EQ(right.exit_code, 0) << right.err;
  EXPECT_THAT(right.out, HasSubstr("created vault new-one"));
}

TEST(CliBinaryTest, InitIsIdempotentAndAddsNewVaults) {
  TempDir dir;
  WriteFile(dir.file("vp.yaml"), kConfig);
  ASSERT_EQ(RunCli(dir, {"--config", "vp.yaml", "init"}).exit_code, 0);
  WriteFile(dir.file("vp.yaml"), std::string(kConfig) + "  - name: new-one\n");
  Outcome o = RunCli(dir, {"init", "--config", "vp.yaml"});
  ASSERT_EQ(o.exit_code, 0) << o.err;
  EXPECT_THAT(o.out,
              AllOf(HasSubstr("using existing store"), HasSubstr("existing vault payments\n"),
                    HasSubstr("created vault new-one\n")));
  EXPECT_THAT(o.out, Not(HasSubstr("created vault payments")));
}

TEST(CliBinaryTest, ListShowsTheConfiguredVaults) {
  TempDir dir;
  WriteFile(dir.file("vp.yaml"), kConfig);
  ASSERT_EQ(RunCli(dir, {"--config", "vp.yaml", "init"}).exit_code, 0);
  Outcome o = RunCli(dir, {"--config", "vp.yaml", "list"});
  ASSERT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(o.out, "vault payments (premium): 0 objects\nvault dev (standard): 0 objects\n");
}

TEST(CliBinaryTest, ListOneVault) {
  TempDir dir;
  WriteFile(dir.file("vp.yaml"), kConfig);
  ASSERT_EQ(RunCli(dir, {"--config", "vp.yaml", "init"}).exit_code, 0);
  Outcome o = RunCli(dir, {"--config", "vp.yaml", "list", "--vault", "dev"});
  ASSERT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(o.out, "vault dev (standard): 0 objects\n");
  o = RunCli(dir, {"--config", "vp.yaml", "list", "--vault", "nope"});
  EXPECT_EQ(o.exit_code, 1);
  EXPECT_EQ(o.err, "vaultp11: no vault named \"nope\" in vp.yaml\n");
}

TEST(CliBinaryTest, ListJsonIsOneDocument) {
  TempDir dir;
  WriteFile(dir.file("vp.yaml"), kConfig);
  ASSERT_EQ(RunCli(dir, {"--config", "vp.yaml", "init"}).exit_code, 0);
  Outcome o = RunCli(dir, {"--config", "vp.yaml", "list", "--json"});
  ASSERT_EQ(o.exit_code, 0) << o.err;
  nlohmann::json doc = nlohmann::json::parse(o.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(doc.is_discarded()) << o.out;
  EXPECT_EQ(doc["store"], dir.file("data/store.db"));
  ASSERT_EQ(doc["vaults"].size(), 2u);
  EXPECT_EQ(doc["vaults"][0]["name"], "payments");
  EXPECT_EQ(doc["vaults"][0]["sku"], "premium");
  EXPECT_EQ(doc["vaults"][0]["initialized"], true);
  EXPECT_TRUE(doc["vaults"][0]["objects"].is_array());
  EXPECT_EQ(doc["vaults"][1]["name"], "dev");
}

TEST(CliBinaryTest, ListBeforeInitFailsAndSaysWhatToDo) {
  TempDir dir;
  WriteFile(dir.file("vp.yaml"), kConfig);
  Outcome o = RunCli(dir, {"--config", "vp.yaml", "list"});
  EXPECT_EQ(o.exit_code, 1);
  EXPECT_THAT(o.err, AllOf(StartsWith("vaultp11: "), HasSubstr("vaultp11 init")));
  EXPECT_FALSE(std::filesystem::exists(dir.file("data/store.db")));
}

TEST(CliBinaryTest, BadConfigExitsOneWithFileLineAndKey) {
  TempDir dir;
  WriteFile(dir.file("vp.yaml"), "store: {path: s.db}\nvaults:\n  - name: v\n    sku: gold\n");
  Outcome o = RunCli(dir, {"--config", dir.file("vp.yaml"), "init"});
  EXPECT_EQ(o.exit_code, 1);
  EXPECT_EQ(o.err, "vaultp11: " + dir.file("vp.yaml") +
                       ":4: vaults[0].sku: must be standard or premium\n");
  EXPECT_THAT(o.out, IsEmpty());
  EXPECT_FALSE(std::filesystem::exists(dir.file("s.db")));
}

TEST(CliBinaryTest, BadConfigNeverEchoesTheHash) {
  TempDir dir;
  WriteFile(dir.file("vp.yaml"),
            "store: {path: s.db}\nvaults: [{name: v}]\nprincipals:\n"
            "  - {name: ci, auth: client_secret, secrets: [{hash: not-a-hash-but-a-password}]}\n");
  Outcome o = RunCli(dir, {"--config", "vp.yaml", "list"});
  EXPECT_EQ(o.exit_code, 1);
  EXPECT_THAT(o.err, AllOf(HasSubstr("vp.yaml:4: principals[0].secrets[0].hash: "),
                           Not(HasSubstr("a-password"))));
}

TEST(CliBinaryTest, MissingConfigNamesTheFile) {
  TempDir dir;
  Outcome o = RunCli(dir, {"--config", dir.file("absent.yaml"), "list"});
  EXPECT_EQ(o.exit_code, 1);
  EXPECT_THAT(o.err, AllOf(StartsWith("vaultp11: "), HasSubstr(dir.file("absent.yaml"))));
}

TEST(CliBinaryTest, ConfigComesFromTheEnvironmentWithoutTheOption) {
  TempDir dir;
  WriteFile(dir.file("vp.yaml"), kConfig);
  Outcome o = RunCli(dir, {"init"}, "", {"VAULTP11_CONF=" + dir.file("vp.yaml")});
  ASSERT_EQ(o.exit_code, 0) << o.err;
  EXPECT_TRUE(std::filesystem::exists(dir.file("data/store.db")));
}

TEST(CliBinaryTest, ConfigOptionWinsOverTheEnvironment) {
  TempDir dir;
  WriteFile(dir.file("vp.yaml"), kConfig);
  Outcome o = RunCli(dir, {"--config", "vp.yaml", "init"}, "",
                     {"VAULTP11_CONF=" + dir.file("absent.yaml")});
  EXPECT_EQ(o.exit_code, 0) << o.err;
  o = RunCli(dir, {"list"}, "", {"VAULTP11_CONF=" + dir.file("absent.yaml")});
  EXPECT_EQ(o.exit_code, 1);
  EXPECT_THAT(o.err, HasSubstr(dir.file("absent.yaml")));
}

// ---- the shipped example config ------------------------------------------------------------

TEST(ExampleConfigTest, LoadsAndCoversEveryTopLevelKey) {
  const char* path = std::getenv("VAULTP11_EXAMPLE_CONFIG");
  ASSERT_TRUE(path != nullptr && *path != '\0') << "set VAULTP11_EXAMPLE_CONFIG (meson test does)";
  ASSERT_OK_AND_ASSIGN(config::Config c, config::LoadFile(path));
  EXPECT_EQ(c.store.path, "/var/lib/vaultp11/store.db");
  EXPECT_EQ(c.vaults.size(), 2u);
  EXPECT_EQ(c.principals.size(), 2u);
  EXPECT_EQ(c.role_assignments.size(), 2u);
  EXPECT_TRUE(c.principals[0].secrets[0].expires.has_value());
}

// ---- the command functions in-process --------------------------------------------------------

TEST(CliCommandTest, ReadSecretStripsOneNewline) {
  for (auto [input, want] : std::vector<std::pair<std::string, std::string>>{
           {"abc\n", "abc"},
           {"abc\r\n", "abc"},
           {"abc", "abc"},
           {"abc\n\n", "abc\n"},
           {" spaced \n", " spaced "},
           {std::string("a\0b\n", 4), std::string("a\0b", 3)}}) {
    std::istringstream in(input);
    ASSERT_OK_AND_ASSIGN(SecureString s, ReadSecret(in, false));
    EXPECT_EQ(std::string(s.begin(), s.end()), want);
  }
}

TEST(CliCommandTest, ReadSecretOneLineStopsAtTheNewline) {
  std::istringstream in("first\nsecond\n");
  ASSERT_OK_AND_ASSIGN(SecureString s, ReadSecret(in, true));
  EXPECT_EQ(std::string(s.begin(), s.end()), "first");
}

TEST(CliCommandTest, ReadSecretRefusesEmptyAndHugeInput) {
  std::istringstream empty("");
  EXPECT_THAT(ReadSecret(empty, false), RvIs(CKR_ARGUMENTS_BAD));
  std::istringstream newline("\n");
  EXPECT_THAT(ReadSecret(newline, false), RvIs(CKR_ARGUMENTS_BAD));
  std::istringstream huge(std::string(64 * 1024 + 1, 'x'));
  EXPECT_THAT(ReadSecret(huge, false), RvIs(CKR_ARGUMENTS_BAD));
  std::istringstream max(std::string(64 * 1024, 'x') + "\n");
  EXPECT_OK(ReadSecret(max, false));
}

TEST(CliCommandTest, ClassNames) {
  EXPECT_EQ(ClassName(CKO_PRIVATE_KEY), "private-key");
  EXPECT_EQ(ClassName(CKO_PUBLIC_KEY), "public-key");
  EXPECT_EQ(ClassName(CKO_SECRET_KEY), "secret-key");
  EXPECT_EQ(ClassName(CKO_CERTIFICATE), "certificate");
  EXPECT_EQ(ClassName(CKO_DATA), "data");
  EXPECT_EQ(ClassName(0x80000001), "class-0x80000001");
}

TEST(CliCommandTest, RunHashSecretWritesToTheGivenStreams) {
  std::istringstream in("pw\n");
  std::ostringstream out, err;
  Io io{in, out, err};
  const char* argv[] = {"vaultp11", "hash-secret", "--cost-log2n", "10"};
  EXPECT_EQ(cli::Run(4, argv, io), kExitOk) << err.str();
  ASSERT_OK_AND_ASSIGN(bool ok, Verify(out.str().substr(0, out.str().size() - 1), "pw"));
  EXPECT_TRUE(ok);
}

TEST(CliCommandTest, RunReportsUsageErrors) {
  std::istringstream in;
  std::ostringstream out, err;
  Io io{in, out, err};
  const char* argv[] = {"vaultp11", "list", "--vault"};
  EXPECT_EQ(cli::Run(3, argv, io), kExitUsage);
  EXPECT_THAT(err.str(), StartsWith("vaultp11: "));
}

class ListCommandTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WriteFile(dir_.file("vp.yaml"), kConfig);
    auto cfg = config::LoadFile(dir_.file("vp.yaml"));
    ASSERT_OK(cfg);
    cfg_ = std::move(cfg).value();
    std::ostringstream out;
    ASSERT_OK(InitCommand(cfg_, out));
  }

  // Returns the object's version.
  std::string Insert(const std::string& vault, CK_OBJECT_CLASS cls, const std::string& label, Bytes id) {
    auto st = store::Store::Open(cfg_.store.path, cfg_.store.master_key_file, false);
    EXPECT_OK(st.status());
    if (!st.ok()) return "";
    store::ObjectRecord r;
    r.vault = vault;
    r.object_class = cls;
    r.label = label;
    r.ck_id = std::move(id);
    auto rec = (*st)->Insert(r, SecureBytes{});
    EXPECT_OK(rec.status());
    return rec.ok() ? rec->version : "";
  }

  TempDir dir_;
  config::Config cfg_;
};

TEST_F(ListCommandTest, ShowsClassIdLabelAndVersionOfEachObject) {
  std::string tls = Insert("payments", CKO_PRIVATE_KEY, "tls", {0x0a, 0xb1});
  Insert("payments", CKO_PUBLIC_KEY, "tls", {0x0a, 0xb1});
  std::string db = Insert("payments", CKO_DATA, "db\x1b[2Jpass", {});
  Insert("payments", CKO_SECRET_KEY, "", {0x01});
  std::ostringstream out;
  ASSERT_OK(ListCommand(cfg_, {}, out));
  EXPECT_EQ(out.str(),
            "vault payments (premium): 4 objects\n"
            "  private-key  id 0ab1  label \"tls\"  version " + tls + "\n"
            "  public-key   id 0ab1  label \"tls\"  version " + tls + "\n"
            "  data         id -  label \"db\\x1b[2Jpass\"  version " + db + "\n"
            "  secret-key   id 01  label \"\"\n"
            "vault dev (standard): 0 objects\n");
}

TEST_F(ListCommandTest, JsonCarriesTheSameFields) {
  Insert("dev", CKO_SECRET_KEY, "aes", {0xff});
  std::ostringstream out;
  ASSERT_OK(ListCommand(cfg_, ListOptions{"dev", true}, out));
  nlohmann::json doc = nlohmann::json::parse(out.str());
  ASSERT_EQ(doc["vaults"].size(), 1u);
  ASSERT_EQ(doc["vaults"][0]["objects"].size(), 1u);
  EXPECT_EQ(doc["vaults"][0]["objects"][0]["class"], "secret-key");
  EXPECT_EQ(doc["vaults"][0]["objects"][0]["label"], "aes");
  EXPECT_EQ(doc["vaults"][0]["objects"][0]["id"], "ff");
}

TEST_F(ListCommandTest, JsonSurvivesInvalidUtf8Labels) {
  Insert("dev", CKO_DATA, "bad\xff", {});
  std::ostringstream out;
  ASSERT_OK(ListCommand(cfg_, ListOptions{"dev", true}, out));
  nlohmann::json doc = nlohmann::json::parse(out.str(), nullptr, false);
  EXPECT_FALSE(doc.is_discarded());
}

TEST_F(ListCommandTest, VaultMissingFromTheStoreIsShownAsSuch) {
  config::VaultConfig later;
  later.name = "later";
  cfg_.vaults.push_back(later);
  std::ostringstream out;
  ASSERT_OK(ListCommand(cfg_, ListOptions{"later", false}, out));
  EXPECT_EQ(out.str(), "vault later (standard): not in the store (run `vaultp11 init`)\n");
}

// `audit verify`: intact files (the second continuing the first) pass; a modified record fails
// naming the file and line.
TEST(CliBinaryTest, AuditVerifyChecksTheChainAcrossFiles) {
  TempDir dir;
  const std::string a = dir.file("audit.log"), b = dir.file("audit.1.log");
  std::vector<nlohmann::json> events = {{{"operationName", "KeySign"}}, {{"operationName", "KeyGet"}}};
  ASSERT_TRUE(audit::Append(a, events).ok());
  auto first = audit::VerifyFile(a);
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(audit::Append(b, events, first->last_hash).ok());
  Outcome ok = RunCli(dir, {"audit", "verify", a, b});
  EXPECT_EQ(ok.exit_code, kExitOk) << ok.err;
  EXPECT_THAT(ok.out, HasSubstr("audit.1.log: 2 records, chain intact"));
  Outcome swapped = RunCli(dir, {"audit", "verify", b, a});
  EXPECT_EQ(swapped.exit_code, kExitFailed);
  std::stringstream read;
  read << std::ifstream(a).rdbuf();
  std::string text = read.str();
  text.replace(text.find("KeySign"), 7, "KeyHide");
  WriteFile(a, text);
  Outcome bad = RunCli(dir, {"audit", "verify", a});
  EXPECT_EQ(bad.exit_code, kExitFailed);
  EXPECT_THAT(bad.err, HasSubstr("audit.log:1: record 1 was modified"));
}


// ---- the CLI's own audit events ---------------------------------------------------------------

// The records of the audit file `path` (one JSON object a line), all or those of `operation`.
std::vector<nlohmann::json> RecordsOf(const std::string& path, const std::string& operation = "") {
  std::vector<nlohmann::json> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    EXPECT_TRUE(j.is_object()) << path << ": " << line;
    if (j.is_object() && (operation.empty() || j.value("operationName", "") == operation)) out.push_back(std::move(j));
  }
  return out;
}

// "os:<login name>" of the user running the tests (and so the CLI).
std::string OperatorPrincipal() {
  const passwd* pw = getpwuid(getuid());
  return "os:" + (pw != nullptr ? std::string(pw->pw_name) : std::to_string(getuid()));
}

// An event the built CLI wrote for the operator.
void ExpectOperatorEvent(const nlohmann::json& e, const std::string& operation, bool success) {
  EXPECT_EQ(e.value("operationName", ""), operation) << e.dump();
  EXPECT_EQ(e.value("category", ""), "AuditEvent");
  EXPECT_EQ(e.value("resultType", ""), success ? "Success" : "Failure") << e.dump();
  if (success) {
    EXPECT_EQ(e.value("resultSignature", ""), "OK");
    EXPECT_EQ(e.value("resultDescription", "-"), "");
  } else {
    EXPECT_NE(e.value("resultDescription", ""), "") << e.dump();
  }
  EXPECT_EQ(e["identity"]["principal"], OperatorPrincipal());
  EXPECT_EQ(e["identity"]["authMethod"], "os-user");
  EXPECT_EQ(e["caller"]["uid"], getuid());
  EXPECT_EQ(e.value("host", ""), audit::HostName()) << e.dump();
  EXPECT_NE(e["caller"]["pid"], getpid());  // the child process
  EXPECT_THAT(e["caller"].value("executable", ""), EndsWith("/vaultp11"));
}

// The error line the CLI printed, without "vaultp11: " and the newline.
std::string ErrorMessage(const Outcome& o) {
  std::string m = o.err;
  size_t at = m.rfind("vaultp11: ");
  if (at != std::string::npos) m = m.substr(at + 10);
  while (!m.empty() && m.back() == '\n') m.pop_back();
  return m;
}

TEST(ManagementAuditTest, InitRecordsTheStoreAndEachVaultItCreates) {
  TempDir dir;
  WriteFile(dir.file("vp.yaml"), kConfig);
  Outcome o = RunCli(dir, {"--config", "vp.yaml", "init"});
  ASSERT_EQ(o.exit_code, 0) << o.err;
  EXPECT_THAT(o.err, IsEmpty());
  const std::string log = dir.file("data/audit.log");  // the default sink, beside the store
  std::vector<nlohmann::json> events = RecordsOf(log);
  ASSERT_EQ(events.size(), 3u);
  ExpectOperatorEvent(events[0], "StoreInit", true);
  EXPECT_EQ(events[0]["properties"]["store"], dir.file("data/store.db"));
  EXPECT_EQ(events[0]["properties"]["masterKeyFile"], dir.file("data/store.db.masterkey"));
  EXPECT_EQ(events[0]["properties"]["storeCreated"], true);
  EXPECT_EQ(events[0]["properties"]["masterKeyCreated"], true);
  ExpectOperatorEvent(events[1], "VaultCreate", true);
  EXPECT_EQ(events[1]["properties"]["vault"], "payments");
  EXPECT_EQ(events[1]["properties"]["sku"], "premium");
  ExpectOperatorEvent(events[2], "VaultCreate", true);
  EXPECT_EQ(events[2]["properties"]["vault"], "dev");

  // Nothing new: nothing recorded. A vault added to the config: one event.
  ASSERT_EQ(RunCli(dir, {"--config", "vp.yaml", "init"}).exit_code, 0);
  EXPECT_EQ(RecordsOf(log).size(), 3u);
  WriteFile(dir.file("vp.yaml"), std::string(kConfig) + "  - name: new-one\n");
  ASSERT_EQ(RunCli(dir, {"--config", "vp.yaml", "init"}).exit_code, 0);
  events = RecordsOf(log);
  ASSERT_EQ(events.size(), 4u);
  ExpectOperatorEvent(events[3], "VaultCreate", true);
  EXPECT_EQ(events[3]["properties"]["vault"], "new-one");

  // Read-only commands write nothing.
  RunCli(dir, {"--config", "vp.yaml", "list"});
  RunCli(dir, {"--config", "vp.yaml", "list", "--json"});
  RunCli(dir, {"--config", "vp.yaml", "whoami", "--vault", "dev"});
  RunCli(dir, {"--config", "vp.yaml", "hash-secret", "--cost-log2n", "10"}, "pw");
  RunCli(dir, {"--config", "vp.yaml", "audit", "tail"});
  RunCli(dir, {"--config", "vp.yaml", "audit", "verify"});
  EXPECT_EQ(RecordsOf(log).size(), 4u);

  // One intact chain, its head signed with the store's key.
  ASSERT_OK_AND_ASSIGN(audit::Verdict v, audit::VerifyFile(log));
  EXPECT_TRUE(v.intact) << v.problem;
  EXPECT_EQ(v.records, 4u);
  Outcome verify = RunCli(dir, {"--config", "vp.yaml", "audit", "verify"});
  EXPECT_EQ(verify.exit_code, kExitOk) << verify.err;
  EXPECT_THAT(verify.out, HasSubstr(log + ".head: head intact (record 4"));
}

constexpr const char* kRequiredUnopenable =
    "store:\n"
    "  path: data/store.db\n"
    "audit:\n"
    "  required: true\n"
    "  sinks:\n"
    "    - { type: file, path: nowhere/audit.log }\n"
    "vaults:\n"
    "  - name: dev\n";

TEST(ManagementAuditTest, RequiredSinkThatCannotOpenStopsInitBeforeItChangesAnything) {
  TempDir dir;
  WriteFile(dir.file("vp.yaml"), kRequiredUnopenable);
  Outcome o = RunCli(dir, {"--config", "vp.yaml", "init"});
  EXPECT_EQ(o.exit_code, kExitFailed);
  EXPECT_THAT(o.err, AllOf(StartsWith("vaultp11: audit sink file " + dir.file("nowhere/audit.log")),
                           HasSubstr("; nothing changed\n")));
  EXPECT_FALSE(std::filesystem::exists(dir.file("data")));
  EXPECT_FALSE(std::filesystem::exists(dir.file("nowhere")));

  // With the store there already: the vault is not created either.
  WriteFile(dir.file("ok.yaml"), kConfig);
  ASSERT_EQ(RunCli(dir, {"--config", "ok.yaml", "init"}).exit_code, 0);
  WriteFile(dir.file("vp.yaml"), std::string(kRequiredUnopenable) + "  - name: later\n");
  o = RunCli(dir, {"--config", "vp.yaml", "init"});
  EXPECT_EQ(o.exit_code, kExitFailed);
  EXPECT_THAT(o.err, HasSubstr("; nothing changed\n"));
  {
    ASSERT_OK_AND_ASSIGN(auto st, store::Store::Open(dir.file("data/store.db"), dir.file("data/store.db.masterkey"), false));
    ASSERT_OK_AND_ASSIGN(std::vector<std::string> vaults, st->Vaults());
    EXPECT_THAT(vaults, Not(::testing::Contains("later")));
  }

  // Not required: init goes on, the failing sink named on stderr.
  WriteFile(dir.file("vp.yaml"), "store:\n  path: data/store.db\naudit:\n  sinks:\n"
                                 "    - { type: file, path: nowhere/audit.log }\nvaults:\n  - name: later\n");
  o = RunCli(dir, {"--config", "vp.yaml", "init"});
  EXPECT_EQ(o.exit_code, kExitOk) << o.err;
  EXPECT_THAT(o.err, HasSubstr(dir.file("nowhere/audit.log")));
  EXPECT_THAT(o.out, HasSubstr("created vault later\n"));
}

TEST(ManagementAuditTest, RequiredSinkInTheDirectoryInitCreatesWorks) {
  TempDir dir;
  WriteFile(dir.file("vp.yaml"),
            "store:\n  path: data/store.db\naudit:\n  required: true\n  sinks:\n"
            "    - { type: file, path: data/ops.log }\nvaults:\n  - name: dev\n");
  Outcome o = RunCli(dir, {"--config", "vp.yaml", "init"});
  ASSERT_EQ(o.exit_code, kExitOk) << o.err;
  std::vector<nlohmann::json> events = RecordsOf(dir.file("data/ops.log"));
  ASSERT_EQ(events.size(), 2u);
  ExpectOperatorEvent(events[0], "StoreInit", true);
  ExpectOperatorEvent(events[1], "VaultCreate", true);
  Outcome verify = RunCli(dir, {"--config", "vp.yaml", "audit", "verify"});
  EXPECT_EQ(verify.exit_code, kExitOk) << verify.err;
  EXPECT_THAT(verify.out, HasSubstr("head intact"));
}

// Refused changes are audited too, with the error the operator saw (these fail before any HSM
// is needed; tests/abi/pool_test.cc covers pool init, backup and restore on SoftHSM).
TEST(ManagementAuditTest, FailedChangesAreRecordedWithTheirError) {
  TempDir dir;
  WriteFile(dir.file("vp.yaml"), kConfig);
  ASSERT_EQ(RunCli(dir, {"--config", "vp.yaml", "init"}).exit_code, 0);
  const std::string log = dir.file("data/audit.log");

  Outcome pool = RunCli(dir, {"--config", "vp.yaml", "pool", "init", "nope"});
  EXPECT_EQ(pool.exit_code, kExitFailed);
  std::vector<nlohmann::json> events = RecordsOf(log, "SecurityDomainInit");
  ASSERT_EQ(events.size(), 1u);
  ExpectOperatorEvent(events[0], "SecurityDomainInit", false);
  EXPECT_EQ(events[0]["resultSignature"], "BadRequest");
  EXPECT_EQ(events[0]["resultDescription"], ErrorMessage(pool));
  EXPECT_EQ(events[0]["properties"]["vault"], "nope");

  Outcome backup = RunCli(dir, {"--config", "vp.yaml", "backup", "dev", "k1", "k1.backup"});
  EXPECT_EQ(backup.exit_code, kExitFailed);
  EXPECT_FALSE(std::filesystem::exists(dir.file("k1.backup")));
  events = RecordsOf(log, "KeyBackup");
  ASSERT_EQ(events.size(), 1u);
  ExpectOperatorEvent(events[0], "KeyBackup", false);
  EXPECT_EQ(events[0]["resultDescription"], ErrorMessage(backup));
  EXPECT_THAT(events[0]["resultDescription"].get<std::string>(), HasSubstr("has no item named"));
  EXPECT_EQ(events[0]["properties"]["vault"], "dev");
  EXPECT_EQ(events[0]["properties"]["name"], "k1");
  EXPECT_EQ(events[0]["properties"]["file"], dir.file("k1.backup"));

  Outcome restore = RunCli(dir, {"--config", "vp.yaml", "restore", "nope", "k1.backup"});
  EXPECT_EQ(restore.exit_code, kExitFailed);
  events = RecordsOf(log, "KeyRestore");
  ASSERT_EQ(events.size(), 1u);
  ExpectOperatorEvent(events[0], "KeyRestore", false);
  EXPECT_EQ(events[0]["resultDescription"], ErrorMessage(restore));
  EXPECT_EQ(events[0]["properties"]["file"], dir.file("k1.backup"));
  EXPECT_FALSE(events[0]["properties"].contains("name"));  // never read from an unchecked file

  ASSERT_OK_AND_ASSIGN(audit::Verdict v, audit::VerifyFile(log));
  EXPECT_TRUE(v.intact) << v.problem;
  EXPECT_EQ(RunCli(dir, {"--config", "vp.yaml", "audit", "verify"}).exit_code, kExitOk);
}

// ---- audit verify / purge / tail over file sinks ----------------------------------------------

constexpr const char* kAuditConfig =
    "store:\n"
    "  path: data/store.db\n"
    "audit:\n"
    "  sinks:\n"
    "    - { type: file, path: logs/audit.log, max_bytes: 4096 }\n"
    "    - { type: syslog }\n"
    "vaults:\n"
    "  - name: dev\n";

nlohmann::json AuditEvent(int n, std::string principal = "app", std::string op = "KeySign",
                          std::string result = "OK") {
  nlohmann::json e = {{"time", fmt::format("2026-11-29T21:30:{:02}.000250Z", n % 60)},
                      {"operationName", op},
                      {"category", "AuditEvent"},
                      {"resultType", result == "OK" ? "Success" : "Failure"},
                      {"resultSignature", result},
                      {"durationMs", 1.5},
                      {"identity", {{"principal", principal}, {"authMethod", "client_secret"}}},
                      {"properties", {{"vault", "dev"}, {"name", fmt::format("key-{}", n)}, {"mechanism", "CKM_ECDSA"}}}};
  if (result != "OK") e["resultDescription"] = "the principal may not sign";
  return e;
}

std::vector<nlohmann::json> AuditEvents(int from, int count) {
  std::vector<nlohmann::json> out;
  for (int i = from; i < from + count; ++i) out.push_back(AuditEvent(i));
  return out;
}

class AuditCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WriteFile(dir.file("vp.yaml"), kAuditConfig);
    ASSERT_EQ(RunCli(dir, {"--config", "vp.yaml", "init"}).exit_code, 0);
    std::filesystem::create_directory(dir.file("logs"));
  }
  audit::FileSinkOptions Options() {
    audit::FileSinkOptions o;
    o.path = log;
    o.max_bytes = 4096;
    auto key = store::DeriveKeyFromMasterKeyFile(dir.file("data/store.db.masterkey"), "audit-head");
    EXPECT_TRUE(key.ok());
    if (key.ok()) o.head_key = key.value();
    // As the module's and the CLI's writers do (core::StoreAnchor): the chain's end goes to the
    // store's audit anchor, which `audit verify` requires.
    auto opened = std::make_shared<std::unique_ptr<store::Store>>();
    o.anchor = [this, opened](const audit::ChainEnd& end) -> Status {
      if (!*opened) {
        VAULTP11_ASSIGN_OR_RETURN(*opened, store::Store::Open(dir.file("data/store.db"),
                                                              dir.file("data/store.db.masterkey"), false));
      }
      return (*opened)->AdvanceAuditAnchor(log, {end.gen_time, end.gen_n, static_cast<int64_t>(end.seq), end.hash});
    };
    return o;
  }
  TempDir dir;
  std::string log = dir.file("logs/audit.log");
};

TEST_F(AuditCliTest, VerifyWithoutFilesChecksEveryFileOfTheFileSinksAndTheHead) {
  Outcome empty = RunCli(dir, {"--config", "vp.yaml", "audit", "verify"});
  EXPECT_EQ(empty.exit_code, kExitOk) << empty.err;
  EXPECT_EQ(empty.out, log + ": no audit records yet\n");
  {
    audit::FileSink sink(Options());
    for (int i = 0; i < 40; i += 4) ASSERT_OK(sink.Write(AuditEvents(i, 4)));
  }
  ASSERT_OK_AND_ASSIGN(std::vector<std::string> files, audit::ChainFiles(log));
  ASSERT_GE(files.size(), 3u);
  Outcome ok = RunCli(dir, {"--config", "vp.yaml", "audit", "verify"});
  EXPECT_EQ(ok.exit_code, kExitOk) << ok.err;
  for (const std::string& f : files) EXPECT_THAT(ok.out, ContainsRegex(f + ": [0-9]+ records, chain intact\n"));
  EXPECT_THAT(ok.out, HasSubstr(log + ".head: head intact (record "));
  EXPECT_THAT(ok.err, IsEmpty());

  // Naming the files: the head of the last one is checked with a config, not without.
  std::vector<std::string> args = {"--config", "vp.yaml", "audit", "verify"};
  args.insert(args.end(), files.begin() + 1, files.end());
  Outcome named = RunCli(dir, args);
  EXPECT_EQ(named.exit_code, kExitOk) << named.err;
  EXPECT_THAT(named.out, AllOf(HasSubstr("note: " + files[1] + " continues an earlier file"),
                               HasSubstr(log + ".head: head intact")));
  std::vector<std::string> all = {"audit", "verify"};
  all.insert(all.end(), files.begin(), files.end());
  Outcome no_config = RunCli(dir, all);
  EXPECT_EQ(no_config.exit_code, kExitOk) << no_config.err;
  EXPECT_THAT(no_config.out, HasSubstr(log + ".head: head not checked (no usable config"));

  // Records cut from the end of the current file: only the head shows it.
  std::string text = ReadAll(log);
  text.erase(text.rfind('\n', text.size() - 2) + 1);
  WriteFile(log, text);
  Outcome cut = RunCli(dir, {"--config", "vp.yaml", "audit", "verify"});
  EXPECT_EQ(cut.exit_code, kExitFailed);
  EXPECT_THAT(cut.err, HasSubstr("records were deleted from the end of " + log));
  EXPECT_EQ(RunCli(dir, all).exit_code, kExitOk);  // the chain alone cannot tell

  // A rotated file removed from the middle.
  ASSERT_EQ(unlink(files[1].c_str()), 0);
  Outcome gap = RunCli(dir, {"--config", "vp.yaml", "audit", "verify"});
  EXPECT_EQ(gap.exit_code, kExitFailed);
  EXPECT_THAT(gap.err, HasSubstr(files[2] + ":1: the first record does not continue from the previous file"));
}

TEST_F(AuditCliTest, VerifyWithoutFilesNeedsAFileSink) {
  WriteFile(dir.file("none.yaml"), "store:\n  path: data/store.db\naudit:\n  sinks: []\nvaults:\n  - name: dev\n");
  Outcome o = RunCli(dir, {"--config", "none.yaml", "audit", "verify"});
  EXPECT_EQ(o.exit_code, kExitFailed);
  EXPECT_THAT(o.err, HasSubstr("has no file sink"));
}

TEST_F(AuditCliTest, PurgeDeletesRotatedFilesBeforeTheDate) {
  auto now = std::chrono::system_clock::time_point(*audit::ParseDate("2026-11-01"));
  audit::FileSinkOptions o = Options();
  o.now = [&] { return now; };
  {
    audit::FileSink sink(o);
    for (int day = 1; day <= 4; ++day) {
      now = std::chrono::system_clock::time_point(*audit::ParseDate("2026-11-01") + std::chrono::days(day));
      nlohmann::json e = AuditEvent(day);
      e["time"] = audit::FormatTime(now);
      ASSERT_OK(sink.Write(std::vector<nlohmann::json>{e}));
    }
  }
  // Rotated on Nov 3, 4 and 5 (the current file has Nov 5's record).
  Outcome o1 = RunCli(dir, {"--config", "vp.yaml", "audit", "purge", "--before", "2026-11-05"});
  EXPECT_EQ(o1.exit_code, kExitOk) << o1.err;
  const std::string nov3 = dir.file("logs/audit-20261103T000000Z.log"), nov4 = dir.file("logs/audit-20261104T000000Z.log");
  EXPECT_EQ(o1.out, "deleted " + nov3 + "\ndeleted " + nov4 + "\n");
  // The purge is audited after it, in the current file, under the operator.
  std::vector<nlohmann::json> purges = RecordsOf(log, "AuditPurge");
  ASSERT_EQ(purges.size(), 1u);
  ExpectOperatorEvent(purges[0], "AuditPurge", true);
  EXPECT_EQ(purges[0]["properties"]["deleted"], nlohmann::json::array({nov3, nov4}));
  EXPECT_EQ(purges[0]["properties"]["before"], "2026-11-05");
  Outcome again = RunCli(dir, {"--config", "vp.yaml", "audit", "purge", "--before", "2026-11-05", "--sink", "logs/audit.log"});
  EXPECT_EQ(again.exit_code, kExitOk) << again.err;
  EXPECT_EQ(again.out, log + ": no rotated files before 2026-11-05\n");
  purges = RecordsOf(log, "AuditPurge");
  ASSERT_EQ(purges.size(), 2u);
  EXPECT_EQ(purges[1]["properties"]["deleted"], nlohmann::json::array());
  EXPECT_EQ(purges[1]["properties"]["sink"], log);
  // Left: the Nov 5 file and the current one (and, when today is a later day than the current
  // file's first record, the file the purge's own record rotated away).
  ASSERT_OK_AND_ASSIGN(std::vector<std::string> files, audit::ChainFiles(log));
  EXPECT_THAT(files, ::testing::Contains(dir.file("logs/audit-20261105T000000Z.log")));
  EXPECT_THAT(files, ::testing::Not(::testing::Contains(nov3)));
  EXPECT_EQ(files.back(), log);
  const size_t kept = files.size();
  EXPECT_EQ(RunCli(dir, {"--config", "vp.yaml", "audit", "verify"}).exit_code, kExitOk);

  Outcome bad_date = RunCli(dir, {"--config", "vp.yaml", "audit", "purge", "--before", "2026-13-01"});
  EXPECT_EQ(bad_date.exit_code, kExitUsage);
  EXPECT_THAT(bad_date.err, HasSubstr("--before"));
  EXPECT_EQ(RunCli(dir, {"--config", "vp.yaml", "audit", "purge"}).exit_code, kExitUsage);
  Outcome bad_sink = RunCli(dir, {"--config", "vp.yaml", "audit", "purge", "--before", "2026-11-05", "--sink", "x.log"});
  EXPECT_EQ(bad_sink.exit_code, kExitFailed);
  EXPECT_THAT(bad_sink.err, HasSubstr("is not a file sink"));
  ASSERT_OK_AND_ASSIGN(files, audit::ChainFiles(log));
  EXPECT_EQ(files.size(), kept);
  // The refused purge is audited as a failure; usage errors never reached the command.
  purges = RecordsOf(log, "AuditPurge");
  ASSERT_EQ(purges.size(), 3u);
  ExpectOperatorEvent(purges[2], "AuditPurge", false);
  EXPECT_THAT(purges[2]["resultDescription"].get<std::string>(), HasSubstr("is not a file sink"));
  EXPECT_EQ(purges[2]["properties"]["deleted"], nlohmann::json::array());
  EXPECT_EQ(RunCli(dir, {"--config", "vp.yaml", "audit", "verify"}).exit_code, kExitOk);
}

// ---- audit rollback: the store's anchor (issue 16, item 7) -----------------------------------
// A chain and its signed head copied aside and put back later are intact in themselves; the
// anchor each writer records in the store (store.h AuditAnchor, audit/file_sink.h ChainEnd)
// shows they are old. Each `audit purge` writes its AuditPurge event (and AuditSinkFailed for
// the syslog sink, which has no daemon here) through the CLI's own recorder, which anchors
// when it closes.

void CopyOver(const std::string& from, const std::string& to) {
  std::filesystem::copy_file(from, to, std::filesystem::copy_options::overwrite_existing);
}

// kAuditConfig without size rotation: everything stays in the current file.
void OneFileConfig(const TempDir& dir) {
  std::string cfg = kAuditConfig;
  cfg.replace(cfg.find("max_bytes: 4096"), std::strlen("max_bytes: 4096"), "max_bytes: 0");
  WriteFile(dir.file("vp.yaml"), cfg);
}

TEST_F(AuditCliTest, VerifyReportsALogPutBackFromAnOlderCopy) {
  OneFileConfig(dir);
  for (int i = 0; i < 2; ++i)
    ASSERT_EQ(RunCli(dir, {"--config", "vp.yaml", "audit", "purge", "--before", "2026-01-01"}).exit_code, kExitOk);
  const size_t old_records = RecordsOf(log).size();
  Outcome ok = RunCli(dir, {"--config", "vp.yaml", "audit", "verify"});
  ASSERT_EQ(ok.exit_code, kExitOk) << ok.err;
  EXPECT_THAT(ok.out, HasSubstr(fmt::format("{}: anchor reached (the store's anchor is at record {})", log, old_records)));
  CopyOver(log, dir.file("old.log"));
  CopyOver(audit::HeadPath(log), dir.file("old.log.head"));
  for (int i = 0; i < 2; ++i)
    ASSERT_EQ(RunCli(dir, {"--config", "vp.yaml", "audit", "purge", "--before", "2026-01-01"}).exit_code, kExitOk);
  const size_t new_records = RecordsOf(log).size();
  ASSERT_GT(new_records, old_records);
  // The older copy put back, head and all: the chain and the head alone still look intact ...
  CopyOver(dir.file("old.log"), log);
  CopyOver(dir.file("old.log.head"), audit::HeadPath(log));
  auto key = store::DeriveKeyFromMasterKeyFile(dir.file("data/store.db.masterkey"), "audit-head");
  ASSERT_OK(key.status());
  ASSERT_OK_AND_ASSIGN(audit::ChainVerdict alone, audit::VerifySink(log, &key.value()));
  EXPECT_TRUE(alone.intact) << alone.problem;
  EXPECT_TRUE(alone.head_checked);
  // ... but the anchor says the log had gone further.
  Outcome rolled = RunCli(dir, {"--config", "vp.yaml", "audit", "verify"});
  EXPECT_EQ(rolled.exit_code, kExitFailed) << rolled.out;
  EXPECT_THAT(rolled.err, HasSubstr(fmt::format("rollback: the log ends at record {} of the current file", old_records)));
  EXPECT_THAT(rolled.err, HasSubstr(fmt::format("reached record {} of the current file", new_records)));
}

TEST_F(AuditCliTest, VerifyReportsARollbackAcrossRotationsWithTheNewerFilesDeleted) {
  // max_bytes 4096: a few purge events rotate the file. The copy put back is from before any
  // rotation; the rotated files it would not continue are deleted as well, so the chain
  // itself is whole again.
  ASSERT_EQ(RunCli(dir, {"--config", "vp.yaml", "audit", "purge", "--before", "2026-01-01"}).exit_code, kExitOk);
  const size_t old_records = RecordsOf(log).size();
  CopyOver(log, dir.file("old.log"));
  CopyOver(audit::HeadPath(log), dir.file("old.log.head"));
  for (int i = 0; i < 30; ++i) {
    ASSERT_EQ(RunCli(dir, {"--config", "vp.yaml", "audit", "purge", "--before", "2026-01-01"}).exit_code, kExitOk);
    ASSERT_OK_AND_ASSIGN(std::vector<std::string> files, audit::ChainFiles(log));
    if (files.size() >= 3) break;
  }
  ASSERT_OK_AND_ASSIGN(std::vector<audit::RotatedFile> rotated, audit::RotatedFiles(log));
  ASSERT_GE(rotated.size(), 2u);
  for (const audit::RotatedFile& r : rotated) std::filesystem::remove(r.path);
  CopyOver(dir.file("old.log"), log);
  CopyOver(dir.file("old.log.head"), audit::HeadPath(log));
  Outcome rolled = RunCli(dir, {"--config", "vp.yaml", "audit", "verify"});
  EXPECT_EQ(rolled.exit_code, kExitFailed) << rolled.out;
  EXPECT_THAT(rolled.out, HasSubstr(fmt::format("{}: {} records, chain intact", log, old_records)));
  EXPECT_THAT(rolled.err, HasSubstr(fmt::format("rollback: the log ends at record {} of the current file (no rotation "
                                                "before it)",
                                                old_records)));
  EXPECT_THAT(rolled.err, HasSubstr("continuing " + std::filesystem::path(rotated.back().path).filename().string()));
}

TEST_F(AuditCliTest, VerifyDetectsAnEditedAnchorRow) {
  OneFileConfig(dir);
  for (int i = 0; i < 3; ++i)
    ASSERT_EQ(RunCli(dir, {"--config", "vp.yaml", "audit", "purge", "--before", "2026-01-01"}).exit_code, kExitOk);
  CopyOver(log, dir.file("old.log"));
  CopyOver(audit::HeadPath(log), dir.file("old.log.head"));
  ASSERT_EQ(RunCli(dir, {"--config", "vp.yaml", "audit", "purge", "--before", "2026-01-01"}).exit_code, kExitOk);
  CopyOver(dir.file("old.log"), log);
  CopyOver(dir.file("old.log.head"), audit::HeadPath(log));
  // Whoever put the old copy back moves the anchor back to match it: the row's MAC (under a
  // key derived from the master key, which the row does not hold) no longer matches.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(dir.file("data/store.db").c_str(), &db), SQLITE_OK);
  char* error = nullptr;
  int rc = sqlite3_exec(db,
                        "UPDATE audit_anchors SET seq = seq - 1",
                        nullptr, nullptr, &error);
  EXPECT_EQ(rc, SQLITE_OK) << (error ? error : "");
  sqlite3_free(error);
  EXPECT_EQ(sqlite3_changes(db), 1);
  sqlite3_close(db);
  Outcome edited = RunCli(dir, {"--config", "vp.yaml", "audit", "verify"});
  EXPECT_EQ(edited.exit_code, kExitFailed) << edited.out;
  EXPECT_THAT(edited.err, HasSubstr("the audit anchor of " + log));
  EXPECT_THAT(edited.err, HasSubstr("does not match its MAC"));
  // Verifying never rewrites the row: the answer stays.
  EXPECT_EQ(RunCli(dir, {"--config", "vp.yaml", "audit", "verify"}).exit_code, kExitFailed);
  // Nor does deleting the row help: a log with records and no anchor is not taken as whole.
  ASSERT_EQ(sqlite3_open(dir.file("data/store.db").c_str(), &db), SQLITE_OK);
  EXPECT_EQ(sqlite3_exec(db, "DELETE FROM audit_anchors", nullptr, nullptr, nullptr), SQLITE_OK);
  EXPECT_EQ(sqlite3_changes(db), 1);
  sqlite3_close(db);
  Outcome deleted = RunCli(dir, {"--config", "vp.yaml", "audit", "verify"});
  EXPECT_EQ(deleted.exit_code, kExitFailed) << deleted.out;
  EXPECT_THAT(deleted.err, HasSubstr(log + ": the store holds no audit anchor for this log"));
}

TEST_F(AuditCliTest, TailPrintsTheLastRecordsReadably) {
  {
    audit::FileSinkOptions o = Options();
    o.max_bytes = 0;
    audit::FileSink sink(o);
    ASSERT_OK(sink.Write(std::vector<nlohmann::json>{AuditEvent(1), AuditEvent(2, "bob", "KeyGet", "Forbidden"),
                                                     AuditEvent(3), AuditEvent(4, "bob"), AuditEvent(5)}));
  }
  Outcome all = RunCli(dir, {"--config", "vp.yaml", "audit", "tail"});
  ASSERT_EQ(all.exit_code, kExitOk) << all.err;
  EXPECT_THAT(all.out, StartsWith("2026-11-29T21:30:01.000250Z OK KeySign principal=app vault=dev name=key-1 "
                                  "mechanism=CKM_ECDSA 1.5ms\n"
                                  "2026-11-29T21:30:02.000250Z Forbidden KeyGet principal=bob vault=dev name=key-2 "
                                  "mechanism=CKM_ECDSA 1.5ms description=\"the principal may not sign\"\n"));
  EXPECT_EQ(std::count(all.out.begin(), all.out.end(), '\n'), 5);
  Outcome last2 = RunCli(dir, {"audit", "tail", log, "-n", "2"});
  ASSERT_EQ(last2.exit_code, kExitOk) << last2.err;
  EXPECT_THAT(last2.out, AllOf(StartsWith("2026-11-29T21:30:04.000250Z OK KeySign principal=bob"), HasSubstr("name=key-5")));
  EXPECT_EQ(std::count(last2.out.begin(), last2.out.end(), '\n'), 2);
  Outcome bob = RunCli(dir, {"audit", "tail", log, "--filter", "principal=bob,operation=KeySign"});
  ASSERT_EQ(bob.exit_code, kExitOk) << bob.err;
  EXPECT_THAT(bob.out, AllOf(HasSubstr("name=key-4"), Not(HasSubstr("name=key-2")), Not(HasSubstr("principal=app"))));
  Outcome denied = RunCli(dir, {"audit", "tail", log, "--filter", "result=Forbidden", "--filter", "vault=dev"});
  EXPECT_EQ(std::count(denied.out.begin(), denied.out.end(), '\n'), 1);
  EXPECT_EQ(RunCli(dir, {"audit", "tail", log, "--filter", "colour=red"}).exit_code, kExitUsage);
}

// Records carry the host they were written on (older ones do not): tail shows it and filters on
// it, and a file holding both kinds is one intact chain.
TEST_F(AuditCliTest, TailShowsAndFiltersTheHostAndOldRecordsStillVerify) {
  {
    audit::FileSinkOptions o = Options();
    o.max_bytes = 0;
    audit::FileSink sink(o);
    std::vector<nlohmann::json> events = {AuditEvent(1), AuditEvent(2), AuditEvent(3), AuditEvent(4)};
    events[2]["host"] = "web-1";  // "host" follows "time", as the module writes it
    events[3]["host"] = "db-2";
    ASSERT_OK(sink.Write(events));
  }
  Outcome all = RunCli(dir, {"--config", "vp.yaml", "audit", "tail"});
  ASSERT_EQ(all.exit_code, kExitOk) << all.err;
  EXPECT_THAT(all.out, HasSubstr("2026-11-29T21:30:01.000250Z OK KeySign principal=app vault=dev name=key-1 "));
  EXPECT_THAT(all.out, HasSubstr("2026-11-29T21:30:03.000250Z OK KeySign host=web-1 principal=app vault=dev name=key-3 "));
  EXPECT_THAT(all.out, HasSubstr(" host=db-2 principal=app vault=dev name=key-4 "));
  Outcome web = RunCli(dir, {"audit", "tail", log, "--filter", "host=web-1"});
  ASSERT_EQ(web.exit_code, kExitOk) << web.err;
  EXPECT_EQ(std::count(web.out.begin(), web.out.end(), '\n'), 1) << web.out;
  EXPECT_THAT(web.out, HasSubstr("name=key-3"));
  Outcome verify = RunCli(dir, {"--config", "vp.yaml", "audit", "verify"});
  EXPECT_EQ(verify.exit_code, kExitOk) << verify.out << verify.err;
}

TEST(AuditTailTest, ValuesThatCouldDriveATerminalAreEscaped) {
  nlohmann::json e = AuditEvent(1);
  e["properties"]["name"] = "evil\x1b[2Jname";
  EXPECT_THAT(FormatAuditEvent(e), HasSubstr("name=\"evil\\x1b[2Jname\""));
  EXPECT_EQ(FormatAuditEvent(nlohmann::json::object()), "- - -");
}

// --follow, driven from its keep_going callback: each call appends records (or rotates the file)
// and checks what the previous wake-up printed; no sleeps.
TEST_F(AuditCliTest, TailFollowsAcrossARotation) {
  audit::FileSinkOptions o = Options();
  // Only the size rotation below: the records' fixed day would otherwise rotate the file at its
  // first write on any later real day.
  o.daily = false;
  audit::FileSink sink(o);
  ASSERT_OK(sink.Write(AuditEvents(0, 3)));
  std::istringstream in;
  std::ostringstream out, err;
  Io io{in, out, err};
  auto count = [&](const std::string& needle) {
    const std::string s = out.str();
    size_t n = 0;
    for (size_t at = s.find(needle); at != std::string::npos; at = s.find(needle, at + 1)) ++n;
    return n;
  };
  int step = 0;
  auto keep_going = [&]() -> bool {
    switch (step++) {
      case 0:  // the last 2 of the first 3
        EXPECT_EQ(count("\n"), 2u) << out.str();
        EXPECT_THAT(out.str(), AllOf(Not(HasSubstr("name=key-0 ")), HasSubstr("name=key-2 ")));
        EXPECT_OK(sink.Write(AuditEvents(3, 2)));
        return true;
      case 1: {
        EXPECT_THAT(out.str(), HasSubstr("name=key-4 "));
        EXPECT_EQ(count("\n"), 4u);
        // Past max_bytes: the file is rotated and the batch goes to the new one.
        EXPECT_OK(sink.Write(AuditEvents(5, 8)));
        auto rotated = audit::RotatedFiles(log);
        EXPECT_TRUE(rotated.ok() && rotated->size() == 1u);
        return true;
      }
      case 2:
        EXPECT_THAT(out.str(), HasSubstr("name=key-12 "));
        EXPECT_EQ(count("\n"), 12u);
        EXPECT_OK(sink.Write(AuditEvents(13, 1)));
        return true;
      case 3:
        EXPECT_THAT(out.str(), HasSubstr("name=key-13 "));
        return false;
      default:  // never asked again after false
        ADD_FAILURE() << "asked to keep going after it said stop";
        return false;
    }
  };
  AuditTailOptions opts;
  opts.file = log;
  opts.lines = 2;
  opts.follow = true;
  // Each wake-up prints what was appended before it; step 3 sees record 13 and stops.
  ASSERT_OK(AuditTailCommand(nullptr, opts, io, keep_going));
  EXPECT_EQ(step, 4);
  EXPECT_EQ(count("\n"), 13u);
  EXPECT_EQ(count("name=key-5 "), 1u);  // nothing printed twice across the rotation
}

}  // namespace
}  // namespace vaultp11::cli
// ---- secrets ---------------------------------------------------------------------------------

namespace vaultp11::cli {
namespace {

class SecretCliTest : public ::testing::Test {
 protected:
  void SetUp() override { Deploy("  - name: dev\n"); }
  // vp.yaml with a store, a file audit sink and these vaults (YAML list items), initialised.
  void Deploy(const std::string& vaults) {
    WriteFile(dir.file("vp.yaml"),
              "store:\n  path: data/store.db\n"
              "audit:\n  sinks:\n    - { type: file, path: audit.log }\n"
              "vaults:\n" + vaults);
    Outcome o = RunCli(dir, {"--config", "vp.yaml", "init"});
    ASSERT_EQ(o.exit_code, kExitOk) << o.err;
  }
  Outcome Cli(std::vector<std::string> args, const std::string& input = "") {
    args.insert(args.begin(), {"--config", "vp.yaml"});
    return RunCli(dir, args, input);
  }
  // The version `secret set` printed.
  static std::string PrintedVersion(const Outcome& o) {
    auto at = o.out.rfind("version ");
    return at == std::string::npos ? "" : o.out.substr(at + 8, 32);
  }
  TempDir dir;
};

TEST_F(SecretCliTest, SetGetListDeleteByteForByteWithVersions) {
  const std::string v1("first\0value\n", 12), v2 = "second value, no newline";
  Outcome s1 = Cli({"secret", "set", "dev", "db-password", "--content-type", "text/plain", "--tag", "env=prod"}, v1);
  ASSERT_EQ(s1.exit_code, kExitOk) << s1.err;
  Outcome s2 = Cli({"secret", "set", "dev", "db-password", "--expires", "2031-02-03"}, v2);
  ASSERT_EQ(s2.exit_code, kExitOk) << s2.err;
  const std::string ver1 = PrintedVersion(s1), ver2 = PrintedVersion(s2);
  ASSERT_EQ(ver1.size(), 32u);
  ASSERT_EQ(ver2.size(), 32u);
  EXPECT_NE(ver1, ver2);

  Outcome get = Cli({"secret", "get", "dev", "db-password"});
  EXPECT_EQ(get.exit_code, kExitOk) << get.err;
  EXPECT_EQ(get.out, v2);
  Outcome old = Cli({"secret", "get", "dev", "db-password", "--version", ver1});
  EXPECT_EQ(old.exit_code, kExitOk) << old.err;
  EXPECT_EQ(old.out, v1);
  Outcome to_file = Cli({"secret", "get", "dev", "db-password", "--out", "value.bin"});
  EXPECT_EQ(to_file.exit_code, kExitOk) << to_file.err;
  EXPECT_EQ(ReadAll(dir.file("value.bin")), v2);
  EXPECT_EQ(ModeOf(dir.file("value.bin")), 0600u);
  EXPECT_EQ(Cli({"secret", "get", "dev", "db-password", "--out", "value.bin"}).exit_code, kExitFailed)
      << "an existing file must not be overwritten";

  Outcome list = Cli({"secret", "list", "dev", "--json"});
  ASSERT_EQ(list.exit_code, kExitOk) << list.err;
  nlohmann::json all = nlohmann::json::parse(list.out);
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0]["name"], "db-password");
  EXPECT_EQ(all[0]["version"], ver2);
  EXPECT_EQ(all[0]["versions"], 2);
  EXPECT_EQ(all[0]["expires"], "2031-02-03T23:59:59Z");
  Outcome versions = Cli({"secret", "list", "dev", "db-password", "--json"});
  nlohmann::json vs = nlohmann::json::parse(versions.out);
  ASSERT_EQ(vs.size(), 2u);
  EXPECT_EQ(vs[0]["version"], ver1);
  EXPECT_EQ(vs[0]["contentType"], "text/plain");
  EXPECT_EQ(vs[0]["tags"]["env"], "prod");
  EXPECT_EQ(vs[0]["current"], false);
  EXPECT_EQ(vs[1]["current"], true);
  Outcome text = Cli({"secret", "list", "dev"});
  EXPECT_THAT(text.out, HasSubstr("\"db-password\"  version " + ver2 + "  (2 versions)"));
  EXPECT_THAT(text.out + list.out + versions.out, Not(HasSubstr("second value")));

  Outcome del = Cli({"secret", "delete", "dev", "db-password"});
  EXPECT_EQ(del.exit_code, kExitOk) << del.err;
  EXPECT_THAT(del.out, HasSubstr("(2 versions)"));
  EXPECT_EQ(Cli({"secret", "get", "dev", "db-password"}).exit_code, kExitFailed);

  // Audited with their versions; no value in the log.
  auto sets = RecordsOf(dir.file("audit.log"), "SecretSet");
  ASSERT_EQ(sets.size(), 2u);
  ExpectOperatorEvent(sets[0], "SecretSet", true);
  EXPECT_EQ(sets[0]["properties"]["version"], ver1);
  EXPECT_EQ(sets[0]["properties"]["name"], "db-password");
  EXPECT_EQ(sets[0]["properties"]["vault"], "dev");
  auto gets = RecordsOf(dir.file("audit.log"), "SecretGet");
  ASSERT_EQ(gets.size(), 5u);  // the value three times, a refused --out, one after the delete
  EXPECT_EQ(gets[1]["properties"]["version"], ver1);
  ExpectOperatorEvent(gets[3], "SecretGet", false);
  ExpectOperatorEvent(gets[4], "SecretGet", false);
  auto dels = RecordsOf(dir.file("audit.log"), "SecretDelete");
  ASSERT_EQ(dels.size(), 1u);
  EXPECT_EQ(dels[0]["properties"]["versions"], 2);
  const std::string log = ReadAll(dir.file("audit.log"));
  EXPECT_THAT(log, Not(HasSubstr("second value")));
  EXPECT_THAT(log, Not(HasSubstr("first")));
}

TEST_F(SecretCliTest, BadInputIsRefusedWithNothingStored) {
  const std::string max(VAULTP11_MAX_SECRET_BYTES, 'm');
  EXPECT_EQ(Cli({"secret", "set", "dev", "largest"}, max).exit_code, kExitOk);
  WriteFile(dir.file("largest.bin"), max);
  EXPECT_EQ(Cli({"secret", "set", "dev", "largest-file", "--file", "largest.bin"}).exit_code, kExitOk);
  WriteFile(dir.file("big.bin"), max + "x");
  struct Case {
    std::vector<std::string> args;
    std::string input, message;
  };
  const std::vector<Case> cases = {
      {{"secret", "set", "dev", "too-big"}, max + "x", "over 25000 bytes"},
      {{"secret", "set", "dev", "empty"}, "", "the value is empty"},
      {{"secret", "set", "dev", "bad_name"}, "v", "invalid name"},
      {{"secret", "set", "nowhere", "n"}, "v", "no vault named \"nowhere\""},
      {{"secret", "set", "dev", "n", "--content-type", "text/\x01"}, "v", "CKA_VAULTP11_CONTENT_TYPE"},
      {{"secret", "set", "dev", "n", "--expires", "2026-02-30"}, "v", "not a calendar day"},
      {{"secret", "set", "dev", "n", "--expires", "tomorrow"}, "v", "not a UTC time"},
      {{"secret", "set", "dev", "n", "--not-before", "2030-01-01", "--expires", "2029-01-01"}, "v", ""},
      {{"secret", "set", "dev", "n", "--tag", "novalue"}, "v", "NAME=VALUE"},
      {{"secret", "set", "dev", "n", "--file", "missing.bin"}, "", "cannot read missing.bin"},
      {{"secret", "set", "dev", "big-file", "--file", "big.bin"}, "", "over 25000 bytes"},
      {{"secret", "get", "dev", "largest", "--version", "0123"}, "", "has no version"},
  };
  for (const Case& c : cases) {
    Outcome o = Cli(c.args, c.input);
    EXPECT_EQ(o.exit_code, kExitFailed) << c.args[3] << ": " << o.err;
    EXPECT_THAT(o.err, HasSubstr(c.message)) << c.args[3];
    EXPECT_THAT(o.err, Not(HasSubstr("mmmm")));
  }
  Outcome list = Cli({"secret", "list", "dev", "--json"});
  nlohmann::json all = nlohmann::json::parse(list.out);
  ASSERT_EQ(all.size(), 2u) << list.out;
  EXPECT_EQ(all[0]["name"], "largest");
  EXPECT_EQ(all[1]["name"], "largest-file");
  EXPECT_EQ(Cli({"secret", "get", "dev", "largest-file"}).out, max);
  // A secret's value never comes from argv: a stray argument is refused and not echoed.
  Outcome argv = Cli({"secret", "set", "dev", "n", "hunter2-on-argv"}, "v");
  EXPECT_EQ(argv.exit_code, kExitUsage);
  EXPECT_THAT(argv.err, Not(HasSubstr("hunter2")));
}

TEST_F(SecretCliTest, ANameUsedByAKeyIsNotASecret) {
  {
    auto cfg = config::LoadFile(dir.file("vp.yaml"));
    ASSERT_OK(cfg.status());
    ASSERT_OK_AND_ASSIGN(auto st, store::Store::Open(dir.file("data/store.db"), dir.file("data/store.db.masterkey"), false));
    store::ObjectRecord r;
    r.vault = "dev";
    r.object_class = CKO_SECRET_KEY;
    r.label = "aes-key";
    r.ck_id = {1};
    ASSERT_OK(st->Insert(r, SecureBytes{}).status());
  }
  Outcome set = Cli({"secret", "set", "dev", "aes-key"}, "v");
  EXPECT_EQ(set.exit_code, kExitFailed);
  EXPECT_THAT(set.err, HasSubstr("an item named 'aes-key' exists"));
  for (const char* cmd : {"get", "delete"}) {
    Outcome o = Cli({"secret", cmd, "dev", "aes-key"});
    EXPECT_EQ(o.exit_code, kExitFailed) << cmd;
    EXPECT_THAT(o.err, HasSubstr("is a key or certificate, not a secret")) << cmd;
  }
}

class DeletedCliTest : public SecretCliTest {
 protected:
  void SetUp() override {
    Deploy("  - { name: dev, soft_delete: { retention_days: 7 } }\n"
           "  - { name: prod, soft_delete: { retention_days: 90, purge_protection: true } }\n");
  }
};

TEST_F(DeletedCliTest, DeleteListRecoverPurge) {
  ASSERT_EQ(Cli({"secret", "set", "dev", "token"}, "v1").exit_code, kExitOk);
  ASSERT_EQ(Cli({"secret", "set", "dev", "token"}, "v2").exit_code, kExitOk);
  Outcome del = Cli({"secret", "delete", "dev", "token"});
  ASSERT_EQ(del.exit_code, kExitOk) << del.err;
  EXPECT_THAT(del.out, HasSubstr("recoverable until"));
  EXPECT_EQ(Cli({"secret", "get", "dev", "token"}).exit_code, kExitFailed);
  Outcome reuse = Cli({"secret", "set", "dev", "token"}, "v3");
  EXPECT_EQ(reuse.exit_code, kExitFailed);
  EXPECT_THAT(reuse.err, HasSubstr("is a deleted item"));

  Outcome list = Cli({"deleted", "list", "dev", "--json"});
  ASSERT_EQ(list.exit_code, kExitOk) << list.err;
  nlohmann::json items = nlohmann::json::parse(list.out);
  ASSERT_EQ(items.size(), 1u);
  EXPECT_EQ(items[0]["name"], "token");
  EXPECT_EQ(items[0]["kind"], "Secret");
  EXPECT_EQ(items[0]["versions"], 2);
  EXPECT_EQ(items[0]["purgeProtected"], false);

  Outcome rec = Cli({"deleted", "recover", "dev", "token"});
  ASSERT_EQ(rec.exit_code, kExitOk) << rec.err;
  EXPECT_EQ(Cli({"secret", "get", "dev", "token"}).out, "v2");
  EXPECT_EQ(nlohmann::json::parse(Cli({"secret", "list", "dev", "token", "--json"}).out).size(), 2u);
  EXPECT_EQ(Cli({"deleted", "recover", "dev", "token"}).exit_code, kExitFailed) << "not deleted any more";

  ASSERT_EQ(Cli({"secret", "delete", "dev", "token"}).exit_code, kExitOk);
  Outcome purge = Cli({"deleted", "purge", "dev", "token"});
  ASSERT_EQ(purge.exit_code, kExitOk) << purge.err;
  EXPECT_THAT(Cli({"deleted", "list", "dev"}).out, IsEmpty());
  EXPECT_EQ(Cli({"secret", "set", "dev", "token"}, "fresh").exit_code, kExitOk);

  auto recovers = RecordsOf(dir.file("audit.log"), "SecretRecover");
  ASSERT_EQ(recovers.size(), 2u);
  ExpectOperatorEvent(recovers[0], "SecretRecover", true);
  ExpectOperatorEvent(recovers[1], "SecretRecover", false);
  auto purges = RecordsOf(dir.file("audit.log"), "SecretPurge");
  ASSERT_EQ(purges.size(), 1u);
  ExpectOperatorEvent(purges[0], "SecretPurge", true);
}

TEST_F(DeletedCliTest, PurgeProtectionHoldsUntilRetentionEndsAndStaysOn) {
  ASSERT_EQ(Cli({"secret", "set", "prod", "db"}, "v").exit_code, kExitOk);
  ASSERT_EQ(Cli({"secret", "delete", "prod", "db"}).exit_code, kExitOk);
  Outcome purge = Cli({"deleted", "purge", "prod", "db"});
  EXPECT_EQ(purge.exit_code, kExitFailed);
  EXPECT_THAT(purge.err, HasSubstr("has purge protection"));
  EXPECT_THAT(Cli({"deleted", "list", "prod"}).out, HasSubstr("(purge protected)"));
  // Turning the setting off later does not lift it: the store remembers.
  WriteFile(dir.file("vp.yaml"),
            "store:\n  path: data/store.db\n"
            "audit:\n  sinks:\n    - { type: file, path: audit.log }\n"
            "vaults:\n  - { name: dev }\n  - { name: prod }\n");
  EXPECT_EQ(Cli({"deleted", "purge", "prod", "db"}).exit_code, kExitFailed);
  EXPECT_THAT(Cli({"deleted", "list", "prod"}).out, HasSubstr("(purge protected)"));
  // ... nor does removing soft_delete: deletes still go to the deleted state.
  ASSERT_EQ(Cli({"secret", "set", "prod", "other"}, "v").exit_code, kExitOk);
  EXPECT_THAT(Cli({"secret", "delete", "prod", "other"}).out, HasSubstr("recoverable until"));
  EXPECT_THAT(Cli({"deleted", "list", "prod"}).out, HasSubstr("\"other\""));
  // Without soft_delete, a delete is immediate.
  ASSERT_EQ(Cli({"secret", "set", "dev", "now"}, "v").exit_code, kExitOk);
  Outcome del = Cli({"secret", "delete", "dev", "now"});
  EXPECT_EQ(del.exit_code, kExitOk);
  EXPECT_THAT(del.out, HasSubstr("deleted from vault"));
  EXPECT_THAT(Cli({"deleted", "list", "dev"}).out, IsEmpty());
  EXPECT_EQ(Cli({"secret", "set", "dev", "now"}, "again").exit_code, kExitOk);
}

TEST_F(SecretCliTest, HsmCertificateKeysNeedAVaultWithAnHsm) {
  for (const char* cmd : {"create", "csr"}) {
    Outcome o = Cli({"cert", cmd, "dev", "web", "--subject", "CN=web.example", "--hsm"});
    EXPECT_EQ(o.exit_code, kExitFailed) << cmd;
    EXPECT_THAT(o.err, HasSubstr("vault dev has no HSM: --hsm needs a vault with `hsms`")) << cmd;
  }
  EXPECT_THAT(Cli({"list", "--vault", "dev"}).out, Not(HasSubstr("\"web\""))) << "a refused request stored something";
  // Merge: a file without a certificate; a certificate item with nothing pending.
  ASSERT_EQ(Cli({"cert", "create", "dev", "web", "--subject", "CN=web.example", "--exportable"}).exit_code, kExitOk);
  ASSERT_EQ(Cli({"secret", "get", "dev", "web", "--out", "web.pem"}).exit_code, kExitOk);
  Outcome junk = Cli({"cert", "merge", "dev", "web", "--file", "vp.yaml"});
  EXPECT_EQ(junk.exit_code, kExitFailed);
  EXPECT_THAT(junk.err, HasSubstr("holds no certificate"));
  Outcome merge = Cli({"cert", "merge", "dev", "web", "--file", "web.pem"});
  EXPECT_EQ(merge.exit_code, kExitFailed);
  EXPECT_THAT(merge.err, HasSubstr("has no pending request"));
  Outcome cancel = Cli({"cert", "cancel", "dev", "web"});
  EXPECT_EQ(cancel.exit_code, kExitFailed);
  EXPECT_THAT(cancel.err, HasSubstr("has no pending request"));
  // A request file that cannot be written leaves no pending version behind.
  Outcome csr = Cli({"cert", "csr", "dev", "web", "--subject", "CN=web.example", "--out", "missing/dir/web.csr"});
  EXPECT_EQ(csr.exit_code, kExitFailed);
  EXPECT_EQ(Cli({"cert", "cancel", "dev", "web"}).exit_code, kExitFailed) << "a pending version was left";
  // The bundle is the current version's only: after an import without --exportable, none.
  ASSERT_EQ(Cli({"cert", "import", "dev", "web", "--file", "web.pem"}).exit_code, kExitOk);
  Outcome stale = Cli({"secret", "get", "dev", "web"});
  EXPECT_EQ(stale.exit_code, kExitFailed);
  EXPECT_THAT(stale.err, HasSubstr("has no bundle"));
}

TEST_F(SecretCliTest, CertificateTagsAreOnEveryObjectOfEveryVersion) {
  ASSERT_EQ(Cli({"cert", "create", "dev", "web", "--subject", "CN=web.example", "--tag", "env=prod", "--tag", "team=edge"})
                .exit_code,
            kExitOk);
  ASSERT_EQ(Cli({"cert", "renew", "dev", "web"}).exit_code, kExitOk);
  EXPECT_EQ(Cli({"cert", "create", "dev", "bad", "--subject", "CN=x", "--tag", "novalue"}).exit_code, kExitFailed);
  auto st = store::Store::Open(dir.file("data/store.db"), dir.file("data/store.db.masterkey"), false);
  ASSERT_TRUE(st.ok()) << st.error().message;
  auto rows = (*st)->LoadVault("dev");
  ASSERT_TRUE(rows.ok());
  size_t tagged = 0;
  std::set<std::string> versions;
  for (const auto& r : *rows) {
    ASSERT_EQ(r.label, "web");
    auto attrs = model::AttributeMap::Deserialize(r.attributes);
    ASSERT_TRUE(attrs.ok());
    EXPECT_EQ(attrs->GetString(CKA_VAULTP11_TAGS), R"({"env":"prod","team":"edge"})") << r.object_class;
    tagged += attrs->GetString(CKA_VAULTP11_TAGS).find("prod") != std::string::npos;
    versions.insert(r.version);
  }
  EXPECT_EQ(tagged, 6u);
  EXPECT_EQ(versions.size(), 2u);
}

// Backup and restore of software items: every version, sealed under the deployment's key.
class BackupCliTest : public SecretCliTest {
 protected:
  void SetUp() override { Deploy("  - { name: dev }\n  - { name: other, soft_delete: { retention_days: 7 } }\n"); }
  // The file with the character at `at` changed (a hex digit to another).
  std::string Altered(const std::string& file, size_t at, const std::string& name) {
    std::string text = ReadAll(dir.file(file));
    text[at] = text[at] == '0' ? '1' : '0';
    WriteFile(dir.file(name), text);
    return name;
  }
  std::vector<nlohmann::json> AuditEvents(const std::string& operation) {
    std::vector<nlohmann::json> out;
    std::istringstream lines(ReadAll(dir.file("audit.log")));
    for (std::string line; std::getline(lines, line);) {
      auto e = nlohmann::json::parse(line, nullptr, false);
      if (e.is_object() && e.value("operationName", "") == operation) out.push_back(e);
    }
    return out;
  }
};

TEST_F(BackupCliTest, SecretWithEveryVersionRoundTripsIntoTheSameDeploymentOnly) {
  const std::string v1 = "first plain value", v2("second\0value", 12);
  Outcome s1 = Cli({"secret", "set", "dev", "db-password", "--content-type", "text/plain"}, v1);
  ASSERT_EQ(s1.exit_code, kExitOk) << s1.err;
  Outcome s2 = Cli({"secret", "set", "dev", "db-password"}, v2);
  ASSERT_EQ(s2.exit_code, kExitOk) << s2.err;
  const std::string ver1 = PrintedVersion(s1), ver2 = PrintedVersion(s2);

  Outcome b = Cli({"backup", "dev", "db-password", "s.backup"});
  ASSERT_EQ(b.exit_code, kExitOk) << b.err;
  EXPECT_THAT(b.out, HasSubstr("Secret \"db-password\" backed up to s.backup (2 versions)"));
  EXPECT_EQ(ModeOf(dir.file("s.backup")), 0600u);
  const std::string text = ReadAll(dir.file("s.backup"));
  EXPECT_EQ(text.find("first plain value"), std::string::npos) << "the value is in the clear";
  EXPECT_EQ(text.find("text/plain"), std::string::npos) << "the attributes are in the clear";
  EXPECT_EQ(text.find(ver1), std::string::npos) << "versions are sealed too";
  EXPECT_EQ(Cli({"backup", "dev", "db-password", "s.backup"}).exit_code, kExitFailed) << "never overwritten";
  Outcome none = Cli({"backup", "dev", "nothing", "n.backup"});
  EXPECT_EQ(none.exit_code, kExitFailed);
  EXPECT_THAT(none.err, HasSubstr("has no item named \"nothing\""));

  // The name is in use where it came from.
  Outcome taken = Cli({"restore", "dev", "s.backup"});
  EXPECT_EQ(taken.exit_code, kExitFailed);
  EXPECT_THAT(taken.err, HasSubstr("already has a secret named \"db-password\"; nothing changed"));
  // Any changed byte, in the sealed content or the clear header, is refused.
  const size_t content = text.find("\"content\": \"") + 40, header = text.find("\"source\": \"dev\"") + 11;
  for (const std::string& bad : {Altered("s.backup", content, "c.backup"), Altered("s.backup", header, "h.backup")}) {
    Outcome r = Cli({"restore", "other", bad});
    EXPECT_EQ(r.exit_code, kExitFailed) << bad;
    EXPECT_THAT(r.err, HasSubstr("was modified after it was written")) << bad;
  }
  WriteFile(dir.file("junk.backup"), "{\"format\": \"vaultp11-backup\", \"format_version\": 2}");
  EXPECT_THAT(Cli({"restore", "other", "junk.backup"}).err, HasSubstr("not a hex string"));
  // Another deployment (its own store and master key) cannot read it.
  WriteFile(dir.file("vp2.yaml"), "store:\n  path: data2/store.db\nvaults:\n  - { name: other }\n");
  ASSERT_EQ(RunCli(dir, {"--config", "vp2.yaml", "init"}).exit_code, kExitOk);
  Outcome foreign = RunCli(dir, {"--config", "vp2.yaml", "restore", "other", "s.backup"});
  EXPECT_EQ(foreign.exit_code, kExitFailed);
  EXPECT_THAT(foreign.err, HasSubstr("was made by another deployment"));
  EXPECT_THAT(RunCli(dir, {"--config", "vp2.yaml", "secret", "list", "other"}).out, IsEmpty())
      << "a refused restore stored something";

  // Into another vault of the deployment: both versions as they were, the newest current.
  Outcome r = Cli({"restore", "other", "s.backup"});
  ASSERT_EQ(r.exit_code, kExitOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("other: Secret \"db-password\" restored from s.backup (2 versions)"));
  EXPECT_EQ(Cli({"secret", "get", "other", "db-password"}).out, v2);
  EXPECT_EQ(Cli({"secret", "get", "other", "db-password", "--version", ver1}).out, v1);
  nlohmann::json vs = nlohmann::json::parse(Cli({"secret", "list", "other", "db-password", "--json"}).out);
  ASSERT_EQ(vs.size(), 2u);
  EXPECT_EQ(vs[0]["version"], ver1);
  EXPECT_EQ(vs[0]["contentType"], "text/plain");
  EXPECT_EQ(vs[1]["version"], ver2);
  // A deleted item is not backed up, and its name is not restored over.
  ASSERT_EQ(Cli({"secret", "delete", "other", "db-password"}).exit_code, kExitOk);
  EXPECT_THAT(Cli({"backup", "other", "db-password", "d.backup"}).err, HasSubstr("is deleted: recover it before a backup"));
  EXPECT_THAT(Cli({"restore", "other", "s.backup"}).err, HasSubstr("has a deleted item named \"db-password\""));
  // Gone for good from dev, it comes back there.
  ASSERT_EQ(Cli({"secret", "delete", "dev", "db-password"}).exit_code, kExitOk);
  ASSERT_EQ(Cli({"restore", "dev", "s.backup"}).exit_code, kExitOk);
  EXPECT_EQ(Cli({"secret", "get", "dev", "db-password"}).out, v2);

  // The success, the file that exists, the deleted item (an unknown name is no secret).
  auto backups = AuditEvents("SecretBackup"), restores = AuditEvents("SecretRestore");
  ASSERT_EQ(backups.size(), 3u);
  EXPECT_EQ(backups[0]["resultType"], "Success");
  EXPECT_EQ(backups[0]["properties"]["versions"], 2);
  EXPECT_THAT(backups[1]["resultDescription"].get<std::string>(), HasSubstr("s.backup"));
  EXPECT_THAT(backups[2]["resultDescription"].get<std::string>(), HasSubstr("is deleted"));
  size_t ok = 0;
  for (const auto& e : restores) ok += e["resultType"] == "Success";
  EXPECT_EQ(ok, 2u);
  for (const auto& e : AuditEvents("KeyRestore")) EXPECT_EQ(e["properties"].value("name", "-"), "-") << e.dump();
}

TEST_F(BackupCliTest, CertificateComesBackWithItsKeysVersionsAndPolicy) {
  ASSERT_EQ(Cli({"cert", "create", "dev", "web", "--subject", "CN=web.example", "--san", "DNS:web.example"}).exit_code,
            kExitOk);
  ASSERT_EQ(Cli({"cert", "renew", "dev", "web"}).exit_code, kExitOk);
  Outcome b = Cli({"backup", "dev", "web", "w.backup"});
  ASSERT_EQ(b.exit_code, kExitOk) << b.err;
  EXPECT_THAT(b.out, HasSubstr("Certificate \"web\" backed up to w.backup (2 versions)"));
  EXPECT_EQ(ReadAll(dir.file("w.backup")).find("PRIVATE"), std::string::npos);
  Outcome r = Cli({"restore", "other", "w.backup"});
  ASSERT_EQ(r.exit_code, kExitOk) << r.err;
  // The same objects (6: two versions of key pair and certificate) with the same versions and ids.
  auto objects = [&](const std::string& vault) {
    std::multiset<std::string> out;
    const nlohmann::json doc = nlohmann::json::parse(Cli({"list", "--vault", vault, "--json"}).out);
    for (const auto& o : doc["vaults"][0]["objects"])
      if (o["label"] == "web") out.insert(o["class"].get<std::string>() + o["id"].get<std::string>() + o["version"].get<std::string>());
    return out;
  };
  EXPECT_EQ(objects("other").size(), 6u);
  EXPECT_EQ(objects("other"), objects("dev"));
  // The policy came along: the restored certificate renews.
  Outcome renew = Cli({"cert", "renew", "other", "web"});
  EXPECT_EQ(renew.exit_code, kExitOk) << renew.err;
  EXPECT_EQ(objects("other").size(), 9u);
  EXPECT_EQ(AuditEvents("CertificateRestore").size(), 1u);
}

}  // namespace
}  // namespace vaultp11::cli

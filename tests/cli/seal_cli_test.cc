// `vaultp11 init` with store.seal and `vaultp11 store reseal`, run as the built binary against
// a real SoftHSMv2 token (softhsm_fixture.h): the children inherit SOFTHSM2_CONF.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "softhsm_fixture.h"
#include "run_cli.h"
#include "temp_dir.h"

namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;
using vaultp11::testing::SoftHsmEnvironment;
using vaultp11::testing::TempDir;
using Outcome = vaultp11::testing::CliOutcome;
using vaultp11::testing::RunCli;

constexpr char kPin[] = "cli-seal-pin-2291";
const auto* const kHsm =
    ::testing::AddGlobalTestEnvironment(new SoftHsmEnvironment({{"cli-seal", kPin, "so-cli-seal-2291"}}));

std::string ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}
void WriteFile(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }


class SealCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!SoftHsmEnvironment::Instance()->available()) GTEST_SKIP() << SoftHsmEnvironment::Instance()->skip_reason();
    WriteFile(dir_.file("seal.pin"), std::string(kPin) + "\n");
    chmod(dir_.file("seal.pin").c_str(), 0600);
    label_ = std::string("cli-") + ::testing::UnitTest::GetInstance()->current_test_info()->name();
  }
  // store: `file` (master key file only), `seal` (seal only) or `both`.
  void Config(const std::string& store) {
    std::string s = "store:\n  path: data/store.db\n";
    if (store != "seal") s += "  master_key_file: data/master.key\n";
    if (store != "file") s += "  seal: { hsm: seal-hsm, key_label: " + label_ + " }\n";
    s += "hsms:\n  - { name: seal-hsm, module: " + SoftHsmEnvironment::Instance()->module_path() +
         ", token: cli-seal, pin_file: seal.pin, quirks: [no-deinit] }\n"
         "vaults:\n  - name: dev\n";
    WriteFile(dir_.file("vp.yaml"), s);
  }
  Outcome Cli(const std::vector<std::string>& args, const std::string& input = "") {
    std::vector<std::string> a = {"--config", "vp.yaml"};
    a.insert(a.end(), args.begin(), args.end());
    return RunCli(dir_, a, input);
  }
  TempDir dir_;
  std::string label_;
};

TEST_F(SealCliTest, InitWithASealCreatesTheHsmKeyAndNoMasterKeyFile) {
  Config("seal");
  Outcome init = Cli({"init"});
  ASSERT_EQ(init.exit_code, 0) << init.err;
  EXPECT_THAT(init.out, AllOf(HasSubstr("root key sealed by key \"" + label_ + "\" in hsm seal-hsm"),
                              HasSubstr("created vault dev")));
  EXPECT_THAT(init.out, Not(HasSubstr("master key file")));
  EXPECT_FALSE(std::filesystem::exists(dir_.file("data/store.db.masterkey")));
  EXPECT_FALSE(std::filesystem::exists(dir_.file("data/master.key")));
  ASSERT_EQ(Cli({"secret", "set", "dev", "db-password"}, "sealed-value-1").exit_code, 0);
  Outcome get = Cli({"secret", "get", "dev", "db-password"});
  ASSERT_EQ(get.exit_code, 0) << get.err;
  EXPECT_EQ(get.out, "sealed-value-1");
  // The audit head is signed with the key derived from the unsealed root key.
  Outcome verify = Cli({"audit", "verify"});
  EXPECT_EQ(verify.exit_code, 0) << verify.out << verify.err;
  EXPECT_THAT(verify.out, HasSubstr("head intact"));
  // Again: the key exists now, nothing new.
  Outcome again = Cli({"init"});
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_THAT(again.out, HasSubstr("existing vault dev"));
}

TEST_F(SealCliTest, ResealMovesTheStoreToTheSealAndBackLosingNothing) {
  Config("file");
  ASSERT_EQ(Cli({"init"}).exit_code, 0);
  ASSERT_EQ(Cli({"secret", "set", "dev", "s1"}, "value-before").exit_code, 0);
  const std::string old_key = ReadAll(dir_.file("data/master.key"));

  // Needs both in the config.
  Outcome refused = Cli({"store", "reseal", "--to", "seal"});
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_THAT(refused.err, AllOf(HasSubstr("store.master_key_file"), HasSubstr("store.seal")));
  EXPECT_EQ(Cli({"store", "reseal", "--to", "hsm"}).exit_code, 2);

  Config("both");
  Outcome to_seal = Cli({"store", "reseal", "--to", "seal"});
  ASSERT_EQ(to_seal.exit_code, 0) << to_seal.err;
  EXPECT_THAT(to_seal.out, AllOf(HasSubstr("generation 1"), HasSubstr("1 vault data key re-wrapped"),
                                 HasSubstr("head re-signed"), HasSubstr("no longer opens the store")));
  Outcome twice = Cli({"store", "reseal", "--to", "seal"});
  EXPECT_EQ(twice.exit_code, 1);
  EXPECT_THAT(twice.err, HasSubstr("already"));

  // The seal alone opens everything; the audit log still verifies (its head re-signed).
  Config("seal");
  Outcome get = Cli({"secret", "get", "dev", "s1"});
  ASSERT_EQ(get.exit_code, 0) << get.err;
  EXPECT_EQ(get.out, "value-before");
  ASSERT_EQ(Cli({"secret", "set", "dev", "s2"}, "value-sealed").exit_code, 0);
  Outcome verify = Cli({"audit", "verify"});
  EXPECT_EQ(verify.exit_code, 0) << verify.out << verify.err;
  EXPECT_THAT(verify.out, HasSubstr("head intact"));
  // The old file opens nothing.
  Config("file");
  Outcome old = Cli({"secret", "get", "dev", "s1"});
  EXPECT_EQ(old.exit_code, 1);
  EXPECT_THAT(old.err, HasSubstr("sealed by the HSM key"));
  EXPECT_THAT(old.out, Not(HasSubstr("value-before")));

  // And back to a new file.
  Config("both");
  Outcome to_file = Cli({"store", "reseal", "--to", "file"});
  ASSERT_EQ(to_file.exit_code, 0) << to_file.err;
  EXPECT_THAT(to_file.out, HasSubstr("generation 2"));
  const std::string new_key = ReadAll(dir_.file("data/master.key"));
  ASSERT_EQ(new_key.size(), 32u);
  EXPECT_NE(new_key, old_key);
  struct stat st {};
  ASSERT_EQ(stat(dir_.file("data/master.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  Config("file");
  for (const auto& [name, value] : {std::pair<std::string, std::string>{"s1", "value-before"}, {"s2", "value-sealed"}}) {
    Outcome g = Cli({"secret", "get", "dev", name});
    ASSERT_EQ(g.exit_code, 0) << g.err;
    EXPECT_EQ(g.out, value);
  }
  Outcome verify2 = Cli({"audit", "verify"});
  EXPECT_EQ(verify2.exit_code, 0) << verify2.out << verify2.err;
  EXPECT_THAT(verify2.out, HasSubstr("head intact"));
  EXPECT_THAT(ReadAll(dir_.file("data/audit.log")), HasSubstr("StoreReseal"));
}

TEST_F(SealCliTest, ResealRefusesAnAuditLogThatDoesNotVerifyAndChangesNothing) {
  Config("file");
  ASSERT_EQ(Cli({"init"}).exit_code, 0);
  // A forged head.
  std::string head = ReadAll(dir_.file("data/audit.log.head"));
  ASSERT_FALSE(head.empty());
  const size_t mac = head.find("\"mac\":\"");
  ASSERT_NE(mac, std::string::npos);
  head[mac + 7] = head[mac + 7] == '0' ? '1' : '0';
  WriteFile(dir_.file("data/audit.log.head"), head);
  Config("both");
  Outcome r = Cli({"store", "reseal", "--to", "seal"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, AllOf(HasSubstr("audit.log"), HasSubstr("nothing changed")));
  Config("file");
  EXPECT_EQ(Cli({"secret", "set", "dev", "still"}, "on the file").exit_code, 0);
}

}  // namespace

// One master key for the fleet without a master key file: two hosts on one PostgreSQL store
// share a SoftHSMv2 token as the seal HSM (store.seal). "Host A" is this process, "host B" the
// abi_child program with its own config and its own copy of the PIN file; neither has a
// master key file. `vaultp11 init` (the built CLI) creates the seal's HSM key, the schema and
// the vault first.
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "fixture.h"
#include "pg_server.h"
#include "run_cli.h"
#include "softhsm_fixture.h"

namespace vaultp11::testing {
namespace {

constexpr char kSealPin[] = "fleet-seal-5120";
const auto* const kSealHsm =
    ::testing::AddGlobalTestEnvironment(new SoftHsmEnvironment({{"fleet-seal", kSealPin, "so-fleet-seal-5120"}}));

class SealedFleetTest : public AbiTest {
 protected:
  void SetUp() override {
    if (!SoftHsmEnvironment::Instance()->available()) GTEST_SKIP() << SoftHsmEnvironment::Instance()->skip_reason();
    ASSERT_NE(std::getenv("VAULTP11_CLI"), nullptr);
    LoadModule();
    std::string why;
    primary_ = PgServer::StartPrimary(&why);
    ASSERT_NE(primary_, nullptr) << why;
    dsn_ = primary_->Dsn("postgres");
    label_ = std::string("fleet-") + ::testing::UnitTest::GetInstance()->current_test_info()->name();
    for (const char* host : {"a", "b"}) {
      std::filesystem::create_directories(dir.file(host));
      std::ofstream(dir.file(std::string(host) + "/seal.pin")) << kSealPin << "\n";
      ASSERT_EQ(chmod(dir.file(std::string(host) + "/seal.pin").c_str(), 0600), 0);
    }
    config_a_ = HostConfig("a");
    config_b_ = HostConfig("b");
    config_path = config_a_;
    const auto [rc, out] = Cli({"init"}, config_a_);
    ASSERT_EQ(rc, 0) << out;
    ASSERT_NE(out.find("root key sealed by key \"" + label_ + "\""), std::string::npos) << out;
  }
  void TearDown() override {
    AbiTest::TearDown();
    primary_.reset();
  }

  std::string HostConfig(const std::string& host, const std::string& pin_file = "seal.pin") {
    static const std::string admin = TestSecretHash("correct horse");
    const std::string path = dir.file(host + "/vaultp11.yaml");
    std::ofstream out(path);
    out << "log: { level: error }\n"
        << "store:\n  backend: postgresql\n  dsn: \"" << dsn_ << "\"\n"
        << "  password_file: " << primary_->password_file() << "\n"
        << "  seal: { hsm: seal-hsm, key_label: " << label_ << " }\n"
        << "hsms:\n  - { name: seal-hsm, module: " << SoftHsmEnvironment::Instance()->module_path()
        << ", token: fleet-seal, pin_file: " << dir.file(host + "/" + pin_file) << ", quirks: [no-deinit] }\n"
        << "vaults:\n  - { name: payments, sku: standard }\n"
        << "principals:\n  - name: app\n    auth: client_secret\n    secrets:\n"
        << "      - { hash: \"" << admin << "\" }\n"
        << "role_assignments:\n  - { principal: app, role: Key Vault Administrator, scope: /vaults/payments }\n";
    return path;
  }

  // Runs `steps` as host B (abi_child with B's config, logged in as app on slot 0).
  int OnHostB(const std::vector<std::string>& steps) { return InAnotherProcess(steps, config_b_); }

  // Runs the built `vaultp11` CLI with `config`; returns its exit status and output (stdout and
  // stderr).
  std::pair<int, std::string> Cli(const std::vector<std::string>& args, const std::string& config) {
    std::vector<std::string> all = {"--config", config};
    all.insert(all.end(), args.begin(), args.end());
    const CliOutcome o = RunCli(dir, all);
    return {o.exit_code, o.out + o.err};
  }

  std::unique_ptr<PgServer> primary_;
  std::string dsn_, label_, config_a_, config_b_;
};

TEST_F(SealedFleetTest, TwoHostsWithNoMasterKeyFileShareASoftHsmTokenAsTheSealHsm) {
  ASSERT_EQ(InitWith(config_a_), CKR_OK);
  CK_SESSION_HANDLE s = LoggedInRw();
  CK_OBJECT_HANDLE pub, priv;
  GenEc(s, kP256, "made-on-a", &pub, &priv);
  EXPECT_EQ(OnHostB({"sign-ec", "made-on-a"}), 0);
  EXPECT_EQ(OnHostB({"gen-ec", "made-on-b"}), 0);
  EXPECT_EQ(OnHostB({"sign-ec", "made-on-b"}), 0);
  // No host has (or was given) a master key file.
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir.path()))
    EXPECT_EQ(e.path().string().find("master"), std::string::npos) << e.path();
}

// A thief with the database and a host's config and files, but without the HSM (here: its
// PIN), starts nothing; the module never makes a root key or seal key of its own.
TEST_F(SealedFleetTest, AHostWithoutAccessToTheSealHsmStartsNothing) {
  std::ofstream(dir.file("b/wrong.pin")) << "not-the-pin\n";
  ASSERT_EQ(chmod(dir.file("b/wrong.pin").c_str(), 0600), 0);
  config_b_ = HostConfig("b", "wrong.pin");
  const std::string mine = config_path;
  config_path = config_b_;
  EXPECT_NE(RunChild({"init", "0"}), 0);
  config_path = mine;
  // A wrong label is an error naming it, from the module as from the CLI.
  std::string text;
  {
    std::ifstream in(config_a_);
    std::stringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }
  const size_t at = text.find("key_label: " + label_);
  ASSERT_NE(at, std::string::npos);
  text.insert(at + 11 + label_.size(), "-typo");
  std::ofstream(dir.file("a/typo.yaml")) << text;
  EXPECT_NE(InitWith(dir.file("a/typo.yaml")), CKR_OK);
  const auto [rc, out] = Cli({"list"}, dir.file("a/typo.yaml"));
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find(label_ + "-typo"), std::string::npos) << out;
  // The right config still works.
  ASSERT_EQ(InitWith(config_a_), CKR_OK);
  CK_SESSION_HANDLE s = LoggedInRw();
  CK_OBJECT_HANDLE pub, priv;
  GenEc(s, kP256, "still-works", &pub, &priv);
}

}  // namespace
}  // namespace vaultp11::testing

// Several hosts, one vault: deployments on a PostgreSQL store (a primary and a synchronous hot
// standby started by the test, tests/fixtures/pg_server.h). "Host A" is this process, "host B"
// the abi_child program with its own config, its own copy of the master key file and its own
// audit log; both name the same database. Everything goes through the built module.
#include <sys/stat.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "fixture.h"
#include "pg_server.h"
#include "run_cli.h"

namespace vaultp11::testing {
namespace {

std::string Hex(const std::vector<uint8_t>& v) {
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (uint8_t b : v) out += kHex[b >> 4], out += kHex[b & 15];
  return out;
}

class FleetTest : public AbiTest {
 protected:
  void SetUp() override {
    LoadModule();
    std::string why;
    primary_ = PgServer::StartPrimary(&why);
    ASSERT_NE(primary_, nullptr) << why;
    standby_ = PgServer::StartStandby(*primary_, &why);
    ASSERT_NE(standby_, nullptr) << why;
    ASSERT_TRUE(primary_->MakeSynchronous(&why)) << why;
    dsn_ = "host=127.0.0.1,127.0.0.1 port=" + std::to_string(primary_->port()) + "," +
           std::to_string(standby_->port()) + " dbname=postgres user=" + PgServer::kUser;
    std::filesystem::create_directories(dir.file("a"));
    std::filesystem::create_directories(dir.file("b"));
    config_a_ = HostConfig("a");
    config_b_ = HostConfig("b");
    config_path = config_a_;
    // Host A makes the schema, the master key and the vault; host B gets a copy of the key.
    ASSERT_EQ(InitWith(config_a_), CKR_OK);
    std::filesystem::copy_file(dir.file("a/master.key"), dir.file("b/master.key"));
    ASSERT_EQ(chmod(dir.file("b/master.key").c_str(), 0600), 0);
  }
  void TearDown() override {
    AbiTest::TearDown();
    standby_.reset();
    primary_.reset();
  }

  std::string HostConfig(const std::string& host) {
    static const std::string admin = TestSecretHash("correct horse");
    const std::string path = dir.file(host + "/vaultp11.yaml");
    std::ofstream out(path);
    out << "log: { level: " << (std::getenv("FLEET_LOG") ? "debug" : "error") << " }\n"
        << "store:\n  backend: postgresql\n  dsn: \"" << dsn_ << "\"\n"
        << "  password_file: " << primary_->password_file() << "\n"
        << "  master_key_file: " << dir.file(host + "/master.key") << "\n"
        << "vaults:\n  - { name: payments, sku: standard }\n"
        << "principals:\n  - name: app\n    auth: client_secret\n    secrets:\n"
        << "      - { hash: \"" << admin << "\" }\n"
        << "role_assignments:\n  - { principal: app, role: Key Vault Administrator, scope: /vaults/payments }\n";
    return path;
  }

  // Runs `steps` as host B (abi_child with B's config, logged in as app on slot 0).
  // Runs `steps` as host B (abi_child with B's config, logged in as app on slot 0), in a
  // read/write session unless `read_only` (a write-protected token refuses one).
  int OnHostB(const std::vector<std::string>& steps, bool read_only = false) {
    return InAnotherProcess(steps, config_b_, read_only);
  }

  // The vaultp11 CLI on host `host`'s config, `input` on its stdin.
  CliOutcome Cli(const std::string& host, const std::vector<std::string>& args, const std::string& input = "") {
    std::vector<std::string> all = {"--config", host == "a" ? config_a_ : config_b_};
    all.insert(all.end(), args.begin(), args.end());
    return RunCli(dir, all, input);
  }

  CK_OBJECT_HANDLE CreateData(CK_SESSION_HANDLE s, const std::string& label, const std::string& value) {
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_BBOOL yes = CK_TRUE;
    std::string l = label, v = value;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                        {CKA_TOKEN, &yes, 1},
                        {CKA_LABEL, l.data(), l.size()},
                        {CKA_VALUE, v.data(), v.size()}};
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    EXPECT_EQ(f->C_CreateObject(s, t, 4, &h), CKR_OK);
    return h;
  }

  std::vector<CK_OBJECT_HANDLE> Find(CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, const std::string& label) {
    std::string l = label;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, l.data(), l.size()}};
    std::vector<CK_OBJECT_HANDLE> out(16);
    CK_ULONG n = 0;
    EXPECT_EQ(f->C_FindObjectsInit(s, t, 2), CKR_OK);
    EXPECT_EQ(f->C_FindObjects(s, out.data(), out.size(), &n), CKR_OK);
    EXPECT_EQ(f->C_FindObjectsFinal(s), CKR_OK);
    out.resize(n);
    return out;
  }

  std::unique_ptr<PgServer> primary_, standby_;
  std::string dsn_, config_a_, config_b_;
};

TEST_F(FleetTest, AKeyMadeOnOneHostSignsOnTheOther) {
  CK_SESSION_HANDLE s = LoggedInRw();
  CK_OBJECT_HANDLE pub, priv;
  GenEc(s, kP256, "made-on-a", &pub, &priv);
  EXPECT_EQ(OnHostB({"sign-ec", "made-on-a"}), 0);
  // And the other way, into this running process: its next search sees B's key.
  EXPECT_TRUE(Find(s, CKO_PRIVATE_KEY, "made-on-b").empty());
  EXPECT_EQ(OnHostB({"gen-ec", "made-on-b"}), 0);
  auto found = Find(s, CKO_PRIVATE_KEY, "made-on-b");
  ASSERT_EQ(found.size(), 1u);
  CK_MECHANISM m{CKM_ECDSA, nullptr, 0};
  const std::vector<uint8_t> digest(32, 0x5a);
  auto sig = Sign(s, m, found[0], digest);
  auto pubs = Find(s, CKO_PUBLIC_KEY, "made-on-b");
  ASSERT_EQ(pubs.size(), 1u);
  EXPECT_EQ(Verify(s, m, pubs[0], digest, sig), CKR_OK);
}

TEST_F(FleetTest, ASecretSetOnOneHostIsReadOnTheOther) {
  CK_SESSION_HANDLE s = LoggedInRw();
  CreateData(s, "db-password", "s3cret-from-a");
  EXPECT_EQ(OnHostB({"expect-data", "db-password", "s3cret-from-a"}), 0);
  // Set with the CLI on B, read by this running process.
  const CliOutcome set = Cli("b", {"secret", "set", "payments", "api-token"}, "from-the-cli-on-b");
  ASSERT_EQ(set.exit_code, 0) << set.err;
  auto found = Find(s, CKO_DATA, "api-token");
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(GetAttr(s, found[0], CKA_VALUE), Bytes("from-the-cli-on-b"));
}

TEST_F(FleetTest, ARotationOnOneHostIsTheCurrentVersionOnTheOther) {
  CK_SESSION_HANDLE s = LoggedInRw();
  CK_OBJECT_HANDLE pub, priv;
  GenEc(s, kP256, "tls", &pub, &priv);
  const std::string v1 = Hex(GetAttr(s, priv, CKA_ID));
  EXPECT_EQ(OnHostB({"expect-id", "tls", v1}), 0);
  // B rotates; this running process sees the new version as current on its next search.
  EXPECT_EQ(OnHostB({"gen-ec-version", "tls"}), 0);
  auto now = Find(s, CKO_PRIVATE_KEY, "tls");
  ASSERT_EQ(now.size(), 1u);
  const std::string v2 = Hex(GetAttr(s, now[0], CKA_ID));
  EXPECT_NE(v2, v1);
  // A rotates back again; B (a fresh process) agrees.
  GenEc(s, kP256, "tls", &pub, &priv, true, /*new_version=*/true);
  const std::string v3 = Hex(GetAttr(s, priv, CKA_ID));
  EXPECT_EQ(OnHostB({"expect-id", "tls", v3}), 0);
}

// The crypto path never touches the database: with every server down, a key already found
// signs, verifies, encrypts and decrypts.
TEST_F(FleetTest, CryptoWithAFoundKeyNeedsNoDatabase) {
  CK_SESSION_HANDLE s = LoggedInRw();
  CK_OBJECT_HANDLE pub, priv;
  GenEc(s, kP256, "offline", &pub, &priv);
  CK_OBJECT_HANDLE aes = GenAes(s, 32, "offline-aes");
  std::string why;
  ASSERT_TRUE(standby_->Stop(&why)) << why;
  ASSERT_TRUE(primary_->Stop(&why)) << why;
  CK_MECHANISM ecdsa{CKM_ECDSA, nullptr, 0};
  const std::vector<uint8_t> digest(32, 0x42);
  for (int i = 0; i < 3; ++i) {
    auto sig = Sign(s, ecdsa, priv, digest);
    EXPECT_EQ(Verify(s, ecdsa, pub, digest, sig), CKR_OK);
  }
  CK_BYTE iv[12] = {1};
  CK_GCM_PARAMS gcm{iv, sizeof(iv), 96, nullptr, 0, 128};
  CK_MECHANISM m{CKM_AES_GCM, &gcm, sizeof(gcm)};
  CK_BYTE plain[16] = {7}, ct[64], back[64];
  CK_ULONG ct_len = sizeof(ct), back_len = sizeof(back);
  ASSERT_EQ(f->C_EncryptInit(s, &m, aes), CKR_OK);
  ASSERT_EQ(f->C_Encrypt(s, plain, sizeof(plain), ct, &ct_len), CKR_OK);
  ASSERT_EQ(f->C_DecryptInit(s, &m, aes), CKR_OK);
  ASSERT_EQ(f->C_Decrypt(s, ct, ct_len, back, &back_len), CKR_OK);
  EXPECT_EQ(std::vector<CK_BYTE>(back, back + back_len), std::vector<CK_BYTE>(plain, plain + sizeof(plain)));
  // A search has to ask the database: with none reachable it fails (bounded), it does not hang.
  std::string label = "offline";
  CK_ATTRIBUTE t{CKA_LABEL, label.data(), label.size()};
  EXPECT_EQ(f->C_FindObjectsInit(s, &t, 1), CKR_DEVICE_ERROR);
}

TEST_F(FleetTest, AHostWithoutTheMasterKeyIsRefusedNotGivenANewOne) {
  std::filesystem::remove(dir.file("b/master.key"));
  const std::string mine = config_path;
  config_path = config_b_;
  EXPECT_NE(RunChild({"init", "0"}), 0);
  config_path = mine;
  EXPECT_FALSE(std::filesystem::exists(dir.file("b/master.key")));
}

// One long-running consumer: signing goes on while the primary is down; writes are refused
// with CKR_TOKEN_WRITE_PROTECTED (and the token says so) until the standby is promoted, then
// succeed again in the same process.
TEST_F(FleetTest, SigningGoesOnThroughAFailoverAndWritesResumeAfterPromotion) {
  CK_SESSION_HANDLE s = LoggedInRw();
  CK_OBJECT_HANDLE pub, priv;
  GenEc(s, kP256, "busy", &pub, &priv);
  CK_SESSION_HANDLE signer = OpenRo();
  std::atomic<bool> stop{false};
  std::atomic<int> signed_ok{0}, failed{0};
  std::thread loop([&] {
    const std::vector<uint8_t> digest(32, 0x11);
    CK_MECHANISM m{CKM_ECDSA, nullptr, 0};
    while (!stop.load()) {
      CK_BYTE sig[80];
      CK_ULONG len = sizeof(sig);
      CK_RV rv = f->C_SignInit(signer, &m, priv);
      if (rv == CKR_OK) rv = f->C_Sign(signer, const_cast<CK_BYTE*>(digest.data()), digest.size(), sig, &len);
      if (rv == CKR_OK && f->C_VerifyInit(signer, &m, pub) == CKR_OK &&
          f->C_Verify(signer, const_cast<CK_BYTE*>(digest.data()), digest.size(), sig, len) == CKR_OK)
        ++signed_ok;
      else
        ++failed;
    }
  });
  auto wait_for_signatures = [&](int more) {
    const int target = signed_ok.load() + more;
    while (signed_ok.load() < target && failed.load() == 0) std::this_thread::yield();
  };
  wait_for_signatures(10);
  std::string why;
  ASSERT_TRUE(primary_->Stop(&why)) << why;

  // Reads and searches go on; every write is refused as write-protected.
  EXPECT_EQ(Find(s, CKO_PRIVATE_KEY, "busy").size(), 1u);
  CK_OBJECT_HANDLE p2, k2;
  CK_MECHANISM gen{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
  CK_BBOOL yes = CK_TRUE;
  std::vector<uint8_t> params = kP256;
  std::string label = "during";
  CK_ATTRIBUTE pt[] = {{CKA_TOKEN, &yes, 1}, {CKA_EC_PARAMS, params.data(), params.size()},
                       {CKA_LABEL, label.data(), label.size()}};
  CK_ATTRIBUTE kt[] = {{CKA_TOKEN, &yes, 1}, {CKA_SIGN, &yes, 1}, {CKA_LABEL, label.data(), label.size()}};
  EXPECT_EQ(f->C_GenerateKeyPair(s, &gen, pt, 3, kt, 3, &p2, &k2), CKR_TOKEN_WRITE_PROTECTED);
  std::string value = "v";
  CK_OBJECT_CLASS data = CKO_DATA;
  CK_ATTRIBUTE dt[] = {{CKA_CLASS, &data, sizeof(data)}, {CKA_TOKEN, &yes, 1}, {CKA_LABEL, label.data(), label.size()},
                       {CKA_VALUE, value.data(), value.size()}};
  CK_OBJECT_HANDLE h;
  EXPECT_EQ(f->C_CreateObject(s, dt, 4, &h), CKR_TOKEN_WRITE_PROTECTED);
  EXPECT_EQ(f->C_DestroyObject(s, pub), CKR_TOKEN_WRITE_PROTECTED);
  CK_TOKEN_INFO ti;
  ASSERT_EQ(f->C_GetTokenInfo(0, &ti), CKR_OK);
  EXPECT_TRUE(ti.flags & CKF_WRITE_PROTECTED);
  // The CLI reads from the standby, and its writes fail clearly with a non-zero exit.
  const CliOutcome refused = Cli("b", {"secret", "set", "payments", "before-failover"}, "x");
  ASSERT_EQ(refused.exit_code, 1) << refused.out << refused.err;
  EXPECT_NE(refused.err.find("read-only"), std::string::npos) << refused.err;
  const CliOutcome listed = Cli("b", {"list"});
  EXPECT_EQ(listed.exit_code, 0) << listed.err;
  EXPECT_NE(listed.out.find("busy"), std::string::npos) << listed.out;
  // Another process logs in and signs from the standby too.
  EXPECT_EQ(OnHostB({"sign-ec", "busy"}, /*read_only=*/true), 0);
  // As the spec has it, a write-protected token refuses read/write sessions.
  EXPECT_NE(OnHostB({}), 0);
  CK_SESSION_HANDLE rw = CK_INVALID_HANDLE;
  EXPECT_EQ(f->C_OpenSession(0, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &rw), CKR_TOKEN_WRITE_PROTECTED);
  wait_for_signatures(10);

  ASSERT_TRUE(standby_->Promote(&why)) << why;
  EXPECT_EQ(f->C_CreateObject(s, dt, 4, &h), CKR_OK);
  ASSERT_EQ(f->C_GetTokenInfo(0, &ti), CKR_OK);
  EXPECT_FALSE(ti.flags & CKF_WRITE_PROTECTED);
  EXPECT_EQ(OnHostB({"expect-data", "during", "v"}), 0);
  wait_for_signatures(10);
  stop = true;
  loop.join();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_GE(signed_ok.load(), 30);
}

}  // namespace
}  // namespace vaultp11::testing

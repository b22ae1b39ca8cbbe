// Managed HSM pools through the module's function list, on real SoftHSMv2 tokens made for this
// binary (issue "Managed HSM pools", parts 3 and 4): the pool slot, `vaultp11 pool init` (the
// built CLI, run as a child process), keys generated on one member and copied to the others
// under the security domain, the quorum, and what a pool refuses.
#include <dlfcn.h>
#include <fcntl.h>
#include <pwd.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <nlohmann/json.hpp>

#include <cstring>
#include <map>
#include <set>
#include <fstream>
#include <sstream>

#include "audit/chain.h"
#include "fixture.h"
#include "softhsm_fixture.h"
#include "vaultp11/vaultp11.h"

extern char** environ;

namespace vaultp11::testing {
namespace {

constexpr char kPin[] = "5555";
constexpr char kSoPin[] = "so-5555";

const auto* const kEnv = ::testing::AddGlobalTestEnvironment(new SoftHsmEnvironment(
    {{"pool-a", kPin, kSoPin}, {"pool-b", kPin, kSoPin}, {"pool-c", kPin, kSoPin}, {"quorum-a", kPin, kSoPin},
     {"quorum-b", kPin, kSoPin}, {"fresh-a", kPin, kSoPin}, {"fresh-b", kPin, kSoPin}, {"solo", kPin, kSoPin},
     {"fo-a", kPin, kSoPin}, {"fo-b", kPin, kSoPin}, {"fo-c", kPin, kSoPin}, {"bk-a", kPin, kSoPin},
     {"bk-b", kPin, kSoPin}, {"bk-c", kPin, kSoPin}, {"bk-d", kPin, kSoPin}, {"vk-a", kPin, kSoPin}}));

// Slots: payments 0, archive 1, then the pools in config order.
constexpr CK_SLOT_ID kArchiveSlot = 1, kPoolSlot = 2, kQuorumSlot = 3, kFreshSlot = 4, kFailoverSlot = 5, kBackupSlot = 6,
                     kRestoreSlot = 7;
const char* const kFailoverMembers[] = {"fo-a", "fo-b", "fo-c"};

// The fault-injection module (tests/fixtures/fault_p11.cc) stands between the module and
// SoftHSM for the members of pool `fopool`: a file named after a token in FaultDir() makes that
// token fail. One directory for the whole binary (the module is loaded once per process).
const std::string& FaultDir() {
  static TempDir* dir = [] {
    auto* d = new TempDir();
    setenv("FAULT_P11_DIR", d->path().c_str(), 1);
    return d;
  }();
  return dir->path();
}
void SetFault(const std::string& token, const std::string& mode) { std::ofstream(FaultDir() + "/" + token) << mode << "\n"; }
void ClearFault(const std::string& token) { unlink((FaultDir() + "/" + token).c_str()); }

// Forwarded calls the fault module counted for `token` ("C_Sign", ...).
unsigned long FaultCount(const std::string& token, const char* function) {
  void* h = dlopen(std::getenv("VAULTP11_FAULT_MODULE"), RTLD_NOW | RTLD_NOLOAD);
  auto count = h ? reinterpret_cast<unsigned long (*)(const char*, const char*)>(dlsym(h, "fault_p11_count")) : nullptr;
  return count ? count(token.c_str(), function) : ~0UL;
}

// SoftHSM's own module, for looking at the members behind the pool's back.
CK_FUNCTION_LIST* SoftHsm() {
  void* h = dlopen(SoftHsmEnvironment::Instance()->module_path().c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) return nullptr;
  auto gfl = reinterpret_cast<CK_C_GetFunctionList>(dlsym(h, "C_GetFunctionList"));
  CK_FUNCTION_LIST* sh = nullptr;
  if (!gfl || gfl(&sh) != CKR_OK) return nullptr;
  CK_C_INITIALIZE_ARGS args{};
  args.flags = CKF_OS_LOCKING_OK;
  CK_RV rv = sh->C_Initialize(&args);
  if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) return nullptr;
  return sh;
}

// Opens a session on the SoftHSM token `label`, logged in as `user`.
CK_SESSION_HANDLE OpenOn(CK_FUNCTION_LIST* sh, const std::string& label, CK_USER_TYPE user) {
  CK_SLOT_ID slots[64];
  CK_ULONG n = 64;
  if (sh->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK) return CK_INVALID_HANDLE;
  for (CK_ULONG i = 0; i < n; ++i) {
    CK_TOKEN_INFO ti;
    sh->C_GetTokenInfo(slots[i], &ti);
    std::string l(reinterpret_cast<char*>(ti.label), 32);
    l.erase(l.find_last_not_of(' ') + 1);
    if (l != label) continue;
    CK_SESSION_HANDLE s;
    if (sh->C_OpenSession(slots[i], CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &s) != CKR_OK)
      return CK_INVALID_HANDLE;
    std::string pin = user == CKU_SO ? kSoPin : kPin;
    CK_RV rv = sh->C_Login(s, user, reinterpret_cast<CK_UTF8CHAR_PTR>(pin.data()), pin.size());
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
      sh->C_CloseSession(s);
      return CK_INVALID_HANDLE;
    }
    return s;
  }
  return CK_INVALID_HANDLE;
}

// Objects of class `cls` (and CKA_ID `id` when not empty) on SoftHSM token `label`; -1 on error.
int CountOn(const std::string& label, CK_OBJECT_CLASS cls, const std::vector<uint8_t>& id = {}) {
  CK_FUNCTION_LIST* sh = SoftHsm();
  if (!sh) return -1;
  CK_SESSION_HANDLE s = OpenOn(sh, label, CKU_USER);
  if (s == CK_INVALID_HANDLE) return -1;
  CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, const_cast<uint8_t*>(id.data()), id.size()}};
  sh->C_FindObjectsInit(s, t, id.empty() ? 1 : 2);
  CK_OBJECT_HANDLE found[64];
  CK_ULONG count = 0;
  sh->C_FindObjects(s, found, 64, &count);
  sh->C_FindObjectsFinal(s);
  sh->C_CloseSession(s);
  return static_cast<int>(count);
}

// Deletes the security-domain key of SoftHSM token `label` (as its SO).
bool DeleteDomain(const std::string& label) {
  CK_FUNCTION_LIST* sh = SoftHsm();
  if (!sh) return false;
  CK_SESSION_HANDLE s = OpenOn(sh, label, CKU_SO);
  if (s == CK_INVALID_HANDLE) return false;
  std::string id = "vaultp11-security-domain";
  CK_ATTRIBUTE t[] = {{CKA_ID, id.data(), id.size()}};
  sh->C_FindObjectsInit(s, t, 1);
  CK_OBJECT_HANDLE found[4];
  CK_ULONG count = 0;
  sh->C_FindObjects(s, found, 4, &count);
  sh->C_FindObjectsFinal(s);
  bool ok = count == 1 && sh->C_DestroyObject(s, found[0]) == CKR_OK;
  sh->C_Logout(s);
  sh->C_CloseSession(s);
  return ok;
}

struct CliRun {
  int status = -1;
  std::string output;  // stdout and stderr
};

class PoolTest : public AbiTest {
 protected:
  void SetUp() override {
    SoftHsmEnvironment* env = SoftHsmEnvironment::Instance();
    if (!env->available()) GTEST_SKIP() << env->skip_reason();
    f = Module();
    ASSERT_NE(f, nullptr);
    ASSERT_NE(std::getenv("VAULTP11_CLI"), nullptr);
    std::ofstream(dir.file("user.pin")) << kPin << "\n";
    std::ofstream(dir.file("so.pin")) << kSoPin << "\n";
    ASSERT_NE(std::getenv("VAULTP11_FAULT_MODULE"), nullptr);
    setenv("FAULT_P11_TARGET", SoftHsmEnvironment::Instance()->module_path().c_str(), 1);
    FaultDir();
    config_path = WritePoolConfig();
  }

  void TearDown() override {
    AbiTest::TearDown();
    for (const char* t : kFailoverMembers) ClearFault(t);
  }

  std::string WritePoolConfig(const std::string& extra_pools = "") {
    const std::string module = SoftHsmEnvironment::Instance()->module_path();
    std::string top = "hsms:\n";
    for (const char* t : {"pool-a", "pool-b", "pool-c", "quorum-a", "quorum-b", "fresh-a", "fresh-b", "solo", "bk-a",
                          "bk-b", "bk-c", "bk-d", "vk-a"})
      top += std::string("  - { name: ") + t + ", module: " + module + ", token: " + t + ", pin_file: " +
             dir.file("user.pin") + ", so_pin_file: " + dir.file("so.pin") + ", quirks: [no-deinit] }\n";
    for (const char* t : kFailoverMembers)
      top += std::string("  - { name: ") + t + ", module: " + std::getenv("VAULTP11_FAULT_MODULE") + ", token: " + t +
             ", pin_file: " + dir.file("user.pin") + ", so_pin_file: " + dir.file("so.pin") + ", quirks: [no-deinit] }\n";
    top += "managed_hsm_pools:\n"
           "  - { name: hsmpool, hsms: [pool-a, pool-b, pool-c] }\n"
           "  - { name: qpool, hsms: [quorum-a, quorum-b], quorum: 2 }\n"
           "  - { name: fresh, hsms: [fresh-a, fresh-b] }\n"
           "  - { name: fopool, hsms: [fo-a, fo-b, fo-c], health_check_ms: 20 }\n"
           "  - { name: bk1, hsms: [bk-a, bk-b] }\n"
           "  - { name: bk2, hsms: [bk-c, bk-d] }\n" +
           extra_pools;
    // The second vault is premium, its keys in vk-a.
    return WriteConfig(
        "  - { principal: app, role: Managed HSM Crypto User, scope: /managedHsms/hsmpool }\n"
        "  - { principal: app, role: Managed HSM Crypto User, scope: /managedHsms/qpool }\n"
        "  - { principal: app, role: Managed HSM Crypto User, scope: /managedHsms/fresh }\n"
        "  - { principal: app, role: Managed HSM Crypto User, scope: /managedHsms/fopool }\n"
        "  - { principal: app, role: Managed HSM Crypto User, scope: /managedHsms/bk1 }\n"
        "  - { principal: app, role: Managed HSM Crypto User, scope: /managedHsms/bk2 }\n"
        "  - { principal: norole, role: Managed HSM Administrator, scope: /managedHsms/hsmpool }\n"
        "  - { principal: app, role: Key Vault Administrator, scope: /vaults/archive }\n",
        top, "{ name: archive, sku: premium, hsms: [vk-a], default_protection: hsm }");
  }

  // Runs the built `vaultp11` CLI with `args` (stdin /dev/null: never a terminal).
  CliRun Cli(const std::vector<std::string>& args, const std::string& config) {
    std::vector<std::string> all = {std::getenv("VAULTP11_CLI"), "--config", config};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::string out = dir.file("cli.out");
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);
    pid_t pid;
    CliRun r;
    if (posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ) == 0) {
      int st = 0;
      waitpid(pid, &st, 0);
      r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    }
    posix_spawn_file_actions_destroy(&fa);
    std::stringstream ss;
    ss << std::ifstream(out).rdbuf();
    r.output = ss.str();
    return r;
  }

  void InitPool(const std::string& pool) {
    CliRun r = Cli({"pool", "init", pool}, config_path);
    ASSERT_EQ(r.status, 0) << r.output;
  }

  void Start() { ASSERT_EQ(InitWith(config_path), CKR_OK); }

  CK_RV GenPair(CK_SESSION_HANDLE s, CK_MECHANISM_TYPE mt, const std::string& label, CK_OBJECT_HANDLE* pub,
                CK_OBJECT_HANDLE* priv, CK_ULONG protection = 0) {
    CK_BBOOL t = CK_TRUE;
    CK_ULONG bits = 2048;
    CK_MECHANISM m{mt, nullptr, 0};
    std::vector<CK_ATTRIBUTE> pt = {{CKA_TOKEN, &t, 1}, {CKA_VERIFY, &t, 1},
                                    {CKA_LABEL, const_cast<char*>(label.data()), label.size()}};
    std::vector<CK_ATTRIBUTE> vt = {{CKA_TOKEN, &t, 1}, {CKA_PRIVATE, &t, 1}, {CKA_SENSITIVE, &t, 1},
                                    {CKA_SIGN, &t, 1}, {CKA_LABEL, const_cast<char*>(label.data()), label.size()}};
    if (mt == CKM_RSA_PKCS_KEY_PAIR_GEN)
      pt.push_back({CKA_MODULUS_BITS, &bits, sizeof(bits)});
    else
      pt.push_back({CKA_EC_PARAMS, const_cast<uint8_t*>(kP256.data()), kP256.size()});
    if (protection != 0) vt.push_back({CKA_VAULTP11_PROTECTION, &protection, sizeof(protection)});
    return f->C_GenerateKeyPair(s, &m, pt.data(), pt.size(), vt.data(), vt.size(), pub, priv);
  }

  CK_RV GenPoolAes(CK_SESSION_HANDLE s, CK_ULONG bytes, const std::string& label, CK_OBJECT_HANDLE* out) {
    CK_BBOOL t = CK_TRUE;
    CK_MECHANISM m{CKM_AES_KEY_GEN, nullptr, 0};
    CK_ATTRIBUTE a[] = {{CKA_TOKEN, &t, 1},        {CKA_ENCRYPT, &t, 1}, {CKA_DECRYPT, &t, 1},
                        {CKA_VALUE_LEN, &bytes, sizeof(bytes)},
                        {CKA_LABEL, const_cast<char*>(label.data()), label.size()}};
    return f->C_GenerateKey(s, &m, a, 5, out);
  }

  std::vector<uint8_t> InnerId(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o) { return GetAttr(s, o, CKA_VAULTP11_HSM_KEY_ID); }

  // The slot description ends in "(n/3 HSMs up)" while members are out of service.
  std::string SlotDescription(CK_SLOT_ID slot) {
    CK_SLOT_INFO si;
    if (f->C_GetSlotInfo(slot, &si) != CKR_OK) return "";
    std::string d(reinterpret_cast<char*>(si.slotDescription), sizeof(si.slotDescription));
    return d.erase(d.find_last_not_of(' ') + 1);
  }
  // Blocks on C_WaitForSlotEvent until `slot` reports `want` (a member is back in service only
  // once the keys it missed are on it, so the description changes after the copies).
  void WaitForDescription(CK_SLOT_ID slot, const std::string& want) {
    while (SlotDescription(slot) != want) {
      CK_SLOT_ID ev = 0;
      ASSERT_EQ(f->C_WaitForSlotEvent(0, &ev, nullptr), CKR_OK);
      EXPECT_EQ(ev, slot);
    }
  }

  // Signs `data` with a fresh operation on `s`; returns the CK_RV of the first failing call.
  CK_RV TrySign(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, const std::vector<uint8_t>& data, std::vector<uint8_t>* sig) {
    CK_MECHANISM m{CKM_ECDSA_SHA256, nullptr, 0};
    CK_RV rv = f->C_SignInit(s, &m, key);
    if (rv != CKR_OK) return rv;
    sig->assign(64, 0);
    CK_ULONG n = sig->size();
    rv = f->C_Sign(s, const_cast<uint8_t*>(data.data()), data.size(), sig->data(), &n);
    sig->resize(n);
    return rv;
  }

  unsigned long SignsOn(const char* member) { return FaultCount(member, "C_Sign"); }
};

const std::string kFailoverUp = "vaultp11 managed HSM pool fopool";

TEST_F(PoolTest, PoolSlotFollowsTheVaults) {
  Start();
  CK_ULONG n = 0;
  ASSERT_EQ(f->C_GetSlotList(CK_TRUE, nullptr, &n), CKR_OK);
  EXPECT_EQ(n, 8u);
  CK_TOKEN_INFO ti;
  ASSERT_EQ(f->C_GetTokenInfo(kPoolSlot, &ti), CKR_OK);
  EXPECT_EQ(std::string(reinterpret_cast<char*>(ti.label), 7), "hsmpool");
  EXPECT_EQ(std::string(reinterpret_cast<char*>(ti.model), 16), "managed HSM pool");
  CK_TOKEN_INFO again;
  ASSERT_EQ(f->C_GetTokenInfo(kPoolSlot, &again), CKR_OK);
  EXPECT_EQ(std::memcmp(ti.serialNumber, again.serialNumber, 16), 0);
  // A pool neither wraps nor unwraps: no such mechanism or flag is offered.
  CK_ULONG mn = 0;
  ASSERT_EQ(f->C_GetMechanismList(kPoolSlot, nullptr, &mn), CKR_OK);
  std::vector<CK_MECHANISM_TYPE> mechs(mn);
  ASSERT_EQ(f->C_GetMechanismList(kPoolSlot, mechs.data(), &mn), CKR_OK);
  EXPECT_GT(mn, 10u);
  for (CK_MECHANISM_TYPE m : mechs) {
    CK_MECHANISM_INFO mi;
    ASSERT_EQ(f->C_GetMechanismInfo(kPoolSlot, m, &mi), CKR_OK);
    EXPECT_EQ(mi.flags & (CKF_WRAP | CKF_UNWRAP), 0u) << std::hex << m;
    EXPECT_NE(m, static_cast<CK_MECHANISM_TYPE>(CKM_AES_KEY_WRAP_PAD));
  }
  CK_MECHANISM_INFO kwp;
  EXPECT_EQ(f->C_GetMechanismInfo(kPoolSlot, CKM_AES_KEY_WRAP_PAD, &kwp), CKR_MECHANISM_INVALID);
  EXPECT_EQ(f->C_GetMechanismInfo(0, CKM_AES_KEY_WRAP_PAD, &kwp), CKR_OK);
  CK_SLOT_INFO si;
  ASSERT_EQ(f->C_GetSlotInfo(kQuorumSlot, &si), CKR_OK);
  EXPECT_EQ(std::string(reinterpret_cast<char*>(si.slotDescription), 31), "vaultp11 managed HSM pool qpool");
}

// Forks while pool health checks run (fopool probes its members every 20 ms): the module's
// prepare handler lets each fork wait for a pass in progress, so the children (which then
// initialise their own module, pools included) never inherit a health thread mid-pass (issue
// 16 item 13; README "PKCS#11 conformance notes"). The forks happen in abi_child, started by
// fork + exec, whose only other threads are the module's.
TEST_F(PoolTest, ForksWhileHealthChecksRunGiveWorkingChildren) {
  std::vector<std::string> steps = {"init", "0", "open-ro"};
  for (int i = 0; i < 10; ++i) steps.push_back("fork-check");
  steps.insert(steps.end(), {"finalize", "0"});
  EXPECT_EQ(RunChild(steps), 0);
}

TEST_F(PoolTest, PoolInitIsIdempotentAndRefusesMismatchedDomains) {
  InitPool("hsmpool");
  CliRun again = Cli({"pool", "init", "hsmpool"}, config_path);
  EXPECT_EQ(again.status, 0) << again.output;
  EXPECT_NE(again.output.find("already on all 3 members"), std::string::npos) << again.output;
  for (const char* t : {"pool-a", "pool-b", "pool-c"}) EXPECT_EQ(CountOn(t, CKO_SECRET_KEY), 1) << t;
  // A member with a domain and one without: refused, nothing written to the one without.
  std::string cfg = WritePoolConfig("  - { name: half, hsms: [pool-a, fresh-b] }\n  - { name: other, hsms: [solo] }\n"
                                    "  - { name: clash, hsms: [solo, pool-b] }\n");
  CliRun half = Cli({"pool", "init", "half"}, cfg);
  EXPECT_EQ(half.status, 1) << half.output;
  EXPECT_NE(half.output.find("nothing changed"), std::string::npos) << half.output;
  EXPECT_EQ(CountOn("fresh-b", CKO_SECRET_KEY), 0);
  // Two different domains: refused.
  CliRun other = Cli({"pool", "init", "other"}, cfg);
  ASSERT_EQ(other.status, 0) << other.output;
  CliRun clash = Cli({"pool", "init", "clash"}, cfg);
  EXPECT_EQ(clash.status, 1) << clash.output;
  EXPECT_NE(clash.output.find("different security domain"), std::string::npos) << clash.output;
  CliRun unknown = Cli({"pool", "init", "nope"}, cfg);
  EXPECT_EQ(unknown.status, 1) << unknown.output;

  // The audit log beside the store: one "SecurityDomainInit" per change or refusal (none for
  // a run that found the domain everywhere already), under the operator's OS identity.
  const passwd* pw = getpwuid(getuid());
  const std::string op = "os:" + (pw ? std::string(pw->pw_name) : std::to_string(getuid()));
  std::map<std::string, std::vector<nlohmann::json>> inits;  // by pool (or vault) name
  std::ifstream log(dir.file("audit.log"));
  for (std::string line; std::getline(log, line);) {
    auto e = nlohmann::json::parse(line);
    if (e["operationName"] != "SecurityDomainInit") continue;
    EXPECT_EQ(e["identity"]["principal"], op) << e.dump();
    EXPECT_EQ(e["identity"]["authMethod"], "os-user");
    EXPECT_EQ(e["caller"]["uid"], getuid());
    inits[e["properties"].value("pool", e["properties"].value("vault", ""))].push_back(e);
  }
  // hsmpool: once at most (an earlier test may have installed its domain: the tokens outlive a test).
  ASSERT_LE(inits["hsmpool"].size(), 1u);
  for (const auto& e : inits["hsmpool"]) {
    EXPECT_EQ(e["resultType"], "Success");
    EXPECT_EQ(e["properties"]["hsms"], nlohmann::json::array({"pool-a", "pool-b", "pool-c"}));
    EXPECT_EQ(e["properties"]["checkValue"].get<std::string>().size(), 6u);
  }
  ASSERT_EQ(inits["half"].size(), 1u);
  EXPECT_EQ(inits["half"][0]["resultType"], "Failure");
  EXPECT_NE(inits["half"][0]["resultDescription"].get<std::string>().find("nothing changed"), std::string::npos);
  EXPECT_EQ(inits["half"][0]["properties"]["hsms"], nlohmann::json::array({"pool-a", "fresh-b"}));
  ASSERT_LE(inits["other"].size(), 1u);
  for (const auto& e : inits["other"]) EXPECT_EQ(e["resultType"], "Success");
  ASSERT_EQ(inits["clash"].size(), 1u);
  EXPECT_NE(inits["clash"][0]["resultDescription"].get<std::string>().find("different security domain"),
            std::string::npos);
  ASSERT_EQ(inits["nope"].size(), 1u);
  EXPECT_EQ(inits["nope"][0]["resultType"], "Failure");
  auto chain = audit::VerifyFile(dir.file("audit.log"));
  ASSERT_TRUE(chain.ok());
  EXPECT_TRUE(chain->intact) << chain->problem;
}

TEST_F(PoolTest, KeysAreGeneratedOnOneMemberAndCopiedToAll) {
  InitPool("hsmpool");
  Start();
  CK_SESSION_HANDLE s = LoggedInRw(kPoolSlot);
  CK_OBJECT_HANDLE rsa_pub, rsa_priv, ec_pub, ec_priv;
  ASSERT_EQ(GenPair(s, CKM_RSA_PKCS_KEY_PAIR_GEN, "pool-rsa", &rsa_pub, &rsa_priv), CKR_OK);
  ASSERT_EQ(GenPair(s, CKM_EC_KEY_PAIR_GEN, "pool-ec", &ec_pub, &ec_priv), CKR_OK);
  std::vector<CK_OBJECT_HANDLE> aes;
  for (CK_ULONG bytes : {16, 24, 32}) {
    CK_OBJECT_HANDLE k;
    ASSERT_EQ(GenPoolAes(s, bytes, "pool-aes-" + std::to_string(bytes), &k), CKR_OK);
    aes.push_back(k);
  }
  for (CK_OBJECT_HANDLE k : {rsa_priv, ec_priv}) {
    auto id = InnerId(s, k);
    ASSERT_EQ(id.size(), 16u);
    for (const char* t : {"pool-a", "pool-b", "pool-c"}) {
      EXPECT_EQ(CountOn(t, CKO_PRIVATE_KEY, id), 1) << t;
      EXPECT_EQ(CountOn(t, CKO_PUBLIC_KEY, id), 1) << t;
    }
    EXPECT_TRUE(GetBool(s, k, CKA_SENSITIVE));
    EXPECT_FALSE(GetBool(s, k, CKA_EXTRACTABLE));
  }
  for (CK_OBJECT_HANDLE k : aes) {
    auto id = InnerId(s, k);
    ASSERT_EQ(id.size(), 16u);
    for (const char* t : {"pool-a", "pool-b", "pool-c"}) EXPECT_EQ(CountOn(t, CKO_SECRET_KEY, id), 1) << t;
  }
  // Sign in the pool, verify with the public key.
  auto data = Bytes("signed by a pool member");
  CK_MECHANISM rm{CKM_SHA256_RSA_PKCS, nullptr, 0};
  auto rsig = Sign(s, rm, rsa_priv, data);
  EXPECT_EQ(rsig.size(), 256u);
  EXPECT_EQ(Verify(s, rm, rsa_pub, data, rsig), CKR_OK);
  CK_MECHANISM em{CKM_ECDSA_SHA256, nullptr, 0};
  auto esig = Sign(s, em, ec_priv, data);
  EXPECT_EQ(esig.size(), 64u);
  EXPECT_EQ(Verify(s, em, ec_pub, data, esig), CKR_OK);
  // AES round trip in the pool.
  for (CK_OBJECT_HANDLE k : aes) {
    uint8_t iv[16] = {1, 2, 3};
    CK_MECHANISM am{CKM_AES_CBC_PAD, iv, sizeof(iv)};
    auto plain = Bytes("pool AES round trip, longer than a block");
    ASSERT_EQ(f->C_EncryptInit(s, &am, k), CKR_OK);
    CK_ULONG n = 0;
    ASSERT_EQ(f->C_Encrypt(s, plain.data(), plain.size(), nullptr, &n), CKR_OK);
    std::vector<uint8_t> ct(n);
    ASSERT_EQ(f->C_Encrypt(s, plain.data(), plain.size(), ct.data(), &n), CKR_OK);
    ct.resize(n);
    EXPECT_EQ(ct.size(), 48u);
    ASSERT_EQ(f->C_DecryptInit(s, &am, k), CKR_OK);
    n = 0;
    ASSERT_EQ(f->C_Decrypt(s, ct.data(), ct.size(), nullptr, &n), CKR_OK);
    std::vector<uint8_t> back(n);
    ASSERT_EQ(f->C_Decrypt(s, ct.data(), ct.size(), back.data(), &n), CKR_OK);
    back.resize(n);
    EXPECT_EQ(back, plain);
  }
  // Destroying a pool key removes every copy.
  auto rid = InnerId(s, rsa_priv);
  EXPECT_EQ(f->C_DestroyObject(s, rsa_priv), CKR_OK);
  for (const char* t : {"pool-a", "pool-b", "pool-c"}) EXPECT_EQ(CountOn(t, CKO_PRIVATE_KEY, rid), 0) << t;
}

TEST_F(PoolTest, PoolRefusesSoftwareKeysSecretsAndImports) {
  InitPool("hsmpool");
  Start();
  CK_SESSION_HANDLE s = LoggedInRw(kPoolSlot);
  CK_OBJECT_HANDLE pub, priv;
  EXPECT_EQ(GenPair(s, CKM_EC_KEY_PAIR_GEN, "soft", &pub, &priv, VAULTP11_PROTECTION_SOFTWARE),
            CKR_ATTRIBUTE_VALUE_INVALID);
  CK_OBJECT_CLASS data = CKO_DATA, secret = CKO_SECRET_KEY;
  CK_KEY_TYPE aes = CKK_AES;
  CK_BBOOL t = CK_TRUE;
  std::string label = "s", value = "value";
  CK_ATTRIBUTE d[] = {{CKA_CLASS, &data, sizeof(data)}, {CKA_TOKEN, &t, 1},
                      {CKA_LABEL, label.data(), label.size()}, {CKA_VALUE, value.data(), value.size()}};
  CK_OBJECT_HANDLE o;
  EXPECT_EQ(f->C_CreateObject(s, d, 4, &o), CKR_ATTRIBUTE_VALUE_INVALID);
  uint8_t key[16] = {0};
  CK_ATTRIBUTE k[] = {{CKA_CLASS, &secret, sizeof(secret)}, {CKA_KEY_TYPE, &aes, sizeof(aes)},
                      {CKA_TOKEN, &t, 1}, {CKA_VALUE, key, sizeof(key)}};
  EXPECT_EQ(f->C_CreateObject(s, k, 4, &o), CKR_ATTRIBUTE_VALUE_INVALID);
  // The Administrator role does not use keys.
  CK_SESSION_HANDLE admin = OpenRw(kPoolSlot);
  ASSERT_EQ(f->C_Logout(s), CKR_OK);
  ASSERT_EQ(Login(admin, kNoRolePin), CKR_OK);
  EXPECT_EQ(GenPair(admin, CKM_EC_KEY_PAIR_GEN, "admin-ec", &pub, &priv), CKR_ACTION_PROHIBITED);
}

TEST_F(PoolTest, KeyCreationNeedsTheSecurityDomain) {
  Start();
  CK_SESSION_HANDLE s = LoggedInRw(kFreshSlot);
  CK_OBJECT_HANDLE pub, priv, k;
  EXPECT_EQ(GenPair(s, CKM_EC_KEY_PAIR_GEN, "early", &pub, &priv), CKR_FUNCTION_FAILED);
  EXPECT_EQ(GenPoolAes(s, 32, "early-aes", &k), CKR_FUNCTION_FAILED);
  for (const char* t : {"fresh-a", "fresh-b"}) {
    EXPECT_EQ(CountOn(t, CKO_PRIVATE_KEY), 0) << t;
    EXPECT_EQ(CountOn(t, CKO_SECRET_KEY), 0) << t;
  }
}

TEST_F(PoolTest, QuorumNotReachedLeavesNoCopy) {
  InitPool("qpool");
  ASSERT_TRUE(DeleteDomain("quorum-b"));
  Start();
  CK_SESSION_HANDLE s = LoggedInRw(kQuorumSlot);
  CK_OBJECT_HANDLE pub, priv, k;
  EXPECT_EQ(GenPair(s, CKM_RSA_PKCS_KEY_PAIR_GEN, "q-rsa", &pub, &priv), CKR_DEVICE_ERROR);
  EXPECT_EQ(GenPoolAes(s, 32, "q-aes", &k), CKR_DEVICE_ERROR);
  for (const char* t : {"quorum-a", "quorum-b"}) {
    EXPECT_EQ(CountOn(t, CKO_PRIVATE_KEY), 0) << t;
    EXPECT_EQ(CountOn(t, CKO_PUBLIC_KEY), 0) << t;
  }
  EXPECT_EQ(CountOn("quorum-a", CKO_SECRET_KEY), 1);  // the domain key only
  EXPECT_EQ(CountOn("quorum-b", CKO_SECRET_KEY), 0);
  EXPECT_TRUE(FindByLabel(s, "q-rsa").empty());
  EXPECT_TRUE(FindByLabel(s, "q-aes").empty());
}


// Balancing: operations in progress at once go to different members (least outstanding).
TEST_F(PoolTest, OperationsAreSpreadOverMembers) {
  InitPool("fopool");
  Start();
  CK_SESSION_HANDLE s[3] = {LoggedInRw(kFailoverSlot), OpenRw(kFailoverSlot), OpenRw(kFailoverSlot)};
  CK_OBJECT_HANDLE pub, priv;
  ASSERT_EQ(GenPair(s[0], CKM_EC_KEY_PAIR_GEN, "spread", &pub, &priv), CKR_OK);
  unsigned long before[3];
  for (int i = 0; i < 3; ++i) before[i] = SignsOn(kFailoverMembers[i]);
  CK_MECHANISM m{CKM_ECDSA_SHA256, nullptr, 0};
  for (auto x : s) ASSERT_EQ(f->C_SignInit(x, &m, priv), CKR_OK);
  auto data = Bytes("spread over members");
  for (auto x : s) {
    uint8_t sig[64];
    CK_ULONG n = sizeof(sig);
    ASSERT_EQ(f->C_Sign(x, data.data(), data.size(), sig, &n), CKR_OK);
    EXPECT_EQ(Verify(x, m, pub, data, std::vector<uint8_t>(sig, sig + n)), CKR_OK);
  }
  for (int i = 0; i < 3; ++i) EXPECT_EQ(SignsOn(kFailoverMembers[i]), before[i] + 1) << kFailoverMembers[i];
  // The audit log names the pool and the member that served each signature.
  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  initialized = false;
  std::ifstream audit(dir.file("audit.log"));
  std::set<std::string> members;
  int signs = 0;
  for (std::string line; std::getline(audit, line);) {
    auto e = nlohmann::json::parse(line);
    if (e["operationName"] != "KeySign") continue;
    ++signs;
    EXPECT_EQ(e["properties"]["pool"], "fopool");
    EXPECT_EQ(e["properties"]["name"], "spread");
    members.insert(e["properties"].value("member", ""));
  }
  EXPECT_EQ(signs, 3);
  EXPECT_EQ(members, (std::set<std::string>{kFailoverMembers[0], kFailoverMembers[1], kFailoverMembers[2]}));
}

// A member killed in the middle of a signing loop, and operations in progress on members that
// die: the caller sees no failure; the members come back once they answer again.
TEST_F(PoolTest, MemberKilledMidLoopCausesNoFailedCall) {
  InitPool("fopool");
  Start();
  CK_SESSION_HANDLE s = LoggedInRw(kFailoverSlot);
  CK_OBJECT_HANDLE pub, priv;
  ASSERT_EQ(GenPair(s, CKM_EC_KEY_PAIR_GEN, "loop", &pub, &priv), CKR_OK);
  CK_MECHANISM m{CKM_ECDSA_SHA256, nullptr, 0};
  int failed = 0;
  unsigned long a_at_kill = 0;
  for (int i = 0; i < 300; ++i) {
    if (i == 100) {
      SetFault("fo-a", "fail");
      a_at_kill = SignsOn("fo-a");
    }
    auto data = Bytes("message " + std::to_string(i));
    std::vector<uint8_t> sig;
    CK_RV rv = TrySign(s, priv, data, &sig);
    if (rv != CKR_OK || Verify(s, m, pub, data, sig) != CKR_OK) ++failed;
  }
  EXPECT_EQ(failed, 0);
  EXPECT_EQ(SignsOn("fo-a"), a_at_kill);  // out of service since
  EXPECT_EQ(SlotDescription(kFailoverSlot), kFailoverUp + " (2/3 HSMs up)");

  // Operations already started on the members that die move to the survivor.
  ClearFault("fo-a");
  WaitForDescription(kFailoverSlot, kFailoverUp);
  CK_SESSION_HANDLE x[3];
  for (auto& h : x) {
    h = OpenRw(kFailoverSlot);
    ASSERT_EQ(f->C_SignInit(h, &m, priv), CKR_OK);  // one on each member
  }
  SetFault("fo-a", "fail");
  SetFault("fo-b", "removed");
  auto data = Bytes("in flight");
  unsigned long c_before = SignsOn("fo-c");
  for (auto h : x) {
    uint8_t sig[64];
    CK_ULONG n = sizeof(sig);
    ASSERT_EQ(f->C_Sign(h, data.data(), data.size(), sig, &n), CKR_OK);
    EXPECT_EQ(Verify(h, m, pub, data, std::vector<uint8_t>(sig, sig + n)), CKR_OK);
  }
  EXPECT_EQ(SignsOn("fo-c"), c_before + 3);
  // Multi-part input given before the failure is replayed on the next member.
  ClearFault("fo-a");
  ClearFault("fo-b");
  WaitForDescription(kFailoverSlot, kFailoverUp);
  for (auto h : x) ASSERT_EQ(f->C_SignInit(h, &m, priv), CKR_OK);
  for (auto h : x) ASSERT_EQ(f->C_SignUpdate(h, data.data(), 4), CKR_OK);
  SetFault("fo-c", "fail");
  SetFault("fo-b", "fail");
  for (auto h : x) {
    ASSERT_EQ(f->C_SignUpdate(h, data.data() + 4, data.size() - 4), CKR_OK);
    uint8_t sig[64];
    CK_ULONG n = sizeof(sig);
    ASSERT_EQ(f->C_SignFinal(h, sig, &n), CKR_OK);
    EXPECT_EQ(Verify(h, m, pub, data, std::vector<uint8_t>(sig, sig + n)), CKR_OK);
  }
}

// Every member down: CKR_DEVICE_ERROR, then service resumes by itself when one returns.
TEST_F(PoolTest, AllMembersDownThenRecover) {
  InitPool("fopool");
  Start();
  CK_SESSION_HANDLE s = LoggedInRw(kFailoverSlot);
  CK_OBJECT_HANDLE pub, priv;
  ASSERT_EQ(GenPair(s, CKM_EC_KEY_PAIR_GEN, "alldown", &pub, &priv), CKR_OK);
  for (const char* t : kFailoverMembers) SetFault(t, "fail");
  std::vector<uint8_t> sig;
  auto data = Bytes("nobody home");
  EXPECT_EQ(TrySign(s, priv, data, &sig), CKR_DEVICE_ERROR);
  EXPECT_EQ(TrySign(s, priv, data, &sig), CKR_DEVICE_ERROR);
  EXPECT_EQ(SlotDescription(kFailoverSlot), kFailoverUp + " (0/3 HSMs up)");
  CK_OBJECT_HANDLE p2, k2;
  EXPECT_EQ(GenPair(s, CKM_EC_KEY_PAIR_GEN, "alldown-2", &p2, &k2), CKR_DEVICE_ERROR);
  ClearFault("fo-b");
  WaitForDescription(kFailoverSlot, kFailoverUp + " (1/3 HSMs up)");
  ASSERT_EQ(TrySign(s, priv, data, &sig), CKR_OK);
  CK_MECHANISM m{CKM_ECDSA_SHA256, nullptr, 0};
  EXPECT_EQ(Verify(s, m, pub, data, sig), CKR_OK);
}

// A key made while a member is down is copied to it before it serves again.
TEST_F(PoolTest, KeyCreatedWhileMemberDownReachesItWhenItReturns) {
  InitPool("fopool");
  Start();
  CK_SESSION_HANDLE s = LoggedInRw(kFailoverSlot);
  SetFault("fo-c", "fail");
  CK_OBJECT_HANDLE pub, priv, aes;
  ASSERT_EQ(GenPair(s, CKM_RSA_PKCS_KEY_PAIR_GEN, "missed", &pub, &priv), CKR_OK);
  ASSERT_EQ(GenPoolAes(s, 32, "missed-aes", &aes), CKR_OK);
  auto id = InnerId(s, priv), aes_id = InnerId(s, aes);
  EXPECT_EQ(CountOn("fo-c", CKO_PRIVATE_KEY, id), 0);
  EXPECT_EQ(CountOn("fo-a", CKO_PRIVATE_KEY, id), 1);
  EXPECT_EQ(CountOn("fo-b", CKO_PRIVATE_KEY, id), 1);
  ClearFault("fo-c");
  WaitForDescription(kFailoverSlot, kFailoverUp);
  EXPECT_EQ(CountOn("fo-c", CKO_PRIVATE_KEY, id), 1);
  EXPECT_EQ(CountOn("fo-c", CKO_PUBLIC_KEY, id), 1);
  EXPECT_EQ(CountOn("fo-c", CKO_SECRET_KEY, aes_id), 1);
  // It serves the key alone.
  SetFault("fo-a", "fail");
  SetFault("fo-b", "fail");
  auto data = Bytes("served by the member that came back");
  CK_MECHANISM m{CKM_SHA256_RSA_PKCS, nullptr, 0};
  auto sig = Sign(s, m, priv, data);
  EXPECT_EQ(Verify(s, m, pub, data, sig), CKR_OK);
}


// Backup and restore: pools initialised together share a security domain; a key backed up from
// one restores into the other and works there; another domain, a modified file and a second
// restore are refused with nothing changed.
TEST_F(PoolTest, BackupRestoresIntoAPoolWithTheSameDomainOnly) {
  CliRun init = Cli({"pool", "init", "bk1", "bk2", "archive"}, config_path);
  ASSERT_EQ(init.status, 0) << init.output;
  InitPool("hsmpool");
  Start();
  CK_SESSION_HANDLE s = LoggedInRw(kBackupSlot);
  CK_OBJECT_HANDLE pub, priv, aes;
  ASSERT_EQ(GenPair(s, CKM_EC_KEY_PAIR_GEN, "traveller", &pub, &priv), CKR_OK);
  ASSERT_EQ(GenPoolAes(s, 32, "traveller-aes", &aes), CKR_OK);
  auto id = InnerId(s, priv), aes_id = InnerId(s, aes);
  auto point = GetAttr(s, pub, CKA_EC_POINT);
  auto traveller_id = GetAttr(s, priv, CKA_ID);
  uint8_t iv[16] = {9};
  CK_MECHANISM cbc{CKM_AES_CBC_PAD, iv, sizeof(iv)};
  auto plain = Bytes("encrypted in bk1, decrypted in bk2");
  ASSERT_EQ(f->C_EncryptInit(s, &cbc, aes), CKR_OK);
  std::vector<uint8_t> ct(64);
  CK_ULONG n = ct.size();
  ASSERT_EQ(f->C_Encrypt(s, plain.data(), plain.size(), ct.data(), &n), CKR_OK);
  ct.resize(n);
  // A premium vault whose HSM holds the domain: its keys back up too.
  CK_SESSION_HANDLE v = LoggedInRw(kArchiveSlot);
  CK_OBJECT_HANDLE vpub, vpriv;
  ASSERT_EQ(GenPair(v, CKM_RSA_PKCS_KEY_PAIR_GEN, "vault-key", &vpub, &vpriv), CKR_OK);
  EXPECT_FALSE(GetBool(v, vpriv, CKA_EXTRACTABLE));
  auto vmod = GetAttr(v, vpub, CKA_MODULUS);
  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  initialized = false;

  std::string vfile = dir.file("vault-key.backup");
  CliRun vb = Cli({"backup", "archive", "vault-key", vfile}, config_path);
  ASSERT_EQ(vb.status, 0) << vb.output;
  CliRun vr = Cli({"restore", "bk2", vfile}, config_path);
  ASSERT_EQ(vr.status, 0) << vr.output;

  std::string file = dir.file("traveller.backup"), aes_file = dir.file("traveller-aes.backup");
  CliRun b = Cli({"backup", "bk1", "traveller", file}, config_path);
  ASSERT_EQ(b.status, 0) << b.output;
  struct stat sb;
  ASSERT_EQ(stat(file.c_str(), &sb), 0);
  EXPECT_EQ(sb.st_mode & 0777, 0600u);
  EXPECT_EQ(Cli({"backup", "bk1", "traveller", file}, config_path).status, 1);  // never overwritten
  ASSERT_EQ(Cli({"backup", "bk1", "traveller-aes", aes_file}, config_path).status, 0);
  EXPECT_EQ(Cli({"backup", "bk1", "nothing", dir.file("x")}, config_path).status, 1);
  CliRun vault = Cli({"backup", "payments", "traveller", dir.file("y")}, config_path);
  EXPECT_EQ(vault.status, 1);
  EXPECT_NE(vault.output.find("has no item named"), std::string::npos) << vault.output;

  // Another domain: refused, nothing on its members.
  CliRun other = Cli({"restore", "hsmpool", file}, config_path);
  EXPECT_EQ(other.status, 1) << other.output;
  EXPECT_NE(other.output.find("another security domain"), std::string::npos) << other.output;
  for (const char* t : {"pool-a", "pool-b", "pool-c"}) EXPECT_EQ(CountOn(t, CKO_PRIVATE_KEY, id), 0) << t;
  // A modified file (the name changed, so nothing else would stop it): refused.
  std::stringstream text;
  text << std::ifstream(file).rdbuf();
  std::string forged = text.str();
  size_t at = forged.find("\"traveller\"");
  ASSERT_NE(at, std::string::npos);
  forged.replace(at, 11, "\"travellex\"");
  std::string forged_file = dir.file("forged.backup");
  std::ofstream(forged_file) << forged;
  CliRun tampered = Cli({"restore", "bk2", forged_file}, config_path);
  EXPECT_EQ(tampered.status, 1) << tampered.output;
  EXPECT_NE(tampered.output.find("modified"), std::string::npos) << tampered.output;
  std::ofstream(dir.file("junk.backup")) << "{\"format\": 5}";
  EXPECT_EQ(Cli({"restore", "bk2", dir.file("junk.backup")}, config_path).status, 1);
  for (const char* t : {"bk-c", "bk-d"}) EXPECT_EQ(CountOn(t, CKO_PRIVATE_KEY, id), 0) << t;

  // The real thing, once.
  CliRun r = Cli({"restore", "bk2", file}, config_path);
  ASSERT_EQ(r.status, 0) << r.output;
  ASSERT_EQ(Cli({"restore", "bk2", aes_file}, config_path).status, 0);
  CliRun again = Cli({"restore", "bk2", file}, config_path);
  EXPECT_EQ(again.status, 1) << again.output;
  EXPECT_NE(again.output.find("already has a key named"), std::string::npos) << again.output;
  for (const char* t : {"bk-c", "bk-d"}) {
    EXPECT_EQ(CountOn(t, CKO_PRIVATE_KEY, id), 1) << t;
    EXPECT_EQ(CountOn(t, CKO_PUBLIC_KEY, id), 1) << t;
    EXPECT_EQ(CountOn(t, CKO_SECRET_KEY, aes_id), 1) << t;
  }

  // bk2 serves the restored keys: same public key, signatures that verify, the same AES key.
  Start();
  CK_SESSION_HANDLE s2 = LoggedInRw(kRestoreSlot);
  auto found = FindByLabel(s2, "traveller");
  ASSERT_EQ(found.size(), 2u);
  CK_OBJECT_HANDLE rpub = CK_INVALID_HANDLE, rpriv = CK_INVALID_HANDLE;
  for (CK_OBJECT_HANDLE o : found) {
    auto cls = GetAttr(s2, o, CKA_CLASS);
    CK_OBJECT_CLASS c;
    std::memcpy(&c, cls.data(), sizeof(c));
    (c == CKO_PRIVATE_KEY ? rpriv : rpub) = o;
  }
  ASSERT_NE(rpriv, CK_INVALID_HANDLE);
  EXPECT_EQ(GetAttr(s2, rpub, CKA_EC_POINT), point);
  CK_MECHANISM em{CKM_ECDSA_SHA256, nullptr, 0};
  auto data = Bytes("signed after restore");
  auto sig = Sign(s2, em, rpriv, data);
  EXPECT_EQ(Verify(s2, em, rpub, data, sig), CKR_OK);
  auto raes = FindByLabel(s2, "traveller-aes");
  ASSERT_EQ(raes.size(), 1u);
  ASSERT_EQ(f->C_DecryptInit(s2, &cbc, raes[0]), CKR_OK);
  std::vector<uint8_t> back(64);
  n = back.size();
  ASSERT_EQ(f->C_Decrypt(s2, ct.data(), ct.size(), back.data(), &n), CKR_OK);
  back.resize(n);
  EXPECT_EQ(back, plain);
  // The vault's key, now in bk2 too.
  auto vk = FindByLabel(s2, "vault-key");
  ASSERT_EQ(vk.size(), 2u);
  CK_MECHANISM pss_less{CKM_SHA256_RSA_PKCS, nullptr, 0};
  for (CK_OBJECT_HANDLE o : vk) {
    if (GetAttr(s2, o, CKA_MODULUS) != vmod) ADD_FAILURE() << "modulus differs";
    std::vector<uint8_t> c = GetAttr(s2, o, CKA_CLASS);
    CK_OBJECT_CLASS cls;
    std::memcpy(&cls, c.data(), sizeof(cls));
    if (cls != CKO_PRIVATE_KEY) continue;
    auto vsig = Sign(s2, pss_less, o, data);
    CK_SESSION_HANDLE vs = OpenRw(kArchiveSlot);
    ASSERT_EQ(Login(vs), CKR_OK);
    auto orig = FindByLabel(vs, "vault-key");
    int verified = 0;
    for (CK_OBJECT_HANDLE p : orig) verified += Verify(vs, pss_less, p, data, vsig) == CKR_OK;
    EXPECT_EQ(verified, 1);  // by the vault's own public key
  }

  // The audit log: the domain installed on the three together, then every backup and restore
  // above, refused ones included, each under the operator's OS identity.
  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  initialized = false;
  const passwd* pw = getpwuid(getuid());
  const std::string op = "os:" + (pw ? std::string(pw->pw_name) : std::to_string(getuid()));
  std::vector<nlohmann::json> inits, backups, restores;
  {
    std::ifstream log(dir.file("audit.log"));
    for (std::string line; std::getline(log, line);) {
      auto e = nlohmann::json::parse(line);
      std::vector<nlohmann::json>* to = e["operationName"] == "SecurityDomainInit" ? &inits
                                        : e["operationName"] == "KeyBackup"        ? &backups
                                        : e["operationName"] == "KeyRestore"       ? &restores
                                                                                   : nullptr;
      if (to == nullptr) continue;
      EXPECT_EQ(e["identity"]["principal"], op) << e.dump();
      EXPECT_EQ(e["identity"]["authMethod"], "os-user");
      EXPECT_EQ(e["caller"]["uid"], getuid());
      to->push_back(e);
    }
  }
  auto props = [](const nlohmann::json& e, const char* key) { return e["properties"].value(key, std::string("-")); };
  // bk1, bk2 and archive together; then hsmpool, unless an earlier test installed its domain
  // (the tokens outlive a test), which changes nothing and is not recorded.
  ASSERT_GE(inits.size(), 3u);
  ASSERT_LE(inits.size(), 4u);
  EXPECT_EQ(props(inits[0], "pool"), "bk1");
  EXPECT_EQ(inits[0]["properties"]["hsms"], nlohmann::json::array({"bk-a", "bk-b"}));
  EXPECT_EQ(inits[0]["properties"]["sharedWith"], nlohmann::json::array({"bk2", "archive"}));
  EXPECT_EQ(props(inits[1], "pool"), "bk2");
  EXPECT_EQ(props(inits[2], "vault"), "archive");
  EXPECT_EQ(inits[2]["properties"]["hsms"], nlohmann::json::array({"vk-a"}));
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(inits[i]["resultType"], "Success");
    EXPECT_EQ(props(inits[i], "checkValue"), props(inits[0], "checkValue"));
  }
  if (inits.size() == 4) {
    EXPECT_EQ(props(inits[3], "pool"), "hsmpool");
    EXPECT_NE(props(inits[3], "checkValue"), props(inits[0], "checkValue"));
  }

  ASSERT_EQ(backups.size(), 6u);
  const char* const backup_results[] = {"Success", "Success", "Failure", "Success", "Failure", "Failure"};
  for (size_t i = 0; i < backups.size(); ++i) EXPECT_EQ(backups[i]["resultType"], backup_results[i]) << i;
  EXPECT_EQ(props(backups[0], "vault"), "archive");
  EXPECT_EQ(props(backups[0], "name"), "vault-key");
  EXPECT_EQ(props(backups[0], "file"), vfile);
  EXPECT_EQ(props(backups[1], "pool"), "bk1");
  EXPECT_EQ(props(backups[1], "name"), "traveller");
  EXPECT_EQ(props(backups[1], "file"), file);
  EXPECT_NE(backups[2]["resultDescription"].get<std::string>().find(file), std::string::npos);  // exists already
  EXPECT_EQ(props(backups[4], "name"), "nothing");
  EXPECT_EQ(props(backups[5], "vault"), "payments");
  EXPECT_NE(backups[5]["resultDescription"].get<std::string>().find("has no item named"), std::string::npos);

  ASSERT_EQ(restores.size(), 7u);
  const char* const restore_results[] = {"Success", "Failure", "Failure", "Failure", "Success", "Success", "Failure"};
  for (size_t i = 0; i < restores.size(); ++i) EXPECT_EQ(restores[i]["resultType"], restore_results[i]) << i;
  EXPECT_EQ(props(restores[0], "pool"), "bk2");
  EXPECT_EQ(props(restores[0], "name"), "vault-key");
  EXPECT_EQ(props(restores[1], "pool"), "hsmpool");
  EXPECT_NE(restores[1]["resultDescription"].get<std::string>().find("another security domain"), std::string::npos);
  EXPECT_EQ(props(restores[2], "file"), forged_file);
  EXPECT_EQ(props(restores[2], "name"), "-");  // a modified file's name is never taken
  EXPECT_NE(restores[2]["resultDescription"].get<std::string>().find("modified"), std::string::npos);
  EXPECT_EQ(props(restores[4], "name"), "traveller");
  EXPECT_EQ(props(restores[4], "file"), file);
  EXPECT_EQ(props(restores[5], "name"), "traveller-aes");
  EXPECT_EQ(props(restores[6], "name"), "traveller");
  EXPECT_NE(restores[6]["resultDescription"].get<std::string>().find("already has a key named"), std::string::npos);
  auto chain = audit::VerifyFile(dir.file("audit.log"));
  ASSERT_TRUE(chain.ok());
  EXPECT_TRUE(chain->intact) << chain->problem;

  // Every version of an HSM key: rotated in bk2, backed up, restored into the premium vault
  // (same domain) with both versions, the old one found by its CKA_ID and signing there.
  if (initialized) {
    ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  }
  initialized = false;
  CliRun rot = Cli({"key", "rotate", "bk2", "traveller"}, config_path);
  ASSERT_EQ(rot.status, 0) << rot.output;
  std::string two = dir.file("traveller-2.backup");
  CliRun b2 = Cli({"backup", "bk2", "traveller", two}, config_path);
  ASSERT_EQ(b2.status, 0) << b2.output;
  EXPECT_NE(b2.output.find("(2 versions, HSM keys under security domain"), std::string::npos) << b2.output;
  CliRun r2 = Cli({"restore", "archive", two}, config_path);
  ASSERT_EQ(r2.status, 0) << r2.output;
  EXPECT_NE(r2.output.find("(2 versions, HSM keys on 1 HSM)"), std::string::npos) << r2.output;
  Start();
  CK_SESSION_HANDLE a = LoggedInRw(kArchiveSlot);
  auto find_one = [&](CK_OBJECT_CLASS cls) {
    CK_ATTRIBUTE by_id[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, traveller_id.data(), traveller_id.size()}};
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_ULONG count = 0;
    if (f->C_FindObjectsInit(a, by_id, 2) != CKR_OK) return h;
    if (f->C_FindObjects(a, &h, 1, &count) != CKR_OK || count != 1) h = CK_INVALID_HANDLE;
    f->C_FindObjectsFinal(a);
    return h;
  };
  CK_OBJECT_HANDLE old_priv = find_one(CKO_PRIVATE_KEY), old_pub = find_one(CKO_PUBLIC_KEY);
  ASSERT_NE(old_priv, CK_INVALID_HANDLE) << "the first version is not in the vault";
  ASSERT_NE(old_pub, CK_INVALID_HANDLE);
  EXPECT_EQ(GetAttr(a, old_pub, CKA_EC_POINT), point) << "not the same key";
  auto old_sig = Sign(a, em, old_priv, data);
  EXPECT_EQ(Verify(a, em, old_pub, data, old_sig), CKR_OK);
  // A certificate whose versions share one HSM key (--reuse-key): deleted, then restored with
  // one copy of the key, which signs again.
  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  initialized = false;
  ASSERT_EQ(Cli({"cert", "create", "archive", "webcert", "--subject", "CN=webcert", "--hsm", "--reuse-key"}, config_path).status, 0);
  ASSERT_EQ(Cli({"cert", "renew", "archive", "webcert"}, config_path).status, 0);
  std::string cfile = dir.file("webcert.backup");
  CliRun cb = Cli({"backup", "archive", "webcert", cfile}, config_path);
  ASSERT_EQ(cb.status, 0) << cb.output;
  CliRun into = Cli({"restore", "bk2", cfile}, config_path);
  EXPECT_EQ(into.status, 1);
  EXPECT_NE(into.output.find("pools hold keys only"), std::string::npos) << into.output;
  Start();
  a = LoggedInRw(kArchiveSlot);
  auto webcert = FindByLabel(a, "webcert");
  ASSERT_EQ(webcert.size(), 3u);
  int destroyed = 0;
  for (CK_OBJECT_HANDLE o : webcert) {
    CK_OBJECT_CLASS cls;
    auto c = GetAttr(a, o, CKA_CLASS);
    std::memcpy(&cls, c.data(), sizeof(cls));
    if (cls == CKO_CERTIFICATE) destroyed += f->C_DestroyObject(a, o) == CKR_OK;
  }
  ASSERT_EQ(destroyed, 1) << "deleting the certificate deletes the item";
  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  initialized = false;
  CliRun cr = Cli({"restore", "archive", cfile}, config_path);
  ASSERT_EQ(cr.status, 0) << cr.output;
  EXPECT_NE(cr.output.find("(2 versions, HSM keys on 1 HSM)"), std::string::npos) << cr.output;
  Start();
  a = LoggedInRw(kArchiveSlot);
  CK_OBJECT_HANDLE wpriv = CK_INVALID_HANDLE, wpub = CK_INVALID_HANDLE;
  for (CK_OBJECT_HANDLE o : FindByLabel(a, "webcert")) {
    CK_OBJECT_CLASS cls;
    auto c = GetAttr(a, o, CKA_CLASS);
    std::memcpy(&cls, c.data(), sizeof(cls));
    if (cls == CKO_PRIVATE_KEY) wpriv = o;
    if (cls == CKO_PUBLIC_KEY) wpub = o;
  }
  ASSERT_NE(wpriv, CK_INVALID_HANDLE);
  auto wsig = Sign(a, em, wpriv, data);
  EXPECT_EQ(Verify(a, em, wpub, data, wsig), CKR_OK);
  // A software item never goes into a pool.
  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  initialized = false;
  std::ofstream(dir.file("note.txt")) << "a note";
  ASSERT_EQ(Cli({"secret", "set", "payments", "note", "--file", dir.file("note.txt")}, config_path).status, 0);
  ASSERT_EQ(Cli({"backup", "payments", "note", dir.file("note.backup")}, config_path).status, 0);
  CliRun into_pool = Cli({"restore", "bk2", dir.file("note.backup")}, config_path);
  EXPECT_EQ(into_pool.status, 1);
  EXPECT_NE(into_pool.output.find("pools hold HSM keys only"), std::string::npos) << into_pool.output;
}


// A key destroyed while a member is out of service is destroyed there before it serves again.
TEST_F(PoolTest, KeyDestroyedWhileMemberDownIsGoneFromItWhenItReturns) {
  InitPool("fopool");
  Start();
  CK_SESSION_HANDLE s = LoggedInRw(kFailoverSlot);
  CK_OBJECT_HANDLE pub, priv;
  ASSERT_EQ(GenPair(s, CKM_EC_KEY_PAIR_GEN, "short-lived", &pub, &priv), CKR_OK);
  auto id = InnerId(s, priv);
  for (const char* t : kFailoverMembers) ASSERT_EQ(CountOn(t, CKO_PRIVATE_KEY, id), 1) << t;
  SetFault("fo-b", "fail");
  std::vector<uint8_t> sig;
  // Signing until the failure is noticed (each member serves in turn).
  for (int i = 0; i < 3; ++i) ASSERT_EQ(TrySign(s, priv, Bytes("x"), &sig), CKR_OK);
  EXPECT_EQ(SlotDescription(kFailoverSlot), kFailoverUp + " (2/3 HSMs up)");
  ASSERT_EQ(f->C_DestroyObject(s, priv), CKR_OK);
  EXPECT_EQ(CountOn("fo-a", CKO_PRIVATE_KEY, id), 0);
  EXPECT_EQ(CountOn("fo-b", CKO_PRIVATE_KEY, id), 1);  // out of service: not reached yet
  ClearFault("fo-b");
  WaitForDescription(kFailoverSlot, kFailoverUp);
  EXPECT_EQ(CountOn("fo-b", CKO_PRIVATE_KEY, id), 0);
  EXPECT_EQ(CountOn("fo-b", CKO_PUBLIC_KEY, id), 0);
}

// Issue 16 item 10: SoftHSM rewrites its token file at each login, and a process killed in that
// window lost every HSM key; every process logged in to every configured HSM at C_Initialize,
// even one that only used software vaults. Now C_Initialize and the slot and token queries
// open no session on an HSM and do not log in; a premium vault's HSM is logged in to at its
// first operation (once), a pool's members once the pool is used. The fault module
// (tests/fixtures/fault_p11.cc) stands in front of SoftHSM and counts the calls.
TEST_F(PoolTest, HsmsAreLoggedInToOnlyWhenFirstUsed) {
  const std::string fault = std::getenv("VAULTP11_FAULT_MODULE");
  std::string top = "hsms:\n";
  for (const char* t : kFailoverMembers)
    top += std::string("  - { name: ") + t + ", module: " + fault + ", token: " + t +
           ", pin_file: " + dir.file("user.pin") + ", quirks: [no-deinit] }\n";
  top += "managed_hsm_pools:\n  - { name: lazy, hsms: [fo-b, fo-c] }\n";
  const std::string lazy_config =
      WriteConfig("  - { principal: app, role: Key Vault Administrator, scope: /vaults/archive }\n",
                  top, "{ name: archive, sku: premium, hsms: [fo-a], default_protection: hsm }");
  void* h = dlopen(fault.c_str(), RTLD_NOW | RTLD_NOLOAD);
  auto reset = h ? reinterpret_cast<void (*)()>(dlsym(h, "fault_p11_reset_counts")) : nullptr;
  if (reset) reset();  // not loaded yet in this process: nothing counted so far
  auto opened = [](const char* t) {
    return FaultCount(t, "C_Login") + FaultCount(t, "C_OpenSession");
  };

  ASSERT_EQ(InitWith(lazy_config), CKR_OK);
  CK_ULONG n = 0;
  ASSERT_EQ(f->C_GetSlotList(CK_TRUE, nullptr, &n), CKR_OK);
  ASSERT_EQ(n, 3u);
  for (CK_SLOT_ID slot = 0; slot < n; ++slot) {
    CK_SLOT_INFO si;
    CK_TOKEN_INFO ti;
    EXPECT_EQ(f->C_GetSlotInfo(slot, &si), CKR_OK);
    EXPECT_EQ(f->C_GetTokenInfo(slot, &ti), CKR_OK);
  }
  // A standard vault's keys: no HSM is touched.
  CK_SESSION_HANDLE soft = LoggedInRw(0);
  CK_OBJECT_HANDLE pub, priv;
  GenEc(soft, kP256, "software", &pub, &priv);
  CK_MECHANISM m{CKM_ECDSA_SHA256, nullptr, 0};
  EXPECT_EQ(Sign(soft, m, priv, Bytes("no HSM")).size(), 64u);
  for (const char* t : kFailoverMembers)
    EXPECT_EQ(opened(t), 0u) << t << " was opened before it was used";

  // The premium vault's first HSM operation logs in to its HSM, once; the pool's stay closed.
  CK_SESSION_HANDLE premium = LoggedInRw(1);
  GenEc(premium, kP256, "in-hsm", &pub, &priv);
  EXPECT_EQ(Sign(premium, m, priv, Bytes("in the HSM")).size(), 64u);
  EXPECT_EQ(Sign(premium, m, priv, Bytes("again")).size(), 64u);
  // At most one successful C_Login (SoftHSM answers CKR_USER_ALREADY_LOGGED_IN, which is not
  // counted, when an earlier test of this binary left a session of this process on the token).
  EXPECT_LE(FaultCount("fo-a", "C_Login"), 1u);
  EXPECT_GE(FaultCount("fo-a", "C_OpenSession"), 1u);
  EXPECT_EQ(opened("fo-b"), 0u);
  EXPECT_EQ(opened("fo-c"), 0u);
}

// Pools need a health-check thread: a caller that forbids threads is told so.
TEST_F(PoolTest, PoolsNeedThreads) {
  CK_C_INITIALIZE_ARGS args{};
  args.flags = CKF_OS_LOCKING_OK | CKF_LIBRARY_CANT_CREATE_OS_THREADS;
  args.pReserved = const_cast<char*>(config_path.c_str());
  EXPECT_EQ(f->C_Initialize(&args), CKR_NEED_TO_CREATE_THREADS);
  EXPECT_EQ(InitWith(config_path), CKR_OK);
}

}  // namespace
}  // namespace vaultp11::testing

// The HSM route: the module signing and unwrapping with HSM keys of a premium vault (SoftHSMv2
// behind it as the inner driver), next to the same calls on SoftHSMv2's own module with the
// same key types and mechanisms, sessions already open, in one run so the ratio is what
// matters. Each benchmark also reports the p50 and p99 latency of its calls (µs).
//
// The direct arm loads its own copy of the SoftHSMv2 library, so the two arms are two
// independent SoftHSM instances over one token directory (the module's inner driver has its
// own C_Initialize and login, as it would next to any other application).
//
// The pool arms (pool/sign/P256_ECDSA_SHA256/members-N), run on their own (VAULTP11_BENCH_POOLS=1
// registers these and only these: six more tokens in the SoftHSM instances change what the
// direct arm measures): three managed HSM pools of 1, 2 and 3 members (six more SoftHSM
// tokens in the same directory), their security domain installed by
// `vaultp11 pool init` (the built CLI, $VAULTP11_CLI, run before the module starts), each with
// a token EC P-256 key pair the module generated and copied to every member. The module signs
// with CKM_ECDSA_SHA256 over 256 bytes on that key, 1 and 2 threads (a session each), each
// operation on the member the pool's balancing picks. The members are tokens of the module's
// one SoftHSM instance, in this process, on the same CPUs as the benchmark threads: a bigger
// pool adds no signing capacity here, so these figures show what the pool's balancing costs
// or gains against members-1, not what more HSMs would give. Against the premium vault's arm
// (hsm/sign/P256_ECDSA_SHA256/module) mind that a pool key is a SoftHSM token object on each
// member, which SoftHSM's file object store re-checks on disk at each C_SignInit, while that
// arm's key is a SoftHSM session object.
#include <fcntl.h>
#include <openssl/evp.h>
#include <p11-kit/pkcs11.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <span>
#include <string>
#include <vector>

#include "deployment.h"
#include "latency.h"

extern char** environ;

namespace {

const std::vector<CK_BYTE> kP256 = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
constexpr char kSoPin[] = "bench-so-pin";
constexpr char kUserPin[] = "bench-user-pin";
constexpr char kTokenLabel[] = "bench-hsm";
// The pools and their members (SoftHSM tokens of their own, same SO and user PIN, one pool's
// each), in config order (the pools' slots follow the vault's in that order).
struct PoolDef {
  const char* name;
  std::vector<const char*> members;
};
const PoolDef kPools[] = {{"pool1", {"bench-m1"}}, {"pool2", {"bench-m2", "bench-m3"}},
                          {"pool3", {"bench-m4", "bench-m5", "bench-m6"}}};
constexpr size_t kPoolCount = sizeof(kPools) / sizeof(kPools[0]);

// The keys of one arm: an RSA-2048 pair, an EC P-256 pair, an AES-256 key (key wrap), and the
// wrapped AES-256 keys the unwrap benchmarks take apart (under RSA-OAEP and AES-KWP).
struct Keys {
  CK_OBJECT_HANDLE rsa_pub = 0, rsa_priv = 0, ec_priv = 0, aes = 0;
  std::vector<CK_BYTE> oaep_blob, kwp_blob;
};

// SoftHSMv2 (2.6) implements RSA-OAEP with SHA-1 only, so both arms use SHA-1 (and MGF1-SHA-1).
CK_RSA_PKCS_OAEP_PARAMS g_oaep{CKM_SHA_1, CKG_MGF1_SHA1, CKZ_DATA_SPECIFIED, nullptr, 0};
CK_RSA_PKCS_PSS_PARAMS g_pss{CKM_SHA256, CKG_MGF1_SHA256, 32};

// Makes the keys on session `s` of `f` (the module or SoftHSM direct) the same way on both.
bool MakeKeys(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE s, bool direct, Keys& k, std::string& why) {
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  CK_ULONG bits = 2048, aes_len = 32;
  CK_BYTE e[] = {1, 0, 1};
  CK_MECHANISM rsa_gen{CKM_RSA_PKCS_KEY_PAIR_GEN, nullptr, 0};
  CK_ATTRIBUTE rsa_pub_t[] = {{CKA_TOKEN, &no, 1}, {CKA_MODULUS_BITS, &bits, sizeof(bits)}, {CKA_PUBLIC_EXPONENT, e, 3},
                              {CKA_ENCRYPT, &yes, 1}, {CKA_VERIFY, &yes, 1}};
  CK_ATTRIBUTE rsa_priv_t[] = {{CKA_TOKEN, &no, 1}, {CKA_PRIVATE, &yes, 1}, {CKA_SENSITIVE, &yes, 1},
                               {CKA_SIGN, &yes, 1}, {CKA_DECRYPT, &yes, 1}, {CKA_UNWRAP, &yes, 1}};
  if (CK_RV rv = f->C_GenerateKeyPair(s, &rsa_gen, rsa_pub_t, 5, rsa_priv_t, 6, &k.rsa_pub, &k.rsa_priv); rv != CKR_OK) {
    why = "RSA key pair: rv 0x" + std::to_string(rv);
    return false;
  }
  CK_MECHANISM ec_gen{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
  CK_ATTRIBUTE ec_pub_t[] = {{CKA_TOKEN, &no, 1}, {CKA_EC_PARAMS, const_cast<CK_BYTE*>(kP256.data()), kP256.size()}};
  CK_ATTRIBUTE ec_priv_t[] = {{CKA_TOKEN, &no, 1}, {CKA_PRIVATE, &yes, 1}, {CKA_SENSITIVE, &yes, 1}, {CKA_SIGN, &yes, 1}};
  CK_OBJECT_HANDLE ec_pub = 0;
  if (CK_RV rv = f->C_GenerateKeyPair(s, &ec_gen, ec_pub_t, 2, ec_priv_t, 4, &ec_pub, &k.ec_priv); rv != CKR_OK) {
    why = "EC key pair: rv " + std::to_string(rv);
    return false;
  }
  // The AES-256 wrapping key: in SoftHSM directly; the module's vault keeps AES keys in
  // software (its HSM keys are key pairs), so its arm unwraps with a software AES key.
  CK_MECHANISM aes_gen{CKM_AES_KEY_GEN, nullptr, 0};
  CK_ATTRIBUTE aes_t[] = {{CKA_TOKEN, &no, 1}, {CKA_VALUE_LEN, &aes_len, sizeof(aes_len)}, {CKA_WRAP, &yes, 1},
                          {CKA_UNWRAP, &yes, 1}, {CKA_ENCRYPT, &yes, 1}, {CKA_EXTRACTABLE, &yes, 1}};
  if (CK_RV rv = f->C_GenerateKey(s, &aes_gen, aes_t, 6, &k.aes); rv != CKR_OK) {
    why = "AES key: rv " + std::to_string(rv);
    return false;
  }
  // The payload: an extractable AES-256 key, wrapped once under each mechanism.
  CK_OBJECT_HANDLE payload = 0;
  CK_ATTRIBUTE payload_t[] = {{CKA_TOKEN, &no, 1}, {CKA_VALUE_LEN, &aes_len, sizeof(aes_len)},
                              {CKA_EXTRACTABLE, &yes, 1}, {CKA_SENSITIVE, &no, 1}};
  if (CK_RV rv = f->C_GenerateKey(s, &aes_gen, payload_t, 4, &payload); rv != CKR_OK) {
    why = "AES payload: rv " + std::to_string(rv);
    return false;
  }
  auto wrap = [&](CK_MECHANISM m, CK_OBJECT_HANDLE with, std::vector<CK_BYTE>& out) -> CK_RV {
    CK_ULONG n = 0;
    if (CK_RV rv = f->C_WrapKey(s, &m, with, payload, nullptr, &n); rv != CKR_OK) return rv;
    out.resize(n);
    CK_RV rv = f->C_WrapKey(s, &m, with, payload, out.data(), &n);
    out.resize(n);
    return rv;
  };
  CK_MECHANISM oaep{CKM_RSA_PKCS_OAEP, &g_oaep, sizeof(g_oaep)};
  CK_MECHANISM kwp{CKM_AES_KEY_WRAP_PAD, nullptr, 0};
  if (CK_RV rv = wrap(oaep, k.rsa_pub, k.oaep_blob); rv != CKR_OK) {
    why = std::string(direct ? "SoftHSM" : "module") + " OAEP wrap: rv " + std::to_string(rv);
    return false;
  }
  if (CK_RV rv = wrap(kwp, k.aes, k.kwp_blob); rv != CKR_OK) {
    why = std::string(direct ? "SoftHSM" : "module") + " KWP wrap: rv " + std::to_string(rv);
    return false;
  }
  f->C_DestroyObject(s, payload);
  return true;
}

// Runs `args` (no shell), stdin /dev/null, stdout and stderr into `out_path`; the exit status
// (-1: did not start, or killed) and what it wrote (or why it did not start).
int Run(const std::vector<std::string>& args, const std::string& out_path, std::string& output) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);
  pid_t pid = 0;
  int status = -1;
  const int err = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  if (err == 0) {
    int st = 0;
    if (waitpid(pid, &st, 0) == pid && WIFEXITED(st)) status = WEXITSTATUS(st);
  }
  posix_spawn_file_actions_destroy(&fa);
  if (err != 0) {
    output = std::string("cannot run it: ") + std::strerror(err);
    return -1;
  }
  std::stringstream ss;
  ss << std::ifstream(out_path).rdbuf();
  output = ss.str();
  return status;
}

// A pool in the module: its slot, the setup session (logged in) and its EC P-256 key pair.
struct PoolArm {
  CK_SLOT_ID slot = 0;
  CK_SESSION_HANDLE session = 0;
  Keys keys;  // ec_priv only
};

bool PoolsMode() {
  const char* v = std::getenv("VAULTP11_BENCH_POOLS");
  return v != nullptr && std::string(v) == "1";
}

// Every arm, made once: SoftHSM's tokens (initialised through the direct copy), the direct
// session and keys, the pools' security domain (`vaultp11 pool init`), then a premium vault
// over the first token in the module, its session and keys, and each pool's session and key.
struct Setup {
  std::string dir, error;
  CK_FUNCTION_LIST* direct = nullptr;
  CK_FUNCTION_LIST* module = nullptr;
  CK_SESSION_HANDLE direct_s = 0, module_s = 0;
  Keys dk, mk;
  PoolArm pools[kPoolCount];

  Setup() { Init(); }
  void Init() {
    const char* module_path = std::getenv("VAULTP11_MODULE");
    const char* env_softhsm = std::getenv("VAULTP11_SOFTHSM_MODULE");
    const std::string softhsm = env_softhsm ? env_softhsm : "/usr/lib/softhsm/libsofthsm2.so";
    if (!module_path) {
      error = "set VAULTP11_MODULE";
      return;
    }
    const bool with_pools = PoolsMode();
    const char* cli = std::getenv("VAULTP11_CLI");
    if (with_pools && (!cli || !*cli)) {
      error = "set VAULTP11_CLI to the built vaultp11 CLI (its `pool init` sets up the pool benchmarks' security domain)";
      return;
    }
    if (!std::filesystem::exists(softhsm)) {
      error = "SoftHSMv2 not found at " + softhsm;
      return;
    }
    char tmpl[] = "/tmp/vaultp11-bench-hsm-XXXXXX";
    dir = mkdtemp(tmpl);
    std::filesystem::create_directory(dir + "/tokens");
    std::ofstream(dir + "/softhsm2.conf") << "directories.tokendir = " << dir << "/tokens\nobjectstore.backend = file\n"
                                          << "log.level = ERROR\n";
    setenv("SOFTHSM2_CONF", (dir + "/softhsm2.conf").c_str(), 1);
    // 1. The token, through a copy of the library (an instance of its own).
    std::filesystem::copy_file(softhsm, dir + "/libsofthsm2-direct.so");
    direct = vaultp11::bench::LoadModule((dir + "/libsofthsm2-direct.so").c_str());
    // With OS locking, as the module's inner driver starts its own SoftHSM instance.
    CK_C_INITIALIZE_ARGS direct_args{};
    direct_args.flags = CKF_OS_LOCKING_OK;
    if (!direct || direct->C_Initialize(&direct_args) != CKR_OK) return Fail("SoftHSM (direct) did not initialise");
    CK_SLOT_ID slot = 0;
    std::string why;
    // The pools' members first, then the direct arm's token (its slot is the one kept).
    if (with_pools)
      for (const PoolDef& pool : kPools)
        for (const char* member : pool.members)
          if (!InitToken(member, slot, why)) return Fail(why);
    if (!InitToken(kTokenLabel, slot, why)) return Fail(why);
    if (direct->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &direct_s) != CKR_OK ||
        direct->C_Login(direct_s, CKU_USER, (CK_UTF8CHAR_PTR)kUserPin, std::strlen(kUserPin)) != CKR_OK)
      return Fail("SoftHSM login failed");
    if (!MakeKeys(direct, direct_s, true, dk, why)) return Fail("SoftHSM keys: " + why);
    // 2. The module: a premium vault whose keys default to that token, and the pools.
    std::ofstream(dir + "/hsm.pin") << kUserPin << "\n";
    std::ofstream(dir + "/hsm.so-pin") << kSoPin << "\n";
    for (const char* f : {"/hsm.pin", "/hsm.so-pin"})
      std::filesystem::permissions(dir + f, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
    // Every HSM is a token of the same SoftHSM library, which the module loads once: each says
    // no-deinit (as the README and the tests set it for SoftHSM).
    auto hsm = [&](const std::string& name, const std::string& token) {
      return "  - { name: " + name + ", module: " + softhsm + ", token: " + token + ", pin_file: " + dir +
             "/hsm.pin, so_pin_file: " + dir + "/hsm.so-pin, quirks: [no-deinit] }\n";
    };
    std::string hsms = "hsms:\n" + hsm("h", kTokenLabel), pool_conf, roles;
    if (with_pools) pool_conf = "managed_hsm_pools:\n";
    for (const PoolDef& p : with_pools ? std::span<const PoolDef>(kPools) : std::span<const PoolDef>()) {
      std::string list;
      for (const char* m : p.members) {
        hsms += hsm(m, m);
        list += std::string(list.empty() ? "" : ", ") + m;
      }
      pool_conf += std::string("  - { name: ") + p.name + ", hsms: [" + list + "] }\n";
      roles += std::string("  - { principal: b, role: Managed HSM Crypto User, scope: /managedHsms/") + p.name + " }\n";
    }
    std::string conf = vaultp11::bench::WriteConfig(
        dir, "[]", "{ name: bench, sku: premium, hsms: [h], default_protection: hsm }", hsms + pool_conf, roles);
    // The pools' security domain, before the module starts: one run, so the pools share it.
    if (with_pools) {
      std::vector<std::string> init = {cli, "--config", conf, "pool", "init"};
      for (const PoolDef& p : kPools) init.push_back(p.name);
      std::string out;
      if (int st = Run(init, dir + "/pool-init.out", out); st != 0)
        return Fail(std::string(cli) + " pool init failed (exit status " + std::to_string(st) + "): " + out);
    }
    module = vaultp11::bench::LoadModule(module_path);
    CK_C_INITIALIZE_ARGS args{};
    args.flags = CKF_OS_LOCKING_OK;
    args.pReserved = conf.data();
    if (!module || module->C_Initialize(&args) != CKR_OK) return Fail("the module did not initialise");
    std::string pin = vaultp11::bench::kPin;
    if (module->C_OpenSession(0, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &module_s) != CKR_OK ||
        module->C_Login(module_s, CKU_USER, reinterpret_cast<CK_UTF8CHAR_PTR>(pin.data()), pin.size()) != CKR_OK)
      return Fail("module login failed");
    if (!MakeKeys(module, module_s, false, mk, why)) return Fail("module keys: " + why);
    // 3. Each pool's slot (found by its label), a logged-in session and a token EC P-256 key
    // pair: a private key of the logged-in application, usable from every session it opens.
    for (size_t i = 0; with_pools && i < kPoolCount; ++i) {
      const std::string name = kPools[i].name;
      PoolArm& p = pools[i];
      if (!FindSlot(module, name.c_str(), p.slot)) return Fail("the module has no slot for pool " + name);
      if (module->C_OpenSession(p.slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &p.session) != CKR_OK)
        return Fail("C_OpenSession on pool " + name + " failed");
      if (CK_RV rv = module->C_Login(p.session, CKU_USER, reinterpret_cast<CK_UTF8CHAR_PTR>(pin.data()), pin.size());
          rv != CKR_OK)
        return Fail("module login on pool " + name + " failed: rv " + std::to_string(rv));
      CK_BBOOL yes = CK_TRUE;
      CK_MECHANISM ec_gen{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
      CK_ATTRIBUTE pub_t[] = {{CKA_TOKEN, &yes, 1}, {CKA_VERIFY, &yes, 1},
                              {CKA_EC_PARAMS, const_cast<CK_BYTE*>(kP256.data()), kP256.size()}};
      CK_ATTRIBUTE priv_t[] = {{CKA_TOKEN, &yes, 1}, {CKA_PRIVATE, &yes, 1}, {CKA_SENSITIVE, &yes, 1}, {CKA_SIGN, &yes, 1}};
      CK_OBJECT_HANDLE pub = 0;
      if (CK_RV rv = module->C_GenerateKeyPair(p.session, &ec_gen, pub_t, 3, priv_t, 4, &pub, &p.keys.ec_priv); rv != CKR_OK)
        return Fail("EC key pair in pool " + name + ": rv " + std::to_string(rv));
    }
  }
  ~Setup() {
    if (module) module->C_Finalize(nullptr);
    if (direct) direct->C_Finalize(nullptr);
    std::error_code ec;
    if (!dir.empty()) std::filesystem::remove_all(dir, ec);
  }
  void Fail(std::string why) {
    error = std::move(why);
    if (module) module->C_Finalize(nullptr);
    module = nullptr;
  }
  // The slot of `f` whose token is labelled `label`, or (null label) one with an uninitialised
  // token. The list is asked for again each time: SoftHSM adds a free slot per C_InitToken.
  static bool FindSlot(CK_FUNCTION_LIST* f, const char* label, CK_SLOT_ID& out) {
    CK_ULONG n = 0;
    if (f->C_GetSlotList(CK_FALSE, nullptr, &n) != CKR_OK) return false;
    std::vector<CK_SLOT_ID> slots(n);
    if (f->C_GetSlotList(CK_FALSE, slots.data(), &n) != CKR_OK) return false;
    slots.resize(n);
    for (CK_SLOT_ID id : slots) {
      CK_TOKEN_INFO ti;
      if (f->C_GetTokenInfo(id, &ti) != CKR_OK) continue;
      const bool is_init = (ti.flags & CKF_TOKEN_INITIALIZED) != 0;
      std::string l(reinterpret_cast<char*>(ti.label), sizeof(ti.label));
      l.erase(l.find_last_not_of(' ') + 1);
      if (label == nullptr ? !is_init : (is_init && l == label)) {
        out = id;
        return true;
      }
    }
    return false;
  }
  // Initialises a free SoftHSM token as `label` (SO PIN, then the user PIN), through the direct
  // copy; `slot` is its slot.
  bool InitToken(const char* label, CK_SLOT_ID& slot, std::string& why) {
    if (!FindSlot(direct, nullptr, slot)) {
      why = "SoftHSM has no free slot";
      return false;
    }
    CK_UTF8CHAR padded[32];
    std::memset(padded, ' ', sizeof(padded));
    std::memcpy(padded, label, std::strlen(label));
    if (direct->C_InitToken(slot, (CK_UTF8CHAR_PTR)kSoPin, std::strlen(kSoPin), padded) != CKR_OK) {
      why = std::string("C_InitToken of ") + label + " failed";
      return false;
    }
    if (!FindSlot(direct, label, slot)) {
      why = std::string("the slot of the new token ") + label + " is not found";
      return false;
    }
    CK_SESSION_HANDLE so = 0;
    if (direct->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &so) != CKR_OK ||
        direct->C_Login(so, CKU_SO, (CK_UTF8CHAR_PTR)kSoPin, std::strlen(kSoPin)) != CKR_OK ||
        direct->C_InitPIN(so, (CK_UTF8CHAR_PTR)kUserPin, std::strlen(kUserPin)) != CKR_OK) {
      why = std::string("C_InitPIN of ") + label + " failed";
      return false;
    }
    direct->C_Logout(so);
    direct->C_CloseSession(so);
    return true;
  }
};

Setup& TheSetup() {
  static Setup s;
  return s;
}
bool g_failed = false;

// Runs `call` per iteration, timing each for the p50 / p99 counters.
void Measure(benchmark::State& state, const std::function<CK_RV()>& call) {
  CK_RV last = CKR_OK;
  vaultp11::bench::MeasureLatency(state, [&] { return (last = call()) == CKR_OK; }, "a PKCS#11 call failed");
  if (last != CKR_OK) {
    std::fprintf(stderr, "bench_hsm: a call failed: rv 0x%lx\n", static_cast<unsigned long>(last));
    g_failed = true;
  }
}

// The module's premium vault, SoftHSM directly, or one of the module's pools (kPools[pool]).
enum class Arm { kModule, kSoftHsm, kPool };

// The function list, session and keys of an arm; null (the run stopped) when setup failed.
struct ArmOf {
  CK_FUNCTION_LIST* f;
  CK_SESSION_HANDLE session;
  const Keys& keys;
};
const ArmOf* Arms(benchmark::State& state, Arm arm, size_t pool = 0) {
  Setup& s = TheSetup();
  if (!s.error.empty()) {
    state.SkipWithError(s.error.c_str());
    g_failed = true;
    return nullptr;
  }
  static const ArmOf module{s.module, s.module_s, s.mk}, direct{s.direct, s.direct_s, s.dk};
  static const std::vector<ArmOf> pools = [&] {
    std::vector<ArmOf> v;
    for (const PoolArm& p : s.pools) v.push_back({s.module, p.session, p.keys});
    return v;
  }();
  if (arm == Arm::kPool) return &pools.at(pool);
  return arm == Arm::kModule ? &module : &direct;
}

void Sign(benchmark::State& state, Arm arm, CK_MECHANISM_TYPE type, bool ec, size_t pool = 0) {
  const ArmOf* a = Arms(state, arm, pool);
  if (a == nullptr) return;
  CK_FUNCTION_LIST* f = a->f;
  // Each thread signs on a session of its own (the setup session's login and keys are the
  // application's, so every session sees them).
  CK_SESSION_HANDLE h = a->session;
  CK_SESSION_INFO info{};
  if (state.threads() > 1) {
    if (f->C_GetSessionInfo(a->session, &info) != CKR_OK ||
        f->C_OpenSession(info.slotID, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &h) != CKR_OK) {
      state.SkipWithError("C_OpenSession failed");
      g_failed = true;
      return;
    }
  }
  const Keys& k = a->keys;
  CK_MECHANISM m{type, nullptr, 0};
  if (type == CKM_SHA256_RSA_PKCS_PSS) m = {type, &g_pss, sizeof(g_pss)};
  std::vector<CK_BYTE> data(256, 0x5a), sig(512);
  const CK_OBJECT_HANDLE key = ec ? k.ec_priv : k.rsa_priv;
  // SoftHSMv2 (2.6) has no CKM_ECDSA_SHA256: its arm hashes with OpenSSL and signs with
  // CKM_ECDSA, as an application of it would (the module's arm is given the data).
  const bool hash_here = ec && arm == Arm::kSoftHsm;
  CK_MECHANISM raw{CKM_ECDSA, nullptr, 0};
  Measure(state, [&]() -> CK_RV {
    CK_ULONG len = sig.size();
    if (hash_here) {
      unsigned char digest[32];
      unsigned int dl = 0;
      if (EVP_Digest(data.data(), data.size(), digest, &dl, EVP_sha256(), nullptr) != 1) return CKR_FUNCTION_FAILED;
      CK_RV rv = f->C_SignInit(h, &raw, key);
      return rv != CKR_OK ? rv : f->C_Sign(h, digest, dl, sig.data(), &len);
    }
    CK_RV rv = f->C_SignInit(h, &m, key);
    return rv != CKR_OK ? rv : f->C_Sign(h, data.data(), data.size(), sig.data(), &len);
  });
  if (h != a->session) f->C_CloseSession(h);
}

void Unwrap(benchmark::State& state, Arm arm, bool oaep) {
  const ArmOf* a = Arms(state, arm);
  if (a == nullptr) return;
  CK_FUNCTION_LIST* f = a->f;
  CK_SESSION_HANDLE h = a->session;
  const Keys& k = a->keys;
  CK_MECHANISM m = oaep ? CK_MECHANISM{CKM_RSA_PKCS_OAEP, &g_oaep, sizeof(g_oaep)} : CK_MECHANISM{CKM_AES_KEY_WRAP_PAD, nullptr, 0};
  std::vector<CK_BYTE> blob = oaep ? k.oaep_blob : k.kwp_blob;
  const CK_OBJECT_HANDLE with = oaep ? k.rsa_priv : k.aes;
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE type = CKK_AES;
  CK_BBOOL no = CK_FALSE, yes = CK_TRUE;
  CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &type, sizeof(type)}, {CKA_TOKEN, &no, 1},
                      {CKA_ENCRYPT, &yes, 1}};
  // Each unwrapped key is destroyed in the loop, in both arms alike.
  Measure(state, [&]() -> CK_RV {
    CK_OBJECT_HANDLE out = 0;
    CK_RV rv = f->C_UnwrapKey(h, &m, with, blob.data(), blob.size(), t, 4, &out);
    return rv != CKR_OK ? rv : f->C_DestroyObject(h, out);
  });
}

void Register() {
  struct SignCase {
    const char* name;
    CK_MECHANISM_TYPE type;
    bool ec;
  };
  if (PoolsMode()) {
    // The pools: the same EC signature through the module on a pool's key (1, 2 and 3 members).
    for (size_t pool = 0; pool < kPoolCount; ++pool)
      benchmark::RegisterBenchmark(
          ("pool/sign/P256_ECDSA_SHA256/members-" + std::to_string(kPools[pool].members.size())).c_str(),
          [pool](benchmark::State& st) { Sign(st, Arm::kPool, CKM_ECDSA_SHA256, true, pool); })
          ->Threads(1)
          ->Threads(2)
          ->UseRealTime();
    return;
  }
  for (const SignCase& c : {SignCase{"RSA2048_SHA256_RSA_PKCS", CKM_SHA256_RSA_PKCS, false},
                            SignCase{"RSA2048_SHA256_RSA_PKCS_PSS", CKM_SHA256_RSA_PKCS_PSS, false},
                            SignCase{"P256_ECDSA_SHA256", CKM_ECDSA_SHA256, true}})
    for (Arm arm : {Arm::kModule, Arm::kSoftHsm})
      benchmark::RegisterBenchmark(
          (std::string("hsm/sign/") + c.name + (arm == Arm::kModule ? "/module" : "/softhsm")).c_str(),
          [c, arm](benchmark::State& st) { Sign(st, arm, c.type, c.ec); })
          ->Threads(1)
          ->Threads(2)
          ->UseRealTime();
  for (bool oaep : {true, false})
    for (Arm arm : {Arm::kModule, Arm::kSoftHsm})
      // The module's vaults keep AES keys in software (their HSM keys are key pairs): its KWP
      // arm is a software key against SoftHSM's, hence its own group.
      benchmark::RegisterBenchmark((std::string(oaep ? "hsm/unwrap/AES256_under_RSA_OAEP_SHA1" : "software-kwp/unwrap/AES256_under_AES_KWP") +
                                    (arm == Arm::kModule ? "/module" : "/softhsm"))
                                       .c_str(),
                                   [oaep, arm](benchmark::State& st) { Unwrap(st, arm, oaep); })
          ->UseRealTime();
}

}  // namespace

int main(int argc, char** argv) {
  Register();
  return vaultp11::bench::RunBenchmarks(argc, argv, [] { return g_failed; });
}

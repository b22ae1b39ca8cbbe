// The HSM route: the module signing and unwrapping with HSM keys of a premium vault (SoftHSMv2
// behind it as the inner driver), next to the same calls on SoftHSMv2's own module with the
// same key types and mechanisms, sessions already open, in one run so the ratio is what
// matters. Each benchmark also reports the p50 and p99 latency of its calls (µs).
//
// The direct arm loads its own copy of the SoftHSMv2 library, so the two arms are two
// independent SoftHSM instances over one token directory (the module's inner driver has its
// own C_Initialize and login, as it would next to any other application).
#include <dlfcn.h>
#include <openssl/evp.h>
#include <p11-kit/pkcs11.h>
#include <stdlib.h>
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
#include <string>
#include <vector>

#include "auth/secret_hash.h"
#include "latency.h"

namespace {

const std::vector<CK_BYTE> kP256 = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
constexpr char kSoPin[] = "bench-so-pin";
constexpr char kUserPin[] = "bench-user-pin";
constexpr char kTokenLabel[] = "bench-hsm";

CK_FUNCTION_LIST* Load(const std::string& path) {
  void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) return nullptr;
  auto gfl = reinterpret_cast<CK_C_GetFunctionList>(dlsym(h, "C_GetFunctionList"));
  CK_FUNCTION_LIST* f = nullptr;
  if (!gfl || gfl(&f) != CKR_OK) return nullptr;
  return f;
}

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

// Both arms, made once: SoftHSM's token (initialised through the direct copy), the direct
// session and keys, then a premium vault over that token in the module, its session and keys.
struct Setup {
  std::string dir, error;
  CK_FUNCTION_LIST* direct = nullptr;
  CK_FUNCTION_LIST* module = nullptr;
  CK_SESSION_HANDLE direct_s = 0, module_s = 0;
  Keys dk, mk;

  Setup() { Init(); }
  void Init() {
    const char* module_path = std::getenv("VAULTP11_MODULE");
    const char* env_softhsm = std::getenv("VAULTP11_SOFTHSM_MODULE");
    const std::string softhsm = env_softhsm ? env_softhsm : "/usr/lib/softhsm/libsofthsm2.so";
    if (!module_path) {
      error = "set VAULTP11_MODULE";
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
    direct = Load(dir + "/libsofthsm2-direct.so");
    // With OS locking, as the module's inner driver starts its own SoftHSM instance.
    CK_C_INITIALIZE_ARGS direct_args{};
    direct_args.flags = CKF_OS_LOCKING_OK;
    if (!direct || direct->C_Initialize(&direct_args) != CKR_OK) return Fail("SoftHSM (direct) did not initialise");
    CK_SLOT_ID slot = 0;
    if (!FindSlot(false, slot)) return Fail("SoftHSM has no free slot");
    CK_UTF8CHAR label[32];
    std::memset(label, ' ', sizeof(label));
    std::memcpy(label, kTokenLabel, std::strlen(kTokenLabel));
    if (direct->C_InitToken(slot, (CK_UTF8CHAR_PTR)kSoPin, std::strlen(kSoPin), label) != CKR_OK)
      return Fail("C_InitToken failed");
    if (!FindSlot(true, slot)) return Fail("the new token's slot is not found");
    CK_SESSION_HANDLE so = 0;
    if (direct->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &so) != CKR_OK ||
        direct->C_Login(so, CKU_SO, (CK_UTF8CHAR_PTR)kSoPin, std::strlen(kSoPin)) != CKR_OK ||
        direct->C_InitPIN(so, (CK_UTF8CHAR_PTR)kUserPin, std::strlen(kUserPin)) != CKR_OK)
      return Fail("C_InitPIN failed");
    direct->C_Logout(so);
    direct->C_CloseSession(so);
    if (direct->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &direct_s) != CKR_OK ||
        direct->C_Login(direct_s, CKU_USER, (CK_UTF8CHAR_PTR)kUserPin, std::strlen(kUserPin)) != CKR_OK)
      return Fail("SoftHSM login failed");
    std::string why;
    if (!MakeKeys(direct, direct_s, true, dk, why)) return Fail("SoftHSM keys: " + why);
    // 2. The module: a premium vault whose keys default to that token.
    std::ofstream(dir + "/hsm.pin") << kUserPin << "\n";
    std::filesystem::permissions(dir + "/hsm.pin", std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
    std::string secret = "bench-secret";
    auto hash = vaultp11::auth::HashSecret(
        std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(secret.data()), secret.size()), {10, 8, 1});
    std::ofstream(dir + "/c.yaml")
        << "log: { level: error }\nstore: { path: " << dir << "/store.db }\naudit: { sinks: [] }\n"
        << "hsms: [ { name: h, module: " << softhsm << ", token: " << kTokenLabel << ", pin_file: " << dir << "/hsm.pin } ]\n"
        << "vaults: [ { name: bench, sku: premium, hsms: [h], default_protection: hsm } ]\n"
        << "principals:\n  - name: b\n    auth: client_secret\n    secrets: [ { hash: \"" << hash.value() << "\" } ]\n"
        << "role_assignments: [ { principal: b, role: Key Vault Administrator, scope: /vaults/bench } ]\n";
    module = Load(module_path);
    std::string conf = dir + "/c.yaml";
    CK_C_INITIALIZE_ARGS args{};
    args.flags = CKF_OS_LOCKING_OK;
    args.pReserved = conf.data();
    if (!module || module->C_Initialize(&args) != CKR_OK) return Fail("the module did not initialise");
    std::string pin = "b:bench-secret";
    if (module->C_OpenSession(0, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &module_s) != CKR_OK ||
        module->C_Login(module_s, CKU_USER, reinterpret_cast<CK_UTF8CHAR_PTR>(pin.data()), pin.size()) != CKR_OK)
      return Fail("module login failed");
    if (!MakeKeys(module, module_s, false, mk, why)) return Fail("module keys: " + why);
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
  bool FindSlot(bool initialised, CK_SLOT_ID& out) {
    CK_ULONG n = 0;
    if (direct->C_GetSlotList(CK_FALSE, nullptr, &n) != CKR_OK) return false;
    std::vector<CK_SLOT_ID> slots(n);
    if (direct->C_GetSlotList(CK_FALSE, slots.data(), &n) != CKR_OK) return false;
    for (CK_SLOT_ID id : slots) {
      CK_TOKEN_INFO ti;
      if (direct->C_GetTokenInfo(id, &ti) != CKR_OK) continue;
      const bool is_init = (ti.flags & CKF_TOKEN_INITIALIZED) != 0;
      if (is_init == initialised &&
          (!initialised || std::string(reinterpret_cast<char*>(ti.label), std::strlen(kTokenLabel)) == kTokenLabel)) {
        out = id;
        return true;
      }
    }
    return false;
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

enum class Arm { kModule, kSoftHsm };

// The function list, session and keys of an arm; null (the run stopped) when setup failed.
struct ArmOf {
  CK_FUNCTION_LIST* f;
  CK_SESSION_HANDLE session;
  const Keys& keys;
};
const ArmOf* Arms(benchmark::State& state, Arm arm) {
  Setup& s = TheSetup();
  if (!s.error.empty()) {
    state.SkipWithError(s.error.c_str());
    g_failed = true;
    return nullptr;
  }
  static const ArmOf module{s.module, s.module_s, s.mk}, direct{s.direct, s.direct_s, s.dk};
  return arm == Arm::kModule ? &module : &direct;
}

void Sign(benchmark::State& state, Arm arm, CK_MECHANISM_TYPE type, bool ec) {
  const ArmOf* a = Arms(state, arm);
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

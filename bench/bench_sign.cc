// Software-key signing: the module's C_Sign (through its function list) next to the same
// operation on raw OpenSSL EVP, measured in one run so the ratio is what matters.
#include <dlfcn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <p11-kit/pkcs11.h>
#include <unistd.h>

#include <benchmark/benchmark.h>

#include <cstdlib>
#include <memory>
#include <mutex>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "auth/secret_hash.h"
#include "latency.h"

namespace {

const std::vector<CK_BYTE> kP256 = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};

// One deployment at a time: a temp dir with config, store and a logged-in session; with
// `audit`, every operation is written to a file sink (audit.log in the temp dir), else the
// audit log is off (audit.sinks empty).
struct Deployment {
  CK_FUNCTION_LIST* f = nullptr;
  std::string dir;
  CK_OBJECT_HANDLE ec_priv = 0;
  CK_SESSION_HANDLE owner = 0;
  bool audit = false;

  explicit Deployment(bool with_audit) : audit(with_audit) {
    const char* path = std::getenv("VAULTP11_MODULE");
    void* h = path ? dlopen(path, RTLD_NOW) : nullptr;
    if (!h) return;
    auto gfl = reinterpret_cast<CK_C_GetFunctionList>(dlsym(h, "C_GetFunctionList"));
    if (!gfl || gfl(&f) != CKR_OK) return;
    char tmpl[] = "/tmp/vaultp11-bench-XXXXXX";
    dir = mkdtemp(tmpl);
    std::string secret = "bench-secret";
    auto hash = vaultp11::auth::HashSecret(
        std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(secret.data()), secret.size()), {10, 8, 1});
    std::ofstream(dir + "/c.yaml") << "log: { level: error }\nstore: { path: " << dir << "/store.db }\n"
                                   << (audit ? "audit: { sinks: [ { type: file, path: " + dir + "/audit.log } ] }\n"
                                             : std::string("audit: { sinks: [] }\n"))
                                   << "vaults: [ { name: bench } ]\nprincipals:\n  - name: b\n    auth: client_secret\n"
                                   << "    secrets: [ { hash: \"" << hash.value() << "\" } ]\n"
                                   << "role_assignments: [ { principal: b, role: Key Vault Administrator, scope: /vaults/bench } ]\n";
    std::string conf = dir + "/c.yaml";
    CK_C_INITIALIZE_ARGS args{};
    args.flags = CKF_OS_LOCKING_OK;
    args.pReserved = conf.data();
    if (f->C_Initialize(&args) != CKR_OK) {
      f = nullptr;
      return;
    }
    // The owner session stays open: it keeps the login and owns the session key.
    owner = Session();
    CK_MECHANISM m{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
    CK_ATTRIBUTE pt[] = {{CKA_EC_PARAMS, const_cast<CK_BYTE*>(kP256.data()), kP256.size()}};
    CK_OBJECT_HANDLE pub = 0;
    if (f->C_GenerateKeyPair(owner, &m, pt, 1, nullptr, 0, &pub, &ec_priv) != CKR_OK) f = nullptr;
  }
  ~Deployment() {
    if (f) f->C_Finalize(nullptr);
    std::error_code ec;
    if (!dir.empty()) std::filesystem::remove_all(dir, ec);
  }
  CK_SESSION_HANDLE Session() {
    CK_SESSION_HANDLE s = 0;
    f->C_OpenSession(0, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &s);
    if (owner == 0) {
      std::string pin = "b:bench-secret";
      f->C_Login(s, CKU_USER, reinterpret_cast<CK_UTF8CHAR_PTR>(pin.data()), pin.size());
    }
    return s;
  }
};

// The deployment with audit on or off, switching (C_Finalize, new deployment) when the other
// one is current. Benchmarks run one after the other; the threads of one run ask together.
std::mutex g_dep_mu;
std::unique_ptr<Deployment> g_dep;
bool g_module_ok = true;
Deployment& Dep(bool audit) {
  std::lock_guard<std::mutex> l(g_dep_mu);
  if (!g_dep || g_dep->audit != audit) {
    g_dep.reset();
    g_dep = std::make_unique<Deployment>(audit);
    g_module_ok &= g_dep->f != nullptr;
  }
  return *g_dep;
}

void ModuleEcdsaP256Sign(benchmark::State& state, bool audit) {
  auto& d = Dep(audit);
  if (!d.f) {
    state.SkipWithError("module not loaded (set VAULTP11_MODULE)");
    return;
  }
  CK_SESSION_HANDLE s = d.Session();
  CK_OBJECT_HANDLE key = d.ec_priv;
  CK_MECHANISM m{CKM_ECDSA, nullptr, 0};
  CK_BYTE hash[32] = {1, 2, 3};
  CK_BYTE sig[64];
  g_module_ok &= vaultp11::bench::MeasureLatency(
      state,
      [&] {
        CK_ULONG len = sizeof(sig);
        return d.f->C_SignInit(s, &m, key) == CKR_OK && d.f->C_Sign(s, hash, sizeof(hash), sig, &len) == CKR_OK;
      },
      "C_Sign failed");
  d.f->C_CloseSession(s);
}
void EvpEcdsaP256Sign(benchmark::State& state) {
  static EVP_PKEY* key = EVP_EC_gen("P-256");
  unsigned char hash[32] = {1, 2, 3};
  unsigned char sig[80];
  g_module_ok &= vaultp11::bench::MeasureLatency(
      state,
      [&] {
        EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_from_pkey(nullptr, key, nullptr);
        size_t len = sizeof(sig);
        const bool ok = ctx && EVP_PKEY_sign_init(ctx) == 1 && EVP_PKEY_sign(ctx, sig, &len, hash, sizeof(hash)) == 1;
        EVP_PKEY_CTX_free(ctx);
        return ok;
      },
      "EVP_PKEY_sign failed");
}

// Names are <group>/<operation>/<case>/<arm>: bench/report.cc pairs each arm with its baseline
// (module with evp; audit on with audit off, the module's own figure measured again).
void Register() {
  auto reg = [](const char* name, void (*fn)(benchmark::State&)) {
    benchmark::RegisterBenchmark(name, fn)->Threads(1)->Threads(2)->UseRealTime();
  };
  reg("software/sign/P256_ECDSA/module", [](benchmark::State& st) { ModuleEcdsaP256Sign(st, false); });
  reg("software/sign/P256_ECDSA/evp", EvpEcdsaP256Sign);
  reg("audit/sign/P256_ECDSA/off", [](benchmark::State& st) { ModuleEcdsaP256Sign(st, false); });
  reg("audit/sign/P256_ECDSA/on", [](benchmark::State& st) { ModuleEcdsaP256Sign(st, true); });
}

}  // namespace

int main(int argc, char** argv) {
  Register();
  // A module that did not load is a failure, not a skipped measurement.
  return vaultp11::bench::RunBenchmarks(argc, argv, [] {
    g_dep.reset();
    return !g_module_ok;
  });
}

// Software-key signing: the module's C_Sign (through its function list) next to the same
// operation on raw OpenSSL EVP, measured in one run so the ratio is what matters; with 1 and 2
// threads, with the audit log on and off, and in 1 and 2 processes on one store.
#include <sys/wait.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <p11-kit/pkcs11.h>
#include <unistd.h>

#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "deployment.h"
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
    f = vaultp11::bench::LoadModule(std::getenv("VAULTP11_MODULE"));
    if (f == nullptr) return;
    char tmpl[] = "/tmp/vaultp11-bench-XXXXXX";
    dir = mkdtemp(tmpl);
    std::string conf =
        vaultp11::bench::WriteConfig(dir, audit ? "[ { type: file, path: " + dir + "/audit.log } ]" : "[]");
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
      std::string pin = vaultp11::bench::kPin;
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

// ---- processes ------------------------------------------------------------------------------
// `procs` signer processes sign at once, each with its own C_Initialize, session and login on
// one store, with the token key they find there by label (module), or each with its own EVP key
// (evp). Each iteration: kBatch signatures shared out between the signers; its time is the wall
// time until the slowest is done, so 1 and 2 processes compare as throughput (bench/report.cc:
// each process count against 1).
constexpr int kBatch = 400;

// The store and its token key, made once by this process (which then finalizes the module).
struct SharedStore {
  std::string dir, conf;
  bool ok = false;
  SharedStore() {
    // No module of this process may be running when signers fork: they initialise their own.
    {
      std::lock_guard<std::mutex> l(g_dep_mu);
      g_dep.reset();
    }
    CK_FUNCTION_LIST* f = vaultp11::bench::LoadModule(std::getenv("VAULTP11_MODULE"));
    if (f == nullptr) return;
    char tmpl[] = "/tmp/vaultp11-bench-procs-XXXXXX";
    dir = mkdtemp(tmpl);
    conf = vaultp11::bench::WriteConfig(dir);
    CK_C_INITIALIZE_ARGS args{};
    args.flags = CKF_OS_LOCKING_OK;
    args.pReserved = conf.data();
    if (f->C_Initialize(&args) != CKR_OK) return;
    CK_SESSION_HANDLE s = 0;
    std::string pin = vaultp11::bench::kPin, label = "proc-key";
    CK_BBOOL yes = CK_TRUE;
    CK_MECHANISM m{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
    CK_ATTRIBUTE pt[] = {{CKA_EC_PARAMS, const_cast<CK_BYTE*>(kP256.data()), kP256.size()}, {CKA_TOKEN, &yes, 1},
                         {CKA_LABEL, label.data(), label.size()}};
    CK_ATTRIBUTE vt[] = {{CKA_TOKEN, &yes, 1}, {CKA_LABEL, label.data(), label.size()}, {CKA_SIGN, &yes, 1}};
    CK_OBJECT_HANDLE pub = 0, priv = 0;
    ok = f->C_OpenSession(0, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &s) == CKR_OK &&
         f->C_Login(s, CKU_USER, reinterpret_cast<CK_UTF8CHAR_PTR>(pin.data()), pin.size()) == CKR_OK &&
         f->C_GenerateKeyPair(s, &m, pt, 3, vt, 3, &pub, &priv) == CKR_OK;
    f->C_Finalize(nullptr);
  }
  ~SharedStore() {
    std::error_code ec;
    if (!dir.empty()) std::filesystem::remove_all(dir, ec);
  }
};

// A signer process: sets up, then per byte read on `go` makes `batch` signatures and answers
// 'd' (or 'f' once something failed) on `done`; exits when `go` closes.
[[noreturn]] void Signer(int go, int done, const std::string& conf, bool module, int batch) {
  std::function<bool()> sign;
  CK_FUNCTION_LIST* f = nullptr;
  CK_SESSION_HANDLE s = 0;
  CK_OBJECT_HANDLE key = 0;
  EVP_PKEY* pkey = nullptr;
  CK_BYTE hash[32] = {1, 2, 3};
  CK_BYTE sig[80];
  bool ready = false;
  if (module) {
    f = vaultp11::bench::LoadModule(std::getenv("VAULTP11_MODULE"));
    CK_C_INITIALIZE_ARGS args{};
    args.flags = CKF_OS_LOCKING_OK;
    args.pReserved = const_cast<char*>(conf.c_str());
    std::string pin = vaultp11::bench::kPin, label = "proc-key";
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, label.data(), label.size()}};
    CK_ULONG n = 0;
    ready = f != nullptr && f->C_Initialize(&args) == CKR_OK &&
            f->C_OpenSession(0, CKF_SERIAL_SESSION, nullptr, nullptr, &s) == CKR_OK &&
            f->C_Login(s, CKU_USER, reinterpret_cast<CK_UTF8CHAR_PTR>(pin.data()), pin.size()) == CKR_OK &&
            f->C_FindObjectsInit(s, t, 2) == CKR_OK && f->C_FindObjects(s, &key, 1, &n) == CKR_OK &&
            f->C_FindObjectsFinal(s) == CKR_OK && n == 1;
    CK_MECHANISM m{CKM_ECDSA, nullptr, 0};
    sign = [&, m]() mutable {
      CK_ULONG len = sizeof(sig);
      return f->C_SignInit(s, &m, key) == CKR_OK && f->C_Sign(s, hash, sizeof(hash), sig, &len) == CKR_OK;
    };
  } else {
    pkey = EVP_EC_gen("P-256");
    ready = pkey != nullptr;
    sign = [&] {
      EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_from_pkey(nullptr, pkey, nullptr);
      size_t len = sizeof(sig);
      const bool ok = ctx && EVP_PKEY_sign_init(ctx) == 1 && EVP_PKEY_sign(ctx, sig, &len, hash, sizeof(hash)) == 1;
      EVP_PKEY_CTX_free(ctx);
      return ok;
    };
  }
  char c;
  while (read(go, &c, 1) == 1) {
    bool ok = ready;
    for (int i = 0; i < batch && ok; ++i) ok = sign();
    ready = ok;
    const char r = ok ? 'd' : 'f';
    if (write(done, &r, 1) != 1) break;
  }
  if (f) f->C_Finalize(nullptr);
  EVP_PKEY_free(pkey);
  _exit(0);
}

void ProcessesSign(benchmark::State& state, int procs, bool module) {
  static SharedStore store;
  if (module && !store.ok) {
    state.SkipWithError("the shared store was not made (set VAULTP11_MODULE)");
    g_module_ok = false;
    return;
  }
  struct Child {
    pid_t pid;
    int go, done;
  };
  std::vector<Child> children;
  bool failed = false;
  for (int i = 0; i < procs; ++i) {
    int go[2], done[2];
    if (pipe(go) != 0 || pipe(done) != 0) {
      failed = true;
      break;
    }
    const pid_t pid = fork();
    if (pid == 0) {
      close(go[1]);
      close(done[0]);
      for (const Child& c : children) {
        close(c.go);
        close(c.done);
      }
      Signer(go[0], done[1], store.conf, module, kBatch / procs);
    }
    close(go[0]);
    close(done[1]);
    if (pid < 0) {
      close(go[1]);
      close(done[0]);
      failed = true;
      break;
    }
    children.push_back({pid, go[1], done[0]});
  }
  for (auto _ : state) {
    if (failed) break;
    const auto t0 = std::chrono::steady_clock::now();
    for (const Child& c : children) failed |= write(c.go, "g", 1) != 1;
    for (const Child& c : children) {
      char r = 0;
      failed |= read(c.done, &r, 1) != 1 || r != 'd';
    }
    const auto t1 = std::chrono::steady_clock::now();
    state.SetIterationTime(std::chrono::duration<double>(t1 - t0).count());
  }
  for (const Child& c : children) {
    close(c.go);
    close(c.done);
    int status = 0;
    waitpid(c.pid, &status, 0);
  }
  if (failed) {
    state.SkipWithError("a signer process failed");
    g_module_ok = false;
  }
}

// Names are <group>/<operation>/<case>/<arm>: bench/report.cc pairs each arm with its baseline
// (module with evp; audit on with audit off, the module's own figure measured again; a number
// of processes with 1).
void Register() {
  auto reg = [](const char* name, void (*fn)(benchmark::State&)) {
    benchmark::RegisterBenchmark(name, fn)->Threads(1)->Threads(2)->UseRealTime();
  };
  reg("software/sign/P256_ECDSA/module", [](benchmark::State& st) { ModuleEcdsaP256Sign(st, false); });
  reg("software/sign/P256_ECDSA/evp", EvpEcdsaP256Sign);
  reg("audit/sign/P256_ECDSA/off", [](benchmark::State& st) { ModuleEcdsaP256Sign(st, false); });
  reg("audit/sign/P256_ECDSA/on", [](benchmark::State& st) { ModuleEcdsaP256Sign(st, true); });
  for (bool module : {true, false})
    for (int procs : {1, 2})
      benchmark::RegisterBenchmark(
          (std::string("processes/sign/P256_ECDSA_") + (module ? "module" : "evp") + "/" + std::to_string(procs)).c_str(),
          [procs, module](benchmark::State& st) { ProcessesSign(st, procs, module); })
          ->UseManualTime();
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

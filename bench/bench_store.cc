// The PostgreSQL store against the embedded SQLite one, through the module (issue 17's
// numbers): arm `postgresql`, baseline `sqlite`, same process, same run.
//
//   store/sign/P256_ECDSA            C_SignInit + C_Sign with a software key (no store on the
//                                    crypto path: the arms should be alike)
//   store/find_by_label/warm         C_FindObjectsInit/C_FindObjects/Final by label, repeated
//                                    (nothing changed: no database round trip on either)
//   store/initialize/100k_objects    C_Initialize + C_OpenSession + C_Login with 100,000 other
//                                    rows in the vault's table (init_ms); the rows are put in
//                                    by SQL and never read (the module reads objects when a
//                                    search first asks for them)
//   fleet/change_seen/postgresql     host A creates an object, host B searches for it until it
//                                    is there: the delay (delay_p50_ms, delay_p99_ms)
//
// A "host" is an instance of the module with its own config: each is a copy of the .so loaded
// from its own path, so one process holds independent instances. The PostgreSQL server is
// started by the program (tests/fixtures/pg_server.h), on 127.0.0.1.
#include <sqlite3.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "deployment.h"
#include "latency.h"
#include "pg_server.h"

namespace vaultp11::bench {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

bool g_failed = false;

struct World {
  std::unique_ptr<testing::PgServer> pg;
  std::string dir;
  std::map<std::string, CK_FUNCTION_LIST*> hosts;  // "sqlite", "postgresql", "postgresql-b", ...
  struct Open {
    CK_FUNCTION_LIST* f;
    CK_SESSION_HANDLE s;
  };
  std::map<std::string, Open> sessions;  // the initialised hosts, finalised at the end
  std::string error;
};

World& W() {
  static World w;
  return w;
}

// The module loaded from a copy of its own, as host `name`.
CK_FUNCTION_LIST* Host(const std::string& name) {
  World& w = W();
  if (auto it = w.hosts.find(name); it != w.hosts.end()) return it->second;
  const char* module = std::getenv("VAULTP11_MODULE");
  if (module == nullptr) return nullptr;
  const std::string copy = w.dir + "/libvaultp11-" + name + ".so";
  std::error_code ec;
  fs::copy_file(module, copy, fs::copy_options::overwrite_existing, ec);
  CK_FUNCTION_LIST* f = ec ? nullptr : LoadModule(copy.c_str());
  w.hosts[name] = f;
  return f;
}

std::string Config(const std::string& host, bool postgres) {
  World& w = W();
  const std::string d = w.dir + "/" + host;
  fs::create_directories(d);
  std::string path = WriteConfig(d);
  if (!postgres) return path;
  // The same deployment on the PostgreSQL store: the store line replaced.
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string from = "store: { path: " + d + "/store.db }";
  const std::string to = "store: { backend: postgresql, dsn: \"" + w.pg->Dsn("bench") +
                         "\", password_file: " + w.pg->password_file() + ", master_key_file: " + w.dir +
                         "/pg.masterkey }";
  text.replace(text.find(from), from.size(), to);
  std::ofstream(path) << text;
  return path;
}

bool Setup() {
  World& w = W();
  if (!w.dir.empty()) return w.error.empty();
  char tmpl[] = "/tmp/vaultp11-bench-store-XXXXXX";
  w.dir = mkdtemp(tmpl) != nullptr ? tmpl : "/tmp";
  w.pg = testing::PgServer::StartPrimary(&w.error);
  if (w.pg == nullptr) return false;
  if (!w.pg->CreateDatabase("bench", &w.error)) return false;
  return true;
}

CK_RV Init(CK_FUNCTION_LIST* f, const std::string& config) {
  CK_C_INITIALIZE_ARGS args{};
  args.flags = CKF_OS_LOCKING_OK;
  args.pReserved = const_cast<char*>(config.c_str());
  return f->C_Initialize(&args);
}

struct Session {
  CK_FUNCTION_LIST* f = nullptr;
  CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
};

// Initialises host `host` (once) and returns a logged-in read/write session on slot 0.
bool Open(const std::string& host, bool postgres, Session* out) {
  auto& open = W().sessions;
  if (auto it = open.find(host); it != open.end()) {
    *out = Session{it->second.f, it->second.s};
    return true;
  }
  CK_FUNCTION_LIST* f = Host(host);
  if (f == nullptr || Init(f, Config(host, postgres)) != CKR_OK) return false;
  Session s{f};
  if (f->C_OpenSession(0, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &s.s) != CKR_OK) return false;
  if (f->C_Login(s.s, CKU_USER, reinterpret_cast<CK_UTF8CHAR_PTR>(const_cast<char*>(kPin.data())), kPin.size()) !=
      CKR_OK)
    return false;
  open[host] = World::Open{s.f, s.s};
  *out = s;
  return true;
}

std::vector<CK_OBJECT_HANDLE> Find(const Session& s, const std::string& label) {
  std::string l = label;
  CK_ATTRIBUTE t{CKA_LABEL, l.data(), l.size()};
  std::vector<CK_OBJECT_HANDLE> out(8);
  CK_ULONG n = 0;
  if (s.f->C_FindObjectsInit(s.s, &t, 1) != CKR_OK) return {};
  s.f->C_FindObjects(s.s, out.data(), out.size(), &n);
  s.f->C_FindObjectsFinal(s.s);
  out.resize(n);
  return out;
}

// The private key of a P-256 pair labelled "signer" (made on first use).
CK_OBJECT_HANDLE Signer(const Session& s) {
  CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
  std::string label = "signer";
  CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, label.data(), label.size()}};
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  CK_ULONG n = 0;
  s.f->C_FindObjectsInit(s.s, t, 2);
  s.f->C_FindObjects(s.s, &h, 1, &n);
  s.f->C_FindObjectsFinal(s.s);
  if (n == 1) return h;
  static const CK_BYTE kP256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
  CK_MECHANISM m{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
  CK_BBOOL yes = CK_TRUE;
  CK_ATTRIBUTE pt[] = {{CKA_TOKEN, &yes, 1}, {CKA_EC_PARAMS, const_cast<CK_BYTE*>(kP256), sizeof(kP256)},
                       {CKA_LABEL, label.data(), label.size()}};
  CK_ATTRIBUTE kt[] = {{CKA_TOKEN, &yes, 1}, {CKA_SIGN, &yes, 1}, {CKA_LABEL, label.data(), label.size()}};
  CK_OBJECT_HANDLE pub = CK_INVALID_HANDLE, priv = CK_INVALID_HANDLE;
  if (s.f->C_GenerateKeyPair(s.s, &m, pt, 3, kt, 3, &pub, &priv) != CKR_OK) return CK_INVALID_HANDLE;
  return priv;
}

void Fail(benchmark::State& state, const std::string& why) {
  g_failed = true;
  state.SkipWithError(why.c_str());
}

void BM_Sign(benchmark::State& state, bool postgres) {
  Session s;
  if (!Setup() || !Open(postgres ? "postgresql" : "sqlite", postgres, &s)) return Fail(state, "setup: " + W().error);
  const CK_OBJECT_HANDLE key = Signer(s);
  if (key == CK_INVALID_HANDLE) return Fail(state, "no signing key");
  CK_BYTE digest[32] = {1, 2, 3};
  CK_MECHANISM m{CKM_ECDSA, nullptr, 0};
  MeasureLatency(
      state,
      [&] {
        CK_BYTE sig[80];
        CK_ULONG len = sizeof(sig);
        return s.f->C_SignInit(s.s, &m, key) == CKR_OK && s.f->C_Sign(s.s, digest, 32, sig, &len) == CKR_OK;
      },
      "C_Sign failed");
}

void BM_FindByLabel(benchmark::State& state, bool postgres) {
  Session s;
  if (!Setup() || !Open(postgres ? "postgresql" : "sqlite", postgres, &s)) return Fail(state, "setup: " + W().error);
  if (Signer(s) == CK_INVALID_HANDLE || Find(s, "signer").size() != 2) return Fail(state, "no key pair to find");
  MeasureLatency(state, [&] { return Find(s, "signer").size() == 2; }, "the search found the wrong objects");
}

// 100,000 rows of another item per vault, put in by SQL (once per backend).
bool AddFiller(bool postgres) {
  static std::map<bool, bool> done;
  if (done[postgres]) return true;
  done[postgres] = true;
  const std::string sql =
      "INSERT INTO objects(vault, class, label, ck_id, attributes, revision, version, created) "
      "SELECT 'bench', 0, 'filler-' || g, ck, ck, 0, '', 0 FROM (SELECT g, " +
      std::string(postgres ? "decode(lpad(to_hex(g), 8, '0'), 'hex')" : "CAST(printf('%08x', g) AS BLOB)") +
      " AS ck FROM " + (postgres ? "generate_series(1, 100000) AS g" : "(WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL "
                                                                      "SELECT g + 1 FROM s WHERE g < 100000) SELECT g FROM s)") +
      ") AS rows";
  if (postgres) return W().pg->Sql("bench", sql);
  sqlite3* db = nullptr;
  const std::string path = W().dir + "/sqlite-init/store.db";
  bool ok = sqlite3_open(path.c_str(), &db) == SQLITE_OK &&
            sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK;
  sqlite3_close(db);
  return ok;
}

void BM_Initialize(benchmark::State& state, bool postgres) {
  if (!Setup()) return Fail(state, "setup: " + W().error);
  const std::string host = postgres ? "postgresql-init" : "sqlite-init";
  CK_FUNCTION_LIST* f = Host(host);
  const std::string config = Config(host, postgres);
  // The store and its vault exist before the filler goes in.
  if (f == nullptr || Init(f, config) != CKR_OK) return Fail(state, "C_Initialize failed");
  f->C_Finalize(nullptr);
  if (!AddFiller(postgres)) return Fail(state, "cannot add the filler rows");
  double init_ms = 0;
  int runs = 0;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    CK_SESSION_HANDLE s;
    bool ok = Init(f, config) == CKR_OK &&
              f->C_OpenSession(0, CKF_SERIAL_SESSION, nullptr, nullptr, &s) == CKR_OK &&
              f->C_Login(s, CKU_USER, reinterpret_cast<CK_UTF8CHAR_PTR>(const_cast<char*>(kPin.data())),
                         kPin.size()) == CKR_OK;
    const auto t1 = Clock::now();
    f->C_Finalize(nullptr);
    if (!ok) return Fail(state, "C_Initialize, C_OpenSession or C_Login failed");
    state.SetIterationTime(std::chrono::duration<double>(t1 - t0).count());
    init_ms += std::chrono::duration<double, std::milli>(t1 - t0).count();
    ++runs;
  }
  if (runs > 0) state.counters["init_ms"] = init_ms / runs;
}

// Host A (postgresql) creates an object; host B (postgresql-b, another instance on the same
// database) searches for it until it is there.
void BM_ChangeSeen(benchmark::State& state) {
  Session a, b;
  if (!Setup() || !Open("postgresql", true, &a) || !Open("postgresql-b", true, &b))
    return Fail(state, "setup: " + W().error);
  std::vector<double> ms;
  int n = 0;
  for (auto _ : state) {
    const std::string label = "change-" + std::to_string(n++);
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_BBOOL yes = CK_TRUE;
    std::string l = label, v = "value";
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &yes, 1}, {CKA_LABEL, l.data(), l.size()},
                        {CKA_VALUE, v.data(), v.size()}};
    CK_OBJECT_HANDLE h;
    if (a.f->C_CreateObject(a.s, t, 4, &h) != CKR_OK) return Fail(state, "C_CreateObject failed");
    const auto t0 = Clock::now();
    const auto give_up = t0 + std::chrono::seconds(10);
    while (Find(b, label).empty())
      if (Clock::now() > give_up) return Fail(state, "host B never saw the change");
    const auto t1 = Clock::now();
    state.SetIterationTime(std::chrono::duration<double>(t1 - t0).count());
    ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    a.f->C_DestroyObject(a.s, h);
  }
  if (ms.empty()) return;
  std::sort(ms.begin(), ms.end());
  state.counters["delay_p50_ms"] = ms[ms.size() / 2];
  state.counters["delay_p99_ms"] = ms[std::min(ms.size() - 1, ms.size() * 99 / 100)];
}

BENCHMARK_CAPTURE(BM_Sign, sqlite, false)->Name("store/sign/P256_ECDSA/sqlite");
BENCHMARK_CAPTURE(BM_Sign, postgresql, true)->Name("store/sign/P256_ECDSA/postgresql");
BENCHMARK_CAPTURE(BM_FindByLabel, sqlite, false)->Name("store/find_by_label/warm/sqlite");
BENCHMARK_CAPTURE(BM_FindByLabel, postgresql, true)->Name("store/find_by_label/warm/postgresql");
BENCHMARK_CAPTURE(BM_Initialize, sqlite, false)
    ->Name("store/initialize/100k_objects/sqlite")
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Initialize, postgresql, true)
    ->Name("store/initialize/100k_objects/postgresql")
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ChangeSeen)->Name("fleet/change_seen/postgresql")->UseManualTime()->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace vaultp11::bench

int main(int argc, char** argv) {
  const int rc = vaultp11::bench::RunBenchmarks(argc, argv, [] { return vaultp11::bench::g_failed; });
  for (auto& [host, open] : vaultp11::bench::W().sessions) open.f->C_Finalize(nullptr);
  vaultp11::bench::W().pg.reset();  // stops the server
  std::error_code ec;
  std::filesystem::remove_all(vaultp11::bench::W().dir, ec);
  return rc;
}

// Scale: a vault with 1k, 10k and 100k objects in its store. Measured: C_Initialize with the
// first C_FindObjects after it (counters init_ms and first_find_ms; the module reads objects
// from the store on demand, so this is the cost a process pays before its first signature);
// C_Initialize with a search by class that reads every object (read_all_ms) and the heap the
// objects then take (heap_mb, bytes_per_object); C_FindObjects by label and by CKA_ID on a
// running module with every object read. The objects are EC public keys, each its own item
// (label obj-<n>, an 8-byte CKA_ID), written into the store in one transaction from a key the
// module made.
#include <malloc.h>
#include <p11-kit/pkcs11.h>
#include <stdlib.h>
#include <unistd.h>

#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "deployment.h"
#include "latency.h"
#include "model/attributes.h"
#include "store/store.h"

namespace {

const std::vector<CK_BYTE> kP256 = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
bool g_failed = false;

// Heap in use (malloc'd and mmapped blocks), MB: unlike the resident size, not lowered by memory
// an earlier run freed and this one reuses.
double HeapMb() {
  const struct mallinfo2 mi = mallinfo2();
  return static_cast<double>(mi.uordblks + mi.hblkhd) / (1024.0 * 1024.0);
}

CK_FUNCTION_LIST* Module() {
  static CK_FUNCTION_LIST* const f = vaultp11::bench::LoadModule(std::getenv("VAULTP11_MODULE"));
  return f;
}

std::vector<CK_BYTE> IdOf(uint64_t n) {
  std::vector<CK_BYTE> id(8);
  for (int i = 7; i >= 0; --i, n >>= 8) id[i] = static_cast<CK_BYTE>(n);
  return id;
}

// A deployment whose vault holds `n` objects; the module is not running between benchmarks.
struct Store {
  size_t n = 0;
  std::string dir, conf, error;

  explicit Store(size_t count) : n(count) {
    CK_FUNCTION_LIST* f = Module();
    if (!f) {
      error = "module not loaded (set VAULTP11_MODULE)";
      return;
    }
    char tmpl[] = "/tmp/vaultp11-bench-scale-XXXXXX";
    dir = mkdtemp(tmpl);
    conf = vaultp11::bench::WriteConfig(dir);
    // The first object, made by the module: the template of the others.
    CK_SESSION_HANDLE s = 0;
    if (!Start(s)) return;
    CK_MECHANISM m{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
    CK_BBOOL yes = CK_TRUE;
    std::vector<CK_BYTE> id = IdOf(0);
    std::string label = "obj-0";
    CK_ATTRIBUTE pt[] = {{CKA_EC_PARAMS, const_cast<CK_BYTE*>(kP256.data()), kP256.size()}, {CKA_TOKEN, &yes, 1},
                         {CKA_LABEL, label.data(), label.size()}, {CKA_ID, id.data(), id.size()}};
    CK_ATTRIBUTE vt[] = {{CKA_TOKEN, &yes, 1}, {CKA_LABEL, label.data(), label.size()}, {CKA_ID, id.data(), id.size()}};
    CK_OBJECT_HANDLE pub = 0, priv = 0;
    CK_RV rv = f->C_GenerateKeyPair(s, &m, pt, 4, vt, 3, &pub, &priv);
    f->C_Finalize(nullptr);
    if (rv != CKR_OK) {
      error = "C_GenerateKeyPair failed";
      return;
    }
    // Its public key's row, copied n-1 times with their own label and CKA_ID, through the store
    // (every row carries its MAC: store.cc RecordMac).
    auto st = vaultp11::store::Store::Open(dir + "/store.db", dir + "/store.db.masterkey", false);
    if (!st.ok()) {
      error = "cannot open the store: " + st.error().message;
      return;
    }
    auto rows = st.value()->LoadByLabel("bench", label);
    if (!rows.ok() || rows->empty()) {
      error = "the first key's rows are missing";
      return;
    }
    const vaultp11::store::ObjectRecord* pub_row = nullptr;
    for (const auto& r : *rows)
      if (r.object_class == CKO_PUBLIC_KEY) pub_row = &r;
    auto base = pub_row ? vaultp11::model::AttributeMap::Deserialize(pub_row->attributes)
                        : vaultp11::Result<vaultp11::model::AttributeMap>(
                              vaultp11::Err(CKR_GENERAL_ERROR, "no public key row"));
    if (!base.ok()) {
      error = "the public key's attributes do not parse";
      return;
    }
    for (size_t i = 1; i < n && error.empty(); ++i) {
      vaultp11::model::AttributeMap a = *base;
      const std::string l = "obj-" + std::to_string(i);
      const std::vector<CK_BYTE> cid = IdOf(i);
      a.SetString(CKA_LABEL, l);
      a.Set(CKA_ID, vaultp11::Bytes(cid.begin(), cid.end()));
      vaultp11::store::ObjectRecord rec;
      rec.vault = pub_row->vault;
      rec.object_class = CKO_PUBLIC_KEY;
      rec.label = l;
      rec.ck_id = vaultp11::Bytes(cid.begin(), cid.end());
      rec.attributes = a.Serialize();
      if (!st.value()->Insert(std::move(rec), {}).ok()) error = "insert failed";
    }
  }
  ~Store() {
    std::error_code ec;
    if (!dir.empty()) std::filesystem::remove_all(dir, ec);
  }
  // C_Initialize, a session, the login.
  bool Start(CK_SESSION_HANDLE& s) {
    CK_FUNCTION_LIST* f = Module();
    CK_C_INITIALIZE_ARGS args{};
    args.flags = CKF_OS_LOCKING_OK;
    args.pReserved = conf.data();
    std::string pin = vaultp11::bench::kPin;
    if (f->C_Initialize(&args) != CKR_OK || f->C_OpenSession(0, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &s) != CKR_OK ||
        f->C_Login(s, CKU_USER, reinterpret_cast<CK_UTF8CHAR_PTR>(pin.data()), pin.size()) != CKR_OK) {
      error = "the module did not start";
      f->C_Finalize(nullptr);
      return false;
    }
    return true;
  }
};

Store& StoreOf(size_t n) {
  static std::map<size_t, std::unique_ptr<Store>> stores;
  auto& s = stores[n];
  if (!s) s = std::make_unique<Store>(n);
  return *s;
}

// One C_FindObjectsInit / C_FindObjects / C_FindObjectsFinal; true when exactly `want` found.
bool FindOne(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE s, CK_ATTRIBUTE* t, CK_ULONG count, size_t want) {
  CK_OBJECT_HANDLE found[4];
  CK_ULONG n = 0;
  if (f->C_FindObjectsInit(s, t, count) != CKR_OK) return false;
  const bool ok = f->C_FindObjects(s, found, 4, &n) == CKR_OK;
  return f->C_FindObjectsFinal(s) == CKR_OK && ok && n == want;
}

void Fail(benchmark::State& state, const std::string& why) {
  state.SkipWithError(why.c_str());
  g_failed = true;
}

// A search by class alone (it reads every object): true when all `want` are found.
bool FindAll(CK_FUNCTION_LIST* f, CK_SESSION_HANDLE s, size_t want) {
  CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
  CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}};
  if (f->C_FindObjectsInit(s, t, 1) != CKR_OK) return false;
  std::vector<CK_OBJECT_HANDLE> batch(4096);
  size_t total = 0;
  CK_ULONG got = 0;
  bool ok = true;
  do {
    ok = f->C_FindObjects(s, batch.data(), batch.size(), &got) == CKR_OK;
    total += got;
  } while (ok && got != 0);
  return f->C_FindObjectsFinal(s) == CKR_OK && ok && total == want;
}

// C_Initialize (with the session and login) and then, with `read_all`, a search that reads
// every object (counters read_all_ms, heap_mb, bytes_per_object), else the first search by
// label (init_ms, first_find_ms, startup_heap_mb).
void Initialize(benchmark::State& state, size_t n, bool read_all) {
  Store& st = StoreOf(n);
  if (!st.error.empty()) return Fail(state, st.error);
  CK_FUNCTION_LIST* f = Module();
  double init_ms = 0, find_ms = 0, heap = 0;
  size_t runs = 0;
  for (auto _ : state) {
    const double heap0 = HeapMb();
    const auto t0 = std::chrono::steady_clock::now();
    CK_SESSION_HANDLE s = 0;
    if (!st.Start(s)) return Fail(state, st.error);
    const auto t1 = std::chrono::steady_clock::now();
    std::string label = "obj-" + std::to_string(n / 2);
    CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, label.data(), label.size()}};
    const bool ok = read_all ? FindAll(f, s, n) : FindOne(f, s, t, 2, 1);
    const auto t2 = std::chrono::steady_clock::now();
    heap += HeapMb() - heap0;
    f->C_Finalize(nullptr);
    if (!ok) return Fail(state, "the objects were not found");
    state.SetIterationTime(std::chrono::duration<double>(t2 - t0).count());
    init_ms += std::chrono::duration<double, std::milli>(t1 - t0).count();
    find_ms += std::chrono::duration<double, std::milli>(t2 - t1).count();
    ++runs;
  }
  if (runs == 0) return;
  if (read_all) {
    state.counters["read_all_ms"] = (init_ms + find_ms) / runs;
    state.counters["heap_mb"] = heap / runs;
    state.counters["bytes_per_object"] = heap / runs * 1024 * 1024 / static_cast<double>(n);
  } else {
    state.counters["init_ms"] = init_ms / runs;
    state.counters["first_find_ms"] = find_ms / runs;
    state.counters["startup_heap_mb"] = heap / runs;
  }
}

// C_FindObjects on a running module, by label or by CKA_ID, of random objects, once every
// object has been read (the steady state; the first search of each label reads it from the
// store, which the start-up benchmark measures).
void Find(benchmark::State& state, size_t n, bool by_label) {
  Store& st = StoreOf(n);
  if (!st.error.empty()) return Fail(state, st.error);
  CK_FUNCTION_LIST* f = Module();
  CK_SESSION_HANDLE s = 0;
  if (!st.Start(s)) return Fail(state, st.error);
  if (!FindAll(f, s, n)) {
    f->C_Finalize(nullptr);
    return Fail(state, "the objects were not found");
  }
  std::mt19937_64 rng(42);
  CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
  g_failed |= !vaultp11::bench::MeasureLatency(
      state,
      [&] {
        const size_t i = rng() % n;
        std::string label = "obj-" + std::to_string(i);
        std::vector<CK_BYTE> id = IdOf(i);
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                            by_label ? CK_ATTRIBUTE{CKA_LABEL, label.data(), label.size()}
                                     : CK_ATTRIBUTE{CKA_ID, id.data(), id.size()}};
        return FindOne(f, s, t, 2, 1);
      },
      "C_FindObjects did not find the object");
  f->C_Finalize(nullptr);
}

void Register() {
  for (size_t n : {size_t{1000}, size_t{10000}, size_t{100000}}) {
    const std::string sn = std::to_string(n);
    benchmark::RegisterBenchmark(("scale/initialize_and_first_find/objects/" + sn).c_str(),
                                 [n](benchmark::State& st) { Initialize(st, n, false); })
        ->UseManualTime()
        ->Iterations(3)
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("scale/initialize_and_read_all/objects/" + sn).c_str(),
                                 [n](benchmark::State& st) { Initialize(st, n, true); })
        ->UseManualTime()
        ->Iterations(3)
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("scale/find_by_label/objects/" + sn).c_str(),
                                 [n](benchmark::State& st) { Find(st, n, true); })
        ->UseRealTime();
    benchmark::RegisterBenchmark(("scale/find_by_id/objects/" + sn).c_str(),
                                 [n](benchmark::State& st) { Find(st, n, false); })
        ->UseRealTime();
  }
}

}  // namespace

int main(int argc, char** argv) {
  Register();
  return vaultp11::bench::RunBenchmarks(argc, argv, [] { return g_failed; });
}

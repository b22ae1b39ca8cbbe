#include "backend/p11/inner_module.h"

#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <unistd.h>

#include <climits>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <map>

namespace vaultp11::p11 {
namespace {

// Counts fork()s of this process: a child handler bumps it, so "forked since X" is a relaxed
// atomic compare instead of a getpid() syscall on every call (p11-kit's p11_forkid idea).
std::atomic<uint64_t> g_fork_count{0};
void OnForkChild() { g_fork_count.fetch_add(1, std::memory_order_relaxed); }
std::once_flag g_atfork_once;

std::atomic<bool> g_exiting{false};
void MarkExiting() { g_exiting.store(true, std::memory_order_relaxed); }

// Registers MarkExiting again, after a module was loaded (or initialised) and so after the exit
// handlers its static objects registered: it then runs before them. glibc has no limit on
// exit handlers; each Load of a library adds at most two.
void RegisterExitMark() {
  if (std::atexit(MarkExiting) != 0)
    log::Warning("cannot register the inner modules' exit handler");
}

// The 3.0 CK_INTERFACE. p11-kit 0.24's pkcs11.h predates 3.0, so it is spelled out here; the
// layout is fixed by the standard (name, function list, flags).
struct InterfaceV3 {
  CK_UTF8CHAR* pInterfaceName;
  void* pFunctionList;
  CK_FLAGS flags;
};
using GetInterfaceFn = CK_RV (*)(CK_UTF8CHAR*, CK_VERSION*, InterfaceV3**, CK_FLAGS);

// One entry per library (real path). `alive` counts instances not yet fully destroyed, so a
// Load racing with the last release waits for the old C_Finalize before initialising again.
struct Entry {
  std::weak_ptr<InnerModule> module;
  int alive = 0;
};
struct Registry {
  std::mutex mu;  // guards modules
  std::condition_variable cv;
  std::map<std::string, Entry> modules;
};
Registry& Reg() {
  static Registry* r = new Registry;  // never destroyed: modules may outlive static teardown
  return *r;
}

// dlsym on a handle also searches the library's dependencies: a vendor module linked with
// libp11-kit would otherwise hand us p11-kit's own C_GetFunctionList. Accept only symbols
// defined in the module itself.
void* OwnSymbol(void* dl, const char* name) {
  void* sym = dlsym(dl, name);
  if (sym == nullptr) return nullptr;
  Dl_info di{};
  struct link_map* lm = nullptr;
  if (dladdr(sym, &di) != 0 && dlinfo(dl, RTLD_DI_LINKMAP, &lm) == 0 && lm != nullptr &&
      di.dli_fname != nullptr && lm->l_name != nullptr &&
      std::strcmp(di.dli_fname, lm->l_name) != 0) {
    log::Warning("{} resolves to {} (a dependency), not to the module {}; ignored", name,
                 di.dli_fname, lm->l_name);
    return nullptr;
  }
  return sym;
}

std::string RealPathOf(const std::string& path) {
  char buf[PATH_MAX];
  if (realpath(path.c_str(), buf) != nullptr) return buf;
  return path;  // a bare soname searched by the loader, or a missing file (dlopen says which)
}

bool Required(const CK_FUNCTION_LIST* f, std::string* missing) {
  struct Need {
    bool present;
    const char* name;
  };
  const Need needs[] = {
      {f->C_Initialize != nullptr, "C_Initialize"},
      {f->C_GetSlotList != nullptr, "C_GetSlotList"},
      {f->C_GetTokenInfo != nullptr, "C_GetTokenInfo"},
      {f->C_OpenSession != nullptr, "C_OpenSession"},
      {f->C_CloseSession != nullptr, "C_CloseSession"},
  };
  for (const Need& n : needs) {
    if (!n.present) {
      *missing = n.name;
      return false;
    }
  }
  return true;
}

}  // namespace

bool ProcessExiting() { return g_exiting.load(std::memory_order_relaxed); }

Result<Quirks> Quirks::Parse(std::span<const std::string> names) {
  Quirks q;
  for (const std::string& n : names) {
    if (n == "no-deinit") {
      q.no_deinit = true;
    } else if (n == "fork-finalize") {
      q.fork_finalize = true;
    } else {
      return Err(CKR_FUNCTION_FAILED,
                 "unknown inner module quirk '{}' (known: no-deinit, fork-finalize)", n);
    }
  }
  return q;
}

Result<std::shared_ptr<InnerModule>> InnerModule::Load(const std::string& path,
                                                       const Quirks& quirks) {
  std::call_once(g_atfork_once, [] { pthread_atfork(nullptr, nullptr, &OnForkChild); });
  if (path.empty()) return Err(CKR_DEVICE_ERROR, "inner PKCS#11 module path is empty");
  const std::string key = RealPathOf(path);

  Registry& reg = Reg();
  std::unique_lock<std::mutex> l(reg.mu);
  // A module's deleter takes reg.mu: every path that may drop the last reference unlocks first.
  for (;;) {
    Entry& e = reg.modules[key];
    if (std::shared_ptr<InnerModule> m = e.module.lock()) {
      if (!(m->quirks() == quirks))
        log::Warning("inner module {} is already loaded with other quirks; keeping the first ones",
                     path);
      // Still under the registry lock: two threads of a fresh child re-initialise only once.
      Status st = m->ReinitializeIfForked();
      l.unlock();
      if (!st.ok()) return st.error();
      return m;
    }
    if (e.alive == 0) break;
    reg.cv.wait(l);  // the previous instance is finalizing
  }

  // Private constructor: no make_shared. The deleter keeps Entry::alive right.
  std::shared_ptr<InnerModule> m(new InnerModule(path, quirks), [key](InnerModule* p) {
    delete p;
    Registry& r = Reg();
    std::lock_guard<std::mutex> g(r.mu);
    auto it = r.modules.find(key);
    if (it != r.modules.end() && --it->second.alive <= 0 && it->second.module.expired())
      r.modules.erase(it);
    r.cv.notify_all();
  });
  ++reg.modules[key].alive;
  Status st = m->Open();
  if (st.ok()) st = m->Initialize();
  if (!st.ok()) {
    l.unlock();
    m.reset();
    return st.error();
  }
  reg.modules[key].module = m;
  return m;
}

Status InnerModule::Open() {
  dlerror();
  dl_ = dlopen(path_.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (dl_ == nullptr) {
    const char* why = dlerror();
    return Err(CKR_DEVICE_ERROR, "cannot load inner PKCS#11 module '{}': {}", path_,
               why ? why : "unknown error");
  }
  RegisterExitMark();  // after the module's static constructors (and their exit handlers)

  // PKCS#11 3.0 first (p11-kit modules.c, pkcs11-provider interface.c), then 2.x. A 3.x list
  // starts with the 2.40 entries in the same order, so both are used as CK_FUNCTION_LIST.
  if (auto get_interface = reinterpret_cast<GetInterfaceFn>(OwnSymbol(dl_, "C_GetInterface"))) {
    InterfaceV3* iface = nullptr;
    static CK_UTF8CHAR kName[] = "PKCS 11";
    CK_RV rv = get_interface(kName, nullptr, &iface, 0);
    if (rv == CKR_OK && iface != nullptr && iface->pFunctionList != nullptr) {
      fns_ = static_cast<CK_FUNCTION_LIST*>(iface->pFunctionList);
      via_get_interface_ = true;
    } else {
      log::Info(
          "inner module {}: C_GetInterface(\"PKCS 11\") returned 0x{:x}; trying C_GetFunctionList",
          path_, rv);
    }
  }
  if (fns_ == nullptr) {
    auto get_list = reinterpret_cast<CK_C_GetFunctionList>(OwnSymbol(dl_, "C_GetFunctionList"));
    if (get_list == nullptr)
      return Err(
          CKR_DEVICE_ERROR,
          "'{}' is not a PKCS#11 module: it exports neither C_GetInterface nor C_GetFunctionList",
          path_);
    CK_FUNCTION_LIST* list = nullptr;
    CK_RV rv = get_list(&list);
    if (rv != CKR_OK || list == nullptr)
      return Err(CKR_DEVICE_ERROR, "inner module '{}': C_GetFunctionList failed ({})", path_,
                 RvName(rv));
    fns_ = list;
  }
  if (fns_->version.major < 2)
    return Err(CKR_DEVICE_ERROR,
               "inner module '{}' has function list version {}.{}; 2.x or later is needed", path_,
               fns_->version.major, fns_->version.minor);
  std::string missing;
  if (!Required(fns_, &missing))
    return Err(CKR_DEVICE_ERROR, "inner module '{}' has no {} in its function list", path_,
               missing);
  return OkStatus();
}

Status InnerModule::Initialize() {
  // CKF_OS_LOCKING_OK with no callbacks: the module uses its own OS locks. pReserved is the
  // module's own string from config (NULL by default), never the application's.
  CK_C_INITIALIZE_ARGS args{};
  args.flags = CKF_OS_LOCKING_OK;
  args.pReserved =
      quirks_.init_reserved.empty() ? nullptr : const_cast<char*>(quirks_.init_reserved.c_str());
  CK_RV rv = VAULTP11_P11_CALL(*this, C_Initialize, &args);
  if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED) {
    // Another component of this process (or an earlier instance with no-deinit) owns it.
    log::Info("inner module {} was already initialised in this process", path_);
    initialized_by_us_ = false;
  } else if (rv != CKR_OK) {
    return Err(rv, "inner module '{}': C_Initialize failed ({})", path_, RvName(rv));
  } else {
    initialized_by_us_ = true;
  }
  // Again after C_Initialize: a module may register exit handlers there (function-local
  // statics, its crypto library's cleanup).
  RegisterExitMark();
  initialized_ = true;
  if (VAULTP11_P11_CALL(*this, C_GetInfo, &info_) != CKR_OK) info_ = CK_INFO{};
  pid_.store(getpid(), std::memory_order_relaxed);
  fork_count_at_init_.store(g_fork_count.load(std::memory_order_relaxed),
                            std::memory_order_relaxed);
  return OkStatus();
}

bool InnerModule::ForkedSinceInit() const {
  return g_fork_count.load(std::memory_order_relaxed) !=
         fork_count_at_init_.load(std::memory_order_relaxed);
}

Status InnerModule::ReinitializeIfForked() {
  if (!ForkedSinceInit()) return OkStatus();
  std::lock_guard<std::mutex> l(init_mu_);
  if (!ForkedSinceInit()) return OkStatus();

  const pid_t parent = pid();
  if (quirks_.fork_finalize) {
    CK_RV frv = VAULTP11_P11_CALL(*this, C_Finalize, nullptr);
    log::Debug("inner module {}: C_Finalize in forked child returned 0x{:x}", path_, frv);
  }
  CK_C_INITIALIZE_ARGS args{};
  args.flags = CKF_OS_LOCKING_OK;
  args.pReserved =
      quirks_.init_reserved.empty() ? nullptr : const_cast<char*>(quirks_.init_reserved.c_str());
  CK_RV rv = VAULTP11_P11_CALL(*this, C_Initialize, &args);
  bool fresh;
  if (rv == CKR_OK) {
    fresh = true;  // the module reset itself (fork detection, reset_on_fork) or was finalized above
    initialized_by_us_ = true;
  } else if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED) {
    // It kept the parent's state (SoftHSMv2's default): handles stay valid. That state may be
    // shared with the parent (a device connection), so this process never finalizes it.
    fresh = false;
    initialized_by_us_ = false;
  } else {
    return Err(rv, "inner module '{}': C_Initialize in forked child {} (parent {}) failed ({})",
               path_, getpid(), parent, RvName(rv));
  }
  pid_.store(getpid(), std::memory_order_relaxed);
  fork_count_at_init_.store(g_fork_count.load(std::memory_order_relaxed),
                            std::memory_order_relaxed);
  if (fresh) object_epoch_.fetch_add(1, std::memory_order_acq_rel);
  generation_.fetch_add(1, std::memory_order_acq_rel);
  log::Info("inner module {} re-initialised in forked child {} (parent {}): {}", path_, getpid(),
            parent, fresh ? "fresh state, inner object handles must be found again" : "state kept");
  return OkStatus();
}

InnerModule::~InnerModule() {
  // At exit the module's own static destructors may have run: finalizing or unloading it then
  // would run its code on freed state.
  if (ProcessExiting()) return;
  // A forked child that never re-initialised must not finalize the parent's state (with a
  // networked HSM the connection may be shared).
  const bool owner = !ForkedSinceInit();
  bool finalized = false;
  if (fns_ != nullptr && initialized_by_us_ && owner && !quirks_.no_deinit) {
    CK_RV rv = VAULTP11_P11_CALL(*this, C_Finalize, nullptr);
    if (rv != CKR_OK) log::Warning("inner module {}: C_Finalize returned {}", path_, RvName(rv));
    finalized = true;
  }
  // An initialised library stays mapped unless we finalized it (no-deinit, someone else's
  // initialisation, a forked child's copy): unloading live module state is never safe. The
  // next Load then finds it with CKR_CRYPTOKI_ALREADY_INITIALIZED.
  if (dl_ != nullptr && (finalized || !initialized_)) dlclose(dl_);
}

std::string RvName(CK_RV rv) {
  switch (rv) {
#define VAULTP11_RV_CASE(x) \
  case x:                   \
    return #x;
    VAULTP11_RV_CASE(CKR_OK)
    VAULTP11_RV_CASE(CKR_CANCEL)
    VAULTP11_RV_CASE(CKR_HOST_MEMORY)
    VAULTP11_RV_CASE(CKR_SLOT_ID_INVALID)
    VAULTP11_RV_CASE(CKR_GENERAL_ERROR)
    VAULTP11_RV_CASE(CKR_FUNCTION_FAILED)
    VAULTP11_RV_CASE(CKR_ARGUMENTS_BAD)
    VAULTP11_RV_CASE(CKR_CANT_LOCK)
    VAULTP11_RV_CASE(CKR_ATTRIBUTE_READ_ONLY)
    VAULTP11_RV_CASE(CKR_ATTRIBUTE_SENSITIVE)
    VAULTP11_RV_CASE(CKR_ATTRIBUTE_TYPE_INVALID)
    VAULTP11_RV_CASE(CKR_ATTRIBUTE_VALUE_INVALID)
    VAULTP11_RV_CASE(CKR_DATA_INVALID)
    VAULTP11_RV_CASE(CKR_DATA_LEN_RANGE)
    VAULTP11_RV_CASE(CKR_DEVICE_ERROR)
    VAULTP11_RV_CASE(CKR_DEVICE_MEMORY)
    VAULTP11_RV_CASE(CKR_DEVICE_REMOVED)
    VAULTP11_RV_CASE(CKR_ENCRYPTED_DATA_INVALID)
    VAULTP11_RV_CASE(CKR_ENCRYPTED_DATA_LEN_RANGE)
    VAULTP11_RV_CASE(CKR_FUNCTION_CANCELED)
    VAULTP11_RV_CASE(CKR_FUNCTION_NOT_SUPPORTED)
    VAULTP11_RV_CASE(CKR_KEY_HANDLE_INVALID)
    VAULTP11_RV_CASE(CKR_KEY_SIZE_RANGE)
    VAULTP11_RV_CASE(CKR_KEY_TYPE_INCONSISTENT)
    VAULTP11_RV_CASE(CKR_KEY_FUNCTION_NOT_PERMITTED)
    VAULTP11_RV_CASE(CKR_KEY_NOT_WRAPPABLE)
    VAULTP11_RV_CASE(CKR_KEY_UNEXTRACTABLE)
    VAULTP11_RV_CASE(CKR_MECHANISM_INVALID)
    VAULTP11_RV_CASE(CKR_MECHANISM_PARAM_INVALID)
    VAULTP11_RV_CASE(CKR_OBJECT_HANDLE_INVALID)
    VAULTP11_RV_CASE(CKR_OPERATION_ACTIVE)
    VAULTP11_RV_CASE(CKR_OPERATION_NOT_INITIALIZED)
    VAULTP11_RV_CASE(CKR_PIN_INCORRECT)
    VAULTP11_RV_CASE(CKR_PIN_INVALID)
    VAULTP11_RV_CASE(CKR_PIN_LEN_RANGE)
    VAULTP11_RV_CASE(CKR_PIN_EXPIRED)
    VAULTP11_RV_CASE(CKR_PIN_LOCKED)
    VAULTP11_RV_CASE(CKR_SESSION_CLOSED)
    VAULTP11_RV_CASE(CKR_SESSION_COUNT)
    VAULTP11_RV_CASE(CKR_SESSION_HANDLE_INVALID)
    VAULTP11_RV_CASE(CKR_SESSION_READ_ONLY)
    VAULTP11_RV_CASE(CKR_SIGNATURE_INVALID)
    VAULTP11_RV_CASE(CKR_SIGNATURE_LEN_RANGE)
    VAULTP11_RV_CASE(CKR_TEMPLATE_INCOMPLETE)
    VAULTP11_RV_CASE(CKR_TEMPLATE_INCONSISTENT)
    VAULTP11_RV_CASE(CKR_TOKEN_NOT_PRESENT)
    VAULTP11_RV_CASE(CKR_TOKEN_NOT_RECOGNIZED)
    VAULTP11_RV_CASE(CKR_TOKEN_WRITE_PROTECTED)
    VAULTP11_RV_CASE(CKR_UNWRAPPING_KEY_HANDLE_INVALID)
    VAULTP11_RV_CASE(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT)
    VAULTP11_RV_CASE(CKR_USER_ALREADY_LOGGED_IN)
    VAULTP11_RV_CASE(CKR_USER_NOT_LOGGED_IN)
    VAULTP11_RV_CASE(CKR_USER_PIN_NOT_INITIALIZED)
    VAULTP11_RV_CASE(CKR_USER_TYPE_INVALID)
    VAULTP11_RV_CASE(CKR_WRAPPED_KEY_INVALID)
    VAULTP11_RV_CASE(CKR_WRAPPED_KEY_LEN_RANGE)
    VAULTP11_RV_CASE(CKR_WRAPPING_KEY_HANDLE_INVALID)
    VAULTP11_RV_CASE(CKR_WRAPPING_KEY_TYPE_INCONSISTENT)
    VAULTP11_RV_CASE(CKR_BUFFER_TOO_SMALL)
    VAULTP11_RV_CASE(CKR_CRYPTOKI_NOT_INITIALIZED)
    VAULTP11_RV_CASE(CKR_CRYPTOKI_ALREADY_INITIALIZED)
#undef VAULTP11_RV_CASE
    default:
      return fmt::format("CKR 0x{:x}", rv);
  }
}

}  // namespace vaultp11::p11

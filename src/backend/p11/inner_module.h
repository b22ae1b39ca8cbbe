// InnerModule models one vendor PKCS#11 library (the "inner driver" of HSM-backed keys), loaded
// once per process and shared by every inner token that lives in it.
#pragma once

#include <p11-kit/pkcs11.h>
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <utility>

#include "util/log.h"
#include "util/result.h"

namespace vaultp11::p11 {

// Per-module workarounds, from the config's `quirks:` list of an inner module.
struct Quirks {
  // "no-deinit": never call the inner C_Finalize (nor dlclose the library). SoftHSMv2 wants
  // this: finalizing it while OpenSSL is being torn down at exit crashes (pkcs11-provider's
  // quirk of the same name); our config docs set it for SoftHSM.
  bool no_deinit = false;
  // "fork-finalize": in a forked child, call C_Finalize before C_Initialize. Only for modules
  // that need a clean slate in the child; it invalidates every inner object handle (see
  // InnerModule::object_epoch). Never for modules whose C_Finalize talks to a shared device
  // connection, which would tear down the parent's sessions.
  bool fork_finalize = false;
  // The inner module's own C_Initialize pReserved string (e.g. NSS softokn parameters). Empty
  // means NULL. Never the application's pReserved.
  std::string init_reserved;

  // Parses the config names ("no-deinit", "fork-finalize"); anything else is
  // CKR_FUNCTION_FAILED naming the unknown quirk.
  static Result<Quirks> Parse(std::span<const std::string> names);
  bool operator==(const Quirks&) const = default;
};

// True once the process has started exiting (exit() or a return from main), as seen by an
// exit handler registered right after each inner module is loaded and initialised: handlers
// run in reverse order, so it runs before the static destructors that module registered.
// From then on no inner function is called (Call answers CKR_CRYPTOKI_NOT_INITIALIZED) and no
// module is finalized or unloaded: OpenSSL's exit-time cleanup calls our C_Finalize after
// SoftHSMv2's destructors have run (issue 16 item 12).
bool ProcessExiting();

class InnerModule {
 public:
  // Loads `path` with dlopen(RTLD_NOW | RTLD_LOCAL), gets its function list (C_GetInterface
  // "PKCS 11" if exported, else C_GetFunctionList) and calls its C_Initialize with
  // CKF_OS_LOCKING_OK and no mutex callbacks. One instance per library per process: a second
  // Load of the same file (by real path) returns the same object while it lives, whatever
  // `quirks` says (a difference is logged). CKR_CRYPTOKI_ALREADY_INITIALIZED from the inner
  // C_Initialize is accepted (another component of the process initialised it; then we never
  // finalize it either). In a forked child, Load re-initialises the module first (see
  // ReinitializeIfForked).
  // Errors: a library that cannot be loaded or has no usable function list is CKR_DEVICE_ERROR
  // naming the path; a failing inner C_Initialize passes its CK_RV through.
  static Result<std::shared_ptr<InnerModule>> Load(const std::string& path, const Quirks& quirks);

  // Calls the inner C_Finalize unless quirk no-deinit is set, we did not initialise the module,
  // this is a forked child that never re-initialised it (the state belongs to the parent), or
  // the process is exiting (ProcessExiting: nothing is finalized or unloaded then).
  ~InnerModule();
  InnerModule(const InnerModule&) = delete;
  InnerModule& operator=(const InnerModule&) = delete;

  const std::string& path() const { return path_; }
  const Quirks& quirks() const { return quirks_; }
  const CK_INFO& info() const { return info_; }
  // The function list version the module reported (2.x, or 3.x through C_GetInterface).
  CK_VERSION function_list_version() const { return fns_->version; }
  bool via_get_interface() const { return via_get_interface_; }
  // True when our C_Initialize in this process returned CKR_OK (not
  // CKR_CRYPTOKI_ALREADY_INITIALIZED): only then does the destructor call C_Finalize.
  bool initialized_by_us() const { return initialized_by_us_; }

  // Process id at the last (re)initialisation.
  pid_t pid() const { return pid_.load(std::memory_order_relaxed); }
  // Bumped at every re-initialisation in a forked child: inner sessions opened under an older
  // generation belong to the parent and must be dropped without C_CloseSession (a new session
  // in the child may have the same handle number).
  uint64_t generation() const { return generation_.load(std::memory_order_acquire); }
  // Bumped when the module's state was reset (its C_Initialize returned CKR_OK in the child, or
  // quirk fork-finalize): inner object handles learnt under an older epoch are invalid and must
  // be found again (by CKA_ID / CKA_LABEL). Unchanged when the module kept its state across
  // fork (SoftHSMv2's default: the child's C_Initialize says CKR_CRYPTOKI_ALREADY_INITIALIZED
  // and the parent's handles keep working).
  uint64_t object_epoch() const { return object_epoch_.load(std::memory_order_acquire); }

  // True when the process forked since the module was last (re)initialised. Cheap: one relaxed
  // atomic load per call (a pthread_atfork child handler counts forks).
  bool ForkedSinceInit() const;
  // In a forked child: calls the inner C_Initialize again (after C_Finalize with quirk
  // fork-finalize; CKR_CRYPTOKI_ALREADY_INITIALIZED accepted) and bumps generation(). No-op
  // (and cheap) in the process that initialised the module.
  Status ReinitializeIfForked();

  // The raw function list; prefer Call / VAULTP11_P11_CALL, which check for NULL entries.
  const CK_FUNCTION_LIST* functions() const { return fns_; }

  // Calls one inner function through the list: a NULL entry is CKR_FUNCTION_NOT_SUPPORTED
  // instead of a crash, and once the process is exiting (ProcessExiting) every call is
  // CKR_CRYPTOKI_NOT_INITIALIZED without reaching the module. With debug logging on, every
  // call is traced with its result (pkcs11-provider's IMPL_CALL_PROLOG/EPILOG); otherwise this
  // costs two relaxed loads.
  template <typename Fn, typename... Args>
  CK_RV Call(Fn CK_FUNCTION_LIST::*member, const char* name, Args... args) const {
    if (ProcessExiting()) return CKR_CRYPTOKI_NOT_INITIALIZED;
    Fn fn = fns_->*member;
    if (fn == nullptr) {
      log::Debug("inner {}: {} is NULL in the function list", path_, name);
      return CKR_FUNCTION_NOT_SUPPORTED;
    }
    CK_RV rv = fn(args...);
    if (log::Enabled(log::Level::kDebug)) log::Debug("inner {}: {} -> 0x{:x}", path_, name, rv);
    return rv;
  }

 private:
  InnerModule(std::string path, const Quirks& quirks) : path_(std::move(path)), quirks_(quirks) {}
  Status Open();        // dlopen + function list
  Status Initialize();  // inner C_Initialize (first load and in a child)

  const std::string path_;
  const Quirks quirks_;
  void* dl_ = nullptr;
  CK_FUNCTION_LIST* fns_ = nullptr;
  bool via_get_interface_ = false;
  bool initialized_by_us_ = false;
  bool initialized_ = false;  // the library is initialised (by us or another component)
  CK_INFO info_{};

  std::mutex init_mu_;  // serialises (re)initialisation; never held on the call path
  std::atomic<pid_t> pid_{0};
  std::atomic<uint64_t> fork_count_at_init_{0};
  std::atomic<uint64_t> generation_{0};
  std::atomic<uint64_t> object_epoch_{0};
};

// Calls `fn` of `module` (an InnerModule or a reference to one) with the given arguments.
#define VAULTP11_P11_CALL(module, fn, ...) (module).Call(&CK_FUNCTION_LIST::fn, #fn, __VA_ARGS__)

// Text for an inner CK_RV in messages ("CKR_PIN_INCORRECT", else hex).
std::string RvName(CK_RV rv);

}  // namespace vaultp11::p11

// The C ABI: one extern "C" shim per PKCS#11 function. Each clears the OpenSSL error queue,
// calls the dispatcher inside a catch-all (no exception crosses the ABI), logs a failure once
// and returns its CK_RV.
#include <openssl/err.h>
#include <p11-kit/pkcs11.h>

#include <cstring>
#include <iterator>
#include <new>
#include <optional>
#include <string_view>

#include "abi/pkcs11_3_0.h"
#include "core/audit_hooks.h"
#include "core/calls.h"
#include "core/provider.h"
#include "util/log.h"

#define VAULTP11_EXPORT __attribute__((visibility("default")))

namespace vaultp11::abi {

namespace {
bool Serious(CK_RV rv) {
  return rv == CKR_GENERAL_ERROR || rv == CKR_FUNCTION_FAILED || rv == CKR_DEVICE_ERROR || rv == CKR_HOST_MEMORY ||
         rv == CKR_DEVICE_MEMORY;
}
}  // namespace

// C_Initialize and C_Finalize are not counted as calls in flight: C_Finalize waits for those.
constexpr bool InFlight(std::string_view name) {
  return name != "Initialize" && name != "Finalize";
}

// Each call is audited when the module has a recorder: the dispatcher fills in the call's
// event (core/audit_hooks.h) and it is submitted here with the result.
// kInFlight: the call holds a core::CallScope from before it reads the provider or the audit
// recorder until after its audit event is submitted, so C_Finalize frees neither under it.
template <bool kInFlight = true, typename F>
CK_RV Invoke(const char* name, F&& f) noexcept {
  std::optional<core::CallScope> in_flight;
  if constexpr (kInFlight) {
    in_flight.emplace();
    // Before C_Initialize (or once C_Finalize started) every function answers
    // CKR_CRYPTOKI_NOT_INITIALIZED first, whatever its arguments (PKCS#11 2.40 section 5.4).
    if (!core::Initialized()) return CKR_CRYPTOKI_NOT_INITIALIZED;
  }
  try {
    // Errors the caller left on this thread's OpenSSL queue are not ours to report.
    if (ERR_peek_error() != 0) ERR_clear_error();
    std::optional<core::AuditCall> call;  // only when auditing is on
    if (core::AuditRecorder() != nullptr) call.emplace();
    core::AuditScope scope(call ? &*call : nullptr);
    Status st = f();
    if (call) core::SubmitAudit(*call, st);
    if (st.ok()) return CKR_OK;
    const Error& e = st.error();
    if (Serious(e.rv))
      log::Error("{}: 0x{:08x}: {}", name, e.rv, e.message);
    else
      log::Debug("{}: 0x{:08x}: {}", name, e.rv, e.message);
    return e.rv;
  } catch (const std::bad_alloc&) {
    return CKR_HOST_MEMORY;
  } catch (const std::exception& ex) {
    log::Error("{}: unexpected exception: {}", name, ex.what());
    return CKR_GENERAL_ERROR;
  } catch (...) {
    return CKR_GENERAL_ERROR;
  }
}

CK_RV NotSupportedResult() noexcept {
  return core::Initialized() ? CKR_FUNCTION_NOT_SUPPORTED : CKR_CRYPTOKI_NOT_INITIALIZED;
}

}  // namespace vaultp11::abi

#define VP11_FN(name, params, args)                                   \
  extern "C" VAULTP11_EXPORT CK_RV C_##name params {                  \
    return ::vaultp11::abi::Invoke<::vaultp11::abi::InFlight(#name)>( \
        "C_" #name, [&] { return ::vaultp11::core::name args; });     \
  }
// Before C_Initialize every function but C_GetFunctionList / C_GetInterface* answers
// CKR_CRYPTOKI_NOT_INITIALIZED (PKCS#11 2.40 section 5.4), the unsupported ones too.
#define VP11_NS(name, params) \
  extern "C" VAULTP11_EXPORT CK_RV C_##name params { return ::vaultp11::abi::NotSupportedResult(); }
#define VP11_GET_FUNCTION_LIST()
#include "abi/functions.inc"
#undef VP11_FN
#undef VP11_NS
#undef VP11_GET_FUNCTION_LIST

namespace {
// The v2.40 function list, generated from the same list; designated initializers make a
// misordered entry a compile error.
CK_FUNCTION_LIST kFunctionList = {
    .version = {2, 40},
#include "abi/function_list_240.inc"
};
}  // namespace

extern "C" VAULTP11_EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList) {
  if (ppFunctionList == nullptr) return CKR_ARGUMENTS_BAD;
  *ppFunctionList = &kFunctionList;
  return CKR_OK;
}

// ---- PKCS#11 3.0 -------------------------------------------------------------------------------
// C_GetInterfaceList / C_GetInterface offer the 3.0 list (with C_LoginUser) and the 2.40 list,
// both named "PKCS 11". The message-based functions and C_SessionCancel are not supported.

extern "C" VAULTP11_EXPORT CK_RV C_LoginUser(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin,
                                             CK_ULONG ulPinLen, CK_UTF8CHAR_PTR pUsername, CK_ULONG ulUsernameLen) {
  return ::vaultp11::abi::Invoke("C_LoginUser", [&] {
    return ::vaultp11::core::LoginUser(hSession, userType, pPin, ulPinLen, pUsername, ulUsernameLen);
  });
}

namespace {

// A CKR_FUNCTION_NOT_SUPPORTED entry for a function list member, its signature taken from the
// member's own pointer type.
template <typename Fn>
struct NotSupported;
template <typename... Args>
struct NotSupported<CK_RV (*)(Args...)> {
  static CK_RV Call(Args...) { return ::vaultp11::abi::NotSupportedResult(); }
};

extern "C" CK_RV C_GetInterfaceList(CK_INTERFACE_PTR pInterfacesList, CK_ULONG_PTR pulCount);
extern "C" CK_RV C_GetInterface(CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion,
                                CK_INTERFACE_PTR_PTR ppInterface, CK_FLAGS flags);

#define VP11_NS3(name) .C_##name = NotSupported<decltype(CK_FUNCTION_LIST_3_0::C_##name)>::Call,
CK_FUNCTION_LIST_3_0 kFunctionList30 = {
    .version = {3, 0},
#include "abi/function_list_240.inc"
    .C_GetInterfaceList = C_GetInterfaceList,
    .C_GetInterface = C_GetInterface,
    .C_LoginUser = C_LoginUser,
    VP11_NS3(SessionCancel)
    VP11_NS3(MessageEncryptInit)
    VP11_NS3(EncryptMessage)
    VP11_NS3(EncryptMessageBegin)
    VP11_NS3(EncryptMessageNext)
    VP11_NS3(MessageEncryptFinal)
    VP11_NS3(MessageDecryptInit)
    VP11_NS3(DecryptMessage)
    VP11_NS3(DecryptMessageBegin)
    VP11_NS3(DecryptMessageNext)
    VP11_NS3(MessageDecryptFinal)
    VP11_NS3(MessageSignInit)
    VP11_NS3(SignMessage)
    VP11_NS3(SignMessageBegin)
    VP11_NS3(SignMessageNext)
    VP11_NS3(MessageSignFinal)
    VP11_NS3(MessageVerifyInit)
    VP11_NS3(VerifyMessage)
    VP11_NS3(VerifyMessageBegin)
    VP11_NS3(VerifyMessageNext)
    VP11_NS3(MessageVerifyFinal)
};
#undef VP11_NS3

CK_UTF8CHAR kInterfaceName[] = "PKCS 11";
// Not CKF_INTERFACE_FORK_SAFE: a forked child must call C_Initialize again.
CK_INTERFACE kInterfaces[] = {
    {kInterfaceName, &kFunctionList30, 0},
    {kInterfaceName, &kFunctionList, 0},
};

const CK_VERSION& VersionOf(const CK_INTERFACE& i) { return *static_cast<const CK_VERSION*>(i.pFunctionList); }

}  // namespace

extern "C" VAULTP11_EXPORT CK_RV C_GetInterfaceList(CK_INTERFACE_PTR pInterfacesList, CK_ULONG_PTR pulCount) {
  if (pulCount == nullptr) return CKR_ARGUMENTS_BAD;
  const CK_ULONG n = std::size(kInterfaces);
  if (pInterfacesList == nullptr) {
    *pulCount = n;
    return CKR_OK;
  }
  if (*pulCount < n) {
    *pulCount = n;
    return CKR_BUFFER_TOO_SMALL;
  }
  for (CK_ULONG i = 0; i < n; ++i) pInterfacesList[i] = kInterfaces[i];
  *pulCount = n;
  return CKR_OK;
}

extern "C" VAULTP11_EXPORT CK_RV C_GetInterface(CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion,
                                                CK_INTERFACE_PTR_PTR ppInterface, CK_FLAGS flags) {
  if (ppInterface == nullptr) return CKR_ARGUMENTS_BAD;
  for (CK_INTERFACE& i : kInterfaces) {
    if (pInterfaceName != nullptr &&
        std::strcmp(reinterpret_cast<const char*>(pInterfaceName), reinterpret_cast<const char*>(i.pInterfaceName)) != 0)
      continue;
    const CK_VERSION& v = VersionOf(i);
    if (pVersion != nullptr && (pVersion->major != v.major || pVersion->minor != v.minor)) continue;
    if ((i.flags & flags) != flags) continue;
    *ppInterface = &i;  // the first match: 3.0 when no version is asked for
    return CKR_OK;
  }
  return CKR_ARGUMENTS_BAD;
}

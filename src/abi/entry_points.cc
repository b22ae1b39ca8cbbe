// The C ABI: one extern "C" shim per PKCS#11 function. Each clears the OpenSSL error queue,
// calls the dispatcher inside a catch-all (no exception crosses the ABI), logs a failure once
// and returns its CK_RV.
#include <openssl/err.h>
#include <p11-kit/pkcs11.h>

#include <new>

#include "core/calls.h"
#include "util/log.h"

#define VAULTP11_EXPORT __attribute__((visibility("default")))

namespace vaultp11::abi {

namespace {
bool Serious(CK_RV rv) {
  return rv == CKR_GENERAL_ERROR || rv == CKR_FUNCTION_FAILED || rv == CKR_DEVICE_ERROR || rv == CKR_HOST_MEMORY ||
         rv == CKR_DEVICE_MEMORY;
}
}  // namespace

template <typename F>
CK_RV Invoke(const char* name, F&& f) noexcept {
  try {
    ERR_clear_error();
    Status st = f();
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

}  // namespace vaultp11::abi

#define VP11_FN(name, params, args)                                                    \
  extern "C" VAULTP11_EXPORT CK_RV C_##name params {                                   \
    return ::vaultp11::abi::Invoke("C_" #name, [&] { return ::vaultp11::core::name args; }); \
  }
#define VP11_NS(name, params) \
  extern "C" VAULTP11_EXPORT CK_RV C_##name params { return CKR_FUNCTION_NOT_SUPPORTED; }
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
#define VP11_FN(name, params, args) .C_##name = C_##name,
#define VP11_NS(name, params) .C_##name = C_##name,
#define VP11_GET_FUNCTION_LIST() .C_GetFunctionList = C_GetFunctionList,
#include "abi/functions.inc"
#undef VP11_FN
#undef VP11_NS
#undef VP11_GET_FUNCTION_LIST
};
}  // namespace

extern "C" VAULTP11_EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList) {
  if (ppFunctionList == nullptr) return CKR_ARGUMENTS_BAD;
  *ppFunctionList = &kFunctionList;
  return CKR_OK;
}

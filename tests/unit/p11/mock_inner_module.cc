// A tiny inner PKCS#11 module for fault injection (like p11-kit's mock-module-ep*.c): it exports
// C_GetInterface and C_GetFunctionList, has one token "mock" (no login required), leaves most
// function-list entries NULL, and lets tests steer it through the environment:
//   MOCK_P11_INIT_RV            CK_RV that C_Initialize returns (decimal or 0x hex)
//   MOCK_P11_GETINTERFACE_RV    CK_RV that C_GetInterface returns (forces the 2.x fallback)
// It detects fork itself (a child's C_Initialize starts afresh, like SoftHSM with
// library.reset_on_fork) and counts calls for the tests (mock_p11_counts).
#include <p11-kit/pkcs11.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#define MOCK_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

struct InterfaceV3 {
  CK_UTF8CHAR* pInterfaceName;
  void* pFunctionList;
  CK_FLAGS flags;
};

bool g_initialized = false;
pid_t g_init_pid = 0;
int g_init_calls = 0, g_finalize_calls = 0, g_get_interface_calls = 0, g_open_sessions = 0;
CK_SESSION_HANDLE g_next_session = 1;

CK_RV EnvRv(const char* name, CK_RV dflt) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return dflt;
  return static_cast<CK_RV>(std::strtoul(v, nullptr, 0));
}

void Pad(unsigned char* dst, size_t n, const char* s) {
  std::memset(dst, ' ', n);
  std::memcpy(dst, s, std::strlen(s));
}

CK_RV Initialize(void*) {
  ++g_init_calls;
  CK_RV forced = EnvRv("MOCK_P11_INIT_RV", CKR_OK);
  if (forced != CKR_OK) return forced;
  if (g_initialized && g_init_pid == getpid()) return CKR_CRYPTOKI_ALREADY_INITIALIZED;
  g_initialized = true;  // first time, or a forked child: start afresh
  g_init_pid = getpid();
  g_next_session = 1;
  g_open_sessions = 0;
  return CKR_OK;
}

CK_RV Finalize(void*) {
  ++g_finalize_calls;
  if (!g_initialized) return CKR_CRYPTOKI_NOT_INITIALIZED;
  g_initialized = false;
  return CKR_OK;
}

CK_RV GetInfo(CK_INFO* info) {
  if (!g_initialized) return CKR_CRYPTOKI_NOT_INITIALIZED;
  std::memset(info, 0, sizeof(*info));
  info->cryptokiVersion = {2, 40};
  Pad(info->manufacturerID, sizeof(info->manufacturerID), "vaultp11 tests");
  Pad(info->libraryDescription, sizeof(info->libraryDescription), "mock inner module");
  return CKR_OK;
}

CK_RV GetSlotList(CK_BBOOL, CK_SLOT_ID* list, CK_ULONG* count) {
  if (!g_initialized) return CKR_CRYPTOKI_NOT_INITIALIZED;
  if (list == nullptr) {
    *count = 1;
    return CKR_OK;
  }
  if (*count < 1) {
    *count = 1;
    return CKR_BUFFER_TOO_SMALL;
  }
  list[0] = 7;
  *count = 1;
  return CKR_OK;
}

CK_RV GetSlotInfo(CK_SLOT_ID slot, CK_SLOT_INFO* info) {
  if (slot != 7) return CKR_SLOT_ID_INVALID;
  std::memset(info, 0, sizeof(*info));
  Pad(info->slotDescription, sizeof(info->slotDescription), "mock slot");
  Pad(info->manufacturerID, sizeof(info->manufacturerID), "vaultp11 tests");
  info->flags = CKF_TOKEN_PRESENT;
  return CKR_OK;
}

CK_RV GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO* info) {
  if (!g_initialized) return CKR_CRYPTOKI_NOT_INITIALIZED;
  if (slot != 7) return CKR_SLOT_ID_INVALID;
  std::memset(info, 0, sizeof(*info));
  Pad(info->label, sizeof(info->label), "mock");
  Pad(info->manufacturerID, sizeof(info->manufacturerID), "vaultp11 tests");
  Pad(info->model, sizeof(info->model), "mock");
  Pad(info->serialNumber, sizeof(info->serialNumber), "0007");
  info->flags = CKF_TOKEN_INITIALIZED;  // no CKF_LOGIN_REQUIRED
  return CKR_OK;
}

CK_RV OpenSession(CK_SLOT_ID slot, CK_FLAGS, void*, CK_NOTIFY, CK_SESSION_HANDLE* h) {
  if (!g_initialized) return CKR_CRYPTOKI_NOT_INITIALIZED;
  if (slot != 7) return CKR_SLOT_ID_INVALID;
  *h = g_next_session++;
  ++g_open_sessions;
  return CKR_OK;
}

CK_RV CloseSession(CK_SESSION_HANDLE) {
  if (!g_initialized) return CKR_CRYPTOKI_NOT_INITIALIZED;
  --g_open_sessions;
  return CKR_OK;
}

CK_FUNCTION_LIST MakeList(CK_BYTE major, CK_BYTE minor) {
  CK_FUNCTION_LIST f;
  std::memset(&f, 0, sizeof(f));  // every other entry NULL: callers must check
  f.version = {major, minor};
  f.C_Initialize = Initialize;
  f.C_Finalize = Finalize;
  f.C_GetInfo = GetInfo;
  f.C_GetSlotList = GetSlotList;
  f.C_GetSlotInfo = GetSlotInfo;
  f.C_GetTokenInfo = GetTokenInfo;
  f.C_OpenSession = OpenSession;
  f.C_CloseSession = CloseSession;
  return f;
}

// The 3.0 list starts with the 2.40 entries; the 3.0 additions are not needed by the tests.
CK_FUNCTION_LIST g_list_v3 = MakeList(3, 0);
CK_FUNCTION_LIST g_list_v2 = MakeList(2, 40);
CK_UTF8CHAR g_name[] = "PKCS 11";
InterfaceV3 g_interface = {g_name, &g_list_v3, 0};

}  // namespace

MOCK_EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST** list) {
  if (list == nullptr) return CKR_ARGUMENTS_BAD;
  *list = &g_list_v2;
  return CKR_OK;
}

MOCK_EXPORT CK_RV C_GetInterface(CK_UTF8CHAR* name, CK_VERSION*, InterfaceV3** iface, CK_FLAGS) {
  ++g_get_interface_calls;
  CK_RV forced = EnvRv("MOCK_P11_GETINTERFACE_RV", CKR_OK);
  if (forced != CKR_OK) return forced;
  if (iface == nullptr) return CKR_ARGUMENTS_BAD;
  if (name != nullptr && std::strcmp(reinterpret_cast<char*>(name), "PKCS 11") != 0)
    return CKR_ARGUMENTS_BAD;
  *iface = &g_interface;
  return CKR_OK;
}

// Test hook: call counts and sessions open now.
MOCK_EXPORT void mock_p11_counts(int* init, int* finalize, int* get_interface, int* open_sessions) {
  *init = g_init_calls;
  *finalize = g_finalize_calls;
  *get_interface = g_get_interface_calls;
  *open_sessions = g_open_sessions;
}

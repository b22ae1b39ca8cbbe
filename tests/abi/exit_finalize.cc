// exit_finalize MODULE CONFIG SLOT PIN: the exit-time shape of OpenSSL with pkcs11-provider
// (issue 16 item 12). Like OpenSSL, it registers an exit handler that calls C_Finalize before
// the module (and so the inner HSM module behind it) is loaded; then it initialises the module,
// logs in on SLOT (a premium vault whose keys default to the HSM), generates an EC key there,
// signs with it and returns from main without C_Finalize. Exit handlers run in reverse order of
// registration: the inner module's static destructors (registered when it was loaded) run
// before the C_Finalize of our handler, which must then make no inner call. Exit status: 0
// when everything, the exit-time C_Finalize included, went well; 2-9 name the step that
// failed; a crash at exit shows as a signal.
#include <dlfcn.h>
#include <p11-kit/pkcs11.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

CK_FUNCTION_LIST* g_f = nullptr;

void FinalizeAtExit() {
  if (g_f == nullptr) return;
  CK_RV rv = g_f->C_Finalize(nullptr);
  if (rv != CKR_OK) {
    std::fprintf(stderr, "exit_finalize: C_Finalize at exit returned 0x%lx\n", rv);
    _exit(9);
  }
}

int Fail(int code, const char* what, CK_RV rv) {
  std::fprintf(stderr, "exit_finalize: %s returned 0x%lx\n", what, rv);
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: exit_finalize MODULE CONFIG SLOT PIN\n");
    return 2;
  }
  std::atexit(FinalizeAtExit);  // first, as OpenSSL's cleanup is registered at its start
  void* h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (h == nullptr) return Fail(3, dlerror(), 0);
  auto gfl = reinterpret_cast<CK_C_GetFunctionList>(dlsym(h, "C_GetFunctionList"));
  CK_FUNCTION_LIST* f = nullptr;
  if (gfl == nullptr || gfl(&f) != CKR_OK) return Fail(3, "C_GetFunctionList", 0);
  CK_C_INITIALIZE_ARGS args{};
  args.flags = CKF_OS_LOCKING_OK;
  args.pReserved = argv[2];
  CK_RV rv = f->C_Initialize(&args);
  if (rv != CKR_OK) return Fail(4, "C_Initialize", rv);
  g_f = f;
  const CK_SLOT_ID slot = std::strtoul(argv[3], nullptr, 10);
  CK_SESSION_HANDLE s = 0;
  rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &s);
  if (rv != CKR_OK) return Fail(5, "C_OpenSession", rv);
  rv = f->C_Login(s, CKU_USER, reinterpret_cast<CK_UTF8CHAR_PTR>(argv[4]), std::strlen(argv[4]));
  if (rv != CKR_OK) return Fail(6, "C_Login", rv);
  // An EC P-256 key pair in the vault's HSM (its default protection), then one signature.
  CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
  CK_BBOOL yes = CK_TRUE;
  char label[] = "exit-finalize";
  CK_ATTRIBUTE pub_t[] = {{CKA_EC_PARAMS, p256, sizeof(p256)},
                          {CKA_TOKEN, &yes, sizeof(yes)},
                          {CKA_VERIFY, &yes, sizeof(yes)},
                          {CKA_LABEL, label, sizeof(label) - 1}};
  CK_ATTRIBUTE priv_t[] = {{CKA_TOKEN, &yes, sizeof(yes)},
                           {CKA_PRIVATE, &yes, sizeof(yes)},
                           {CKA_SENSITIVE, &yes, sizeof(yes)},
                           {CKA_SIGN, &yes, sizeof(yes)},
                           {CKA_LABEL, label, sizeof(label) - 1}};
  CK_MECHANISM gen{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
  CK_OBJECT_HANDLE pub = 0, priv = 0;
  rv = f->C_GenerateKeyPair(s, &gen, pub_t, 4, priv_t, 5, &pub, &priv);
  if (rv != CKR_OK) return Fail(7, "C_GenerateKeyPair", rv);
  CK_MECHANISM m{CKM_ECDSA_SHA256, nullptr, 0};
  CK_BYTE data[] = "signed before exit";
  CK_BYTE sig[64];
  CK_ULONG len = sizeof(sig);
  rv = f->C_SignInit(s, &m, priv);
  if (rv == CKR_OK) rv = f->C_Sign(s, data, sizeof(data) - 1, sig, &len);
  if (rv != CKR_OK) return Fail(8, "C_Sign", rv);
  return 0;  // no C_Finalize here: the exit handler calls it
}

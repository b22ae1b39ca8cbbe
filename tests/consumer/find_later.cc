// A long-running PKCS#11 client for the two-process consumer test.
//
//   find_later MODULE_PATH
//
// dlopens MODULE_PATH, calls C_Initialize with pReserved = NULL (the module finds its config
// through $VAULTP11_CONF), opens a session on the first slot and logs in with the PIN in
// $VAULTP11_PIN. It then prints "ready" and, for every line read from stdin, searches the
// token for objects whose CKA_LABEL is that line and prints the number found, one line per
// request; a line "version LABEL" prints instead the CKA_VAULTP11_VERSION of the private key
// the label finds ("-" when none), as a signer resolving pkcs11:object=LABEL would pick it. It exits 0 at end of input, non-zero (with a message on stderr) when a PKCS#11 call
// fails.
#include <dlfcn.h>
#include <p11-kit/pkcs11.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

namespace {

bool Check(const char* what, CK_RV rv) {
  if (rv == CKR_OK) return true;
  std::fprintf(stderr, "find_later: %s failed: CK_RV 0x%08lx\n", what, static_cast<unsigned long>(rv));
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s MODULE_PATH  (PIN in $VAULTP11_PIN, labels on stdin)\n", argv[0]);
    return 2;
  }
  const char* pin = std::getenv("VAULTP11_PIN");
  if (pin == nullptr) {
    std::fprintf(stderr, "find_later: $VAULTP11_PIN is not set\n");
    return 2;
  }
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    std::fprintf(stderr, "find_later: dlopen %s: %s\n", argv[1], dlerror());
    return 1;
  }
  auto get_list = reinterpret_cast<CK_C_GetFunctionList>(dlsym(lib, "C_GetFunctionList"));
  if (get_list == nullptr) {
    std::fprintf(stderr, "find_later: C_GetFunctionList not exported\n");
    return 1;
  }
  CK_FUNCTION_LIST_PTR f = nullptr;
  if (!Check("C_GetFunctionList", get_list(&f))) return 1;

  CK_C_INITIALIZE_ARGS init_args;
  std::memset(&init_args, 0, sizeof(init_args));
  init_args.flags = CKF_OS_LOCKING_OK;
  init_args.pReserved = nullptr;
  if (!Check("C_Initialize", f->C_Initialize(&init_args))) return 1;

  CK_ULONG nslots = 0;
  if (!Check("C_GetSlotList", f->C_GetSlotList(CK_TRUE, nullptr, &nslots))) return 1;
  if (nslots == 0) {
    std::fprintf(stderr, "find_later: no slot\n");
    return 1;
  }
  std::vector<CK_SLOT_ID> slots(nslots);
  if (!Check("C_GetSlotList", f->C_GetSlotList(CK_TRUE, slots.data(), &nslots))) return 1;

  CK_SESSION_HANDLE session = 0;
  if (!Check("C_OpenSession", f->C_OpenSession(slots[0], CKF_SERIAL_SESSION, nullptr, nullptr, &session)))
    return 1;
  if (!Check("C_Login", f->C_Login(session, CKU_USER, reinterpret_cast<CK_UTF8CHAR_PTR>(const_cast<char*>(pin)),
                                   std::strlen(pin))))
    return 1;

  std::cout << "ready" << std::endl;
  std::string label;
  while (std::getline(std::cin, label)) {
    const bool want_version = label.rfind("version ", 0) == 0;
    if (want_version) label.erase(0, 8);
    CK_OBJECT_CLASS priv = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE tmpl[] = {{CKA_LABEL, label.data(), static_cast<CK_ULONG>(label.size())},
                           {CKA_CLASS, &priv, sizeof(priv)}};
    if (!Check("C_FindObjectsInit", f->C_FindObjectsInit(session, tmpl, want_version ? 2 : 1))) return 1;
    CK_ULONG total = 0;
    CK_OBJECT_HANDLE first = CK_INVALID_HANDLE;
    for (;;) {
      CK_OBJECT_HANDLE found[16];
      CK_ULONG n = 0;
      if (!Check("C_FindObjects", f->C_FindObjects(session, found, 16, &n))) return 1;
      if (n == 0) break;
      if (total == 0) first = found[0];
      total += n;
    }
    if (!Check("C_FindObjectsFinal", f->C_FindObjectsFinal(session))) return 1;
    if (!want_version) {
      std::cout << total << std::endl;
      continue;
    }
    char version[64] = {0};
    CK_ATTRIBUTE get = {0x80000000UL | 0x56500000UL | 0x07UL /* CKA_VAULTP11_VERSION */, version, sizeof(version) - 1};
    if (total == 0) {
      std::cout << "-" << std::endl;
    } else {
      if (!Check("C_GetAttributeValue", f->C_GetAttributeValue(session, first, &get, 1))) return 1;
      std::cout << std::string(version, get.ulValueLen) << std::endl;
    }
  }

  if (!Check("C_Logout", f->C_Logout(session))) return 1;
  if (!Check("C_CloseSession", f->C_CloseSession(session))) return 1;
  if (!Check("C_Finalize", f->C_Finalize(nullptr))) return 1;
  // The module is left loaded: unloading a module with OpenSSL inside is not worth the risk.
  return 0;
}

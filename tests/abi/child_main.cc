// abi_child: "another application" for the ABI tests, started by fork + exec (AbiTest::RunChild).
// A test process has threads (gtest's, the module's audit writer and health checks), and a
// forked copy of a threaded process may only call async-signal-safe functions until it execs:
// any lock another thread held at the fork (the allocator's, a sanitizer's) stays locked in the
// child forever (issue 16 item 13). So the tests exec this program, which loads the module
// (VAULTP11_MODULE) like any consumer and runs the steps on its command line in order:
//
//   abi_child CONFIG STEP...
//     init RV                    C_Initialize with CONFIG (CKF_OS_LOCKING_OK)
//     open-ro | open-rw          C_OpenSession on slot 0; the session the next steps use
//     login RV PIN               C_Login(CKU_USER) on it; an empty PIN is NULL_PTR, 0
//     logout                     C_Logout on it
//     token-flags SLOT MASK VAL  C_GetTokenInfo(SLOT): flags & MASK == VAL
//     gen-aes RV                 C_GenerateKey of a 16-byte AES token key
//     gen-ec LABEL               C_GenerateKeyPair of a P-256 token key pair labelled LABEL
//     gen-ec-version LABEL       the same as a new version of item LABEL (CKA_VAULTP11_NEW_VERSION)
//     destroy-label LABEL        C_DestroyObject of every object labelled LABEL
//     sign-ec LABEL              CKM_ECDSA with the one private key labelled LABEL, verified
//                                with the one public key labelled LABEL
//     expect-id LABEL HEX        the one private key labelled LABEL has CKA_ID HEX
//     expect-data LABEL VALUE    the one data object labelled LABEL has CKA_VALUE VALUE
//     drop-to UID                setgroups(0), setresgid and setresuid to UID for good
//     fork-check                 the module's fork rules (README "PKCS#11 conformance notes"),
//                                on this process's module threads: fork; the child must see
//                                CKR_CRYPTOKI_NOT_INITIALIZED (for C_Finalize and the session
//                                too) and then initialise, open a session and finalise; the
//                                parent's session still works
//     exit                       exit(0) without C_Finalize (the module's exit handler runs)
//     finalize RV                C_Finalize
//
// RV, SLOT, MASK, VAL and UID are numbers (strtoul base 0). A step that does not get what it
// expects ends the program with exit status 10 + its index and a line on stderr; a bad command
// line is status 2; all steps done is 0.
#include <dlfcn.h>
#include <grp.h>
#include <p11-kit/pkcs11.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "vaultp11/vaultp11.h"

namespace {

CK_FUNCTION_LIST* f = nullptr;
std::string config;
CK_SESSION_HANDLE session = CK_INVALID_HANDLE;

bool Number(const char* s, unsigned long* out) {
  char* end = nullptr;
  *out = std::strtoul(s, &end, 0);
  return *s != '\0' && *end == '\0';
}

// The handles of the objects of `cls` labelled `label` (at most 64).
std::vector<CK_OBJECT_HANDLE> Find(CK_OBJECT_CLASS cls, const std::string& label, CK_RV* rv) {
  std::string l = label;
  CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, l.data(), l.size()}};
  std::vector<CK_OBJECT_HANDLE> found(64);
  CK_ULONG n = 0;
  *rv = f->C_FindObjectsInit(session, t, 2);
  if (*rv == CKR_OK) *rv = f->C_FindObjects(session, found.data(), found.size(), &n);
  (void)f->C_FindObjectsFinal(session);
  found.resize(n);
  return found;
}

std::vector<CK_BYTE> Attr(CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE type, CK_RV* rv) {
  CK_ATTRIBUTE a{type, nullptr, 0};
  *rv = f->C_GetAttributeValue(session, o, &a, 1);
  if (*rv != CKR_OK) return {};
  std::vector<CK_BYTE> v(a.ulValueLen);
  a.pValue = v.data();
  *rv = f->C_GetAttributeValue(session, o, &a, 1);
  return v;
}

std::string Hex(const std::vector<CK_BYTE>& v) {
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (CK_BYTE b : v) out += kHex[b >> 4], out += kHex[b & 15];
  return out;
}

CK_RV Init() {
  CK_C_INITIALIZE_ARGS args{};
  args.flags = CKF_OS_LOCKING_OK;
  args.pReserved = const_cast<char*>(config.c_str());
  return f->C_Initialize(&args);
}

// The checks of a child forked after C_Initialize: its exit status (0: as the spec wants).
int ForkedChild(CK_SESSION_HANDLE parent_session) {
  CK_ULONG n = 0;
  if (f->C_GetSlotList(CK_FALSE, nullptr, &n) != CKR_CRYPTOKI_NOT_INITIALIZED) return 1;
  CK_SESSION_INFO info;
  if (f->C_GetSessionInfo(parent_session, &info) != CKR_CRYPTOKI_NOT_INITIALIZED) return 2;
  if (f->C_Finalize(nullptr) != CKR_CRYPTOKI_NOT_INITIALIZED) return 3;
  if (Init() != CKR_OK) return 4;
  if (f->C_GetSlotList(CK_FALSE, nullptr, &n) != CKR_OK || n == 0) return 5;
  CK_SESSION_HANDLE cs;
  if (f->C_OpenSession(0, CKF_SERIAL_SESSION, nullptr, nullptr, &cs) != CKR_OK) return 6;
  if (f->C_Finalize(nullptr) != CKR_OK) return 7;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  const char* path = std::getenv("VAULTP11_MODULE");
  void* h = path != nullptr ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : nullptr;
  auto gfl = h != nullptr ? reinterpret_cast<CK_C_GetFunctionList>(dlsym(h, "C_GetFunctionList"))
                          : nullptr;
  if (gfl == nullptr || gfl(&f) != CKR_OK) {
    std::fprintf(stderr, "abi_child: cannot load the module (VAULTP11_MODULE)\n");
    return 2;
  }
  config = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  size_t i = 0;
  int step = 0;
  auto take = [&](unsigned long* out) { return i < args.size() && Number(args[i++].c_str(), out); };
  auto fail = [&](const std::string& what, unsigned long got) {
    std::fprintf(stderr, "abi_child: step %d (%s): got 0x%lx\n", step, what.c_str(), got);
    std::exit(10 + step);
  };
  while (i < args.size()) {
    const std::string op = args[i++];
    unsigned long a = 0, b = 0, c = 0;
    if (op == "init") {
      if (!take(&a)) return 2;
      if (CK_RV rv = Init(); rv != a) fail(op, rv);
    } else if (op == "open-ro" || op == "open-rw") {
      const CK_FLAGS flags = CKF_SERIAL_SESSION | (op == "open-rw" ? CKF_RW_SESSION : 0);
      if (CK_RV rv = f->C_OpenSession(0, flags, nullptr, nullptr, &session); rv != CKR_OK)
        fail(op, rv);
    } else if (op == "login") {
      if (!take(&a) || i >= args.size()) return 2;
      std::string pin = args[i++];
      CK_UTF8CHAR_PTR p = pin.empty() ? nullptr : reinterpret_cast<CK_UTF8CHAR_PTR>(pin.data());
      if (CK_RV rv = f->C_Login(session, CKU_USER, p, pin.size()); rv != a) fail(op, rv);
    } else if (op == "logout") {
      if (CK_RV rv = f->C_Logout(session); rv != CKR_OK) fail(op, rv);
    } else if (op == "token-flags") {
      if (!take(&a) || !take(&b) || !take(&c)) return 2;
      CK_TOKEN_INFO ti;
      if (CK_RV rv = f->C_GetTokenInfo(a, &ti); rv != CKR_OK) fail(op, rv);
      if ((ti.flags & b) != c) fail(op + " value", ti.flags);
    } else if (op == "gen-aes") {
      if (!take(&a)) return 2;
      CK_MECHANISM m{CKM_AES_KEY_GEN, nullptr, 0};
      CK_ULONG len = 16;
      CK_BBOOL yes = CK_TRUE;
      CK_ATTRIBUTE t[] = {{CKA_TOKEN, &yes, 1}, {CKA_VALUE_LEN, &len, sizeof(len)}};
      CK_OBJECT_HANDLE k;
      if (CK_RV rv = f->C_GenerateKey(session, &m, t, 2, &k); rv != a) fail(op, rv);
    } else if (op == "gen-ec" || op == "gen-ec-version") {
      if (i >= args.size()) return 2;
      std::string label = args[i++];
      static const CK_BYTE kP256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
      CK_MECHANISM mech{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
      CK_BBOOL t = CK_TRUE;
      std::vector<CK_ATTRIBUTE> pt = {{CKA_TOKEN, &t, 1},
                                      {CKA_VERIFY, &t, 1},
                                      {CKA_EC_PARAMS, const_cast<CK_BYTE*>(kP256), sizeof(kP256)},
                                      {CKA_LABEL, label.data(), label.size()}};
      std::vector<CK_ATTRIBUTE> vt = {{CKA_TOKEN, &t, 1},
                                      {CKA_PRIVATE, &t, 1},
                                      {CKA_SIGN, &t, 1},
                                      {CKA_LABEL, label.data(), label.size()}};
      if (op == "gen-ec-version") pt.push_back({CKA_VAULTP11_NEW_VERSION, &t, 1});
      CK_OBJECT_HANDLE pub, priv;
      if (CK_RV rv = f->C_GenerateKeyPair(session, &mech, pt.data(), pt.size(), vt.data(),
                                          vt.size(), &pub, &priv);
          rv != CKR_OK)
        fail(op, rv);
    } else if (op == "destroy-label") {
      if (i >= args.size()) return 2;
      std::string label = args[i++];
      CK_ATTRIBUTE tmpl{CKA_LABEL, label.data(), label.size()};
      if (CK_RV rv = f->C_FindObjectsInit(session, &tmpl, 1); rv != CKR_OK) fail(op, rv);
      std::vector<CK_OBJECT_HANDLE> found(64);
      CK_ULONG n = 0;
      if (CK_RV rv = f->C_FindObjects(session, found.data(), found.size(), &n); rv != CKR_OK) fail(op, rv);
      (void)f->C_FindObjectsFinal(session);
      for (CK_ULONG k = 0; k < n; ++k)
        if (CK_RV rv = f->C_DestroyObject(session, found[k]); rv != CKR_OK) fail(op, rv);
    } else if (op == "sign-ec") {
      if (i >= args.size()) return 2;
      const std::string label = args[i++];
      CK_RV rv = CKR_OK;
      auto priv = Find(CKO_PRIVATE_KEY, label, &rv);
      if (rv != CKR_OK || priv.size() != 1) fail(op + " find private", rv != CKR_OK ? rv : priv.size());
      auto pub = Find(CKO_PUBLIC_KEY, label, &rv);
      if (rv != CKR_OK || pub.size() != 1) fail(op + " find public", rv != CKR_OK ? rv : pub.size());
      CK_BYTE digest[32];
      for (int k = 0; k < 32; ++k) digest[k] = static_cast<CK_BYTE>(k * 7 + 1);
      CK_MECHANISM m{CKM_ECDSA, nullptr, 0};
      CK_BYTE sig[132];
      CK_ULONG sig_len = sizeof(sig);
      if ((rv = f->C_SignInit(session, &m, priv[0])) != CKR_OK) fail(op + " SignInit", rv);
      if ((rv = f->C_Sign(session, digest, sizeof(digest), sig, &sig_len)) != CKR_OK) fail(op + " Sign", rv);
      if ((rv = f->C_VerifyInit(session, &m, pub[0])) != CKR_OK) fail(op + " VerifyInit", rv);
      if ((rv = f->C_Verify(session, digest, sizeof(digest), sig, sig_len)) != CKR_OK) fail(op + " Verify", rv);
    } else if (op == "expect-id" || op == "expect-data") {
      if (i + 1 >= args.size()) return 2;
      const std::string label = args[i++], want = args[i++];
      CK_RV rv = CKR_OK;
      const bool id = op == "expect-id";
      auto found = Find(id ? CKO_PRIVATE_KEY : CKO_DATA, label, &rv);
      if (rv != CKR_OK || found.size() != 1) fail(op + " find", rv != CKR_OK ? rv : found.size());
      auto v = Attr(found[0], id ? CKA_ID : CKA_VALUE, &rv);
      if (rv != CKR_OK) fail(op + " read", rv);
      const std::string got = id ? Hex(v) : std::string(v.begin(), v.end());
      if (got != want) {
        std::fprintf(stderr, "abi_child: %s %s: got %s, want %s\n", op.c_str(), label.c_str(), got.c_str(),
                     want.c_str());
        std::exit(10 + step);
      }
    } else if (op == "drop-to") {
      if (!take(&a)) return 2;
      const auto id = static_cast<uid_t>(a);
      if (setgroups(0, nullptr) != 0 || setresgid(id, id, id) != 0 || setresuid(id, id, id) != 0)
        fail(op, a);
    } else if (op == "fork-check") {
      const pid_t pid = fork();
      if (pid < 0) fail(op, 0);
      // This process has no threads but the module's, which its fork handlers park.
      if (pid == 0) _exit(ForkedChild(session));
      int status = 0;
      if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) fail(op, 0xdead);
      if (WEXITSTATUS(status) != 0) fail(op + " child", WEXITSTATUS(status));
      CK_SESSION_INFO info;
      if (CK_RV rv = f->C_GetSessionInfo(session, &info); rv != CKR_OK) fail(op + " parent", rv);
    } else if (op == "exit") {
      std::exit(0);
    } else if (op == "finalize") {
      if (!take(&a)) return 2;
      if (CK_RV rv = f->C_Finalize(nullptr); rv != a) fail(op, rv);
    } else {
      std::fprintf(stderr, "abi_child: unknown step %s\n", op.c_str());
      return 2;
    }
    ++step;
  }
  return 0;
}

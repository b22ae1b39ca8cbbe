// C_Initialize / C_Finalize rules, fork, threads, slots, tokens and mechanisms (issue parts 3, 5).
#include <dlfcn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <future>
#include <latch>
#include <thread>

#include "abi/pkcs11_3_0.h"
#include "fixture.h"

namespace vaultp11::testing {
namespace {

using GeneralTest = AbiTest;

std::string Trim(const CK_UTF8CHAR* p, size_t n) {
  std::string s(reinterpret_cast<const char*>(p), n);
  return s.substr(0, s.find_last_not_of(' ') + 1);
}

TEST_F(GeneralTest, FunctionListIsCompleteAndVersion240) {
  EXPECT_EQ(f->version.major, 2);
  EXPECT_EQ(f->version.minor, 40);
  // Every entry of the v2.40 list is set (implemented or deliberately unsupported).
  auto* begin = reinterpret_cast<void**>(&f->C_Initialize);
  auto* end = reinterpret_cast<void**>(&f->C_WaitForSlotEvent) + 1;
  EXPECT_EQ(end - begin, 68);
  for (auto* p = begin; p != end; ++p) EXPECT_NE(*p, nullptr) << "entry " << (p - begin);
  EXPECT_EQ(f->C_GetFunctionList(nullptr), CKR_ARGUMENTS_BAD);
}

// PKCS#11 3.0: C_GetInterfaceList / C_GetInterface give a 3.0 list (its first 68 entries those
// of the 2.40 list) and the 2.40 list; C_LoginUser takes the principal as the username.
TEST_F(GeneralTest, Pkcs11v3InterfacesAndLoginUser) {
  void* h = dlopen(std::getenv("VAULTP11_MODULE"), RTLD_NOW | RTLD_NOLOAD);
  ASSERT_NE(h, nullptr);
  auto get_list = reinterpret_cast<CK_C_GetInterfaceList>(dlsym(h, "C_GetInterfaceList"));
  auto get = reinterpret_cast<CK_C_GetInterface>(dlsym(h, "C_GetInterface"));
  ASSERT_NE(get_list, nullptr);
  ASSERT_NE(get, nullptr);
  CK_ULONG n = 0;
  EXPECT_EQ(get_list(nullptr, nullptr), CKR_ARGUMENTS_BAD);
  ASSERT_EQ(get_list(nullptr, &n), CKR_OK);
  EXPECT_EQ(n, 2u);
  CK_INTERFACE one[1];
  n = 1;
  EXPECT_EQ(get_list(one, &n), CKR_BUFFER_TOO_SMALL);
  EXPECT_EQ(n, 2u);
  CK_INTERFACE all[2];
  ASSERT_EQ(get_list(all, &n), CKR_OK);
  for (const CK_INTERFACE& i : all) EXPECT_STREQ(reinterpret_cast<char*>(i.pInterfaceName), "PKCS 11");

  CK_INTERFACE* iface = nullptr;
  ASSERT_EQ(get(nullptr, nullptr, &iface, 0), CKR_OK);  // the default: 3.0
  auto* f3 = static_cast<CK_FUNCTION_LIST_3_0*>(iface->pFunctionList);
  EXPECT_EQ(f3->version.major, 3);
  EXPECT_EQ(f3->version.minor, 0);
  CK_VERSION v240 = {2, 40};
  CK_INTERFACE* old = nullptr;
  ASSERT_EQ(get(reinterpret_cast<CK_UTF8CHAR_PTR>(const_cast<char*>("PKCS 11")), &v240, &old, 0), CKR_OK);
  EXPECT_EQ(old->pFunctionList, static_cast<void*>(f));
  EXPECT_EQ(get(reinterpret_cast<CK_UTF8CHAR_PTR>(const_cast<char*>("Vendor")), nullptr, &iface, 0),
            CKR_ARGUMENTS_BAD);
  EXPECT_EQ(get(nullptr, nullptr, &iface, CKF_INTERFACE_FORK_SAFE), CKR_ARGUMENTS_BAD);
  EXPECT_EQ(get(nullptr, nullptr, nullptr, 0), CKR_ARGUMENTS_BAD);
  // The 3.0 list: the same 2.40 entries, then every 3.0 entry set.
  EXPECT_EQ(std::memcmp(&f3->C_Initialize, &f->C_Initialize, 68 * sizeof(void*)), 0);
  auto* begin = reinterpret_cast<void**>(&f3->C_GetInterfaceList);
  auto* end = reinterpret_cast<void**>(&f3->C_MessageVerifyFinal) + 1;
  EXPECT_EQ(end - begin, 24);
  for (auto* p = begin; p != end; ++p) EXPECT_NE(*p, nullptr) << "3.0 entry " << (p - begin);

  CK_SESSION_HANDLE s = OpenRo();
  std::string user = "app", secret = "correct horse", wrong = "wrong horse";
  auto u = [](std::string& x) { return reinterpret_cast<CK_UTF8CHAR_PTR>(x.data()); };
  EXPECT_EQ(f3->C_LoginUser(s, CKU_USER, u(wrong), wrong.size(), u(user), user.size()), CKR_PIN_INCORRECT);
  EXPECT_EQ(f3->C_LoginUser(s, CKU_USER, u(secret), secret.size(), nullptr, 3), CKR_ARGUMENTS_BAD);
  ASSERT_EQ(f3->C_LoginUser(s, CKU_USER, u(secret), secret.size(), u(user), user.size()), CKR_OK);
  CK_SESSION_INFO si;
  ASSERT_EQ(f3->C_GetSessionInfo(s, &si), CKR_OK);
  EXPECT_EQ(si.state, static_cast<CK_STATE>(CKS_RO_USER_FUNCTIONS));
  ASSERT_EQ(f3->C_Logout(s), CKR_OK);
  // An empty username: the PIN names the principal, as with C_Login.
  std::string pin = kAdminPin;
  EXPECT_EQ(f3->C_LoginUser(s, CKU_USER, u(pin), pin.size(), nullptr, 0), CKR_OK);
  EXPECT_EQ(f3->C_SessionCancel(s, CKF_SIGN), CKR_FUNCTION_NOT_SUPPORTED);
  EXPECT_EQ(f3->C_MessageSignInit(s, nullptr, 0), CKR_FUNCTION_NOT_SUPPORTED);
}

// A config others can modify decides who may use every key: refused, unless the test-only
// escape variable is set.
TEST_F(GeneralTest, ConfigWritableByOthersIsRefused) {
  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  initialized = false;
  ASSERT_EQ(chmod(config_path.c_str(), 0666), 0);
  EXPECT_EQ(InitWith(config_path), CKR_FUNCTION_FAILED);
  setenv("VAULTP11_INSECURE_CONFIG_PERMISSIONS", "1", 1);
  EXPECT_EQ(InitWith(config_path), CKR_OK);
  unsetenv("VAULTP11_INSECURE_CONFIG_PERMISSIONS");
  ASSERT_EQ(chmod(config_path.c_str(), 0600), 0);
}

TEST_F(GeneralTest, CallsBeforeInitializeAndAfterFinalizeAreNotInitialized) {
  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  initialized = false;
  CK_ULONG n = 0;
  CK_INFO info;
  EXPECT_EQ(f->C_GetSlotList(CK_FALSE, nullptr, &n), CKR_CRYPTOKI_NOT_INITIALIZED);
  EXPECT_EQ(f->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED);
  EXPECT_EQ(f->C_Finalize(nullptr), CKR_CRYPTOKI_NOT_INITIALIZED);
  CK_SESSION_HANDLE s;
  EXPECT_EQ(f->C_OpenSession(0, CKF_SERIAL_SESSION, nullptr, nullptr, &s), CKR_CRYPTOKI_NOT_INITIALIZED);
}

// PKCS#11 2.40 section 5.4: before C_Initialize every function but C_GetFunctionList (and the
// 3.0 C_GetInterface*) answers CKR_CRYPTOKI_NOT_INITIALIZED, the unsupported ones too, and
// whatever the arguments (issue 16, spec rules).
TEST_F(GeneralTest, EveryFunctionIsNotInitializedBeforeInitialize) {
  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  initialized = false;
  constexpr CK_RV kNi = CKR_CRYPTOKI_NOT_INITIALIZED;
  CK_SESSION_HANDLE s = 1;
  CK_ULONG n = 0;
  CK_BYTE buf[16] = {};
  CK_OBJECT_HANDLE o = 0;
  CK_INFO info;
  CK_SLOT_INFO si;
  CK_TOKEN_INFO ti;
  CK_MECHANISM_INFO mi;
  CK_SESSION_INFO ssi;
  CK_MECHANISM m{CKM_SHA256, nullptr, 0};
  CK_SLOT_ID slot = 0;
  EXPECT_EQ(f->C_GetInfo(&info), kNi);
  EXPECT_EQ(f->C_GetSlotList(CK_FALSE, nullptr, &n), kNi);
  EXPECT_EQ(f->C_GetSlotInfo(0, &si), kNi);
  EXPECT_EQ(f->C_GetTokenInfo(0, &ti), kNi);
  EXPECT_EQ(f->C_GetMechanismList(0, nullptr, &n), kNi);
  EXPECT_EQ(f->C_GetMechanismInfo(0, CKM_SHA256, &mi), kNi);
  EXPECT_EQ(f->C_InitToken(0, buf, 4, buf), kNi);
  EXPECT_EQ(f->C_InitPIN(s, buf, 4), kNi);
  EXPECT_EQ(f->C_SetPIN(s, buf, 4, buf, 4), kNi);
  EXPECT_EQ(f->C_OpenSession(0, CKF_SERIAL_SESSION, nullptr, nullptr, &s), kNi);
  EXPECT_EQ(f->C_CloseSession(s), kNi);
  EXPECT_EQ(f->C_CloseAllSessions(0), kNi);
  EXPECT_EQ(f->C_GetSessionInfo(s, &ssi), kNi);
  EXPECT_EQ(f->C_GetOperationState(s, nullptr, &n), kNi);
  EXPECT_EQ(f->C_SetOperationState(s, buf, 4, 0, 0), kNi);
  EXPECT_EQ(f->C_Login(s, CKU_USER, buf, 4), kNi);
  EXPECT_EQ(f->C_Logout(s), kNi);
  EXPECT_EQ(f->C_CreateObject(s, nullptr, 0, &o), kNi);
  EXPECT_EQ(f->C_CopyObject(s, o, nullptr, 0, &o), kNi);
  EXPECT_EQ(f->C_DestroyObject(s, o), kNi);
  EXPECT_EQ(f->C_GetObjectSize(s, o, &n), kNi);
  EXPECT_EQ(f->C_GetAttributeValue(s, o, nullptr, 0), kNi);
  EXPECT_EQ(f->C_SetAttributeValue(s, o, nullptr, 0), kNi);
  EXPECT_EQ(f->C_FindObjectsInit(s, nullptr, 0), kNi);
  EXPECT_EQ(f->C_FindObjects(s, &o, 1, &n), kNi);
  EXPECT_EQ(f->C_FindObjectsFinal(s), kNi);
  EXPECT_EQ(f->C_EncryptInit(s, &m, o), kNi);
  EXPECT_EQ(f->C_Encrypt(s, buf, 4, buf, &n), kNi);
  EXPECT_EQ(f->C_EncryptUpdate(s, buf, 4, buf, &n), kNi);
  EXPECT_EQ(f->C_EncryptFinal(s, buf, &n), kNi);
  EXPECT_EQ(f->C_DecryptInit(s, &m, o), kNi);
  EXPECT_EQ(f->C_Decrypt(s, buf, 4, buf, &n), kNi);
  EXPECT_EQ(f->C_DecryptUpdate(s, buf, 4, buf, &n), kNi);
  EXPECT_EQ(f->C_DecryptFinal(s, buf, &n), kNi);
  EXPECT_EQ(f->C_DigestInit(s, &m), kNi);
  EXPECT_EQ(f->C_Digest(s, buf, 4, buf, &n), kNi);
  EXPECT_EQ(f->C_DigestUpdate(s, buf, 4), kNi);
  EXPECT_EQ(f->C_DigestKey(s, o), kNi);
  EXPECT_EQ(f->C_DigestFinal(s, buf, &n), kNi);
  EXPECT_EQ(f->C_SignInit(s, &m, o), kNi);
  EXPECT_EQ(f->C_Sign(s, buf, 4, buf, &n), kNi);
  EXPECT_EQ(f->C_SignUpdate(s, buf, 4), kNi);
  EXPECT_EQ(f->C_SignFinal(s, buf, &n), kNi);
  EXPECT_EQ(f->C_SignRecoverInit(s, &m, o), kNi);
  EXPECT_EQ(f->C_SignRecover(s, buf, 4, buf, &n), kNi);
  EXPECT_EQ(f->C_VerifyInit(s, &m, o), kNi);
  EXPECT_EQ(f->C_Verify(s, buf, 4, buf, 4), kNi);
  EXPECT_EQ(f->C_VerifyUpdate(s, buf, 4), kNi);
  EXPECT_EQ(f->C_VerifyFinal(s, buf, 4), kNi);
  EXPECT_EQ(f->C_VerifyRecoverInit(s, &m, o), kNi);
  EXPECT_EQ(f->C_VerifyRecover(s, buf, 4, buf, &n), kNi);
  EXPECT_EQ(f->C_DigestEncryptUpdate(s, buf, 4, buf, &n), kNi);
  EXPECT_EQ(f->C_DecryptDigestUpdate(s, buf, 4, buf, &n), kNi);
  EXPECT_EQ(f->C_SignEncryptUpdate(s, buf, 4, buf, &n), kNi);
  EXPECT_EQ(f->C_DecryptVerifyUpdate(s, buf, 4, buf, &n), kNi);
  EXPECT_EQ(f->C_GenerateKey(s, &m, nullptr, 0, &o), kNi);
  EXPECT_EQ(f->C_GenerateKeyPair(s, &m, nullptr, 0, nullptr, 0, &o, &o), kNi);
  EXPECT_EQ(f->C_WrapKey(s, &m, o, o, buf, &n), kNi);
  EXPECT_EQ(f->C_UnwrapKey(s, &m, o, buf, 4, nullptr, 0, &o), kNi);
  EXPECT_EQ(f->C_DeriveKey(s, &m, o, nullptr, 0, &o), kNi);
  EXPECT_EQ(f->C_SeedRandom(s, buf, 4), kNi);
  EXPECT_EQ(f->C_GenerateRandom(s, buf, 4), kNi);
  EXPECT_EQ(f->C_GetFunctionStatus(s), kNi);
  EXPECT_EQ(f->C_CancelFunction(s), kNi);
  EXPECT_EQ(f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &slot, nullptr), kNi);
  // The 3.0 list: C_LoginUser and the unsupported message functions.
  CK_FUNCTION_LIST_3_0* f3 = Module30();
  ASSERT_NE(f3, nullptr);
  EXPECT_EQ(f3->C_LoginUser(s, CKU_USER, buf, 4, buf, 4), kNi);
  EXPECT_EQ(f3->C_SessionCancel(s, 0), kNi);
  EXPECT_EQ(f3->C_MessageEncryptInit(s, &m, o), kNi);
  EXPECT_EQ(f3->C_MessageSignInit(s, &m, o), kNi);
  EXPECT_EQ(f3->C_MessageVerifyFinal(s), kNi);
  // C_GetFunctionList still answers.
  CK_FUNCTION_LIST* again = nullptr;
  EXPECT_EQ(f->C_GetFunctionList(&again), CKR_OK);
}

// PKCS#11 2.40 section 5.4 reserves pReserved; this module reads a config path there (as kmsp11
// and p11-kit's x-init-reserved do), but any other pointer is CKR_ARGUMENTS_BAD, never a crash
// (issue 16, spec rules): an unmapped address, bytes that are not a string, a relative path.
TEST_F(GeneralTest, InitializeRejectsAReservedPointerThatIsNotAPathString) {
  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  initialized = false;
  CK_C_INITIALIZE_ARGS args{};
  args.flags = CKF_OS_LOCKING_OK;
  args.pReserved = reinterpret_cast<void*>(1);
  EXPECT_EQ(f->C_Initialize(&args), CKR_ARGUMENTS_BAD);
  static const unsigned char kNotAString[] = {0x01, 0xfe, 0x7f, 0x00};
  args.pReserved = const_cast<unsigned char*>(kNotAString);
  EXPECT_EQ(f->C_Initialize(&args), CKR_ARGUMENTS_BAD);
  int number = 0x12345678;
  args.pReserved = &number;
  EXPECT_EQ(f->C_Initialize(&args), CKR_ARGUMENTS_BAD);
  args.pReserved = const_cast<char*>("vaultp11.yaml");  // relative: not recognised as a path
  EXPECT_EQ(f->C_Initialize(&args), CKR_ARGUMENTS_BAD);
  const std::string control = "/tmp/a\nb.yaml";
  args.pReserved = const_cast<char*>(control.c_str());
  EXPECT_EQ(f->C_Initialize(&args), CKR_ARGUMENTS_BAD);
  // A page that is mapped but unreadable, and a path string that ends at the last byte before
  // one: the first is refused, the second read without touching the unreadable page.
  const long page = sysconf(_SC_PAGESIZE);
  void* map = mmap(nullptr, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(map, MAP_FAILED);
  char* second = static_cast<char*>(map) + page;
  ASSERT_EQ(mprotect(second, page, PROT_NONE), 0);
  args.pReserved = second;
  EXPECT_EQ(f->C_Initialize(&args), CKR_ARGUMENTS_BAD);
  char* at_end = second - (config_path.size() + 1);
  std::memcpy(at_end, config_path.c_str(), config_path.size() + 1);
  args.pReserved = at_end;
  EXPECT_EQ(f->C_Initialize(&args), CKR_OK);
  initialized = true;
  CK_ULONG n = 0;
  EXPECT_EQ(f->C_GetSlotList(CK_FALSE, nullptr, &n), CKR_OK);
  EXPECT_EQ(n, 2u);
  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  initialized = false;
  munmap(map, 2 * page);
  // An empty string names no path: $VAULTP11_CONF applies, as for NULL.
  setenv("VAULTP11_CONF", config_path.c_str(), 1);
  args.pReserved = const_cast<char*>("");
  EXPECT_EQ(f->C_Initialize(&args), CKR_OK);
  initialized = true;
  unsetenv("VAULTP11_CONF");
}

// C_Finalize while other threads are in calls (issue 16 item 11): the spec leaves it undefined,
// but a server's shutdown path does it. Calls in flight finish on a live provider and later
// ones get CKR_CRYPTOKI_NOT_INITIALIZED; nothing is freed under a call (the ASan suite runs
// this too).
TEST_F(GeneralTest, FinalizeWhileOtherThreadsAreInCalls) {
  CK_SESSION_HANDLE s = LoggedInRw();
  CK_OBJECT_HANDLE pub, priv;
  GenEc(s, kP256, "finalize-race", &pub, &priv);
  constexpr int kThreads = 4;
  std::vector<CK_SESSION_HANDLE> sessions(kThreads);
  for (auto& my : sessions)
    ASSERT_EQ(f->C_OpenSession(0, CKF_SERIAL_SESSION, nullptr, nullptr, &my), CKR_OK);
  std::latch running(kThreads);  // every thread has finished one round
  std::atomic<int> unexpected{0};
  std::atomic<CK_RV> first_unexpected{CKR_OK};
  std::vector<std::thread> ts;
  for (int i = 0; i < kThreads; ++i) {
    ts.emplace_back([&, i] {
      const CK_SESSION_HANDLE my = sessions[i];
      bool counted = false;
      auto check = [&](CK_RV rv) {
        if (rv == CKR_OK) return true;
        if (rv != CKR_CRYPTOKI_NOT_INITIALIZED) {
          CK_RV none = CKR_OK;
          first_unexpected.compare_exchange_strong(none, rv);
          ++unexpected;
        }
        return false;
      };
      // Until the module is finalized: sign, search and read attributes.
      for (;;) {
        CK_MECHANISM m{CKM_ECDSA_SHA256, nullptr, 0};
        auto data = Bytes("round");
        CK_BYTE sig[64];
        CK_ULONG len = sizeof(sig);
        bool ok = check(f->C_SignInit(my, &m, priv)) &&
                  check(f->C_Sign(my, data.data(), data.size(), sig, &len));
        CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}};
        CK_OBJECT_HANDLE found[4];
        CK_ULONG n = 0;
        ok = ok && check(f->C_FindObjectsInit(my, t, 1)) &&
             check(f->C_FindObjects(my, found, 4, &n)) && check(f->C_FindObjectsFinal(my));
        CK_BYTE label[64];
        CK_ATTRIBUTE a[] = {{CKA_LABEL, label, sizeof(label)}};
        ok = ok && check(f->C_GetAttributeValue(my, priv, a, 1));
        if (!counted) {  // one round done (an unexpected code is recorded, not waited on)
          counted = true;
          running.count_down();
        }
        if (!ok) {
          CK_SESSION_INFO info;
          if (f->C_GetSessionInfo(my, &info) == CKR_CRYPTOKI_NOT_INITIALIZED) break;
        }
      }
    });
  }
  running.wait();
  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  initialized = false;
  for (auto& t : ts) t.join();
  EXPECT_EQ(unexpected.load(), 0) << "first unexpected CK_RV 0x" << std::hex
                                  << first_unexpected.load();
  // The module initialises again afterwards.
  ASSERT_EQ(InitWith(config_path), CKR_OK);
}

TEST_F(GeneralTest, InitializeTwiceIsAlreadyInitialized) {
  EXPECT_EQ(f->C_Initialize(nullptr), CKR_CRYPTOKI_ALREADY_INITIALIZED);
}

TEST_F(GeneralTest, InitializeAcceptsNullArgsWithConfigFromEnvironment) {
  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  initialized = false;
  setenv("VAULTP11_CONF", config_path.c_str(), 1);
  EXPECT_EQ(f->C_Initialize(nullptr), CKR_OK);
  initialized = true;
  unsetenv("VAULTP11_CONF");
  CK_ULONG n = 0;
  EXPECT_EQ(f->C_GetSlotList(CK_FALSE, nullptr, &n), CKR_OK);
  EXPECT_EQ(n, 2u);
}

CK_RV DummyCreate(CK_VOID_PTR_PTR) { return CKR_OK; }
CK_RV DummyMutex(CK_VOID_PTR) { return CKR_OK; }

TEST_F(GeneralTest, InitializeMutexCallbackRules) {
  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  initialized = false;
  CK_C_INITIALIZE_ARGS args{};
  args.pReserved = const_cast<char*>(config_path.c_str());
  // Only some callbacks: bad arguments.
  args.CreateMutex = DummyCreate;
  EXPECT_EQ(f->C_Initialize(&args), CKR_ARGUMENTS_BAD);
  // All callbacks without CKF_OS_LOCKING_OK: this module can only use OS locking.
  args.DestroyMutex = DummyMutex;
  args.LockMutex = DummyMutex;
  args.UnlockMutex = DummyMutex;
  EXPECT_EQ(f->C_Initialize(&args), CKR_CANT_LOCK);
  // All callbacks with CKF_OS_LOCKING_OK: accepted, OS locking used.
  args.flags = CKF_OS_LOCKING_OK;
  EXPECT_EQ(f->C_Initialize(&args), CKR_OK);
  initialized = true;
}

TEST_F(GeneralTest, FinalizeWithReservedIsArgumentsBad) {
  int x = 0;
  EXPECT_EQ(f->C_Finalize(&x), CKR_ARGUMENTS_BAD);
}

TEST_F(GeneralTest, BadConfigFailsInitializeAndLeavesNothingBehind) {
  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  initialized = false;
  std::string bad = dir.file("bad.yaml");
  std::ofstream(bad) << "store: { path: " << dir.file("store.db") << " }\nvaults:\n  - { name: payments, colour: red }\n";
  EXPECT_EQ(InitWith(bad), CKR_FUNCTION_FAILED);
  CK_ULONG n = 0;
  EXPECT_EQ(f->C_GetSlotList(CK_FALSE, nullptr, &n), CKR_CRYPTOKI_NOT_INITIALIZED);
  EXPECT_EQ(InitWith(dir.file("missing.yaml")), CKR_FUNCTION_FAILED);
  // A good config still initialises afterwards.
  EXPECT_EQ(InitWith(config_path), CKR_OK);
}

// A child forked after C_Initialize (as nginx, Apache and p11-kit server do) is not initialised
// until it calls C_Initialize itself, which then works; the parent is unaffected. The fork
// happens in abi_child, a process started by fork + exec whose only other threads are the
// module's: a bare fork of this threaded test process could hang in the child (issue 16 item
// 13). An audit sink keeps the module's writer thread alive and writing across the forks, which
// its fork handlers must park (README "PKCS#11 conformance notes").
TEST_F(GeneralTest, ForkedChildIsNotInitializedUntilItInitializes) {
  const std::string audit =
      "audit:\n  sinks:\n    - { type: file, path: " + dir.file("audit.log") + " }\n";
  config_path = WriteConfig("", "login: { delay_ms: 0 }\n" + audit);
  std::vector<std::string> steps = {"init", "0", "open-rw"};
  // Many forks while the writer has work: logins are audited.
  const std::string incorrect = std::to_string(CKR_PIN_INCORRECT);
  for (int i = 0; i < 20; ++i)
    steps.insert(steps.end(), {"login", incorrect, "app:wrong", "login", "0", kAdminPin,
                               "fork-check", "logout"});
  steps.insert(steps.end(), {"finalize", "0"});
  EXPECT_EQ(RunChild(steps), 0);
}

TEST_F(GeneralTest, ManyThreadsSignOnTheirOwnSessionsAtOnce) {
  CK_SESSION_HANDLE s = LoggedInRw();
  CK_OBJECT_HANDLE pub, priv;
  GenEc(s, kP256, "threads", &pub, &priv);
  constexpr int kThreads = 4, kIters = 40;
  std::vector<std::thread> ts;
  std::atomic<int> failures{0};
  for (int i = 0; i < kThreads; ++i) {
    ts.emplace_back([&, i] {
      CK_SESSION_HANDLE my;
      if (f->C_OpenSession(0, CKF_SERIAL_SESSION, nullptr, nullptr, &my) != CKR_OK) {
        ++failures;
        return;
      }
      CK_MECHANISM m{CKM_ECDSA_SHA256, nullptr, 0};
      for (int j = 0; j < kIters; ++j) {
        std::vector<uint8_t> data = Bytes("thread " + std::to_string(i) + " msg " + std::to_string(j));
        CK_BYTE sig[64];
        CK_ULONG len = sizeof(sig);
        if (f->C_SignInit(my, &m, priv) != CKR_OK || f->C_Sign(my, data.data(), data.size(), sig, &len) != CKR_OK ||
            f->C_VerifyInit(my, &m, pub) != CKR_OK || f->C_Verify(my, data.data(), data.size(), sig, len) != CKR_OK)
          ++failures;
      }
      f->C_CloseSession(my);
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST_F(GeneralTest, GetInfoDescribesTheLibrary) {
  CK_INFO info;
  ASSERT_EQ(f->C_GetInfo(&info), CKR_OK);
  EXPECT_EQ(info.cryptokiVersion.major, 2);
  EXPECT_EQ(info.cryptokiVersion.minor, 40);
  EXPECT_EQ(Trim(info.manufacturerID, 32), "vaultp11");
  EXPECT_EQ(f->C_GetInfo(nullptr), CKR_ARGUMENTS_BAD);
}

TEST_F(GeneralTest, OneSlotPerVaultInConfigOrder) {
  CK_ULONG n = 0;
  ASSERT_EQ(f->C_GetSlotList(CK_TRUE, nullptr, &n), CKR_OK);
  ASSERT_EQ(n, 2u);
  CK_SLOT_ID slots[2];
  CK_ULONG small = 1;
  EXPECT_EQ(f->C_GetSlotList(CK_TRUE, slots, &small), CKR_BUFFER_TOO_SMALL);
  EXPECT_EQ(small, 2u);
  ASSERT_EQ(f->C_GetSlotList(CK_TRUE, slots, &n), CKR_OK);
  EXPECT_EQ(slots[0], 0u);
  EXPECT_EQ(slots[1], 1u);
  EXPECT_EQ(f->C_GetSlotList(CK_TRUE, slots, nullptr), CKR_ARGUMENTS_BAD);

  CK_SLOT_INFO si;
  ASSERT_EQ(f->C_GetSlotInfo(0, &si), CKR_OK);
  EXPECT_TRUE(si.flags & CKF_TOKEN_PRESENT);
  EXPECT_EQ(f->C_GetSlotInfo(7, &si), CKR_SLOT_ID_INVALID);
  EXPECT_EQ(f->C_GetSlotInfo(0, nullptr), CKR_ARGUMENTS_BAD);

  CK_TOKEN_INFO ti0, ti1;
  ASSERT_EQ(f->C_GetTokenInfo(0, &ti0), CKR_OK);
  ASSERT_EQ(f->C_GetTokenInfo(1, &ti1), CKR_OK);
  EXPECT_EQ(Trim(ti0.label, 32), "payments");
  EXPECT_EQ(Trim(ti1.label, 32), "archive");
  CK_FLAGS want = CKF_RNG | CKF_LOGIN_REQUIRED | CKF_USER_PIN_INITIALIZED | CKF_TOKEN_INITIALIZED;
  EXPECT_EQ(ti0.flags & want, want);
  EXPECT_NE(Trim(ti0.serialNumber, 16), Trim(ti1.serialNumber, 16));
  EXPECT_EQ(f->C_GetTokenInfo(9, &ti0), CKR_SLOT_ID_INVALID);
}

TEST_F(GeneralTest, SerialNumbersAreStableAcrossInitializations) {
  CK_TOKEN_INFO a, b;
  ASSERT_EQ(f->C_GetTokenInfo(0, &a), CKR_OK);
  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  initialized = false;
  ASSERT_EQ(InitWith(config_path), CKR_OK);
  ASSERT_EQ(f->C_GetTokenInfo(0, &b), CKR_OK);
  EXPECT_EQ(0, std::memcmp(a.serialNumber, b.serialNumber, 16));
}

TEST_F(GeneralTest, MechanismListAndInfo) {
  CK_ULONG n = 0;
  ASSERT_EQ(f->C_GetMechanismList(0, nullptr, &n), CKR_OK);
  std::vector<CK_MECHANISM_TYPE> mechs(n);
  CK_ULONG small = 2;
  EXPECT_EQ(f->C_GetMechanismList(0, mechs.data(), &small), CKR_BUFFER_TOO_SMALL);
  EXPECT_EQ(small, n);
  ASSERT_EQ(f->C_GetMechanismList(0, mechs.data(), &n), CKR_OK);
  for (CK_MECHANISM_TYPE m : {CKM_RSA_PKCS_KEY_PAIR_GEN, CKM_EC_KEY_PAIR_GEN, CKM_AES_KEY_GEN, CKM_RSA_PKCS,
                              CKM_SHA256_RSA_PKCS, CKM_RSA_PKCS_PSS, CKM_SHA256_RSA_PKCS_PSS, CKM_ECDSA,
                              CKM_ECDSA_SHA256, CKM_RSA_PKCS_OAEP, CKM_AES_GCM, CKM_AES_CBC_PAD, CKM_AES_CTR,
                              CKM_AES_KEY_WRAP, CKM_AES_KEY_WRAP_PAD, CKM_SHA256})
    EXPECT_NE(std::find(mechs.begin(), mechs.end(), m), mechs.end()) << std::hex << m;
  CK_MECHANISM_INFO info;
  ASSERT_EQ(f->C_GetMechanismInfo(0, CKM_RSA_PKCS_KEY_PAIR_GEN, &info), CKR_OK);
  EXPECT_EQ(info.ulMinKeySize, 2048u);
  EXPECT_EQ(info.ulMaxKeySize, 4096u);
  EXPECT_TRUE(info.flags & CKF_GENERATE_KEY_PAIR);
  ASSERT_EQ(f->C_GetMechanismInfo(0, CKM_ECDSA_SHA256, &info), CKR_OK);
  EXPECT_EQ(info.flags & (CKF_SIGN | CKF_VERIFY), CKF_SIGN | CKF_VERIFY);
  EXPECT_FALSE(info.flags & CKF_ENCRYPT);
  EXPECT_EQ(info.ulMinKeySize, 256u);
  EXPECT_EQ(info.ulMaxKeySize, 521u);
  ASSERT_EQ(f->C_GetMechanismInfo(0, CKM_AES_KEY_WRAP_PAD, &info), CKR_OK);
  EXPECT_EQ(info.flags & (CKF_WRAP | CKF_UNWRAP), CKF_WRAP | CKF_UNWRAP);
  EXPECT_EQ(info.ulMinKeySize, 16u);
  EXPECT_EQ(info.ulMaxKeySize, 32u);
  EXPECT_EQ(f->C_GetMechanismInfo(0, CKM_MD5, &info), CKR_MECHANISM_INVALID);
  EXPECT_EQ(f->C_GetMechanismInfo(5, CKM_SHA256, &info), CKR_SLOT_ID_INVALID);
  EXPECT_EQ(f->C_GetMechanismInfo(0, CKM_SHA256, nullptr), CKR_ARGUMENTS_BAD);
}

TEST_F(GeneralTest, UnsupportedFunctionsSaySo) {
  CK_SESSION_HANDLE s = OpenRw();
  EXPECT_EQ(f->C_InitToken(0, nullptr, 0, nullptr), CKR_FUNCTION_NOT_SUPPORTED);
  EXPECT_EQ(f->C_InitPIN(s, nullptr, 0), CKR_FUNCTION_NOT_SUPPORTED);
  EXPECT_EQ(f->C_SetPIN(s, nullptr, 0, nullptr, 0), CKR_FUNCTION_NOT_SUPPORTED);
  CK_ULONG n;
  EXPECT_EQ(f->C_GetOperationState(s, nullptr, &n), CKR_FUNCTION_NOT_SUPPORTED);
  EXPECT_EQ(f->C_SetOperationState(s, nullptr, 0, 0, 0), CKR_FUNCTION_NOT_SUPPORTED);
  EXPECT_EQ(f->C_SignRecoverInit(s, nullptr, 0), CKR_FUNCTION_NOT_SUPPORTED);
  EXPECT_EQ(f->C_VerifyRecoverInit(s, nullptr, 0), CKR_FUNCTION_NOT_SUPPORTED);
  EXPECT_EQ(f->C_DigestEncryptUpdate(s, nullptr, 0, nullptr, &n), CKR_FUNCTION_NOT_SUPPORTED);
  EXPECT_EQ(f->C_DeriveKey(s, nullptr, 0, nullptr, 0, nullptr), CKR_FUNCTION_NOT_SUPPORTED);
  EXPECT_EQ(f->C_GetFunctionStatus(s), CKR_FUNCTION_NOT_PARALLEL);
  EXPECT_EQ(f->C_CancelFunction(s), CKR_FUNCTION_NOT_PARALLEL);
  CK_BYTE seed[4] = {};
  EXPECT_EQ(f->C_SeedRandom(s, seed, 4), CKR_RANDOM_SEED_NOT_SUPPORTED);
}

// Vault slots have no events; a blocked waiter returns when the module is finalised (spec 5.5).
TEST_F(GeneralTest, WaitForSlotEventHasNoVaultEventsAndEndsAtFinalize) {
  CK_SLOT_ID slot = 99;
  EXPECT_EQ(f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &slot, nullptr), CKR_NO_EVENT);
  EXPECT_EQ(f->C_WaitForSlotEvent(CKF_DONT_BLOCK, nullptr, nullptr), CKR_ARGUMENTS_BAD);
  EXPECT_EQ(f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &slot, &slot), CKR_ARGUMENTS_BAD);
  std::promise<CK_RV> waited;
  auto result = waited.get_future();
  std::thread waiter([&] { waited.set_value(f->C_WaitForSlotEvent(0, &slot, nullptr)); });
  // The waiter blocks until C_Finalize; whether it got there first or not, it must come back
  // with CKR_CRYPTOKI_NOT_INITIALIZED.
  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  initialized = false;
  waiter.join();
  EXPECT_EQ(result.get(), CKR_CRYPTOKI_NOT_INITIALIZED);
}

TEST_F(GeneralTest, GenerateRandomFillsTheBuffer) {
  CK_SESSION_HANDLE s = OpenRo();
  std::vector<uint8_t> a(64, 0), b(64, 0);
  ASSERT_EQ(f->C_GenerateRandom(s, a.data(), a.size()), CKR_OK);
  ASSERT_EQ(f->C_GenerateRandom(s, b.data(), b.size()), CKR_OK);
  EXPECT_NE(a, b);
  EXPECT_NE(a, std::vector<uint8_t>(64, 0));
  EXPECT_EQ(f->C_GenerateRandom(s, nullptr, 16), CKR_ARGUMENTS_BAD);
  EXPECT_EQ(f->C_GenerateRandom(999, a.data(), 16), CKR_SESSION_HANDLE_INVALID);
}

}  // namespace
}  // namespace vaultp11::testing

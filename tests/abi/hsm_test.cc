// HSM-backed keys of premium vaults, through the module's function list, on real SoftHSMv2
// tokens made for this test binary (issue "HSM-backed keys", parts 1 and 2).
#include <dlfcn.h>
#include <spawn.h>
#include <sqlite3.h>
#include <sys/wait.h>

#include <cstring>
#include <fstream>

#include "fixture.h"
#include "softhsm_fixture.h"
#include "vaultp11/vaultp11.h"

extern char** environ;

namespace vaultp11::testing {
namespace {

const auto* const kEnv =
    ::testing::AddGlobalTestEnvironment(new SoftHsmEnvironment({{"vault-hsm", "4321", "so-4321"}}));

class HsmTest : public AbiTest {
 protected:
  void SetUp() override {
    SoftHsmEnvironment* env = SoftHsmEnvironment::Instance();
    if (!env->available()) GTEST_SKIP() << env->skip_reason();
    f = Module();
    ASSERT_NE(f, nullptr);
    std::ofstream(dir.file("hsm.pin")) << "4321\n";
    config_path = WriteHsmConfig(env->module_path(), dir.file("hsm.pin"));
    ASSERT_EQ(InitWith(config_path), CKR_OK);
  }

  std::string WriteHsmConfig(const std::string& module, const std::string& pin_file) {
    // "archive" becomes a premium vault whose keys default to the HSM; app administers it.
    return WriteConfig("  - { principal: app, role: Key Vault Administrator, scope: /vaults/archive }\n",
                       "hsms:\n  - { name: hsm-a, module: " + module + ", token: vault-hsm, pin_file: " + pin_file +
                           ", quirks: [no-deinit] }\n",
                       "{ name: archive, sku: premium, hsms: [hsm-a], default_protection: hsm }");
  }

  CK_ULONG Protection(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o) {
    auto v = GetAttr(s, o, CKA_VAULTP11_PROTECTION);
    CK_ULONG p = 0;
    if (v.size() == sizeof(p)) std::memcpy(&p, v.data(), sizeof(p));
    return p;
  }

  // Counts objects with `id` in the SoftHSM token, through SoftHSM's own module (and destroys
  // them when `destroy`).
  int CountInSoftHsm(const std::vector<uint8_t>& id, CK_OBJECT_CLASS cls, bool* sensitive = nullptr,
                     bool destroy = false) {
    void* h = dlopen(SoftHsmEnvironment::Instance()->module_path().c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) return -1;
    auto gfl = reinterpret_cast<CK_C_GetFunctionList>(dlsym(h, "C_GetFunctionList"));
    CK_FUNCTION_LIST* sh = nullptr;
    if (!gfl || gfl(&sh) != CKR_OK) return -1;
    CK_C_INITIALIZE_ARGS args{};
    args.flags = CKF_OS_LOCKING_OK;
    CK_RV rv = sh->C_Initialize(&args);
    if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) return -1;
    CK_SLOT_ID slots[8];
    CK_ULONG n = 8;
    if (sh->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK) return -1;
    for (CK_ULONG i = 0; i < n; ++i) {
      CK_TOKEN_INFO ti;
      sh->C_GetTokenInfo(slots[i], &ti);
      if (std::string(reinterpret_cast<char*>(ti.label), 9) != "vault-hsm") continue;
      CK_SESSION_HANDLE s;
      if (sh->C_OpenSession(slots[i], CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &s) != CKR_OK) return -1;
      std::string pin = "4321";
      rv = sh->C_Login(s, CKU_USER, reinterpret_cast<CK_UTF8CHAR_PTR>(pin.data()), pin.size());
      if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) return -1;
      CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, const_cast<uint8_t*>(id.data()), id.size()}};
      sh->C_FindObjectsInit(s, t, 2);
      CK_OBJECT_HANDLE found[4];
      CK_ULONG count = 0;
      sh->C_FindObjects(s, found, 4, &count);
      sh->C_FindObjectsFinal(s);
      if (sensitive && count > 0) {
        CK_BBOOL sens = CK_FALSE, ext = CK_TRUE;
        CK_ATTRIBUTE a[] = {{CKA_SENSITIVE, &sens, 1}, {CKA_EXTRACTABLE, &ext, 1}};
        sh->C_GetAttributeValue(s, found[0], a, 2);
        *sensitive = sens == CK_TRUE && ext == CK_FALSE;
      }
      if (destroy)
        for (CK_ULONG j = 0; j < count; ++j) sh->C_DestroyObject(s, found[j]);
      sh->C_CloseSession(s);
      return static_cast<int>(count);
    }
    return -1;
  }
};

TEST_F(HsmTest, PremiumVaultGeneratesKeysInsideTheHsm) {
  CK_SESSION_HANDLE s = LoggedInRw(1);
  CK_OBJECT_HANDLE rsa_pub, rsa_priv, ec_pub, ec_priv;
  GenRsa(s, 2048, "hsm-rsa", &rsa_pub, &rsa_priv);
  GenEc(s, kP256, "hsm-ec", &ec_pub, &ec_priv);
  EXPECT_EQ(Protection(s, rsa_priv), VAULTP11_PROTECTION_HSM);
  EXPECT_EQ(Protection(s, rsa_pub), VAULTP11_PROTECTION_HSM);
  EXPECT_TRUE(GetBool(s, rsa_priv, CKA_SENSITIVE));
  EXPECT_FALSE(GetBool(s, rsa_priv, CKA_EXTRACTABLE));
  EXPECT_EQ(GetAttr(s, rsa_priv, CKA_MODULUS).size(), 256u);
  auto data = Bytes("signed inside the HSM");
  for (CK_MECHANISM_TYPE mt : {CKM_SHA256_RSA_PKCS, CKM_SHA384_RSA_PKCS}) {
    CK_MECHANISM m{mt, nullptr, 0};
    auto sig = Sign(s, m, rsa_priv, data);
    EXPECT_EQ(sig.size(), 256u);
    EXPECT_EQ(Verify(s, m, rsa_pub, data, sig), CKR_OK);
  }
  CK_RSA_PKCS_PSS_PARAMS pss{CKM_SHA256, CKG_MGF1_SHA256, 32};
  CK_MECHANISM pm{CKM_SHA256_RSA_PKCS_PSS, &pss, sizeof(pss)};
  EXPECT_EQ(Verify(s, pm, rsa_pub, data, Sign(s, pm, rsa_priv, data)), CKR_OK);
  CK_MECHANISM em{CKM_ECDSA_SHA256, nullptr, 0};
  auto esig = Sign(s, em, ec_priv, data);
  EXPECT_EQ(esig.size(), 64u);
  EXPECT_EQ(Verify(s, em, ec_pub, data, esig), CKR_OK);
  // The private keys are in the SoftHSM token, sensitive and unextractable ...
  for (CK_OBJECT_HANDLE k : {rsa_priv, ec_priv}) {
    auto inner_id = GetAttr(s, k, CKA_VAULTP11_HSM_KEY_ID);
    ASSERT_EQ(inner_id.size(), 16u);
    bool locked = false;
    EXPECT_EQ(CountInSoftHsm(inner_id, CKO_PRIVATE_KEY, &locked), 1);
    EXPECT_TRUE(locked);
  }
  // ... and the store holds no secret for the vault's keys.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open_v2(dir.file("store.db").c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT count(*), sum(secret IS NOT NULL) FROM objects WHERE vault='archive'", -1,
                               &st, nullptr),
            SQLITE_OK);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int(st, 0), 4);
  EXPECT_EQ(sqlite3_column_int(st, 1), 0);
  sqlite3_finalize(st);
  sqlite3_close(db);
}

TEST_F(HsmTest, DecryptAndUnwrapRunInTheHsm) {
  CK_SESSION_HANDLE s = LoggedInRw(1);
  CK_OBJECT_HANDLE pub, priv;
  GenRsa(s, 2048, "hsm-kek", &pub, &priv);
  // SoftHSMv2 2.6 does RSA-OAEP with SHA-1 only (other hashes: CKR_ARGUMENTS_BAD from the HSM).
  CK_RSA_PKCS_OAEP_PARAMS oaep{CKM_SHA_1, CKG_MGF1_SHA1, CKZ_DATA_SPECIFIED, nullptr, 0};
  CK_MECHANISM om{CKM_RSA_PKCS_OAEP, &oaep, sizeof(oaep)};
  auto msg = Bytes("decrypted by the HSM");
  ASSERT_EQ(f->C_EncryptInit(s, &om, pub), CKR_OK);
  std::vector<uint8_t> ct(256);
  CK_ULONG len = ct.size();
  ASSERT_EQ(f->C_Encrypt(s, msg.data(), msg.size(), ct.data(), &len), CKR_OK);
  ASSERT_EQ(f->C_DecryptInit(s, &om, priv), CKR_OK);
  CK_ULONG plen = 0;
  ASSERT_EQ(f->C_Decrypt(s, ct.data(), len, nullptr, &plen), CKR_OK);
  std::vector<uint8_t> pt(plen);
  ASSERT_EQ(f->C_Decrypt(s, ct.data(), len, pt.data(), &plen), CKR_OK);
  pt.resize(plen);
  EXPECT_EQ(pt, msg);
  // Unwrap an AES key wrapped under the HSM key's public half.
  CK_OBJECT_HANDLE aes = GenAes(s, 32, "to-wrap", false, /*extractable=*/true);
  CK_ULONG wlen = 0;
  ASSERT_EQ(f->C_WrapKey(s, &om, pub, aes, nullptr, &wlen), CKR_OK);
  std::vector<uint8_t> wrapped(wlen);
  ASSERT_EQ(f->C_WrapKey(s, &om, pub, aes, wrapped.data(), &wlen), CKR_OK);
  CK_OBJECT_CLASS sc = CKO_SECRET_KEY;
  CK_KEY_TYPE kt = CKK_AES;
  CK_BBOOL no = CK_FALSE;
  CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &sc, sizeof(sc)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_TOKEN, &no, 1}};
  CK_OBJECT_HANDLE copy;
  ASSERT_EQ(f->C_UnwrapKey(s, &om, priv, wrapped.data(), wlen, tmpl, 3, &copy), CKR_OK);
  CK_MECHANISM ecb{CKM_AES_ECB, nullptr, 0};
  auto block = Bytes("0123456789abcdef");
  std::vector<uint8_t> a(16), b(16);
  CK_ULONG la = 16, lb = 16;
  ASSERT_EQ(f->C_EncryptInit(s, &ecb, aes), CKR_OK);
  ASSERT_EQ(f->C_Encrypt(s, block.data(), 16, a.data(), &la), CKR_OK);
  ASSERT_EQ(f->C_EncryptInit(s, &ecb, copy), CKR_OK);
  ASSERT_EQ(f->C_Encrypt(s, block.data(), 16, b.data(), &lb), CKR_OK);
  EXPECT_EQ(a, b);
  wrapped[10] ^= 1;
  EXPECT_EQ(f->C_UnwrapKey(s, &om, priv, wrapped.data(), wlen, tmpl, 3, &copy), CKR_WRAPPED_KEY_INVALID);
  // HSM private keys never leave the HSM.
  CK_OBJECT_HANDLE kek = GenAes(s, 32, "kek", false);
  CK_MECHANISM kwp{CKM_AES_KEY_WRAP_PAD, nullptr, 0};
  EXPECT_EQ(f->C_WrapKey(s, &kwp, kek, priv, nullptr, &wlen), CKR_KEY_UNEXTRACTABLE);
  CK_OBJECT_HANDLE dup;
  EXPECT_EQ(f->C_CopyObject(s, priv, nullptr, 0, &dup), CKR_ACTION_PROHIBITED);
}

TEST_F(HsmTest, ProtectionAttributeChoosesAndStandardVaultsRefuseHsm) {
  CK_SESSION_HANDLE s = LoggedInRw(1);
  CK_MECHANISM gen{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
  CK_ULONG soft = VAULTP11_PROTECTION_SOFTWARE, hsm = VAULTP11_PROTECTION_HSM, bad = 7;
  CK_BBOOL t = CK_TRUE;
  CK_ATTRIBUTE pt[] = {{CKA_EC_PARAMS, const_cast<uint8_t*>(kP256.data()), kP256.size()}, {CKA_TOKEN, &t, 1}};
  CK_ATTRIBUTE vt_soft[] = {{CKA_VAULTP11_PROTECTION, &soft, sizeof(soft)}, {CKA_TOKEN, &t, 1}};
  CK_OBJECT_HANDLE pub, priv;
  ASSERT_EQ(f->C_GenerateKeyPair(s, &gen, pt, 2, vt_soft, 2, &pub, &priv), CKR_OK);
  EXPECT_EQ(Protection(s, priv), VAULTP11_PROTECTION_SOFTWARE);
  EXPECT_EQ(Protection(s, pub), VAULTP11_PROTECTION_SOFTWARE);
  CK_ATTRIBUTE vt_bad[] = {{CKA_VAULTP11_PROTECTION, &bad, sizeof(bad)}};
  EXPECT_EQ(f->C_GenerateKeyPair(s, &gen, pt, 2, vt_bad, 1, &pub, &priv), CKR_ATTRIBUTE_VALUE_INVALID);
  CK_BBOOL yes = CK_TRUE;
  CK_ATTRIBUTE vt_ext[] = {{CKA_EXTRACTABLE, &yes, 1}};
  EXPECT_EQ(f->C_GenerateKeyPair(s, &gen, pt, 2, vt_ext, 1, &pub, &priv), CKR_TEMPLATE_INCONSISTENT);
  // AES keys of a vault are software keys.
  CK_MECHANISM aes{CKM_AES_KEY_GEN, nullptr, 0};
  CK_ULONG len = 32;
  CK_ATTRIBUTE at[] = {{CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_VAULTP11_PROTECTION, &hsm, sizeof(hsm)}};
  CK_OBJECT_HANDLE k;
  EXPECT_EQ(f->C_GenerateKey(s, &aes, at, 2, &k), CKR_ATTRIBUTE_VALUE_INVALID);
  // The standard vault refuses HSM protection.
  CK_SESSION_HANDLE std_s = LoggedInRw(0);
  CK_ATTRIBUTE vt_hsm[] = {{CKA_VAULTP11_PROTECTION, &hsm, sizeof(hsm)}};
  EXPECT_EQ(f->C_GenerateKeyPair(std_s, &gen, pt, 2, vt_hsm, 1, &pub, &priv), CKR_ATTRIBUTE_VALUE_INVALID);
}

TEST_F(HsmTest, HsmKeysSurviveReinitializationAndDestroyRemovesThem) {
  CK_SESSION_HANDLE s = LoggedInRw(1);
  CK_OBJECT_HANDLE pub, priv;
  GenEc(s, kP256, "lasting", &pub, &priv);
  auto inner_id = GetAttr(s, priv, CKA_VAULTP11_HSM_KEY_ID);
  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  initialized = false;
  ASSERT_EQ(InitWith(config_path), CKR_OK);
  s = LoggedInRw(1);
  auto found = FindByLabel(s, "lasting");
  ASSERT_EQ(found.size(), 2u);
  CK_OBJECT_HANDLE p = 0, v = 0;
  for (auto h : found) {
    auto cls = GetAttr(s, h, CKA_CLASS);
    CK_OBJECT_CLASS c = 0;
    std::memcpy(&c, cls.data(), sizeof(c));
    (c == CKO_PRIVATE_KEY ? v : p) = h;
  }
  CK_MECHANISM m{CKM_ECDSA_SHA256, nullptr, 0};
  auto data = Bytes("after a restart");
  EXPECT_EQ(Verify(s, m, p, data, Sign(s, m, v, data)), CKR_OK);
  ASSERT_EQ(f->C_DestroyObject(s, v), CKR_OK);
  EXPECT_EQ(CountInSoftHsm(inner_id, CKO_PRIVATE_KEY), 0);
  EXPECT_EQ(CountInSoftHsm(inner_id, CKO_PUBLIC_KEY), 0);
}

TEST_F(HsmTest, KeyRemovedFromTheHsmBehindOurBackIsADeviceError) {
  CK_SESSION_HANDLE s = LoggedInRw(1);
  CK_OBJECT_HANDLE pub, priv;
  GenEc(s, kP256, "vanishing", &pub, &priv);
  CK_MECHANISM m{CKM_ECDSA_SHA256, nullptr, 0};
  auto data = Bytes("x");
  EXPECT_EQ(Verify(s, m, pub, data, Sign(s, m, priv, data)), CKR_OK);
  ASSERT_EQ(CountInSoftHsm(GetAttr(s, priv, CKA_VAULTP11_HSM_KEY_ID), CKO_PRIVATE_KEY, nullptr, true), 1);
  // The outer handle is still valid; the inner key is gone: no inner handle error leaks out.
  EXPECT_EQ(f->C_SignInit(s, &m, priv), CKR_DEVICE_ERROR);
}

TEST_F(HsmTest, SessionKeysAreNotKeptInTheHsm) {
  CK_SESSION_HANDLE s = LoggedInRw(1);
  CK_OBJECT_HANDLE pub, priv;
  GenEc(s, kP256, "short-lived", &pub, &priv, /*token=*/false);
  EXPECT_EQ(Protection(s, priv), VAULTP11_PROTECTION_HSM);
  CK_MECHANISM m{CKM_ECDSA_SHA256, nullptr, 0};
  auto data = Bytes("session key");
  EXPECT_EQ(Verify(s, m, pub, data, Sign(s, m, priv, data)), CKR_OK);
  auto inner_id = GetAttr(s, priv, CKA_VAULTP11_HSM_KEY_ID);
  EXPECT_EQ(CountInSoftHsm(inner_id, CKO_PRIVATE_KEY), 1);  // a session object while in use
  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  initialized = false;
  EXPECT_EQ(CountInSoftHsm(inner_id, CKO_PRIVATE_KEY), 0);
  EXPECT_EQ(CountInSoftHsm(inner_id, CKO_PUBLIC_KEY), 0);
}

TEST_F(HsmTest, UnavailableHsmLeavesTheModuleWorkingAndSaysWhy) {
  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  initialized = false;
  for (const std::string& module : {dir.file("missing-module.so"), SoftHsmEnvironment::Instance()->module_path()}) {
    std::ofstream(dir.file("wrong.pin")) << "9999\n";
    ASSERT_EQ(InitWith(WriteHsmConfig(module, dir.file("wrong.pin"))), CKR_OK);
    // A module that cannot be loaded shows at once; a wrong PIN only at first use, as the HSM
    // is not logged in to before (issue 16 item 10).
    const bool missing = module == dir.file("missing-module.so");
    CK_SLOT_INFO si;
    ASSERT_EQ(f->C_GetSlotInfo(1, &si), CKR_OK);
    EXPECT_EQ(
        std::string(reinterpret_cast<char*>(si.slotDescription), 64).find("HSM unavailable") !=
            std::string::npos,
        missing);
    CK_SESSION_HANDLE s = LoggedInRw(1);
    CK_MECHANISM gen{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
    CK_ATTRIBUTE pt[] = {{CKA_EC_PARAMS, const_cast<uint8_t*>(kP256.data()), kP256.size()}};
    CK_OBJECT_HANDLE pub, priv;
    EXPECT_EQ(f->C_GenerateKeyPair(s, &gen, pt, 1, nullptr, 0, &pub, &priv), CKR_DEVICE_ERROR);
    // Software keys still work.
    CK_ULONG soft = VAULTP11_PROTECTION_SOFTWARE;
    CK_ATTRIBUTE vt[] = {{CKA_VAULTP11_PROTECTION, &soft, sizeof(soft)}};
    EXPECT_EQ(f->C_GenerateKeyPair(s, &gen, pt, 1, vt, 1, &pub, &priv), CKR_OK);
    ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
    initialized = false;
  }
}

// Issue 16 item 12: OpenSSL's exit-time cleanup calls C_Finalize after SoftHSM's static
// destructors have run (they were registered later, so they run first). tests/abi/exit_finalize.cc
// does the same: its exit handler, registered before the module was loaded, calls C_Finalize
// after an HSM key signed. The module must make no inner call then; the program exits 0.
TEST_F(HsmTest, FinalizeFromAnExitHandlerAfterAnHsmKeySignedExitsCleanly) {
  const char* program = std::getenv("VAULTP11_EXIT_FINALIZE");
  ASSERT_NE(program, nullptr);
  std::vector<std::string> args = {program, std::getenv("VAULTP11_MODULE"), config_path, "1",
                                   kAdminPin};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  ASSERT_EQ(posix_spawn(&pid, program, nullptr, nullptr, argv.data(), environ), 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_FALSE(WIFSIGNALED(status)) << "killed by signal " << WTERMSIG(status) << " at exit";
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

}  // namespace
}  // namespace vaultp11::testing

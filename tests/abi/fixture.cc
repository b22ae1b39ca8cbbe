#include "fixture.h"

#include <dlfcn.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "auth/secret_hash.h"

namespace vaultp11::testing {

CK_FUNCTION_LIST* Module() {
  static CK_FUNCTION_LIST* list = [] {
    const char* path = std::getenv("VAULTP11_MODULE");
    if (path == nullptr) return static_cast<CK_FUNCTION_LIST*>(nullptr);
    void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (h == nullptr) return static_cast<CK_FUNCTION_LIST*>(nullptr);
    auto gfl = reinterpret_cast<CK_C_GetFunctionList>(dlsym(h, "C_GetFunctionList"));
    CK_FUNCTION_LIST* l = nullptr;
    if (gfl == nullptr || gfl(&l) != CKR_OK) return static_cast<CK_FUNCTION_LIST*>(nullptr);
    return l;
  }();
  return list;
}

CK_FUNCTION_LIST_3_0* Module30() {
  const char* path = std::getenv("VAULTP11_MODULE");
  void* h = path == nullptr ? nullptr : dlopen(path, RTLD_NOW | RTLD_NOLOAD);
  auto get = h == nullptr ? nullptr : reinterpret_cast<CK_C_GetInterface>(dlsym(h, "C_GetInterface"));
  CK_INTERFACE* iface = nullptr;
  if (get == nullptr || get(nullptr, nullptr, &iface, 0) != CKR_OK) return nullptr;
  return static_cast<CK_FUNCTION_LIST_3_0*>(iface->pFunctionList);
}

std::string TestSecretHash(const std::string& secret) {
  auto h = auth::HashSecret(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(secret.data()), secret.size()),
                            auth::ScryptCost{4, 8, 1});
  return h.ok() ? h.value() : "";
}

void AbiTest::LoadModule() {
  f = Module();
  ASSERT_NE(f, nullptr) << "set VAULTP11_MODULE to the built libvaultp11.so";
}

void AbiTest::SetUp() {
  LoadModule();
  config_path = WriteConfig();
  ASSERT_EQ(InitWith(config_path), CKR_OK);
}

void AbiTest::TearDown() {
  if (initialized && f) f->C_Finalize(nullptr);
  initialized = false;
}

std::string AbiTest::WriteConfig(const std::string& extra, const std::string& top, const std::string& archive,
                                 const std::string& principals) {
  static const std::string admin = TestSecretHash("correct horse");
  static const std::string norole = TestSecretHash("battery staple");
  static const std::string old = TestSecretHash("expired secret");
  std::string path = dir.file("vaultp11.yaml");
  std::ofstream out(path);
  out << top << "log: { level: error }\n"
      << "store: { path: " << dir.file("store.db") << " }\n"
      << "vaults:\n"
      << "  - { name: payments, sku: standard }\n"
      << "  - " << archive << "\n"
      << "principals:\n"
      << "  - name: app\n    auth: client_secret\n    secrets:\n"
      << "      - { hash: \"" << admin << "\", expires: 2099-12-31 }\n"
      << "  - name: norole\n    auth: client_secret\n    secrets: [ { hash: \"" << norole << "\" } ]\n"
      << "  - name: old\n    auth: client_secret\n    secrets: [ { hash: \"" << old
      << "\", expires: 2020-01-01 } ]\n"
      << principals << "role_assignments:\n"
      << "  - { principal: app, role: Key Vault Administrator, scope: /vaults/payments }\n"
      << extra;
  return path;
}

CK_RV AbiTest::InitWith(const std::string& path) {
  CK_C_INITIALIZE_ARGS args{};
  args.flags = CKF_OS_LOCKING_OK;
  args.pReserved = const_cast<char*>(path.c_str());
  CK_RV rv = f->C_Initialize(&args);
  initialized = (rv == CKR_OK);
  return rv;
}

CK_SESSION_HANDLE AbiTest::OpenRw(CK_SLOT_ID slot) {
  CK_SESSION_HANDLE s = 0;
  EXPECT_EQ(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &s), CKR_OK);
  return s;
}

CK_SESSION_HANDLE AbiTest::OpenRo(CK_SLOT_ID slot) {
  CK_SESSION_HANDLE s = 0;
  EXPECT_EQ(f->C_OpenSession(slot, CKF_SERIAL_SESSION, nullptr, nullptr, &s), CKR_OK);
  return s;
}

CK_RV AbiTest::Login(CK_SESSION_HANDLE s, const std::string& pin) {
  return f->C_Login(s, CKU_USER, reinterpret_cast<CK_UTF8CHAR_PTR>(const_cast<char*>(pin.data())), pin.size());
}

CK_SESSION_HANDLE AbiTest::LoggedInRw(CK_SLOT_ID slot) {
  CK_SESSION_HANDLE s = OpenRw(slot);
  EXPECT_EQ(Login(s), CKR_OK);
  return s;
}

int AbiTest::InAnotherProcess(const std::vector<std::string>& steps, const std::string& config, bool read_only) {
  std::vector<std::string> all = {"init", "0", read_only ? "open-ro" : "open-rw", "login", "0", kAdminPin};
  all.insert(all.end(), steps.begin(), steps.end());
  all.insert(all.end(), {"finalize", "0"});
  return RunChild(all, config);
}

int AbiTest::RunChild(const std::vector<std::string>& steps, const std::string& config) {
  const char* child = std::getenv("VAULTP11_ABI_CHILD");
  if (child == nullptr) {
    ADD_FAILURE() << "set VAULTP11_ABI_CHILD to the built abi_child";
    return -1;
  }
  std::vector<std::string> args = {child, config.empty() ? config_path : config};
  args.insert(args.end(), steps.begin(), steps.end());
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  if (posix_spawn(&pid, child, nullptr, nullptr, argv.data(), environ) != 0) return -1;
  int status = 0;
  if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

void AbiTest::GenRsa(CK_SESSION_HANDLE s, CK_ULONG bits, const std::string& label, CK_OBJECT_HANDLE* pub,
                     CK_OBJECT_HANDLE* priv, bool token) {
  CK_MECHANISM mech{CKM_RSA_PKCS_KEY_PAIR_GEN, nullptr, 0};
  CK_BBOOL t = CK_TRUE, tok = token ? CK_TRUE : CK_FALSE;
  CK_BYTE exp[] = {1, 0, 1};
  CK_BYTE id[] = {0x42, static_cast<CK_BYTE>(label.size())};
  CK_ATTRIBUTE pt[] = {
      {CKA_TOKEN, &tok, 1}, {CKA_VERIFY, &t, 1}, {CKA_ENCRYPT, &t, 1}, {CKA_WRAP, &t, 1},
      {CKA_MODULUS_BITS, &bits, sizeof(bits)}, {CKA_PUBLIC_EXPONENT, exp, sizeof(exp)},
      {CKA_LABEL, const_cast<char*>(label.data()), label.size()}, {CKA_ID, id, sizeof(id)},
  };
  CK_ATTRIBUTE vt[] = {
      {CKA_TOKEN, &tok, 1}, {CKA_PRIVATE, &t, 1}, {CKA_SENSITIVE, &t, 1}, {CKA_SIGN, &t, 1},
      {CKA_DECRYPT, &t, 1}, {CKA_UNWRAP, &t, 1},
      {CKA_LABEL, const_cast<char*>(label.data()), label.size()}, {CKA_ID, id, sizeof(id)},
  };
  ASSERT_EQ(f->C_GenerateKeyPair(s, &mech, pt, std::size(pt), vt, std::size(vt), pub, priv), CKR_OK);
}

void AbiTest::GenEc(CK_SESSION_HANDLE s, const std::vector<uint8_t>& params, const std::string& label,
                    CK_OBJECT_HANDLE* pub, CK_OBJECT_HANDLE* priv, bool token, bool new_version) {
  CK_MECHANISM mech{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
  CK_BBOOL t = CK_TRUE, tok = token ? CK_TRUE : CK_FALSE;
  CK_ATTRIBUTE pt[] = {
      {CKA_TOKEN, &tok, 1}, {CKA_VERIFY, &t, 1},
      {CKA_EC_PARAMS, const_cast<uint8_t*>(params.data()), params.size()},
      {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
  };
  CK_ATTRIBUTE vt[] = {
      {CKA_TOKEN, &tok, 1}, {CKA_PRIVATE, &t, 1}, {CKA_SENSITIVE, &t, 1}, {CKA_SIGN, &t, 1},
      {CKA_LABEL, const_cast<char*>(label.data()), label.size()}, {CKA_VAULTP11_NEW_VERSION, &t, 1},
  };
  ASSERT_EQ(f->C_GenerateKeyPair(s, &mech, pt, std::size(pt), vt, std::size(vt) - (new_version ? 0 : 1), pub, priv),
            CKR_OK);
}

CK_OBJECT_HANDLE AbiTest::GenAes(CK_SESSION_HANDLE s, CK_ULONG bytes, const std::string& label, bool token,
                                 bool extractable, bool sensitive) {
  CK_MECHANISM mech{CKM_AES_KEY_GEN, nullptr, 0};
  CK_BBOOL tok = token ? CK_TRUE : CK_FALSE, ex = extractable ? CK_TRUE : CK_FALSE,
           sen = sensitive ? CK_TRUE : CK_FALSE;
  CK_ATTRIBUTE t[] = {
      {CKA_TOKEN, &tok, 1}, {CKA_VALUE_LEN, &bytes, sizeof(bytes)}, {CKA_EXTRACTABLE, &ex, 1},
      {CKA_SENSITIVE, &sen, 1}, {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
  };
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  EXPECT_EQ(f->C_GenerateKey(s, &mech, t, std::size(t), &h), CKR_OK);
  return h;
}

std::vector<CK_OBJECT_HANDLE> AbiTest::FindByLabel(CK_SESSION_HANDLE s, const std::string& label) {
  CK_ATTRIBUTE t[] = {{CKA_LABEL, const_cast<char*>(label.data()), label.size()}};
  std::vector<CK_OBJECT_HANDLE> out;
  EXPECT_EQ(f->C_FindObjectsInit(s, t, 1), CKR_OK);
  CK_OBJECT_HANDLE buf[8];
  CK_ULONG n = 0;
  do {
    EXPECT_EQ(f->C_FindObjects(s, buf, 8, &n), CKR_OK);
    out.insert(out.end(), buf, buf + n);
  } while (n == 8);
  EXPECT_EQ(f->C_FindObjectsFinal(s), CKR_OK);
  return out;
}

std::vector<uint8_t> AbiTest::GetAttr(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE type) {
  CK_ATTRIBUTE a{type, nullptr, 0};
  CK_RV rv = f->C_GetAttributeValue(s, o, &a, 1);
  EXPECT_EQ(rv, CKR_OK) << "attribute 0x" << std::hex << type;
  if (rv != CKR_OK) return {};
  std::vector<uint8_t> v(a.ulValueLen);
  a.pValue = v.data();
  EXPECT_EQ(f->C_GetAttributeValue(s, o, &a, 1), CKR_OK);
  return v;
}

bool AbiTest::GetBool(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t) {
  auto v = GetAttr(s, o, t);
  EXPECT_EQ(v.size(), 1u);
  return !v.empty() && v[0] == CK_TRUE;
}

std::vector<uint8_t> AbiTest::Sign(CK_SESSION_HANDLE s, CK_MECHANISM mech, CK_OBJECT_HANDLE key,
                                   const std::vector<uint8_t>& data) {
  EXPECT_EQ(f->C_SignInit(s, &mech, key), CKR_OK);
  CK_ULONG len = 0;
  EXPECT_EQ(f->C_Sign(s, const_cast<uint8_t*>(data.data()), data.size(), nullptr, &len), CKR_OK);
  std::vector<uint8_t> sig(len);
  EXPECT_EQ(f->C_Sign(s, const_cast<uint8_t*>(data.data()), data.size(), sig.data(), &len), CKR_OK);
  sig.resize(len);
  return sig;
}

CK_RV AbiTest::Verify(CK_SESSION_HANDLE s, CK_MECHANISM mech, CK_OBJECT_HANDLE key, const std::vector<uint8_t>& data,
                      const std::vector<uint8_t>& sig) {
  CK_RV rv = f->C_VerifyInit(s, &mech, key);
  if (rv != CKR_OK) return rv;
  return f->C_Verify(s, const_cast<uint8_t*>(data.data()), data.size(), const_cast<uint8_t*>(sig.data()), sig.size());
}

}  // namespace vaultp11::testing

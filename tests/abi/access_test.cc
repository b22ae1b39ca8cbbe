// Access control through the function list: every built-in vault role x every PKCS#11
// operation class, at vault scope and at single-object scope, and every access-policy
// permission alone, each allowed or denied exactly as the role's grants say (the grants
// themselves are checked against REFERENCE.md's role table in tests/unit/access_test.cc).
#include <cstring>
#include <fstream>
#include <functional>
#include <map>

#include "auth/roles.h"
#include "fixture.h"

namespace vaultp11::testing {
namespace {

using auth::Kind;

constexpr char kSecret[] = "matrix secret";

// One operation class: what it needs (any of `any` on the object of `kind` named `object`)
// and how to try it as the logged-in principal.
struct OpClass {
  const char* name;
  Kind kind;
  const char* object;  // the object whose grants decide ("k", "aes", "s", or "" = a new object)
  uint32_t any;        // allowed when the grants on `object` hold at least one of these bits
  uint32_t also = 0;   // ... and all of these (on the same object)
};

const OpClass kOps[] = {
    {"find key", Kind::kKey, "k", auth::kList},
    {"read key attributes", Kind::kKey, "k", auth::kGet},
    {"update key label", Kind::kKey, "k", auth::kUpdate},
    {"generate key", Kind::kKey, "", auth::kCreate},
    {"import key", Kind::kKey, "", auth::kImport},
    {"delete key", Kind::kKey, "k", auth::kDelete},
    {"sign", Kind::kKey, "k", auth::kSign},
    // The public key is a public object (CKA_PRIVATE false): PKCS#11 lets every session use it.
    {"verify with public key", Kind::kKey, "", auth::kAll},
    {"encrypt", Kind::kKey, "aes", auth::kEncrypt},
    {"decrypt", Kind::kKey, "aes", auth::kDecrypt},
    // The wrapped key is "aes" too: exporting it needs release (core/crypto.cc AuthorizeExport).
    {"wrap", Kind::kKey, "aes", auth::kWrapKey, auth::kRelease},
    {"unwrap", Kind::kKey, "aes", auth::kUnwrapKey},
    // "aes" is extractable and not sensitive: its value leaves only with release, as by wrap.
    {"read key material", Kind::kKey, "aes", auth::kGet, auth::kRelease},
    {"find secret", Kind::kSecret, "s", auth::kList},
    {"read secret metadata", Kind::kSecret, "s", auth::kList | auth::kGet},
    {"read secret value", Kind::kSecret, "s", auth::kGet},
    {"set secret", Kind::kSecret, "", auth::kSet},
    {"delete secret", Kind::kSecret, "s", auth::kDelete},
};

class AccessMatrixTest : public AbiTest {
 protected:
  // Principals: "r<i>" holds role i at vault scope, "o<i>" at the scope of one object ("k" for
  // key roles, "s" for secret roles), "p<j>" an access policy with one permission on vault
  // "legacy". All share the secret kSecret.
  struct Policy {
    Kind kind;
    std::string permission;
    uint32_t bit;
  };

  void SetUp() override {
    LoadModule();
    const std::string hash = TestSecretHash(kSecret);
    std::string principals, roles, policies;
    auto principal = [&](const std::string& name) {
      principals += "  - { name: " + name + ", auth: client_secret, secrets: [ { hash: \"" + hash + "\" } ] }\n";
    };
    for (size_t i = 0; i < auth::Roles().size(); ++i) {
      const auth::RoleDef& r = auth::Roles()[i];
      if (r.pool) continue;
      vault_roles.push_back(&r);
      std::string n = std::to_string(i);
      principal("r" + n);
      principal("o" + n);
      roles += "  - { principal: r" + n + ", role: " + std::string(r.name) + ", scope: /vaults/matrix }\n";
      const char* one = r.keys ? "/vaults/matrix/keys/k" : r.secrets ? "/vaults/matrix/secrets/s"
                                                                        : "/vaults/matrix/certificates/c";
      roles += "  - { principal: o" + n + ", role: " + std::string(r.name) + ", scope: " + one + " }\n";
    }
    for (Kind kind : {Kind::kKey, Kind::kSecret}) {
      const char* list = kind == Kind::kKey ? "keys" : "secrets";
      std::string names(auth::PermissionNames(kind));
      size_t start = 0;
      while (start < names.size()) {
        size_t end = names.find(", ", start);
        if (end == std::string::npos) end = names.size();
        std::string perm = names.substr(start, end - start);
        start = end + 2;
        if (perm == "all") continue;
        std::string n = "p" + std::to_string(single.size());
        single.push_back({kind, perm, *auth::PermissionByName(kind, perm)});
        principal(n);
        policies += "      - { principal: " + n + ", " + list + ": [" + perm + "] }\n";
      }
    }
    principal("admin");
    std::ofstream out(dir.file("access.yaml"));
    out << "log: { level: error }\n"
        << "store: { path: " << dir.file("store.db") << " }\n"
        << "vaults:\n"
        << "  - { name: matrix }\n"
        << "  - name: legacy\n    authorization: access_policy\n    access_policies:\n"
        << "      - { principal: admin, keys: [all], secrets: [all], certificates: [all] }\n"
        << policies << "principals:\n"
        << principals << "role_assignments:\n"
        << "  - { principal: admin, role: Key Vault Administrator, scope: /vaults/matrix }\n"
        << roles;
    out.close();
    ASSERT_EQ(InitWith(dir.file("access.yaml")), CKR_OK);
  }

  CK_RV LoginAs(CK_SESSION_HANDLE s, const std::string& who) {
    f->C_Logout(s);
    std::string pin = who + ":" + kSecret;
    return f->C_Login(s, CKU_USER, reinterpret_cast<CK_UTF8CHAR_PTR>(pin.data()), pin.size());
  }

  // The objects every operation works on, made by the administrator: an EC pair "k", an
  // extractable, non-sensitive AES key "aes" and a secret "s"; the bytes of "aes" wrapped under
  // itself.
  struct Fixture {
    CK_OBJECT_HANDLE pub = 0, priv = 0, aes = 0, secret = 0;
    std::vector<uint8_t> wrapped, ciphertext, signature;
  };
  Fixture MakeObjects(CK_SESSION_HANDLE s, CK_SLOT_ID) {
    Fixture fx;
    EXPECT_EQ(LoginAs(s, "admin"), CKR_OK);
    GenEc(s, kP256, "k", &fx.pub, &fx.priv);
    fx.aes = GenAes(s, 32, "aes", true, /*extractable=*/true, /*sensitive=*/false);
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE wrap_unwrap[] = {{CKA_WRAP, &yes, 1}, {CKA_UNWRAP, &yes, 1}};
    EXPECT_EQ(f->C_SetAttributeValue(s, fx.aes, wrap_unwrap, 2), CKR_OK);
    CK_OBJECT_CLASS data = CKO_DATA;
    std::string label = "s", value = "the secret value";
    CK_ATTRIBUTE d[] = {{CKA_CLASS, &data, sizeof(data)}, {CKA_TOKEN, &yes, 1}, {CKA_PRIVATE, &yes, 1},
                        {CKA_LABEL, label.data(), label.size()}, {CKA_VALUE, value.data(), value.size()}};
    EXPECT_EQ(f->C_CreateObject(s, d, 5, &fx.secret), CKR_OK);
    CK_MECHANISM kwp{CKM_AES_KEY_WRAP_PAD, nullptr, 0};
    CK_ULONG n = 64;
    fx.wrapped.resize(n);
    EXPECT_EQ(f->C_WrapKey(s, &kwp, fx.aes, fx.aes, fx.wrapped.data(), &n), CKR_OK);
    fx.wrapped.resize(n);
    CK_MECHANISM ecb{CKM_AES_ECB, nullptr, 0};
    uint8_t block[16] = {1};
    EXPECT_EQ(f->C_EncryptInit(s, &ecb, fx.aes), CKR_OK);
    fx.ciphertext.resize(16);
    n = 16;
    EXPECT_EQ(f->C_Encrypt(s, block, 16, fx.ciphertext.data(), &n), CKR_OK);
    CK_MECHANISM ecdsa{CKM_ECDSA_SHA256, nullptr, 0};
    fx.signature = Sign(s, ecdsa, fx.priv, Bytes("matrix"));
    return fx;
  }

  // Tries one operation class; true when it succeeded. Failures must be a denial (or the
  // object being invisible), never anything else.
  bool Try(CK_SESSION_HANDLE s, const OpClass& op, const Fixture& fx, const std::string& who) {
    auto denied = [&](CK_RV rv, std::initializer_list<CK_RV> allowed_denials) {
      if (rv == CKR_OK) return true;
      bool expected = false;
      for (CK_RV d : allowed_denials) expected |= rv == d;
      EXPECT_TRUE(expected) << who << " / " << op.name << ": unexpected CK_RV 0x" << std::hex << rv;
      return false;
    };
    const std::string name = op.name;
    CK_BBOOL yes = CK_TRUE;
    if (name == "find key" || name == "find secret") {
      CK_OBJECT_CLASS cls = name == "find key" ? CKO_PRIVATE_KEY : CKO_DATA;
      std::string label = name == "find key" ? "k" : "s";
      CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, label.data(), label.size()}};
      EXPECT_EQ(f->C_FindObjectsInit(s, t, 2), CKR_OK);
      CK_OBJECT_HANDLE h[2];
      CK_ULONG n = 0;
      EXPECT_EQ(f->C_FindObjects(s, h, 2, &n), CKR_OK);
      f->C_FindObjectsFinal(s);
      return n >= 1;
    }
    if (name == "read key attributes" || name == "read secret metadata" || name == "read secret value") {
      CK_OBJECT_HANDLE o = name == "read key attributes" ? fx.priv : fx.secret;
      CK_ATTRIBUTE_TYPE type = name == "read secret value" ? CKA_VALUE : CKA_LABEL;
      uint8_t buf[64];
      CK_ATTRIBUTE a = {type, buf, sizeof(buf)};
      return denied(f->C_GetAttributeValue(s, o, &a, 1),
                    {CKR_ACTION_PROHIBITED, CKR_ATTRIBUTE_SENSITIVE, CKR_OBJECT_HANDLE_INVALID});
    }
    if (name == "read key material") {
      uint8_t buf[64];
      CK_ATTRIBUTE a = {CKA_VALUE, buf, sizeof(buf)};
      CK_RV rv = f->C_GetAttributeValue(s, fx.aes, &a, 1);
      if (rv == CKR_OK) {
        EXPECT_EQ(a.ulValueLen, 32u) << who;
      }
      return denied(rv, {CKR_ACTION_PROHIBITED, CKR_ATTRIBUTE_SENSITIVE, CKR_OBJECT_HANDLE_INVALID});
    }
    if (name == "update key label") {
      std::string label = "k";
      CK_ATTRIBUTE a = {CKA_LABEL, label.data(), label.size()};
      return denied(f->C_SetAttributeValue(s, fx.priv, &a, 1), {CKR_ACTION_PROHIBITED, CKR_OBJECT_HANDLE_INVALID});
    }
    if (name == "generate key") {
      CK_MECHANISM m{CKM_AES_KEY_GEN, nullptr, 0};
      CK_ULONG len = 16;
      std::string label = "made-" + who;
      CK_ATTRIBUTE t[] = {{CKA_TOKEN, &yes, 1}, {CKA_VALUE_LEN, &len, sizeof(len)},
                          {CKA_LABEL, label.data(), label.size()}};
      CK_OBJECT_HANDLE h;
      return denied(f->C_GenerateKey(s, &m, t, 3, &h), {CKR_ACTION_PROHIBITED});
    }
    if (name == "import key" || name == "set secret") {
      CK_OBJECT_CLASS cls = name == "import key" ? CKO_SECRET_KEY : CKO_DATA;
      CK_KEY_TYPE aes = CKK_AES;
      uint8_t value[16] = {7};
      std::string label = "in-" + who + (cls == CKO_DATA ? "-secret" : "-key");  // one namespace
      std::vector<CK_ATTRIBUTE> t = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &yes, 1},
                                     {CKA_LABEL, label.data(), label.size()}, {CKA_VALUE, value, sizeof(value)}};
      if (cls == CKO_SECRET_KEY) t.push_back({CKA_KEY_TYPE, &aes, sizeof(aes)});
      CK_OBJECT_HANDLE h;
      return denied(f->C_CreateObject(s, t.data(), t.size(), &h), {CKR_ACTION_PROHIBITED});
    }
    if (name == "delete key" || name == "delete secret") {
      // A copy per principal, made by the administrator elsewhere, named like the original.
      return denied(f->C_DestroyObject(s, name == "delete key" ? victim_key : victim_secret),
                    {CKR_ACTION_PROHIBITED, CKR_OBJECT_HANDLE_INVALID});
    }
    if (name == "sign") {
      CK_MECHANISM m{CKM_ECDSA_SHA256, nullptr, 0};
      CK_RV rv = f->C_SignInit(s, &m, fx.priv);
      if (rv == CKR_OK) {
        uint8_t sig[64];
        CK_ULONG n = sizeof(sig);
        rv = f->C_Sign(s, reinterpret_cast<CK_BYTE_PTR>(const_cast<char*>("x")), 1, sig, &n);
      }
      return denied(rv, {CKR_KEY_FUNCTION_NOT_PERMITTED, CKR_KEY_HANDLE_INVALID});
    }
    if (name == "verify with public key") {
      CK_MECHANISM m{CKM_ECDSA_SHA256, nullptr, 0};
      auto data = Bytes("matrix");
      CK_RV rv = f->C_VerifyInit(s, &m, fx.pub);
      if (rv == CKR_OK)
        rv = f->C_Verify(s, data.data(), data.size(), const_cast<uint8_t*>(fx.signature.data()), fx.signature.size());
      return denied(rv, {CKR_KEY_FUNCTION_NOT_PERMITTED, CKR_KEY_HANDLE_INVALID});
    }
    if (name == "encrypt" || name == "decrypt") {
      CK_MECHANISM m{CKM_AES_ECB, nullptr, 0};
      uint8_t in[16] = {1}, out[16];
      CK_ULONG n = sizeof(out);
      bool enc = name == "encrypt";
      CK_RV rv = enc ? f->C_EncryptInit(s, &m, fx.aes) : f->C_DecryptInit(s, &m, fx.aes);
      if (rv == CKR_OK)
        rv = enc ? f->C_Encrypt(s, in, 16, out, &n)
                 : f->C_Decrypt(s, const_cast<uint8_t*>(fx.ciphertext.data()), 16, out, &n);
      return denied(rv, {CKR_KEY_FUNCTION_NOT_PERMITTED, CKR_KEY_HANDLE_INVALID});
    }
    if (name == "wrap") {
      CK_MECHANISM m{CKM_AES_KEY_WRAP_PAD, nullptr, 0};
      uint8_t out[64];
      CK_ULONG n = sizeof(out);
      return denied(f->C_WrapKey(s, &m, fx.aes, fx.aes, out, &n),
                    {CKR_KEY_FUNCTION_NOT_PERMITTED, CKR_WRAPPING_KEY_HANDLE_INVALID, CKR_KEY_HANDLE_INVALID});
    }
    if (name == "unwrap") {
      CK_MECHANISM m{CKM_AES_KEY_WRAP_PAD, nullptr, 0};
      CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
      CK_KEY_TYPE type = CKK_AES;
      std::string label = "aes";  // the session copy carries the same name: same grants
      CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &type, sizeof(type)},
                          {CKA_LABEL, label.data(), label.size()}};
      CK_OBJECT_HANDLE h;
      return denied(f->C_UnwrapKey(s, &m, fx.aes, const_cast<uint8_t*>(fx.wrapped.data()), fx.wrapped.size(), t, 3, &h),
                    {CKR_KEY_FUNCTION_NOT_PERMITTED, CKR_UNWRAPPING_KEY_HANDLE_INVALID, CKR_ACTION_PROHIBITED});
    }
    ADD_FAILURE() << "no such operation class " << name;
    return false;
  }

  // Fresh objects for the delete classes: new versions of "k" and "s" (so the same grants
  // apply) made anew for each principal.
  void MakeVictims(CK_SESSION_HANDLE s, const Fixture&) {
    EXPECT_EQ(LoginAs(s, "admin"), CKR_OK);
    CK_OBJECT_HANDLE pub;
    GenEc(s, kP256, "k", &pub, &victim_key, /*token=*/true, /*new_version=*/true);
    CK_OBJECT_CLASS data = CKO_DATA;
    CK_BBOOL yes = CK_TRUE;
    std::string label = "s", value = "v";
    CK_ATTRIBUTE d[] = {{CKA_CLASS, &data, sizeof(data)}, {CKA_TOKEN, &yes, 1}, {CKA_PRIVATE, &yes, 1},
                        {CKA_LABEL, label.data(), label.size()}, {CKA_VALUE, value.data(), value.size()},
                        {CKA_VAULTP11_NEW_VERSION, &yes, 1}};
    EXPECT_EQ(f->C_CreateObject(s, d, 6, &victim_secret), CKR_OK);
  }

  // Runs every operation class as `who`, expecting `grants(kind, object)` to decide.
  void RunMatrix(CK_SESSION_HANDLE s, const Fixture& fx, const std::string& who,
                 const std::function<uint32_t(Kind, const std::string&)>& grants) {
    MakeVictims(s, fx);
    ASSERT_EQ(LoginAs(s, who), CKR_OK) << who;
    for (const OpClass& op : kOps) {
      std::string object = op.object[0] ? op.object : (op.kind == Kind::kKey ? "made" : "in");
      uint32_t have = grants(op.kind, object);
      bool want = op.any == auth::kAll || ((have & op.any) != 0 && (have & op.also) == op.also);
      EXPECT_EQ(Try(s, op, fx, who), want) << who << " / " << op.name;
    }
  }

  std::vector<const auth::RoleDef*> vault_roles;
  std::vector<Policy> single;
  CK_OBJECT_HANDLE victim_key = 0, victim_secret = 0;
};

TEST_F(AccessMatrixTest, EveryVaultRoleAtVaultScope) {
  CK_SESSION_HANDLE s = OpenRw(0);
  Fixture fx = MakeObjects(s, 0);
  for (size_t i = 0; i < auth::Roles().size(); ++i) {
    const auth::RoleDef& r = auth::Roles()[i];
    if (r.pool) continue;
    RunMatrix(s, fx, "r" + std::to_string(i), [&](Kind kind, const std::string&) { return r.For(kind); });
  }
}

TEST_F(AccessMatrixTest, EveryVaultRoleAtObjectScope) {
  CK_SESSION_HANDLE s = OpenRw(0);
  Fixture fx = MakeObjects(s, 0);
  for (size_t i = 0; i < auth::Roles().size(); ++i) {
    const auth::RoleDef& r = auth::Roles()[i];
    if (r.pool) continue;
    // The role reaches only "k" (key roles) or "s" (secret roles).
    const Kind scoped = r.keys ? Kind::kKey : Kind::kSecret;
    const std::string object = r.keys ? "k" : "s";
    RunMatrix(s, fx, "o" + std::to_string(i), [&](Kind kind, const std::string& name) {
      return kind == scoped && name == object ? r.For(kind) : 0u;
    });
  }
}

TEST_F(AccessMatrixTest, EveryAccessPolicyPermissionAlone) {
  CK_SESSION_HANDLE s = OpenRw(1);
  Fixture fx = MakeObjects(s, 1);
  for (size_t j = 0; j < single.size(); ++j) {
    const Policy& p = single[j];
    RunMatrix(s, fx, "p" + std::to_string(j),
              [&](Kind kind, const std::string&) { return kind == p.kind ? p.bit : 0u; });
  }
}

}  // namespace
}  // namespace vaultp11::testing

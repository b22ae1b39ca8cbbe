// Attacks on the access model through the documented API only (issue: "close the holes an
// adversarial review found"), and the spec rules consumers rely on for public session objects,
// operation termination and C_Logout. Each test is written as the attack: it fails on a module
// that lets the attack through.
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <cstring>
#include <memory>

#include "fixture.h"

namespace vaultp11::testing {
namespace {

constexpr char kSecret[] = "attack secret";

// Principals (secret kSecret) and what they hold on vault "payments" (slot 0), and one access
// policy principal on vault "legacy" (slot 1).
const char* const kPrincipals[] = {"reader",   "certuser", "certofficer", "cryptouser", "scoped",
                                   "officer",  "releaser", "secretsuser", "getter",     "backupper"};

class AttackTest : public AbiTest {
 protected:
  void SetUp() override {
    LoadModule();
    const std::string hash = TestSecretHash(kSecret);
    std::string principals;
    for (const char* p : kPrincipals)
      principals += std::string("  - { name: ") + p + ", auth: client_secret, secrets: [ { hash: \"" + hash + "\" } ] }\n";
    const std::string roles =
        "  - { principal: reader, role: Key Vault Reader, scope: /vaults/payments }\n"
        "  - { principal: certuser, role: Key Vault Certificate User, scope: /vaults/payments }\n"
        "  - { principal: certofficer, role: Key Vault Certificates Officer, scope: /vaults/payments }\n"
        "  - { principal: certofficer, role: Key Vault Reader, scope: /vaults/payments }\n"
        "  - { principal: cryptouser, role: Key Vault Crypto User, scope: /vaults/payments }\n"
        "  - { principal: scoped, role: Key Vault Crypto User, scope: /vaults/payments/keys/tls }\n"
        "  - { principal: officer, role: Key Vault Crypto Officer, scope: /vaults/payments }\n"
        "  - { principal: releaser, role: Key Vault Crypto Service Release User, scope: /vaults/payments }\n"
        "  - { principal: releaser, role: Key Vault Reader, scope: /vaults/payments }\n"
        "  - { principal: secretsuser, role: Key Vault Secrets User, scope: /vaults/payments }\n";
    const std::string legacy =
        "{ name: legacy, authorization: access_policy, access_policies: ["
        "{ principal: app, keys: [all], secrets: [all], certificates: [all] }, "
        "{ principal: getter, keys: [get, list] }, "
        "{ principal: backupper, keys: [get, list, backup, wrapKey] } ] }";
    config_path = WriteConfig(roles, "", legacy, principals);
    ASSERT_EQ(InitWith(config_path), CKR_OK);
  }

  CK_RV LoginAs(CK_SESSION_HANDLE s, const std::string& who) {
    f->C_Logout(s);
    std::string pin = who == "app" ? std::string(kAdminPin) : who + ":" + kSecret;
    return Login(s, pin);
  }

  // An extractable, sensitive AES-256 token key (the administrator's).
  CK_OBJECT_HANDLE ExtractableAes(CK_SESSION_HANDLE s, const std::string& label, bool sensitive = true) {
    return GenAes(s, 32, label, /*token=*/true, /*extractable=*/true, sensitive);
  }

  // An extractable EC private token key.
  CK_OBJECT_HANDLE ExtractableEc(CK_SESSION_HANDLE s, const std::string& label) {
    CK_MECHANISM mech{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
    CK_BBOOL t = CK_TRUE;
    CK_ATTRIBUTE pt[] = {{CKA_TOKEN, &t, 1}, {CKA_EC_PARAMS, const_cast<uint8_t*>(kP256.data()), kP256.size()},
                         {CKA_LABEL, const_cast<char*>(label.data()), label.size()}};
    CK_ATTRIBUTE vt[] = {{CKA_TOKEN, &t, 1}, {CKA_SIGN, &t, 1}, {CKA_EXTRACTABLE, &t, 1},
                         {CKA_LABEL, const_cast<char*>(label.data()), label.size()}};
    CK_OBJECT_HANDLE pub = 0, priv = 0;
    EXPECT_EQ(f->C_GenerateKeyPair(s, &mech, pt, 3, vt, 4, &pub, &priv), CKR_OK);
    return priv;
  }

  // A public AES session key whose value the caller knows (what an attacker makes before login).
  CK_OBJECT_HANDLE KnownSessionKey(CK_SESSION_HANDLE s, const std::string& label = "mine") {
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE type = CKK_AES;
    CK_BBOOL no = CK_FALSE, yes = CK_TRUE;
    uint8_t value[32];
    for (size_t i = 0; i < sizeof(value); ++i) value[i] = static_cast<uint8_t>(i);
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_KEY_TYPE, &type, sizeof(type)},
                        {CKA_TOKEN, &no, 1},           {CKA_PRIVATE, &no, 1},
                        {CKA_WRAP, &yes, 1},           {CKA_UNWRAP, &yes, 1},
                        {CKA_ENCRYPT, &yes, 1},        {CKA_DECRYPT, &yes, 1},
                        {CKA_VALUE, value, sizeof(value)}, {CKA_LABEL, const_cast<char*>(label.data()), label.size()}};
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    EXPECT_EQ(f->C_CreateObject(s, t, std::size(t), &h), CKR_OK);
    return h;
  }

  CK_RV WrapWith(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE wrapping, CK_OBJECT_HANDLE key) {
    CK_MECHANISM kwp{CKM_AES_KEY_WRAP_PAD, nullptr, 0};
    uint8_t out[512];
    CK_ULONG n = sizeof(out);
    return f->C_WrapKey(s, &kwp, wrapping, key, out, &n);
  }

  CK_OBJECT_HANDLE First(CK_SESSION_HANDLE s, const std::string& label, CK_OBJECT_CLASS cls) {
    CK_ATTRIBUTE t[] = {{CKA_LABEL, const_cast<char*>(label.data()), label.size()}, {CKA_CLASS, &cls, sizeof(cls)}};
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_ULONG n = 0;
    EXPECT_EQ(f->C_FindObjectsInit(s, t, 2), CKR_OK);
    EXPECT_EQ(f->C_FindObjects(s, &h, 1, &n), CKR_OK);
    EXPECT_EQ(f->C_FindObjectsFinal(s), CKR_OK);
    return n == 1 ? h : CK_INVALID_HANDLE;
  }
};

// Item 1: a principal with only get/list on keys creates a public AES session key it knows
// before logging in, logs in, and wraps the vault's extractable keys under it.
TEST_F(AttackTest, ReadOnlyPrincipalCannotExportKeysByWrapping) {
  CK_SESSION_HANDLE admin = OpenRw(0);
  ASSERT_EQ(LoginAs(admin, "app"), CKR_OK);
  ExtractableAes(admin, "victim-aes");
  ExtractableEc(admin, "victim-ec");
  ASSERT_EQ(f->C_Logout(admin), CKR_OK);

  for (const char* who : {"reader", "certuser", "cryptouser", "officer"}) {
    SCOPED_TRACE(who);
    CK_SESSION_HANDLE s = OpenRw(0);
    f->C_Logout(s);                               // login is per application and token
    CK_OBJECT_HANDLE known = KnownSessionKey(s);  // before login: a public session object
    ASSERT_EQ(LoginAs(s, who), CKR_OK);
    CK_OBJECT_HANDLE aes = First(s, "victim-aes", CKO_SECRET_KEY);
    CK_OBJECT_HANDLE ec = First(s, "victim-ec", CKO_PRIVATE_KEY);
    ASSERT_NE(aes, CK_INVALID_HANDLE);
    ASSERT_NE(ec, CK_INVALID_HANDLE);
    // The officer holds every key permission, release included: the model's export.
    const CK_RV want = std::string(who) == "officer" ? CKR_OK : CKR_KEY_FUNCTION_NOT_PERMITTED;
    EXPECT_EQ(WrapWith(s, known, aes), want);
    EXPECT_EQ(WrapWith(s, known, ec), want);
    EXPECT_EQ(f->C_CloseSession(s), CKR_OK);
  }

  // Release is the export permission: granted alone (with read), it wraps.
  CK_SESSION_HANDLE r = OpenRw(0);
  f->C_Logout(r);
  CK_OBJECT_HANDLE known = KnownSessionKey(r);
  ASSERT_EQ(LoginAs(r, "releaser"), CKR_OK);
  EXPECT_EQ(WrapWith(r, known, First(r, "victim-aes", CKO_SECRET_KEY)), CKR_OK);
}

// Item 1, access policies: get (and backup under an untrusted key) export nothing.
TEST_F(AttackTest, AccessPolicyGetOrBackupDoesNotExport) {
  CK_SESSION_HANDLE admin = OpenRw(1);
  ASSERT_EQ(LoginAs(admin, "app"), CKR_OK);
  ExtractableAes(admin, "legacy-aes");
  ASSERT_EQ(f->C_Logout(admin), CKR_OK);
  for (const char* who : {"getter", "backupper"}) {
    SCOPED_TRACE(who);
    CK_SESSION_HANDLE s = OpenRw(1);
    f->C_Logout(s);
    CK_OBJECT_HANDLE known = KnownSessionKey(s);
    ASSERT_EQ(LoginAs(s, who), CKR_OK);
    CK_OBJECT_HANDLE aes = First(s, "legacy-aes", CKO_SECRET_KEY);
    ASSERT_NE(aes, CK_INVALID_HANDLE);
    EXPECT_EQ(WrapWith(s, known, aes), CKR_KEY_FUNCTION_NOT_PERMITTED);
    // Under itself (a vault key, wrapKey granted to backupper, but not trusted): still no.
    EXPECT_EQ(WrapWith(s, aes, aes), CKR_KEY_FUNCTION_NOT_PERMITTED);
    EXPECT_EQ(f->C_CloseSession(s), CKR_OK);
  }
}

// Item 1, other paths to the same bytes: CKA_VALUE of a non-sensitive extractable key, a copy
// under another name, a copy made public.
TEST_F(AttackTest, KeyMaterialLeavesOnlyWithRelease) {
  CK_SESSION_HANDLE admin = OpenRw(0);
  ASSERT_EQ(LoginAs(admin, "app"), CKR_OK);
  CK_OBJECT_HANDLE plain = ExtractableAes(admin, "plain-aes", /*sensitive=*/false);
  EXPECT_EQ(GetAttr(admin, plain, CKA_VALUE).size(), 32u);  // the administrator may release
  ASSERT_EQ(f->C_Logout(admin), CKR_OK);

  for (const char* who : {"reader", "cryptouser"}) {
    SCOPED_TRACE(who);
    CK_SESSION_HANDLE s = OpenRw(0);
    ASSERT_EQ(LoginAs(s, who), CKR_OK);
    CK_OBJECT_HANDLE k = First(s, "plain-aes", CKO_SECRET_KEY);
    ASSERT_NE(k, CK_INVALID_HANDLE);
    uint8_t buf[64];
    CK_ATTRIBUTE a{CKA_VALUE, buf, sizeof(buf)};
    EXPECT_EQ(f->C_GetAttributeValue(s, k, &a, 1), CKR_ATTRIBUTE_SENSITIVE);
    EXPECT_EQ(a.ulValueLen, CK_UNAVAILABLE_INFORMATION);
    // A copy under another name, or a public copy, would answer to other grants.
    CK_BBOOL no = CK_FALSE;
    std::string other = "copied";
    CK_ATTRIBUTE rename[] = {{CKA_TOKEN, &no, 1}, {CKA_LABEL, other.data(), other.size()}};
    CK_OBJECT_HANDLE copy = CK_INVALID_HANDLE;
    EXPECT_EQ(f->C_CopyObject(s, k, rename, 2, &copy), CKR_ATTRIBUTE_READ_ONLY);
    CK_ATTRIBUTE make_public[] = {{CKA_TOKEN, &no, 1}, {CKA_PRIVATE, &no, 1}};
    EXPECT_EQ(f->C_CopyObject(s, k, make_public, 2, &copy), CKR_ATTRIBUTE_READ_ONLY);
    EXPECT_EQ(f->C_CloseSession(s), CKR_OK);
  }
}

// Item 2: a data object written without CKA_PRIVATE (pkcs11-tool --write-object without
// --private) is a vault secret all the same: never readable without login or without secrets get.
TEST_F(AttackTest, SecretsArePrivateWhateverTheTemplateSays) {
  CK_SESSION_HANDLE admin = OpenRw(0);
  ASSERT_EQ(LoginAs(admin, "app"), CKR_OK);
  CK_OBJECT_CLASS data = CKO_DATA;
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  std::string label = "db-password", value = "hunter2-secret-value";
  CK_ATTRIBUTE d[] = {{CKA_CLASS, &data, sizeof(data)}, {CKA_TOKEN, &yes, 1}, {CKA_PRIVATE, &no, 1},
                      {CKA_LABEL, label.data(), label.size()}, {CKA_VALUE, value.data(), value.size()}};
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  ASSERT_EQ(f->C_CreateObject(admin, d, 5, &h), CKR_OK);
  EXPECT_TRUE(GetBool(admin, h, CKA_PRIVATE));
  // The same without CKA_PRIVATE at all.
  std::string label2 = "api-token";
  CK_ATTRIBUTE d2[] = {{CKA_CLASS, &data, sizeof(data)}, {CKA_TOKEN, &yes, 1},
                       {CKA_LABEL, label2.data(), label2.size()}, {CKA_VALUE, value.data(), value.size()}};
  CK_OBJECT_HANDLE h2 = CK_INVALID_HANDLE;
  ASSERT_EQ(f->C_CreateObject(admin, d2, 4, &h2), CKR_OK);
  EXPECT_TRUE(GetBool(admin, h2, CKA_PRIVATE));
  ASSERT_EQ(f->C_Logout(admin), CKR_OK);

  // No login: not found, and the handle does not exist.
  CK_SESSION_HANDLE s = OpenRo(0);
  EXPECT_TRUE(FindByLabel(s, "db-password").empty());
  uint8_t buf[64];
  CK_ATTRIBUTE a{CKA_VALUE, buf, sizeof(buf)};
  EXPECT_EQ(f->C_GetAttributeValue(s, h, &a, 1), CKR_OBJECT_HANDLE_INVALID);
  // A principal with every key right but no secret right: invisible.
  ASSERT_EQ(LoginAs(s, "officer"), CKR_OK);
  EXPECT_TRUE(FindByLabel(s, "db-password").empty());
  EXPECT_EQ(f->C_GetAttributeValue(s, h, &a, 1), CKR_OBJECT_HANDLE_INVALID);
  // A reader lists it but never reads the value.
  ASSERT_EQ(LoginAs(s, "reader"), CKR_OK);
  EXPECT_EQ(FindByLabel(s, "api-token").size(), 1u);
  a.ulValueLen = sizeof(buf);
  EXPECT_EQ(f->C_GetAttributeValue(s, h2, &a, 1), CKR_ATTRIBUTE_SENSITIVE);
  // Secrets get reads it.
  ASSERT_EQ(LoginAs(s, "secretsuser"), CKR_OK);
  auto v = GetAttr(s, h, CKA_VALUE);
  EXPECT_EQ(std::string(v.begin(), v.end()), value);
}

// Item 3, and every attribute the spec makes one-way or read-only after creation.
TEST_F(AttackTest, OneWayAttributesStayOneWay) {
  CK_SESSION_HANDLE s = OpenRw(0);
  ASSERT_EQ(LoginAs(s, "app"), CKR_OK);
  CK_MECHANISM gen{CKM_AES_KEY_GEN, nullptr, 0};
  CK_ULONG len = 32;
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  std::string label = "trusted-only";
  CK_ATTRIBUTE t[] = {{CKA_TOKEN, &yes, 1}, {CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_EXTRACTABLE, &yes, 1},
                      {CKA_WRAP_WITH_TRUSTED, &yes, 1}, {CKA_LABEL, label.data(), label.size()}};
  CK_OBJECT_HANDLE k = CK_INVALID_HANDLE;
  ASSERT_EQ(f->C_GenerateKey(s, &gen, t, 5, &k), CKR_OK);
  CK_OBJECT_HANDLE known = KnownSessionKey(s);
  EXPECT_EQ(WrapWith(s, known, k), CKR_KEY_NOT_WRAPPABLE);

  CK_ATTRIBUTE clear{CKA_WRAP_WITH_TRUSTED, &no, 1};
  EXPECT_EQ(f->C_SetAttributeValue(s, k, &clear, 1), CKR_ATTRIBUTE_READ_ONLY);
  EXPECT_TRUE(GetBool(s, k, CKA_WRAP_WITH_TRUSTED));
  EXPECT_EQ(WrapWith(s, known, k), CKR_KEY_NOT_WRAPPABLE);
  CK_ATTRIBUTE again{CKA_WRAP_WITH_TRUSTED, &yes, 1};
  EXPECT_EQ(f->C_SetAttributeValue(s, k, &again, 1), CKR_OK);  // true -> true changes nothing

  // The others (spec 4.4-4.10 tables and footnotes): one-way, or fixed at creation.
  CK_OBJECT_HANDLE aes = GenAes(s, 16, "one-way", true, /*extractable=*/false, /*sensitive=*/true);
  CK_OBJECT_CLASS cls = CKO_DATA;
  CK_KEY_TYPE type = CKK_RSA;
  CK_ULONG mechs[] = {CKM_AES_ECB};
  struct Change {
    CK_ATTRIBUTE a;
    const char* what;
  };
  const Change changes[] = {
      {{CKA_SENSITIVE, &no, 1}, "CKA_SENSITIVE true -> false"},
      {{CKA_EXTRACTABLE, &yes, 1}, "CKA_EXTRACTABLE false -> true"},
      {{CKA_COPYABLE, &yes, 1}, "CKA_COPYABLE (only -> false)"},
      {{CKA_PRIVATE, &no, 1}, "CKA_PRIVATE"},
      {{CKA_TOKEN, &no, 1}, "CKA_TOKEN"},
      {{CKA_MODIFIABLE, &no, 1}, "CKA_MODIFIABLE"},
      {{CKA_CLASS, &cls, sizeof(cls)}, "CKA_CLASS"},
      {{CKA_KEY_TYPE, &type, sizeof(type)}, "CKA_KEY_TYPE"},
      {{CKA_ALWAYS_SENSITIVE, &no, 1}, "CKA_ALWAYS_SENSITIVE"},
      {{CKA_NEVER_EXTRACTABLE, &no, 1}, "CKA_NEVER_EXTRACTABLE"},
      {{CKA_LOCAL, &no, 1}, "CKA_LOCAL"},
      {{CKA_ALLOWED_MECHANISMS, mechs, sizeof(mechs)}, "CKA_ALLOWED_MECHANISMS"},
      {{CKA_TRUSTED, &yes, 1}, "CKA_TRUSTED"},
  };
  CK_ATTRIBUTE copyable_off{CKA_COPYABLE, &no, 1};
  ASSERT_EQ(f->C_SetAttributeValue(s, aes, &copyable_off, 1), CKR_OK);
  for (const Change& c : changes) {
    CK_ATTRIBUTE a = c.a;
    EXPECT_EQ(f->C_SetAttributeValue(s, aes, &a, 1), CKR_ATTRIBUTE_READ_ONLY) << c.what;
  }
  EXPECT_TRUE(GetBool(s, aes, CKA_SENSITIVE));
  EXPECT_FALSE(GetBool(s, aes, CKA_EXTRACTABLE));
  EXPECT_FALSE(GetBool(s, aes, CKA_COPYABLE));
}

// Item 4: role scopes name items; a rename must not move a grant to another key.
TEST_F(AttackTest, RenamesNeedDeleteOnTheOldNameAndCreateOnTheNew) {
  CK_SESSION_HANDLE admin = OpenRw(0);
  ASSERT_EQ(LoginAs(admin, "app"), CKR_OK);
  CK_OBJECT_HANDLE tls_pub, tls_priv, other_pub, other_priv;
  GenEc(admin, kP256, "tls", &tls_pub, &tls_priv);
  GenEc(admin, kP256, "other", &other_pub, &other_priv);
  ASSERT_EQ(f->C_Logout(admin), CKR_OK);

  // A Crypto User (update, but neither delete nor create) renames tls away and other to tls.
  CK_SESSION_HANDLE s = OpenRw(0);
  ASSERT_EQ(LoginAs(s, "cryptouser"), CKR_OK);
  std::string away = "tls-old", to = "tls";
  CK_ATTRIBUTE rename_away{CKA_LABEL, away.data(), away.size()};
  CK_ATTRIBUTE rename_to{CKA_LABEL, to.data(), to.size()};
  EXPECT_EQ(f->C_SetAttributeValue(s, tls_priv, &rename_away, 1), CKR_ACTION_PROHIBITED);
  EXPECT_EQ(f->C_SetAttributeValue(s, other_priv, &rename_to, 1), CKR_ACTION_PROHIBITED);
  EXPECT_EQ(f->C_SetAttributeValue(s, other_pub, &rename_to, 1), CKR_ACTION_PROHIBITED);
  // Other attributes stay updatable with update alone.
  CK_BYTE id[] = {0x77};
  CK_ATTRIBUTE set_id{CKA_ID, id, sizeof(id)};
  EXPECT_EQ(f->C_SetAttributeValue(s, other_priv, &set_id, 1), CKR_OK);

  // The principal scoped to keys/tls still signs with tls's key only.
  ASSERT_EQ(LoginAs(s, "scoped"), CKR_OK);
  auto found = FindByLabel(s, "tls");
  ASSERT_FALSE(found.empty());
  CK_MECHANISM ecdsa{CKM_ECDSA_SHA256, nullptr, 0};
  CK_OBJECT_HANDLE priv = First(s, "tls", CKO_PRIVATE_KEY);
  ASSERT_EQ(priv, tls_priv);
  auto sig = Sign(s, ecdsa, priv, Bytes("payload"));
  ASSERT_EQ(LoginAs(s, "app"), CKR_OK);
  EXPECT_EQ(Verify(s, ecdsa, tls_pub, Bytes("payload"), sig), CKR_OK);
  // The scoped principal may not rename its own key either (no delete, no create).
  ASSERT_EQ(LoginAs(s, "scoped"), CKR_OK);
  EXPECT_EQ(f->C_SetAttributeValue(s, tls_priv, &rename_away, 1), CKR_ACTION_PROHIBITED);

  // With delete on the old name and create on the new one (Crypto Officer), the rename is done.
  ASSERT_EQ(LoginAs(s, "officer"), CKR_OK);
  std::string fresh = "renamed";
  CK_ATTRIBUTE rename_fresh{CKA_LABEL, fresh.data(), fresh.size()};
  EXPECT_EQ(f->C_SetAttributeValue(s, other_priv, &rename_fresh, 1), CKR_OK);
  EXPECT_EQ(First(s, "renamed", CKO_PRIVATE_KEY), other_priv);
}

// A self-signed-looking certificate for `subject` (its SubjectPublicKeyInfo DER), signed by a
// throwaway key: only the public key matters here.
std::vector<uint8_t> CertificateFor(const std::vector<uint8_t>& spki_der) {
  const unsigned char* p = spki_der.data();
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> subject(d2i_PUBKEY(nullptr, &p, spki_der.size()), EVP_PKEY_free);
  if (!subject) return {};
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> signer(EVP_EC_gen("P-256"), EVP_PKEY_free);
  std::unique_ptr<X509, decltype(&X509_free)> x(X509_new(), X509_free);
  X509_set_version(x.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x.get()), 7);
  X509_gmtime_adj(X509_getm_notBefore(x.get()), 0);
  X509_gmtime_adj(X509_getm_notAfter(x.get()), 3600);
  X509_NAME* name = X509_get_subject_name(x.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("tls"), -1, -1, 0);
  X509_set_issuer_name(x.get(), name);
  X509_set_pubkey(x.get(), subject.get());
  if (X509_sign(x.get(), signer.get(), EVP_sha256()) == 0) return {};
  int n = i2d_X509(x.get(), nullptr);
  std::vector<uint8_t> der(n);
  unsigned char* out = der.data();
  i2d_X509(x.get(), &out);
  return der;
}

// Item 5: a Certificates Officer writes a certificate for another public key into key item tls.
TEST_F(AttackTest, ForeignCertificateCannotJoinAKeyItem) {
  CK_SESSION_HANDLE s = OpenRw(0);
  ASSERT_EQ(LoginAs(s, "app"), CKR_OK);
  CK_OBJECT_HANDLE tls_pub, tls_priv, evil_pub, evil_priv;
  GenEc(s, kP256, "tls", &tls_pub, &tls_priv);
  GenEc(s, kP256, "evil", &evil_pub, &evil_priv);
  CK_BYTE tls_id[] = {0x01};
  CK_ATTRIBUTE id_attr{CKA_ID, tls_id, sizeof(tls_id)};
  ASSERT_EQ(f->C_SetAttributeValue(s, tls_pub, &id_attr, 1), CKR_OK);
  ASSERT_EQ(f->C_SetAttributeValue(s, tls_priv, &id_attr, 1), CKR_OK);
  auto good = CertificateFor(GetAttr(s, tls_pub, CKA_PUBLIC_KEY_INFO));
  auto foreign = CertificateFor(GetAttr(s, evil_pub, CKA_PUBLIC_KEY_INFO));
  ASSERT_FALSE(good.empty());
  ASSERT_FALSE(foreign.empty());

  ASSERT_EQ(LoginAs(s, "certofficer"), CKR_OK);
  auto write = [&](const std::vector<uint8_t>& der, const std::string& label, const std::vector<uint8_t>& id,
                   CK_OBJECT_HANDLE* out) {
    CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
    CK_CERTIFICATE_TYPE ct = CKC_X_509;
    CK_BBOOL yes = CK_TRUE;
    std::vector<CK_ATTRIBUTE> t = {{CKA_CLASS, &cls, sizeof(cls)},
                                   {CKA_CERTIFICATE_TYPE, &ct, sizeof(ct)},
                                   {CKA_TOKEN, &yes, 1},
                                   {CKA_VALUE, const_cast<uint8_t*>(der.data()), der.size()},
                                   {CKA_LABEL, const_cast<char*>(label.data()), label.size()}};
    if (!id.empty()) t.push_back({CKA_ID, const_cast<uint8_t*>(id.data()), id.size()});
    return f->C_CreateObject(s, t.data(), t.size(), out);
  };
  CK_OBJECT_HANDLE c = CK_INVALID_HANDLE;
  EXPECT_EQ(write(foreign, "tls", {0x01}, &c), CKR_ATTRIBUTE_VALUE_INVALID);  // the attack
  EXPECT_EQ(write(foreign, "tls", {0x99}, &c), CKR_ATTRIBUTE_VALUE_INVALID);  // by name alone
  EXPECT_EQ(write(foreign, "elsewhere", {0x01}, &c), CKR_ATTRIBUTE_VALUE_INVALID);  // by CKA_ID alone
  EXPECT_EQ(write(foreign, "tls", {}, &c), CKR_ATTRIBUTE_VALUE_INVALID);
  // Its own certificate joins; a foreign one under its own name is fine until it is moved.
  EXPECT_EQ(write(good, "tls", {0x01}, &c), CKR_OK);
  CK_OBJECT_HANDLE loose = CK_INVALID_HANDLE;
  ASSERT_EQ(write(foreign, "loose", {0x55}, &loose), CKR_OK);
  std::string tls = "tls";
  CK_ATTRIBUTE to_tls{CKA_LABEL, tls.data(), tls.size()};
  EXPECT_EQ(f->C_SetAttributeValue(s, loose, &to_tls, 1), CKR_ATTRIBUTE_VALUE_INVALID);
  EXPECT_EQ(f->C_SetAttributeValue(s, loose, &id_attr, 1), CKR_ATTRIBUTE_VALUE_INVALID);
  // ... or copied there.
  CK_BBOOL no = CK_FALSE;
  CK_ATTRIBUTE copy_to[] = {{CKA_TOKEN, &no, 1}, {CKA_ID, tls_id, sizeof(tls_id)}};
  CK_OBJECT_HANDLE copy = CK_INVALID_HANDLE;
  EXPECT_EQ(f->C_CopyObject(s, loose, copy_to, 2, &copy), CKR_ATTRIBUTE_VALUE_INVALID);
  // The other way round: another key takes the certificate's CKA_ID (by update, by a new key
  // pair, by a copy), and a consumer pairing by CKA_ID would present tls's certificate with it.
  ASSERT_EQ(LoginAs(s, "cryptouser"), CKR_OK);
  EXPECT_EQ(f->C_SetAttributeValue(s, evil_priv, &id_attr, 1), CKR_ATTRIBUTE_VALUE_INVALID);
  EXPECT_EQ(f->C_SetAttributeValue(s, evil_pub, &id_attr, 1), CKR_ATTRIBUTE_VALUE_INVALID);
  ASSERT_EQ(LoginAs(s, "app"), CKR_OK);
  {
    CK_MECHANISM gen{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
    CK_BBOOL yes = CK_TRUE;
    std::string label = "newcomer";
    CK_ATTRIBUTE pt[] = {{CKA_TOKEN, &yes, 1}, {CKA_EC_PARAMS, const_cast<uint8_t*>(kP256.data()), kP256.size()},
                         {CKA_LABEL, label.data(), label.size()}, {CKA_ID, tls_id, sizeof(tls_id)}};
    CK_ATTRIBUTE vt[] = {{CKA_TOKEN, &yes, 1}, {CKA_LABEL, label.data(), label.size()}, {CKA_ID, tls_id, sizeof(tls_id)}};
    CK_OBJECT_HANDLE np = CK_INVALID_HANDLE, nv = CK_INVALID_HANDLE;
    EXPECT_EQ(f->C_GenerateKeyPair(s, &gen, pt, 4, vt, 3, &np, &nv), CKR_ATTRIBUTE_VALUE_INVALID);
    EXPECT_TRUE(FindByLabel(s, "newcomer").empty());
    CK_ATTRIBUTE copy_key[] = {{CKA_TOKEN, &no, 1}, {CKA_ID, tls_id, sizeof(tls_id)}};
    EXPECT_EQ(f->C_CopyObject(s, evil_priv, copy_key, 2, &copy), CKR_ATTRIBUTE_VALUE_INVALID);
  }
  ASSERT_EQ(LoginAs(s, "certofficer"), CKR_OK);
  // Java and libp11 pair by CKA_ID: only the right certificate carries tls's.
  CK_OBJECT_CLASS cert_cls = CKO_CERTIFICATE;
  CK_ATTRIBUTE by_id[] = {{CKA_CLASS, &cert_cls, sizeof(cert_cls)}, {CKA_ID, tls_id, sizeof(tls_id)}};
  CK_OBJECT_HANDLE hs[4];
  CK_ULONG n = 0;
  ASSERT_EQ(f->C_FindObjectsInit(s, by_id, 2), CKR_OK);
  ASSERT_EQ(f->C_FindObjects(s, hs, 4, &n), CKR_OK);
  ASSERT_EQ(f->C_FindObjectsFinal(s), CKR_OK);
  ASSERT_EQ(n, 1u);
  EXPECT_EQ(hs[0], c);
  CK_OBJECT_CLASS priv_cls = CKO_PRIVATE_KEY;
  CK_ATTRIBUTE key_by_id[] = {{CKA_CLASS, &priv_cls, sizeof(priv_cls)}, {CKA_ID, tls_id, sizeof(tls_id)}};
  ASSERT_EQ(LoginAs(s, "app"), CKR_OK);
  ASSERT_EQ(f->C_FindObjectsInit(s, key_by_id, 2), CKR_OK);
  ASSERT_EQ(f->C_FindObjects(s, hs, 4, &n), CKR_OK);
  ASSERT_EQ(f->C_FindObjectsFinal(s), CKR_OK);
  ASSERT_EQ(n, 1u);
  EXPECT_EQ(hs[0], tls_priv);
}

// Spec 4.4 / 6.7.6 (permitted object accesses by sessions): without a login an application may
// create public session objects and use, copy, change and destroy them as their attributes
// allow; token objects still need a login.
TEST_F(AttackTest, PublicSessionObjectsFollowTheSpecWithoutLogin) {
  CK_SESSION_HANDLE s = OpenRw(0);
  CK_OBJECT_HANDLE k = KnownSessionKey(s);
  CK_MECHANISM ecb{CKM_AES_ECB, nullptr, 0};
  uint8_t in[16] = {9}, enc[16], dec[16];
  CK_ULONG n = sizeof(enc);
  ASSERT_EQ(f->C_EncryptInit(s, &ecb, k), CKR_OK);
  ASSERT_EQ(f->C_Encrypt(s, in, 16, enc, &n), CKR_OK);
  n = sizeof(dec);
  ASSERT_EQ(f->C_DecryptInit(s, &ecb, k), CKR_OK);
  ASSERT_EQ(f->C_Decrypt(s, enc, 16, dec, &n), CKR_OK);
  EXPECT_EQ(std::memcmp(in, dec, 16), 0);
  std::string label = "renamed-session-key";
  CK_ATTRIBUTE rename{CKA_LABEL, label.data(), label.size()};
  EXPECT_EQ(f->C_SetAttributeValue(s, k, &rename, 1), CKR_OK);
  CK_OBJECT_HANDLE copy = CK_INVALID_HANDLE;
  EXPECT_EQ(f->C_CopyObject(s, k, nullptr, 0, &copy), CKR_OK);
  EXPECT_EQ(WrapWith(s, k, copy), CKR_KEY_UNEXTRACTABLE);  // the attributes still decide
  EXPECT_EQ(f->C_DestroyObject(s, copy), CKR_OK);
  EXPECT_EQ(f->C_DestroyObject(s, k), CKR_OK);
  // A public session data object is the application's own: readable.
  CK_OBJECT_CLASS data = CKO_DATA;
  CK_BBOOL no = CK_FALSE, yes = CK_TRUE;
  std::string v = "note";
  CK_ATTRIBUTE d[] = {{CKA_CLASS, &data, sizeof(data)}, {CKA_TOKEN, &no, 1}, {CKA_VALUE, v.data(), v.size()}};
  CK_OBJECT_HANDLE dh = CK_INVALID_HANDLE;
  ASSERT_EQ(f->C_CreateObject(s, d, 3, &dh), CKR_OK);
  EXPECT_EQ(GetAttr(s, dh, CKA_VALUE), Bytes("note"));
  // Token objects need a login.
  CK_ATTRIBUTE td[] = {{CKA_CLASS, &data, sizeof(data)}, {CKA_TOKEN, &yes, 1}, {CKA_VALUE, v.data(), v.size()}};
  EXPECT_EQ(f->C_CreateObject(s, td, 3, &dh), CKR_USER_NOT_LOGGED_IN);
  // The vault's public keys are readable and verify, but are not the application's to change.
  CK_SESSION_HANDLE admin = OpenRw(0);
  ASSERT_EQ(LoginAs(admin, "app"), CKR_OK);
  CK_OBJECT_HANDLE pub, priv;
  GenEc(admin, kP256, "vault-key", &pub, &priv);
  ASSERT_EQ(f->C_Logout(admin), CKR_OK);
  EXPECT_EQ(f->C_DestroyObject(s, pub), CKR_USER_NOT_LOGGED_IN);
  EXPECT_EQ(f->C_SetAttributeValue(s, pub, &rename, 1), CKR_USER_NOT_LOGGED_IN);
  EXPECT_EQ(GetAttr(s, pub, CKA_EC_POINT).empty(), false);
}

// Spec 5.10-5.13: "a call to C_Digest always terminates the active digest operation unless it
// returns CKR_BUFFER_TOO_SMALL or is a successful call ... to determine the length"; an operation
// begun single-part stays single-part.
TEST_F(AttackTest, OperationsEndAsTheSpecSays) {
  CK_SESSION_HANDLE s = OpenRw(0);
  CK_MECHANISM sha{CKM_SHA256, nullptr, 0};
  uint8_t data[] = "abc", out[64];
  CK_ULONG n = sizeof(out);
  // C_Digest after C_DigestUpdate: refused, and the operation is over.
  ASSERT_EQ(f->C_DigestInit(s, &sha), CKR_OK);
  ASSERT_EQ(f->C_DigestUpdate(s, data, 3), CKR_OK);
  EXPECT_EQ(f->C_Digest(s, data, 3, out, &n), CKR_OPERATION_ACTIVE);
  n = sizeof(out);
  EXPECT_EQ(f->C_DigestFinal(s, out, &n), CKR_OPERATION_NOT_INITIALIZED);
  // A length query begins a single-part digest: Update is refused and ends it.
  ASSERT_EQ(f->C_DigestInit(s, &sha), CKR_OK);
  CK_ULONG len = 0;
  ASSERT_EQ(f->C_Digest(s, data, 3, nullptr, &len), CKR_OK);
  EXPECT_EQ(len, 32u);
  EXPECT_EQ(f->C_DigestUpdate(s, data, 3), CKR_OPERATION_ACTIVE);
  n = sizeof(out);
  EXPECT_EQ(f->C_Digest(s, data, 3, out, &n), CKR_OPERATION_NOT_INITIALIZED);
  // A too-small buffer keeps the single-part operation: the retry completes it.
  ASSERT_EQ(f->C_DigestInit(s, &sha), CKR_OK);
  n = 4;
  EXPECT_EQ(f->C_Digest(s, data, 3, out, &n), CKR_BUFFER_TOO_SMALL);
  n = sizeof(out);
  EXPECT_EQ(f->C_DigestFinal(s, out, &n), CKR_OPERATION_ACTIVE);
  ASSERT_EQ(f->C_DigestInit(s, &sha), CKR_OK);  // the Final above ended it

  // The same rules for sign and encrypt.
  ASSERT_EQ(LoginAs(s, "app"), CKR_OK);
  CK_OBJECT_HANDLE pub, priv;
  GenEc(s, kP256, "ops", &pub, &priv);
  CK_MECHANISM ecdsa{CKM_ECDSA_SHA256, nullptr, 0};
  ASSERT_EQ(f->C_SignInit(s, &ecdsa, priv), CKR_OK);
  ASSERT_EQ(f->C_SignUpdate(s, data, 3), CKR_OK);
  n = sizeof(out);
  EXPECT_EQ(f->C_Sign(s, data, 3, out, &n), CKR_OPERATION_ACTIVE);
  EXPECT_EQ(f->C_SignFinal(s, out, &n), CKR_OPERATION_NOT_INITIALIZED);
  ASSERT_EQ(f->C_SignInit(s, &ecdsa, priv), CKR_OK);
  ASSERT_EQ(f->C_Sign(s, data, 3, nullptr, &len), CKR_OK);
  EXPECT_EQ(f->C_SignUpdate(s, data, 3), CKR_OPERATION_ACTIVE);
  EXPECT_EQ(f->C_Sign(s, data, 3, out, &n), CKR_OPERATION_NOT_INITIALIZED);

  CK_OBJECT_HANDLE aes = GenAes(s, 16, "ops-aes", false);
  CK_MECHANISM ecb{CKM_AES_ECB, nullptr, 0};
  uint8_t block[16] = {1};
  ASSERT_EQ(f->C_EncryptInit(s, &ecb, aes), CKR_OK);
  ASSERT_EQ(f->C_Encrypt(s, block, 16, nullptr, &len), CKR_OK);
  n = sizeof(out);
  EXPECT_EQ(f->C_EncryptUpdate(s, block, 16, out, &n), CKR_OPERATION_ACTIVE);
  n = sizeof(out);
  EXPECT_EQ(f->C_Encrypt(s, block, 16, out, &n), CKR_OPERATION_NOT_INITIALIZED);
  ASSERT_EQ(f->C_EncryptInit(s, &ecb, aes), CKR_OK);
  n = sizeof(out);
  ASSERT_EQ(f->C_EncryptUpdate(s, block, 16, out, &n), CKR_OK);
  n = sizeof(out);
  EXPECT_EQ(f->C_Encrypt(s, block, 16, out, &n), CKR_OPERATION_ACTIVE);
  n = sizeof(out);
  EXPECT_EQ(f->C_EncryptFinal(s, out, &n), CKR_OPERATION_NOT_INITIALIZED);
}

// C_Logout ends the operations that use private objects: a signature is not finished for a
// principal that has left; a search's private results are gone. Public-key operations go on.
TEST_F(AttackTest, LogoutEndsOperationsOnPrivateObjects) {
  CK_SESSION_HANDLE s = OpenRw(0);
  CK_SESSION_HANDLE other = OpenRw(0);
  ASSERT_EQ(LoginAs(s, "app"), CKR_OK);
  CK_OBJECT_HANDLE pub, priv;
  GenEc(s, kP256, "leaving", &pub, &priv);
  CK_MECHANISM ecdsa{CKM_ECDSA_SHA256, nullptr, 0};
  auto data = Bytes("data");
  auto sig = Sign(s, ecdsa, priv, data);
  ASSERT_EQ(f->C_SignInit(other, &ecdsa, priv), CKR_OK);
  ASSERT_EQ(f->C_VerifyInit(other, &ecdsa, pub), CKR_OK);
  CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
  CK_ATTRIBUTE t{CKA_CLASS, &cls, sizeof(cls)};
  ASSERT_EQ(f->C_FindObjectsInit(other, &t, 1), CKR_OK);

  ASSERT_EQ(f->C_Logout(s), CKR_OK);
  uint8_t out[128];
  CK_ULONG n = sizeof(out);
  EXPECT_EQ(f->C_Sign(other, data.data(), data.size(), out, &n), CKR_OPERATION_NOT_INITIALIZED);
  CK_OBJECT_HANDLE h;
  EXPECT_EQ(f->C_FindObjects(other, &h, 1, &n), CKR_OPERATION_NOT_INITIALIZED);
  EXPECT_EQ(f->C_Verify(other, data.data(), data.size(), sig.data(), sig.size()), CKR_OK);
}

}  // namespace
}  // namespace vaultp11::testing

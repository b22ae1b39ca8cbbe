// Life cycle of keys through the function list: CKA_VAULTP11_ENABLED, the validity window
// (CKA_VAULTP11_NOT_BEFORE / CKA_VAULTP11_EXPIRES and CKA_START_DATE / CKA_END_DATE) and
// CKA_VAULTP11_TAGS, for software RSA and EC pairs and AES keys: which of the six uses each
// state allows, the two forms of the window, tags, persistence and the update permission.
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "fixture.h"
#include "vaultp11/vaultp11.h"

namespace vaultp11::testing {
namespace {

constexpr CK_ULONG kPast = 1000000000;    // 2001-09-09T01:46:40Z
constexpr CK_ULONG kFuture = 4102444800;  // 2100-01-01T00:00:00Z
constexpr char kOtherSecret[] = "key rules secret";

enum Use { kSign, kVerify, kEncrypt, kDecrypt, kWrap, kUnwrap };
constexpr const char* kUseNames[] = {"sign", "verify", "encrypt", "decrypt", "wrap", "unwrap"};
const std::set<Use> kAll = {kSign, kVerify, kEncrypt, kDecrypt, kWrap, kUnwrap};
// What a key outside its window still does.
const std::set<Use> kOpening = {kVerify, kDecrypt, kUnwrap};

// A key under test: the object for sign/decrypt/unwrap (priv) and for verify/encrypt/wrap (pub),
// the same object for AES; its mechanisms, the uses it supports and what they produced while
// the key was usable.
struct Key {
  std::string name;
  CK_OBJECT_HANDLE priv = 0, pub = 0;
  CK_MECHANISM sign{}, crypt{}, wrap{};
  std::set<Use> uses;
  std::vector<uint8_t> signature, ciphertext, wrapped;
};

class KeyRulesTest : public AbiTest {
 protected:
  void SetUp() override {
    LoadModule();
    const std::string hash = TestSecretHash(kOtherSecret);
    std::string principals;
    for (const char* who : {"reader", "cryptouser"})
      principals += std::string("  - { name: ") + who + ", auth: client_secret, secrets: [ { hash: \"" + hash +
                    "\" } ] }\n";
    config_path = WriteConfig(
        "  - { principal: reader, role: Key Vault Reader, scope: /vaults/payments }\n"
        "  - { principal: cryptouser, role: Key Vault Crypto User, scope: /vaults/payments }\n",
        "", "{ name: archive }", principals);
    ASSERT_EQ(InitWith(config_path), CKR_OK);
    s = LoggedInRw();
    for (int i = 0; i < 16; ++i) iv[i] = static_cast<CK_BYTE>(i);
    target = GenAes(s, 16, "target", false, /*extractable=*/true);
  }

  CK_RV LoginAs(const std::string& who) {
    f->C_Logout(s);
    std::string pin = who == "app" ? std::string(kAdminPin) : who + ":" + kOtherSecret;
    return f->C_Login(s, CKU_USER, reinterpret_cast<CK_UTF8CHAR_PTR>(pin.data()), pin.size());
  }

  Key Rsa(const std::string& label, bool token = false) {
    Key k;
    k.name = "RSA " + label;
    GenRsa(s, 2048, label, &k.pub, &k.priv, token);
    k.sign = {CKM_SHA256_RSA_PKCS, nullptr, 0};
    k.crypt = {CKM_RSA_PKCS_OAEP, &oaep, sizeof(oaep)};
    k.wrap = k.crypt;
    k.uses = kAll;
    Produce(k);
    return k;
  }
  Key Ec(const std::string& label, bool token = false) {
    Key k;
    k.name = "EC " + label;
    GenEc(s, kP256, label, &k.pub, &k.priv, token);
    k.sign = {CKM_ECDSA_SHA256, nullptr, 0};
    k.uses = {kSign, kVerify};
    Produce(k);
    return k;
  }
  Key Aes(const std::string& label, bool token = false) {
    Key k;
    k.name = "AES " + label;
    k.priv = k.pub = GenAes(s, 32, label, token);
    k.crypt = {CKM_AES_CBC_PAD, iv, sizeof(iv)};
    k.wrap = {CKM_AES_KEY_WRAP_PAD, nullptr, 0};
    k.uses = {kEncrypt, kDecrypt, kWrap, kUnwrap};
    Produce(k);
    return k;
  }

  // The signature, ciphertext and wrapped key the checks of verify, decrypt and unwrap use.
  void Produce(Key& k) {
    std::vector<uint8_t> out(1024);
    CK_ULONG len = out.size();
    if (k.uses.count(kSign)) {
      ASSERT_EQ(f->C_SignInit(s, &k.sign, k.priv), CKR_OK) << k.name;
      ASSERT_EQ(f->C_Sign(s, data.data(), data.size(), out.data(), &len), CKR_OK) << k.name;
      k.signature.assign(out.begin(), out.begin() + len);
    }
    if (k.uses.count(kEncrypt)) {
      len = out.size();
      ASSERT_EQ(f->C_EncryptInit(s, &k.crypt, k.pub), CKR_OK) << k.name;
      ASSERT_EQ(f->C_Encrypt(s, data.data(), data.size(), out.data(), &len), CKR_OK) << k.name;
      k.ciphertext.assign(out.begin(), out.begin() + len);
    }
    if (k.uses.count(kWrap)) {
      len = out.size();
      ASSERT_EQ(f->C_WrapKey(s, &k.wrap, k.pub, target, out.data(), &len), CKR_OK) << k.name;
      k.wrapped.assign(out.begin(), out.begin() + len);
    }
  }

  // One use of the key, start to end: CKR_OK, or the first failure.
  CK_RV Try(const Key& k, Use u) {
    std::vector<uint8_t> out(1024);
    CK_ULONG len = out.size();
    CK_RV rv = CKR_OK;
    CK_MECHANISM m{};
    switch (u) {
      case kSign:
        m = k.sign;
        if ((rv = f->C_SignInit(s, &m, k.priv)) != CKR_OK) return rv;
        return f->C_Sign(s, data.data(), data.size(), out.data(), &len);
      case kVerify:
        m = k.sign;
        if ((rv = f->C_VerifyInit(s, &m, k.pub)) != CKR_OK) return rv;
        return f->C_Verify(s, data.data(), data.size(), const_cast<uint8_t*>(k.signature.data()), k.signature.size());
      case kEncrypt:
        m = k.crypt;
        if ((rv = f->C_EncryptInit(s, &m, k.pub)) != CKR_OK) return rv;
        return f->C_Encrypt(s, data.data(), data.size(), out.data(), &len);
      case kDecrypt:
        m = k.crypt;
        if ((rv = f->C_DecryptInit(s, &m, k.priv)) != CKR_OK) return rv;
        rv = f->C_Decrypt(s, const_cast<uint8_t*>(k.ciphertext.data()), k.ciphertext.size(), out.data(), &len);
        if (rv == CKR_OK && std::vector<uint8_t>(out.begin(), out.begin() + len) != data) return CKR_GENERAL_ERROR;
        return rv;
      case kWrap:
        m = k.wrap;
        return f->C_WrapKey(s, &m, k.pub, target, out.data(), &len);
      case kUnwrap: {
        m = k.wrap;
        CK_OBJECT_CLASS sc = CKO_SECRET_KEY;
        CK_KEY_TYPE kt = CKK_AES;
        CK_BBOOL no = CK_FALSE;
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &sc, sizeof(sc)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_TOKEN, &no, 1}};
        CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
        return f->C_UnwrapKey(s, &m, k.priv, const_cast<uint8_t*>(k.wrapped.data()), k.wrapped.size(), t, 3, &h);
      }
    }
    return CKR_GENERAL_ERROR;
  }

  // Every use the key supports: allowed ones succeed, the others are refused as not permitted.
  void ExpectUses(const Key& k, const std::set<Use>& allowed, const std::string& state) {
    for (Use u : k.uses)
      EXPECT_EQ(Try(k, u), allowed.count(u) ? CKR_OK : CKR_KEY_FUNCTION_NOT_PERMITTED)
          << k.name << ", " << state << ": " << kUseNames[u];
  }

  CK_RV Set(CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t, const void* v, CK_ULONG len) {
    CK_ATTRIBUTE a{t, const_cast<void*>(v), len};
    return f->C_SetAttributeValue(s, o, &a, 1);
  }
  CK_RV SetBool(CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t, bool v) {
    CK_BBOOL b = v ? CK_TRUE : CK_FALSE;
    return Set(o, t, &b, 1);
  }
  CK_RV SetUlong(CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t, CK_ULONG v) { return Set(o, t, &v, sizeof(v)); }
  CK_RV SetText(CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t, const std::string& v) {
    return Set(o, t, v.data(), v.size());
  }
  // Sets the attribute on both objects of the key (once for AES).
  void SetOnKey(const Key& k, CK_ATTRIBUTE_TYPE t, const void* v, CK_ULONG len) {
    ASSERT_EQ(Set(k.priv, t, v, len), CKR_OK) << k.name;
    if (k.pub != k.priv) {
      ASSERT_EQ(Set(k.pub, t, v, len), CKR_OK) << k.name;
    }
  }
  CK_ULONG GetUlong(CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t) {
    auto v = GetAttr(s, o, t);
    CK_ULONG out = 0;
    EXPECT_EQ(v.size(), sizeof(out));
    if (v.size() == sizeof(out)) std::memcpy(&out, v.data(), sizeof(out));
    return out;
  }
  std::string GetText(CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t) {
    auto v = GetAttr(s, o, t);
    return std::string(v.begin(), v.end());
  }
  CK_OBJECT_HANDLE FindOne(const std::string& label, CK_OBJECT_CLASS cls) {
    CK_ATTRIBUTE t[] = {{CKA_LABEL, const_cast<char*>(label.data()), label.size()}, {CKA_CLASS, &cls, sizeof(cls)}};
    EXPECT_EQ(f->C_FindObjectsInit(s, t, 2), CKR_OK);
    CK_OBJECT_HANDLE h[2];
    CK_ULONG n = 0;
    EXPECT_EQ(f->C_FindObjects(s, h, 2, &n), CKR_OK);
    EXPECT_EQ(f->C_FindObjectsFinal(s), CKR_OK);
    EXPECT_EQ(n, 1u) << label;
    return n == 1 ? h[0] : CK_INVALID_HANDLE;
  }
  CK_OBJECT_HANDLE MakeSecret(const std::string& label, bool token) {
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_BBOOL tok = token ? CK_TRUE : CK_FALSE, yes = CK_TRUE;
    std::string value = "s3cr3t";
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &tok, 1}, {CKA_PRIVATE, &yes, 1},
                        {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
                        {CKA_VALUE, value.data(), value.size()}};
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    EXPECT_EQ(f->C_CreateObject(s, t, 5, &h), CKR_OK);
    return h;
  }

  CK_SESSION_HANDLE s = 0;
  CK_OBJECT_HANDLE target = 0;  // an extractable AES key every wrap wraps
  CK_RSA_PKCS_OAEP_PARAMS oaep{CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, nullptr, 0};
  CK_BYTE iv[16] = {};
  std::vector<uint8_t> data = Bytes("life cycle of a key");
};

TEST_F(KeyRulesTest, DisabledKeyRefusesEveryUse) {
  for (Key k : {Rsa("rsa"), Ec("ec"), Aes("aes")}) {
    EXPECT_TRUE(GetBool(s, k.priv, CKA_VAULTP11_ENABLED)) << k.name;
    ExpectUses(k, kAll, "enabled");
    CK_BBOOL no = CK_FALSE, yes = CK_TRUE;
    SetOnKey(k, CKA_VAULTP11_ENABLED, &no, 1);
    EXPECT_FALSE(GetBool(s, k.priv, CKA_VAULTP11_ENABLED)) << k.name;
    EXPECT_FALSE(GetBool(s, k.pub, CKA_VAULTP11_ENABLED)) << k.name;
    ExpectUses(k, {}, "disabled");
    SetOnKey(k, CKA_VAULTP11_ENABLED, &yes, 1);
    ExpectUses(k, kAll, "enabled again");
  }
}

TEST_F(KeyRulesTest, EachObjectOfAPairHasItsOwnFlag) {
  Key k = Rsa("half");
  ASSERT_EQ(SetBool(k.priv, CKA_VAULTP11_ENABLED, false), CKR_OK);
  EXPECT_TRUE(GetBool(s, k.pub, CKA_VAULTP11_ENABLED));
  ExpectUses(k, {kVerify, kEncrypt, kWrap}, "private half disabled");
  ASSERT_EQ(SetBool(k.priv, CKA_VAULTP11_ENABLED, true), CKR_OK);
  ASSERT_EQ(SetBool(k.pub, CKA_VAULTP11_ENABLED, false), CKR_OK);
  ExpectUses(k, {kSign, kDecrypt, kUnwrap}, "public half disabled");
}

TEST_F(KeyRulesTest, ExpiredKeyStillOpensWhatItProtected) {
  for (Key k : {Rsa("rsa"), Ec("ec"), Aes("aes")}) {
    CK_ULONG exp = kPast;
    SetOnKey(k, CKA_VAULTP11_EXPIRES, &exp, sizeof(exp));
    EXPECT_EQ(GetText(k.priv, CKA_END_DATE), "20010909") << k.name;
    ExpectUses(k, kOpening, "expired");
    // Expired by its end date alone: the same.
    CK_ULONG none = 0;
    SetOnKey(k, CKA_VAULTP11_EXPIRES, &none, sizeof(none));
    EXPECT_EQ(GetText(k.priv, CKA_END_DATE), "") << k.name;
    ExpectUses(k, kAll, "no expiry");
    std::string end = "20200229";
    SetOnKey(k, CKA_END_DATE, end.data(), end.size());
    EXPECT_EQ(GetUlong(k.priv, CKA_VAULTP11_EXPIRES), 1583020799u) << k.name;  // 2020-02-29T23:59:59Z
    ExpectUses(k, kOpening, "past end date");
    // A disabled expired key does nothing at all.
    CK_BBOOL no = CK_FALSE;
    SetOnKey(k, CKA_VAULTP11_ENABLED, &no, 1);
    ExpectUses(k, {}, "expired and disabled");
  }
}

TEST_F(KeyRulesTest, NotYetValidKeyStillOpensWhatItProtected) {
  for (Key k : {Rsa("rsa"), Ec("ec"), Aes("aes")}) {
    CK_ULONG nbf = kFuture;
    SetOnKey(k, CKA_VAULTP11_NOT_BEFORE, &nbf, sizeof(nbf));
    EXPECT_EQ(GetText(k.pub, CKA_START_DATE), "21000101") << k.name;
    ExpectUses(k, kOpening, "not yet valid");
    std::string start = "20200101";
    SetOnKey(k, CKA_START_DATE, start.data(), start.size());
    EXPECT_EQ(GetUlong(k.pub, CKA_VAULTP11_NOT_BEFORE), 1577836800u) << k.name;
    ExpectUses(k, kAll, "valid since 2020");
    // A window that is open now.
    CK_ULONG exp = kFuture;
    SetOnKey(k, CKA_VAULTP11_EXPIRES, &exp, sizeof(exp));
    ExpectUses(k, kAll, "inside its window");
  }
}

TEST_F(KeyRulesTest, DatesAndSecondsReadBackConsistent) {
  Key k = Aes("dates");
  // Seconds set the dates (the UTC day) ...
  ASSERT_EQ(SetUlong(k.priv, CKA_VAULTP11_NOT_BEFORE, 1773578096), CKR_OK);  // 2026-03-15T12:34:56Z
  EXPECT_EQ(GetText(k.priv, CKA_START_DATE), "20260315");
  // ... writing the same date back keeps the second, another day starts at 00:00:00Z ...
  ASSERT_EQ(SetText(k.priv, CKA_START_DATE, "20260315"), CKR_OK);
  EXPECT_EQ(GetUlong(k.priv, CKA_VAULTP11_NOT_BEFORE), 1773578096u);
  ASSERT_EQ(SetText(k.priv, CKA_START_DATE, "20260101"), CKR_OK);
  EXPECT_EQ(GetUlong(k.priv, CKA_VAULTP11_NOT_BEFORE), 1767225600u);
  // ... an end date ends at 23:59:59Z, an empty date clears both forms.
  ASSERT_EQ(SetText(k.priv, CKA_END_DATE, "20261231"), CKR_OK);
  EXPECT_EQ(GetUlong(k.priv, CKA_VAULTP11_EXPIRES), 1798761599u);
  ASSERT_EQ(Set(k.priv, CKA_START_DATE, nullptr, 0), CKR_OK);
  EXPECT_EQ(GetUlong(k.priv, CKA_VAULTP11_NOT_BEFORE), 0u);
  EXPECT_TRUE(GetAttr(s, k.priv, CKA_START_DATE).empty());
  // Both forms at once must agree; not-before after expiry is refused; nothing changes.
  CK_ULONG secs = 1798761599;
  std::string other_day = "20261230";
  CK_ATTRIBUTE both[] = {{CKA_VAULTP11_EXPIRES, &secs, sizeof(secs)}, {CKA_END_DATE, other_day.data(), 8}};
  EXPECT_EQ(f->C_SetAttributeValue(s, k.priv, both, 2), CKR_TEMPLATE_INCONSISTENT);
  EXPECT_EQ(SetText(k.priv, CKA_START_DATE, "20270101"), CKR_TEMPLATE_INCONSISTENT);
  EXPECT_EQ(SetUlong(k.priv, CKA_VAULTP11_NOT_BEFORE, 1798761600), CKR_TEMPLATE_INCONSISTENT);
  EXPECT_EQ(SetText(k.priv, CKA_END_DATE, "20260230"), CKR_ATTRIBUTE_VALUE_INVALID);
  EXPECT_EQ(SetUlong(k.priv, CKA_VAULTP11_EXPIRES, 253402300800UL), CKR_ATTRIBUTE_VALUE_INVALID);
  EXPECT_EQ(GetText(k.priv, CKA_END_DATE), "20261231");
  EXPECT_EQ(GetUlong(k.priv, CKA_VAULTP11_NOT_BEFORE), 0u);
  // Secrets have the seconds but no dates, and their values stay readable whatever they say.
  CK_OBJECT_HANDLE secret = MakeSecret("sec", false);
  ASSERT_EQ(SetUlong(secret, CKA_VAULTP11_EXPIRES, kPast), CKR_OK);
  ASSERT_EQ(SetBool(secret, CKA_VAULTP11_ENABLED, false), CKR_OK);
  EXPECT_EQ(GetUlong(secret, CKA_VAULTP11_EXPIRES), kPast);
  EXPECT_FALSE(GetBool(s, secret, CKA_VAULTP11_ENABLED));
  EXPECT_EQ(GetText(secret, CKA_VALUE), "s3cr3t");
  EXPECT_EQ(SetText(secret, CKA_END_DATE, "20260101"), CKR_ATTRIBUTE_TYPE_INVALID);
}

TEST_F(KeyRulesTest, CreationTemplatesTakeThem) {
  CK_BBOOL no = CK_FALSE, yes = CK_TRUE;
  CK_ULONG past = kPast, future = kFuture;
  std::string tags = R"({ "team" : "payments" })";
  // C_GenerateKeyPair: each template applies to its own half.
  CK_MECHANISM ecgen{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
  CK_ATTRIBUTE pt[] = {{CKA_EC_PARAMS, const_cast<uint8_t*>(kP256.data()), kP256.size()},
                       {CKA_VAULTP11_TAGS, tags.data(), tags.size()}};
  CK_ATTRIBUTE vt[] = {{CKA_VAULTP11_EXPIRES, &past, sizeof(past)}};
  Key ec;
  ec.name = "EC from templates";
  ec.sign = {CKM_ECDSA_SHA256, nullptr, 0};
  ec.uses = {kSign, kVerify};
  ASSERT_EQ(f->C_GenerateKeyPair(s, &ecgen, pt, 2, vt, 1, &ec.pub, &ec.priv), CKR_OK);
  EXPECT_EQ(GetText(ec.pub, CKA_VAULTP11_TAGS), R"({"team":"payments"})");
  EXPECT_EQ(GetText(ec.priv, CKA_VAULTP11_TAGS), "{}");
  EXPECT_EQ(GetUlong(ec.pub, CKA_VAULTP11_EXPIRES), 0u);
  EXPECT_EQ(GetText(ec.priv, CKA_END_DATE), "20010909");
  EXPECT_EQ(Try(ec, kSign), CKR_KEY_FUNCTION_NOT_PERMITTED);
  // C_GenerateKey with a start date.
  CK_MECHANISM aesgen{CKM_AES_KEY_GEN, nullptr, 0};
  CK_ULONG len = 16;
  std::string start = "20991231";
  CK_ATTRIBUTE at[] = {{CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_START_DATE, start.data(), start.size()}};
  CK_OBJECT_HANDLE aes = 0;
  ASSERT_EQ(f->C_GenerateKey(s, &aesgen, at, 2, &aes), CKR_OK);
  EXPECT_EQ(GetUlong(aes, CKA_VAULTP11_NOT_BEFORE), kFuture - 86400);
  Key ak;
  ak.name = "AES from template";
  ak.priv = ak.pub = aes;
  ak.crypt = {CKM_AES_CBC_PAD, iv, sizeof(iv)};
  EXPECT_EQ(Try(ak, kEncrypt), CKR_KEY_FUNCTION_NOT_PERMITTED);
  // C_CreateObject: both forms must agree.
  CK_OBJECT_CLASS sc = CKO_SECRET_KEY;
  CK_KEY_TYPE kt = CKK_AES;
  std::vector<uint8_t> value(16, 0x5a);
  std::string end = "21000101", wrong_end = "21000102";
  CK_ATTRIBUTE ct[] = {{CKA_CLASS, &sc, sizeof(sc)}, {CKA_KEY_TYPE, &kt, sizeof(kt)},
                       {CKA_VALUE, value.data(), value.size()}, {CKA_VAULTP11_EXPIRES, &future, sizeof(future)},
                       {CKA_END_DATE, end.data(), end.size()}};
  CK_OBJECT_HANDLE imported = 0;
  ASSERT_EQ(f->C_CreateObject(s, ct, 5, &imported), CKR_OK);
  EXPECT_EQ(GetUlong(imported, CKA_VAULTP11_EXPIRES), kFuture);
  ct[4].pValue = wrong_end.data();
  EXPECT_EQ(f->C_CreateObject(s, ct, 5, &imported), CKR_TEMPLATE_INCONSISTENT);
  // C_UnwrapKey: a key unwrapped disabled.
  Key kek = Aes("kek");
  CK_ATTRIBUTE ut[] = {{CKA_CLASS, &sc, sizeof(sc)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_TOKEN, &no, 1},
                       {CKA_ENCRYPT, &yes, 1}, {CKA_VAULTP11_ENABLED, &no, 1}};
  CK_OBJECT_HANDLE unwrapped = 0;
  ASSERT_EQ(f->C_UnwrapKey(s, &kek.wrap, kek.priv, kek.wrapped.data(), kek.wrapped.size(), ut, 5, &unwrapped), CKR_OK);
  EXPECT_FALSE(GetBool(s, unwrapped, CKA_VAULTP11_ENABLED));
  ak.priv = ak.pub = unwrapped;
  EXPECT_EQ(Try(ak, kEncrypt), CKR_KEY_FUNCTION_NOT_PERMITTED);
  // Refused templates: window the wrong way round, bad tags, bad sizes.
  CK_ATTRIBUTE backwards[] = {{CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_VAULTP11_NOT_BEFORE, &future, sizeof(future)},
                              {CKA_VAULTP11_EXPIRES, &past, sizeof(past)}};
  EXPECT_EQ(f->C_GenerateKey(s, &aesgen, backwards, 3, &aes), CKR_TEMPLATE_INCONSISTENT);
  CK_ATTRIBUTE vt_bad[] = {{CKA_VAULTP11_TAGS, const_cast<char*>("[1]"), 3}};
  CK_OBJECT_HANDLE p2, v2;
  EXPECT_EQ(f->C_GenerateKeyPair(s, &ecgen, pt, 2, vt_bad, 1, &p2, &v2), CKR_ATTRIBUTE_VALUE_INVALID);
  CK_ATTRIBUTE bad_bool[] = {{CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_VAULTP11_ENABLED, &len, sizeof(len)}};
  EXPECT_EQ(f->C_GenerateKey(s, &aesgen, bad_bool, 2, &aes), CKR_ATTRIBUTE_VALUE_INVALID);
}

TEST_F(KeyRulesTest, TagsRoundTripAndLimits) {
  Key k = Ec("tagged");
  CK_OBJECT_HANDLE secret = MakeSecret("tagged secret", false);
  EXPECT_EQ(GetText(k.priv, CKA_VAULTP11_TAGS), "{}");
  for (CK_OBJECT_HANDLE o : {k.priv, secret}) {
    ASSERT_EQ(SetText(o, CKA_VAULTP11_TAGS, "{\"owner\": \"payments\", \"env\": \"prod\", \"caf\xc3\xa9\": \"\"}"),
              CKR_OK);
    EXPECT_EQ(GetText(o, CKA_VAULTP11_TAGS), "{\"caf\xc3\xa9\":\"\",\"env\":\"prod\",\"owner\":\"payments\"}");
  }
  // Found by their tags, whatever the template's spacing and order.
  std::string query = R"({"owner":"payments",  "env":"prod", "café":""})";
  CK_ATTRIBUTE find[] = {{CKA_VAULTP11_TAGS, query.data(), query.size()}};
  ASSERT_EQ(f->C_FindObjectsInit(s, find, 1), CKR_OK);
  CK_OBJECT_HANDLE found[4];
  CK_ULONG n = 0;
  ASSERT_EQ(f->C_FindObjects(s, found, 4, &n), CKR_OK);
  ASSERT_EQ(f->C_FindObjectsFinal(s), CKR_OK);
  EXPECT_EQ(std::set<CK_OBJECT_HANDLE>(found, found + n), (std::set<CK_OBJECT_HANDLE>{k.priv, secret}));
  // Limits: 15 tags of 256-character names and values fit, a 16th or a 257th character does not.
  auto tags = [](int count, size_t name_len, size_t value_len) {
    std::string out = "{";
    for (int i = 0; i < count; ++i)
      out += (i ? "," : "") + ("\"" + std::string(name_len - 1, 'n') + static_cast<char>('a' + i) + "\":\"" +
                               std::string(value_len, 'v') + "\"");
    return out + "}";
  };
  EXPECT_EQ(SetText(k.priv, CKA_VAULTP11_TAGS, tags(15, 256, 256)), CKR_OK);
  EXPECT_EQ(GetText(k.priv, CKA_VAULTP11_TAGS).size(), tags(15, 256, 256).size());
  EXPECT_EQ(SetText(k.priv, CKA_VAULTP11_TAGS, tags(16, 1, 1)), CKR_ATTRIBUTE_VALUE_INVALID);
  EXPECT_EQ(SetText(k.priv, CKA_VAULTP11_TAGS, tags(1, 257, 1)), CKR_ATTRIBUTE_VALUE_INVALID);
  EXPECT_EQ(SetText(k.priv, CKA_VAULTP11_TAGS, tags(1, 1, 257)), CKR_ATTRIBUTE_VALUE_INVALID);
  for (const char* bad : {R"({"a":1})", R"({"a":{"b":"c"}})", R"(["a"])", R"({"a":"1","a":"2"})", "{", "\xff"})
    EXPECT_EQ(SetText(secret, CKA_VAULTP11_TAGS, bad), CKR_ATTRIBUTE_VALUE_INVALID) << bad;
  EXPECT_EQ(GetText(k.priv, CKA_VAULTP11_TAGS), tags(15, 256, 256));  // unchanged by the refusals
  // An empty value clears them.
  ASSERT_EQ(Set(secret, CKA_VAULTP11_TAGS, nullptr, 0), CKR_OK);
  EXPECT_EQ(GetText(secret, CKA_VAULTP11_TAGS), "{}");
}

TEST_F(KeyRulesTest, AttributesSurviveReinitialisation) {
  Key rsa = Rsa("p-rsa", true), ec = Ec("p-ec", true), aes = Aes("p-aes", true);
  CK_OBJECT_HANDLE secret = MakeSecret("p-secret", true);
  ASSERT_EQ(SetBool(rsa.priv, CKA_VAULTP11_ENABLED, false), CKR_OK);
  ASSERT_EQ(SetBool(rsa.pub, CKA_VAULTP11_ENABLED, false), CKR_OK);
  ASSERT_EQ(SetUlong(ec.priv, CKA_VAULTP11_EXPIRES, kPast), CKR_OK);
  ASSERT_EQ(SetText(aes.priv, CKA_START_DATE, "21000101"), CKR_OK);
  ASSERT_EQ(SetText(aes.priv, CKA_VAULTP11_TAGS, R"({"k":"v"})"), CKR_OK);
  ASSERT_EQ(SetUlong(secret, CKA_VAULTP11_NOT_BEFORE, kFuture), CKR_OK);
  ASSERT_EQ(SetText(secret, CKA_VAULTP11_TAGS, R"({"s":"t"})"), CKR_OK);

  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  initialized = false;
  ASSERT_EQ(InitWith(config_path), CKR_OK);
  s = LoggedInRw();
  target = GenAes(s, 16, "target2", false, /*extractable=*/true);
  rsa.priv = FindOne("p-rsa", CKO_PRIVATE_KEY);
  rsa.pub = FindOne("p-rsa", CKO_PUBLIC_KEY);
  ec.priv = FindOne("p-ec", CKO_PRIVATE_KEY);
  ec.pub = FindOne("p-ec", CKO_PUBLIC_KEY);
  aes.priv = aes.pub = FindOne("p-aes", CKO_SECRET_KEY);
  secret = FindOne("p-secret", CKO_DATA);

  EXPECT_FALSE(GetBool(s, rsa.priv, CKA_VAULTP11_ENABLED));
  EXPECT_FALSE(GetBool(s, rsa.pub, CKA_VAULTP11_ENABLED));
  EXPECT_EQ(GetUlong(ec.priv, CKA_VAULTP11_EXPIRES), kPast);
  EXPECT_EQ(GetText(ec.priv, CKA_END_DATE), "20010909");
  EXPECT_EQ(GetUlong(aes.priv, CKA_VAULTP11_NOT_BEFORE), kFuture);
  EXPECT_EQ(GetText(aes.priv, CKA_VAULTP11_TAGS), R"({"k":"v"})");
  EXPECT_EQ(GetUlong(secret, CKA_VAULTP11_NOT_BEFORE), kFuture);
  EXPECT_EQ(GetText(secret, CKA_VAULTP11_TAGS), R"({"s":"t"})");
  // And the rules still hold (the wrapped key was made under the first target: only the
  // unwrap itself matters here).
  ExpectUses(rsa, {}, "disabled, reloaded");
  ExpectUses(ec, kOpening, "expired, reloaded");
  for (Use u : {kEncrypt, kWrap}) EXPECT_EQ(Try(aes, u), CKR_KEY_FUNCTION_NOT_PERMITTED) << kUseNames[u];
  for (Use u : {kDecrypt, kUnwrap}) EXPECT_EQ(Try(aes, u), CKR_OK) << kUseNames[u];
}

TEST_F(KeyRulesTest, ChangingThemNeedsTheUpdatePermission) {
  Key k = Ec("guarded", true);
  CK_OBJECT_HANDLE secret = MakeSecret("guarded secret", true);
  // A reader may read them but change none.
  ASSERT_EQ(LoginAs("reader"), CKR_OK);
  EXPECT_TRUE(GetBool(s, k.priv, CKA_VAULTP11_ENABLED));
  EXPECT_EQ(SetBool(k.priv, CKA_VAULTP11_ENABLED, false), CKR_ACTION_PROHIBITED);
  EXPECT_EQ(SetUlong(k.priv, CKA_VAULTP11_EXPIRES, kPast), CKR_ACTION_PROHIBITED);
  EXPECT_EQ(SetUlong(k.pub, CKA_VAULTP11_NOT_BEFORE, kFuture), CKR_ACTION_PROHIBITED);
  EXPECT_EQ(SetText(k.priv, CKA_END_DATE, "20200101"), CKR_ACTION_PROHIBITED);
  EXPECT_EQ(SetText(k.priv, CKA_VAULTP11_TAGS, R"({"a":"b"})"), CKR_ACTION_PROHIBITED);
  EXPECT_EQ(SetBool(secret, CKA_VAULTP11_ENABLED, false), CKR_ACTION_PROHIBITED);
  EXPECT_EQ(SetText(secret, CKA_VAULTP11_TAGS, R"({"a":"b"})"), CKR_ACTION_PROHIBITED);
  // A Crypto User has update.
  ASSERT_EQ(LoginAs("cryptouser"), CKR_OK);
  EXPECT_EQ(SetBool(k.priv, CKA_VAULTP11_ENABLED, false), CKR_OK);
  EXPECT_EQ(SetUlong(k.priv, CKA_VAULTP11_EXPIRES, kFuture), CKR_OK);
  EXPECT_EQ(SetText(k.priv, CKA_VAULTP11_TAGS, R"({"a":"b"})"), CKR_OK);
  EXPECT_EQ(Try(k, kSign), CKR_KEY_FUNCTION_NOT_PERMITTED);
  // Nothing the reader tried was changed.
  ASSERT_EQ(LoginAs("app"), CKR_OK);
  EXPECT_EQ(GetText(secret, CKA_VAULTP11_TAGS), "{}");
  EXPECT_TRUE(GetBool(s, secret, CKA_VAULTP11_ENABLED));
  EXPECT_EQ(GetUlong(k.pub, CKA_VAULTP11_NOT_BEFORE), 0u);
  EXPECT_EQ(GetUlong(k.priv, CKA_VAULTP11_EXPIRES), kFuture);
}

}  // namespace
}  // namespace vaultp11::testing

// Objects: generation templates, attributes, the five C_GetAttributeValue cases, modification,
// search, copy, destroy, import and data objects (issue part 7).
#include <cstring>

#include "fixture.h"

namespace vaultp11::testing {
namespace {

using ObjectTest = AbiTest;

CK_ULONG Ulong(const std::vector<uint8_t>& v) {
  CK_ULONG x = 0;
  if (v.size() == sizeof(x)) std::memcpy(&x, v.data(), sizeof(x));
  return x;
}

TEST_F(ObjectTest, RsaKeyPairHasBothObjectsWithSharedIdAndLabel) {
  CK_SESSION_HANDLE s = LoggedInRw();
  CK_OBJECT_HANDLE pub, priv;
  GenRsa(s, 2048, "rsa-key", &pub, &priv);
  EXPECT_EQ(Ulong(GetAttr(s, pub, CKA_CLASS)), CKO_PUBLIC_KEY);
  EXPECT_EQ(Ulong(GetAttr(s, priv, CKA_CLASS)), CKO_PRIVATE_KEY);
  EXPECT_EQ(Ulong(GetAttr(s, priv, CKA_KEY_TYPE)), CKK_RSA);
  EXPECT_EQ(GetAttr(s, pub, CKA_ID), GetAttr(s, priv, CKA_ID));
  EXPECT_EQ(GetAttr(s, pub, CKA_LABEL), Bytes("rsa-key"));
  EXPECT_EQ(GetAttr(s, priv, CKA_LABEL), Bytes("rsa-key"));
  auto n = GetAttr(s, pub, CKA_MODULUS);
  EXPECT_EQ(n.size(), 256u);
  EXPECT_EQ(GetAttr(s, priv, CKA_MODULUS), n);
  EXPECT_EQ(GetAttr(s, priv, CKA_PUBLIC_EXPONENT), (std::vector<uint8_t>{1, 0, 1}));
  EXPECT_EQ(Ulong(GetAttr(s, pub, CKA_MODULUS_BITS)), 2048u);
  // Common attributes, all answered.
  EXPECT_TRUE(GetBool(s, priv, CKA_TOKEN));
  EXPECT_TRUE(GetBool(s, priv, CKA_PRIVATE));
  EXPECT_TRUE(GetBool(s, priv, CKA_SIGN));
  EXPECT_TRUE(GetBool(s, priv, CKA_DECRYPT));
  EXPECT_TRUE(GetBool(s, priv, CKA_UNWRAP));
  EXPECT_TRUE(GetBool(s, priv, CKA_SENSITIVE));
  EXPECT_TRUE(GetBool(s, priv, CKA_ALWAYS_SENSITIVE));
  EXPECT_FALSE(GetBool(s, priv, CKA_EXTRACTABLE));
  EXPECT_TRUE(GetBool(s, priv, CKA_NEVER_EXTRACTABLE));
  EXPECT_TRUE(GetBool(s, priv, CKA_LOCAL));
  EXPECT_FALSE(GetBool(s, priv, CKA_ALWAYS_AUTHENTICATE));
  EXPECT_FALSE(GetBool(s, priv, CKA_DERIVE));
  EXPECT_FALSE(GetBool(s, priv, CKA_SIGN_RECOVER));
  EXPECT_TRUE(GetBool(s, priv, CKA_MODIFIABLE));
  EXPECT_TRUE(GetBool(s, priv, CKA_DESTROYABLE));
  EXPECT_EQ(Ulong(GetAttr(s, priv, CKA_KEY_GEN_MECHANISM)), CKM_RSA_PKCS_KEY_PAIR_GEN);
  EXPECT_TRUE(GetAttr(s, priv, CKA_ALLOWED_MECHANISMS).empty());
  EXPECT_TRUE(GetAttr(s, priv, CKA_START_DATE).empty());
  EXPECT_TRUE(GetAttr(s, priv, CKA_END_DATE).empty());
  EXPECT_TRUE(GetBool(s, pub, CKA_VERIFY));
  EXPECT_TRUE(GetBool(s, pub, CKA_ENCRYPT));
  EXPECT_TRUE(GetBool(s, pub, CKA_WRAP));
  EXPECT_FALSE(GetBool(s, pub, CKA_PRIVATE));
  EXPECT_FALSE(GetAttr(s, pub, CKA_PUBLIC_KEY_INFO).empty());
}

TEST_F(ObjectTest, EveryRsaSizeAndEcCurveGenerates) {
  CK_SESSION_HANDLE s = LoggedInRw();
  CK_OBJECT_HANDLE pub, priv;
  for (CK_ULONG bits : {3072ul, 4096ul}) {
    GenRsa(s, bits, "rsa" + std::to_string(bits), &pub, &priv, false);
    EXPECT_EQ(GetAttr(s, priv, CKA_MODULUS).size(), bits / 8);
  }
  struct Curve {
    const std::vector<uint8_t>* params;
    size_t point_len;  // DER OCTET STRING of 04||X||Y
  } curves[] = {{&kP256, 67}, {&kP384, 99}, {&kP521, 136}, {&kSecp256k1, 67}};
  for (const auto& c : curves) {
    GenEc(s, *c.params, "ec", &pub, &priv, false);
    EXPECT_EQ(GetAttr(s, priv, CKA_EC_PARAMS), *c.params);
    auto point = GetAttr(s, pub, CKA_EC_POINT);
    EXPECT_EQ(point.size(), c.point_len);
    EXPECT_EQ(point[0], 0x04);  // OCTET STRING
    EXPECT_EQ(GetAttr(s, priv, CKA_EC_POINT), point);
    // EC keys sign and verify only, unless a template asks for more.
    EXPECT_TRUE(GetBool(s, priv, CKA_SIGN));
    EXPECT_FALSE(GetBool(s, priv, CKA_DECRYPT));
    EXPECT_FALSE(GetBool(s, priv, CKA_UNWRAP));
    EXPECT_FALSE(GetBool(s, pub, CKA_WRAP));
    EXPECT_FALSE(GetBool(s, pub, CKA_ENCRYPT));
  }
  for (CK_ULONG bytes : {16ul, 24ul, 32ul}) {
    CK_OBJECT_HANDLE k = GenAes(s, bytes, "aes", false);
    EXPECT_EQ(Ulong(GetAttr(s, k, CKA_VALUE_LEN)), bytes);
    EXPECT_EQ(Ulong(GetAttr(s, k, CKA_KEY_TYPE)), CKK_AES);
  }
}

TEST_F(ObjectTest, GenerationTemplateErrors) {
  CK_SESSION_HANDLE s = LoggedInRw();
  CK_MECHANISM rsa{CKM_RSA_PKCS_KEY_PAIR_GEN, nullptr, 0};
  CK_MECHANISM ec{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
  CK_OBJECT_HANDLE p, v;
  CK_ULONG bits = 1024;
  CK_ATTRIBUTE small[] = {{CKA_MODULUS_BITS, &bits, sizeof(bits)}};
  EXPECT_EQ(f->C_GenerateKeyPair(s, &rsa, small, 1, nullptr, 0, &p, &v), CKR_KEY_SIZE_RANGE);
  EXPECT_EQ(f->C_GenerateKeyPair(s, &rsa, nullptr, 0, nullptr, 0, &p, &v), CKR_TEMPLATE_INCOMPLETE);
  EXPECT_EQ(f->C_GenerateKeyPair(s, &ec, nullptr, 0, nullptr, 0, &p, &v), CKR_TEMPLATE_INCOMPLETE);
  std::vector<uint8_t> brainpool = {0x06, 0x09, 0x2b, 0x24, 0x03, 0x03, 0x02, 0x08, 0x01, 0x01, 0x07};
  CK_ATTRIBUTE bp[] = {{CKA_EC_PARAMS, brainpool.data(), brainpool.size()}};
  EXPECT_EQ(f->C_GenerateKeyPair(s, &ec, bp, 1, nullptr, 0, &p, &v), CKR_CURVE_NOT_SUPPORTED);
  // Wrong attribute sizes and unknown attributes.
  CK_ULONG short_bits = 2048;
  CK_ATTRIBUTE wrong_size[] = {{CKA_MODULUS_BITS, &short_bits, 4}};
  EXPECT_EQ(f->C_GenerateKeyPair(s, &rsa, wrong_size, 1, nullptr, 0, &p, &v), CKR_ATTRIBUTE_VALUE_INVALID);
  CK_BBOOL t = CK_TRUE;
  CK_ATTRIBUTE bad_bool[] = {{CKA_MODULUS_BITS, &short_bits, sizeof(short_bits)}, {CKA_VERIFY, &short_bits, 8}};
  EXPECT_EQ(f->C_GenerateKeyPair(s, &rsa, bad_bool, 2, nullptr, 0, &p, &v), CKR_ATTRIBUTE_VALUE_INVALID);
  CK_ATTRIBUTE unknown[] = {{CKA_MODULUS_BITS, &short_bits, sizeof(short_bits)}, {CKA_VALUE_BITS, &t, 1}};
  EXPECT_EQ(f->C_GenerateKeyPair(s, &rsa, unknown, 2, nullptr, 0, &p, &v), CKR_ATTRIBUTE_TYPE_INVALID);
  CK_OBJECT_CLASS wrong_class = CKO_SECRET_KEY;
  CK_ATTRIBUTE conflict[] = {{CKA_MODULUS_BITS, &short_bits, sizeof(short_bits)},
                             {CKA_CLASS, &wrong_class, sizeof(wrong_class)}};
  EXPECT_EQ(f->C_GenerateKeyPair(s, &rsa, conflict, 2, nullptr, 0, &p, &v), CKR_TEMPLATE_INCONSISTENT);
  CK_BBOOL f1 = CK_FALSE;
  CK_ATTRIBUTE twice[] = {{CKA_MODULUS_BITS, &short_bits, sizeof(short_bits)}, {CKA_VERIFY, &t, 1}, {CKA_VERIFY, &f1, 1}};
  EXPECT_EQ(f->C_GenerateKeyPair(s, &rsa, twice, 3, nullptr, 0, &p, &v), CKR_TEMPLATE_INCONSISTENT);
  CK_ATTRIBUTE local[] = {{CKA_MODULUS_BITS, &short_bits, sizeof(short_bits)}, {CKA_LOCAL, &t, 1}};
  EXPECT_EQ(f->C_GenerateKeyPair(s, &rsa, local, 2, nullptr, 0, &p, &v), CKR_ATTRIBUTE_READ_ONLY);
  CK_MECHANISM with_param{CKM_RSA_PKCS_KEY_PAIR_GEN, &t, 1};
  CK_ATTRIBUTE ok[] = {{CKA_MODULUS_BITS, &short_bits, sizeof(short_bits)}};
  EXPECT_EQ(f->C_GenerateKeyPair(s, &with_param, ok, 1, nullptr, 0, &p, &v), CKR_MECHANISM_PARAM_INVALID);
  CK_MECHANISM aes{CKM_AES_KEY_GEN, nullptr, 0};
  CK_ULONG len = 20;
  CK_ATTRIBUTE aes_t[] = {{CKA_VALUE_LEN, &len, sizeof(len)}};
  EXPECT_EQ(f->C_GenerateKey(s, &aes, aes_t, 1, &v), CKR_KEY_SIZE_RANGE);
  EXPECT_EQ(f->C_GenerateKey(s, &aes, nullptr, 0, &v), CKR_TEMPLATE_INCOMPLETE);
  EXPECT_EQ(f->C_GenerateKey(s, &rsa, aes_t, 1, &v), CKR_MECHANISM_INVALID);
  EXPECT_EQ(f->C_GenerateKey(s, nullptr, aes_t, 1, &v), CKR_ARGUMENTS_BAD);
  EXPECT_EQ(f->C_GenerateKeyPair(s, &rsa, ok, 1, nullptr, 0, nullptr, &v), CKR_ARGUMENTS_BAD);
  EXPECT_EQ(f->C_GenerateKeyPair(s, &rsa, nullptr, 3, nullptr, 0, &p, &v), CKR_ARGUMENTS_BAD);
}

TEST_F(ObjectTest, GetAttributeValueFollowsTheFiveCases) {
  CK_SESSION_HANDLE s = LoggedInRw();
  CK_OBJECT_HANDLE pub, priv;
  GenRsa(s, 2048, "cases", &pub, &priv);
  CK_BYTE small[4];
  CK_BYTE big[512];
  CK_BBOOL sign = CK_FALSE;
  CK_ATTRIBUTE t[] = {
      {CKA_PRIVATE_EXPONENT, big, sizeof(big)},  // case 1: sensitive
      {CKA_VALUE_BITS, big, sizeof(big)},        // case 2: not an attribute of this object
      {CKA_LABEL, nullptr, 0},                   // case 3: length query
      {CKA_SIGN, &sign, 1},                      // case 4: copied
      {CKA_MODULUS, small, sizeof(small)},       // case 5: too small
  };
  CK_RV rv = f->C_GetAttributeValue(s, priv, t, 5);
  // Every attribute is processed; any of the three error codes may be returned.
  EXPECT_TRUE(rv == CKR_ATTRIBUTE_SENSITIVE || rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_BUFFER_TOO_SMALL) << rv;
  EXPECT_EQ(t[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
  EXPECT_EQ(t[1].ulValueLen, CK_UNAVAILABLE_INFORMATION);
  EXPECT_EQ(t[2].ulValueLen, 5u);
  EXPECT_EQ(t[3].ulValueLen, 1u);
  EXPECT_EQ(sign, CK_TRUE);
  EXPECT_EQ(t[4].ulValueLen, CK_UNAVAILABLE_INFORMATION);
  // Each case alone gives its own code.
  CK_ATTRIBUTE one{CKA_PRIVATE_EXPONENT, big, sizeof(big)};
  EXPECT_EQ(f->C_GetAttributeValue(s, priv, &one, 1), CKR_ATTRIBUTE_SENSITIVE);
  one = {CKA_VALUE_BITS, big, sizeof(big)};
  EXPECT_EQ(f->C_GetAttributeValue(s, priv, &one, 1), CKR_ATTRIBUTE_TYPE_INVALID);
  one = {CKA_MODULUS, small, sizeof(small)};
  EXPECT_EQ(f->C_GetAttributeValue(s, priv, &one, 1), CKR_BUFFER_TOO_SMALL);
  EXPECT_EQ(f->C_GetAttributeValue(s, priv, nullptr, 1), CKR_ARGUMENTS_BAD);
  EXPECT_EQ(f->C_GetAttributeValue(s, 999999, &one, 1), CKR_OBJECT_HANDLE_INVALID);
  EXPECT_EQ(f->C_GetAttributeValue(777, priv, &one, 1), CKR_SESSION_HANDLE_INVALID);
}

TEST_F(ObjectTest, SensitiveAndExtractableAreEnforcedOnRead) {
  CK_SESSION_HANDLE s = LoggedInRw();
  CK_OBJECT_HANDLE sensitive = GenAes(s, 16, "s", false, true, true);
  CK_OBJECT_HANDLE readable = GenAes(s, 16, "r", false, true, false);
  CK_OBJECT_HANDLE unextractable = GenAes(s, 16, "u", false, false, false);
  CK_BYTE v[32];
  CK_ATTRIBUTE a{CKA_VALUE, v, sizeof(v)};
  EXPECT_EQ(f->C_GetAttributeValue(s, sensitive, &a, 1), CKR_ATTRIBUTE_SENSITIVE);
  a.ulValueLen = sizeof(v);
  EXPECT_EQ(f->C_GetAttributeValue(s, unextractable, &a, 1), CKR_ATTRIBUTE_SENSITIVE);
  a.ulValueLen = sizeof(v);
  EXPECT_EQ(f->C_GetAttributeValue(s, readable, &a, 1), CKR_OK);
  EXPECT_EQ(a.ulValueLen, 16u);
  EXPECT_FALSE(GetBool(s, readable, CKA_ALWAYS_SENSITIVE));
}

TEST_F(ObjectTest, SetAttributeValueOnlyForModifiableAttributes) {
  CK_SESSION_HANDLE s = LoggedInRw();
  CK_OBJECT_HANDLE pub, priv;
  GenEc(s, kP256, "modify-me", &pub, &priv);
  std::string label = "renamed";
  CK_ATTRIBUTE l{CKA_LABEL, label.data(), label.size()};
  ASSERT_EQ(f->C_SetAttributeValue(s, priv, &l, 1), CKR_OK);
  EXPECT_EQ(GetAttr(s, priv, CKA_LABEL), Bytes("renamed"));
  EXPECT_EQ(FindByLabel(s, "renamed"), std::vector<CK_OBJECT_HANDLE>{priv});
  CK_KEY_TYPE kt = CKK_RSA;
  CK_ATTRIBUTE ro{CKA_KEY_TYPE, &kt, sizeof(kt)};
  EXPECT_EQ(f->C_SetAttributeValue(s, priv, &ro, 1), CKR_ATTRIBUTE_READ_ONLY);
  CK_BBOOL no = CK_FALSE, yes = CK_TRUE;
  CK_ATTRIBUTE sens{CKA_SENSITIVE, &no, 1};
  EXPECT_EQ(f->C_SetAttributeValue(s, priv, &sens, 1), CKR_ATTRIBUTE_READ_ONLY);
  CK_ATTRIBUTE ext{CKA_EXTRACTABLE, &yes, 1};
  EXPECT_EQ(f->C_SetAttributeValue(s, priv, &ext, 1), CKR_ATTRIBUTE_READ_ONLY);
  CK_ATTRIBUTE bad{CKA_MODULUS_BITS, &kt, sizeof(kt)};
  EXPECT_EQ(f->C_SetAttributeValue(s, priv, &bad, 1), CKR_ATTRIBUTE_TYPE_INVALID);
  CK_ATTRIBUTE sign_off{CKA_SIGN, &no, 1};
  ASSERT_EQ(f->C_SetAttributeValue(s, priv, &sign_off, 1), CKR_OK);
  CK_MECHANISM m{CKM_ECDSA, nullptr, 0};
  EXPECT_EQ(f->C_SignInit(s, &m, priv), CKR_KEY_FUNCTION_NOT_PERMITTED);
  // The change is persisted.
  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  initialized = false;
  ASSERT_EQ(InitWith(config_path), CKR_OK);
  s = LoggedInRw();
  auto found = FindByLabel(s, "renamed");
  ASSERT_EQ(found.size(), 1u);
  EXPECT_FALSE(GetBool(s, found[0], CKA_SIGN));
  // An object made unmodifiable refuses changes.
  CK_MECHANISM aes{CKM_AES_KEY_GEN, nullptr, 0};
  CK_ULONG len = 16;
  CK_ATTRIBUTE t[] = {{CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_MODIFIABLE, &no, 1}};
  CK_OBJECT_HANDLE k;
  ASSERT_EQ(f->C_GenerateKey(s, &aes, t, 2, &k), CKR_OK);
  EXPECT_EQ(f->C_SetAttributeValue(s, k, &l, 1), CKR_ACTION_PROHIBITED);
}

TEST_F(ObjectTest, FindObjectsWithTemplates) {
  CK_SESSION_HANDLE s = LoggedInRw();
  CK_OBJECT_HANDLE rp, rv, ep, ev;
  GenRsa(s, 2048, "find-rsa", &rp, &rv);
  GenEc(s, kP256, "find-ec", &ep, &ev);
  CK_OBJECT_HANDLE aes = GenAes(s, 32, "find-aes");
  CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
  CK_ATTRIBUTE by_class{CKA_CLASS, &cls, sizeof(cls)};
  ASSERT_EQ(f->C_FindObjectsInit(s, &by_class, 1), CKR_OK);
  EXPECT_EQ(f->C_FindObjectsInit(s, &by_class, 1), CKR_OPERATION_ACTIVE);
  CK_OBJECT_HANDLE out[10];
  CK_ULONG n = 0;
  ASSERT_EQ(f->C_FindObjects(s, out, 10, &n), CKR_OK);
  EXPECT_EQ(n, 2u);
  ASSERT_EQ(f->C_FindObjects(s, out, 10, &n), CKR_OK);
  EXPECT_EQ(n, 0u);
  ASSERT_EQ(f->C_FindObjectsFinal(s), CKR_OK);
  EXPECT_EQ(f->C_FindObjectsFinal(s), CKR_OPERATION_NOT_INITIALIZED);
  EXPECT_EQ(f->C_FindObjects(s, out, 10, &n), CKR_OPERATION_NOT_INITIALIZED);
  // By CKA_ID: both halves of the RSA pair.
  auto id = GetAttr(s, rv, CKA_ID);
  CK_ATTRIBUTE by_id{CKA_ID, id.data(), id.size()};
  ASSERT_EQ(f->C_FindObjectsInit(s, &by_id, 1), CKR_OK);
  ASSERT_EQ(f->C_FindObjects(s, out, 10, &n), CKR_OK);
  EXPECT_EQ(n, 2u);
  ASSERT_EQ(f->C_FindObjectsFinal(s), CKR_OK);
  // Class + key type.
  CK_OBJECT_CLASS sk = CKO_SECRET_KEY;
  CK_KEY_TYPE kt = CKK_AES;
  CK_ATTRIBUTE two[] = {{CKA_CLASS, &sk, sizeof(sk)}, {CKA_KEY_TYPE, &kt, sizeof(kt)}};
  ASSERT_EQ(f->C_FindObjectsInit(s, two, 2), CKR_OK);
  ASSERT_EQ(f->C_FindObjects(s, out, 10, &n), CKR_OK);
  ASSERT_EQ(n, 1u);
  EXPECT_EQ(out[0], aes);
  ASSERT_EQ(f->C_FindObjectsFinal(s), CKR_OK);
  // Empty template: everything visible.
  ASSERT_EQ(f->C_FindObjectsInit(s, nullptr, 0), CKR_OK);
  ASSERT_EQ(f->C_FindObjects(s, out, 10, &n), CKR_OK);
  EXPECT_EQ(n, 5u);
  EXPECT_EQ(f->C_FindObjects(s, nullptr, 10, &n), CKR_ARGUMENTS_BAD);
  ASSERT_EQ(f->C_FindObjectsFinal(s), CKR_OK);
  // Without login, private objects are invisible.
  ASSERT_EQ(f->C_Logout(s), CKR_OK);
  ASSERT_EQ(f->C_FindObjectsInit(s, nullptr, 0), CKR_OK);
  ASSERT_EQ(f->C_FindObjects(s, out, 10, &n), CKR_OK);
  EXPECT_EQ(n, 2u);  // the two public keys
  ASSERT_EQ(f->C_FindObjectsFinal(s), CKR_OK);
}

TEST_F(ObjectTest, DestroyCopyAndSize) {
  CK_SESSION_HANDLE s = LoggedInRw();
  CK_OBJECT_HANDLE pub, priv;
  GenEc(s, kP256, "copy-src", &pub, &priv, false);
  CK_ULONG size = 0;
  ASSERT_EQ(f->C_GetObjectSize(s, priv, &size), CKR_OK);
  EXPECT_GT(size, 0u);
  EXPECT_EQ(f->C_GetObjectSize(s, priv, nullptr), CKR_ARGUMENTS_BAD);
  std::string label = "copy-dst";
  CK_ATTRIBUTE t{CKA_LABEL, label.data(), label.size()};
  CK_OBJECT_HANDLE copy;
  ASSERT_EQ(f->C_CopyObject(s, priv, &t, 1, &copy), CKR_OK);
  EXPECT_NE(copy, priv);
  EXPECT_EQ(GetAttr(s, copy, CKA_LABEL), Bytes("copy-dst"));
  EXPECT_EQ(GetAttr(s, copy, CKA_EC_POINT), GetAttr(s, priv, CKA_EC_POINT));
  CK_MECHANISM m{CKM_ECDSA_SHA256, nullptr, 0};
  auto data = Bytes("copied key signs");
  EXPECT_EQ(Verify(s, m, pub, data, Sign(s, m, copy, data)), CKR_OK);
  CK_KEY_TYPE kt = CKK_RSA;
  CK_ATTRIBUTE ro{CKA_KEY_TYPE, &kt, sizeof(kt)};
  EXPECT_EQ(f->C_CopyObject(s, priv, &ro, 1, &copy), CKR_ATTRIBUTE_READ_ONLY);
  ASSERT_EQ(f->C_DestroyObject(s, copy), CKR_OK);
  EXPECT_EQ(f->C_DestroyObject(s, copy), CKR_OBJECT_HANDLE_INVALID);
  CK_ATTRIBUTE a{CKA_LABEL, nullptr, 0};
  EXPECT_EQ(f->C_GetAttributeValue(s, copy, &a, 1), CKR_OBJECT_HANDLE_INVALID);
  // A non-destroyable object.
  CK_BBOOL no = CK_FALSE;
  CK_ATTRIBUTE nd{CKA_DESTROYABLE, &no, 1};
  ASSERT_EQ(f->C_CopyObject(s, priv, &nd, 1, &copy), CKR_OK);
  EXPECT_EQ(f->C_DestroyObject(s, copy), CKR_ACTION_PROHIBITED);
  // Read-only session cannot destroy token objects.
  CK_OBJECT_HANDLE tp, tv;
  GenEc(s, kP256, "token-obj", &tp, &tv);
  CK_SESSION_HANDLE ro_s = OpenRo();
  EXPECT_EQ(f->C_DestroyObject(ro_s, tv), CKR_SESSION_READ_ONLY);
  ASSERT_EQ(f->C_DestroyObject(s, tv), CKR_OK);
  EXPECT_TRUE(FindByLabel(s, "token-obj").size() == 1u);
}

TEST_F(ObjectTest, SessionObjectsVanishWithTheirSession) {
  CK_SESSION_HANDLE keep = LoggedInRw();
  CK_SESSION_HANDLE s = OpenRw();
  CK_OBJECT_HANDLE k = GenAes(s, 16, "session-aes", false);
  // Visible from the other session of this application.
  EXPECT_EQ(FindByLabel(keep, "session-aes"), std::vector<CK_OBJECT_HANDLE>{k});
  ASSERT_EQ(f->C_CloseSession(s), CKR_OK);
  EXPECT_TRUE(FindByLabel(keep, "session-aes").empty());
  // Logout destroys the application's private session objects.
  CK_OBJECT_HANDLE k2 = GenAes(keep, 16, "private-session", false);
  ASSERT_EQ(f->C_Logout(keep), CKR_OK);
  ASSERT_EQ(Login(keep), CKR_OK);
  EXPECT_TRUE(FindByLabel(keep, "private-session").empty());
  CK_ATTRIBUTE a2{CKA_LABEL, nullptr, 0};
  EXPECT_EQ(f->C_GetAttributeValue(keep, k2, &a2, 1), CKR_OBJECT_HANDLE_INVALID);
  CK_ATTRIBUTE a{CKA_LABEL, nullptr, 0};
  EXPECT_EQ(f->C_GetAttributeValue(keep, k, &a, 1), CKR_OBJECT_HANDLE_INVALID);
}

TEST_F(ObjectTest, HandlesAreStableForTheLifeOfAnInitialization) {
  CK_SESSION_HANDLE s = LoggedInRw();
  CK_OBJECT_HANDLE pub, priv;
  GenEc(s, kP256, "stable", &pub, &priv);
  for (int i = 0; i < 3; ++i) {
    CK_SESSION_HANDLE other = OpenRo();
    auto found = FindByLabel(other, "stable");
    ASSERT_EQ(found.size(), 2u);
    EXPECT_EQ(found[0], pub);
    EXPECT_EQ(found[1], priv);
    ASSERT_EQ(f->C_CloseSession(other), CKR_OK);
  }
}

TEST_F(ObjectTest, ImportRsaEcAndAesKeys) {
  CK_SESSION_HANDLE s = LoggedInRw();
  // Make an extractable, non-sensitive session key pair elsewhere? Import needs raw values: use
  // a generated RSA key's public half plus a fixed EC scalar and AES value.
  CK_OBJECT_HANDLE pub, priv;
  GenRsa(s, 2048, "rsa-src", &pub, &priv, false);
  auto n = GetAttr(s, pub, CKA_MODULUS);
  auto e = GetAttr(s, pub, CKA_PUBLIC_EXPONENT);
  CK_OBJECT_CLASS pc = CKO_PUBLIC_KEY;
  CK_KEY_TYPE rsa = CKK_RSA;
  CK_BBOOL t = CK_TRUE;
  CK_ATTRIBUTE pt[] = {{CKA_CLASS, &pc, sizeof(pc)}, {CKA_KEY_TYPE, &rsa, sizeof(rsa)}, {CKA_TOKEN, &t, 1},
                       {CKA_MODULUS, n.data(), n.size()}, {CKA_PUBLIC_EXPONENT, e.data(), e.size()}};
  CK_OBJECT_HANDLE imported;
  ASSERT_EQ(f->C_CreateObject(s, pt, 5, &imported), CKR_OK);
  CK_MECHANISM m{CKM_SHA256_RSA_PKCS, nullptr, 0};
  auto data = Bytes("imported public key verifies");
  EXPECT_EQ(Verify(s, m, imported, data, Sign(s, m, priv, data)), CKR_OK);
  EXPECT_FALSE(GetBool(s, imported, CKA_LOCAL));
  // EC private key from a scalar (P-256, d = 1..): derive its public point and sign/verify.
  std::vector<uint8_t> d(32, 0);
  d[31] = 7;
  d[0] = 0x11;
  CK_OBJECT_CLASS vc = CKO_PRIVATE_KEY;
  CK_KEY_TYPE ec = CKK_EC;
  CK_ATTRIBUTE et[] = {{CKA_CLASS, &vc, sizeof(vc)}, {CKA_KEY_TYPE, &ec, sizeof(ec)},
                       {CKA_EC_PARAMS, const_cast<uint8_t*>(kP256.data()), kP256.size()}, {CKA_VALUE, d.data(), d.size()},
                       {CKA_SIGN, &t, 1}};
  CK_OBJECT_HANDLE ec_priv;
  ASSERT_EQ(f->C_CreateObject(s, et, 5, &ec_priv), CKR_OK);
  EXPECT_TRUE(GetBool(s, ec_priv, CKA_SENSITIVE));
  EXPECT_FALSE(GetBool(s, ec_priv, CKA_ALWAYS_SENSITIVE));
  auto point = GetAttr(s, ec_priv, CKA_EC_POINT);
  CK_ATTRIBUTE ept[] = {{CKA_CLASS, &pc, sizeof(pc)}, {CKA_KEY_TYPE, &ec, sizeof(ec)},
                        {CKA_EC_PARAMS, const_cast<uint8_t*>(kP256.data()), kP256.size()},
                        {CKA_EC_POINT, point.data(), point.size()}};
  CK_OBJECT_HANDLE ec_pub;
  ASSERT_EQ(f->C_CreateObject(s, ept, 4, &ec_pub), CKR_OK);
  CK_MECHANISM em{CKM_ECDSA_SHA256, nullptr, 0};
  EXPECT_EQ(Verify(s, em, ec_pub, data, Sign(s, em, ec_priv, data)), CKR_OK);
  // AES import.
  std::vector<uint8_t> key(24, 0x33);
  CK_OBJECT_CLASS sc = CKO_SECRET_KEY;
  CK_KEY_TYPE aes = CKK_AES;
  CK_ATTRIBUTE at[] = {{CKA_CLASS, &sc, sizeof(sc)}, {CKA_KEY_TYPE, &aes, sizeof(aes)}, {CKA_VALUE, key.data(), key.size()}};
  CK_OBJECT_HANDLE ak;
  ASSERT_EQ(f->C_CreateObject(s, at, 3, &ak), CKR_OK);
  EXPECT_EQ(Ulong(GetAttr(s, ak, CKA_VALUE_LEN)), 24u);
  // Errors: missing class, bad AES length, inconsistent attributes.
  CK_OBJECT_HANDLE h;
  EXPECT_EQ(f->C_CreateObject(s, at + 1, 2, &h), CKR_TEMPLATE_INCOMPLETE);
  CK_ATTRIBUTE bad_len[] = {{CKA_CLASS, &sc, sizeof(sc)}, {CKA_KEY_TYPE, &aes, sizeof(aes)}, {CKA_VALUE, key.data(), 5}};
  EXPECT_EQ(f->C_CreateObject(s, bad_len, 3, &h), CKR_KEY_SIZE_RANGE);
  CK_ATTRIBUTE no_mod[] = {{CKA_CLASS, &pc, sizeof(pc)}, {CKA_KEY_TYPE, &rsa, sizeof(rsa)}};
  EXPECT_EQ(f->C_CreateObject(s, no_mod, 2, &h), CKR_TEMPLATE_INCOMPLETE);
  CK_ATTRIBUTE garbage_point[] = {{CKA_CLASS, &pc, sizeof(pc)}, {CKA_KEY_TYPE, &ec, sizeof(ec)},
                                  {CKA_EC_PARAMS, const_cast<uint8_t*>(kP256.data()), kP256.size()},
                                  {CKA_EC_POINT, d.data(), d.size()}};
  EXPECT_EQ(f->C_CreateObject(s, garbage_point, 4, &h), CKR_ATTRIBUTE_VALUE_INVALID);
  EXPECT_EQ(f->C_CreateObject(s, nullptr, 2, &h), CKR_ARGUMENTS_BAD);
  EXPECT_EQ(f->C_CreateObject(s, at, 3, nullptr), CKR_ARGUMENTS_BAD);
}

TEST_F(ObjectTest, DataObjectsCreateReadDestroy) {
  CK_SESSION_HANDLE s = LoggedInRw();
  CK_OBJECT_CLASS dc = CKO_DATA;
  CK_BBOOL t = CK_TRUE;
  std::string label = "db-password", app = "vaultp11-test", value = "s3cr3t value";
  CK_ATTRIBUTE dt[] = {{CKA_CLASS, &dc, sizeof(dc)}, {CKA_TOKEN, &t, 1}, {CKA_PRIVATE, &t, 1},
                       {CKA_LABEL, label.data(), label.size()}, {CKA_APPLICATION, app.data(), app.size()},
                       {CKA_VALUE, value.data(), value.size()}};
  CK_OBJECT_HANDLE h;
  ASSERT_EQ(f->C_CreateObject(s, dt, 6, &h), CKR_OK);
  EXPECT_EQ(GetAttr(s, h, CKA_VALUE), Bytes(value));
  EXPECT_EQ(GetAttr(s, h, CKA_APPLICATION), Bytes(app));
  ASSERT_EQ(f->C_Finalize(nullptr), CKR_OK);
  initialized = false;
  ASSERT_EQ(InitWith(config_path), CKR_OK);
  s = OpenRw();
  EXPECT_TRUE(FindByLabel(s, label).empty());  // private: needs a login
  ASSERT_EQ(Login(s), CKR_OK);
  auto found = FindByLabel(s, label);
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(GetAttr(s, found[0], CKA_VALUE), Bytes(value));
  ASSERT_EQ(f->C_DestroyObject(s, found[0]), CKR_OK);
  EXPECT_TRUE(FindByLabel(s, label).empty());
}

}  // namespace
}  // namespace vaultp11::testing

#include "model/object.h"

#include <gtest/gtest.h>

#include <cstring>

#include "matchers.h"

namespace vaultp11::model {
namespace {

const Bytes kP256 = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};

AttributeMap Tmpl(std::initializer_list<std::pair<CK_ATTRIBUTE_TYPE, Bytes>> l) {
  AttributeMap m;
  for (const auto& [t, v] : l) m.Set(t, v);
  return m;
}

Bytes Ul(CK_ULONG v) {
  Bytes b(sizeof(v));
  std::memcpy(b.data(), &v, sizeof(v));
  return b;
}

TEST(ObjectTest, GeneratedEcPairMirrorsPublicAttributes) {
  AttributeMap pub = Tmpl({{CKA_EC_PARAMS, kP256}, {CKA_LABEL, Bytes{'k'}}, {CKA_ID, Bytes{1, 2}}});
  AttributeMap priv;
  ASSERT_OK_AND_ASSIGN(KeyPair kp, GenerateKeyPair(CKM_EC_KEY_PAIR_GEN, pub, priv));
  EXPECT_EQ(kp.private_key->cls(), static_cast<CK_OBJECT_CLASS>(CKO_PRIVATE_KEY));
  EXPECT_EQ(kp.public_key->cls(), static_cast<CK_OBJECT_CLASS>(CKO_PUBLIC_KEY));
  EXPECT_EQ(*kp.private_key->attrs.Get(CKA_EC_POINT), *kp.public_key->attrs.Get(CKA_EC_POINT));
  EXPECT_EQ(*kp.private_key->attrs.Get(CKA_ID), (Bytes{1, 2}));
  EXPECT_EQ(kp.private_key->label(), "k");
  EXPECT_TRUE(kp.private_key->attrs.GetBool(CKA_SENSITIVE));
  EXPECT_TRUE(kp.private_key->attrs.GetBool(CKA_NEVER_EXTRACTABLE));
  EXPECT_TRUE(kp.private_key->is_private());
  EXPECT_FALSE(kp.public_key->is_private());
  // The secret is PKCS#8 and never an attribute.
  EXPECT_FALSE(kp.private_key->attrs.Has(CKA_VALUE));
  ASSERT_OK_AND_ASSIGN(SecureBytes der, SecretForStore(*kp.private_key));
  EXPECT_GT(der.size(), 32u);
  ASSERT_OK_AND_ASSIGN(SecureBytes none, SecretForStore(*kp.public_key));
  EXPECT_TRUE(none.empty());
}

TEST(ObjectTest, ReadAttributeHidesKeyMaterial) {
  AttributeMap t = Tmpl({{CKA_VALUE_LEN, Ul(16)}});
  ASSERT_OK_AND_ASSIGN(auto key, GenerateSecretKey(CKM_AES_KEY_GEN, t));
  EXPECT_THAT(ReadAttribute(*key, CKA_VALUE, true), RvIs(CKR_ATTRIBUTE_SENSITIVE));
  EXPECT_THAT(ReadAttribute(*key, CKA_MODULUS, true), RvIs(CKR_ATTRIBUTE_TYPE_INVALID));
  ASSERT_OK_AND_ASSIGN(SecureBytes len, ReadAttribute(*key, CKA_VALUE_LEN, true));
  EXPECT_EQ(len.size(), sizeof(CK_ULONG));
}

TEST(ObjectTest, DataObjectValueNeedsPermission) {
  AttributeMap t = Tmpl({{CKA_CLASS, Ul(CKO_DATA)}, {CKA_VALUE, Bytes{'x', 'y'}}});
  ASSERT_OK_AND_ASSIGN(auto obj, CreateObject(t));
  EXPECT_THAT(ReadAttribute(*obj, CKA_VALUE, false), RvIs(CKR_ATTRIBUTE_SENSITIVE));
  ASSERT_OK_AND_ASSIGN(SecureBytes v, ReadAttribute(*obj, CKA_VALUE, true));
  EXPECT_EQ(v, (SecureBytes{'x', 'y'}));
  EXPECT_FALSE(obj->attrs.Has(CKA_VALUE));
}

TEST(ObjectTest, ModifyFollowsTheOneWayRules) {
  AttributeMap t = Tmpl({{CKA_VALUE_LEN, Ul(32)}, {CKA_EXTRACTABLE, Bytes{CK_TRUE}}, {CKA_SENSITIVE, Bytes{CK_FALSE}}});
  ASSERT_OK_AND_ASSIGN(auto key, GenerateSecretKey(CKM_AES_KEY_GEN, t));
  ASSERT_OK_AND_ASSIGN(auto sens, ModifyObject(*key, Tmpl({{CKA_SENSITIVE, Bytes{CK_TRUE}}})));
  EXPECT_THAT(ModifyObject(*sens, Tmpl({{CKA_SENSITIVE, Bytes{CK_FALSE}}})), RvIs(CKR_ATTRIBUTE_READ_ONLY));
  ASSERT_OK_AND_ASSIGN(auto unext, ModifyObject(*key, Tmpl({{CKA_EXTRACTABLE, Bytes{CK_FALSE}}})));
  EXPECT_THAT(ModifyObject(*unext, Tmpl({{CKA_EXTRACTABLE, Bytes{CK_TRUE}}})), RvIs(CKR_ATTRIBUTE_READ_ONLY));
  EXPECT_THAT(ModifyObject(*key, Tmpl({{CKA_VALUE_LEN, Ul(16)}})), RvIs(CKR_ATTRIBUTE_READ_ONLY));
  EXPECT_THAT(ModifyObject(*key, Tmpl({{CKA_MODULUS, Bytes{1}}})), RvIs(CKR_ATTRIBUTE_TYPE_INVALID));
  // The material is shared by the modified copy.
  EXPECT_EQ(sens->material, key->material);
}

TEST(ObjectTest, MatchesComparesEveryTemplateAttribute) {
  AttributeMap t = Tmpl({{CKA_VALUE_LEN, Ul(16)}, {CKA_LABEL, Bytes{'a'}}});
  ASSERT_OK_AND_ASSIGN(auto key, GenerateSecretKey(CKM_AES_KEY_GEN, t));
  EXPECT_TRUE(Matches(*key, Tmpl({{CKA_LABEL, Bytes{'a'}}})));
  EXPECT_TRUE(Matches(*key, Tmpl({{CKA_LABEL, Bytes{'a'}}, {CKA_CLASS, Ul(CKO_SECRET_KEY)}})));
  EXPECT_FALSE(Matches(*key, Tmpl({{CKA_LABEL, Bytes{'a'}}, {CKA_CLASS, Ul(CKO_PRIVATE_KEY)}})));
  EXPECT_FALSE(Matches(*key, Tmpl({{CKA_MODULUS, Bytes{1}}})));
  EXPECT_TRUE(Matches(*key, AttributeMap()));
}

TEST(ObjectTest, CopyRefusesUncopyableObjects) {
  AttributeMap t = Tmpl({{CKA_VALUE_LEN, Ul(16)}, {CKA_COPYABLE, Bytes{CK_FALSE}}});
  ASSERT_OK_AND_ASSIGN(auto key, GenerateSecretKey(CKM_AES_KEY_GEN, t));
  EXPECT_THAT(CopyObject(*key, AttributeMap()), RvIs(CKR_ACTION_PROHIBITED));
}

}  // namespace
}  // namespace vaultp11::model

#include "model/attributes.h"

#include <gtest/gtest.h>

#include "matchers.h"

namespace vaultp11::model {
namespace {

TEST(AttributeMapTest, SerializeRoundTripsEveryValue) {
  AttributeMap m;
  m.SetUlong(CKA_CLASS, CKO_PRIVATE_KEY);
  m.SetBool(CKA_SIGN, true);
  m.SetString(CKA_LABEL, "key-1");
  m.Set(CKA_ID, Bytes{});
  m.Set(CKA_MODULUS, Bytes(300, 0xab));
  ASSERT_OK_AND_ASSIGN(AttributeMap back, AttributeMap::Deserialize(m.Serialize()));
  EXPECT_EQ(back.values(), m.values());
  EXPECT_EQ(back.GetUlong(CKA_CLASS), CKO_PRIVATE_KEY);
  EXPECT_TRUE(back.GetBool(CKA_SIGN));
  EXPECT_EQ(back.GetString(CKA_LABEL), "key-1");
  EXPECT_TRUE(back.Has(CKA_ID));
}

TEST(AttributeMapTest, DeserializeRejectsTruncatedData) {
  AttributeMap m;
  m.SetString(CKA_LABEL, "abcdef");
  Bytes b = m.Serialize();
  for (size_t cut = 1; cut < b.size(); ++cut) {
    Bytes t(b.begin(), b.begin() + cut);
    EXPECT_THAT(AttributeMap::Deserialize(t), RvIs(CKR_DEVICE_ERROR)) << cut;
  }
}

TEST(AttributeMapTest, GettersReturnDefaultsForMissingOrMalformedValues) {
  AttributeMap m;
  EXPECT_FALSE(m.GetBool(CKA_SIGN));
  EXPECT_TRUE(m.GetBool(CKA_SIGN, true));
  EXPECT_FALSE(m.GetUlong(CKA_CLASS).has_value());
  m.Set(CKA_CLASS, Bytes{1, 2});  // wrong size
  EXPECT_FALSE(m.GetUlong(CKA_CLASS).has_value());
}

TEST(ParseTemplateTest, ChecksValueSizes) {
  CK_BBOOL b = CK_TRUE;
  CK_ULONG u = 5;
  CK_BYTE date[8] = {'2', '0', '2', '6', '0', '1', '0', '1'};
  CK_ATTRIBUTE ok[] = {{CKA_SIGN, &b, 1}, {CKA_VALUE_LEN, &u, sizeof(u)}, {CKA_START_DATE, date, 8},
                       {CKA_END_DATE, nullptr, 0}, {CKA_LABEL, nullptr, 0}};
  ASSERT_OK_AND_ASSIGN(AttributeMap m, ParseTemplate(ok, 5));
  EXPECT_TRUE(m.GetBool(CKA_SIGN));
  EXPECT_EQ(m.GetUlong(CKA_VALUE_LEN), 5u);
  CK_ATTRIBUTE bad_bool{CKA_SIGN, &u, sizeof(u)};
  EXPECT_THAT(ParseTemplate(&bad_bool, 1), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  CK_ATTRIBUTE bad_ulong{CKA_VALUE_LEN, &b, 1};
  EXPECT_THAT(ParseTemplate(&bad_ulong, 1), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  CK_ATTRIBUTE bad_date{CKA_START_DATE, date, 7};
  EXPECT_THAT(ParseTemplate(&bad_date, 1), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  CK_BYTE letters[8] = {'y', 'y', 'y', 'y', 'm', 'm', 'd', 'd'};
  CK_ATTRIBUTE bad_digits{CKA_START_DATE, letters, 8};
  EXPECT_THAT(ParseTemplate(&bad_digits, 1), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  CK_ATTRIBUTE null_value{CKA_LABEL, nullptr, 4};
  EXPECT_THAT(ParseTemplate(&null_value, 1), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  CK_ATTRIBUTE huge{CKA_LABEL, &b, ~0UL};
  EXPECT_THAT(ParseTemplate(&huge, 1), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  CK_ATTRIBUTE mechs{CKA_ALLOWED_MECHANISMS, &b, 1};
  EXPECT_THAT(ParseTemplate(&mechs, 1), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  EXPECT_THAT(ParseTemplate(nullptr, 2), RvIs(CKR_ARGUMENTS_BAD));
}

TEST(ParseTemplateTest, SameTypeTwiceMustAgree) {
  CK_BBOOL t = CK_TRUE, f = CK_FALSE;
  CK_ATTRIBUTE same[] = {{CKA_SIGN, &t, 1}, {CKA_SIGN, &t, 1}};
  EXPECT_OK(ParseTemplate(same, 2));
  CK_ATTRIBUTE differ[] = {{CKA_SIGN, &t, 1}, {CKA_SIGN, &f, 1}};
  EXPECT_THAT(ParseTemplate(differ, 2), RvIs(CKR_TEMPLATE_INCONSISTENT));
}

}  // namespace
}  // namespace vaultp11::model

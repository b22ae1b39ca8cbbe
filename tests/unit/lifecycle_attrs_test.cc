// Life-cycle attributes of keys and secrets (vaultp11.h, src/model/lifecycle.h): template
// parsing, CK_DATE <-> seconds consistency, tags validation, the rule of a key use.
#include "model/lifecycle.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "matchers.h"
#include "model/object.h"

namespace vaultp11::model {
namespace {

using ::testing::HasSubstr;

constexpr CK_ULONG k2026 = 1767225600;         // 2026-01-01T00:00:00Z
constexpr CK_ULONG kMidMarch = 1773578096;     // 2026-03-15T12:34:56Z
const Bytes kP256 = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};

Bytes Ul(CK_ULONG v) {
  Bytes b(sizeof(v));
  std::memcpy(b.data(), &v, sizeof(v));
  return b;
}
Bytes Str(const std::string& s) { return Bytes(s.begin(), s.end()); }
std::string AsString(const Bytes& b) { return std::string(b.begin(), b.end()); }

AttributeMap Tmpl(std::initializer_list<std::pair<CK_ATTRIBUTE_TYPE, Bytes>> l) {
  AttributeMap m;
  for (const auto& [t, v] : l) m.Set(t, v);
  return m;
}

// An AES key made from `extra` (C_GenerateKey's path).
Result<std::shared_ptr<Object>> Aes(std::initializer_list<std::pair<CK_ATTRIBUTE_TYPE, Bytes>> extra) {
  AttributeMap t = Tmpl(extra);
  t.Set(CKA_VALUE_LEN, Ul(16));
  t.Set(CKA_LABEL, Str("k"));
  return GenerateSecretKey(CKM_AES_KEY_GEN, t);
}

std::string Date(const Object& o, CK_ATTRIBUTE_TYPE t) { return AsString(*o.attrs.Get(t)); }
CK_ULONG Secs(const Object& o, CK_ATTRIBUTE_TYPE t) { return o.attrs.GetUlong(t).value_or(12345); }

// ---- template parsing ------------------------------------------------------------------------

TEST(LifecycleAttrsTest, ParseTemplateChecksTheVendorSizes) {
  CK_BBOOL no = CK_FALSE;
  CK_ULONG secs = k2026;
  CK_ATTRIBUTE ok[] = {{CKA_VAULTP11_ENABLED, &no, 1}, {CKA_VAULTP11_NOT_BEFORE, &secs, sizeof(secs)},
                       {CKA_VAULTP11_EXPIRES, &secs, sizeof(secs)}, {CKA_VAULTP11_TAGS, nullptr, 0}};
  ASSERT_OK_AND_ASSIGN(AttributeMap m, ParseTemplate(ok, 4));
  EXPECT_FALSE(m.GetBool(CKA_VAULTP11_ENABLED, true));
  EXPECT_EQ(m.GetUlong(CKA_VAULTP11_EXPIRES), k2026);
  uint32_t four = 1;
  CK_ATTRIBUTE short_secs{CKA_VAULTP11_NOT_BEFORE, &four, sizeof(four)};
  EXPECT_THAT(ParseTemplate(&short_secs, 1), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  CK_ULONG wide = 1;
  CK_ATTRIBUTE wide_bool{CKA_VAULTP11_ENABLED, &wide, sizeof(wide)};
  EXPECT_THAT(ParseTemplate(&wide_bool, 1), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  EXPECT_EQ(AttrName(CKA_VAULTP11_TAGS), "CKA_VAULTP11_TAGS");
}

// ---- dates and seconds -------------------------------------------------------------------------

TEST(LifecycleAttrsTest, DatesAreCalendarDays) {
  ASSERT_OK_AND_ASSIGN(auto d, ParseDate(Str("20260101"), CKA_START_DATE));
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(*d * kSecondsPerDay, static_cast<int64_t>(k2026));
  EXPECT_EQ(AsString(DateOfDay(*d)), "20260101");
  ASSERT_OK_AND_ASSIGN(auto leap, ParseDate(Str("20240229"), CKA_END_DATE));
  EXPECT_EQ(leap, 19782);
  ASSERT_OK_AND_ASSIGN(auto empty, ParseDate(Bytes{}, CKA_END_DATE));
  EXPECT_FALSE(empty.has_value());
  ASSERT_OK_AND_ASSIGN(auto zeros, ParseDate(Str("00000000"), CKA_END_DATE));
  EXPECT_FALSE(zeros.has_value());
  for (const char* bad : {"20230229", "20261301", "20260431", "20260100", "19691231", "2026010", "2026o101"})
    EXPECT_THAT(ParseDate(Str(bad), CKA_START_DATE), RvIs(CKR_ATTRIBUTE_VALUE_INVALID)) << bad;
  EXPECT_EQ(FormatUnixTime(0), "1970-01-01T00:00:00Z");
  EXPECT_EQ(FormatUnixTime(kMidMarch), "2026-03-15T12:34:56Z");
  EXPECT_EQ(FormatUnixTime(kMaxUnixTime), "9999-12-31T23:59:59Z");
  EXPECT_EQ(AsString(DateOfDay(kMaxUnixTime / kSecondsPerDay)), "99991231");
}

TEST(LifecycleAttrsTest, NewKeyDefaults) {
  ASSERT_OK_AND_ASSIGN(auto key, Aes({}));
  EXPECT_TRUE(key->attrs.GetBool(CKA_VAULTP11_ENABLED));
  EXPECT_EQ(Secs(*key, CKA_VAULTP11_NOT_BEFORE), 0u);
  EXPECT_EQ(Secs(*key, CKA_VAULTP11_EXPIRES), 0u);
  EXPECT_EQ(Date(*key, CKA_START_DATE), "");
  EXPECT_EQ(Date(*key, CKA_END_DATE), "");
  EXPECT_EQ(AsString(*key->attrs.Get(CKA_VAULTP11_TAGS)), "{}");
}

TEST(LifecycleAttrsTest, SecondsSetTheDates) {
  ASSERT_OK_AND_ASSIGN(auto key, Aes({{CKA_VAULTP11_NOT_BEFORE, Ul(k2026 - 1)}, {CKA_VAULTP11_EXPIRES, Ul(kMidMarch)}}));
  EXPECT_EQ(Secs(*key, CKA_VAULTP11_NOT_BEFORE), k2026 - 1);
  EXPECT_EQ(Date(*key, CKA_START_DATE), "20251231");
  EXPECT_EQ(Secs(*key, CKA_VAULTP11_EXPIRES), kMidMarch);
  EXPECT_EQ(Date(*key, CKA_END_DATE), "20260315");
}

TEST(LifecycleAttrsTest, DatesSetTheSeconds) {
  // A start date is its day's first second, an end date its day's last.
  ASSERT_OK_AND_ASSIGN(auto key, Aes({{CKA_START_DATE, Str("20260101")}, {CKA_END_DATE, Str("20260315")}}));
  EXPECT_EQ(Secs(*key, CKA_VAULTP11_NOT_BEFORE), k2026);
  EXPECT_EQ(Secs(*key, CKA_VAULTP11_EXPIRES), 1773619199u);  // 2026-03-15T23:59:59Z
  // An empty date, "00000000" and a start of 1970-01-01 are "not set".
  ASSERT_OK_AND_ASSIGN(auto none, Aes({{CKA_START_DATE, Str("19700101")}, {CKA_END_DATE, Str("00000000")}}));
  EXPECT_EQ(Secs(*none, CKA_VAULTP11_NOT_BEFORE), 0u);
  EXPECT_EQ(Date(*none, CKA_START_DATE), "");
  EXPECT_EQ(Secs(*none, CKA_VAULTP11_EXPIRES), 0u);
  EXPECT_EQ(Date(*none, CKA_END_DATE), "");
  // The last day a CK_DATE can name.
  ASSERT_OK_AND_ASSIGN(auto last, Aes({{CKA_END_DATE, Str("99991231")}}));
  EXPECT_EQ(Secs(*last, CKA_VAULTP11_EXPIRES), kMaxUnixTime);
}

TEST(LifecycleAttrsTest, BothFormsMustAgree) {
  // Same day: the exact second wins.
  ASSERT_OK_AND_ASSIGN(auto key, Aes({{CKA_START_DATE, Str("20260315")}, {CKA_VAULTP11_NOT_BEFORE, Ul(kMidMarch)},
                                      {CKA_END_DATE, Str("20260315")}, {CKA_VAULTP11_EXPIRES, Ul(kMidMarch + 60)}}));
  EXPECT_EQ(Secs(*key, CKA_VAULTP11_NOT_BEFORE), kMidMarch);
  EXPECT_EQ(Secs(*key, CKA_VAULTP11_EXPIRES), kMidMarch + 60);
  // Both cleared agrees too.
  EXPECT_OK(Aes({{CKA_END_DATE, Bytes{}}, {CKA_VAULTP11_EXPIRES, Ul(0)}}).status());
  // Another day, or one form set and the other cleared: inconsistent.
  EXPECT_THAT(Aes({{CKA_START_DATE, Str("20260316")}, {CKA_VAULTP11_NOT_BEFORE, Ul(kMidMarch)}}),
              RvIs(CKR_TEMPLATE_INCONSISTENT));
  EXPECT_THAT(Aes({{CKA_END_DATE, Bytes{}}, {CKA_VAULTP11_EXPIRES, Ul(kMidMarch)}}), RvIs(CKR_TEMPLATE_INCONSISTENT));
  EXPECT_THAT(Aes({{CKA_END_DATE, Str("20260315")}, {CKA_VAULTP11_EXPIRES, Ul(0)}}), RvIs(CKR_TEMPLATE_INCONSISTENT));
}

TEST(LifecycleAttrsTest, BadWindowsAreRefused) {
  EXPECT_THAT(Aes({{CKA_VAULTP11_NOT_BEFORE, Ul(kMidMarch)}, {CKA_VAULTP11_EXPIRES, Ul(k2026)}}),
              RvIs(CKR_TEMPLATE_INCONSISTENT));
  EXPECT_THAT(Aes({{CKA_START_DATE, Str("20260316")}, {CKA_END_DATE, Str("20260315")}}),
              RvIs(CKR_TEMPLATE_INCONSISTENT));
  // A one-day window (same start and end date) is fine.
  EXPECT_OK(Aes({{CKA_START_DATE, Str("20260315")}, {CKA_END_DATE, Str("20260315")}}).status());
  EXPECT_THAT(Aes({{CKA_VAULTP11_EXPIRES, Ul(kMaxUnixTime + 1)}}), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  EXPECT_THAT(Aes({{CKA_END_DATE, Str("20261399")}}), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  EXPECT_THAT(Aes({{CKA_VAULTP11_EXPIRES, Bytes{1, 2, 3}}}), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  EXPECT_THAT(Aes({{CKA_VAULTP11_ENABLED, Bytes{1, 1}}}), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
}

TEST(LifecycleAttrsTest, ModifyKeepsBothFormsInStep) {
  ASSERT_OK_AND_ASSIGN(auto key, Aes({{CKA_VAULTP11_NOT_BEFORE, Ul(kMidMarch)}}));
  // Writing back the same start date keeps the exact second.
  ASSERT_OK_AND_ASSIGN(auto same, ModifyObject(*key, Tmpl({{CKA_START_DATE, Str("20260315")}})));
  EXPECT_EQ(Secs(*same, CKA_VAULTP11_NOT_BEFORE), kMidMarch);
  // Another day starts at its 00:00:00Z.
  ASSERT_OK_AND_ASSIGN(auto moved, ModifyObject(*key, Tmpl({{CKA_START_DATE, Str("20260101")}})));
  EXPECT_EQ(Secs(*moved, CKA_VAULTP11_NOT_BEFORE), k2026);
  // Seconds move the date.
  ASSERT_OK_AND_ASSIGN(auto secs, ModifyObject(*moved, Tmpl({{CKA_VAULTP11_NOT_BEFORE, Ul(k2026 - 1)}})));
  EXPECT_EQ(Date(*secs, CKA_START_DATE), "20251231");
  // Clearing either form clears both.
  ASSERT_OK_AND_ASSIGN(auto cleared, ModifyObject(*secs, Tmpl({{CKA_START_DATE, Bytes{}}})));
  EXPECT_EQ(Secs(*cleared, CKA_VAULTP11_NOT_BEFORE), 0u);
  ASSERT_OK_AND_ASSIGN(auto exp, ModifyObject(*cleared, Tmpl({{CKA_END_DATE, Str("20260315")}})));
  EXPECT_EQ(Secs(*exp, CKA_VAULTP11_EXPIRES), 1773619199u);
  ASSERT_OK_AND_ASSIGN(auto exp0, ModifyObject(*exp, Tmpl({{CKA_VAULTP11_EXPIRES, Ul(0)}})));
  EXPECT_EQ(Date(*exp0, CKA_END_DATE), "");
  // The other attributes are untouched; the material is shared.
  EXPECT_EQ(exp0->label(), "k");
  EXPECT_EQ(exp0->material, key->material);
  // An expiry before the stored start, or inconsistent forms, change nothing.
  EXPECT_THAT(ModifyObject(*key, Tmpl({{CKA_VAULTP11_EXPIRES, Ul(k2026)}})), RvIs(CKR_TEMPLATE_INCONSISTENT));
  EXPECT_THAT(ModifyObject(*key, Tmpl({{CKA_END_DATE, Str("20260314")}})), RvIs(CKR_TEMPLATE_INCONSISTENT));
  EXPECT_THAT(ModifyObject(*key, Tmpl({{CKA_START_DATE, Str("20260101")}, {CKA_VAULTP11_NOT_BEFORE, Ul(kMidMarch)}})),
              RvIs(CKR_TEMPLATE_INCONSISTENT));
  // Enabled flips both ways.
  ASSERT_OK_AND_ASSIGN(auto off, ModifyObject(*key, Tmpl({{CKA_VAULTP11_ENABLED, Bytes{CK_FALSE}}})));
  EXPECT_FALSE(off->attrs.GetBool(CKA_VAULTP11_ENABLED, true));
  EXPECT_EQ(Secs(*off, CKA_VAULTP11_NOT_BEFORE), kMidMarch);
  ASSERT_OK_AND_ASSIGN(auto on, ModifyObject(*off, Tmpl({{CKA_VAULTP11_ENABLED, Bytes{CK_TRUE}}})));
  EXPECT_TRUE(on->attrs.GetBool(CKA_VAULTP11_ENABLED, false));
  // CKA_MODIFIABLE false freezes them too.
  ASSERT_OK_AND_ASSIGN(auto frozen, Aes({{CKA_MODIFIABLE, Bytes{CK_FALSE}}}));
  EXPECT_THAT(ModifyObject(*frozen, Tmpl({{CKA_VAULTP11_ENABLED, Bytes{CK_FALSE}}})), RvIs(CKR_ACTION_PROHIBITED));
}

// ---- tags ----------------------------------------------------------------------------------

TEST(LifecycleAttrsTest, TagsAreStoredCanonical) {
  ASSERT_OK_AND_ASSIGN(Bytes t, CanonicalTags(Str(R"( { "z" : "1", "a":"",  "caf\u00e9":"\u00fcber" } )")));
  EXPECT_EQ(AsString(t), "{\"a\":\"\",\"caf\xc3\xa9\":\"\xc3\xbc" "ber\",\"z\":\"1\"}");
  ASSERT_OK_AND_ASSIGN(Bytes empty, CanonicalTags(Bytes{}));
  EXPECT_EQ(AsString(empty), "{}");
  ASSERT_OK_AND_ASSIGN(auto key, Aes({{CKA_VAULTP11_TAGS, Str(R"({"env": "prod"})")}}));
  EXPECT_EQ(AsString(*key->attrs.Get(CKA_VAULTP11_TAGS)), R"({"env":"prod"})");
  // A search template matches whatever its spacing and order.
  EXPECT_TRUE(Matches(*key, Tmpl({{CKA_VAULTP11_TAGS, Str(R"({ "env" : "prod" })")}})));
  EXPECT_FALSE(Matches(*key, Tmpl({{CKA_VAULTP11_TAGS, Str(R"({"env":"dev"})")}})));
  EXPECT_FALSE(Matches(*key, Tmpl({{CKA_VAULTP11_TAGS, Str("not json")}})));
  ASSERT_OK_AND_ASSIGN(auto cleared, ModifyObject(*key, Tmpl({{CKA_VAULTP11_TAGS, Bytes{}}})));
  EXPECT_EQ(AsString(*cleared->attrs.Get(CKA_VAULTP11_TAGS)), "{}");
}

std::string TagsJson(int count, size_t name_chars = 1, size_t value_chars = 1, const std::string& unit = "x") {
  std::string out = "{";
  for (int i = 0; i < count; ++i) {
    std::string name;
    for (size_t c = 1; c < name_chars; ++c) name += unit;
    name += static_cast<char>('a' + i);  // unique
    std::string value;
    for (size_t c = 0; c < value_chars; ++c) value += unit;
    out += (i ? "," : "") + ("\"" + name + "\":\"" + value + "\"");
  }
  return out + "}";
}

TEST(LifecycleAttrsTest, TagLimits) {
  EXPECT_OK(CanonicalTags(Str(TagsJson(15))).status());
  EXPECT_THAT(CanonicalTags(Str(TagsJson(16))), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  EXPECT_OK(CanonicalTags(Str(TagsJson(1, 256, 256))).status());
  EXPECT_THAT(CanonicalTags(Str(TagsJson(1, 257, 1))), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  EXPECT_THAT(CanonicalTags(Str(TagsJson(1, 1, 257))), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  // Characters, not bytes: 256 two-byte and four-byte characters fit.
  EXPECT_OK(CanonicalTags(Str(TagsJson(1, 256, 256, "\xc3\xa9"))).status());
  EXPECT_OK(CanonicalTags(Str(TagsJson(1, 256, 256, "\xf0\x9f\x94\x91"))).status());
  EXPECT_THAT(CanonicalTags(Str(TagsJson(1, 1, 257, "\xc3\xa9"))), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  // An escaped character counts once.
  std::string escaped = "{\"k\":\"";
  for (int i = 0; i < 256; ++i) escaped += "\\u00e9";
  EXPECT_OK(CanonicalTags(Str(escaped + "\"}")).status());
  EXPECT_THAT(CanonicalTags(Str(escaped + "\\u00e9\"}")), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
}

TEST(LifecycleAttrsTest, TagShapes) {
  for (const char* bad : {
           R"(["a","b"])",               // not an object
           R"("text")",                  // not an object
           R"({"a":1})",                 // a number
           R"({"a":true})",              // a bool
           R"({"a":null})",              // null
           R"({"a":{"b":"c"}})",         // nested object
           R"({"a":["b"]})",             // array value
           R"({"a":"1","a":"2"})",       // duplicate name
           R"({"":"v"})",                // empty name
           R"({"a":"1"} trailing)",      // not one JSON value
           R"({"a":"1")",                // truncated
           "{\"a\":\"\xff\"}",           // invalid UTF-8
           R"({"a":"\ud800"})",          // lone surrogate
       })
    EXPECT_THAT(CanonicalTags(Str(bad)), RvIs(CKR_ATTRIBUTE_VALUE_INVALID)) << bad;
  EXPECT_THAT(Aes({{CKA_VAULTP11_TAGS, Str("[]")}}), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  // Deep nesting is refused without recursion trouble.
  std::string deep = "{\"a\":" + std::string(100000, '[') + std::string(100000, ']') + "}";
  EXPECT_THAT(CanonicalTags(Str(deep)), RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
}

// ---- objects ---------------------------------------------------------------------------------

TEST(LifecycleAttrsTest, EachHalfOfAPairTakesItsOwnTemplate) {
  AttributeMap pub = Tmpl({{CKA_EC_PARAMS, kP256}, {CKA_VAULTP11_EXPIRES, Ul(kMidMarch)},
                           {CKA_VAULTP11_TAGS, Str(R"({"half":"public"})")}});
  AttributeMap priv = Tmpl({{CKA_VAULTP11_ENABLED, Bytes{CK_FALSE}}, {CKA_START_DATE, Str("20260101")}});
  ASSERT_OK_AND_ASSIGN(KeyPair kp, GenerateKeyPair(CKM_EC_KEY_PAIR_GEN, pub, priv));
  EXPECT_TRUE(kp.public_key->attrs.GetBool(CKA_VAULTP11_ENABLED, false));
  EXPECT_FALSE(kp.private_key->attrs.GetBool(CKA_VAULTP11_ENABLED, true));
  EXPECT_EQ(Secs(*kp.public_key, CKA_VAULTP11_EXPIRES), kMidMarch);
  EXPECT_EQ(Secs(*kp.private_key, CKA_VAULTP11_EXPIRES), 0u);
  EXPECT_EQ(Secs(*kp.private_key, CKA_VAULTP11_NOT_BEFORE), k2026);
  EXPECT_EQ(Date(*kp.public_key, CKA_START_DATE), "");
  EXPECT_EQ(AsString(*kp.private_key->attrs.Get(CKA_VAULTP11_TAGS)), "{}");
  // Bad values fail before the key is made, whichever half carries them.
  EXPECT_THAT(GenerateKeyPair(CKM_EC_KEY_PAIR_GEN, pub, Tmpl({{CKA_VAULTP11_TAGS, Str("{")}})),
              RvIs(CKR_ATTRIBUTE_VALUE_INVALID));
  EXPECT_THAT(GenerateKeyPair(CKM_EC_KEY_PAIR_GEN, pub, Tmpl({{CKA_VAULTP11_NOT_BEFORE, Ul(kMidMarch)},
                                                              {CKA_VAULTP11_EXPIRES, Ul(k2026)}})),
              RvIs(CKR_TEMPLATE_INCONSISTENT));
}

TEST(LifecycleAttrsTest, ImportsAndUnwrappedKeysTakeThem) {
  Bytes value(16, 7);
  AttributeMap t = Tmpl({{CKA_CLASS, Ul(CKO_SECRET_KEY)}, {CKA_KEY_TYPE, Ul(CKK_AES)}, {CKA_VALUE, value},
                         {CKA_END_DATE, Str("20260315")}, {CKA_VAULTP11_TAGS, Str(R"({"a":"b"})")}});
  ASSERT_OK_AND_ASSIGN(auto imported, CreateObject(t));
  EXPECT_EQ(Secs(*imported, CKA_VAULTP11_EXPIRES), 1773619199u);
  AttributeMap u = Tmpl({{CKA_CLASS, Ul(CKO_SECRET_KEY)}, {CKA_KEY_TYPE, Ul(CKK_AES)},
                         {CKA_VAULTP11_NOT_BEFORE, Ul(kMidMarch)}, {CKA_VAULTP11_ENABLED, Bytes{CK_FALSE}}});
  ASSERT_OK_AND_ASSIGN(auto unwrapped, UnwrappedKey(u, SecureBytes(16, 9)));
  EXPECT_EQ(Date(*unwrapped, CKA_START_DATE), "20260315");
  EXPECT_FALSE(unwrapped->attrs.GetBool(CKA_VAULTP11_ENABLED, true));
  u.Set(CKA_END_DATE, Str("20260314"));
  EXPECT_THAT(UnwrappedKey(u, SecureBytes(16, 9)), RvIs(CKR_TEMPLATE_INCONSISTENT));
  // A copy keeps them.
  ASSERT_OK_AND_ASSIGN(auto copy, CopyObject(*imported, AttributeMap{}));
  EXPECT_EQ(*copy->attrs.Get(CKA_VAULTP11_TAGS), *imported->attrs.Get(CKA_VAULTP11_TAGS));
  EXPECT_EQ(Secs(*copy, CKA_VAULTP11_EXPIRES), 1773619199u);
}

TEST(LifecycleAttrsTest, SecretsStoreThemWithoutDates) {
  AttributeMap t = Tmpl({{CKA_CLASS, Ul(CKO_DATA)}, {CKA_VALUE, Str("v")}, {CKA_VAULTP11_ENABLED, Bytes{CK_FALSE}},
                         {CKA_VAULTP11_EXPIRES, Ul(k2026)}, {CKA_VAULTP11_TAGS, Str(R"({"kind":"password"})")}});
  ASSERT_OK_AND_ASSIGN(auto secret, CreateObject(t));
  EXPECT_FALSE(secret->attrs.GetBool(CKA_VAULTP11_ENABLED, true));
  EXPECT_EQ(Secs(*secret, CKA_VAULTP11_EXPIRES), k2026);
  EXPECT_FALSE(secret->attrs.Has(CKA_END_DATE));
  // Informational: a disabled, expired secret's value is still read.
  ASSERT_OK_AND_ASSIGN(SecureBytes v, ReadAttribute(*secret, CKA_VALUE, true));
  EXPECT_EQ(v, (SecureBytes{'v'}));
  EXPECT_THAT(CreateObject(Tmpl({{CKA_CLASS, Ul(CKO_DATA)}, {CKA_START_DATE, Str("20260101")}})),
              RvIs(CKR_ATTRIBUTE_TYPE_INVALID));
  EXPECT_THAT(CreateObject(Tmpl({{CKA_CLASS, Ul(CKO_DATA)}, {CKA_VAULTP11_NOT_BEFORE, Ul(kMidMarch)},
                                 {CKA_VAULTP11_EXPIRES, Ul(k2026)}})),
              RvIs(CKR_TEMPLATE_INCONSISTENT));
  ASSERT_OK_AND_ASSIGN(auto renewed, ModifyObject(*secret, Tmpl({{CKA_VAULTP11_EXPIRES, Ul(kMidMarch)},
                                                                 {CKA_VAULTP11_ENABLED, Bytes{CK_TRUE}}})));
  EXPECT_EQ(Secs(*renewed, CKA_VAULTP11_EXPIRES), kMidMarch);
  EXPECT_TRUE(renewed->attrs.GetBool(CKA_VAULTP11_ENABLED, false));
  EXPECT_FALSE(renewed->attrs.Has(CKA_END_DATE));
}

TEST(LifecycleAttrsTest, TheySurviveTheStoreForm) {
  ASSERT_OK_AND_ASSIGN(auto key, Aes({{CKA_VAULTP11_NOT_BEFORE, Ul(kMidMarch)}, {CKA_VAULTP11_ENABLED, Bytes{CK_FALSE}},
                                      {CKA_VAULTP11_TAGS, Str(R"({"a":"b"})")}}));
  ASSERT_OK_AND_ASSIGN(AttributeMap back, AttributeMap::Deserialize(key->attrs.Serialize()));
  for (CK_ATTRIBUTE_TYPE t : {CKA_VAULTP11_ENABLED, CKA_VAULTP11_NOT_BEFORE, CKA_VAULTP11_EXPIRES, CKA_VAULTP11_TAGS,
                              CKA_START_DATE, CKA_END_DATE})
    EXPECT_EQ(*back.Get(t), *key->attrs.Get(t)) << AttrName(t);
}

TEST(LifecycleAttrsTest, ObjectsStoredBeforeTheVendorAttributesAnswerDefaults) {
  ASSERT_OK_AND_ASSIGN(auto key, Aes({{CKA_START_DATE, Str("20260101")}, {CKA_END_DATE, Str("20260315")}}));
  Object old = *key;
  for (CK_ATTRIBUTE_TYPE t : {CKA_VAULTP11_ENABLED, CKA_VAULTP11_NOT_BEFORE, CKA_VAULTP11_EXPIRES, CKA_VAULTP11_TAGS})
    old.attrs.Erase(t);
  ASSERT_OK_AND_ASSIGN(SecureBytes enabled, ReadAttribute(old, CKA_VAULTP11_ENABLED, false));
  EXPECT_EQ(enabled, (SecureBytes{CK_TRUE}));
  ASSERT_OK_AND_ASSIGN(SecureBytes nbf, ReadAttribute(old, CKA_VAULTP11_NOT_BEFORE, false));
  CK_ULONG v = 0;
  ASSERT_EQ(nbf.size(), sizeof(v));
  std::memcpy(&v, nbf.data(), sizeof(v));
  EXPECT_EQ(v, k2026);
  ASSERT_OK_AND_ASSIGN(SecureBytes tags, ReadAttribute(old, CKA_VAULTP11_TAGS, false));
  EXPECT_EQ(std::string(tags.begin(), tags.end()), "{}");
  // The rule reads the window from the dates.
  EXPECT_THAT(CheckKeyLifecycle(old.attrs, true, 1773619199 + 1), RvIs(CKR_KEY_FUNCTION_NOT_PERMITTED));
  EXPECT_OK(CheckKeyLifecycle(old.attrs, true, 1773619199));
  // A change brings the vendor attributes in.
  ASSERT_OK_AND_ASSIGN(auto changed, ModifyObject(old, Tmpl({{CKA_VAULTP11_TAGS, Str(R"({"x":"y"})")}})));
  EXPECT_EQ(Secs(*changed, CKA_VAULTP11_NOT_BEFORE), k2026);
  EXPECT_TRUE(changed->attrs.GetBool(CKA_VAULTP11_ENABLED, false));
}

// ---- the rule ----------------------------------------------------------------------------------

TEST(LifecycleAttrsTest, RuleOfAKeyUse) {
  ASSERT_OK_AND_ASSIGN(auto key, Aes({{CKA_VAULTP11_NOT_BEFORE, Ul(k2026)}, {CKA_VAULTP11_EXPIRES, Ul(kMidMarch)}}));
  const AttributeMap& a = key->attrs;
  // Inside the window (both ends included) every use works.
  for (int64_t now : {static_cast<int64_t>(k2026), static_cast<int64_t>(kMidMarch)}) {
    EXPECT_OK(CheckKeyLifecycle(a, true, now));
    EXPECT_OK(CheckKeyLifecycle(a, false, now));
  }
  // Before and after: sign/encrypt/wrap refused, verify/decrypt/unwrap kept.
  auto early = CheckKeyLifecycle(a, true, k2026 - 1);
  EXPECT_THAT(early, RvIs(CKR_KEY_FUNCTION_NOT_PERMITTED));
  EXPECT_THAT(early.error().message, HasSubstr("not valid before 2026-01-01T00:00:00Z"));
  EXPECT_OK(CheckKeyLifecycle(a, false, k2026 - 1));
  auto late = CheckKeyLifecycle(a, true, kMidMarch + 1);
  EXPECT_THAT(late, RvIs(CKR_KEY_FUNCTION_NOT_PERMITTED));
  EXPECT_THAT(late.error().message,
              HasSubstr("key 'k' expired at 2026-03-15T12:34:56Z: it may still verify, decrypt and unwrap"));
  EXPECT_OK(CheckKeyLifecycle(a, false, kMidMarch + 1));
  // Disabled: nothing, whenever.
  ASSERT_OK_AND_ASSIGN(auto off, ModifyObject(*key, Tmpl({{CKA_VAULTP11_ENABLED, Bytes{CK_FALSE}}})));
  for (bool protecting : {true, false}) {
    auto st = CheckKeyLifecycle(off->attrs, protecting, k2026 + 1);
    EXPECT_THAT(st, RvIs(CKR_KEY_FUNCTION_NOT_PERMITTED));
    EXPECT_THAT(st.error().message, HasSubstr("disabled"));
  }
  // No window: any time.
  ASSERT_OK_AND_ASSIGN(auto open, Aes({}));
  EXPECT_OK(CheckKeyLifecycle(open->attrs, true, 0));
  EXPECT_OK(CheckKeyLifecycle(open->attrs, true, kMaxUnixTime + 100));
  EXPECT_GT(UnixNow(), 1600000000);  // the system clock, past 2020
}

}  // namespace
}  // namespace vaultp11::model

#include "auth/secret_hash.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <string_view>

#include "matchers.h"
#include "util/secure_bytes.h"

namespace vaultp11::auth {
namespace {

using ::testing::MatchesRegex;
using ::testing::StartsWith;

// Low cost keeps the tests fast; the format and the code path are the same as production.
constexpr ScryptCost kFast{10, 8, 1};

Bytes Secret(std::string_view s) { return ToBytes(s); }

// A valid hash with a fixed salt/hash to mutate in the malformed-input tests.
constexpr std::string_view kSalt = "AAECAwQFBgcICQoLDA0ODw==";                      // 16 bytes
constexpr std::string_view kHash = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";  // 32 bytes

std::string Make(std::string_view params, std::string_view salt = kSalt,
                 std::string_view hash = kHash) {
  return "$scrypt$" + std::string(params) + "$" + std::string(salt) + "$" + std::string(hash);
}

TEST(SecretHashTest, HashHasDocumentedFormat) {
  ASSERT_OK_AND_ASSIGN(std::string h, HashSecret(Secret("s3cret"), kFast));
  EXPECT_THAT(h,
              MatchesRegex(R"(\$scrypt\$ln=10,r=8,p=1\$[A-Za-z0-9+/]{22}==\$[A-Za-z0-9+/]{43}=)"));
  EXPECT_TRUE(IsWellFormedHash(h));
}

TEST(SecretHashTest, DefaultCostIsLn15R8P1) {
  ScryptCost c;
  EXPECT_EQ(c.log2_n, 15);
  EXPECT_EQ(c.r, 8);
  EXPECT_EQ(c.p, 1);
}

TEST(SecretHashTest, RoundTripVerifies) {
  ASSERT_OK_AND_ASSIGN(std::string h, HashSecret(Secret("correct horse battery staple"), kFast));
  ASSERT_OK_AND_ASSIGN(bool ok, VerifySecret(h, Secret("correct horse battery staple")));
  EXPECT_TRUE(ok);
}

TEST(SecretHashTest, RoundTripWithDefaultCost) {
  ASSERT_OK_AND_ASSIGN(std::string h, HashSecret(Secret("pw")));
  EXPECT_THAT(h, StartsWith("$scrypt$ln=15,r=8,p=1$"));
  ASSERT_OK_AND_ASSIGN(bool ok, VerifySecret(h, Secret("pw")));
  EXPECT_TRUE(ok);
}

TEST(SecretHashTest, WrongSecretIsFalseNotError) {
  ASSERT_OK_AND_ASSIGN(std::string h, HashSecret(Secret("right"), kFast));
  ASSERT_OK_AND_ASSIGN(bool ok, VerifySecret(h, Secret("wrong")));
  EXPECT_FALSE(ok);
  ASSERT_OK_AND_ASSIGN(ok, VerifySecret(h, Secret("righ")));
  EXPECT_FALSE(ok);
  ASSERT_OK_AND_ASSIGN(ok, VerifySecret(h, Secret("")));
  EXPECT_FALSE(ok);
}

TEST(SecretHashTest, EmptySecretHashesAndVerifies) {
  ASSERT_OK_AND_ASSIGN(std::string h, HashSecret({}, kFast));
  ASSERT_OK_AND_ASSIGN(bool ok, VerifySecret(h, {}));
  EXPECT_TRUE(ok);
  ASSERT_OK_AND_ASSIGN(ok, VerifySecret(h, Secret("x")));
  EXPECT_FALSE(ok);
}

TEST(SecretHashTest, BinarySecretWithNulBytes) {
  const uint8_t raw[] = {0, 1, 0, 0xff};
  ASSERT_OK_AND_ASSIGN(std::string h, HashSecret(raw, kFast));
  ASSERT_OK_AND_ASSIGN(bool ok, VerifySecret(h, raw));
  EXPECT_TRUE(ok);
  const uint8_t other[] = {0, 1, 0, 0xfe};
  ASSERT_OK_AND_ASSIGN(ok, VerifySecret(h, other));
  EXPECT_FALSE(ok);
}

TEST(SecretHashTest, TwoHashesOfTheSameSecretDiffer) {
  ASSERT_OK_AND_ASSIGN(std::string a, HashSecret(Secret("same"), kFast));
  ASSERT_OK_AND_ASSIGN(std::string b, HashSecret(Secret("same"), kFast));
  EXPECT_NE(a, b);
  // The salts differ, not just the hashes.
  EXPECT_NE(a.substr(0, a.rfind('$')), b.substr(0, b.rfind('$')));
}

TEST(SecretHashTest, VerifyUsesParametersFromTheString) {
  ScryptCost c{11, 4, 2};
  ASSERT_OK_AND_ASSIGN(std::string h, HashSecret(Secret("x"), c));
  EXPECT_THAT(h, StartsWith("$scrypt$ln=11,r=4,p=2$"));
  ASSERT_OK_AND_ASSIGN(bool ok, VerifySecret(h, Secret("x")));
  EXPECT_TRUE(ok);
}

TEST(SecretHashTest, KnownAnswerRfc7914Parameters) {
  // Check the KDF wiring (N, r, p, salt, password) against an independent computation:
  // Python hashlib.scrypt(b"password", salt=bytes(range(16)), n=1024, r=8, p=1, dklen=32).
  std::string h = Make("ln=10,r=8,p=1", kSalt, "OnwHgqTb31Q6zXxSL+hT2bNKu4ryelxll0iM3yKBQLU=");
  ASSERT_OK_AND_ASSIGN(bool ok, VerifySecret(h, Secret("password")));
  EXPECT_TRUE(ok);
}

TEST(SecretHashTest, HashSecretRejectsOutOfRangeCost) {
  EXPECT_THAT(HashSecret(Secret("x"), ScryptCost{0, 8, 1}), RvIs(CKR_ARGUMENTS_BAD));
  EXPECT_THAT(HashSecret(Secret("x"), ScryptCost{21, 8, 1}), RvIs(CKR_ARGUMENTS_BAD));
  EXPECT_THAT(HashSecret(Secret("x"), ScryptCost{10, 0, 1}), RvIs(CKR_ARGUMENTS_BAD));
  EXPECT_THAT(HashSecret(Secret("x"), ScryptCost{10, 33, 1}), RvIs(CKR_ARGUMENTS_BAD));
  EXPECT_THAT(HashSecret(Secret("x"), ScryptCost{10, 8, 0}), RvIs(CKR_ARGUMENTS_BAD));
  EXPECT_THAT(HashSecret(Secret("x"), ScryptCost{10, 8, 17}), RvIs(CKR_ARGUMENTS_BAD));
  // Each in range, but 128 * 32 * 2^20 = 4 GiB of memory.
  EXPECT_THAT(HashSecret(Secret("x"), ScryptCost{20, 32, 1}), RvIs(CKR_ARGUMENTS_BAD));
}

TEST(SecretHashTest, FixtureIsWellFormed) { EXPECT_TRUE(IsWellFormedHash(Make("ln=10,r=8,p=1"))); }

TEST(SecretHashTest, BoundsAreInclusive) {
  EXPECT_TRUE(IsWellFormedHash(Make("ln=1,r=1,p=1")));
  EXPECT_TRUE(IsWellFormedHash(Make("ln=20,r=8,p=16")));
  EXPECT_TRUE(IsWellFormedHash(Make("ln=18,r=32,p=1")));
}

class MalformedHashTest : public ::testing::TestWithParam<std::string> {};

TEST_P(MalformedHashTest, IsRejected) {
  EXPECT_FALSE(IsWellFormedHash(GetParam()));
  EXPECT_THAT(VerifySecret(GetParam(), Secret("x")), RvIs(CKR_GENERAL_ERROR));
}

INSTANTIATE_TEST_SUITE_P(
    Strings, MalformedHashTest,
    ::testing::Values(
        "", "$scrypt$", "scrypt$ln=10,r=8,p=1$AAEC$AAEC", Make("ln=10,r=8,p=1").substr(1),
        "$bcrypt$" + Make("ln=10,r=8,p=1").substr(8),
        // parameters: order, missing, out of range, junk, leading zero, sign
        Make("r=8,ln=10,p=1"), Make("ln=10,r=8"), Make("ln=10,p=1"), Make("ln=0,r=8,p=1"),
        Make("ln=21,r=8,p=1"), Make("ln=10,r=0,p=1"), Make("ln=10,r=33,p=1"), Make("ln=10,r=8,p=0"),
        Make("ln=10,r=8,p=17"), Make("ln=20,r=32,p=1"), Make("ln=010,r=8,p=1"),
        Make("ln=+10,r=8,p=1"), Make("ln=-1,r=8,p=1"), Make("ln=10,r=8,p=1,x=1"),
        Make("ln=10 ,r=8,p=1"), Make("ln=99999999999,r=8,p=1"), Make("LN=10,r=8,p=1"),
        Make("ln=,r=8,p=1"),
        // salt / hash: wrong length, bad characters, missing padding, whitespace, extra fields
        Make("ln=10,r=8,p=1", "AAECAwQFBgcICQoLDA0O"),             // 15-byte salt
        Make("ln=10,r=8,p=1", kSalt, "AAECAwQFBgcICQoLDA0ODw=="),  // 16-byte hash
        Make("ln=10,r=8,p=1", "AAECAwQFBgcICQoLDA0ODw"),           // unpadded
        Make("ln=10,r=8,p=1", "AAECAwQFBgcICQoLDA0ODx=="),         // non-canonical bits
        Make("ln=10,r=8,p=1", "AAECAwQFBgcI CQoLDA0ODw="),         // space
        Make("ln=10,r=8,p=1", "AAECAwQFBgcICQoLDA0OD-_="),         // url-safe alphabet
        Make("ln=10,r=8,p=1", "AAECAwQF=gcICQoLDA0ODw=="),         // padding inside
        Make("ln=10,r=8,p=1", ""), Make("ln=10,r=8,p=1", kSalt, ""), Make("ln=10,r=8,p=1") + "$",
        Make("ln=10,r=8,p=1") + "\n", Make("ln=10,r=8,p=1", kSalt, std::string(kHash) + "$AAAA")));

// An unknown principal's login verifies a dummy hash at the cost the configured secrets use,
// so its time does not tell unknown names from known ones (issue 16 item 9).
TEST(DummyCostTest, FollowsTheConfiguredSecrets) {
  const std::string a = Make("ln=14,r=8,p=1"), b = Make("ln=17,r=8,p=1"), c = Make("ln=12,r=4,p=2");
  // No configured secrets: the default cost of `vaultp11 hash-secret`.
  EXPECT_EQ(DummyCost({}), ScryptCost{});
  EXPECT_EQ(DummyCost({a}), (ScryptCost{14, 8, 1}));
  // The most common cost wins ...
  EXPECT_EQ(DummyCost({a, b, a, c}), (ScryptCost{14, 8, 1}));
  EXPECT_EQ(DummyCost({c, b, c}), (ScryptCost{12, 4, 2}));
  // ... a tie goes to the larger working set; malformed entries are ignored.
  EXPECT_EQ(DummyCost({a, b}), (ScryptCost{17, 8, 1}));
  EXPECT_EQ(DummyCost({b, a, "not a hash", "not a hash"}), (ScryptCost{17, 8, 1}));
}

TEST(DummyCostTest, TheDummyHashHasThatCostAndMatchesNothing) {
  for (ScryptCost cost : {kFast, ScryptCost{4, 2, 3}}) {
    const std::string dummy = DummyHash(cost);
    ASSERT_TRUE(IsWellFormedHash(dummy)) << dummy;
    EXPECT_EQ(CostOf(dummy), cost);
    for (std::string_view guess : {"", "x", "correct horse"}) {
      auto ok = VerifySecret(dummy, Secret(guess));
      ASSERT_TRUE(ok.ok());
      EXPECT_FALSE(ok.value());
    }
  }
  EXPECT_EQ(CostOf("$scrypt$ln=99,r=8,p=1$x$y"), std::nullopt);
}

}  // namespace
}  // namespace vaultp11::auth

// Tests of the JWS/JWT library: base64url, sign/parse/verify round trips, refused algorithms
// and malformed tokens, claim rules, JWKS parsing (including the RFC 7515 appendix A vectors)
// and the x5t#S256 thumbprint. Keys are generated once per suite in the module's lib ctx.
#include "auth/jwt.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include "backend/ossl/ossl_backend.h"
#include "hex.h"
#include "jwt_keys.h"
#include "matchers.h"
#include "util/ossl_ptr.h"
#include "util/secure_bytes.h"

namespace vaultp11::auth::jwt {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using Json = nlohmann::json;
using Clock = std::chrono::system_clock;

constexpr int64_t kNowSeconds = 1'700'000'000;
const Clock::time_point kNow{std::chrono::seconds(kNowSeconds)};
constexpr std::string_view kAllAlgs[] = {kRs256, kPs256, kEs256};

std::string B64(std::string_view s) { return Base64UrlEncode(ToBytes(s)); }

std::string Text(const Bytes& b) { return std::string(b.begin(), b.end()); }

// A token assembled by hand from JSON texts and raw signature bytes (for tokens Sign refuses
// to make).
std::string Handmade(std::string_view header, std::string_view payload, const Bytes& sig = {}) {
  return B64(header) + "." + B64(payload) + "." + Base64UrlEncode(sig);
}

Json GoodClaims() {
  return Json{{"iss", "client-1"},
              {"sub", "client-1"},
              {"aud", "https://vault.example/token"},
              {"iat", kNowSeconds},
              {"exp", kNowSeconds + 300},
              {"jti", "4f1b6c1e-2d7a-4c55-9b1e-0d8e2a7c9f10"}};
}

ClaimRules GoodRules() {
  ClaimRules r;
  r.issuer = "client-1";
  r.subject = "client-1";
  r.audience = "https://vault.example/token";
  return r;
}

Token WithClaims(Json claims) {
  Token t;
  t.claims = std::move(claims);
  return t;
}

// The three parts of a compact token.
std::vector<std::string> Split(const std::string& token) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (size_t dot; (dot = token.find('.', start)) != std::string::npos; start = dot + 1)
    parts.push_back(token.substr(start, dot - start));
  parts.push_back(token.substr(start));
  return parts;
}

std::string ReplaceSignature(const std::string& token, const Bytes& sig) {
  auto parts = Split(token);
  return parts[0] + "." + parts[1] + "." + Base64UrlEncode(sig);
}

class JwtTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    OSSL_LIB_CTX* ctx = ossl::LibCtx();
    rsa_.reset(EVP_PKEY_Q_keygen(ctx, nullptr, "RSA", size_t{2048}));
    rsa2_.reset(EVP_PKEY_Q_keygen(ctx, nullptr, "RSA", size_t{2048}));
    rsa1024_.reset(EVP_PKEY_Q_keygen(ctx, nullptr, "RSA", size_t{1024}));
    ec_.reset(EVP_PKEY_Q_keygen(ctx, nullptr, "EC", "P-256"));
    ec2_.reset(EVP_PKEY_Q_keygen(ctx, nullptr, "EC", "P-256"));
    ec384_.reset(EVP_PKEY_Q_keygen(ctx, nullptr, "EC", "P-384"));
  }
  static void TearDownTestSuite() {
    rsa_.reset();
    rsa2_.reset();
    rsa1024_.reset();
    ec_.reset();
    ec2_.reset();
    ec384_.reset();
  }
  void SetUp() override {
    ASSERT_TRUE(rsa_ && rsa2_ && rsa1024_ && ec_ && ec2_ && ec384_) << SslErrors();
  }

  static EVP_PKEY* KeyFor(std::string_view alg) { return alg == kEs256 ? ec_.get() : rsa_.get(); }
  static EVP_PKEY* OtherKeyFor(std::string_view alg) {
    return alg == kEs256 ? ec2_.get() : rsa2_.get();
  }

  static std::string MustSign(std::string_view alg, const Json& claims = GoodClaims(),
                              Json header = nullptr) {
    auto r = Sign(std::move(header), claims, KeyFor(alg), alg);
    EXPECT_TRUE(r.ok()) << r.error().message;
    return r.ok() ? r.value() : std::string();
  }

  static EvpPkeyPtr rsa_, rsa2_, rsa1024_, ec_, ec2_, ec384_;
};

EvpPkeyPtr JwtTest::rsa_, JwtTest::rsa2_, JwtTest::rsa1024_, JwtTest::ec_, JwtTest::ec2_,
    JwtTest::ec384_;

// ---- base64url ------------------------------------------------------------------------------

TEST(Base64UrlTest, Rfc4648VectorsWithoutPadding) {
  const std::pair<std::string_view, std::string_view> vectors[] = {
      {"", ""},           {"f", "Zg"},          {"fo", "Zm8"},          {"foo", "Zm9v"},
      {"foob", "Zm9vYg"}, {"fooba", "Zm9vYmE"}, {"foobar", "Zm9vYmFy"},
  };
  for (const auto& [plain, encoded] : vectors) {
    EXPECT_EQ(B64(plain), encoded);
    ASSERT_OK_AND_ASSIGN(Bytes decoded, Base64UrlDecode(encoded));
    EXPECT_EQ(Text(decoded), plain);
  }
}

TEST(Base64UrlTest, UsesUrlAlphabet) {
  EXPECT_EQ(Base64UrlEncode(Bytes{0xfb, 0xff, 0xbf}), "-_-_");
  ASSERT_OK_AND_ASSIGN(Bytes b, Base64UrlDecode("-_-_"));
  EXPECT_EQ(b, (Bytes{0xfb, 0xff, 0xbf}));
}

TEST(Base64UrlTest, RoundTripsAllByteValuesAndLengths) {
  Bytes all(256);
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<uint8_t>(i);
  for (size_t len = 0; len <= all.size(); len += 1) {
    std::span<const uint8_t> in(all.data(), len);
    std::string enc = Base64UrlEncode(in);
    EXPECT_EQ(enc.find_first_of("+/="), std::string::npos);
    ASSERT_OK_AND_ASSIGN(Bytes dec, Base64UrlDecode(enc));
    EXPECT_EQ(dec, Bytes(in.begin(), in.end()));
  }
}

TEST(Base64UrlTest, RefusesNonCanonicalOrForeignInput) {
  for (std::string_view bad : {
           "Zg==",    // padding
           "Zg=",     // padding
           "Zm9v+w",  // standard alphabet
           "Zm9v/w",  // standard alphabet
           "Zm 9v",   // whitespace
           "Zm9v\n",  // newline
           "Zh",      // trailing bits not zero ("Zg" is canonical)
           "Zm9",     // trailing bits not zero ("Zm8" is canonical)
           "Zm9vY",   // 4k+1 characters
       }) {
    EXPECT_THAT(Base64UrlDecode(bad), RvIs(CKR_ARGUMENTS_BAD)) << bad;
  }
  EXPECT_THAT(Base64UrlDecode(std::string_view("Zm9v\0w", 6)), RvIs(CKR_ARGUMENTS_BAD));
  EXPECT_THAT(Base64UrlDecode("Zm9v\xc3\xa9w"), RvIs(CKR_ARGUMENTS_BAD));
}

// ---- sign / parse / verify --------------------------------------------------------------------

TEST_F(JwtTest, SignParseVerifyRoundTripForEachAlg) {
  for (std::string_view alg : kAllAlgs) {
    SCOPED_TRACE(alg);
    std::string token = MustSign(alg);
    ASSERT_FALSE(token.empty());
    ASSERT_OK_AND_ASSIGN(Token t, Parse(token));
    EXPECT_EQ(t.alg, alg);
    EXPECT_EQ(t.header.value("alg", ""), alg);
    EXPECT_EQ(t.header.value("typ", ""), "JWT");
    EXPECT_EQ(t.claims, GoodClaims());
    EXPECT_EQ(t.signing_input, token.substr(0, token.rfind('.')));
    if (alg == kEs256)
      EXPECT_EQ(t.signature.size(), 64u);
    else
      EXPECT_EQ(t.signature.size(), 256u);
    EXPECT_OK(Verify(t, KeyFor(alg), kAllAlgs));
    const std::string_view only[] = {alg};
    EXPECT_OK(Verify(t, KeyFor(alg), only));
    EXPECT_OK(CheckClaims(t, GoodRules(), kNow));
  }
}

TEST_F(JwtTest, VerifiesWithPublicHalfOnly) {
  for (std::string_view alg : kAllAlgs) {
    SCOPED_TRACE(alg);
    ASSERT_OK_AND_ASSIGN(ossl::PkeyRef pub, ossl::PublicFromPrivate(KeyFor(alg)));
    ASSERT_OK_AND_ASSIGN(Token t, Parse(MustSign(alg)));
    EXPECT_OK(Verify(t, pub.get(), kAllAlgs));
  }
}

TEST_F(JwtTest, SignKeepsCallerTypAndOverridesAlg) {
  Json header{{"typ", "client-authentication+jwt"}, {"alg", "none"}, {"kid", "k1"}};
  ASSERT_OK_AND_ASSIGN(Token t, Parse(MustSign(kEs256, GoodClaims(), header)));
  EXPECT_EQ(t.alg, "ES256");
  EXPECT_EQ(t.header["typ"], "client-authentication+jwt");
  EXPECT_EQ(t.header["kid"], "k1");
}

TEST_F(JwtTest, WrongKeyIsPinIncorrect) {
  for (std::string_view alg : kAllAlgs) {
    SCOPED_TRACE(alg);
    ASSERT_OK_AND_ASSIGN(Token t, Parse(MustSign(alg)));
    EXPECT_THAT(Verify(t, OtherKeyFor(alg), kAllAlgs), RvIs(CKR_PIN_INCORRECT));
  }
}

TEST_F(JwtTest, TamperedPayloadIsPinIncorrect) {
  for (std::string_view alg : kAllAlgs) {
    SCOPED_TRACE(alg);
    auto parts = Split(MustSign(alg));
    Json claims = GoodClaims();
    claims["sub"] = "admin";
    std::string forged = parts[0] + "." + B64(claims.dump()) + "." + parts[2];
    ASSERT_OK_AND_ASSIGN(Token t, Parse(forged));
    EXPECT_THAT(Verify(t, KeyFor(alg), kAllAlgs), RvIs(CKR_PIN_INCORRECT));
  }
}

TEST_F(JwtTest, SwappingRs256ForPs256InHeaderFails) {
  auto parts = Split(MustSign(kRs256));
  std::string swapped = B64(R"({"alg":"PS256","typ":"JWT"})") + "." + parts[1] + "." + parts[2];
  ASSERT_OK_AND_ASSIGN(Token t, Parse(swapped));
  EXPECT_THAT(Verify(t, rsa_.get(), kAllAlgs), RvIs(CKR_PIN_INCORRECT));
}

TEST_F(JwtTest, KeyNotMatchingAlgIsPinIncorrect) {
  ASSERT_OK_AND_ASSIGN(Token es, Parse(MustSign(kEs256)));
  EXPECT_THAT(Verify(es, rsa_.get(), kAllAlgs), RvIs(CKR_PIN_INCORRECT));
  auto on_p384 = Verify(es, ec384_.get(), kAllAlgs);
  EXPECT_THAT(on_p384, RvIs(CKR_PIN_INCORRECT));
  EXPECT_THAT(on_p384.error().message, HasSubstr("P-256"));

  for (std::string_view alg : {kRs256, kPs256}) {
    ASSERT_OK_AND_ASSIGN(Token rs, Parse(MustSign(alg)));
    EXPECT_THAT(Verify(rs, ec_.get(), kAllAlgs), RvIs(CKR_PIN_INCORRECT));
    auto small = Verify(rs, rsa1024_.get(), kAllAlgs);
    EXPECT_THAT(small, RvIs(CKR_PIN_INCORRECT));
    EXPECT_THAT(small.error().message, HasSubstr("2048"));
  }
}

TEST_F(JwtTest, NullKeyIsArgumentsBad) {
  ASSERT_OK_AND_ASSIGN(Token t, Parse(MustSign(kRs256)));
  EXPECT_THAT(Verify(t, nullptr, kAllAlgs), RvIs(CKR_ARGUMENTS_BAD));
}

TEST_F(JwtTest, AlgNoneIsPinInvalidEvenWhenListed) {
  std::string token = Handmade(R"({"alg":"none"})", GoodClaims().dump());
  ASSERT_EQ(token.back(), '.');
  ASSERT_OK_AND_ASSIGN(Token t, Parse(token));
  EXPECT_TRUE(t.signature.empty());
  const std::string_view with_none[] = {"none", kRs256, kPs256, kEs256};
  for (EVP_PKEY* key : {rsa_.get(), ec_.get()}) {
    auto st = Verify(t, key, with_none);
    EXPECT_THAT(st, RvIs(CKR_PIN_INVALID));
    EXPECT_THAT(st.error().message, HasSubstr("not allowed"));
  }
}

// The classic confusion: an HS256 token whose HMAC key is the verifier's RSA public key (which
// is public). It must be refused by algorithm, never "verified".
TEST_F(JwtTest, Hs256WithPublicKeyAsSecretIsPinInvalid) {
  BIO* bio = BIO_new(BIO_s_mem());
  ASSERT_NE(bio, nullptr);
  ASSERT_EQ(PEM_write_bio_PUBKEY(bio, rsa_.get()), 1);
  char* pem_data = nullptr;
  long pem_len = BIO_get_mem_data(bio, &pem_data);
  std::string pem(pem_data, static_cast<size_t>(pem_len));
  BIO_free(bio);

  std::string input = B64(R"({"alg":"HS256","typ":"JWT"})") + "." + B64(GoodClaims().dump());
  Bytes mac(32);
  size_t mac_len = 0;
  ASSERT_NE(EVP_Q_mac(ossl::LibCtx(), "HMAC", nullptr, "SHA256", nullptr, pem.data(), pem.size(),
                      reinterpret_cast<const unsigned char*>(input.data()), input.size(),
                      mac.data(), mac.size(), &mac_len),
            nullptr);
  ASSERT_EQ(mac_len, 32u);
  ASSERT_OK_AND_ASSIGN(Token t, Parse(input + "." + Base64UrlEncode(mac)));
  const std::string_view with_hs[] = {kRs256, "HS256"};
  EXPECT_THAT(Verify(t, rsa_.get(), with_hs), RvIs(CKR_PIN_INVALID));
  EXPECT_THAT(Verify(t, rsa_.get(), kAllAlgs), RvIs(CKR_PIN_INVALID));
}

TEST_F(JwtTest, OtherAlgsArePinInvalid) {
  for (std::string_view alg : {"HS384", "HS512", "RS384", "ES384", "EdDSA", "rs256", ""}) {
    std::string token =
        Handmade(fmt::format(R"({{"alg":"{}"}})", alg), GoodClaims().dump(), Bytes(64, 1));
    ASSERT_OK_AND_ASSIGN(Token t, Parse(token));
    EXPECT_THAT(Verify(t, rsa_.get(), kAllAlgs), RvIs(CKR_PIN_INVALID)) << alg;
  }
}

TEST_F(JwtTest, AlgNotInAllowedListIsPinInvalid) {
  ASSERT_OK_AND_ASSIGN(Token t, Parse(MustSign(kRs256)));
  const std::string_view es_only[] = {kEs256};
  EXPECT_THAT(Verify(t, rsa_.get(), es_only), RvIs(CKR_PIN_INVALID));
  EXPECT_THAT(Verify(t, rsa_.get(), {}), RvIs(CKR_PIN_INVALID));
}

TEST_F(JwtTest, Es256SignatureOfWrongLengthIsRefused) {
  std::string token = MustSign(kEs256);
  ASSERT_OK_AND_ASSIGN(Token good, Parse(token));
  Bytes longer = good.signature;
  longer.push_back(0);
  Bytes shorter(good.signature.begin(), good.signature.end() - 1);
  for (const Bytes& sig : {longer, shorter, Bytes(72, 0x30), Bytes()}) {
    ASSERT_OK_AND_ASSIGN(Token t, Parse(ReplaceSignature(token, sig)));
    auto st = Verify(t, ec_.get(), kAllAlgs);
    EXPECT_THAT(st, RvIs(CKR_PIN_INCORRECT)) << sig.size();
  }
  // Right length, but r = s = 0.
  ASSERT_OK_AND_ASSIGN(Token zero, Parse(ReplaceSignature(token, Bytes(64, 0))));
  EXPECT_THAT(Verify(zero, ec_.get(), kAllAlgs), RvIs(CKR_PIN_INCORRECT));
}

// PS256 fixes the salt at 32 bytes (RFC 7518 section 3.5): a PSS signature with another salt
// length is not a PS256 signature.
TEST_F(JwtTest, Ps256WithOtherSaltLengthIsRefused) {
  std::string input = B64(R"({"alg":"PS256"})") + "." + B64(GoodClaims().dump());
  EvpMdCtxPtr md(EVP_MD_CTX_new());
  EVP_PKEY_CTX* pctx = nullptr;
  size_t len = 0;
  ASSERT_EQ(EVP_DigestSignInit_ex(md.get(), &pctx, "SHA256", ossl::LibCtx(), nullptr, rsa_.get(),
                                  nullptr),
            1);
  ASSERT_EQ(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING), 1);
  ASSERT_EQ(EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, 20), 1);
  const auto* data = reinterpret_cast<const unsigned char*>(input.data());
  ASSERT_EQ(EVP_DigestSign(md.get(), nullptr, &len, data, input.size()), 1);
  Bytes sig(len);
  ASSERT_EQ(EVP_DigestSign(md.get(), sig.data(), &len, data, input.size()), 1);
  ASSERT_OK_AND_ASSIGN(Token t, Parse(input + "." + Base64UrlEncode(sig)));
  EXPECT_THAT(Verify(t, rsa_.get(), kAllAlgs), RvIs(CKR_PIN_INCORRECT));
}

// ---- Parse refusals -------------------------------------------------------------------------

TEST_F(JwtTest, TruncatedTokensArePinInvalid) {
  std::string token = MustSign(kRs256);
  auto parts = Split(token);
  ASSERT_EQ(parts.size(), 3u);
  // 256 signature bytes are 342 characters; 341 is a length no byte string encodes to.
  EXPECT_THAT(Parse(token.substr(0, token.size() - 1)), RvIs(CKR_PIN_INVALID));
  EXPECT_THAT(Parse(parts[0] + "." + parts[1]), RvIs(CKR_PIN_INVALID));
  EXPECT_THAT(Parse(parts[0] + "." + parts[2]), RvIs(CKR_PIN_INVALID));
  EXPECT_THAT(Parse(parts[0]), RvIs(CKR_PIN_INVALID));
  EXPECT_THAT(Parse(token + ".x"), RvIs(CKR_PIN_INVALID));
  EXPECT_THAT(Parse(token + "."), RvIs(CKR_PIN_INVALID));
  EXPECT_THAT(Parse(""), RvIs(CKR_PIN_INVALID));
  EXPECT_THAT(Parse(".."), RvIs(CKR_PIN_INVALID));
  EXPECT_THAT(Parse("." + parts[1] + "." + parts[2]), RvIs(CKR_PIN_INVALID));
  EXPECT_THAT(Parse(parts[0] + ".." + parts[2]), RvIs(CKR_PIN_INVALID));
  // Padding or standard-alphabet characters in a part.
  EXPECT_THAT(Parse(parts[0] + "=." + parts[1] + "." + parts[2]), RvIs(CKR_PIN_INVALID));
  EXPECT_THAT(Parse(" " + token), RvIs(CKR_PIN_INVALID));
}

TEST_F(JwtTest, OversizedTokenIsRefusedBeforeDecoding) {
  // Not even valid base64url: the size check must come first.
  std::string huge(kMaxTokenBytes + 1, '!');
  huge[10] = '.';
  huge[20] = '.';
  auto r = Parse(huge);
  EXPECT_THAT(r, RvIs(CKR_PIN_INVALID));
  EXPECT_THAT(r.error().message, HasSubstr("too long"));

  // A well-formed token just over the limit.
  Json claims = GoodClaims();
  claims["pad"] = std::string(kMaxTokenBytes, 'a');
  std::string big = Handmade(R"({"alg":"RS256"})", claims.dump(), Bytes(256, 1));
  ASSERT_GT(big.size(), kMaxTokenBytes);
  EXPECT_THAT(Parse(big), RvIs(CKR_PIN_INVALID));
  // And Sign refuses to make a token Parse would refuse.
  EXPECT_THAT(Sign(nullptr, claims, rsa_.get(), kRs256), RvIs(CKR_ARGUMENTS_BAD));
}

TEST_F(JwtTest, MalformedHeaderOrPayloadIsPinInvalid) {
  const std::string claims = GoodClaims().dump();
  const std::string header = R"({"alg":"RS256"})";
  const Bytes sig(256, 1);
  const std::pair<std::string, std::string> cases[] = {
      {"not json", claims},
      {"[\"alg\",\"RS256\"]", claims},                        // header not an object
      {"\"RS256\"", claims},                                  // header a string
      {"", claims},                                           // empty header
      {header + " x", claims},                                // trailing garbage
      {R"({"alg":"RS256"})", "[1,2,3]"},                      // payload not an object
      {R"({"alg":"RS256"})", "not json"},                     // payload not JSON
      {R"({"alg":"RS256"})", ""},                             // empty payload
      {R"({"typ":"JWT"})", claims},                           // no alg
      {R"({"alg":256})", claims},                             // alg not a string
      {R"({"alg":null})", claims},                            // alg null
      {R"({"alg":"RS256","alg":"none"})", claims},            // duplicate header member
      {header, R"({"sub":"a","sub":"admin","exp":1})"},       // duplicate claim
      {header, R"({"x":{"k":1,"k":2},"exp":1})"},             // duplicate nested member
      {R"({"alg":"RS256","crit":["exp"],"exp":1})", claims},  // critical extension
      {R"({"alg":"RS256","b64":false,"crit":["b64"]})", claims},
      {"{\"alg\":\"RS256\",\"kid\":\"\xff\"}", claims},       // not UTF-8
      {header, std::string(40, '[') + std::string(40, ']')},  // too deep (and not an object)
      {header, R"({"a":)" + std::string(40, '[') + std::string(40, ']') + "}"},  // too deep
  };
  for (const auto& [h, p] : cases) {
    std::string token = Handmade(h, p, sig);
    auto r = Parse(token);
    EXPECT_THAT(r, RvIs(CKR_PIN_INVALID)) << h << " / " << p;
    if (!r.ok()) {
      // The message never quotes the token.
      auto parts = Split(token);
      for (const auto& part : parts) {
        if (part.size() >= 4) {
          EXPECT_THAT(r.error().message, Not(HasSubstr(part)));
        }
      }
    }
  }
}

TEST_F(JwtTest, NestingWithinLimitParses) {
  std::string nested = R"({"exp":1,"a":)" + std::string(20, '[') + std::string(20, ']') + "}";
  EXPECT_OK(Parse(Handmade(R"({"alg":"RS256"})", nested, Bytes(256, 1))));
}

// ---- claims -----------------------------------------------------------------------------------

TEST(CheckClaimsTest, ValidClaimsPass) {
  EXPECT_OK(CheckClaims(WithClaims(GoodClaims()), GoodRules(), kNow));
  // Empty rules check only the times.
  EXPECT_OK(CheckClaims(WithClaims(Json{{"exp", kNowSeconds + 10}}), ClaimRules{}, kNow));
}

TEST(CheckClaimsTest, ExpiryHonoursLeeway) {
  Json c = GoodClaims();
  c["exp"] = kNowSeconds - 61;  // beyond the 60 s leeway
  auto st = CheckClaims(WithClaims(c), GoodRules(), kNow);
  EXPECT_THAT(st, RvIs(CKR_PIN_INCORRECT));
  EXPECT_THAT(st.error().message, HasSubstr("expired"));
  c["exp"] = kNowSeconds - 60;  // exactly at the edge: now >= exp + leeway
  EXPECT_THAT(CheckClaims(WithClaims(c), GoodRules(), kNow), RvIs(CKR_PIN_INCORRECT));
  c["exp"] = kNowSeconds - 30;  // within the leeway
  EXPECT_OK(CheckClaims(WithClaims(c), GoodRules(), kNow));
  ClaimRules strict = GoodRules();
  strict.leeway = std::chrono::seconds(0);
  EXPECT_THAT(CheckClaims(WithClaims(c), strict, kNow), RvIs(CKR_PIN_INCORRECT));
  strict.leeway = std::chrono::seconds(-100);  // negative leeway is treated as none
  c["exp"] = kNowSeconds + 1;
  EXPECT_OK(CheckClaims(WithClaims(c), strict, kNow));
}

TEST(CheckClaimsTest, NotBeforeHonoursLeeway) {
  Json c = GoodClaims();
  c["nbf"] = kNowSeconds + 61;
  auto st = CheckClaims(WithClaims(c), GoodRules(), kNow);
  EXPECT_THAT(st, RvIs(CKR_PIN_INCORRECT));
  EXPECT_THAT(st.error().message, HasSubstr("not yet valid"));
  c["nbf"] = kNowSeconds + 30;
  EXPECT_OK(CheckClaims(WithClaims(c), GoodRules(), kNow));
  c["nbf"] = "soon";
  EXPECT_THAT(CheckClaims(WithClaims(c), GoodRules(), kNow), RvIs(CKR_PIN_INCORRECT));
}

TEST(CheckClaimsTest, IssuedInTheFutureIsRefused) {
  Json c = GoodClaims();
  c["iat"] = kNowSeconds + 120;
  EXPECT_THAT(CheckClaims(WithClaims(c), GoodRules(), kNow), RvIs(CKR_PIN_INCORRECT));
  c["iat"] = kNowSeconds + 30;
  EXPECT_OK(CheckClaims(WithClaims(c), GoodRules(), kNow));
  c["iat"] = Json::array();
  EXPECT_THAT(CheckClaims(WithClaims(c), GoodRules(), kNow), RvIs(CKR_PIN_INCORRECT));
}

TEST(CheckClaimsTest, AudienceStringOrArray) {
  Json c = GoodClaims();
  c["aud"] = "https://other.example/token";
  auto st = CheckClaims(WithClaims(c), GoodRules(), kNow);
  EXPECT_THAT(st, RvIs(CKR_PIN_INCORRECT));
  EXPECT_THAT(st.error().message, HasSubstr("wrong audience"));
  c["aud"] = Json::array({"https://other.example", "https://vault.example/token"});
  EXPECT_OK(CheckClaims(WithClaims(c), GoodRules(), kNow));
  c["aud"] = Json::array({"https://other.example"});
  EXPECT_THAT(CheckClaims(WithClaims(c), GoodRules(), kNow), RvIs(CKR_PIN_INCORRECT));
  c["aud"] = Json::array();
  EXPECT_THAT(CheckClaims(WithClaims(c), GoodRules(), kNow), RvIs(CKR_PIN_INCORRECT));
  c["aud"] = Json::array({"https://vault.example/token", 7});
  EXPECT_THAT(CheckClaims(WithClaims(c), GoodRules(), kNow), RvIs(CKR_PIN_INCORRECT));
  c["aud"] = 7;
  EXPECT_THAT(CheckClaims(WithClaims(c), GoodRules(), kNow), RvIs(CKR_PIN_INCORRECT));
  c.erase("aud");
  EXPECT_THAT(CheckClaims(WithClaims(c), GoodRules(), kNow), RvIs(CKR_PIN_INCORRECT));
}

TEST(CheckClaimsTest, IssuerAndSubjectMustMatch) {
  Json c = GoodClaims();
  c["iss"] = "client-2";
  auto st = CheckClaims(WithClaims(c), GoodRules(), kNow);
  EXPECT_THAT(st, RvIs(CKR_PIN_INCORRECT));
  EXPECT_THAT(st.error().message, HasSubstr("wrong issuer \"client-2\""));
  c = GoodClaims();
  c["sub"] = "client-2";
  st = CheckClaims(WithClaims(c), GoodRules(), kNow);
  EXPECT_THAT(st, RvIs(CKR_PIN_INCORRECT));
  EXPECT_THAT(st.error().message, HasSubstr("subject"));
  c = GoodClaims();
  c.erase("iss");
  EXPECT_THAT(CheckClaims(WithClaims(c), GoodRules(), kNow), RvIs(CKR_PIN_INCORRECT));
  c = GoodClaims();
  c["sub"] = Json::object();
  EXPECT_THAT(CheckClaims(WithClaims(c), GoodRules(), kNow), RvIs(CKR_PIN_INCORRECT));
}

TEST(CheckClaimsTest, LongClaimValuesAreNotEchoed) {
  Json c = GoodClaims();
  std::string long_iss(100, 'x');
  c["iss"] = long_iss;
  auto st = CheckClaims(WithClaims(c), GoodRules(), kNow);
  EXPECT_THAT(st, RvIs(CKR_PIN_INCORRECT));
  EXPECT_THAT(st.error().message, Not(HasSubstr(std::string(65, 'x'))));
  EXPECT_THAT(st.error().message, HasSubstr("(100 chars)"));
  c["iss"] = "client\n-2";  // control characters are not echoed either
  st = CheckClaims(WithClaims(c), GoodRules(), kNow);
  EXPECT_THAT(st.error().message, Not(HasSubstr("\n")));
}

TEST(CheckClaimsTest, MaxLifetime) {
  ClaimRules rules = GoodRules();
  rules.max_lifetime = std::chrono::seconds(300);
  Json c = GoodClaims();
  c["exp"] = kNowSeconds + 300;
  EXPECT_OK(CheckClaims(WithClaims(c), rules, kNow));
  c["exp"] = kNowSeconds + 360;  // within lifetime + leeway
  EXPECT_OK(CheckClaims(WithClaims(c), rules, kNow));
  c["exp"] = kNowSeconds + 361;
  auto st = CheckClaims(WithClaims(c), rules, kNow);
  EXPECT_THAT(st, RvIs(CKR_PIN_INCORRECT));
  EXPECT_THAT(st.error().message, HasSubstr("lifetime"));
  // Absurd dates neither overflow nor pass.
  c["exp"] = 1e300;
  EXPECT_THAT(CheckClaims(WithClaims(c), rules, kNow), RvIs(CKR_PIN_INCORRECT));
  c["exp"] = UINT64_MAX;
  EXPECT_THAT(CheckClaims(WithClaims(c), rules, kNow), RvIs(CKR_PIN_INCORRECT));
  EXPECT_OK(CheckClaims(WithClaims(c), GoodRules(), kNow));  // no lifetime rule: far future ok
}

TEST(CheckClaimsTest, ExpRequiredAndNumeric) {
  Json c = GoodClaims();
  c.erase("exp");
  auto st = CheckClaims(WithClaims(c), GoodRules(), kNow);
  EXPECT_THAT(st, RvIs(CKR_PIN_INCORRECT));
  EXPECT_THAT(st.error().message, HasSubstr("exp"));
  for (Json bad : {Json(std::to_string(kNowSeconds + 300)), Json(true), Json(nullptr),
                   Json::array({kNowSeconds + 300})}) {
    c["exp"] = bad;
    EXPECT_THAT(CheckClaims(WithClaims(c), GoodRules(), kNow), RvIs(CKR_PIN_INCORRECT)) << bad;
  }
  c["exp"] = static_cast<double>(kNowSeconds) + 300.5;  // NumericDate may be fractional
  EXPECT_OK(CheckClaims(WithClaims(c), GoodRules(), kNow));
  c["exp"] = -5;
  EXPECT_THAT(CheckClaims(WithClaims(c), GoodRules(), kNow), RvIs(CKR_PIN_INCORRECT));
}

TEST(CheckClaimsTest, JtiWhenRequired) {
  ClaimRules rules = GoodRules();
  rules.require_jti = true;
  EXPECT_OK(CheckClaims(WithClaims(GoodClaims()), rules, kNow));
  Json c = GoodClaims();
  c.erase("jti");
  EXPECT_OK(CheckClaims(WithClaims(c), GoodRules(), kNow));  // not required: fine
  EXPECT_THAT(CheckClaims(WithClaims(c), rules, kNow), RvIs(CKR_PIN_INCORRECT));
  for (Json bad : {Json(""), Json(std::string(257, 'j')), Json(42)}) {
    c["jti"] = bad;
    EXPECT_THAT(CheckClaims(WithClaims(c), rules, kNow), RvIs(CKR_PIN_INCORRECT));
  }
  c["jti"] = std::string(256, 'j');
  EXPECT_OK(CheckClaims(WithClaims(c), rules, kNow));
}

TEST(CheckClaimsTest, ClaimsNotAnObject) {
  EXPECT_THAT(CheckClaims(Token{}, GoodRules(), kNow), RvIs(CKR_PIN_INCORRECT));
}

// ---- JWKS -----------------------------------------------------------------------------------

using testing::EcJwk;
using testing::RsaJwk;

TEST_F(JwtTest, JwksKeysVerifyTokensOfTheirOwners) {
  Json rsa = RsaJwk(rsa_.get());
  rsa["kid"] = "rsa-1";
  rsa["use"] = "sig";
  rsa["alg"] = "RS256";
  Json ec = EcJwk(ec_.get());
  ec["kid"] = "ec-1";
  Json doc{{"keys", Json::array({rsa, ec})}};
  ASSERT_OK_AND_ASSIGN(std::vector<Jwk> keys, ParseJwks(doc.dump()));
  ASSERT_EQ(keys.size(), 2u);
  EXPECT_EQ(keys[0].kid, "rsa-1");
  EXPECT_EQ(keys[0].alg, "RS256");
  EXPECT_EQ(keys[1].kid, "ec-1");
  EXPECT_EQ(keys[1].alg, "");
  EXPECT_EQ(EVP_PKEY_eq(keys[0].key.get(), rsa_.get()), 1);
  EXPECT_EQ(EVP_PKEY_eq(keys[1].key.get(), ec_.get()), 1);

  for (std::string_view alg : {kRs256, kPs256}) {
    ASSERT_OK_AND_ASSIGN(Token t, Parse(MustSign(alg)));
    EXPECT_OK(Verify(t, keys[0].key.get(), kAllAlgs));
    EXPECT_THAT(Verify(t, keys[1].key.get(), kAllAlgs), RvIs(CKR_PIN_INCORRECT));
  }
  ASSERT_OK_AND_ASSIGN(Token t, Parse(MustSign(kEs256)));
  EXPECT_OK(Verify(t, keys[1].key.get(), kAllAlgs));
  EXPECT_THAT(Verify(t, keys[0].key.get(), kAllAlgs), RvIs(CKR_PIN_INCORRECT));
}

TEST_F(JwtTest, JwksSkipsKeysWeDoNotUse) {
  Json enc = RsaJwk(rsa2_.get());
  enc["use"] = "enc";
  Json p384 = EcJwk(ec_.get());
  p384["crv"] = "P-384";  // skipped before its coordinates are even looked at
  Json doc{{"keys", Json::array({
                        {{"kty", "OKP"},
                         {"crv", "Ed25519"},
                         {"x", "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}},
                        {{"kty", "oct"}, {"k", "c2VjcmV0"}},
                        enc,
                        p384,
                        RsaJwk(rsa_.get()),
                    })}};
  ASSERT_OK_AND_ASSIGN(std::vector<Jwk> keys, ParseJwks(doc.dump()));
  ASSERT_EQ(keys.size(), 1u);
  EXPECT_EQ(EVP_PKEY_eq(keys[0].key.get(), rsa_.get()), 1);
  ASSERT_OK_AND_ASSIGN(std::vector<Jwk> none, ParseJwks(R"({"keys":[]})"));
  EXPECT_TRUE(none.empty());
}

TEST_F(JwtTest, MalformedJwksIsRefusedNamingTheKey) {
  Json good_rsa = RsaJwk(rsa_.get());
  Json good_ec = EcJwk(ec_.get());
  auto with_second = [&](Json bad) { return Json{{"keys", Json::array({good_rsa, bad})}}.dump(); };

  for (std::string_view doc : {"", "not json", "[]", "{}", R"({"keys":{}})", R"({"keys":"x"})",
                               R"({"keys":[],"keys":[]})"}) {
    EXPECT_THAT(ParseJwks(doc), RvIs(CKR_FUNCTION_FAILED)) << doc;
  }

  std::vector<Json> bad_keys;
  bad_keys.push_back(1);
  bad_keys.push_back(Json{{"n", good_rsa["n"]}, {"e", good_rsa["e"]}});  // no kty
  bad_keys.push_back(Json{{"kty", 7}});
  Json j = good_rsa;
  j.erase("n");
  bad_keys.push_back(j);
  j = good_rsa;
  j["e"] = "";
  bad_keys.push_back(j);
  j = good_rsa;
  j["n"] = "abc+def";  // standard alphabet
  bad_keys.push_back(j);
  j = good_rsa;
  j["n"] = Base64UrlEncode(Bytes(2049, 0xff));  // over 16384 bits
  bad_keys.push_back(j);
  j = good_rsa;
  j["kid"] = 5;
  bad_keys.push_back(j);
  j = good_rsa;
  j["use"] = true;
  bad_keys.push_back(j);
  j = good_ec;
  j.erase("crv");
  bad_keys.push_back(j);
  j = good_ec;
  j["x"] = Base64UrlEncode(Bytes(31, 1));
  bad_keys.push_back(j);
  j = good_ec;
  j.erase("y");
  bad_keys.push_back(j);
  // A point off the curve: flip a bit of y.
  {
    ASSERT_OK_AND_ASSIGN(Bytes y, Base64UrlDecode(good_ec["y"].get<std::string>()));
    y[31] ^= 1;
    j = good_ec;
    j["y"] = Base64UrlEncode(y);
    bad_keys.push_back(j);
  }
  for (const Json& bad : bad_keys) {
    auto r = ParseJwks(with_second(bad));
    EXPECT_THAT(r, RvIs(CKR_FUNCTION_FAILED)) << bad.dump().substr(0, 80);
    if (!r.ok()) {
      EXPECT_THAT(r.error().message, HasSubstr("key 1")) << r.error().message;
    }
  }
}

TEST(JwksTest, OversizedJwksIsRefused) {
  std::string doc = R"({"keys":[],"pad":")" + std::string(kMaxJwksBytes, 'a') + "\"}";
  EXPECT_THAT(ParseJwks(doc), RvIs(CKR_FUNCTION_FAILED));
}

// RFC 7515 appendix A.2 (RS256) and A.3 (ES256): tokens and public keys from the RFC, so the
// encoding conventions (PKCS#1 v1.5 DigestInfo, JOSE r||s) are checked against other
// implementations, not only against ourselves.
constexpr std::string_view kRfcPayload =
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlf"
    "Q";
constexpr std::string_view kRfcA2Token =
    "eyJhbGciOiJSUzI1NiJ9."
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
    "."
    "cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_"
    "O8W2Fp5jujG"
    "bds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_"
    "nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K"
    "0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-"
    "eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6"
    "LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";
constexpr std::string_view kRfcA2N =
    "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-"
    "4qPCJrcS2mJPMEzP1Pt0Bm4d4Ql"
    "L-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-"
    "bSf63kpaSHSXndS5z5rexMdbBYUs"
    "LA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-"
    "DWNmoud"
    "F8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";
constexpr std::string_view kRfcA3Token =
    "eyJhbGciOiJFUzI1NiJ9."
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
    "."
    "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";

TEST(JwksTest, Rfc7515AppendixAVectorsVerify) {
  Json doc{{"keys", Json::array({
                        {{"kty", "RSA"}, {"n", kRfcA2N}, {"e", "AQAB"}},
                        {{"kty", "EC"},
                         {"crv", "P-256"},
                         {"x", "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU"},
                         {"y", "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}},
                    })}};
  ASSERT_OK_AND_ASSIGN(std::vector<Jwk> keys, ParseJwks(doc.dump()));
  ASSERT_EQ(keys.size(), 2u);

  ASSERT_OK_AND_ASSIGN(Token a2, Parse(kRfcA2Token));
  EXPECT_EQ(a2.claims["iss"], "joe");
  EXPECT_EQ(a2.claims["exp"], 1300819380);
  EXPECT_EQ(a2.claims["http://example.com/is_root"], true);
  EXPECT_OK(Verify(a2, keys[0].key.get(), kAllAlgs));
  EXPECT_THAT(Verify(a2, keys[1].key.get(), kAllAlgs), RvIs(CKR_PIN_INCORRECT));

  ASSERT_OK_AND_ASSIGN(Token a3, Parse(kRfcA3Token));
  EXPECT_EQ(a3.signing_input, "eyJhbGciOiJFUzI1NiJ9." + std::string(kRfcPayload));
  EXPECT_OK(Verify(a3, keys[1].key.get(), kAllAlgs));
  EXPECT_THAT(Verify(a3, keys[0].key.get(), kAllAlgs), RvIs(CKR_PIN_INCORRECT));

  // Both expired in 2011.
  EXPECT_THAT(CheckClaims(a2, ClaimRules{}, kNow), RvIs(CKR_PIN_INCORRECT));
}

// ---- Sign refusals ---------------------------------------------------------------------------

TEST_F(JwtTest, SignRefusesBadArguments) {
  const Json claims = GoodClaims();
  for (std::string_view alg : {"none", "HS256", "RS512", ""}) {
    EXPECT_THAT(Sign(nullptr, claims, rsa_.get(), alg), RvIs(CKR_ARGUMENTS_BAD)) << alg;
  }
  EXPECT_THAT(Sign(nullptr, claims, nullptr, kRs256), RvIs(CKR_ARGUMENTS_BAD));
  EXPECT_THAT(Sign(Json::array(), claims, rsa_.get(), kRs256), RvIs(CKR_ARGUMENTS_BAD));
  EXPECT_THAT(Sign(nullptr, Json("sub"), rsa_.get(), kRs256), RvIs(CKR_ARGUMENTS_BAD));
  EXPECT_THAT(Sign(nullptr, Json{{"sub", "\xff"}}, rsa_.get(), kRs256), RvIs(CKR_ARGUMENTS_BAD));
  EXPECT_THAT(Sign(nullptr, claims, rsa_.get(), kEs256), RvIs(CKR_KEY_TYPE_INCONSISTENT));
  EXPECT_THAT(Sign(nullptr, claims, ec_.get(), kRs256), RvIs(CKR_KEY_TYPE_INCONSISTENT));
  EXPECT_THAT(Sign(nullptr, claims, ec384_.get(), kEs256), RvIs(CKR_KEY_TYPE_INCONSISTENT));
  EXPECT_THAT(Sign(nullptr, claims, rsa1024_.get(), kPs256), RvIs(CKR_KEY_TYPE_INCONSISTENT));
  ASSERT_OK_AND_ASSIGN(ossl::PkeyRef pub, ossl::PublicFromPrivate(ec_.get()));
  EXPECT_FALSE(Sign(nullptr, claims, pub.get(), kEs256).ok());
}

// ---- thumbprint -------------------------------------------------------------------------------

TEST(ThumbprintTest, MatchesOpensslCli) {
  // printf '\x30\x03\x02\x01\x01' | openssl dgst -sha256 -binary | basenc --base64url | tr -d =
  ASSERT_OK_AND_ASSIGN(std::string t,
                       CertificateThumbprint(vaultp11::testing::Hex("30 03 02 01 01")));
  EXPECT_EQ(t, "G2X2ilIshYcV9d2VHNBALcFmkXeIFL8HWYIreiV0IdA");
  ASSERT_OK_AND_ASSIGN(std::string empty, CertificateThumbprint({}));
  EXPECT_EQ(empty, "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU");
}

}  // namespace
}  // namespace vaultp11::auth::jwt

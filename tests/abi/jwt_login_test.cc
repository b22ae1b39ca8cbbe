// JWT logins through the function list: client assertions (RFC 7523) of client-certificate
// principals and OAuth2 bearer tokens, each accepted when right and refused with
// CKR_PIN_INCORRECT for every way of being wrong, malformed tokens included (spec C_Login),
// replays included (also from another process on the same store).
#include <unistd.h>

#include <fstream>
#include <functional>
#include <sstream>

#include "config/config.h"
#include "core/authenticate.h"
#include "fixture.h"
#include "jwt_keys.h"
#include "store/store.h"

namespace vaultp11::testing {
namespace {

using Json = nlohmann::json;

int64_t Now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

class JwtLoginTest : public AbiTest {
 protected:
  void SetUp() override {
    LoadModule();
    rsa = NewKey("RSA");
    ec = NewKey("EC");
    other = NewKey("EC");
    idp_rsa = NewKey("RSA");
    idp_ec = NewKey("EC");
    auto cert = SelfSigned(rsa.get(), "svc", -1, 30);
    auto ec_cert = SelfSigned(ec.get(), "edge", -1, 30);
    auto expired = SelfSigned(other.get(), "stale", -30, -1);
    thumb = auth::jwt::CertificateThumbprint(Der(cert.get())).value();
    ec_thumb = auth::jwt::CertificateThumbprint(Der(ec_cert.get())).value();
    expired_thumb = auth::jwt::CertificateThumbprint(Der(expired.get())).value();
    WritePem(dir.file("svc.crt"), cert.get());
    WritePem(dir.file("edge.crt"), ec_cert.get());
    WritePem(dir.file("stale.crt"), expired.get());
    Json a = RsaJwk(idp_rsa.get()), b = EcJwk(idp_ec.get());
    a["kid"] = "rsa-1";
    b["kid"] = "ec-1";
    std::ofstream(dir.file("jwks.json")) << Json{{"keys", {a, b}}}.dump();
    config_path = WriteConfig(
        "  - { principal: svc, role: Key Vault Administrator, scope: /vaults/payments }\n"
        "  - { principal: edge, role: Key Vault Reader, scope: /vaults/payments }\n"
        "  - { principal: stale, role: Key Vault Administrator, scope: /vaults/payments }\n"
        "  - { principal: ci, role: Key Vault Crypto User, scope: /vaults/payments }\n"
        "  - { principal: mail, role: Key Vault Reader, scope: /vaults/payments }\n",
        "login: { max_failures: 0, delay_ms: 0 }\n",  // many refusals in a row here
        "{ name: archive }",
        "  - { name: svc, auth: client_certificate, certificate_file: " + dir.file("svc.crt") + " }\n"
        "  - { name: edge, auth: client_certificate, certificate_file: " + dir.file("edge.crt") + " }\n"
        "  - { name: stale, auth: client_certificate, certificate_file: " + dir.file("stale.crt") + " }\n"
        "  - { name: ci, auth: oauth2, issuer: \"https://idp.example\", audience: vaultp11-test, jwks_file: " +
            dir.file("jwks.json") + ", leeway_seconds: 30 }\n"
        "  - { name: mail, auth: oauth2, issuer: \"https://idp.example\", audience: vaultp11-test, jwks_file: " +
            dir.file("jwks.json") + ", claim: email, subject: ops@example.com }\n");
    ASSERT_EQ(InitWith(config_path), CKR_OK);
    auto c = config::LoadFile(config_path);
    ASSERT_TRUE(c.ok());
    auto st = store::Store::Open(c->store.path, c->store.master_key_file, false);
    ASSERT_TRUE(st.ok());
    resource = core::ResourceId(*c, (*st)->DeploymentId().value(), "payments");
  }

  // A client assertion for `who` signed by `key`; `edit` changes the claims or header.
  std::string Assertion(const std::string& who, EVP_PKEY* key, const std::string& x5t, const std::string& alg,
                        const std::function<void(Json&, Json&)>& edit = {}) {
    Json header = {{"x5t#S256", x5t}};
    Json claims = {{"iss", who}, {"sub", who}, {"aud", resource}, {"iat", Now()},
                   {"exp", Now() + 300}, {"jti", "jti-" + std::to_string(++counter)}};
    if (edit) edit(header, claims);
    auto t = auth::jwt::Sign(header, claims, key, alg);
    EXPECT_TRUE(t.ok());
    return t.ok() ? *t : "";
  }

  std::string Bearer(EVP_PKEY* key, const std::string& alg, const std::string& kid,
                     const std::function<void(Json&)>& edit = {}) {
    Json claims = {{"iss", "https://idp.example"}, {"sub", "ci"}, {"aud", "vaultp11-test"},
                   {"exp", Now() + 600}, {"nbf", Now() - 10}};
    if (edit) edit(claims);
    auto t = auth::jwt::Sign(Json{{"kid", kid}}, claims, key, alg);
    EXPECT_TRUE(t.ok());
    return t.ok() ? *t : "";
  }

  CK_RV LoginWith(const std::string& pin) {
    CK_SESSION_HANDLE s = OpenRo(0);
    CK_RV rv = f->C_Login(s, CKU_USER, reinterpret_cast<CK_UTF8CHAR_PTR>(const_cast<char*>(pin.data())), pin.size());
    if (rv == CKR_OK) f->C_Logout(s);
    f->C_CloseSession(s);
    return rv;
  }

  EvpPkeyPtr rsa, ec, other, idp_rsa, idp_ec;
  std::string thumb, ec_thumb, expired_thumb, resource;
  int counter = 0;
};

TEST_F(JwtLoginTest, ClientAssertionsLogInAndEveryFlawIsRefused) {
  EXPECT_EQ(LoginWith(Assertion("svc", rsa.get(), thumb, "RS256")), CKR_OK);
  EXPECT_EQ(LoginWith(Assertion("svc", rsa.get(), thumb, "PS256")), CKR_OK);
  EXPECT_EQ(LoginWith(Assertion("edge", ec.get(), ec_thumb, "ES256")), CKR_OK);
  // Signed with another key than the certificate's.
  EXPECT_EQ(LoginWith(Assertion("edge", other.get(), ec_thumb, "ES256")), CKR_PIN_INCORRECT);
  // Another certificate's thumbprint.
  EXPECT_EQ(LoginWith(Assertion("svc", rsa.get(), ec_thumb, "RS256")), CKR_PIN_INCORRECT);
  // Expired, not yet valid, too long-lived, wrong audience, iss != sub, no jti.
  auto claims = [&](const std::function<void(Json&)>& e) {
    return Assertion("svc", rsa.get(), thumb, "RS256", [&](Json&, Json& c) { e(c); });
  };
  EXPECT_EQ(LoginWith(claims([](Json& c) { c["exp"] = Now() - 120; })), CKR_PIN_INCORRECT);
  EXPECT_EQ(LoginWith(claims([](Json& c) { c["nbf"] = Now() + 600; })), CKR_PIN_INCORRECT);
  EXPECT_EQ(LoginWith(claims([](Json& c) { c["exp"] = Now() + 3600; })), CKR_PIN_INCORRECT);
  EXPECT_EQ(LoginWith(claims([](Json& c) { c["aud"] = "vaultp11://elsewhere/vaults/payments"; })), CKR_PIN_INCORRECT);
  EXPECT_EQ(LoginWith(claims([](Json& c) { c["sub"] = "edge"; })), CKR_PIN_INCORRECT);
  EXPECT_EQ(LoginWith(claims([](Json& c) { c.erase("jti"); })), CKR_PIN_INCORRECT);
  // The registered certificate has expired.
  EXPECT_EQ(LoginWith(Assertion("stale", other.get(), expired_thumb, "ES256")), CKR_PIN_INCORRECT);
  // alg none, and HS256 keyed with the certificate's public key.
  auto b64 = [](const std::string& s) { return auth::jwt::Base64UrlEncode(std::span(reinterpret_cast<const uint8_t*>(s.data()), s.size())); };
  Json c = {{"iss", "svc"}, {"sub", "svc"}, {"aud", resource}, {"exp", Now() + 300}, {"jti", "none-1"}};
  EXPECT_EQ(
      LoginWith(b64(Json{{"alg", "none"}, {"x5t#S256", thumb}}.dump()) + "." + b64(c.dump()) + "."),
      CKR_PIN_INCORRECT);
  EXPECT_EQ(LoginWith(b64(Json{{"alg", "HS256"}, {"x5t#S256", thumb}}.dump()) + "." +
                      b64(c.dump()) + ".c2lnbmF0dXJl"),
            CKR_PIN_INCORRECT);
  // Truncated and oversized tokens.
  std::string good = Assertion("svc", rsa.get(), thumb, "RS256");
  // A shorter signature, or bad base64url.
  EXPECT_EQ(LoginWith(good.substr(0, good.size() - 1)), CKR_PIN_INCORRECT);
  EXPECT_EQ(LoginWith(good.substr(0, good.rfind('.'))), CKR_PIN_INCORRECT);
  EXPECT_EQ(LoginWith(good + std::string(17000, 'A')), CKR_PIN_INCORRECT);
  EXPECT_EQ(LoginWith("not-a-token"), CKR_PIN_INCORRECT);
}

TEST_F(JwtLoginTest, AnAssertionIsUsedOnceEvenAcrossProcesses) {
  std::string once = Assertion("svc", rsa.get(), thumb, "RS256");
  std::string twice = Assertion("svc", rsa.get(), thumb, "RS256");
  ASSERT_EQ(LoginWith(once), CKR_OK);
  EXPECT_EQ(LoginWith(once), CKR_PIN_INCORRECT);  // replay in this process
  // Another process on the same store: the replay is refused there too, a fresh one works.
  // (abi_child, started by fork + exec: see child_main.cc.)
  EXPECT_EQ(RunChild({"init", "0", "open-ro", "login", std::to_string(CKR_PIN_INCORRECT), once,
                      "login", "0", twice}),
            0);
  EXPECT_EQ(LoginWith(twice), CKR_PIN_INCORRECT);  // the child used it
}

TEST_F(JwtLoginTest, BearerTokensLogInAndEveryFlawIsRefused) {
  EXPECT_EQ(LoginWith(Bearer(idp_rsa.get(), "RS256", "rsa-1")), CKR_OK);
  EXPECT_EQ(LoginWith(Bearer(idp_ec.get(), "ES256", "ec-1")), CKR_OK);
  // A custom claim naming the principal.
  EXPECT_EQ(LoginWith(Bearer(idp_ec.get(), "ES256", "ec-1", [](Json& c) { c["email"] = "ops@example.com"; c["sub"] = "x"; })),
            CKR_OK);
  // PS256 is not accepted for bearer tokens; a key not in the JWKS; the wrong kid.
  EXPECT_NE(LoginWith(Bearer(idp_rsa.get(), "PS256", "rsa-1")), CKR_OK);
  EXPECT_EQ(LoginWith(Bearer(other.get(), "ES256", "ec-1")), CKR_PIN_INCORRECT);
  EXPECT_EQ(LoginWith(Bearer(idp_ec.get(), "ES256", "rsa-1")), CKR_PIN_INCORRECT);
  // Wrong issuer, wrong audience, expired beyond the leeway, not yet valid, unknown subject.
  auto with = [&](const std::function<void(Json&)>& e) { return LoginWith(Bearer(idp_rsa.get(), "RS256", "rsa-1", e)); };
  EXPECT_EQ(with([](Json& c) { c["iss"] = "https://evil.example"; }), CKR_PIN_INCORRECT);
  EXPECT_EQ(with([](Json& c) { c["aud"] = "someone-else"; }), CKR_PIN_INCORRECT);
  EXPECT_EQ(with([](Json& c) { c["exp"] = Now() - 60; }), CKR_PIN_INCORRECT);
  EXPECT_EQ(with([](Json& c) { c["exp"] = Now() - 10; }), CKR_OK);  // within the 30 s leeway
  EXPECT_EQ(with([](Json& c) { c["nbf"] = Now() + 600; }), CKR_PIN_INCORRECT);
  EXPECT_EQ(with([](Json& c) { c["sub"] = "nobody"; }), CKR_PIN_INCORRECT);
  // HS256 signed with the identity provider's public key as the HMAC secret.
  auto b64 = [](const std::string& s) { return auth::jwt::Base64UrlEncode(std::span(reinterpret_cast<const uint8_t*>(s.data()), s.size())); };
  Json c = {{"iss", "https://idp.example"}, {"sub", "ci"}, {"aud", "vaultp11-test"}, {"exp", Now() + 600}};
  EXPECT_EQ(LoginWith(b64(Json{{"alg", "HS256"}, {"kid", "rsa-1"}}.dump()) + "." + b64(c.dump()) +
                      ".c2ln"),
            CKR_PIN_INCORRECT);
  EXPECT_EQ(LoginWith(b64(Json{{"alg", "none"}}.dump()) + "." + b64(c.dump()) + "."),
            CKR_PIN_INCORRECT);
}

}  // namespace
}  // namespace vaultp11::testing

#include "core/authenticate.h"

#include <openssl/x509.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <sstream>
#include <vector>

#include "auth/jwt.h"
#include "auth/secret_hash.h"
#include "auth/throttle.h"
#include "util/file_check.h"
#include "util/log.h"
#include "util/ossl_ptr.h"

namespace vaultp11::core {
namespace {

using Clock = std::chrono::system_clock;

// An assertion may live at most this long (RFC 7523 leaves it to the verifier).
constexpr std::chrono::seconds kMaxAssertionLifetime{600};
constexpr std::chrono::seconds kAssertionLeeway{60};
constexpr std::string_view kAssertionAlgs[] = {auth::jwt::kRs256, auth::jwt::kPs256, auth::jwt::kEs256};
constexpr std::string_view kOAuthAlgs[] = {auth::jwt::kRs256, auth::jwt::kEs256};

// The configured client secrets' hashes (their cost decides the dummy's).
std::vector<std::string> SecretHashes(const config::Config& cfg) {
  std::vector<std::string> out;
  for (const auto& pr : cfg.principals)
    if (pr.auth == "client_secret")
      for (const auto& s : pr.secrets) out.push_back(s.hash);
  return out;
}

// Checks "principal:secret" against the principal's configured secrets. For an unknown
// principal a dummy hash is verified at the configured secrets' most common cost (not the
// default cost), so the time taken does not tell which principals exist.
Result<std::string> ClientSecret(const config::Config& cfg, std::span<const uint8_t> pin) {
  auto colon = std::find(pin.begin(), pin.end(), ':');
  if (colon == pin.end() || colon == pin.begin() || colon + 1 == pin.end())
    return Err(CKR_PIN_INCORRECT, "login failed: the PIN must be principal:secret");
  std::string name(pin.begin(), colon);
  std::span<const uint8_t> secret(colon + 1, pin.end());
  const config::PrincipalConfig* pr = cfg.FindPrincipal(name);
  if (pr == nullptr || pr->auth != "client_secret") {
    (void)auth::VerifySecret(auth::DummyHash(auth::DummyCost(SecretHashes(cfg))), secret);
    return Err(CKR_PIN_INCORRECT, "login failed: no such client-secret principal");
  }
  auto today = std::chrono::floor<std::chrono::days>(std::chrono::system_clock::now());
  bool matched_expired = false;
  for (const auto& s : pr->secrets) {
    VAULTP11_ASSIGN_OR_RETURN(bool ok, auth::VerifySecret(s.hash, secret));
    if (!ok) continue;
    if (s.expires && today >= *s.expires) {
      matched_expired = true;
      continue;
    }
    return name;
  }
  if (matched_expired) return Err(CKR_PIN_INCORRECT, "login failed for principal {}: the secret has expired", name);
  return Err(CKR_PIN_INCORRECT, "login failed for principal {}: wrong secret", name);
}


int64_t Unix(Clock::time_point t) { return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count(); }

// A client assertion (its header names a certificate by x5t#S256).
Result<std::string> ClientAssertion(const config::Config& cfg, store::Store* store, std::string_view resource_id,
                                    const auth::jwt::Token& t) {
  const auto& x5t = t.header["x5t#S256"];
  if (!x5t.is_string()) return Err(CKR_PIN_INVALID, "client assertion: x5t#S256 is not a string");
  const auto& iss = t.claims.contains("iss") ? t.claims["iss"] : nlohmann::json();
  if (!iss.is_string()) return Err(CKR_PIN_INCORRECT, "client assertion: no iss");
  const std::string name = iss.get<std::string>();
  const config::PrincipalConfig* pr = cfg.FindPrincipal(name);
  if (pr == nullptr || pr->auth != "client_certificate")
    return Err(CKR_PIN_INCORRECT, "client assertion: no client-certificate principal named by iss");
  VAULTP11_ASSIGN_OR_RETURN(std::string thumb, auth::jwt::CertificateThumbprint(pr->certificate_der));
  if (x5t.get<std::string>() != thumb)
    return Err(CKR_PIN_INCORRECT, "client assertion for {}: x5t#S256 is not the registered certificate's", name);
  const uint8_t* p = pr->certificate_der.data();
  std::unique_ptr<X509, decltype(&X509_free)> cert(d2i_X509(nullptr, &p, static_cast<long>(pr->certificate_der.size())),
                                                   &X509_free);
  if (!cert) return Err(CKR_GENERAL_ERROR, "the registered certificate of {} does not parse", name);
  // The registered certificate must be valid now.
  if (X509_cmp_current_time(X509_get0_notBefore(cert.get())) > 0 ||
      X509_cmp_current_time(X509_get0_notAfter(cert.get())) < 0)
    return Err(CKR_PIN_INCORRECT, "client assertion for {}: the registered certificate is not valid now", name);
  EVP_PKEY* key = X509_get0_pubkey(cert.get());
  if (key == nullptr) return Err(CKR_GENERAL_ERROR, "the registered certificate of {} has no usable key", name);
  VAULTP11_RETURN_IF_ERROR(auth::jwt::Verify(t, key, kAssertionAlgs));
  auth::jwt::ClaimRules rules;
  rules.issuer = name;
  rules.subject = name;
  rules.audience = std::string(resource_id);
  rules.leeway = kAssertionLeeway;
  rules.max_lifetime = kMaxAssertionLifetime;
  rules.require_jti = true;
  const auto now = Clock::now();
  VAULTP11_RETURN_IF_ERROR(auth::jwt::CheckClaims(t, rules, now));
  if (store == nullptr) return Err(CKR_PIN_INCORRECT, "client assertion: no store to record its jti");
  const int64_t exp = static_cast<int64_t>(t.claims["exp"].get<double>());
  VAULTP11_ASSIGN_OR_RETURN(bool fresh,
                            store->UseJti(name + "|" + t.claims["jti"].get<std::string>(), exp + kAssertionLeeway.count(),
                                          Unix(now)));
  if (!fresh) return Err(CKR_PIN_INCORRECT, "client assertion for {}: its jti was used before (a replay)", name);
  return name;
}

Result<std::string> ReadJwks(const std::string& path) {
  // Whoever can change the key set can mint tokens.
  std::string warning;
  VAULTP11_RETURN_IF_ERROR(CheckNotWritableByOthers(path, "JWKS file", &warning));
  if (!warning.empty()) log::Warning("{}", warning);
  std::ifstream in(path, std::ios::binary);
  if (!in) return Err(CKR_FUNCTION_FAILED, "cannot read JWKS file {}", path);
  std::string text(auth::jwt::kMaxJwksBytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  if (text.size() > auth::jwt::kMaxJwksBytes) return Err(CKR_FUNCTION_FAILED, "JWKS file {} is too large", path);
  return text;
}

// A bearer token from a configured OAuth2 issuer.
Result<std::string> BearerToken(const config::Config& cfg, const auth::jwt::Token& t) {
  const auto& iss = t.claims.contains("iss") ? t.claims["iss"] : nlohmann::json();
  if (!iss.is_string()) return Err(CKR_PIN_INCORRECT, "bearer token: no iss");
  const std::string issuer = iss.get<std::string>();
  std::string why = "no oauth2 principal trusts this issuer";
  for (const auto& pr : cfg.principals) {
    if (pr.auth != "oauth2" || pr.issuer != issuer) continue;
    const auto& named = t.claims.contains(pr.claim) ? t.claims[pr.claim] : nlohmann::json();
    if (!named.is_string() || named.get<std::string>() != pr.subject) {
      why = "no oauth2 principal of this issuer is named by the token";
      continue;
    }
    VAULTP11_ASSIGN_OR_RETURN(std::string text, ReadJwks(pr.jwks_file));
    VAULTP11_ASSIGN_OR_RETURN(auto keys, auth::jwt::ParseJwks(text));
    const std::string kid = t.header.contains("kid") && t.header["kid"].is_string() ? t.header["kid"].get<std::string>() : "";
    Status verified = Err(CKR_PIN_INCORRECT, "bearer token for {}: no key of {} matches its kid", pr.name, pr.jwks_file);
    for (const auto& k : keys) {
      if (!kid.empty() && k.kid != kid) continue;
      if (!k.alg.empty() && k.alg != t.alg) continue;
      verified = auth::jwt::Verify(t, k.key.get(), kOAuthAlgs);
      if (verified.ok() || verified.rv() == CKR_PIN_INVALID) break;
    }
    if (verified.rv() == CKR_PIN_INVALID) return verified.error();  // the token itself is unacceptable
    // Another principal of this issuer (another audience or key set) may still accept it.
    Status st = verified;
    if (st.ok()) {
      auth::jwt::ClaimRules rules;
      rules.issuer = pr.issuer;
      rules.audience = pr.audience;
      rules.leeway = std::chrono::seconds(pr.leeway_seconds);
      st = auth::jwt::CheckClaims(t, rules, Clock::now());
    }
    if (st.ok()) return pr.name;
    why = st.error().message;
  }
  return Err(CKR_PIN_INCORRECT, "bearer token: {}", why);
}

}  // namespace

const config::PrincipalConfig* ManagedIdentityOfCaller(const config::Config& cfg) {
  const uid_t uid = getuid();
  for (const auto& pr : cfg.principals)
    if (pr.auth == "managed_identity" && pr.uid && *pr.uid == uid) return &pr;
  std::vector<gid_t> groups(1, getgid());
  int n = getgroups(0, nullptr);
  if (n > 0) {
    groups.resize(1 + static_cast<size_t>(n));
    n = getgroups(n, groups.data() + 1);
    groups.resize(1 + static_cast<size_t>(std::max(n, 0)));
  }
  for (const auto& pr : cfg.principals)
    if (pr.auth == "managed_identity" && pr.gid && std::find(groups.begin(), groups.end(), *pr.gid) != groups.end())
      return &pr;
  return nullptr;
}

std::string ResourceId(const config::Config& cfg, std::string_view deployment_id, std::string_view token_name) {
  const bool pool = cfg.FindPool(token_name) != nullptr;
  return fmt::format("vaultp11://{}/{}/{}", deployment_id, pool ? "managedHsms" : "vaults", token_name);
}

namespace {

Result<Authenticated> AuthenticateAny(const config::Config& cfg, store::Store* store,
                                      std::string_view resource_id, std::span<const uint8_t> pin) {
  // No PIN: the calling process's managed identity, decided by its real uid and groups.
  if (pin.empty()) {
    if (const config::PrincipalConfig* mi = ManagedIdentityOfCaller(cfg)) return Authenticated{mi->name, mi->auth};
    return Err(CKR_PIN_INCORRECT, "login failed: no PIN, and no managed identity for uid {} gid {}", getuid(), getgid());
  }
  // "principal:secret" has a colon; a JWT (base64url parts and dots) never does.
  if (std::find(pin.begin(), pin.end(), ':') != pin.end()) {
    VAULTP11_ASSIGN_OR_RETURN(std::string name, ClientSecret(cfg, pin));
    return Authenticated{name, "client_secret"};
  }
  std::string_view text(reinterpret_cast<const char*>(pin.data()), pin.size());
  VAULTP11_ASSIGN_OR_RETURN(auth::jwt::Token t, auth::jwt::Parse(text));
  if (t.header.contains("x5t#S256")) {
    VAULTP11_ASSIGN_OR_RETURN(std::string name, ClientAssertion(cfg, store, resource_id, t));
    return Authenticated{name, "client_certificate"};
  }
  VAULTP11_ASSIGN_OR_RETURN(std::string name, BearerToken(cfg, t));
  return Authenticated{name, "oauth2"};
}

}  // namespace

Result<Authenticated> Authenticate(const config::Config& cfg, store::Store* store,
                                   std::string_view resource_id, std::span<const uint8_t> pin) {
  auto who = AuthenticateAny(cfg, store, resource_id, pin);
  // Spec C_Login: a credential that fails, malformed or not, is CKR_PIN_INCORRECT
  // (CKR_PIN_INVALID, which the JWT parser uses, is for C_InitPIN / C_SetPIN).
  if (!who.ok() && who.rv() == CKR_PIN_INVALID)
    return Err(CKR_PIN_INCORRECT, "{}", who.error().message);
  return who;
}

std::string RecordedName(const config::Config& cfg, std::string_view claimed,
                         std::span<const uint8_t> names_key) {
  if (claimed.empty() || cfg.FindPrincipal(claimed) != nullptr) return std::string(claimed);
  return auth::UnknownNameTag(names_key, claimed);
}

std::string ClaimedPrincipal(const config::Config& cfg, std::span<const uint8_t> pin) {
  // Unknown names are counted like known ones: a lockout or a growing delay must not tell
  // which principals exist. Bounded, so a name cannot bloat the store.
  auto bounded = [](std::string name) {
    if (name.size() > 256) name.resize(256);
    return name;
  };
  if (pin.empty()) return "";
  auto colon = std::find(pin.begin(), pin.end(), ':');
  if (colon != pin.end()) return bounded(std::string(pin.begin(), colon));
  auto t = auth::jwt::Parse(std::string_view(reinterpret_cast<const char*>(pin.data()), pin.size()));
  if (!t.ok() || !t->claims.contains("iss") || !t->claims["iss"].is_string()) return "";
  const std::string iss = t->claims["iss"].get<std::string>();
  if (t->header.contains("x5t#S256")) return bounded(iss);
  for (const auto& pr : cfg.principals)
    if (pr.auth == "oauth2" && pr.issuer == iss && t->claims.contains(pr.claim) && t->claims[pr.claim].is_string() &&
        t->claims[pr.claim].get<std::string>() == pr.subject)
      return pr.name;
  return bounded("iss:" + iss);
}

std::string Challenge(const config::Config& cfg, std::string_view resource_id) {
  std::string out;
  std::vector<std::string> seen;
  for (const auto& pr : cfg.principals) {
    if (pr.auth != "oauth2") continue;
    std::string one = fmt::format("authority=\"{}\", resource=\"{}\"", pr.issuer, pr.audience);
    if (std::find(seen.begin(), seen.end(), one) != seen.end()) continue;
    seen.push_back(one);
    out += (out.empty() ? "" : "; ") + one;
  }
  bool assertions = std::any_of(cfg.principals.begin(), cfg.principals.end(),
                                [](const auto& p) { return p.auth == "client_certificate"; });
  if (assertions)
    out += fmt::format("{}client assertion: authority=\"self (RFC 7523)\", resource=\"{}\"", out.empty() ? "" : "; ",
                       resource_id);
  if (out.empty()) out = fmt::format("resource=\"{}\"", resource_id);
  return out;
}

}  // namespace vaultp11::core

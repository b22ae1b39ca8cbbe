// `vaultp11 assertion` (a client assertion for a client-certificate principal) and
// `vaultp11 whoami` (who a credential, or this process, is on a token, and where a valid
// credential comes from).
#include <fmt/format.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>

#include "auth/access.h"
#include "auth/jwt.h"
#include "backend/ossl/ossl_backend.h"
#include "cli/commands.h"
#include "core/authenticate.h"
#include "store/store.h"
#include "util/strings.h"

namespace vaultp11::cli {
namespace {

// The token a command is about: --vault NAME (a vault or a pool), --slot N (slot order: the
// vaults, then the pools), else the first vault.
Result<std::string> TokenName(const config::Config& cfg, const std::string& vault, int slot) {
  if (!vault.empty()) {
    if (cfg.FindVault(vault) == nullptr && cfg.FindPool(vault) == nullptr)
      return Err(CKR_ARGUMENTS_BAD, "no vault or pool named {} in {}", QuotePrintable(vault), cfg.source);
    return vault;
  }
  if (slot >= 0) {
    size_t i = static_cast<size_t>(slot);
    if (i < cfg.vaults.size()) return cfg.vaults[i].name;
    i -= cfg.vaults.size();
    if (i < cfg.managed_hsm_pools.size()) return cfg.managed_hsm_pools[i].name;
    return Err(CKR_ARGUMENTS_BAD, "slot {} does not exist", slot);
  }
  return cfg.vaults.front().name;
}

Result<std::string> DeploymentId(const config::Config& cfg) {
  auto st = store::Store::Open(cfg.store, false);
  if (!st.ok() && st.rv() == CKR_TOKEN_NOT_PRESENT)
    return Err(CKR_TOKEN_NOT_PRESENT, "store {} does not exist (run `vaultp11 init` first)", store::Describe(cfg.store));
  if (!st.ok()) return st.error();
  return st.value()->DeploymentId();
}

template <typename T, void (*Free)(T*)>
struct Freer {
  void operator()(T* p) const { Free(p); }
};
using X509Ptr = std::unique_ptr<X509, Freer<X509, X509_free>>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, Freer<EVP_PKEY, EVP_PKEY_free>>;

// Reads the PIN of `whoami --pin`: "-" is stdin, "@FILE" a file, anything else the value
// itself (visible to other users in the process list: prefer the first two).
Result<SecureString> ReadPinArgument(const std::string& arg, Io& io) {
  if (arg == "-") return ReadSecret(io.in, /*one_line=*/true);
  if (arg.size() > 1 && arg[0] == '@') {
    std::ifstream in(arg.substr(1), std::ios::binary);
    if (!in) return Err(CKR_ARGUMENTS_BAD, "cannot read {}", arg.substr(1));
    return ReadSecret(in, /*one_line=*/true);
  }
  io.err << "vaultp11: warning: a PIN on the command line is visible to other users; use --pin - or --pin @FILE\n";
  return SecureString(arg.begin(), arg.end());
}

// The access-policy names of the permissions in `bits` ("-" for none).
std::string PermissionList(auth::Kind kind, uint32_t bits) {
  std::string names, all(auth::PermissionNames(kind));
  for (size_t start = 0; start < all.size();) {
    size_t end = all.find(", ", start);
    if (end == std::string::npos) end = all.size();
    std::string perm = all.substr(start, end - start);
    start = end + 2;
    auto bit = auth::PermissionByName(kind, perm);
    if (perm != "all" && bit && (bits & *bit)) names += (names.empty() ? "" : " ") + perm;
  }
  return names.empty() ? "-" : names;
}

}  // namespace

Status AssertionCommand(const config::Config& cfg, const AssertionOptions& o, Io& io) {
  const config::PrincipalConfig* pr = cfg.FindPrincipal(o.principal);
  if (pr == nullptr || pr->auth != "client_certificate")
    return Err(CKR_ARGUMENTS_BAD, "no client_certificate principal named {} in {}", QuotePrintable(o.principal),
               cfg.source);
  VAULTP11_ASSIGN_OR_RETURN(std::string token, TokenName(cfg, o.vault, o.slot));
  VAULTP11_ASSIGN_OR_RETURN(std::string deployment, DeploymentId(cfg));
  BIO* kb = BIO_new_file(o.key_file.c_str(), "r");
  PkeyPtr key(kb ? PEM_read_bio_PrivateKey_ex(kb, nullptr, nullptr, nullptr, ossl::LibCtx(), nullptr) : nullptr);
  if (kb) BIO_free(kb);
  if (!key) return Err(CKR_ARGUMENTS_BAD, "{} holds no PEM private key (an encrypted key is not supported)", o.key_file);
  BIO* cb = BIO_new_file(o.cert_file.c_str(), "r");
  X509Ptr cert(cb ? PEM_read_bio_X509(cb, nullptr, nullptr, nullptr) : nullptr);
  if (cb) BIO_free(cb);
  if (!cert) return Err(CKR_ARGUMENTS_BAD, "{} holds no PEM certificate", o.cert_file);
  if (EVP_PKEY_eq(X509_get0_pubkey(cert.get()), key.get()) != 1)
    return Err(CKR_ARGUMENTS_BAD, "the key in {} is not the key of the certificate in {}", o.key_file, o.cert_file);
  unsigned char* der = nullptr;
  int n = i2d_X509(cert.get(), &der);
  if (n <= 0) return Err(CKR_FUNCTION_FAILED, "the certificate cannot be encoded");
  Bytes cert_der(der, der + n);
  OPENSSL_free(der);
  if (cert_der != pr->certificate_der)
    io.err << fmt::format("vaultp11: warning: {} is not the certificate registered for {} ({})\n", o.cert_file,
                          pr->name, pr->certificate_file);
  VAULTP11_ASSIGN_OR_RETURN(std::string thumb, auth::jwt::CertificateThumbprint(cert_der));
  std::string alg(EVP_PKEY_is_a(key.get(), "EC") ? auth::jwt::kEs256 : auth::jwt::kRs256);
  Bytes jti(16);
  VAULTP11_RETURN_IF_ERROR(ossl::RandomBytes(jti));
  const int64_t now =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  nlohmann::json header = {{"x5t#S256", thumb}};
  nlohmann::json claims = {{"iss", pr->name},
                           {"sub", pr->name},
                           {"aud", core::ResourceId(cfg, deployment, token)},
                           {"iat", now},
                           {"nbf", now},
                           {"exp", now + o.lifetime_seconds},
                           {"jti", auth::jwt::Base64UrlEncode(jti)}};
  VAULTP11_ASSIGN_OR_RETURN(std::string jwt, auth::jwt::Sign(header, claims, key.get(), alg));
  io.out << jwt << "\n";
  return OkStatus();
}

Status WhoamiCommand(const config::Config& cfg, const WhoamiOptions& o, Io& io) {
  VAULTP11_ASSIGN_OR_RETURN(std::string token, TokenName(cfg, o.vault, o.slot));
  auto st = store::Store::Open(cfg.store, false);
  if (!st.ok() && st.rv() == CKR_TOKEN_NOT_PRESENT)
    return Err(CKR_TOKEN_NOT_PRESENT, "store {} does not exist (run `vaultp11 init` first)", store::Describe(cfg.store));
  if (!st.ok()) return st.error();
  VAULTP11_ASSIGN_OR_RETURN(std::string deployment, st.value()->DeploymentId());
  const std::string resource = core::ResourceId(cfg, deployment, token);
  io.out << fmt::format("token: {}\nresource: {}\nchallenge: {}\n", token, resource, core::Challenge(cfg, resource));
  const config::PrincipalConfig* mi = core::ManagedIdentityOfCaller(cfg);
  io.out << fmt::format("managed identity of this process (uid {}): {}\n", getuid(), mi ? mi->name : "none");
  if (!o.pin.has_value()) return OkStatus();
  VAULTP11_ASSIGN_OR_RETURN(SecureString pin, ReadPinArgument(*o.pin, io));
  auto who = core::Authenticate(cfg, st.value().get(), resource,
                                std::span(reinterpret_cast<const uint8_t*>(pin.data()), pin.size()));
  if (!who.ok())
    return Err(who.rv(), "the credential is not valid for {}: {}; a valid credential: {}", token, who.error().message,
               core::Challenge(cfg, resource));
  io.out << fmt::format("principal: {} ({})\n", who->principal, who->method);
  auth::Grants g = auth::ComputeGrants(cfg, token, who->principal);
  const std::pair<auth::Kind, const char*> kinds[] = {
      {auth::Kind::kKey, "keys"}, {auth::Kind::kSecret, "secrets"}, {auth::Kind::kCertificate, "certificates"}};
  for (const auto& [kind, label] : kinds)
    io.out << fmt::format("{}: {}\n", label, PermissionList(kind, g.vault_wide[static_cast<int>(kind)]));
  for (const auto& [object, perms] : g.per_object) {
    const char* what = object.first == auth::Kind::kKey ? "key" : object.first == auth::Kind::kSecret ? "secret" : "certificate";
    io.out << fmt::format("{} {}: {}\n", what, QuotePrintable(object.second), PermissionList(object.first, perms));
  }
  return OkStatus();
}

}  // namespace vaultp11::cli

// Authentication: which principal a C_Login PIN (or its absence) proves, by the principal's
// method (REFERENCE.md "Authentication"):
//  - client_secret: "principal:secret", checked against the salted scrypt hashes;
//  - client_certificate: a JWT client assertion (RFC 7523) signed with the key of the
//    registered certificate, header x5t#S256 = that certificate's thumbprint, iss = sub =
//    principal, aud = the token's resource id, exp at most 10 minutes ahead, jti used once
//    (across every process sharing the store);
//  - oauth2: a bearer JWT from the configured issuer for the configured audience, signed by a
//    key of its JWKS (RS256/ES256), whose configured claim names the principal;
//  - managed_identity: an empty PIN, decided by the calling process's real uid and groups.
// Every failed credential is CKR_PIN_INCORRECT, malformed ones included (spec C_Login); the
// message says why, never the credential nor a name that is no configured principal.
#pragma once

#include <span>
#include <string>
#include <string_view>

#include "config/config.h"
#include "store/store.h"
#include "util/result.h"

namespace vaultp11::core {

// The resource id of the vault or pool `token_name` in this deployment: the audience a client
// assertion must name ("vaultp11://<deployment id>/vaults/<name>" or ".../managedHsms/<name>").
std::string ResourceId(const config::Config& cfg, std::string_view deployment_id, std::string_view token_name);

struct Authenticated {
  std::string principal;
  std::string method;  // the principal's auth method
};

// `store` records one-time assertion ids; `resource_id` is the token's (ResourceId).
Result<Authenticated> Authenticate(const config::Config& cfg, store::Store* store, std::string_view resource_id,
                                   std::span<const uint8_t> pin);

// The principal a PIN claims to be, before it is checked (for failed-login accounting): the
// name before ':' of a client secret, the iss of a client assertion, the oauth2 principal a
// bearer token's claims name (else "iss:<issuer>"), configured or not (at most 256 bytes);
// "" for an empty PIN or a credential that does not parse.
std::string ClaimedPrincipal(const config::Config& cfg, std::span<const uint8_t> pin);

// The name failed-login rows, audit events and log lines use for `claimed`: itself when it
// names a configured principal ("" stays ""), else auth::UnknownNameTag(names_key, claimed),
// never the text (it may be a secret typed before the ':').
std::string RecordedName(const config::Config& cfg, std::string_view claimed,
                         std::span<const uint8_t> names_key);

// Where a valid credential for the token comes from, as an HTTP 401 challenge says it:
// "authority=<issuer>, resource=<audience>" per OAuth2 issuer, and the resource id for client
// assertions. Logged after a failed login and printed by `vaultp11 whoami`.
std::string Challenge(const config::Config& cfg, std::string_view resource_id);

// The managed identity of the calling process, or null: the first managed_identity principal
// (config order) bound to its real uid, else to its real or a supplementary group.
const config::PrincipalConfig* ManagedIdentityOfCaller(const config::Config& cfg);

}  // namespace vaultp11::core

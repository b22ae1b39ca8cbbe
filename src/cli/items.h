// The `vaultp11` commands on a vault's items (secrets now; keys and certificates next): they act
// as the operator directly on the store the config names, and every change is audited
// (cli/audit_trail.h). Running modules see the changes at their next search.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "backend/pool/pool.h"
#include "config/config.h"
#include "model/object.h"
#include "store/store.h"
#include "util/result.h"

namespace vaultp11::core {
class Token;
}

namespace vaultp11::cli {

class OperatorAudit;

struct SecretSetOptions {
  std::string vault, name;
  std::string file;          // read the value from this file; empty: stdin
  std::string content_type;  // CKA_VAULTP11_CONTENT_TYPE
  std::string not_before, expires;  // YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC); empty: not set
  bool disabled = false;
  std::vector<std::string> tags;  // NAME=VALUE
};
// `secret set <vault> <name>`: stores the value (stdin, read to its end, byte for byte; or
// --file) as the secret's new current version (the first one for a new name). At most
// VAULTP11_MAX_SECRET_BYTES bytes; an empty value, a name of 1-127 characters of 0-9 a-z A-Z -
// not followed, a name used by a key or certificate, a bad content type, date or tag: refused,
// nothing stored. On a terminal the value is read as one line with echo off. Prints the name
// and the new version. Audited as "SecretSet" (name, vault, version).
Status SecretSetCommand(const config::Config& cfg, const SecretSetOptions& opts, Io& io);

struct SecretGetOptions {
  std::string vault, name;
  std::string version;  // empty: the current one
  std::string out;      // write the value to this new file (mode 0600); empty: stdout
};
// `secret get <vault> <name> [--version V] [--out FILE]`: writes the value, byte for byte (no
// newline added). Audited as "SecretGet" (an operator reading a secret is recorded).
Status SecretGetCommand(const config::Config& cfg, const SecretGetOptions& opts, Io& io);

struct SecretListOptions {
  std::string vault;
  std::string name;  // list this secret's versions; empty: every secret (current version)
  bool json = false;
};
// `secret list <vault> [<name>] [--json]`: metadata only, never values. Without a name, one
// line per secret: name, current version, number of versions, content type, enabled, window,
// creation time. With a name, one line per version, oldest first.
Status SecretListCommand(const config::Config& cfg, const SecretListOptions& opts, Io& io);

// `secret delete <vault> <name>`: deletes the secret, every version; where the vault has
// soft_delete, moves it to the deleted state instead (`deleted recover|purge`). Audited as
// "SecretDelete".
Status SecretDeleteCommand(const config::Config& cfg, const std::string& vault, const std::string& name, Io& io);

struct DeletedOptions {
  std::string where;  // vault or pool
  std::string name;   // recover, purge: required; list: only this item
  bool json = false;
};
// `deleted list <vault|pool> [<name>] [--json]`: the deleted items: name, kind, versions, when
// deleted, from when they may be purged, whether purge protection holds them.
Status DeletedListCommand(const config::Config& cfg, const DeletedOptions& opts, Io& io);
// `deleted recover <vault|pool> <name>`: brings the item back, every version, as it was.
// Audited as "<Kind>Recover" (KeyRecover, SecretRecover, CertificateRecover).
Status DeletedRecoverCommand(const config::Config& cfg, const DeletedOptions& opts, Io& io);
// `deleted purge <vault|pool> <name>`: deletes the item for good, and its keys in the HSMs.
// With purge protection (soft_delete.purge_protection now, or ever: the store remembers),
// refused until the item's retention has ended. Audited as "<Kind>Purge".
Status DeletedPurgeCommand(const config::Config& cfg, const DeletedOptions& opts, Io& io);
// The same on an open store (null: opened here), audited to `audit`.
Status PurgeDeleted(const config::Config& cfg, store::Store* st, OperatorAudit& audit, const DeletedOptions& opts,
                    Io& io);

// A key's rotation policy (reference: at most one rotate action, one notify action, intervals
// of at least 7 days); 0 means not set.
struct RotationPolicy {
  int rotate_after_days = 0;          // rotate this long after the current version was made
  int rotate_before_expiry_days = 0;  // ... or this long before it expires
  int notify_before_expiry_days = 0;  // notify (audit event, stdout) this long before expiry
  int expiry_days = 0;                // new versions expire this long after they are made
};
// "90d", "P90D" or "90" as days.
Result<int> ParseDays(const std::string& text);
// Impossible combinations are CKR_ARGUMENTS_BAD with the reason.
Status CheckPolicy(const RotationPolicy& p);

// `key rotate <vault|pool> <name>`: a new current version of the key with the current one's
// type, size or curve, protection (software, vault HSM, pool) and usage; its expiry from the
// key's policy when it sets one. Older versions stay usable. Audited as "KeyRotate".
Status KeyRotateCommand(const config::Config& cfg, const std::string& where, const std::string& name, Io& io);

struct KeyPolicyOptions {
  std::string where, name;
  bool set = false;  // false: print the policy
  RotationPolicy policy;
};
// `key policy <vault|pool> <name> [--rotate-after D | --rotate-before-expiry D]
// [--notify-before-expiry D] [--expiry D] [--clear]`: sets (replaces) or, without options,
// prints the key's rotation policy. Audited as "KeyRotationPolicyUpdate".
Status KeyPolicyCommand(const config::Config& cfg, const KeyPolicyOptions& opts, Io& io);

struct LifecycleOptions {
  int64_t at = 0;  // judge what is due at this Unix time instead of now (0: now)
};
// `lifecycle run [--at TIME]`: applies every due rotation (policy), gives each near-expiry
// notice once (audit "KeyNearExpiry" and a line on stdout), and purges deleted items whose
// retention is over. Idempotent, and safe to run on several hosts at once: each rotation and
// notice happens once (the store decides), the others print that another run did it.
Status LifecycleRunCommand(const config::Config& cfg, const LifecycleOptions& opts, Io& io);

struct CertImportOptions {
  std::string vault, name;
  std::string file;           // PEM (certificates and the private key) or PKCS#12
  std::string password_file;  // the key's (or PKCS#12's) password, first line; empty: none or a prompt
  bool hsm = false;           // the key into the vault's HSM (unwrapped there, never extractable)
  bool exportable = false;    // with the bundle data object, as cert create --exportable
  std::string export_format = "pem";
  std::vector<std::string> tags;  // NAME=VALUE
};
// `cert import <vault> <name> --file F [--password-file P]`: the certificate that matches the
// file's private key, with that key (a software key, sensitive, not extractable), becomes the
// new current version of the certificate item `name` (key pair and certificate sharing label,
// version and CKA_ID); the other certificates of the file (its issuers) are stored beside it as
// items <name>-chain-<n> unless the vault holds them already. A file without a key, with no
// certificate matching the key, or a wrong password: refused, nothing stored. Audited as
// "CertificateImport".
Status CertImportCommand(const config::Config& cfg, const CertImportOptions& opts, Io& io);

struct CertCreateOptions {
  std::string vault, name;
  std::string subject;                 // "CN=a,O=b" or "/CN=a/O=b"
  std::vector<std::string> sans;       // DNS:x, email:x, URI:x
  std::vector<std::string> ekus;       // serverAuth, clientAuth, codeSigning, emailProtection, ... or OIDs
  std::vector<std::string> key_usage;  // digitalSignature, keyEncipherment, ... (default: by --ca)
  int validity_months = 12;
  std::string issuer = "Self";         // Self, or a CA certificate item of the same vault
  std::string key = "ec:P-256";        // rsa:2048|3072|4096, ec:P-256|P-384|P-521|secp256k1
  bool hsm = false;                    // the key in the vault's HSM (a vault with `hsms`)
  // Exportable: each version also has a data object (the "secret") with the certificate, its
  // issuers and the private key, as PEM or as PKCS#12 (empty password). Software keys only.
  bool exportable = false;
  std::string export_format = "pem";  // pem | pkcs12
  std::vector<std::string> tags;      // NAME=VALUE, on every object of each version
  bool ca = false;                     // a CA certificate (basicConstraints CA:TRUE)
  bool reuse_key = false;              // renewals keep the key
  // Lifetime action, applied by `lifecycle run`: "auto-renew" (default) or "notify", at a
  // percentage of the lifetime (default 80) or a number of days before expiry.
  std::string lifetime_action = "auto-renew";
  int lifetime_percentage = 0;  // 1..99; 0 with days_before_expiry 0: 80
  int days_before_expiry = 0;   // 1..36500
};
// Whether a certificate valid from `not_before` to `not_after` is due for its lifetime action
// at `now` (percentage of the lifetime passed, or within the days before expiry).
bool LifetimeActionDue(const CertCreateOptions& policy, int64_t not_before, int64_t not_after, int64_t now);
// `lifecycle run`'s part for certificates: renews (auto-renew) or notifies (notify, or an
// external CA's certificate; once per version) each due certificate item of the vault `token`
// serves; returns how many of each.
Status RunCertificateLifetimeActions(core::Token& token, store::Store& st, OperatorAudit& audit, int64_t now, Io& io,
                                     size_t* renewed, size_t* notified);
// `cert create <vault> <name> --subject DN [--san ...] [--eku ...] [--key-usage ...]
// [--validity-months N] [--issuer Self|NAME] [--key rsa:2048|ec:P-256|...] [--ca] [--reuse-key]`:
// a new key pair and its X.509 certificate (serial 16 random bytes, SKID, AKID under a named
// issuer) as one version of the new certificate item; the policy is kept for renewals.
// Audited as "CertificateCreate".
Status CertCreateCommand(const config::Config& cfg, const CertCreateOptions& opts, Io& io);
// `cert renew <vault> <name>`: a new version under the stored policy: a fresh key (the same key
// with --reuse-key) and a new certificate; older versions stay. Audited as "CertificateRenew".
Status CertRenewCommand(const config::Config& cfg, const std::string& vault, const std::string& name, Io& io);

struct CertCsrOptions : CertCreateOptions {
  std::string out;  // a new file (0600) for the request; empty: stdout
};
// `cert csr <vault> <name> --subject DN [--san ...] [--eku ...] [--key-usage ...] [--key ...]
// [--validity-months N] [--reuse-key] [--out FILE]`: a certificate signing request for an
// external CA (issuer "Unknown"): a new key pair (managed like `cert create`'s) and the request
// (PEM, as a data object with content type application/pkcs10) become a pending version of the
// certificate item (its first, or a new one of an existing certificate); the policy is kept.
// Prints the request. Audited as "CertificateCreate" (pending).
Status CertCsrCommand(const config::Config& cfg, const CertCsrOptions& opts, Io& io);
// `cert merge <vault> <name> --file CERT`: the certificate the CA issued for the pending
// request (PEM, with its issuers, or DER) joins the pending version (same CKA_ID); the request
// is dropped and the issuers are stored as with `cert import`. A certificate for another key:
// refused, nothing changed. Audited as "CertificatePendingMerge".
Status CertMergeCommand(const config::Config& cfg, const std::string& vault, const std::string& name,
                        const std::string& file, Io& io);
// `cert cancel <vault> <name>`: takes the pending version back (its request and key pair; the
// whole item when it had no other version) and restores the policy it replaced. Audited as
// "CertificatePendingDelete".
Status CertCancelCommand(const config::Config& cfg, const std::string& vault, const std::string& name, Io& io);

// Content types of an exportable certificate's bundle (its certificate, issuers and private key).
inline constexpr char kPemBundleType[] = "application/x-pem-file";
inline constexpr char kPkcs12BundleType[] = "application/x-pkcs12";
inline bool IsCertificateBundle(const std::string& content_type) {
  return content_type == kPemBundleType || content_type == kPkcs12BundleType;
}

// The store, once `vault` (a vault or pool) is in it; clear errors for a store or vault not
// made yet (`vaultp11 init`).
Result<std::unique_ptr<store::Store>> OpenVaultStore(const config::Config& cfg, const std::string& vault);
// The first `limit` bytes of the file at `path` (all of it when shorter), in wiped memory; a
// file that cannot be opened or read is CKR_ARGUMENTS_BAD naming it. Callers give one byte
// more than they accept to see that a file is too long.
Result<SecureBytes> ReadFileBounded(const std::string& path, size_t limit);
// --tag NAME=VALUE options as CKA_VAULTP11_TAGS JSON (the model checks counts and lengths); a
// malformed or repeated one is CKR_ARGUMENTS_BAD.
Result<std::string> TagsJson(const std::vector<std::string>& name_values);
// An item name must be 1-127 characters of 0-9 a-z A-Z -; any other is
// CKR_ARGUMENTS_BAD "invalid name ...".
Status CheckName(const std::string& name);
// The objects of item `label`'s current version on `token` (what token.Find by the label
// gives), by class: for each class the last one in handle order; other classes are left out.
// `token_only` skips session objects. `check`, when set, sees each object (after that skip) in
// handle order before it is put in its class's place; its first error is returned as is.
struct CurrentObjects {
  model::ObjectPtr priv, pub, secret, cert, data;
};
Result<CurrentObjects> FindCurrentObjects(core::Token& token, const std::string& label, bool token_only,
                                          const std::function<Status(const model::Object&)>& check = {});
// What an item's rows make it, as audit operation names spell it: "Key", "Secret" or
// "Certificate" (store::KindOf).
const char* KindOfRows(const std::vector<store::ObjectRecord>& rows);

// The HSMs behind a pool, or behind a premium vault with an HSM (as a one-member pool); null
// for other vaults. Unknown name: CKR_ARGUMENTS_BAD.
Result<std::shared_ptr<pool::HsmPool>> HsmPoolFor(const config::Config& cfg, const std::string& name);

// A time for --not-before / --expires: YYYY-MM-DD (that day's 00:00:00Z) or
// YYYY-MM-DDTHH:MM:SSZ, as Unix seconds; `end_of_day` makes a bare date its 23:59:59Z.
Result<int64_t> ParseUtcTime(const std::string& text, bool end_of_day);

}  // namespace vaultp11::cli

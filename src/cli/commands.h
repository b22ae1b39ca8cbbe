// The `vaultp11` admin tool as a library: each command reads and writes streams so the
// tests can drive it without a process; main.cc only binds it to the real stdio.
#pragma once

#include <p11-kit/pkcs11.h>

#include <functional>
#include <istream>
#include <nlohmann/json.hpp>
#include <ostream>
#include <optional>
#include <string>
#include <vector>

#include "config/config.h"
#include "util/result.h"
#include "util/secure_bytes.h"

namespace vaultp11::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;  // the operation failed (bad config, store error, ...)
inline constexpr int kExitUsage = 2;   // the command line was wrong

// Lower and upper bound of `hash-secret --cost-log2n` (ln below 10 is too cheap to matter).
inline constexpr int kMinCostLog2N = 10;
inline constexpr int kMaxCostLog2N = 20;

// Streams of one run. `interactive` means `in` is a terminal: the secret is then read as one
// line with echo turned off, after a prompt on `err`.
struct Io {
  std::istream& in;
  std::ostream& out;
  std::ostream& err;
  bool interactive = false;
};

// Reads a secret: everything up to end of input (or the first newline when `one_line`), one
// trailing newline ("\n" or "\r\n") removed. Empty input and input over 64 KiB are refused.
Result<SecureString> ReadSecret(std::istream& in, bool one_line);

// On a terminal (io.interactive): prints "<prompt> (input hidden): " on io.err and reads one
// line with echo off (ReadSecret one_line).
Result<SecureString> PromptSecret(Io& io, std::string_view prompt);

// `hash-secret`: hashes the secret read from io.in and prints the hash line on io.out.
Status HashSecretCommand(Io& io, int cost_log2n);

// `init`: creates the store (database and master key file, both 0600) if missing and every
// configured vault; prints one line per thing created or found. Audited (cli/audit_trail.h):
// "StoreInit" when it creates the store, "VaultCreate" per vault or pool it creates.
Status InitCommand(const config::Config& cfg, std::ostream& out);

struct ListOptions {
  std::string vault;  // only this vault; empty: all configured vaults
  bool json = false;
};
// `list`: the configured vaults and their objects (class, label, CKA_ID) from the store.
Status ListCommand(const config::Config& cfg, const ListOptions& opts, std::ostream& out);

// `pool init <pool> [<pool>...]`: installs one security domain (one trusted AES-256 wrapping
// key with the same value, CKA_LABEL/CKA_ID "vaultp11-security-domain") on every member of the
// named pools (or premium vaults: their HSM) through an SO session; pools initialised together
// share the domain, so keys backed up from one restore into the other. The SO PIN comes from hsms[].so_pin_file, else a
// prompt when io.interactive. Members are compared by the key's check value
// (CKA_CHECK_VALUE), never by the value: all holding the same domain is success with nothing
// to do; different domains, or some members with one and others without, are refused with
// nothing changed. The value lives in memory only while it is installed. Audited: one
// "SecurityDomainInit" per name given (none when every member held the domain already).
Status PoolInitCommand(const config::Config& cfg, const std::vector<std::string>& pools, Io& io);

// `backup <vault|pool> <name> <file>`: writes the item <name> (a key, secret or certificate,
// every version) to a new file (mode 0600, never overwritten): a clear header and the item's
// rows, secrets and policy sealed with AES-256-GCM under a key derived from the store's master
// key (the header authenticated with them); HSM keys inside wrapped under the security domain
// (a premium vault's HSM key qualifies when its HSM held a domain when the key was made). A
// deleted item is refused. Audited as "<Kind>Backup".
Status BackupCommand(const config::Config& cfg, const std::string& where, const std::string& name,
                     const std::string& file, Io& io);
// `restore <vault|pool> <file>`: puts a backed-up item, every version as it was, into a vault
// or pool of the same deployment (HSM keys: into HSMs holding the same security domain;
// software items: into a vault). Another deployment or domain, a modified file, a name in use
// (or deleted): refused, nothing changed. Audited as "<Kind>Restore".
Status RestoreCommand(const config::Config& cfg, const std::string& where, const std::string& file, Io& io);

struct AssertionOptions {
  std::string principal, key_file, cert_file;
  std::string vault;  // the token the assertion is for (a vault or pool name) ...
  int slot = -1;      // ... or its slot; neither: the first vault
  int lifetime_seconds = 300;
};
// `assertion`: prints a client assertion (RFC 7523 JWT) for a client_certificate principal,
// signed with KEY.pem (RSA: RS256, EC P-256: ES256), x5t#S256 = CERT.pem's thumbprint, aud = the
// token's resource id, a fresh jti, valid for lifetime_seconds.
Status AssertionCommand(const config::Config& cfg, const AssertionOptions& opts, Io& io);

struct WhoamiOptions {
  std::string vault;
  int slot = -1;
  std::optional<std::string> pin;  // "-" (stdin), "@FILE", or the value
};
// `whoami`: the token's resource id and where a valid credential comes from (the challenge),
// this process's managed identity, and with --pin the principal it proves and its permissions
// (a client assertion checked here is used up: its jti is recorded).
Status WhoamiCommand(const config::Config& cfg, const WhoamiOptions& opts, Io& io);

// `audit verify [FILE...]`. With FILEs: checks their hash chains as one, oldest first (each
// file must continue the one before; the first may continue a file not given), and, when `cfg`
// is given and <last FILE>.head exists, that head too (its key derived from the master key
// file). Without FILEs: every file sink of `cfg` (required then), each with all its files in
// chain order (audit/file_sink.h ChainFiles) and its head. Prints "FILE: N records, chain
// intact" per file and whether the head was checked (and why not); each problem is a line
// "vaultp11: FILE:LINE: problem" on io.err (the last one is the returned error).
Status AuditVerifyCommand(const std::vector<std::string>& files, const config::Config* cfg, Io& io);

struct AuditPurgeOptions {
  std::string before;  // YYYY-MM-DD
  std::string sink;    // the path of one configured file sink; empty: all of them
};
// `audit purge --before DATE [--sink PATH]`: deletes the rotated files of the configured file
// sinks (or of the one named) whose newest record is before DATE, judged by the time in their
// names (audit/file_sink.h PurgeBefore); never a current file. Prints "deleted FILE" for each.
// Audited as "AuditPurge" (the files deleted), written after the purge.
Status AuditPurgeCommand(const config::Config& cfg, const AuditPurgeOptions& opts, Io& io);

struct AuditTailOptions {
  std::string file;   // empty: the first configured file sink's path
  size_t lines = 20;  // the last N matching records
  bool follow = false;
  // "key=value", all of which must match: principal (identity.principal), operation
  // (operationName), result (resultSignature), vault (properties.vault or properties.pool).
  std::vector<std::string> filter;
};
// The --filter keys AuditTailCommand knows.
bool IsAuditFilter(std::string_view key_value);
// One event as `audit tail` prints it: time, resultSignature, operationName, then principal=,
// vault= (or pool=), name=, mechanism=, the duration ("0.25ms") and, unless OK, description=.
// Values that could confuse a terminal are quoted and escaped.
std::string FormatAuditEvent(const nlohmann::json& event);
// `audit tail [FILE] [-n N] [--follow] [--filter k=v,...]`: prints the last N matching records of
// FILE, one line each (FormatAuditEvent). With follow, keeps printing records as they are
// appended, across rotations too (the path renamed away and a new file put there), woken by
// inotify on the file's directory or after at most a second. `keep_going` is asked after each
// wake-up's records are printed; false ends the command (default: never). `cfg` is needed only
// without FILE.
Status AuditTailCommand(const config::Config* cfg, const AuditTailOptions& opts, Io& io,
                        const std::function<bool()>& keep_going = {});

// Writes `data` to a new file at `path`, mode 0600, synced; never over an existing file (a
// partly written file is removed).
Status WriteNewFile(const std::string& path, std::string_view data);

// "private-key", "public-key", "secret-key", "certificate", "data", else "class-0x<hex>".
std::string ClassName(CK_OBJECT_CLASS object_class);

// `store reseal --to seal|file` (reseal.cc): moves the store's root key from the master key
// file to the HSM seal or back, rotating it (store::Store::Reseal). The config must name both
// store.master_key_file and store.seal. Every audit file sink must verify under the current
// root key first; their heads are re-signed under the new one afterwards. Records
// "StoreReseal".
Status StoreResealCommand(const config::Config& cfg, const std::string& to, Io& io);

// Parses argv and runs one subcommand; returns the process exit code. Never throws.
int Run(int argc, const char* const* argv, Io& io);

}  // namespace vaultp11::cli

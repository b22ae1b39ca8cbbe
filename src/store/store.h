// Store persists every vault's token objects and the state the module shares between processes
// and hosts, on one of two backends (db.h): an embedded SQLite file (one host) or a PostgreSQL
// database (a fleet; standbys for read-only failover). The rules below hold on both.
#pragma once

#include <p11-kit/pkcs11.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "store/options.h"
#include "util/result.h"
#include "util/secure_bytes.h"

namespace vaultp11::store {

// One token object as persisted. Public attributes are kept as an opaque serialized blob
// (the model owns the format); sensitive material is encrypted at rest with AES-256-GCM under
// the vault's data key, which is itself wrapped by the master key file.
struct ObjectRecord {
  int64_t id = 0;        // row id, assigned by Insert
  std::string vault;     // vault name
  CK_OBJECT_CLASS object_class = 0;
  std::string label;     // CKA_LABEL, indexed
  Bytes ck_id;           // CKA_ID, indexed
  Bytes attributes;      // serialized public attributes
  bool has_secret = false;  // whether sensitive material is stored (load with LoadSecret)
  int64_t revision = 0;  // store-wide change counter value of the last write to this row
  // The version of the item (label) this object belongs to: 32 lowercase hex digits; empty for
  // objects without a label (they are not named items and have no versions).
  std::string version;
  int64_t created = 0;  // Unix time of the insert (rows from before it was kept: the upgrade's)
};

// What kind of item a version's classes make: "certificate" (with its key, or a pending
// request's key pair and CSR data object), "key", "secret".
const char* KindOf(const std::vector<CK_OBJECT_CLASS>& classes);

// A fresh version id: 16 random bytes as 32 lowercase hex digits.
Result<std::string> NewVersionId();

// A soft-deleted item: when it was deleted, from when it may be purged, and its rows.
struct DeletedItem {
  std::string name;
  int64_t deleted = 0, purge_after = 0;  // Unix times
  std::vector<ObjectRecord> objects;
};

// One version of a named item, as VersionsOf lists them (oldest first).
struct VersionInfo {
  std::string version;
  Bytes ck_id;
  std::vector<CK_OBJECT_CLASS> classes;  // of its objects, in row order
  std::vector<int64_t> ids;              // their rows
  int64_t created = 0;                   // its first row's
  bool current = false;
};

// Failed-login state of one principal (unix seconds), shared by every process using the store.
struct LoginFailures {
  int64_t failures = 0;      // failures in a row since the last success (or expired lockout)
  int64_t last_failure = 0;  // time of the latest failure, 0 when none
  int64_t locked_until = 0;  // locked while now < locked_until; 0 when never locked
  bool operator==(const LoginFailures&) const = default;
};

// A key for `purpose` derived from the master key (HKDF-SHA256, info "vaultp11 <purpose>"):
// 32 bytes, the same in every process and tool using the store. The audit log's head MAC uses
// purpose "audit-head".
Result<SecureBytes> DeriveKey(const SecureBytes& master_key, std::string_view purpose);
// The same from the master key file, without opening the database (`vaultp11 audit verify`).
Result<SecureBytes> DeriveKeyFromMasterKeyFile(const std::string& master_key_path, std::string_view purpose);
// The same for the store `options` name: the store is opened (create_if_missing false) and
// the key derived from its current root key once CheckRootKey passes; a store that does not
// exist yet (CKR_TOKEN_NOT_PRESENT) without a seal: from the master key file alone.
Result<SecureBytes> DeriveKeyFromOptions(const Options& options, std::string_view purpose);

// Longest value UseJti accepts.
inline constexpr size_t kMaxJtiBytes = 512;

class Store {
 public:
  // Opens the store `options` name. SQLite: the database file, created (mode 0600) with its
  // schema when create_if_missing; the master key file (32 random bytes, mode 0600) is created
  // beside it on first use when missing and create_if_missing. A corrupt, unreadable or
  // non-database file gives CKR_DEVICE_ERROR with a message naming the file; a missing file
  // without create_if_missing gives CKR_TOKEN_NOT_PRESENT. A read-only file opens read-only
  // (writes then fail with CKR_TOKEN_WRITE_PROTECTED). PostgreSQL: connects to a primary of the
  // dsn, else to a standby (read-only until a primary is back); creates the schema when
  // missing and create_if_missing, else a missing schema is CKR_TOKEN_NOT_PRESENT; the master
  // key file must be given and is created only when the store has no vault yet.
  // With options.seal (both backends): the root key is unsealed from the database by the
  // seal's HSM key; a store without a root key yet gets a fresh one, sealed, when
  // create_if_missing (the HSM key itself is created only with options.create_seal_key, i.e.
  // by `vaultp11 init`). A sealed store opened without store.seal, a store on a master key
  // file opened with only store.seal, a seal whose HSM key is missing or does not open the
  // sealed root key: an error naming the hsm and the label. No master key file is ever
  // created while a seal is configured; a sealed store ignores a master key file also
  // configured (that file is for `vaultp11 store reseal --to file`).
  static Result<std::unique_ptr<Store>> Open(const Options& options, bool create_if_missing);
  // SQLite at db_path with that master key file.
  static Result<std::unique_ptr<Store>> Open(const std::string& db_path, const std::string& master_key_path,
                                             bool create_if_missing);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Whether writes fail now (a read-only file; a PostgreSQL store on a standby), as last seen.
  bool read_only() const;
  // Whether writes can succeed now: on a PostgreSQL store that is read-only, asks whether its
  // server has been promoted and looks for a primary (at most once a second, backing off to every 16 s), so the answer
  // changes back without a restart. What the module asks before a write and C_GetTokenInfo shows.
  bool Writable();
  // What messages name the store by (the file, or the PostgreSQL hosts and database).
  const std::string& name() const;
  // DeriveKey(master key, purpose).
  Result<SecureBytes> DeriveKey(std::string_view purpose) const;

  // ---- The root key --------------------------------------------------------------------
  // The root key wraps every vault's data key (AES-256-GCM) and keys DeriveKey. It comes from
  // the master key file (store.master_key_file, the same file on every host) or from the HSM
  // seal (store.seal: kept in the database, encrypted inside the HSM; see seal.h). The store
  // keeps a check value of it (meta root_check, an HMAC under a key derived from it) and a
  // generation number (meta root_generation) that each reseal bumps.

  // Whether this store's root key is the one its data keys are wrapped with: the check value
  // matches (a store written before it existed: every vault's data key opens). Else
  // CKR_DEVICE_ERROR naming the master key file or the seal. `vaultp11 init` runs it, so a
  // wrong file is refused before anything is created; Open itself leaves a wrong file for the
  // first use to report (the module then serves nothing it cannot open), and EnsureVault
  // refuses to wrap a new vault's key under a root key that is not verified.
  Status CheckRootKey();
  struct RootInfo {
    bool sealed = false;     // from the HSM seal (else the master key file)
    int64_t generation = 0;  // meta root_generation (0: never resealed)
    std::string source;      // "master key file X" / "key 'L' in hsm H (...)"
  };
  RootInfo Root() const;

  // Moves the root key between the master key file and the HSM seal, rotating it: a fresh
  // random root key; in one write transaction (the store's write lock: every other writer on
  // every host waits) every vault's data key is re-wrapped under it (the data keys, and so
  // every object, secret and record MAC, stay as they are), every audit anchor is checked and
  // re-MACed, the earlier root keys are kept wrapped under the new one (DeriveKeys: backups
  // made before still restore), and the generation is bumped. kSeal: needs store.seal and a
  // store on its master key file (the seal's HSM key is created when absent); afterwards the
  // old file opens nothing. kFile: needs store.master_key_file and a sealed store; the new key
  // is written to <file>.reseal-<generation> (0600, synced) before the commit and renamed onto
  // the file after it. Anything refused or failing before the commit changes nothing.
  // Other processes that hold the old root key: see SyncRoot (root.cc).
  enum class SealTarget { kSeal, kFile };
  struct ResealResult {
    int64_t generation = 0;  // the new one
    size_t vaults = 0, anchors = 0, previous = 0;
    std::string source;      // where the root key is now
  };
  Result<ResealResult> Reseal(SealTarget to);

  // DeriveKey(purpose) under the current root key, then under each earlier one (newest first),
  // for reading what was made before a reseal (backups).
  Result<std::vector<SecureBytes>> DeriveKeys(std::string_view purpose);

  // Creates the vault's row and random data key if absent (idempotent, safe when several
  // processes race). Needed before Insert for that vault.
  Status EnsureVault(const std::string& vault);

  // Names and versions. A label names an item of the vault (a key, secret or certificate);
  // the objects of one item version share the label, the version id and (keys, certificates)
  // the CKA_ID, and hold at most one object per class. The current version is the one of the
  // item's newest row. Objects with an empty label are not items: no version, no rule.

  // Inserts the objects of one item version (all with the same label) and their secrets in one
  // transaction (BEGIN IMMEDIATE, so the name rules hold across processes); returns the
  // records with id, revision and version set. `secrets[i]` may be empty (public objects).
  // A label not in use: a new item, version record.version (or a fresh one when empty).
  // A label in use:
  //  - new_version: a new version (record.version, or fresh); a non-empty CKA_ID that another
  //    version of the item has is CKR_ATTRIBUTE_VALUE_INVALID (each version's id is its own);
  //  - else the objects join the current version when it has their CKA_ID and none of their
  //    classes (a certificate or public key added to its key); anything else is
  //    CKR_ATTRIBUTE_VALUE_INVALID ("name exists"), nothing written.
  // A vault never created with EnsureVault is CKR_GENERAL_ERROR (the caller's bug).
  // `expect_current` (new_version only): the version the caller saw as current; when another
  // one is current by then (a rotation by another process won), CKR_FUNCTION_REJECTED and
  // nothing is written.
  Result<std::vector<ObjectRecord>> InsertVersion(std::vector<ObjectRecord> records,
                                                  const std::vector<SecureBytes>& secrets,
                                                  bool new_version, std::string_view expect_current = {});
  // One object: InsertVersion({record}, {secret}, new_version).
  Result<ObjectRecord> Insert(ObjectRecord record, const SecureBytes& secret, bool new_version = false);

  // A whole item at once (a restore): every record with the same vault and label, its version
  // and created time set, oldest version first (the last record's version becomes current);
  // its policy (may be empty). One transaction; a name in use (live or deleted) is
  // CKR_ATTRIBUTE_VALUE_INVALID and nothing is written.
  // `within` (when set) runs inside that transaction once the name is known to be free, before
  // anything is written: its failure writes nothing; while it runs, the store's write lock is
  // held, so no other process can take the name (a restore puts the HSM keys in place there).
  Result<std::vector<ObjectRecord>> InsertItem(std::vector<ObjectRecord> records, const std::vector<SecureBytes>& secrets,
                                               const std::string& policy, const std::function<Status()>& within = {});

  // Replaces label, CKA_ID and attributes of an existing row (one transaction); bumps its
  // revision; returns the row's version afterwards. A new label follows InsertVersion's rules
  // without new_version (joins that name's current version, or starts a new item keeping the
  // object's version; an empty label drops the version). A CKA_ID that another version of the
  // item has is CKR_ATTRIBUTE_VALUE_INVALID. Unknown id: CKR_OBJECT_HANDLE_INVALID.
  Result<std::string> Update(int64_t id, const std::string& label, const Bytes& ck_id, const Bytes& attributes);

  // Deletes every row of the vault's item `label` (all versions, all classes) in one
  // transaction, with tombstones; returns the rows deleted (empty: no such item).
  Result<std::vector<ObjectRecord>> DeleteItem(const std::string& vault, const std::string& label);

  // Deletes the rows of one version of the vault's item `label` in one transaction, with
  // tombstones, and sets the item's policy to `policy` (empty: none); when no other version is
  // left, the item goes with its policy and notices. Returns the rows deleted (empty: no such
  // version).
  Result<std::vector<ObjectRecord>> DeleteVersion(const std::string& vault, const std::string& label,
                                                  const std::string& version, const std::string& policy);

  // ---- Soft-delete ----------------------------------------------------------------------
  // Moves the vault's item `label` (every version) to the deleted state in one transaction:
  // its rows stay, hidden from LoadVault and ChangedSince (other processes see them go, as
  // deletions); its name cannot be used until it is recovered or purged. Returns the rows
  // hidden (empty: no such item).
  Result<std::vector<ObjectRecord>> SoftDeleteItem(const std::string& vault, const std::string& label,
                                                   int64_t now, int64_t purge_after);
  // The vault's deleted items, by name.
  Result<std::vector<DeletedItem>> DeletedItems(const std::string& vault);
  // Brings a deleted item back as it was (every version). Not deleted: CKR_ARGUMENTS_BAD.
  Status RecoverItem(const std::string& vault, const std::string& name);
  // Deletes a deleted item for good; returns its rows (their HSM keys are the caller's to
  // destroy). Not deleted: CKR_ARGUMENTS_BAD; with `protection` before its purge time:
  // CKR_ACTION_PROHIBITED, nothing changed.
  Result<std::vector<ObjectRecord>> PurgeItem(const std::string& vault, const std::string& name, int64_t now,
                                              bool protection);
  // Purge protection of a vault, once turned on, stays on (whatever the config later says).
  Status EnablePurgeProtection(const std::string& vault);
  Result<bool> PurgeProtection(const std::string& vault);

  // ---- Item policies and notices ------------------------------------------------------------
  // A policy (opaque JSON text, the CLI owns the format) per item; empty text: none.
  Status SetPolicy(const std::string& vault, const std::string& name, const std::string& policy);
  Result<std::string> Policy(const std::string& vault, const std::string& name);
  // Every item of the vault with a policy: name -> policy.
  Result<std::vector<std::pair<std::string, std::string>>> Policies(const std::string& vault);
  // Records that notice `what` about version `version` of an item was given; true for the
  // first caller only (so several hosts running the same job notify once).
  Result<bool> ClaimNotice(const std::string& vault, const std::string& name, const std::string& version,
                           const std::string& what);

  // The versions of the vault's item `label`, oldest first (empty when no such item).
  Result<std::vector<VersionInfo>> VersionsOf(const std::string& vault, const std::string& label);

  // Deletes the row and its secret; records a tombstone so other processes notice.
  // Unknown id: CKR_OBJECT_HANDLE_INVALID.
  Status Delete(int64_t id);

  // Every object of a vault (without secrets).
  Result<std::vector<ObjectRecord>> LoadVault(const std::string& vault);
  // The objects of a vault with this CKA_LABEL (every version of the item), or with this
  // CKA_ID, without secrets, oldest first: answered from the (vault, label) and (vault, ck_id)
  // indexes, for tokens that read their objects on demand.
  Result<std::vector<ObjectRecord>> LoadByLabel(const std::string& vault, const std::string& label);
  Result<std::vector<ObjectRecord>> LoadById(const std::string& vault, const Bytes& ck_id);

  // Decrypts the secret of one object. Authentication failure of the ciphertext (tampering, a
  // wrong master key) is CKR_DEVICE_ERROR; unknown id CKR_OBJECT_HANDLE_INVALID. An object
  // stored without a secret gives an empty buffer.
  Result<SecureBytes> LoadSecret(int64_t id);

  // The store-wide revision counter: each committed change to vaults or objects increments it
  // (the deployment id, JWT ids and login failures below do not touch it).
  Result<int64_t> Revision();

  // Objects of the vault inserted or updated with revision > since.
  Result<std::vector<ObjectRecord>> ChangedSince(const std::string& vault, int64_t since);
  // Ids of the vault's objects deleted with revision > since.
  Result<std::vector<int64_t>> DeletedSince(const std::string& vault, int64_t since);

  // Cheap check whether another connection committed since the last call on this Store (the
  // first call returns true): SQLite's data_version, PostgreSQL's change notifications (see
  // db.h); true means "compare Revision()", not necessarily that a vault changed.
  Result<bool> ExternalChange();

  // Names of the vaults that have a row.
  Result<std::vector<std::string>> Vaults();

  // ---- Authentication state -------------------------------------------------------------
  // Kept in tables created with CREATE TABLE IF NOT EXISTS when a store is opened writable, so
  // stores made by earlier versions upgrade in place (the schema version stays 1). These
  // writes do not bump Revision(), but like any commit they make ExternalChange() true in the
  // other processes.

  // A random 128-bit id of this store as 32 lowercase hex digits, created once (when the store
  // is first opened writable by a version that has it, or on first call) and stable forever;
  // concurrent creators agree (INSERT OR IGNORE, then read back). A read-only store that
  // never had one is CKR_TOKEN_WRITE_PROTECTED.
  Result<std::string> DeploymentId();

  // Records a one-time JWT id (e.g. issuer + '\0' + jti) as used until expires_unix
  // (inclusive). Returns true when it was unused (and is now recorded), false when it is
  // already recorded and not expired: a replay. Rows with expires < now_unix are purged in the
  // same transaction. Empty or longer than kMaxJtiBytes: CKR_ARGUMENTS_BAD. A read-only store
  // cannot remember anything, so it refuses with CKR_TOKEN_WRITE_PROTECTED (fails closed: a
  // replay could not be detected).
  Result<bool> UseJti(std::string_view issuer_and_jti, int64_t expires_unix, int64_t now_unix);

  // The principal's failed-login state (all zero when none is recorded).
  Result<LoginFailures> GetLoginFailures(std::string_view principal);

  // Atomically (one BEGIN IMMEDIATE transaction, so concurrent processes never lose an
  // increment) records a failure at now_unix and returns the new state. A lockout that has
  // expired (locked_until <= now_unix) first starts the count again from zero. When the count
  // reaches lock_after (> 0; 0 or less never locks), locked_until becomes
  // now_unix + lock_seconds; further failures keep counting and push locked_until out again.
  // On a read-only store nothing is written: the state that would have been recorded is
  // returned, so logins do not fail because the store is read-only (but nothing is counted).
  Result<LoginFailures> RecordLoginFailure(std::string_view principal, int64_t now_unix,
                                           int64_t lock_after, int64_t lock_seconds);

  // Forgets the principal's failures (after a successful login). On a read-only store this
  // writes nothing and returns OkStatus.
  Status ResetLoginFailures(std::string_view principal);
  // Takes back one failure counted before the credential was checked (C_Login counts each
  // attempt first, so parallel attempts cannot outrun the limit) when the check failed for a
  // reason that says nothing about the credential (a store or file error).
  Status ForgiveLoginFailure(std::string_view principal);

  // ---- Audit anchors --------------------------------------------------------------------
  // Where an audit file sink's chain ended when it was last sealed (audit/file_sink.h): kept
  // here, outside the log, so that `vaultp11 audit verify` recognises an older log (with its
  // older head) put back. One row per sink path, in its own table (audit_anchors, created on
  // the first anchor), MACed with DeriveKey("audit-anchor") so that an edited row is detected.
  // Positions order by (gen_time, gen_n, seq): the newest rotated file before the current
  // one (its name's time and N; 0 and 0 when there is none), then the current file's seq.
  struct AuditAnchor {
    int64_t gen_time = 0;
    int64_t gen_n = 0;
    int64_t seq = 0;
    std::string hash;  // of the record at seq (64 lowercase hex digits)
    bool operator==(const AuditAnchor&) const = default;
  };
  // Records `anchor` for `sink` unless the row is already at that position or past it (one
  // UPSERT: a row never moves backwards, whichever process writes last). A hash that is not 64
  // hex digits or a negative position is CKR_ARGUMENTS_BAD; a read-only store
  // CKR_TOKEN_WRITE_PROTECTED.
  Status AdvanceAuditAnchor(const std::string& sink, const AuditAnchor& anchor);
  // The anchor of `sink`; nullopt when none was ever recorded. A row whose MAC does not match
  // (edited, or written under another master key) is CKR_DEVICE_ERROR naming the sink.
  Result<std::optional<AuditAnchor>> GetAuditAnchor(const std::string& sink);

  // ==== Moving and checking a store (migrate.cc, check.cc) ===================================
  // What MigrateFrom copied, or what Check read. Items and versions count named items (every
  // vault, deleted items included); objects every row, secrets the rows with sealed material.
  struct StoreCounts {
    int64_t vaults = 0, items = 0, versions = 0, objects = 0, secrets = 0, deleted_items = 0, policies = 0;
    int64_t notices = 0, tombstones = 0, purge_protected = 0, audit_anchors = 0;
    int64_t login_failures = 0, used_jtis = 0;  // MigrateFrom only
    int64_t revision = 0;                       // the revision counter (MigrateFrom: the target's after)
  };

  // Copies everything of `source` (another store, e.g. a SQLite file; opened by the caller,
  // with its own master key) into this store, which must be empty (no vault, object, tombstone,
  // deleted item, policy or notice: else CKR_FUNCTION_REJECTED naming what it has, nothing
  // changed) and writable. One transaction on this store: every vault with its data key
  // (unwrapped with the source's master key, wrapped again with this store's), every object row
  // with the same id (the id is in its secret's AAD and its MAC), sealed secrets and MACs as
  // they are (the data key does not change), after checking each row's MAC and opening each
  // secret under the source's keys; tombstones, deleted items, policies, notices, purge
  // protection, failed logins, used JWT ids, the deployment id (resource ids and backups name
  // it) and audit anchors (their MACs checked under the source's master key and made again
  // under this store's). This store's revision counter ends above the source's and every
  // copied row's, and new rows get ids above every id the source ever gave (PostgreSQL: the
  // identity sequence; SQLite: sqlite_sequence). Before the commit everything is read back
  // through this store (every row's MAC, every secret opened with the re-wrapped data key):
  // any failure rolls the whole copy back. A source vault written by an earlier version (no
  // record MACs) is refused: open that store writable once first. Never reads out a secret
  // beyond opening it to check.
  Result<StoreCounts> MigrateFrom(Store& source);

  // Verifies the whole store, writing nothing: every vault's data key opens with the master
  // key; every row passes its MAC and every secret opens; names and versions are consistent
  // (each labelled object has a version, each version's objects share one CKA_ID and hold at
  // most one object per class, unlabelled objects have none); no tombstone names a live row;
  // no row or tombstone has a revision above the revision counter; every deleted item has rows;
  // every audit anchor passes its MAC. `problems` says what is wrong, one line each, naming
  // vault, item and row (never a secret); empty: the store is sound. An error only when the
  // store cannot be read at all.
  struct CheckReport {
    StoreCounts counts;
    std::vector<std::string> problems;
  };
  Result<CheckReport> Check();
  // ==== end of moving and checking ============================================================

 private:
  struct Impl;
  Store();
  mutable std::mutex mu_;  // guards impl_ and the backend's connection (one per Store)
  std::unique_ptr<Impl> impl_;
};

}  // namespace vaultp11::store

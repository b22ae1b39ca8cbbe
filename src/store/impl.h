// Store::Impl: what the store's files share (private to src/store). Every method that reads or
// writes runs with Store::mu_ held; "inside a transaction" means within Db::Transaction.
//
//   store.cc         opening, the revision counter, change detection, vault names
//   schema.cc        the tables of both backends and the SQLite upgrades from earlier versions
//   keys.cc          master key file, data keys, record MACs
//   root.cc          the root key: from the master key file or the HSM seal, its check value
//                    and generation, reseal (the root key moved and rotated)
//   seal.cc          the HSM seal (seal.h)
//   objects.cc       objects, item names and versions, changes for other processes
//   deleted.cc       soft-delete, recovery, purge, purge protection
//   policies.cc      item policies and notices
//   auth_state.cc    deployment id, one-time JWT ids, failed logins
//   audit_anchors.cc where audit chains were last sealed
#pragma once

#include <openssl/evp.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "store/db.h"
#include "store/store.h"
#include "util/ossl_ptr.h"

namespace vaultp11::store {

using EvpMacCtxPtr = std::unique_ptr<EVP_MAC_CTX, OsslDeleter<&EVP_MAC_CTX_free>>;

inline constexpr size_t kKeyLen = 32;

inline std::span<const uint8_t> AsBytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// The AAD of an object's sealed secret: bound to vault and row id, so it cannot be moved.
std::string ObjectAad(const std::string& vault, int64_t id);
// A data key wrapped with the v2 AAD says "every row of this vault carries a MAC" (keys.cc).
std::string DataKeyAad(const std::string& vault);
std::string LegacyDataKeyAad(const std::string& vault);

// The master key file: exactly kKeyLen bytes, private to this process's user (keys.cc).
Result<SecureBytes> ReadMasterKey(const std::string& path);
Result<SecureBytes> CreateOrReadMasterKey(const std::string& path);
// fsync of the folder holding `path`, so a name just created or renamed there is durable.
void SyncParentDir(const std::string& path);

// HMAC-SHA256 of an object row (keys.cc) with a context keyed by the vault's record MAC key.
Result<EvpMacCtxPtr> NewRecordMacContext(const SecureBytes& key);
Result<Bytes> RecordMac(const EVP_MAC_CTX* keyed, const ObjectRecord& r);

// Hex HMAC-SHA256 of an audit anchor row (audit_anchors.cc); "" when HMAC fails.
std::string AuditAnchorMac(const SecureBytes& key, const std::string& sink, const Store::AuditAnchor& a);

// One row of an item, as the name rules see it.
struct ItemRow {
  int64_t id;
  CK_OBJECT_CLASS cls;
  Bytes ck_id;
  std::string version;
  int64_t created;
};

// The state after one more failed login at `now` (auth_state.cc).
LoginFailures NextLoginFailures(LoginFailures s, int64_t now, int64_t lock_after, int64_t lock_seconds);

struct Store::Impl {
  // A vault's data key, the key of its record MACs, and whether its rows carry MACs (a
  // v2-wrapped data key; see DataKeyAad).
  struct VaultKeys {
    SecureBytes data;
    EvpMacCtxPtr mac;  // keyed with the record MAC key
    bool authenticated = false;
  };

  std::unique_ptr<Db> db;
  Options options;              // as opened (the root key's sources: file, seal)
  // The root key (historically "the master key"): wraps every vault's data key and keys
  // DeriveKey. From the master key file, or unsealed by the HSM seal (root.cc).
  SecureBytes master_key;
  std::string root_source;      // "master key file X" or the seal's description, for messages
  int64_t root_generation = 0;  // meta root_generation when master_key was read (0: none yet)
  bool root_sealed = false;     // master_key came from the seal
  // master_key matches the store's root check value (or, on a store without one, opens every
  // vault's data key). Nothing is wrapped under a root key that is not verified.
  bool root_verified = false;
  std::map<std::string, VaultKeys, std::less<>> vault_keys;  // unwrapped, per vault
  std::string deployment_id;                                 // cached once read (it never changes)
  // The columns ReadObject reads (schema.cc); a read-only SQLite store of an earlier version
  // reads constants in place of the columns it lacks.
  const char* object_columns = nullptr;
  // What keeps a deleted item's rows out of LoadVault and ChangedSince; "" on a read-only
  // SQLite store made before soft-delete.
  const char* live_filter = nullptr;
  bool have_auth_tables = true;  // false: a read-only SQLite store made before them

  const std::string& name() const { return db->name(); }
  Error ReadOnly(std::string_view what) const {
    return Err(CKR_TOKEN_WRITE_PROTECTED, "cannot {}: {} is read-only", what, name());
  }

  // ---- schema.cc --------------------------------------------------------------------------
  // Creates (create_if_missing) or checks the schema, upgrading a writable SQLite store of an
  // earlier version; sets object_columns, live_filter and have_auth_tables. A schema newer
  // than this module's is CKR_DEVICE_ERROR saying so.
  Status SetUpSchema(bool create_if_missing);
  Status SetUpSqlite();
  Status SetUpPostgres(bool create_if_missing);
  Status AddVersions();
  Status AddCreated();

  // ---- keys.cc ----------------------------------------------------------------------------
  Result<const VaultKeys*> Keys(const std::string& vault);
  Result<const SecureBytes*> DataKey(const std::string& vault);
  Result<VaultKeys> Unwrap(const std::string& vault, const Bytes& wrapped);
  static Status SetMacKey(VaultKeys& keys);
  Status CheckRow(const ObjectRecord& r, const Bytes& mac);
  Error RowFailed(const ObjectRecord& r);
  Status WriteMac(const ObjectRecord& r);
  Status AuthenticateVaults();
  Status AuthenticateVault(const std::string& vault);

  // ---- root.cc ----------------------------------------------------------------------------
  // At Open, once the schema is set up: reads or creates the root key from the configured
  // source (see Store::Open).
  Status LoadRoot(bool create_if_missing, int64_t vaults);
  // After AuthenticateVaults on a writable open: records the root check value when the store
  // has none yet and this root key opens every vault.
  Status RecordRootCheck();
  // When another process moved the root key (reseal: meta root_generation changed), reads the
  // new one from the configured source. Run before anything is unwrapped or wrapped.
  Status SyncRoot();
  // SyncRoot, then refuses (CKR_DEVICE_ERROR naming root_source) a root key that is not verified.
  Status RequireVerifiedRoot(std::string_view what);

  // ---- objects.cc -------------------------------------------------------------------------
  // The rows of `vault` matching `where` (parameters ?2, ?3 from `more`), oldest first; `live`:
  // without those of soft-deleted items. Every row is checked against its MAC.
  Result<std::vector<ObjectRecord>> ReadObjects(const std::string& vault, const char* where, Param more, bool live,
                                                std::string_view what);
  Result<std::vector<ObjectRecord>> ItemObjects(const std::string& vault, const std::string& label);
  Result<std::vector<ItemRow>> ItemRows(const std::string& vault, const std::string& label, int64_t except = 0);
  Status InsertRow(ObjectRecord& record, const SecureBytes& secret, int64_t rev, const SecureBytes& data_key);
  Status Tombstone(const std::string& vault, const std::vector<int64_t>& ids, int64_t rev, bool keep_rows);

  // ---- deleted.cc -------------------------------------------------------------------------
  Result<std::optional<int64_t>> DeletedPurgeAfter(const std::string& vault, const std::string& label);
  Status RefuseDeletedName(const std::string& vault, const std::string& label);

  // ---- policies.cc ------------------------------------------------------------------------
  Status WritePolicy(const std::string& vault, const std::string& name, const std::string& policy);
  Status ForgetItem(const std::string& vault, const std::string& name);

  // ---- auth_state.cc ----------------------------------------------------------------------
  Result<bool> ReadDeploymentId();
  Result<std::string> EnsureDeploymentId();
  Result<LoginFailures> ReadLoginFailures(std::string_view principal);

  // ---- keys.cc: for migrate.cc and check.cc ------------------------------------------------
  // Inside a transaction: the vault's data key wrapped (v2 AAD) under the store's verified root
  // key, file or seal (what EnsureVault stores). MigrateFrom wraps every copied data key with it.
  Result<Bytes> WrapDataKey(const std::string& vault, const SecureBytes& data_key);
  // The audit anchors' MAC key (DeriveKey(root key, "audit-anchor")), from the current root key.
  Result<SecureBytes> AuditAnchorKey();

  // ---- migrate.cc, check.cc (moving and checking a store) -----------------------------------
  // Every object row (deleted items' too), oldest first, with its stored MAC and sealed secret.
  struct RawObject {
    ObjectRecord record;
    Bytes mac;
    Bytes sealed;  // empty when record.has_secret is false
  };
  Result<std::vector<RawObject>> ReadAllObjects(std::string_view what);
};

// The hex HMAC-SHA256 of an audit anchor row under `key` ("" when HMAC fails; audit_anchors.cc).
std::string AuditAnchorMac(const SecureBytes& key, const std::string& sink, const Store::AuditAnchor& a);

// Reads a row selected with Impl::object_columns (its MAC into `mac`).
ObjectRecord ReadObject(const Row& row, Bytes* mac = nullptr);

}  // namespace vaultp11::store

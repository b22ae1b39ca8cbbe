// Token models a PKCS#11 token and maps to one vault: its objects (token objects mirrored from
// the store, session objects in memory), their handles and indexes, and the login state of
// this application on it.
#pragma once

#include <p11-kit/pkcs11.h>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "auth/access.h"
#include "config/config.h"
#include "model/object.h"
#include "store/store.h"
#include "util/result.h"

namespace vaultp11::core {

class Token {
 public:
  Token(CK_SLOT_ID slot_id, const config::VaultConfig& vault, store::Store* store,
        std::atomic<CK_OBJECT_HANDLE>* next_handle);
  // A managed HSM pool's token: every key it holds lives on the pool's members.
  Token(CK_SLOT_ID slot_id, std::shared_ptr<pool::HsmPool> pool, store::Store* store,
        std::atomic<CK_OBJECT_HANDLE>* next_handle);

  ~Token();  // stops a pool's health check
  Token(const Token&) = delete;
  Token& operator=(const Token&) = delete;

  CK_SLOT_ID slot_id() const { return slot_id_; }
  const std::string& name() const { return name_; }
  const std::string& serial() const { return serial_; }
  store::Store* store() const { return store_; }

  // The vault's HSM (premium vaults with hsms): set before Load. hsm() is null for vaults
  // without one; hsm()->token is null while the HSM is unavailable (with the reason).
  void SetHsm(model::HsmKey base, bool default_hsm) {
    hsm_ = std::move(base);
    default_hsm_ = default_hsm;
  }
  const model::HsmKey* hsm() const { return hsm_ ? &*hsm_ : nullptr; }
  bool default_hsm() const { return default_hsm_; }
  // The pool behind a managed HSM pool's token, else null.
  const std::shared_ptr<pool::HsmPool>& pool() const { return pool_; }
  bool is_pool() const { return pool_ != nullptr; }
  // A pool token's keys as the pool's health check copies them (class and inner CKA_ID).
  // Reads every key first: a store that cannot be read gives its error.
  Result<std::vector<pool::CatalogEntry>> PoolCatalog();

  // At C_Initialize: notes the store's revision and reads no object. Objects are read from
  // the store on demand, from its indexes: an item's rows (every version) when a search names
  // its label, the rows with a CKA_ID when a search names one, and every row of the vault when
  // a search names neither or a caller needs them all (then they stay).
  Status Load();
  // Applies changes committed by other processes since the last sync (revision > seen) to the
  // objects read so far (and to those of labels and CKA_IDs read so far).
  Status ApplyChanges();

  Result<model::ObjectPtr> Get(CK_OBJECT_HANDLE h) const;
  // Adds an object: token objects are written to the store first (one transaction), under the
  // name and version rules of store::Store::InsertVersion (vaultp11.h "Names and versions"):
  // a labelled token object gets a version id (CKA_VAULTP11_VERSION) and, on keys without a
  // CKA_ID, that version's 16 bytes as CKA_ID.
  // `expect_current`: see store::Store::InsertVersion (a rotation that must not race another).
  Result<CK_OBJECT_HANDLE> Add(std::shared_ptr<model::Object> obj, bool new_version = false,
                               std::string_view expect_current = {});
  // Adds both halves of a key pair, token halves in the store (one transaction, one version).
  Result<std::pair<CK_OBJECT_HANDLE, CK_OBJECT_HANDLE>> AddPair(std::shared_ptr<model::Object> pub,
                                                                 std::shared_ptr<model::Object> priv,
                                                                 bool new_version = false,
                                                                 std::string_view expect_current = {});
  // Adds the token objects of one item version (a key pair and its certificate, ...) in one
  // store transaction; returns their handles in order.
  Result<std::vector<CK_OBJECT_HANDLE>> AddVersion(const std::vector<std::shared_ptr<model::Object>>& objs,
                                                   bool new_version, std::string_view expect_current = {});
  // Destroys the HSM objects behind an HSM-protected key (on every member for a pool key):
  // for a key being removed, or one made but never handed out.
  void DiscardHsmKey(const model::Object& obj) const;
  // Whether another object of the token (another version) refers to the same HSM key as `obj`.
  // Reads every object first (so a key another item refers to is never missed); when that
  // fails, answers true (the HSM key is kept).
  bool SharesHsmKey(const model::Object& obj);
  Status Replace(CK_OBJECT_HANDLE h, std::shared_ptr<model::Object> obj);
  Status Remove(CK_OBJECT_HANDLE h);
  // Soft-delete (config soft_delete): the item named by h's label, every version and class,
  // goes to the deleted state in the store and out of this token; its HSM keys stay until
  // the item is purged. Returns how many objects went.
  Result<size_t> SoftDelete(CK_OBJECT_HANDLE h);
  // Destroys the item named by h's label at once: every version and class, their HSM keys too.
  // Returns how many objects went.
  Result<size_t> RemoveItem(CK_OBJECT_HANDLE h);
  void SetSoftDelete(config::SoftDeleteConfig sd) { soft_delete_ = sd; }
  // Every stored object of the item `label` here: all versions, all classes.
  Result<std::vector<model::ObjectPtr>> ItemObjects(const std::string& label);
  const config::SoftDeleteConfig& soft_delete() const { return soft_delete_; }
  // Removes the session objects created by `session` (C_CloseSession).
  void RemoveSessionObjects(CK_SESSION_HANDLE session);

  // Handles of objects that match `tmpl`; uses the label / id / class index when present
  // (reading the objects of that label or CKA_ID from the store the first time). Older
  // versions of named items are left out unless the template has CKA_ID or
  // CKA_VAULTP11_VERSION. A store that cannot be read: its error.
  Result<std::vector<CK_OBJECT_HANDLE>> Find(const model::AttributeMap& tmpl);

  // ---- login state (per application, per token: spec 5.6) ---------------------------------
  bool logged_in() const;
  std::shared_ptr<const auth::Grants> grants() const;
  // Logs `g->principal` in unless the token is logged in already: checked under the login
  // lock, so of two logins racing past the caller's earlier check exactly one wins. The loser
  // gets CKR_USER_ALREADY_LOGGED_IN (same principal) or CKR_USER_ANOTHER_ALREADY_LOGGED_IN.
  Status SetLogin(std::shared_ptr<const auth::Grants> g);
  void Logout();
  // The principal this process last tried to log in as here (the token's PIN flags show its
  // failed-login state).
  void SetLastClaimed(std::string name) {
    std::lock_guard<std::mutex> l(login_mu_);
    last_claimed_ = std::move(name);
  }
  std::string last_claimed() const {
    std::lock_guard<std::mutex> l(login_mu_);
    return last_claimed_;
  }

 private:
  void IndexLocked(CK_OBJECT_HANDLE h, const model::Object& o);
  void UnindexLocked(CK_OBJECT_HANDLE h, const model::Object& o);
  CK_OBJECT_HANDLE InsertLocked(std::shared_ptr<const model::Object> obj);
  CK_OBJECT_HANDLE InsertPersistedLocked(std::shared_ptr<model::Object> obj);
  std::shared_ptr<model::Object> FromRecord(const store::ObjectRecord& rec, Status* st);
  // Writes the token objects of one version (one object, or both halves of a pair).
  Status Persist(std::span<model::Object* const> objs, bool new_version, std::string_view expect_current = {});
  // Whether `o` is a stored object of a named item whose current version is another one.
  bool IsOlderVersionLocked(const model::Object& o) const;
  // Takes the objects of these store rows out of the token; returns how many there were.
  size_t DropRowsLocked(const std::vector<store::ObjectRecord>& rows);
  // Re-reads the current version of `label` from the objects that still carry it.
  void RecomputeCurrentLocked(const std::string& label);
  // On-demand reading: makes sure the rows of `label` (or, when null, of `id`; when both are
  // null, of the whole vault) are here, reading them from the store the first time.
  Status EnsureLoaded(const std::string* label, const Bytes* id);
  bool LoadedLocked(const std::string* label, const Bytes* id) const;

  const CK_SLOT_ID slot_id_;
  const std::string name_;
  const std::string serial_;
  store::Store* const store_;
  std::atomic<CK_OBJECT_HANDLE>* const next_handle_;

  mutable std::shared_mutex mu_;  // guards objects_, the indexes, by_store_id_, revision_
  std::unordered_map<CK_OBJECT_HANDLE, model::ObjectPtr> objects_;
  std::unordered_multimap<std::string, CK_OBJECT_HANDLE> by_label_;
  std::multimap<Bytes, CK_OBJECT_HANDLE> by_id_;
  std::unordered_multimap<CK_OBJECT_CLASS, CK_OBJECT_HANDLE> by_class_;
  std::unordered_map<int64_t, CK_OBJECT_HANDLE> by_store_id_;
  // The current version of each named item: the version of its newest stored row.
  struct Current {
    int64_t store_id = 0;
    Bytes version;
  };
  std::unordered_map<std::string, Current> current_;
  int64_t revision_ = 0;
  // What has been read from the store (guarded by mu_): every row once complete_; before, the
  // rows of each label in loaded_labels_ and of each CKA_ID in loaded_ids_ (and objects this
  // process wrote).
  bool complete_ = false;
  std::unordered_set<std::string> loaded_labels_;
  std::unordered_set<std::string> loaded_ids_;  // the CKA_ID's bytes
  // Held by every change to the stored objects here (reads from the store, ApplyChanges, this
  // process's adds, replacements and removals): a row removed meanwhile is never put back, and
  // what is here changes only under it. Taken before mu_ and the store's lock, never while
  // holding either.
  std::mutex load_mu_;
  // Past this many labels and CKA_IDs read one by one, a search reads everything instead.
  static constexpr size_t kMaxRemembered = 65536;

  std::optional<model::HsmKey> hsm_;  // set before Load, then read-only
  config::SoftDeleteConfig soft_delete_;  // set before Load, then read-only
  bool default_hsm_ = false;
  std::shared_ptr<pool::HsmPool> pool_;  // set at construction for pool tokens

  mutable std::mutex login_mu_;  // guards grants_ and last_claimed_
  std::shared_ptr<const auth::Grants> grants_;
  std::string last_claimed_;
};

}  // namespace vaultp11::core

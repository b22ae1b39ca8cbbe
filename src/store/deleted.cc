// Soft-delete: a deleted item keeps its rows, hidden from searches and reserved by name, until
// it is recovered or purged; purge protection holds purges until the retention ends.
#include "store/impl.h"
#include "util/strings.h"

namespace vaultp11::store {

namespace {

std::vector<int64_t> IdsOf(const std::vector<ObjectRecord>& rows) {
  std::vector<int64_t> ids;
  for (const ObjectRecord& r : rows) ids.push_back(r.id);
  return ids;
}

}  // namespace

// When `label` of `vault` is a deleted item, its purge time.
Result<std::optional<int64_t>> Store::Impl::DeletedPurgeAfter(const std::string& vault, const std::string& label) {
  std::optional<int64_t> out;
  if (*live_filter == '\0') return out;
  VAULTP11_RETURN_IF_ERROR(RunOne(*db, "SELECT purge_after FROM deleted_items WHERE vault = ? AND name = ?",
                                  {vault, label}, [&](const Row& r) { out = r.Int(0); }, "looking up a deleted item")
                               .status());
  return out;
}

// A deleted item's name cannot be used until the item is recovered or purged.
Status Store::Impl::RefuseDeletedName(const std::string& vault, const std::string& label) {
  VAULTP11_ASSIGN_OR_RETURN(auto purge_after, DeletedPurgeAfter(vault, label));
  if (purge_after)
    return Err(CKR_ATTRIBUTE_VALUE_INVALID,
               "'{}' in vault {} is a deleted item (recoverable until {}): recover or purge it before using its name",
               label, vault, UtcTimeString(*purge_after));
  return OkStatus();
}

Result<std::vector<ObjectRecord>> Store::SoftDeleteItem(const std::string& vault, const std::string& label, int64_t now,
                                                        int64_t purge_after) {
  std::lock_guard<std::mutex> lock(mu_);
  Db& db = *impl_->db;
  if (!db.Writable()) return impl_->ReadOnly(fmt::format("delete '{}'", label));
  std::vector<ObjectRecord> hidden;
  if (label.empty()) return hidden;
  Status s = db.Transaction("deleting an item", [&]() -> Status {
    hidden.clear();
    VAULTP11_ASSIGN_OR_RETURN(auto already, impl_->DeletedPurgeAfter(vault, label));
    if (already) return OkStatus();
    VAULTP11_ASSIGN_OR_RETURN(hidden, impl_->ItemObjects(vault, label));
    if (hidden.empty()) return OkStatus();
    VAULTP11_ASSIGN_OR_RETURN(int64_t rev, db.BumpRevision());
    VAULTP11_RETURN_IF_ERROR(db.Run("INSERT INTO deleted_items(vault, name, deleted, purge_after) VALUES(?, ?, ?, ?)",
                                    {vault, label, now, purge_after}, {}, "deleting an item")
                                 .status());
    // To other processes the rows are gone: tombstones (taken back on recovery).
    return impl_->Tombstone(vault, IdsOf(hidden), rev, /*keep_rows=*/true);
  });
  if (!s.ok()) return s.error();
  return hidden;
}

Result<std::vector<DeletedItem>> Store::DeletedItems(const std::string& vault) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<DeletedItem> out;
  if (*impl_->live_filter == '\0') return out;
  VAULTP11_RETURN_IF_ERROR(
      impl_->db->Run("SELECT name, deleted, purge_after FROM deleted_items WHERE vault = ? ORDER BY name", {vault},
                     [&](const Row& r) { out.push_back(DeletedItem{r.Text(0), r.Int(1), r.Int(2), {}}); },
                     "listing deleted items")
          .status());
  for (DeletedItem& d : out) {
    VAULTP11_ASSIGN_OR_RETURN(d.objects, impl_->ItemObjects(vault, d.name));
  }
  return out;
}

Status Store::RecoverItem(const std::string& vault, const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  Db& db = *impl_->db;
  if (!db.Writable()) return impl_->ReadOnly(fmt::format("recover '{}'", name));
  return db.Transaction("recovering an item", [&]() -> Status {
    VAULTP11_ASSIGN_OR_RETURN(auto purge_after, impl_->DeletedPurgeAfter(vault, name));
    if (!purge_after) return Err(CKR_ARGUMENTS_BAD, "vault {} has no deleted item '{}'", vault, name);
    VAULTP11_ASSIGN_OR_RETURN(int64_t rev, db.BumpRevision());
    constexpr std::string_view kWhat = "recovering an item";
    VAULTP11_RETURN_IF_ERROR(
        db.Run("DELETE FROM deleted_items WHERE vault = ?1 AND name = ?2", {vault, name}, {}, kWhat).status());
    VAULTP11_RETURN_IF_ERROR(
        db.Run("DELETE FROM tombstones WHERE id IN (SELECT id FROM objects WHERE vault = ?1 AND label = ?2)",
               {vault, name}, {}, kWhat)
            .status());
    return db.Run("UPDATE objects SET revision = ?3 WHERE vault = ?1 AND label = ?2", {vault, name, rev}, {}, kWhat)
        .status();
  });
}

Result<std::vector<ObjectRecord>> Store::PurgeItem(const std::string& vault, const std::string& name, int64_t now,
                                                   bool protection) {
  std::lock_guard<std::mutex> lock(mu_);
  Db& db = *impl_->db;
  if (!db.Writable()) return impl_->ReadOnly(fmt::format("purge '{}'", name));
  std::vector<ObjectRecord> gone;
  Status s = db.Transaction("purging an item", [&]() -> Status {
    gone.clear();
    VAULTP11_ASSIGN_OR_RETURN(auto purge_after, impl_->DeletedPurgeAfter(vault, name));
    if (!purge_after) return Err(CKR_ARGUMENTS_BAD, "vault {} has no deleted item '{}'", vault, name);
    if (protection && now < *purge_after)
      return Err(CKR_ACTION_PROHIBITED,
                 "vault {} has purge protection: '{}' can be purged from {} (when its retention ends), not before",
                 vault, name, UtcTimeString(*purge_after));
    VAULTP11_ASSIGN_OR_RETURN(gone, impl_->ItemObjects(vault, name));
    VAULTP11_RETURN_IF_ERROR(db.BumpRevision().status());
    constexpr std::string_view kWhat = "purging an item";
    VAULTP11_RETURN_IF_ERROR(
        db.Run("DELETE FROM objects WHERE vault = ?1 AND label = ?2", {vault, name}, {}, kWhat).status());
    VAULTP11_RETURN_IF_ERROR(
        db.Run("DELETE FROM deleted_items WHERE vault = ?1 AND name = ?2", {vault, name}, {}, kWhat).status());
    return impl_->ForgetItem(vault, name);  // the tombstones written at deletion stay
  });
  if (!s.ok()) return s.error();
  return gone;
}

Status Store::EnablePurgeProtection(const std::string& vault) {
  VAULTP11_ASSIGN_OR_RETURN(bool on, PurgeProtection(vault));  // no write when already on
  std::lock_guard<std::mutex> lock(mu_);
  Db& db = *impl_->db;
  if (on || !db.Writable()) return OkStatus();
  const std::string key = "purge_protection:" + vault;
  return db.Transaction("turning purge protection on", [&]() -> Status {
    return db.Run("INSERT INTO meta(key, value) VALUES(?, '1') ON CONFLICT(key) DO NOTHING", {key}, {},
                  "turning purge protection on")
        .status();
  });
}

Result<bool> Store::PurgeProtection(const std::string& vault) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string key = "purge_protection:" + vault;
  return RunOne(*impl_->db, "SELECT 1 FROM meta WHERE key = ?", {key}, {}, "reading purge protection");
}

}  // namespace vaultp11::store

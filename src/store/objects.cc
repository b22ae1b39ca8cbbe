// Objects, item names and versions, and what other processes read to follow changes.
#include <algorithm>
#include <ctime>
#include <limits>

#include "backend/ossl/ossl_backend.h"
#include "store/impl.h"
#include "util/strings.h"

namespace vaultp11::store {

namespace {

bool HasClass(const std::vector<ItemRow>& rows, const std::string& version, CK_OBJECT_CLASS cls) {
  for (const auto& r : rows)
    if (r.version == version && r.cls == cls) return true;
  return false;
}

bool HasCkId(const std::vector<ItemRow>& rows, const std::string& version, const Bytes& ck_id) {
  for (const auto& r : rows)
    if (r.version == version && r.ck_id == ck_id) return true;
  return false;
}

// The version another version of the item already uses `ck_id` in, if any.
const ItemRow* OtherVersionWithId(const std::vector<ItemRow>& rows, const std::string& version, const Bytes& ck_id) {
  if (ck_id.empty()) return nullptr;
  for (const auto& r : rows)
    if (r.version != version && r.ck_id == ck_id) return &r;
  return nullptr;
}

std::vector<int64_t> IdsOf(const std::vector<ObjectRecord>& rows) {
  std::vector<int64_t> ids;
  for (const ObjectRecord& r : rows) ids.push_back(r.id);
  return ids;
}

Error NameExists(const std::string& vault, const std::string& label, const std::string& current, std::string_view why,
                 bool hint = true) {
  return Err(CKR_ATTRIBUTE_VALUE_INVALID, "an item named '{}' exists in vault {} (current version {}): {}{}", label,
             vault, current, why, hint ? "; to add a version, give CKA_VAULTP11_NEW_VERSION = CK_TRUE" : "");
}

}  // namespace

const char* KindOf(const std::vector<CK_OBJECT_CLASS>& classes) {
  bool key = false, data = false;
  for (CK_OBJECT_CLASS c : classes) {
    if (c == CKO_CERTIFICATE) return "certificate";
    key |= c == CKO_PRIVATE_KEY || c == CKO_PUBLIC_KEY || c == CKO_SECRET_KEY;
    data |= c == CKO_DATA;
  }
  // A key beside a data object is a certificate's pending version (its key pair and request).
  return key && data ? "certificate" : key ? "key" : "secret";
}

Result<std::string> NewVersionId() {
  uint8_t raw[16];
  VAULTP11_RETURN_IF_ERROR(ossl::RandomBytes(raw));
  return HexOf(raw);
}

// ---- Store::Impl ----------------------------------------------------------------------------

Result<std::vector<ObjectRecord>> Store::Impl::ReadObjects(const std::string& vault, const char* where, Param more,
                                                           bool live, std::string_view what) {
  std::vector<std::pair<ObjectRecord, Bytes>> rows;
  VAULTP11_RETURN_IF_ERROR(db->Run(std::string("SELECT ") + object_columns + " FROM objects WHERE vault = ?1 AND " +
                                       where + (live ? live_filter : "") + " ORDER BY id",
                                   {vault, more},
                                   [&](const Row& r) {
                                     Bytes mac;
                                     ObjectRecord rec = ReadObject(r, &mac);
                                     rows.emplace_back(std::move(rec), std::move(mac));
                                   },
                                   what)
                               .status());
  std::vector<ObjectRecord> out;
  out.reserve(rows.size());
  for (auto& [rec, mac] : rows) {
    VAULTP11_RETURN_IF_ERROR(CheckRow(rec, mac));
    out.push_back(std::move(rec));
  }
  return out;
}

// Every row of `label` in `vault` (deleted or not), oldest first.
Result<std::vector<ObjectRecord>> Store::Impl::ItemObjects(const std::string& vault, const std::string& label) {
  return ReadObjects(vault, "label = ?2", label, false, "reading an item");
}

// The rows labelled `label` in `vault`, newest first (`except` left out). Whole rows, checked
// like every row the store hands out: the name rules and VersionsOf act on versions, classes
// and ids.
Result<std::vector<ItemRow>> Store::Impl::ItemRows(const std::string& vault, const std::string& label,
                                                   int64_t except) {
  std::vector<std::pair<ObjectRecord, Bytes>> read;
  VAULTP11_RETURN_IF_ERROR(db->Run(std::string("SELECT ") + object_columns +
                                       " FROM objects WHERE vault = ? AND label = ? AND id != ? ORDER BY id DESC",
                                   {vault, label, except},
                                   [&](const Row& r) {
                                     Bytes mac;
                                     ObjectRecord rec = ReadObject(r, &mac);
                                     read.emplace_back(std::move(rec), std::move(mac));
                                   },
                                   "reading an item's versions")
                               .status());
  std::vector<ItemRow> rows;
  for (auto& [r, mac] : read) {
    VAULTP11_RETURN_IF_ERROR(CheckRow(r, mac));
    rows.push_back(ItemRow{r.id, r.object_class, std::move(r.ck_id), std::move(r.version), r.created});
  }
  return rows;
}

// Inside a transaction: inserts `record` (its version and created as given) with its secret
// sealed under the vault's data key; sets id, revision and has_secret.
Status Store::Impl::InsertRow(ObjectRecord& record, const SecureBytes& secret, int64_t rev,
                              const SecureBytes& data_key) {
  int64_t id = 0;
  VAULTP11_ASSIGN_OR_RETURN(
      bool found, RunOne(*db,
                         "INSERT INTO objects(vault, class, label, ck_id, attributes, secret, revision, version, created) "
                         "VALUES(?, ?, ?, ?, ?, NULL, ?, ?, ?) RETURNING id",
                         {record.vault, static_cast<int64_t>(record.object_class), record.label, Blob(record.ck_id),
                          Blob(record.attributes), rev, record.version, record.created},
                         [&](const Row& r) { id = r.Int(0); }, "inserting an object"));
  if (!found) return Err(CKR_DEVICE_ERROR, "{}: no id for an inserted object", name());
  if (!secret.empty()) {
    // The id is part of the AAD, so a sealed secret cannot be moved to another row.
    VAULTP11_ASSIGN_OR_RETURN(Bytes sealed, ossl::SealAesGcm(data_key, secret, AsBytes(ObjectAad(record.vault, id))));
    VAULTP11_RETURN_IF_ERROR(
        db->Run("UPDATE objects SET secret = ? WHERE id = ?", {Blob(sealed), id}, {}, "storing an object's secret")
            .status());
  }
  record.id = id;
  record.revision = rev;
  record.has_secret = !secret.empty();
  return WriteMac(record);  // the MAC covers the id, known only now
}

// Inside a transaction: records tombstones at revision `rev` for the rows `ids` of `vault`
// (other processes see them go), deleting the rows first unless `keep_rows` (soft-delete hides
// them instead).
Status Store::Impl::Tombstone(const std::string& vault, const std::vector<int64_t>& ids, int64_t rev,
                              bool keep_rows) {
  for (int64_t id : ids) {
    if (!keep_rows)
      VAULTP11_RETURN_IF_ERROR(db->Run("DELETE FROM objects WHERE id = ?", {id}, {}, "deleting an object").status());
    VAULTP11_RETURN_IF_ERROR(db->Run("INSERT INTO tombstones(id, vault, revision) VALUES(?1, ?2, ?3) "
                                     "ON CONFLICT(id) DO UPDATE SET vault = excluded.vault, revision = excluded.revision",
                                     {id, vault, rev}, {}, "recording a deletion")
                                 .status());
  }
  return OkStatus();
}

// ---- Store ----------------------------------------------------------------------------------

Result<std::vector<ObjectRecord>> Store::InsertVersion(std::vector<ObjectRecord> records,
                                                       const std::vector<SecureBytes>& secrets, bool new_version,
                                                       std::string_view expect_current) {
  std::lock_guard<std::mutex> lock(mu_);
  if (records.empty() || secrets.size() != records.size())
    return Err(CKR_GENERAL_ERROR, "InsertVersion: {} records, {} secrets", records.size(), secrets.size());
  if (!impl_->db->Writable()) return impl_->ReadOnly("create an object");
  const std::string vault = records.front().vault;
  const std::string label = records.front().label;
  for (const auto& r : records)
    if (r.vault != vault || r.label != label)
      return Err(CKR_GENERAL_ERROR, "InsertVersion: the records of one version differ in vault or label");
  for (size_t i = 0; i < records.size(); ++i)
    for (size_t j = i + 1; j < records.size(); ++j)
      if (records[i].object_class == records[j].object_class)
        return Err(CKR_GENERAL_ERROR, "InsertVersion: two records of one class");
  std::string version = label.empty() ? std::string() : records.front().version;
  if (!label.empty() && version.empty()) {
    VAULTP11_ASSIGN_OR_RETURN(version, NewVersionId());
  }
  VAULTP11_ASSIGN_OR_RETURN(const SecureBytes* data_key, impl_->DataKey(vault));
  const int64_t now = time(nullptr);
  Status s = impl_->db->Transaction("inserting an object", [&]() -> Status {
    if (!label.empty()) {
      VAULTP11_RETURN_IF_ERROR(impl_->RefuseDeletedName(vault, label));
      VAULTP11_ASSIGN_OR_RETURN(auto rows, impl_->ItemRows(vault, label));
      if (rows.empty() && new_version && !expect_current.empty())
        return Err(CKR_FUNCTION_REJECTED, "'{}' in vault {} was deleted meanwhile", label, vault);
      if (!rows.empty()) {
        const std::string& current = rows.front().version;
        if (new_version && !expect_current.empty() && current != expect_current)
          return Err(CKR_FUNCTION_REJECTED, "'{}' in vault {} has a newer version ({}) than {}: changed meanwhile",
                     label, vault, current, expect_current);
        if (new_version) {
          for (const auto& r : rows)
            if (r.version == version) return Err(CKR_GENERAL_ERROR, "version {} of '{}' exists already", version, label);
          std::vector<CK_OBJECT_CLASS> have, add;
          for (const auto& r : rows)
            if (r.version == current) have.push_back(r.cls);
          for (const auto& rec : records) add.push_back(rec.object_class);
          if (std::string_view(KindOf(have)) != KindOf(add))
            return NameExists(vault, label, current,
                              fmt::format("it is a {}, and a {} cannot be a version of it", KindOf(have), KindOf(add)),
                              false);
          for (const auto& rec : records)
            if (const auto* other = OtherVersionWithId(rows, version, rec.ck_id))
              return Err(CKR_ATTRIBUTE_VALUE_INVALID,
                         "CKA_ID is already the id of version {} of '{}' in vault {}: each version needs its own "
                         "(leave CKA_ID out to get one)",
                         other->version, label, vault);
        } else {
          for (const auto& rec : records) {
            if (!HasCkId(rows, current, rec.ck_id))
              return NameExists(vault, label, current, "the new object's CKA_ID is not the current version's");
            if (HasClass(rows, current, rec.object_class))
              return NameExists(vault, label, current, "the current version has an object of this class");
          }
          version = current;
        }
      }
    }
    VAULTP11_ASSIGN_OR_RETURN(int64_t rev, impl_->db->BumpRevision());
    for (size_t i = 0; i < records.size(); ++i) {
      records[i].version = version;
      records[i].created = now;
      VAULTP11_RETURN_IF_ERROR(impl_->InsertRow(records[i], secrets[i], rev, *data_key));
    }
    return OkStatus();
  });
  if (!s.ok()) return s.error();
  return records;
}

Result<ObjectRecord> Store::Insert(ObjectRecord record, const SecureBytes& secret, bool new_version) {
  std::vector<ObjectRecord> one;
  one.push_back(std::move(record));
  std::vector<SecureBytes> secrets;
  secrets.push_back(secret);
  VAULTP11_ASSIGN_OR_RETURN(auto saved, InsertVersion(std::move(one), secrets, new_version));
  return std::move(saved.front());
}

Result<std::vector<ObjectRecord>> Store::InsertItem(std::vector<ObjectRecord> records,
                                                    const std::vector<SecureBytes>& secrets, const std::string& policy,
                                                    const std::function<Status()>& within) {
  std::lock_guard<std::mutex> lock(mu_);
  if (records.empty() || secrets.size() != records.size())
    return Err(CKR_GENERAL_ERROR, "InsertItem: {} records, {} secrets", records.size(), secrets.size());
  if (!impl_->db->Writable()) return impl_->ReadOnly("create an item");
  const std::string vault = records.front().vault;
  const std::string label = records.front().label;
  for (const auto& r : records)
    if (r.vault != vault || r.label != label || r.label.empty() || r.version.empty())
      return Err(CKR_GENERAL_ERROR, "InsertItem: records of one named item, each with its version");
  VAULTP11_ASSIGN_OR_RETURN(const SecureBytes* data_key, impl_->DataKey(vault));
  Status s = impl_->db->Transaction("inserting an item", [&]() -> Status {
    VAULTP11_RETURN_IF_ERROR(impl_->RefuseDeletedName(vault, label));
    VAULTP11_ASSIGN_OR_RETURN(auto rows, impl_->ItemRows(vault, label));
    if (!rows.empty()) return NameExists(vault, label, rows.front().version, "a restored item needs a free name", false);
    if (within) VAULTP11_RETURN_IF_ERROR(within());
    VAULTP11_ASSIGN_OR_RETURN(int64_t rev, impl_->db->BumpRevision());
    for (size_t i = 0; i < records.size(); ++i)
      VAULTP11_RETURN_IF_ERROR(impl_->InsertRow(records[i], secrets[i], rev, *data_key));
    return policy.empty() ? OkStatus() : impl_->WritePolicy(vault, label, policy);
  });
  if (!s.ok()) return s.error();
  return records;
}

Result<std::string> Store::Update(int64_t id, const std::string& label, const Bytes& ck_id, const Bytes& attributes) {
  std::lock_guard<std::mutex> lock(mu_);
  Db& db = *impl_->db;
  if (!db.Writable()) return impl_->ReadOnly(fmt::format("modify object {}", id));
  std::string version;
  Status s = db.Transaction("updating an object", [&]() -> Status {
    // The whole row, checked: a new MAC must never cover a tampered class or creation time.
    ObjectRecord row;
    Bytes mac;
    VAULTP11_ASSIGN_OR_RETURN(bool found,
                              RunOne(db, std::string("SELECT ") + impl_->object_columns + " FROM objects WHERE id = ?",
                                     {id}, [&](const Row& r) { row = ReadObject(r, &mac); }, "updating an object"));
    if (!found) return Err(CKR_OBJECT_HANDLE_INVALID, "no object with id {} in {}", id, impl_->name());
    VAULTP11_RETURN_IF_ERROR(impl_->CheckRow(row, mac));
    const std::string vault = row.vault, old_label = row.label;
    const CK_OBJECT_CLASS cls = row.object_class;
    version = row.version;
    VAULTP11_ASSIGN_OR_RETURN(auto hidden, impl_->DeletedPurgeAfter(vault, old_label));
    if (hidden) return Err(CKR_OBJECT_HANDLE_INVALID, "object {} belongs to a deleted item", id);
    if (label.empty()) {
      version.clear();
    } else {
      if (label != old_label) VAULTP11_RETURN_IF_ERROR(impl_->RefuseDeletedName(vault, label));
      VAULTP11_ASSIGN_OR_RETURN(auto rows, impl_->ItemRows(vault, label, id));
      if (label != old_label && !rows.empty()) {
        const std::string& current = rows.front().version;
        if (!HasCkId(rows, current, ck_id))
          return NameExists(vault, label, current, "the object's CKA_ID is not the current version's");
        if (HasClass(rows, current, cls))
          return NameExists(vault, label, current, "the current version has an object of this class");
        version = current;
      } else if (version.empty()) {
        VAULTP11_ASSIGN_OR_RETURN(version, NewVersionId());
      }
      if (const auto* other = OtherVersionWithId(rows, version, ck_id))
        return Err(CKR_ATTRIBUTE_VALUE_INVALID, "CKA_ID is already the id of version {} of '{}' in vault {}",
                   other->version, label, vault);
    }
    VAULTP11_ASSIGN_OR_RETURN(int64_t rev, db.BumpRevision());
    VAULTP11_RETURN_IF_ERROR(
        db.Run("UPDATE objects SET label = ?, ck_id = ?, attributes = ?, revision = ?, version = ? WHERE id = ?",
               {label, Blob(ck_id), Blob(attributes), rev, version, id}, {}, "updating an object")
            .status());
    row.label = label;
    row.ck_id = ck_id;
    row.attributes = attributes;
    row.version = version;
    return impl_->WriteMac(row);
  });
  if (!s.ok()) return s.error();
  return version;
}

Result<std::vector<ObjectRecord>> Store::DeleteItem(const std::string& vault, const std::string& label) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!impl_->db->Writable()) return impl_->ReadOnly(fmt::format("delete '{}'", label));
  std::vector<ObjectRecord> gone;
  if (label.empty()) return gone;
  Status s = impl_->db->Transaction("deleting an item", [&]() -> Status {
    VAULTP11_ASSIGN_OR_RETURN(gone, impl_->ItemObjects(vault, label));
    if (gone.empty()) return OkStatus();
    VAULTP11_ASSIGN_OR_RETURN(auto deleted, impl_->DeletedPurgeAfter(vault, label));
    if (deleted) return Err(CKR_ARGUMENTS_BAD, "'{}' in vault {} is a deleted item: purge it instead", label, vault);
    VAULTP11_ASSIGN_OR_RETURN(int64_t rev, impl_->db->BumpRevision());
    VAULTP11_RETURN_IF_ERROR(impl_->Tombstone(vault, IdsOf(gone), rev, /*keep_rows=*/false));
    return impl_->ForgetItem(vault, label);
  });
  if (!s.ok()) return s.error();
  return gone;
}

Result<std::vector<ObjectRecord>> Store::DeleteVersion(const std::string& vault, const std::string& label,
                                                       const std::string& version, const std::string& policy) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!impl_->db->Writable()) return impl_->ReadOnly(fmt::format("delete '{}'", label));
  std::vector<ObjectRecord> gone;
  if (label.empty() || version.empty()) return gone;
  Status s = impl_->db->Transaction("deleting a version", [&]() -> Status {
    VAULTP11_ASSIGN_OR_RETURN(auto rows, impl_->ItemObjects(vault, label));
    bool others = false;
    for (auto& r : rows) {
      if (r.version == version)
        gone.push_back(std::move(r));
      else
        others = true;
    }
    if (gone.empty()) return OkStatus();
    VAULTP11_ASSIGN_OR_RETURN(int64_t rev, impl_->db->BumpRevision());
    VAULTP11_RETURN_IF_ERROR(impl_->Tombstone(vault, IdsOf(gone), rev, /*keep_rows=*/false));
    if (!others) return impl_->ForgetItem(vault, label);
    return impl_->WritePolicy(vault, label, policy);
  });
  if (!s.ok()) return s.error();
  return gone;
}

Result<std::vector<VersionInfo>> Store::VersionsOf(const std::string& vault, const std::string& label) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<VersionInfo> out;
  if (label.empty()) return out;
  VAULTP11_ASSIGN_OR_RETURN(auto rows, impl_->ItemRows(vault, label));
  for (auto it = rows.rbegin(); it != rows.rend(); ++it) {  // oldest first
    auto v = std::find_if(out.begin(), out.end(), [&](const VersionInfo& x) { return x.version == it->version; });
    if (v == out.end()) {
      out.push_back(VersionInfo{it->version, it->ck_id, {}, {}, it->created, false});
      v = out.end() - 1;
    }
    v->classes.push_back(it->cls);
    v->ids.push_back(it->id);
  }
  if (!rows.empty())
    for (auto& v : out) v.current = v.version == rows.front().version;
  return out;
}

Status Store::Delete(int64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  Db& db = *impl_->db;
  if (!db.Writable()) return impl_->ReadOnly(fmt::format("delete object {}", id));
  return db.Transaction("deleting an object", [&]() -> Status {
    std::string vault, label;
    VAULTP11_ASSIGN_OR_RETURN(bool found, RunOne(db, "SELECT vault, label FROM objects WHERE id = ?", {id},
                                                 [&](const Row& r) {
                                                   vault = r.Text(0);
                                                   label = r.Text(1);
                                                 },
                                                 "deleting an object"));
    if (!found) return Err(CKR_OBJECT_HANDLE_INVALID, "no object with id {} in {}", id, impl_->name());
    VAULTP11_ASSIGN_OR_RETURN(auto hidden, impl_->DeletedPurgeAfter(vault, label));
    if (hidden) return Err(CKR_OBJECT_HANDLE_INVALID, "object {} belongs to a deleted item", id);
    VAULTP11_ASSIGN_OR_RETURN(int64_t rev, db.BumpRevision());
    VAULTP11_RETURN_IF_ERROR(impl_->Tombstone(vault, {id}, rev, /*keep_rows=*/false));
    if (label.empty()) return OkStatus();
    VAULTP11_ASSIGN_OR_RETURN(auto left, impl_->ItemRows(vault, label));
    return left.empty() ? impl_->ForgetItem(vault, label) : OkStatus();
  });
}

Result<std::vector<ObjectRecord>> Store::LoadVault(const std::string& vault) {
  return ChangedSince(vault, std::numeric_limits<int64_t>::min());
}

Result<SecureBytes> Store::LoadSecret(int64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string vault;
  Bytes sealed;
  bool has_secret = false;
  VAULTP11_ASSIGN_OR_RETURN(bool found, RunOne(*impl_->db,
                                               std::string("SELECT vault, secret FROM objects WHERE id = ?") +
                                                   impl_->live_filter,
                                               {id},
                                               [&](const Row& r) {
                                                 vault = r.Text(0);
                                                 has_secret = !r.IsNull(1);
                                                 if (has_secret) sealed = r.Blob(1);
                                               },
                                               "reading an object's secret"));
  if (!found) return Err(CKR_OBJECT_HANDLE_INVALID, "no object with id {} in {}", id, impl_->name());
  if (!has_secret) return SecureBytes();  // public object: nothing stored
  VAULTP11_ASSIGN_OR_RETURN(const SecureBytes* data_key, impl_->DataKey(vault));
  auto plain = ossl::OpenAesGcm(*data_key, sealed, AsBytes(ObjectAad(vault, id)));
  if (!plain.ok())
    return Err(CKR_DEVICE_ERROR, "secret of object {} in {} failed authentication (tampered database)", id,
               impl_->name());
  return std::move(plain).value();
}

Result<std::vector<ObjectRecord>> Store::ChangedSince(const std::string& vault, int64_t since) {
  std::lock_guard<std::mutex> lock(mu_);
  return impl_->ReadObjects(vault, "revision > ?2", since, true, "reading objects");
}

Result<std::vector<ObjectRecord>> Store::LoadByLabel(const std::string& vault, const std::string& label) {
  std::lock_guard<std::mutex> lock(mu_);
  return impl_->ReadObjects(vault, "label = ?2", label, true, "reading objects by label");
}

Result<std::vector<ObjectRecord>> Store::LoadById(const std::string& vault, const Bytes& ck_id) {
  std::lock_guard<std::mutex> lock(mu_);
  return impl_->ReadObjects(vault, "ck_id = ?2", Blob(ck_id), true, "reading objects by CKA_ID");
}

Result<std::vector<int64_t>> Store::DeletedSince(const std::string& vault, int64_t since) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<int64_t> out;
  VAULTP11_RETURN_IF_ERROR(impl_->db->Run("SELECT id FROM tombstones WHERE vault = ? AND revision > ? ORDER BY id",
                                          {vault, since}, [&](const Row& r) { out.push_back(r.Int(0)); },
                                          "reading deletions")
                               .status());
  return out;
}

}  // namespace vaultp11::store

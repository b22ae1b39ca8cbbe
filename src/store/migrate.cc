// Moving a store: Store::MigrateFrom copies another store (e.g. a SQLite file) into this one
// (e.g. PostgreSQL), every row with its id, the data keys wrapped again with this store's root
// key, in one transaction that reads everything back before it commits (see store.h).
#include <algorithm>
#include <array>
#include <set>
#include <tuple>

#include "backend/ossl/ossl_backend.h"
#include "store/impl.h"
#include "util/log.h"
#include "util/strings.h"

namespace vaultp11::store {

namespace {

constexpr std::string_view kMigrating = "migrating a store";

// The tables that say "this store holds items" (a target must have none of their rows).
constexpr const char* kItemTables[] = {"vaults", "objects", "tombstones", "deleted_items", "item_policies", "notices"};

Result<int64_t> CountRows(Db& db, const std::string& table) {
  VAULTP11_ASSIGN_OR_RETURN(bool have, db.HasTable(table));
  if (!have) return int64_t{0};
  return QueryInt(db, "SELECT count(*) FROM " + table, {}, kMigrating);
}

// The highest object id the store ever gave (its sequence), 0 when none.
Result<int64_t> IdSequence(Db& db) {
  if (db.kind() == Db::Kind::kPostgres)
    return QueryInt(db,
                    "SELECT coalesce(max(last_value), 0) FROM pg_sequences "
                    "WHERE format('%I.%I', schemaname, sequencename) = pg_get_serial_sequence('objects', 'id')",
                    {}, "reading the object id sequence");
  int64_t seq = 0;
  VAULTP11_RETURN_IF_ERROR(RunOne(db, "SELECT seq FROM sqlite_sequence WHERE name = 'objects'", {},
                                  [&](const Row& r) { seq = r.Int(0); }, "reading the object id sequence")
                               .status());
  return seq;
}

// Makes the store's next object id greater than `floor`.
Status RaiseIdSequence(Db& db, int64_t floor) {
  if (floor <= 0) return OkStatus();
  if (db.kind() == Db::Kind::kPostgres)
    return RunOne(db, "SELECT setval(pg_get_serial_sequence('objects', 'id'), ?)", {floor}, {},
                  "moving the object id sequence past the copied ids")
        .status();
  VAULTP11_ASSIGN_OR_RETURN(int64_t n, db.Run("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'objects'",
                                              {floor}, {}, "moving the object id sequence past the copied ids"));
  if (n > 0) return OkStatus();
  return db.Run("INSERT INTO sqlite_sequence(name, seq) VALUES('objects', ?)", {floor}, {},
                "moving the object id sequence past the copied ids")
      .status();
}

Status SetRevision(Db& db, int64_t revision) {
  return db
      .Run(db.kind() == Db::Kind::kPostgres ? "UPDATE meta SET value = CAST(? AS TEXT) WHERE key = 'revision'"
                                            : "UPDATE meta SET value = ? WHERE key = 'revision'",
           {revision}, {}, "setting the revision counter")
      .status();
}

}  // namespace

// ---- Store::Impl ----------------------------------------------------------------------------

Result<std::vector<Store::Impl::RawObject>> Store::Impl::ReadAllObjects(std::string_view what) {
  std::vector<RawObject> out;
  VAULTP11_RETURN_IF_ERROR(db->Run(std::string("SELECT ") + object_columns + ", secret FROM objects ORDER BY id", {},
                                   [&](const Row& r) {
                                     RawObject o;
                                     o.record = ReadObject(r, &o.mac);
                                     if (o.record.has_secret) o.sealed = r.Blob(11);
                                     out.push_back(std::move(o));
                                   },
                                   what)
                               .status());
  return out;
}

// ---- Store ----------------------------------------------------------------------------------

Result<Store::StoreCounts> Store::MigrateFrom(Store& source) {
  if (&source == this) return Err(CKR_ARGUMENTS_BAD, "cannot migrate {} into itself", name());
  std::scoped_lock lock(mu_, source.mu_);
  Impl& from = *source.impl_;
  Impl& to = *impl_;
  Db& src = *from.db;
  Db& db = *to.db;
  if (!db.Writable()) return to.ReadOnly("migrate a store into it");

  // ---- Everything of the source, checked, before the target is touched. -------------------
  StoreCounts counts;
  struct Vault {
    std::string name;
    Impl::VaultKeys keys;
  };
  struct Tombstone {
    int64_t id;
    std::string vault;
    int64_t revision;
  };
  struct Deleted {
    std::string vault, name;
    int64_t deleted, purge_after;
  };
  struct Failures {
    std::string principal;
    int64_t failures, last_failure, locked_until;
  };
  std::vector<Vault> vaults;
  std::vector<Impl::RawObject> objects;
  std::vector<Tombstone> tombstones;
  std::vector<Deleted> deleted;
  std::vector<std::array<std::string, 3>> policies;
  std::vector<std::array<std::string, 4>> notices;
  std::vector<std::string> protected_vaults;  // meta keys "purge_protection:<vault>"
  std::string deployment_id;
  std::vector<Failures> failures;
  std::vector<std::pair<Bytes, int64_t>> jtis;  // raw value, expires
  std::vector<std::pair<std::string, AuditAnchor>> anchors;
  int64_t max_id = 0, max_revision = 0, source_revision = 0;
  const auto read_source = [&]() -> Status {
    {
      std::vector<std::pair<std::string, Bytes>> wrapped;
      VAULTP11_RETURN_IF_ERROR(src.Run("SELECT name, wrapped_data_key FROM vaults ORDER BY name", {},
                                       [&](const Row& r) { wrapped.emplace_back(r.Text(0), r.Blob(1)); }, kMigrating)
                                   .status());
      for (auto& [vault, w] : wrapped) {
        // Unwrap names the vault, the store and the master key file when the key does not open.
        VAULTP11_ASSIGN_OR_RETURN(Impl::VaultKeys keys, from.Unwrap(vault, w));
        if (!keys.authenticated)
          return Err(CKR_FUNCTION_REJECTED,
                     "vault '{}' in {} was written by an earlier version (its records carry no MACs): open that store "
                     "writable once (any vaultp11 command) so that it is upgraded, then migrate",
                     vault, from.name());
        vaults.push_back(Vault{vault, std::move(keys)});
      }
    }
    auto find_vault = [&](const std::string& v) -> const Vault* {
      for (const Vault& x : vaults)
        if (x.name == v) return &x;
      return nullptr;
    };

    VAULTP11_ASSIGN_OR_RETURN(objects, from.ReadAllObjects(kMigrating));
    std::set<std::pair<std::string, std::string>> items;
    std::set<std::tuple<std::string, std::string, std::string>> versions;
    for (const Impl::RawObject& o : objects) {
      const ObjectRecord& r = o.record;
      const Vault* v = find_vault(r.vault);
      if (v == nullptr) return from.RowFailed(r);  // a row of no vault: moved, tampered
      VAULTP11_ASSIGN_OR_RETURN(Bytes expect, RecordMac(v->keys.mac.get(), r));
      if (o.mac.size() != expect.size() || !ConstantTimeEqual(o.mac, expect)) return from.RowFailed(r);
      if (r.has_secret) {
        // Opened only to know it opens (it is copied sealed, as it is); the plaintext is wiped here.
        auto plain = ossl::OpenAesGcm(v->keys.data, o.sealed, AsBytes(ObjectAad(r.vault, r.id)));
        if (!plain.ok())
          return Err(CKR_DEVICE_ERROR, "the secret of object {} of vault '{}' in {} failed authentication (tampered "
                     "database): nothing was migrated", r.id, r.vault, from.name());
        ++counts.secrets;
      }
      if (!r.label.empty()) {
        items.emplace(r.vault, r.label);
        versions.emplace(r.vault, r.label, r.version);
      }
      max_id = std::max(max_id, r.id);
      max_revision = std::max(max_revision, r.revision);
    }
    counts.vaults = static_cast<int64_t>(vaults.size());
    counts.objects = static_cast<int64_t>(objects.size());
    counts.items = static_cast<int64_t>(items.size());
    counts.versions = static_cast<int64_t>(versions.size());

    VAULTP11_RETURN_IF_ERROR(src.Run("SELECT id, vault, revision FROM tombstones ORDER BY id", {},
                                     [&](const Row& r) { tombstones.push_back(Tombstone{r.Int(0), r.Text(1), r.Int(2)}); },
                                     kMigrating)
                                 .status());
    for (const Tombstone& t : tombstones) {
      max_id = std::max(max_id, t.id);
      max_revision = std::max(max_revision, t.revision);
    }
    VAULTP11_ASSIGN_OR_RETURN(int64_t source_sequence, IdSequence(src));
    max_id = std::max(max_id, source_sequence);
    VAULTP11_ASSIGN_OR_RETURN(source_revision, src.Revision());

    VAULTP11_ASSIGN_OR_RETURN(bool have_deleted, src.HasTable("deleted_items"));
    if (have_deleted)
      VAULTP11_RETURN_IF_ERROR(src.Run("SELECT vault, name, deleted, purge_after FROM deleted_items", {},
                                       [&](const Row& r) {
                                         deleted.push_back(Deleted{r.Text(0), r.Text(1), r.Int(2), r.Int(3)});
                                       },
                                       kMigrating)
                                   .status());
    VAULTP11_ASSIGN_OR_RETURN(bool have_policies, src.HasTable("item_policies"));
    if (have_policies) {
      VAULTP11_RETURN_IF_ERROR(src.Run("SELECT vault, name, policy FROM item_policies", {},
                                       [&](const Row& r) { policies.push_back({r.Text(0), r.Text(1), r.Text(2)}); },
                                       kMigrating)
                                   .status());
      VAULTP11_RETURN_IF_ERROR(
          src.Run("SELECT vault, name, version, what FROM notices", {},
                  [&](const Row& r) { notices.push_back({r.Text(0), r.Text(1), r.Text(2), r.Text(3)}); }, kMigrating)
              .status());
    }
    VAULTP11_RETURN_IF_ERROR(src.Run("SELECT key FROM meta WHERE key LIKE 'purge_protection:%'", {},
                                     [&](const Row& r) { protected_vaults.push_back(r.Text(0)); }, kMigrating)
                                 .status());
    VAULTP11_RETURN_IF_ERROR(RunOne(src, "SELECT value FROM meta WHERE key = 'deployment_id'", {},
                                    [&](const Row& r) { deployment_id = r.Text(0); }, kMigrating)
                                 .status());
    if (from.have_auth_tables) {
      VAULTP11_RETURN_IF_ERROR(
          src.Run("SELECT principal, failures, last_failure, locked_until FROM login_failures", {},
                  [&](const Row& r) { failures.push_back(Failures{r.Text(0), r.Int(1), r.Int(2), r.Int(3)}); },
                  kMigrating)
              .status());
      bool bad_jti = false;
      VAULTP11_RETURN_IF_ERROR(src.Run("SELECT value, expires FROM used_jtis", {},
                                       [&](const Row& r) {
                                         if (src.kind() == Db::Kind::kPostgres) {  // kept as hex there
                                           auto raw = ParseHex(r.Text(0));
                                           if (!raw) bad_jti = true;
                                           else jtis.emplace_back(std::move(*raw), r.Int(1));
                                         } else {
                                           jtis.emplace_back(r.Blob(0), r.Int(1));
                                         }
                                       },
                                       kMigrating)
                                   .status());
      if (bad_jti) return Err(CKR_DEVICE_ERROR, "{} holds a used JWT id that is not hex", from.name());
    }
    VAULTP11_ASSIGN_OR_RETURN(bool have_anchors, src.HasTable("audit_anchors"));
    if (have_anchors) {
      std::vector<std::string> macs;
      VAULTP11_RETURN_IF_ERROR(src.Run("SELECT sink, gen_time, gen_n, seq, hash, mac FROM audit_anchors ORDER BY sink", {},
                                       [&](const Row& r) {
                                         anchors.emplace_back(r.Text(0),
                                                              AuditAnchor{r.Int(1), r.Int(2), r.Int(3), r.Text(4)});
                                         macs.push_back(r.Text(5));
                                       },
                                       kMigrating)
                                   .status());
      VAULTP11_ASSIGN_OR_RETURN(SecureBytes key, from.AuditAnchorKey());
      for (size_t i = 0; i < anchors.size(); ++i) {
        const std::string expect = AuditAnchorMac(key, anchors[i].first, anchors[i].second);
        if (expect.empty() || !ConstantTimeEqual(AsBytes(expect), AsBytes(macs[i])))
          return Err(CKR_DEVICE_ERROR,
                     "the audit anchor of {} in {} does not match its MAC (the row was edited, or written under another "
                     "master key): nothing was migrated",
                     anchors[i].first, from.name());
      }
    }
    counts.tombstones = static_cast<int64_t>(tombstones.size());
    counts.deleted_items = static_cast<int64_t>(deleted.size());
    counts.policies = static_cast<int64_t>(policies.size());
    counts.notices = static_cast<int64_t>(notices.size());
    counts.purge_protected = static_cast<int64_t>(protected_vaults.size());
    counts.login_failures = static_cast<int64_t>(failures.size());
    counts.used_jtis = static_cast<int64_t>(jtis.size());
    counts.audit_anchors = static_cast<int64_t>(anchors.size());
    return OkStatus();
  };
  // Under the source's write lock when it can take it (no other writer meanwhile: one
  // consistent state is copied); a read-only file is read as it is.
  VAULTP11_RETURN_IF_ERROR(src.read_only() ? read_source()
                                           : src.Transaction("reading a store to migrate", read_source));

  // ---- The copy: one transaction on the target. --------------------------------------------
  Status s = db.Transaction(kMigrating, [&]() -> Status {
    std::string held;
    for (const char* table : kItemTables) {
      VAULTP11_ASSIGN_OR_RETURN(int64_t n, CountRows(db, table));
      if (n > 0) held += fmt::format("{}{} {} rows", held.empty() ? "" : ", ", n, table);
    }
    if (!held.empty())
      return Err(CKR_FUNCTION_REJECTED,
                 "{} is not empty ({}): a store is migrated into an empty one only; nothing was changed", to.name(),
                 held);
    for (const Vault& v : vaults) {
      VAULTP11_ASSIGN_OR_RETURN(Bytes wrapped, to.WrapDataKey(v.name, v.keys.data));
      VAULTP11_RETURN_IF_ERROR(db.Run("INSERT INTO vaults(name, wrapped_data_key) VALUES(?, ?)",
                                      {v.name, Blob(wrapped)}, {}, "copying a vault")
                                   .status());
    }
    for (const Impl::RawObject& o : objects) {
      const ObjectRecord& r = o.record;
      const Param secret = r.has_secret ? Param(Blob(o.sealed)) : Param(Null{});
      VAULTP11_RETURN_IF_ERROR(
          db.Run("INSERT INTO objects(id, vault, class, label, ck_id, attributes, secret, revision, version, created, "
                 "mac) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 {r.id, r.vault, static_cast<int64_t>(r.object_class), r.label, Blob(r.ck_id), Blob(r.attributes),
                  secret, r.revision, r.version, r.created, Blob(o.mac)},
                 {}, "copying an object")
              .status());
    }
    for (const Tombstone& t : tombstones)
      VAULTP11_RETURN_IF_ERROR(db.Run("INSERT INTO tombstones(id, vault, revision) VALUES(?, ?, ?)",
                                      {t.id, t.vault, t.revision}, {}, "copying a deletion")
                                   .status());
    for (const Deleted& d : deleted)
      VAULTP11_RETURN_IF_ERROR(db.Run("INSERT INTO deleted_items(vault, name, deleted, purge_after) VALUES(?, ?, ?, ?)",
                                      {d.vault, d.name, d.deleted, d.purge_after}, {}, "copying a deleted item")
                                   .status());
    for (const auto& p : policies)
      VAULTP11_RETURN_IF_ERROR(db.Run("INSERT INTO item_policies(vault, name, policy) VALUES(?, ?, ?)",
                                      {p[0], p[1], p[2]}, {}, "copying a policy")
                                   .status());
    for (const auto& n : notices)
      VAULTP11_RETURN_IF_ERROR(db.Run("INSERT INTO notices(vault, name, version, what) VALUES(?, ?, ?, ?)",
                                      {n[0], n[1], n[2], n[3]}, {}, "copying a notice")
                                   .status());
    for (const std::string& key : protected_vaults)
      VAULTP11_RETURN_IF_ERROR(db.Run("INSERT INTO meta(key, value) VALUES(?, '1') ON CONFLICT(key) DO NOTHING", {key},
                                      {}, "copying purge protection")
                                   .status());
    // The deployment id stays the deployment's: resource ids (JWT audiences) and backups name it.
    if (!deployment_id.empty())
      VAULTP11_RETURN_IF_ERROR(db.Run("INSERT INTO meta(key, value) VALUES('deployment_id', ?1) "
                                      "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                                      {deployment_id}, {}, "copying the deployment id")
                                   .status());
    // Login state: what the target already recorded (nothing, normally) is kept.
    for (const Failures& f : failures)
      VAULTP11_RETURN_IF_ERROR(db.Run("INSERT INTO login_failures(principal, failures, last_failure, locked_until) "
                                      "VALUES(?, ?, ?, ?) ON CONFLICT(principal) DO NOTHING",
                                      {f.principal, f.failures, f.last_failure, f.locked_until}, {},
                                      "copying failed logins")
                                   .status());
    const bool hex_jtis = db.kind() == Db::Kind::kPostgres;
    for (const auto& [raw, expires] : jtis) {
      const std::string hex = hex_jtis ? HexOf(raw) : std::string();
      const std::string_view value =
          hex_jtis ? std::string_view(hex) : std::string_view(reinterpret_cast<const char*>(raw.data()), raw.size());
      VAULTP11_RETURN_IF_ERROR(db.Run("INSERT INTO used_jtis(value, expires) VALUES(?, ?) ON CONFLICT(value) DO NOTHING",
                                      {value, expires}, {}, "copying used JWT ids")
                                   .status());
    }
    if (!anchors.empty()) {
      if (db.kind() == Db::Kind::kSqlite)
        VAULTP11_RETURN_IF_ERROR(db.Script("CREATE TABLE IF NOT EXISTS audit_anchors(sink TEXT PRIMARY KEY, "
                                           "gen_time INTEGER NOT NULL, gen_n INTEGER NOT NULL, seq INTEGER NOT NULL, "
                                           "hash TEXT NOT NULL, mac TEXT NOT NULL)",
                                           "creating the audit anchors"));
      VAULTP11_ASSIGN_OR_RETURN(SecureBytes key, to.AuditAnchorKey());
      for (const auto& [sink, a] : anchors) {
        const std::string mac = AuditAnchorMac(key, sink, a);
        if (mac.empty()) return Err(CKR_FUNCTION_FAILED, "audit anchor for {}: cannot compute its MAC", sink);
        // Only forwards, as AdvanceAuditAnchor: an anchor the target has further along stays.
        VAULTP11_RETURN_IF_ERROR(
            db.Run("INSERT INTO audit_anchors(sink, gen_time, gen_n, seq, hash, mac) VALUES(?1, ?2, ?3, ?4, ?5, ?6) "
                   "ON CONFLICT(sink) DO UPDATE SET gen_time = excluded.gen_time, gen_n = excluded.gen_n, "
                   "seq = excluded.seq, hash = excluded.hash, mac = excluded.mac "
                   "WHERE (excluded.gen_time, excluded.gen_n, excluded.seq) > "
                   "(audit_anchors.gen_time, audit_anchors.gen_n, audit_anchors.seq)",
                   {sink, a.gen_time, a.gen_n, a.seq, a.hash, mac}, {}, "copying an audit anchor")
                .status());
      }
    }
    // New rows get ids above every id the source gave (deleted rows' too: tombstones name them).
    VAULTP11_RETURN_IF_ERROR(RaiseIdSequence(db, max_id));
    // The counter above every copied revision, then one more step (other hosts of the target
    // see a change: PostgreSQL notifies them).
    VAULTP11_ASSIGN_OR_RETURN(int64_t target_revision, db.Revision());
    VAULTP11_RETURN_IF_ERROR(SetRevision(db, std::max({target_revision, source_revision, max_revision})));
    VAULTP11_ASSIGN_OR_RETURN(counts.revision, db.BumpRevision());

    // ---- Read back through this store before committing. ----
    to.vault_keys.clear();
    for (const Vault& v : vaults) {
      VAULTP11_ASSIGN_OR_RETURN(const Impl::VaultKeys* keys, to.Keys(v.name));
      if (!keys->authenticated || !ConstantTimeEqual(keys->data, v.keys.data))
        return Err(CKR_DEVICE_ERROR, "vault '{}' does not read back from {}", v.name, to.name());
    }
    VAULTP11_ASSIGN_OR_RETURN(std::vector<Impl::RawObject> back, to.ReadAllObjects("reading the copy back"));
    if (back.size() != objects.size())
      return Err(CKR_DEVICE_ERROR, "{}: {} objects copied, {} read back", to.name(), objects.size(), back.size());
    for (const Impl::RawObject& o : back) {
      VAULTP11_RETURN_IF_ERROR(to.CheckRow(o.record, o.mac));
      if (!o.record.has_secret) continue;
      VAULTP11_ASSIGN_OR_RETURN(const SecureBytes* data_key, to.DataKey(o.record.vault));
      if (!ossl::OpenAesGcm(*data_key, o.sealed, AsBytes(ObjectAad(o.record.vault, o.record.id))).ok())
        return Err(CKR_DEVICE_ERROR, "the secret of object {} of vault '{}' does not read back from {}", o.record.id,
                   o.record.vault, to.name());
    }
    return OkStatus();
  });
  if (!s.ok()) {
    to.vault_keys.clear();  // keys of vaults that were rolled back
    return s.error();
  }
  if (!deployment_id.empty()) to.deployment_id = deployment_id;
  log::Info("{} migrated into {}: {} vaults, {} objects", from.name(), to.name(), counts.vaults, counts.objects);
  return counts;
}

}  // namespace vaultp11::store

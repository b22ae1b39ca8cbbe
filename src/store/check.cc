// Checking a store: Store::Check reads every row of every table the module relies on and says
// what is wrong, writing nothing (see store.h).
#include <algorithm>
#include <map>
#include <set>

#include "backend/ossl/ossl_backend.h"
#include "store/impl.h"
#include "util/strings.h"

namespace vaultp11::store {

namespace {

constexpr std::string_view kChecking = "checking the store";

// Names and labels as problems show them: quoted, escaped (a tampered row may hold anything).
std::string Q(std::string_view s) { return QuotePrintable(s, 130); }

// How a problem names an object: its vault, row id and (when it has one) its item.
std::string ObjectName(const ObjectRecord& r) {
  if (r.label.empty()) return fmt::format("vault {} object {}", Q(r.vault), r.id);
  return fmt::format("vault {} item {} object {}", Q(r.vault), Q(r.label), r.id);
}

}  // namespace

Result<Store::CheckReport> Store::Check() {
  std::lock_guard<std::mutex> lock(mu_);
  Impl& impl = *impl_;
  Db& db = *impl.db;
  CheckReport report;
  StoreCounts& counts = report.counts;
  auto problem = [&](std::string text) { report.problems.push_back(std::move(text)); };

  VAULTP11_ASSIGN_OR_RETURN(counts.revision, db.Revision());

  // ---- Vaults: each data key opens with this store's master key (checked afresh, not cached).
  std::vector<std::pair<std::string, Bytes>> wrapped;
  VAULTP11_RETURN_IF_ERROR(db.Run("SELECT name, wrapped_data_key FROM vaults ORDER BY name", {},
                                  [&](const Row& r) { wrapped.emplace_back(r.Text(0), r.Blob(1)); }, kChecking)
                               .status());
  counts.vaults = static_cast<int64_t>(wrapped.size());
  std::map<std::string, Impl::VaultKeys, std::less<>> keys;
  std::set<std::string, std::less<>> vault_names, unreadable;
  for (auto& [vault, w] : wrapped) {
    vault_names.insert(vault);
    auto k = impl.Unwrap(vault, w);
    if (!k.ok()) {
      unreadable.insert(vault);
      problem(fmt::format("vault {}: its data key does not open with the root key from {} (a wrong master key, or "
                          "a tampered vault row): its objects cannot be checked",
                          Q(vault), impl.root_source));
      continue;
    }
    if (!k->authenticated)
      problem(fmt::format("vault {}: written by an earlier version, its objects carry no MACs (open the store "
                          "writable once to upgrade it)",
                          Q(vault)));
    keys.emplace(vault, std::move(k).value());
  }

  // ---- Objects: MAC, secret, revision. ------------------------------------------------------
  VAULTP11_ASSIGN_OR_RETURN(std::vector<Impl::RawObject> objects, impl.ReadAllObjects(kChecking));
  counts.objects = static_cast<int64_t>(objects.size());
  std::map<int64_t, const ObjectRecord*> by_id;
  std::map<std::pair<std::string, std::string>, std::vector<const ObjectRecord*>> items;  // labelled rows, by id
  std::map<std::string, int64_t> unchecked;  // rows of vaults whose key does not open
  for (const Impl::RawObject& o : objects) {
    const ObjectRecord& r = o.record;
    by_id[r.id] = &r;
    if (!r.label.empty()) items[{r.vault, r.label}].push_back(&r);
    if (r.has_secret) ++counts.secrets;
    if (r.revision > counts.revision)
      problem(fmt::format("{}: revision {} is above the store's revision counter {} (other hosts would miss its "
                          "changes)",
                          ObjectName(r), r.revision, counts.revision));
    if (vault_names.count(r.vault) == 0) {
      problem(fmt::format("{}: no such vault (a row moved to another vault, or a vault row deleted)", ObjectName(r)));
      continue;
    }
    if (unreadable.count(r.vault) != 0) {
      ++unchecked[r.vault];
      continue;
    }
    const Impl::VaultKeys& k = keys.find(r.vault)->second;
    if (k.authenticated) {
      VAULTP11_ASSIGN_OR_RETURN(Bytes expect, RecordMac(k.mac.get(), r));
      if (o.mac.size() != expect.size() || !ConstantTimeEqual(o.mac, expect))
        problem(fmt::format("{}: its record MAC does not match (the row was changed outside vaultp11)",
                            ObjectName(r)));
    }
    if (r.has_secret && !ossl::OpenAesGcm(k.data, o.sealed, AsBytes(ObjectAad(r.vault, r.id))).ok())
      problem(fmt::format("{}: its secret does not decrypt (tampered ciphertext, or moved from another row)",
                          ObjectName(r)));
    if (r.label.empty() && !r.version.empty())
      problem(fmt::format("{}: an object without a label has version {}", ObjectName(r), Q(r.version)));
  }
  for (const auto& [vault, n] : unchecked)
    problem(fmt::format("vault {}: {} objects not checked (its data key does not open)", Q(vault), n));

  // ---- Names and versions. --------------------------------------------------------------------
  std::set<std::tuple<std::string, std::string, std::string>> versions;
  for (const auto& [key, rows] : items) {
    const auto& [vault, label] = key;
    const std::string item = fmt::format("vault {} item {}", Q(vault), Q(label));
    // Per version: its CKA_ID (the first row's) and classes.
    std::map<std::string, std::pair<Bytes, std::set<CK_OBJECT_CLASS>>> seen;
    for (const ObjectRecord* r : rows) {
      if (r->version.empty()) {
        problem(fmt::format("{}: object {} has a label but no version", item, r->id));
        continue;
      }
      versions.emplace(vault, label, r->version);
      auto [it, fresh] = seen.try_emplace(r->version, r->ck_id, std::set<CK_OBJECT_CLASS>{});
      if (!fresh && it->second.first != r->ck_id)
        problem(fmt::format("{} version {}: object {} has another CKA_ID than the version's other objects", item,
                            r->version, r->id));
      if (!it->second.second.insert(r->object_class).second)
        problem(fmt::format("{} version {}: object {} is a second object of class 0x{:x}", item, r->version, r->id,
                            r->object_class));
    }
    // The current version is the newest row's: it must be a version.
    if (!rows.empty() && rows.back()->version.empty())
      problem(fmt::format("{}: no current version (its newest object {} has none)", item, rows.back()->id));
  }
  counts.items = static_cast<int64_t>(items.size());
  counts.versions = static_cast<int64_t>(versions.size());

  // ---- Deleted items, tombstones. -------------------------------------------------------------
  std::set<std::pair<std::string, std::string>> deleted;
  if (*impl.live_filter != '\0') {
    VAULTP11_RETURN_IF_ERROR(db.Run("SELECT vault, name FROM deleted_items ORDER BY vault, name", {},
                                    [&](const Row& r) { deleted.emplace(r.Text(0), r.Text(1)); }, kChecking)
                                 .status());
  }
  counts.deleted_items = static_cast<int64_t>(deleted.size());
  for (const auto& d : deleted)
    if (items.count(d) == 0)
      problem(fmt::format("vault {} deleted item {}: it has no objects (nothing to recover)", Q(d.first),
                          Q(d.second)));
  struct Tomb {
    int64_t id;
    std::string vault;
    int64_t revision;
  };
  std::vector<Tomb> tombs;
  VAULTP11_RETURN_IF_ERROR(db.Run("SELECT id, vault, revision FROM tombstones ORDER BY id", {},
                                  [&](const Row& r) { tombs.push_back(Tomb{r.Int(0), r.Text(1), r.Int(2)}); },
                                  kChecking)
                               .status());
  counts.tombstones = static_cast<int64_t>(tombs.size());
  for (const Tomb& t : tombs) {
    if (t.revision > counts.revision)
      problem(fmt::format("vault {} deletion of object {}: revision {} is above the store's revision counter {}",
                          Q(t.vault), t.id, t.revision, counts.revision));
    auto it = by_id.find(t.id);
    if (it == by_id.end()) continue;
    const ObjectRecord& r = *it->second;
    // A soft-deleted item's rows stay, with tombstones: only a live row is wrong.
    if (r.label.empty() || deleted.count({r.vault, r.label}) == 0)
      problem(fmt::format("{}: it is live but recorded as deleted (other hosts drop it)", ObjectName(r)));
  }

  // ---- Policies, notices, purge protection (counted). -----------------------------------------
  VAULTP11_ASSIGN_OR_RETURN(bool have_policies, db.HasTable("item_policies"));
  if (have_policies) {
    VAULTP11_ASSIGN_OR_RETURN(counts.policies, QueryInt(db, "SELECT count(*) FROM item_policies", {}, kChecking));
    VAULTP11_ASSIGN_OR_RETURN(counts.notices, QueryInt(db, "SELECT count(*) FROM notices", {}, kChecking));
  }
  VAULTP11_ASSIGN_OR_RETURN(counts.purge_protected,
                            QueryInt(db, "SELECT count(*) FROM meta WHERE key LIKE 'purge_protection:%'", {}, kChecking));

  // ---- Audit anchors. -------------------------------------------------------------------------
  VAULTP11_ASSIGN_OR_RETURN(bool have_anchors, db.HasTable("audit_anchors"));
  if (have_anchors) {
    std::vector<std::pair<std::string, AuditAnchor>> anchors;
    std::vector<std::string> macs;
    VAULTP11_RETURN_IF_ERROR(db.Run("SELECT sink, gen_time, gen_n, seq, hash, mac FROM audit_anchors ORDER BY sink", {},
                                    [&](const Row& r) {
                                      anchors.emplace_back(r.Text(0), AuditAnchor{r.Int(1), r.Int(2), r.Int(3), r.Text(4)});
                                      macs.push_back(r.Text(5));
                                    },
                                    kChecking)
                                 .status());
    counts.audit_anchors = static_cast<int64_t>(anchors.size());
    VAULTP11_ASSIGN_OR_RETURN(SecureBytes key, impl.AuditAnchorKey());
    for (size_t i = 0; i < anchors.size(); ++i) {
      const std::string expect = AuditAnchorMac(key, anchors[i].first, anchors[i].second);
      if (expect.empty() || !ConstantTimeEqual(AsBytes(expect), AsBytes(macs[i])))
        problem(fmt::format("audit anchor of {}: it does not match its MAC (the row was edited, or written under "
                            "another master key)",
                            Q(anchors[i].first)));
    }
  }
  return report;
}

}  // namespace vaultp11::store

#include "core/token.h"

#include <openssl/sha.h>

#include "util/log.h"

namespace vaultp11::core {

namespace {
// A stable serial number: the first 8 bytes of SHA-256("vaultp11:" + name), in hex.
std::string SerialFor(const std::string& name) {
  std::string in = "vaultp11:" + name;
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(in.data()), in.size(), md);
  return fmt::format("{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}", md[0], md[1], md[2], md[3], md[4],
                     md[5], md[6], md[7]);
}
// The 16 bytes a version id (32 lowercase hex digits) spells.
Bytes VersionBytes(std::string_view hex) {
  auto nibble = [](char c) { return static_cast<uint8_t>(c <= '9' ? c - '0' : c - 'a' + 10); };
  Bytes out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out.push_back(static_cast<uint8_t>(nibble(hex[i]) << 4 | nibble(hex[i + 1])));
  return out;
}
}  // namespace

Token::Token(CK_SLOT_ID slot_id, const config::VaultConfig& vault, store::Store* store,
             std::atomic<CK_OBJECT_HANDLE>* next_handle)
    : slot_id_(slot_id), name_(vault.name), serial_(SerialFor(vault.name)), store_(store), next_handle_(next_handle) {}

Token::Token(CK_SLOT_ID slot_id, std::shared_ptr<pool::HsmPool> pool, store::Store* store,
             std::atomic<CK_OBJECT_HANDLE>* next_handle)
    : slot_id_(slot_id),
      name_(pool->name()),
      serial_(SerialFor(pool->name())),
      store_(store),
      next_handle_(next_handle),
      default_hsm_(true),
      pool_(std::move(pool)) {
  model::HsmKey base;
  base.pool = pool_;
  hsm_ = std::move(base);
}

Token::~Token() {
  if (pool_) pool_->StopHealthCheck();
}

Result<std::vector<pool::CatalogEntry>> Token::PoolCatalog() {
  VAULTP11_RETURN_IF_ERROR(EnsureLoaded(nullptr, nullptr));
  std::vector<pool::CatalogEntry> out;
  std::shared_lock<std::shared_mutex> l(mu_);
  for (const auto& [h, o] : objects_) {
    const model::HsmKey* k = o->material ? o->material->hsm() : nullptr;
    if (k && k->pool) out.push_back(pool::CatalogEntry{k->object_class, k->inner_id});
  }
  return out;
}

std::shared_ptr<model::Object> Token::FromRecord(const store::ObjectRecord& rec, Status* st) {
  auto attrs = model::AttributeMap::Deserialize(rec.attributes);
  if (!attrs.ok()) {
    *st = attrs.status();
    return nullptr;
  }
  auto obj = std::make_shared<model::Object>();
  obj->attrs = std::move(attrs).value();
  obj->attrs.SetString(CKA_VAULTP11_VERSION, rec.version);  // the row's column is the truth
  obj->store_id = rec.id;
  // HSM keys: the private half of a pair, or a pool's AES key.
  if (obj->attrs.GetUlong(CKA_VAULTP11_PROTECTION) == VAULTP11_PROTECTION_HSM &&
      (obj->cls() == CKO_PRIVATE_KEY || obj->cls() == CKO_SECRET_KEY)) {
    model::HsmKey ref = hsm_ ? *hsm_ : model::HsmKey{nullptr, "the vault has no HSM configured", {}, CKO_PRIVATE_KEY};
    const Bytes* id = obj->attrs.Get(CKA_VAULTP11_HSM_KEY_ID);
    ref.inner_id = id ? *id : Bytes{};
    ref.object_class = obj->cls();
    obj->material = std::make_shared<model::Material>(std::move(ref));
  } else if (rec.has_secret) {
    store::Store* s = store_;
    int64_t id = rec.id;
    obj->material = std::make_shared<model::Material>([s, id]() { return s->LoadSecret(id); });
  } else {
    obj->material = std::make_shared<model::Material>();
  }
  return obj;
}

Status Token::Load() {
  // Rows read later are at least this new; ApplyChanges brings every change after it.
  VAULTP11_ASSIGN_OR_RETURN(int64_t rev, store_->Revision());
  std::unique_lock<std::shared_mutex> l(mu_);
  revision_ = rev;
  return OkStatus();
}

bool Token::LoadedLocked(const std::string* label, const Bytes* id) const {
  if (complete_) return true;
  if (label != nullptr) return loaded_labels_.count(*label) != 0;
  if (id != nullptr) return loaded_ids_.count(std::string(id->begin(), id->end())) != 0;
  return false;
}

Status Token::EnsureLoaded(const std::string* label, const Bytes* id) {
  {
    std::shared_lock<std::shared_mutex> l(mu_);
    if (LoadedLocked(label, id)) return OkStatus();
  }
  std::lock_guard<std::mutex> g(load_mu_);
  {
    std::shared_lock<std::shared_mutex> l(mu_);
    if (LoadedLocked(label, id)) return OkStatus();  // read by another thread meanwhile
    // Past kMaxRemembered labels and CKA_IDs read, everything is read instead (the sets would
    // otherwise grow with every distinct search, misses included).
    if (loaded_labels_.size() + loaded_ids_.size() >= kMaxRemembered) label = nullptr, id = nullptr;
  }
  VAULTP11_ASSIGN_OR_RETURN(auto rows, label != nullptr ? store_->LoadByLabel(name_, *label)
                                       : id != nullptr  ? store_->LoadById(name_, *id)
                                                        : store_->LoadVault(name_));
  // Parsed before the exclusive lock, so searches and operations on other threads go on.
  std::vector<std::shared_ptr<model::Object>> objs;
  objs.reserve(rows.size());
  {
    std::shared_lock<std::shared_mutex> l(mu_);
    for (const auto& rec : rows) {
      // Rows already here are as new as the store's, or ApplyChanges brings them up to date.
      if (by_store_id_.count(rec.id) != 0) continue;
      Status st;
      auto obj = FromRecord(rec, &st);
      if (!obj) {
        log::Warning("vault {}: object {} unreadable: {}", name_, rec.id, st.error().message);
        continue;
      }
      objs.push_back(std::move(obj));
    }
  }
  std::unique_lock<std::shared_mutex> l(mu_);
  for (auto& obj : objs) {
    const int64_t sid = obj->store_id;
    if (by_store_id_.count(sid) == 0) by_store_id_[sid] = InsertLocked(std::move(obj));
  }
  if (label != nullptr) {
    loaded_labels_.insert(*label);
  } else if (id != nullptr) {
    loaded_ids_.insert(std::string(id->begin(), id->end()));
  } else {
    complete_ = true;
    loaded_labels_ = {};
    loaded_ids_ = {};
  }
  return OkStatus();
}

Status Token::ApplyChanges() {
  std::lock_guard<std::mutex> g(load_mu_);
  int64_t since;
  {
    std::shared_lock<std::shared_mutex> l(mu_);
    since = revision_;
  }
  VAULTP11_ASSIGN_OR_RETURN(int64_t rev, store_->Revision());
  if (rev <= since) return OkStatus();
  VAULTP11_ASSIGN_OR_RETURN(auto changed, store_->ChangedSince(name_, since));
  VAULTP11_ASSIGN_OR_RETURN(auto deleted, store_->DeletedSince(name_, since));
  // Parsed under the shared lock (what is here cannot change meanwhile: every insert and
  // removal of a stored object holds load_mu_), applied under the exclusive one.
  std::vector<std::shared_ptr<model::Object>> objs;
  {
    std::shared_lock<std::shared_mutex> l(mu_);
    for (const auto& rec : changed) {
      // Rows of labels and CKA_IDs not read yet are read when first searched for.
      if (by_store_id_.count(rec.id) == 0 && !complete_ && loaded_labels_.count(rec.label) == 0 &&
          loaded_ids_.count(std::string(rec.ck_id.begin(), rec.ck_id.end())) == 0)
        continue;
      Status st;
      if (auto obj = FromRecord(rec, &st)) objs.push_back(std::move(obj));
    }
  }
  std::unique_lock<std::shared_mutex> l(mu_);
  for (auto& obj : objs) {
    const int64_t sid = obj->store_id;
    auto it = by_store_id_.find(sid);
    if (it != by_store_id_.end()) {
      // Same object, new attributes: keep its handle (and its loaded material).
      auto old = objects_.find(it->second);
      if (old != objects_.end()) {
        obj->material = old->second->material;
        UnindexLocked(it->second, *old->second);
        old->second = obj;
        IndexLocked(it->second, *obj);
      }
    } else {
      by_store_id_[sid] = InsertLocked(std::move(obj));
    }
  }
  for (int64_t id : deleted) {
    auto it = by_store_id_.find(id);
    if (it == by_store_id_.end()) continue;
    auto o = objects_.find(it->second);
    if (o != objects_.end()) {
      UnindexLocked(it->second, *o->second);
      objects_.erase(o);
    }
    by_store_id_.erase(it);
  }
  if (rev > revision_) revision_ = rev;
  return OkStatus();
}

Result<model::ObjectPtr> Token::Get(CK_OBJECT_HANDLE h) const {
  std::shared_lock<std::shared_mutex> l(mu_);
  auto it = objects_.find(h);
  if (it == objects_.end()) return Err(CKR_OBJECT_HANDLE_INVALID, "object handle {} is not valid on this token", h);
  return it->second;
}

void Token::IndexLocked(CK_OBJECT_HANDLE h, const model::Object& o) {
  std::string label = o.label();
  by_label_.emplace(label, h);
  const Bytes* id = o.attrs.Get(CKA_ID);
  by_id_.emplace(id ? *id : Bytes{}, h);
  by_class_.emplace(o.cls(), h);
  const Bytes* v = o.attrs.Get(CKA_VAULTP11_VERSION);
  if (o.store_id != 0 && v != nullptr && !v->empty() && !label.empty()) {
    Current& c = current_[label];
    if (o.store_id > c.store_id) c = Current{o.store_id, *v};
  }
}

void Token::RecomputeCurrentLocked(const std::string& label) {
  Current best;
  auto [b, e] = by_label_.equal_range(label);
  for (auto it = b; it != e; ++it) {
    auto o = objects_.find(it->second);
    if (o == objects_.end()) continue;
    const Bytes* v = o->second->attrs.Get(CKA_VAULTP11_VERSION);
    if (o->second->store_id > best.store_id && v != nullptr && !v->empty()) best = Current{o->second->store_id, *v};
  }
  if (best.store_id == 0)
    current_.erase(label);
  else
    current_[label] = std::move(best);
}

bool Token::IsOlderVersionLocked(const model::Object& o) const {
  if (o.store_id == 0) return false;
  const Bytes* v = o.attrs.Get(CKA_VAULTP11_VERSION);
  if (v == nullptr || v->empty()) return false;
  auto it = current_.find(o.label());
  return it != current_.end() && it->second.version != *v;
}

void Token::UnindexLocked(CK_OBJECT_HANDLE h, const model::Object& o) {
  auto drop = [h](auto& index, const auto& key) {
    auto [b, e] = index.equal_range(key);
    for (auto it = b; it != e; ++it)
      if (it->second == h) {
        index.erase(it);
        return;
      }
  };
  std::string label = o.label();
  drop(by_label_, label);
  const Bytes* id = o.attrs.Get(CKA_ID);
  drop(by_id_, id ? *id : Bytes{});
  drop(by_class_, o.cls());
  auto c = current_.find(label);
  if (c != current_.end() && c->second.store_id == o.store_id) RecomputeCurrentLocked(label);
}

CK_OBJECT_HANDLE Token::InsertLocked(std::shared_ptr<const model::Object> obj) {
  CK_OBJECT_HANDLE h = next_handle_->fetch_add(1);
  IndexLocked(h, *obj);
  objects_.emplace(h, std::move(obj));
  return h;
}

Status Token::Persist(std::span<model::Object* const> objs, bool new_version, std::string_view expect_current) {
  std::string label = objs.front()->label();
  std::string version;
  if (!label.empty()) {
    VAULTP11_ASSIGN_OR_RETURN(version, store::NewVersionId());
    // Keys (and certificates) without a CKA_ID get the version's 16 bytes: short, stable and
    // different for every version. Both halves of a pair share one id.
    Bytes ck_id;
    for (model::Object* o : objs)
      if (const Bytes* id = o->attrs.Get(CKA_ID); id != nullptr && !id->empty()) ck_id = *id;
    if (ck_id.empty())
      ck_id = VersionBytes(version);
    for (model::Object* o : objs) {
      if (o->cls() != CKO_DATA && (o->attrs.Get(CKA_ID) == nullptr || o->attrs.Get(CKA_ID)->empty()))
        o->attrs.Set(CKA_ID, ck_id);
      o->attrs.SetString(CKA_VAULTP11_VERSION, version);
    }
  }
  std::vector<store::ObjectRecord> recs;
  std::vector<SecureBytes> secrets;
  for (model::Object* o : objs) {
    store::ObjectRecord rec;
    rec.vault = name_;
    rec.object_class = o->cls();
    rec.label = o->label();
    const Bytes* id = o->attrs.Get(CKA_ID);
    if (id) rec.ck_id = *id;
    rec.attributes = o->attrs.Serialize();
    rec.version = version;
    VAULTP11_ASSIGN_OR_RETURN(SecureBytes secret, model::SecretForStore(*o));
    rec.has_secret = !secret.empty();
    recs.push_back(std::move(rec));
    secrets.push_back(std::move(secret));
  }
  VAULTP11_ASSIGN_OR_RETURN(auto saved, store_->InsertVersion(std::move(recs), secrets, new_version, expect_current));
  for (size_t i = 0; i < objs.size(); ++i) {
    objs[i]->store_id = saved[i].id;
    objs[i]->attrs.SetString(CKA_VAULTP11_VERSION, saved[i].version);  // joined: the current one
  }
  return OkStatus();
}

CK_OBJECT_HANDLE Token::InsertPersistedLocked(std::shared_ptr<model::Object> obj) {
  int64_t sid = obj->store_id;
  if (sid != 0) {
    // A concurrent ApplyChanges may have picked the new row up already: keep its handle.
    auto it = by_store_id_.find(sid);
    if (it != by_store_id_.end()) {
      auto o = objects_.find(it->second);
      if (o != objects_.end()) {
        UnindexLocked(it->second, *o->second);
        IndexLocked(it->second, *obj);
        o->second = std::move(obj);
        return it->second;
      }
    }
  }
  CK_OBJECT_HANDLE h = InsertLocked(std::move(obj));
  if (sid != 0) by_store_id_[sid] = h;
  return h;
}

Result<CK_OBJECT_HANDLE> Token::Add(std::shared_ptr<model::Object> obj, bool new_version, std::string_view expect_current) {
  // Writes and their insertion here are serialised with reads and removals (load_mu_), so a
  // row removed between the two never comes back.
  std::lock_guard<std::mutex> g(load_mu_);
  if (obj->is_token()) {
    model::Object* one[] = {obj.get()};
    VAULTP11_RETURN_IF_ERROR(Persist(one, new_version, expect_current));
  }
  std::unique_lock<std::shared_mutex> l(mu_);
  return InsertPersistedLocked(std::move(obj));
}

Result<std::pair<CK_OBJECT_HANDLE, CK_OBJECT_HANDLE>> Token::AddPair(std::shared_ptr<model::Object> pub,
                                                                      std::shared_ptr<model::Object> priv,
                                                                      bool new_version, std::string_view expect_current) {
  std::lock_guard<std::mutex> g(load_mu_);  // as in Add
  if (pub->is_token() && priv->is_token() && pub->label() == priv->label()) {
    model::Object* both[] = {priv.get(), pub.get()};
    VAULTP11_RETURN_IF_ERROR(Persist(both, new_version, expect_current));
  } else {
    // Halves with different labels or lifetimes are separate items.
    if (pub->is_token()) {
      model::Object* one[] = {pub.get()};
      VAULTP11_RETURN_IF_ERROR(Persist(one, new_version));
    }
    if (priv->is_token()) {
      model::Object* one[] = {priv.get()};
      Status st = Persist(one, new_version);
      if (!st.ok()) {
        if (pub->store_id != 0) (void)store_->Delete(pub->store_id);  // no half pair left behind
        return st.error();
      }
    }
  }
  std::unique_lock<std::shared_mutex> l(mu_);
  CK_OBJECT_HANDLE hp = InsertPersistedLocked(std::move(pub));
  CK_OBJECT_HANDLE hv = InsertPersistedLocked(std::move(priv));
  return std::make_pair(hp, hv);
}

Result<std::vector<CK_OBJECT_HANDLE>> Token::AddVersion(const std::vector<std::shared_ptr<model::Object>>& objs,
                                                        bool new_version, std::string_view expect_current) {
  std::vector<model::Object*> raw;
  for (const auto& o : objs) {
    if (!o->is_token() || o->label() != objs.front()->label())
      return Err(CKR_GENERAL_ERROR, "AddVersion: the objects of one version are token objects of one label");
    raw.push_back(o.get());
  }
  if (raw.empty()) return std::vector<CK_OBJECT_HANDLE>{};
  std::lock_guard<std::mutex> g(load_mu_);  // as in Add
  VAULTP11_RETURN_IF_ERROR(Persist(raw, new_version, expect_current));
  std::unique_lock<std::shared_mutex> l(mu_);
  std::vector<CK_OBJECT_HANDLE> out;
  for (const auto& o : objs) out.push_back(InsertPersistedLocked(o));
  return out;
}

Status Token::Replace(CK_OBJECT_HANDLE h, std::shared_ptr<model::Object> obj) {
  // Serialised with ApplyChanges, which could otherwise put another process's older copy of
  // the row back over this one.
  std::lock_guard<std::mutex> g(load_mu_);
  if (obj->is_token() && obj->store_id != 0) {
    const Bytes* id = obj->attrs.Get(CKA_ID);
    VAULTP11_ASSIGN_OR_RETURN(std::string version,
                              store_->Update(obj->store_id, obj->label(), id ? *id : Bytes{}, obj->attrs.Serialize()));
    obj->attrs.SetString(CKA_VAULTP11_VERSION, version);
  }
  std::unique_lock<std::shared_mutex> l(mu_);
  auto it = objects_.find(h);
  if (it == objects_.end()) return Err(CKR_OBJECT_HANDLE_INVALID, "object {} vanished", h);
  UnindexLocked(h, *it->second);
  IndexLocked(h, *obj);
  it->second = std::move(obj);
  return OkStatus();
}

Status Token::Remove(CK_OBJECT_HANDLE h) {
  model::ObjectPtr obj;
  {
    std::shared_lock<std::shared_mutex> l(mu_);
    auto it = objects_.find(h);
    if (it == objects_.end()) return Err(CKR_OBJECT_HANDLE_INVALID, "object handle {} is not valid", h);
    obj = it->second;
  }
  // An HSM key pair goes with its private object: both inner objects are destroyed (on every
  // member for a pool key), unless another version still uses the same HSM key (a certificate
  // renewed with --reuse-key).
  const bool shared = SharesHsmKey(*obj);
  {
    std::lock_guard<std::mutex> g(load_mu_);
    if (obj->store_id != 0) VAULTP11_RETURN_IF_ERROR(store_->Delete(obj->store_id));
    std::unique_lock<std::shared_mutex> l(mu_);
    auto it = objects_.find(h);
    if (it != objects_.end()) {
      UnindexLocked(h, *it->second);
      if (obj->store_id != 0) by_store_id_.erase(obj->store_id);
      objects_.erase(it);
    }
  }
  if (!shared) DiscardHsmKey(*obj);
  return OkStatus();
}

size_t Token::DropRowsLocked(const std::vector<store::ObjectRecord>& rows) {
  size_t n = 0;
  for (const store::ObjectRecord& r : rows) {
    auto it = by_store_id_.find(r.id);
    if (it == by_store_id_.end()) continue;
    auto o = objects_.find(it->second);
    if (o != objects_.end()) {
      UnindexLocked(it->second, *o->second);
      objects_.erase(o);
      ++n;
    }
    by_store_id_.erase(it);
  }
  return n;
}

Result<size_t> Token::RemoveItem(CK_OBJECT_HANDLE h) {
  VAULTP11_ASSIGN_OR_RETURN(model::ObjectPtr obj, Get(h));
  const std::string label = obj->label();
  if (!obj->is_token() || obj->store_id == 0 || label.empty())
    return Err(CKR_GENERAL_ERROR, "item removal of an object that is not a stored item");
  size_t n = 0;
  std::vector<store::ObjectRecord> gone;
  {
    std::lock_guard<std::mutex> g(load_mu_);
    VAULTP11_ASSIGN_OR_RETURN(gone, store_->DeleteItem(name_, label));
    std::unique_lock<std::shared_mutex> l(mu_);
    n = DropRowsLocked(gone);
  }
  // The HSM keys of every row that went, read here or not (a version another process added).
  for (const store::ObjectRecord& rec : gone) {
    Status st;
    if (auto o = FromRecord(rec, &st)) DiscardHsmKey(*o);
  }
  return n;
}

Result<std::vector<model::ObjectPtr>> Token::ItemObjects(const std::string& label) {
  VAULTP11_RETURN_IF_ERROR(EnsureLoaded(label.empty() ? nullptr : &label, nullptr));
  std::vector<model::ObjectPtr> out;
  std::shared_lock<std::shared_mutex> l(mu_);
  auto [b, e] = by_label_.equal_range(label);
  for (auto it = b; it != e; ++it) {
    auto o = objects_.find(it->second);
    if (o != objects_.end() && o->second->store_id != 0) out.push_back(o->second);
  }
  return out;
}

Result<size_t> Token::SoftDelete(CK_OBJECT_HANDLE h) {
  VAULTP11_ASSIGN_OR_RETURN(model::ObjectPtr obj, Get(h));
  const std::string label = obj->label();
  if (!obj->is_token() || obj->store_id == 0 || label.empty())
    return Err(CKR_GENERAL_ERROR, "soft-delete of an object that is not a stored item");
  const int64_t now = model::UnixNow();
  std::lock_guard<std::mutex> g(load_mu_);
  VAULTP11_ASSIGN_OR_RETURN(auto hidden, store_->SoftDeleteItem(name_, label, now,
                                                                now + int64_t{soft_delete_.retention_days} * 86400));
  std::unique_lock<std::shared_mutex> l(mu_);
  return DropRowsLocked(hidden);
}

bool Token::SharesHsmKey(const model::Object& obj) {
  const Bytes* id = obj.attrs.Get(CKA_VAULTP11_HSM_KEY_ID);
  if (id == nullptr || id->empty() || obj.cls() == CKO_PUBLIC_KEY || obj.store_id == 0) return false;
  if (Status st = EnsureLoaded(nullptr, nullptr); !st.ok()) {
    log::Warning("vault {}: the HSM key is kept: reading the vault's objects failed: {}", name_, st.error().message);
    return true;
  }
  std::shared_lock<std::shared_mutex> l(mu_);
  for (const auto& [h, o] : objects_)
    if (o.get() != &obj && o->cls() == obj.cls() && o->attrs.Get(CKA_VAULTP11_HSM_KEY_ID) != nullptr &&
        *o->attrs.Get(CKA_VAULTP11_HSM_KEY_ID) == *id)
      return true;
  return false;
}

void Token::DiscardHsmKey(const model::Object& obj) const {
  const model::HsmKey* hk = obj.material ? obj.material->hsm() : nullptr;
  if (hk && hk->pool) {
    hk->pool->DestroyEverywhere(hk->inner_id);
  } else if (hk && hk->token) {
    for (CK_OBJECT_CLASS cls : {CKO_PRIVATE_KEY, CKO_PUBLIC_KEY, CKO_SECRET_KEY}) {
      p11::AttrTemplate t;
      t.Ulong(CKA_CLASS, cls).Data(CKA_ID, hk->inner_id);
      auto found = hk->token->FindObjects(t);
      if (!found.ok()) continue;
      for (CK_OBJECT_HANDLE ih : *found) {
        Status st = hk->token->DestroyObject(ih);
        if (!st.ok()) log::Warning("vault {}: removing an HSM object failed: {}", name_, st.error().message);
      }
    }
  }
}

void Token::RemoveSessionObjects(CK_SESSION_HANDLE session) {
  std::unique_lock<std::shared_mutex> l(mu_);
  for (auto it = objects_.begin(); it != objects_.end();) {
    if (!it->second->is_token() && it->second->owner_session == session) {
      UnindexLocked(it->first, *it->second);
      it = objects_.erase(it);
    } else {
      ++it;
    }
  }
}

Result<std::vector<CK_OBJECT_HANDLE>> Token::Find(const model::AttributeMap& tmpl) {
  // What to read first: the label's rows, else the CKA_ID's, else all (an empty label or
  // CKA_ID is rare and matches many objects: all are read).
  const Bytes* label_attr = tmpl.Get(CKA_LABEL);
  const Bytes* id_attr = label_attr ? nullptr : tmpl.Get(CKA_ID);
  if (label_attr != nullptr && !label_attr->empty()) {
    const std::string label(label_attr->begin(), label_attr->end());
    VAULTP11_RETURN_IF_ERROR(EnsureLoaded(&label, nullptr));
  } else if (id_attr != nullptr && !id_attr->empty()) {
    VAULTP11_RETURN_IF_ERROR(EnsureLoaded(nullptr, id_attr));
  } else {
    VAULTP11_RETURN_IF_ERROR(EnsureLoaded(nullptr, nullptr));
  }
  std::vector<CK_OBJECT_HANDLE> out;
  std::shared_lock<std::shared_mutex> l(mu_);
  const bool all_versions = tmpl.Has(CKA_ID) || tmpl.Has(CKA_VAULTP11_VERSION);
  auto wanted = [&](const model::Object& o) {
    return (all_versions || !IsOlderVersionLocked(o)) && model::Matches(o, tmpl);
  };
  auto check = [&](CK_OBJECT_HANDLE h) {
    auto it = objects_.find(h);
    if (it != objects_.end() && wanted(*it->second)) out.push_back(h);
  };
  if (const Bytes* label = tmpl.Get(CKA_LABEL)) {
    auto [b, e] = by_label_.equal_range(std::string(label->begin(), label->end()));
    for (auto it = b; it != e; ++it) check(it->second);
  } else if (const Bytes* id = tmpl.Get(CKA_ID)) {
    auto [b, e] = by_id_.equal_range(*id);
    for (auto it = b; it != e; ++it) check(it->second);
  } else if (auto cls = tmpl.GetUlong(CKA_CLASS)) {
    auto [b, e] = by_class_.equal_range(*cls);
    for (auto it = b; it != e; ++it) check(it->second);
  } else {
    for (const auto& [h, o] : objects_)
      if (wanted(*o)) out.push_back(h);
  }
  // Handle order: rows read together get handles in store order (oldest first); a row read
  // earlier by its CKA_ID keeps the smaller handle it got then.
  std::sort(out.begin(), out.end());
  return out;
}

bool Token::logged_in() const {
  std::lock_guard<std::mutex> l(login_mu_);
  return grants_ != nullptr;
}

std::shared_ptr<const auth::Grants> Token::grants() const {
  std::lock_guard<std::mutex> l(login_mu_);
  return grants_;
}

Status Token::SetLogin(std::shared_ptr<const auth::Grants> g) {
  std::lock_guard<std::mutex> l(login_mu_);
  if (grants_ != nullptr) {
    if (grants_->principal == g->principal)
      return Err(CKR_USER_ALREADY_LOGGED_IN, "already logged in to vault {}", name());
    return Err(CKR_USER_ANOTHER_ALREADY_LOGGED_IN, "vault {}: another principal logged in first",
               name());
  }
  grants_ = std::move(g);
  return OkStatus();
}

void Token::Logout() {
  {
    std::lock_guard<std::mutex> l(login_mu_);
    grants_.reset();
  }
  // Spec 5.6 C_Logout: the application's private session objects are destroyed.
  std::unique_lock<std::shared_mutex> l(mu_);
  for (auto it = objects_.begin(); it != objects_.end();) {
    if (!it->second->is_token() && it->second->is_private()) {
      UnindexLocked(it->first, *it->second);
      it = objects_.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace vaultp11::core

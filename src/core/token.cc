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

std::vector<pool::CatalogEntry> Token::PoolCatalog() const {
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
  VAULTP11_ASSIGN_OR_RETURN(int64_t rev, store_->Revision());
  VAULTP11_ASSIGN_OR_RETURN(auto records, store_->LoadVault(name_));
  std::unique_lock<std::shared_mutex> l(mu_);
  for (const auto& rec : records) {
    Status st;
    auto obj = FromRecord(rec, &st);
    if (!obj) {
      log::Warning("vault {}: object {} unreadable: {}", name_, rec.id, st.error().message);
      continue;
    }
    by_store_id_[rec.id] = InsertLocked(std::move(obj));
  }
  revision_ = rev;
  return OkStatus();
}

Status Token::ApplyChanges() {
  int64_t since;
  {
    std::shared_lock<std::shared_mutex> l(mu_);
    since = revision_;
  }
  VAULTP11_ASSIGN_OR_RETURN(int64_t rev, store_->Revision());
  if (rev <= since) return OkStatus();
  VAULTP11_ASSIGN_OR_RETURN(auto changed, store_->ChangedSince(name_, since));
  VAULTP11_ASSIGN_OR_RETURN(auto deleted, store_->DeletedSince(name_, since));
  std::unique_lock<std::shared_mutex> l(mu_);
  for (const auto& rec : changed) {
    Status st;
    auto obj = FromRecord(rec, &st);
    if (!obj) continue;
    auto it = by_store_id_.find(rec.id);
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
      by_store_id_[rec.id] = InsertLocked(std::move(obj));
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
  by_label_.emplace(o.label(), h);
  const Bytes* id = o.attrs.Get(CKA_ID);
  by_id_.emplace(id ? *id : Bytes{}, h);
  by_class_.emplace(o.cls(), h);
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
  drop(by_label_, o.label());
  const Bytes* id = o.attrs.Get(CKA_ID);
  drop(by_id_, id ? *id : Bytes{});
  drop(by_class_, o.cls());
}

CK_OBJECT_HANDLE Token::InsertLocked(std::shared_ptr<const model::Object> obj) {
  CK_OBJECT_HANDLE h = next_handle_->fetch_add(1);
  IndexLocked(h, *obj);
  objects_.emplace(h, std::move(obj));
  return h;
}

Status Token::Persist(model::Object& obj) {
  store::ObjectRecord rec;
  rec.vault = name_;
  rec.object_class = obj.cls();
  rec.label = obj.label();
  const Bytes* id = obj.attrs.Get(CKA_ID);
  if (id) rec.ck_id = *id;
  rec.attributes = obj.attrs.Serialize();
  VAULTP11_ASSIGN_OR_RETURN(SecureBytes secret, model::SecretForStore(obj));
  rec.has_secret = !secret.empty();
  VAULTP11_ASSIGN_OR_RETURN(store::ObjectRecord saved, store_->Insert(std::move(rec), secret));
  obj.store_id = saved.id;
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

Result<CK_OBJECT_HANDLE> Token::Add(std::shared_ptr<model::Object> obj) {
  if (obj->is_token()) VAULTP11_RETURN_IF_ERROR(Persist(*obj));
  std::unique_lock<std::shared_mutex> l(mu_);
  return InsertPersistedLocked(std::move(obj));
}

Result<std::pair<CK_OBJECT_HANDLE, CK_OBJECT_HANDLE>> Token::AddPair(std::shared_ptr<model::Object> pub,
                                                                      std::shared_ptr<model::Object> priv) {
  if (pub->is_token()) VAULTP11_RETURN_IF_ERROR(Persist(*pub));
  if (priv->is_token()) {
    Status st = Persist(*priv);
    if (!st.ok()) {
      if (pub->store_id != 0) (void)store_->Delete(pub->store_id);  // no half pair left behind
      return st.error();
    }
  }
  std::unique_lock<std::shared_mutex> l(mu_);
  CK_OBJECT_HANDLE hp = InsertPersistedLocked(std::move(pub));
  CK_OBJECT_HANDLE hv = InsertPersistedLocked(std::move(priv));
  return std::make_pair(hp, hv);
}

Status Token::Replace(CK_OBJECT_HANDLE h, std::shared_ptr<model::Object> obj) {
  if (obj->is_token() && obj->store_id != 0) {
    const Bytes* id = obj->attrs.Get(CKA_ID);
    VAULTP11_RETURN_IF_ERROR(store_->Update(obj->store_id, obj->label(), id ? *id : Bytes{}, obj->attrs.Serialize()));
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
  if (obj->store_id != 0) VAULTP11_RETURN_IF_ERROR(store_->Delete(obj->store_id));
  // An HSM key pair goes with its private object: both inner objects are destroyed (on every
  // member for a pool key).
  const model::HsmKey* hk = obj->material ? obj->material->hsm() : nullptr;
  if (hk && hk->pool) {
    hk->pool->DestroyEverywhere(hk->inner_id);
  } else if (hk && hk->token) {
    for (CK_OBJECT_CLASS cls : {CKO_PRIVATE_KEY, CKO_PUBLIC_KEY}) {
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
  std::unique_lock<std::shared_mutex> l(mu_);
  auto it = objects_.find(h);
  if (it == objects_.end()) return OkStatus();
  UnindexLocked(h, *it->second);
  if (obj->store_id != 0) by_store_id_.erase(obj->store_id);
  objects_.erase(it);
  return OkStatus();
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

std::vector<CK_OBJECT_HANDLE> Token::Find(const model::AttributeMap& tmpl) const {
  std::vector<CK_OBJECT_HANDLE> out;
  std::shared_lock<std::shared_mutex> l(mu_);
  auto check = [&](CK_OBJECT_HANDLE h) {
    auto it = objects_.find(h);
    if (it != objects_.end() && model::Matches(*it->second, tmpl)) out.push_back(h);
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
      if (model::Matches(*o, tmpl)) out.push_back(h);
  }
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

void Token::SetLogin(std::shared_ptr<const auth::Grants> g) {
  std::lock_guard<std::mutex> l(login_mu_);
  grants_ = std::move(g);
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

// Object management calls (spec 5.7) and key generation (5.14).
#include <cstring>

#include "backend/ossl/ossl_backend.h"
#include "core/audit_hooks.h"
#include "core/calls.h"
#include "core/context.h"
#include "core/mechanisms.h"
#include "model/attributes.h"

namespace vaultp11::core {

using model::AttributeMap;

Status CopyOut(std::span<const uint8_t> data, CK_BYTE_PTR out, CK_ULONG_PTR out_len) {
  if (out == nullptr) {
    *out_len = data.size();
    return OkStatus();
  }
  if (*out_len < data.size()) {
    *out_len = data.size();
    return Error{CKR_BUFFER_TOO_SMALL, "output buffer too small", data.size()};
  }
  if (!data.empty()) std::memcpy(out, data.data(), data.size());
  *out_len = data.size();
  return OkStatus();
}

namespace {

// Operation names by the object's kind {key, secret, certificate}.
constexpr const char* kCreateOps[3] = {"KeyImport", "SecretSet", "CertificateImport"};
constexpr const char* kDeleteOps[3] = {"KeyDelete", "SecretDelete", "CertificateDelete"};
constexpr const char* kGetOps[3] = {"KeyGet", "SecretGet", "CertificateGet"};
constexpr const char* kUpdateOps[3] = {"KeyUpdate", "SecretUpdate", "CertificateUpdate"};

Result<AttributeMap> Template(CK_ATTRIBUTE_PTR tmpl, CK_ULONG count) {
  if (tmpl == nullptr && count != 0) return Err(CKR_ARGUMENTS_BAD, "template is NULL");
  return model::ParseTemplate(tmpl, count);
}

uint32_t CreatePermission(const model::Object& o) {
  return o.cls() == CKO_DATA ? auth::kSet : auth::kImport;
}

// Pools hold HSM keys made by the pool only: no software key, secret, certificate or import.
Status RefuseInPool(const CallContext& c, std::string_view what) {
  if (!c.token->is_pool()) return OkStatus();
  return Err(CKR_ATTRIBUTE_VALUE_INVALID,
             "managed HSM pool {} holds HSM keys only: {} (generate RSA, EC or AES keys with C_GenerateKeyPair / "
             "C_GenerateKey)",
             c.token->name(), what);
}


// The permission that creates an item of the object's kind under a name: set for secrets,
// create for keys and certificates.
uint32_t NamingPermission(const model::Object& o) {
  return o.cls() == CKO_DATA ? auth::kSet : auth::kCreate;
}

// Role scopes and access are decided by item name (CKA_LABEL): renaming an item is deleting the
// old name and creating the new one, and needs both permissions, so that a principal scoped to
// `keys/tls` never gains a key somebody else renamed to `tls` without those rights. The
// application's own public session objects follow the spec alone.
Status AuthorizeRename(const CallContext& c, const model::Object& o, const AttributeMap& changes) {
  const Bytes* to = changes.Get(CKA_LABEL);
  if (to == nullptr || o.label() == std::string_view(reinterpret_cast<const char*>(to->data()), to->size()) ||
      OpenToAll(o, auth::kAll))
    return OkStatus();
  VAULTP11_RETURN_IF_ERROR(Authorize(c, o, auth::kDelete, CKR_ACTION_PROHIBITED));
  model::Object renamed;
  renamed.attrs = o.attrs;
  renamed.attrs.Set(CKA_LABEL, *to);
  renamed.vault_origin = o.vault_origin;
  return Authorize(c, renamed, NamingPermission(o), CKR_ACTION_PROHIBITED);
}

// The SubjectPublicKeyInfo of a public or private key object (CKA_PUBLIC_KEY_INFO, else built
// from the public attributes); empty when it has none.
Bytes KeySpki(const model::Object& k) {
  if (const Bytes* spki = k.attrs.Get(CKA_PUBLIC_KEY_INFO); spki && !spki->empty()) return *spki;
  Result<ossl::PkeyRef> pkey = Err(CKR_GENERAL_ERROR, "no public key");
  if (k.key_type() == CKK_RSA) {
    const Bytes* n = k.attrs.Get(CKA_MODULUS);
    const Bytes* e = k.attrs.Get(CKA_PUBLIC_EXPONENT);
    if (n && e) pkey = ossl::RsaPublicFromComponents(*n, *e);
  } else if (k.key_type() == CKK_EC) {
    const Bytes* p = k.attrs.Get(CKA_EC_PARAMS);
    const Bytes* q = k.attrs.Get(CKA_EC_POINT);
    if (p && q) pkey = ossl::EcPublicFromPoint(*p, *q);
  }
  if (!pkey.ok()) return {};
  auto spki = ossl::PublicKeyInfo(pkey->get());
  return spki.ok() ? std::move(spki).value() : Bytes{};
}

// Software protection asked for in a pool.
Status RequireHsmInPool(const CallContext& c, const std::optional<CK_ULONG>& requested) {
  if (c.token->is_pool() && requested && *requested != VAULTP11_PROTECTION_HSM)
    return RefuseInPool(c, "software keys cannot be made there");
  return OkStatus();
}

}  // namespace

// Consumers pair a certificate with its key by CKA_ID (Java, libp11) or by name. A certificate
// may carry a key's CKA_ID, or join a key item's name, only when it certifies that key; a key
// may carry a certificate's CKA_ID only when that certificate certifies it. Otherwise a consumer
// would present the certificate with the wrong key.
Status CheckPairing(const CallContext& c, const model::Object& o) {
  const CK_OBJECT_CLASS cls = o.cls();
  auto is_asymmetric = [](const model::Object& k) { return k.cls() == CKO_PUBLIC_KEY || k.cls() == CKO_PRIVATE_KEY; };
  if (cls != CKO_CERTIFICATE && !is_asymmetric(o)) return OkStatus();
  auto certifies = [](const model::Object& cert, const model::Object& key) {
    const Bytes* cert_spki = cert.attrs.Get(CKA_PUBLIC_KEY_INFO);
    return cert_spki != nullptr && !cert_spki->empty() && KeySpki(key) == *cert_spki;
  };
  if (const Bytes* id = o.attrs.Get(CKA_ID); id && !id->empty()) {
    AttributeMap by_id;
    by_id.Set(CKA_ID, *id);
    VAULTP11_ASSIGN_OR_RETURN(const std::vector<CK_OBJECT_HANDLE> same_id, c.token->Find(by_id));
    for (CK_OBJECT_HANDLE h : same_id) {
      auto other = c.token->Get(h);
      if (!other.ok()) continue;
      const model::Object& x = *other.value();
      if (cls == CKO_CERTIFICATE && is_asymmetric(x) && !certifies(o, x))
        return Err(CKR_ATTRIBUTE_VALUE_INVALID,
                   "the certificate's public key is not that of the key with the same CKA_ID ('{}')", x.label());
      if (cls != CKO_CERTIFICATE && x.cls() == CKO_CERTIFICATE && !certifies(x, o))
        return Err(CKR_ATTRIBUTE_VALUE_INVALID, "certificate '{}' with the same CKA_ID certifies another public key",
                   x.label());
    }
  }
  // A certificate named like a key item must certify one of its keys (any version). A key may
  // join an item whose certificate is for another version: rotation makes exactly that.
  const std::string label = o.label();
  if (cls != CKO_CERTIFICATE || label.empty()) return OkStatus();
  VAULTP11_ASSIGN_OR_RETURN(const std::vector<model::ObjectPtr> item, c.token->ItemObjects(label));
  bool has_keys = false, matches = false;
  for (const model::ObjectPtr& k : item) {
    if (!is_asymmetric(*k)) continue;
    has_keys = true;
    matches |= certifies(o, *k);
  }
  if (has_keys && !matches)
    return Err(CKR_ATTRIBUTE_VALUE_INVALID, "key item '{}' holds no key for the certificate's public key", label);
  return OkStatus();
}

Status CreateObject(CK_SESSION_HANDLE h, CK_ATTRIBUTE_PTR tmpl, CK_ULONG count, CK_OBJECT_HANDLE_PTR out) {
  VAULTP11_ASSIGN_OR_RETURN(CallContext c, BeginAudited(h, "KeyImport"));
  if (out == nullptr || (tmpl == nullptr && count != 0)) return Err(CKR_ARGUMENTS_BAD, "C_CreateObject: NULL argument");
  VAULTP11_RETURN_IF_ERROR(RefuseInPool(c, "objects cannot be created or imported"));
  VAULTP11_ASSIGN_OR_RETURN(AttributeMap t, Template(tmpl, count));
  VAULTP11_ASSIGN_OR_RETURN(bool new_version, TakeNewVersion(t));
  VAULTP11_ASSIGN_OR_RETURN(auto obj, model::CreateObject(t));
  ApplyVaultPrivacy(*obj);
  AuditObject(*obj, kCreateOps);
  VAULTP11_RETURN_IF_ERROR(AuthorizeNew(c, *obj, CreatePermission(*obj)));
  VAULTP11_RETURN_IF_ERROR(CheckPairing(c, *obj));
  obj->owner_session = h;
  VAULTP11_ASSIGN_OR_RETURN(*out, c.token->Add(obj, new_version));
  AuditVersionOf(*obj);
  return OkStatus();
}

Status CopyObject(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE src, CK_ATTRIBUTE_PTR tmpl, CK_ULONG count,
                  CK_OBJECT_HANDLE_PTR out) {
  VAULTP11_ASSIGN_OR_RETURN(CallContext c, BeginAudited(h, "KeyImport"));
  if (out == nullptr || (tmpl == nullptr && count != 0)) return Err(CKR_ARGUMENTS_BAD, "C_CopyObject: NULL argument");
  VAULTP11_RETURN_IF_ERROR(RefuseInPool(c, "objects cannot be copied"));
  VAULTP11_ASSIGN_OR_RETURN(model::ObjectPtr o, GetVisible(c, src));
  AuditObject(*o, kCreateOps);  // the source: the copy's name goes in the event too
  VAULTP11_RETURN_IF_ERROR(Authorize(c, *o, auth::kGet, CKR_ACTION_PROHIBITED));
  // Two outer objects on one HSM key would destroy it twice.
  if (o->material && o->material->hsm()) return Err(CKR_ACTION_PROHIBITED, "HSM-protected keys cannot be copied");
  VAULTP11_ASSIGN_OR_RETURN(AttributeMap t, Template(tmpl, count));
  VAULTP11_ASSIGN_OR_RETURN(bool new_version, TakeNewVersion(t));
  VAULTP11_ASSIGN_OR_RETURN(auto copy, model::CopyObject(*o, t));
  if (AuditCall* a = CurrentAudit()) a->event.extra = {{"copy", copy->label()}};
  // A copy never opens what the source keeps closed: a private object's copy stays private,
  // and a copy of a vault key keeps its name (a name is what grants follow: under another name
  // the same key material would answer to other grants; renames go through
  // C_SetAttributeValue, which asks for both names' permissions).
  if (o->is_private() && !copy->is_private())
    return Err(CKR_ATTRIBUTE_READ_ONLY, "a copy of a private object stays private");
  if (!AppOwned(*o) && o->cls() != CKO_PUBLIC_KEY && o->cls() != CKO_CERTIFICATE && copy->label() != o->label())
    return Err(CKR_ATTRIBUTE_READ_ONLY, "a copy of vault object '{}' keeps its name", o->label());
  ApplyVaultPrivacy(*copy);
  VAULTP11_RETURN_IF_ERROR(AuthorizeNew(c, *copy, CreatePermission(*copy)));
  VAULTP11_RETURN_IF_ERROR(CheckPairing(c, *copy));
  copy->owner_session = h;
  VAULTP11_ASSIGN_OR_RETURN(*out, c.token->Add(std::move(copy), new_version));
  return OkStatus();
}

Status DestroyObject(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE obj) {
  VAULTP11_ASSIGN_OR_RETURN(CallContext c, BeginAudited(h, "KeyDelete"));
  VAULTP11_ASSIGN_OR_RETURN(model::ObjectPtr o, GetVisible(c, obj));
  AuditObject(*o, kDeleteOps);
  if (o->is_token() && !c.session->read_write())
    return Err(CKR_SESSION_READ_ONLY, "destroying a token object needs a read/write session");
  if (!o->attrs.GetBool(CKA_DESTROYABLE, true)) return Err(CKR_ACTION_PROHIBITED, "object is not destroyable");
  VAULTP11_RETURN_IF_ERROR(Authorize(c, *o, auth::kDelete, CKR_ACTION_PROHIBITED));
  const bool stored_item = o->is_token() && o->store_id != 0 && !o->label().empty();
  // A certificate made or imported by `vaultp11 cert` manages its key (not destroyable on its
  // own): deleting the certificate deletes the item, key included, on the certificate's
  // permission alone.
  bool managed_item = false;
  std::vector<model::ObjectPtr> item;
  if (stored_item) {
    VAULTP11_ASSIGN_OR_RETURN(item, c.token->ItemObjects(o->label()));
  }
  if (stored_item && o->cls() == CKO_CERTIFICATE)
    for (const model::ObjectPtr& other : item)
      managed_item |= other->cls() == CKO_PRIVATE_KEY && !other->attrs.GetBool(CKA_DESTROYABLE, true);
  // Soft-delete: a stored item goes to the deleted state, every version at once (recover or
  // purge with `vaultp11 deleted`).
  if (stored_item && (c.token->soft_delete().enabled || managed_item)) {
    // The whole item goes: the caller must be allowed to delete every object of it (but a
    // certificate's managed key goes with the certificate).
    if (!managed_item)
      for (const model::ObjectPtr& other : item) {
        if (!other->attrs.GetBool(CKA_DESTROYABLE, true))
          return Err(CKR_ACTION_PROHIBITED, "object {} of the same item is not destroyable", o->label());
        VAULTP11_RETURN_IF_ERROR(Authorize(c, *other, auth::kDelete, CKR_ACTION_PROHIBITED));
      }
    if (c.token->soft_delete().enabled) {
      VAULTP11_ASSIGN_OR_RETURN(size_t n, c.token->SoftDelete(obj));
      if (AuditCall* a = CurrentAudit()) a->event.extra = {{"softDelete", true}, {"objects", n}};
      return OkStatus();
    }
    VAULTP11_ASSIGN_OR_RETURN(size_t n, c.token->RemoveItem(obj));
    if (AuditCall* a = CurrentAudit()) a->event.extra = {{"objects", n}};
    return OkStatus();
  }
  return c.token->Remove(obj);
}

Status GetObjectSize(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE obj, CK_ULONG_PTR size) {
  VAULTP11_ASSIGN_OR_RETURN(CallContext c, BeginAudited(h, "KeyGet"));
  if (size == nullptr) return Err(CKR_ARGUMENTS_BAD, "C_GetObjectSize: pulSize is NULL");
  VAULTP11_ASSIGN_OR_RETURN(model::ObjectPtr o, GetVisible(c, obj));
  AuditObject(*o, kGetOps);
  *size = model::ObjectSize(*o);
  return OkStatus();
}

// C_GetAttributeValue follows the five cases of spec 5.7 exactly: every attribute is
// processed; the call returns the last of CKR_ATTRIBUTE_SENSITIVE / _TYPE_INVALID /
// CKR_BUFFER_TOO_SMALL met, with CK_UNAVAILABLE_INFORMATION in the failed entries.
Status GetAttributeValue(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_PTR tmpl, CK_ULONG count) {
  VAULTP11_ASSIGN_OR_RETURN(CallContext c, BeginAudited(h, "KeyGet"));
  if (tmpl == nullptr && count != 0) return Err(CKR_ARGUMENTS_BAD, "C_GetAttributeValue: pTemplate is NULL");
  VAULTP11_ASSIGN_OR_RETURN(model::ObjectPtr o, GetVisible(c, obj));
  AuditObject(*o, kGetOps);
  // A key's or certificate's attributes need get; a secret's metadata get or list (Key Vault
  // Reader), its value get (else CKR_ATTRIBUTE_SENSITIVE).
  const bool secret = o->cls() == CKO_DATA;
  const bool may_get = Permits(c, *o, auth::kGet);
  VAULTP11_RETURN_IF_ERROR(Authorize(c, *o, secret && !may_get ? auth::kList : auth::kGet, CKR_ACTION_PROHIBITED));
  // Key material (a non-sensitive, extractable key's CKA_VALUE, ...) leaves the vault only with
  // the export permission, as through C_WrapKey (core/crypto.cc AuthorizeExport).
  const bool may_read_value =
      secret ? may_get : (AppOwned(*o) ? Permits(c, *o, auth::kGet) : Permits(c, *o, auth::kRelease));
  CK_RV rv = CKR_OK;
  for (CK_ULONG i = 0; i < count; ++i) {
    CK_ATTRIBUTE& a = tmpl[i];
    auto v = model::ReadAttribute(*o, a.type, may_read_value);
    if (!v.ok()) {
      if (v.rv() != CKR_ATTRIBUTE_SENSITIVE && v.rv() != CKR_ATTRIBUTE_TYPE_INVALID) return v.error();
      a.ulValueLen = CK_UNAVAILABLE_INFORMATION;  // cases 1 and 2
      rv = v.rv();
      continue;
    }
    const SecureBytes& val = v.value();
    if (a.pValue == nullptr) {  // case 3
      a.ulValueLen = val.size();
    } else if (a.ulValueLen >= val.size()) {  // case 4
      if (!val.empty()) std::memcpy(a.pValue, val.data(), val.size());
      a.ulValueLen = val.size();
    } else {  // case 5
      a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
      rv = CKR_BUFFER_TOO_SMALL;
    }
  }
  if (rv != CKR_OK) return Error{rv, "some attributes could not be returned", 0};
  return OkStatus();
}

Status SetAttributeValue(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_PTR tmpl, CK_ULONG count) {
  VAULTP11_ASSIGN_OR_RETURN(CallContext c, BeginAudited(h, "KeyUpdate"));
  if (tmpl == nullptr && count != 0) return Err(CKR_ARGUMENTS_BAD, "C_SetAttributeValue: pTemplate is NULL");
  VAULTP11_ASSIGN_OR_RETURN(model::ObjectPtr o, GetVisible(c, obj));
  AuditObject(*o, kUpdateOps);
  if (o->is_token() && !c.session->read_write())
    return Err(CKR_SESSION_READ_ONLY, "modifying a token object needs a read/write session");
  VAULTP11_RETURN_IF_ERROR(Authorize(c, *o, o->cls() == CKO_DATA ? auth::kSet : auth::kUpdate, CKR_ACTION_PROHIBITED));
  VAULTP11_ASSIGN_OR_RETURN(AttributeMap changes, Template(tmpl, count));
  VAULTP11_RETURN_IF_ERROR(AuthorizeRename(c, *o, changes));
  VAULTP11_ASSIGN_OR_RETURN(auto updated, model::ModifyObject(*o, changes));
  if (changes.Has(CKA_LABEL) || changes.Has(CKA_ID)) VAULTP11_RETURN_IF_ERROR(CheckPairing(c, *updated));
  return c.token->Replace(obj, std::move(updated));
}

// One event per search (KeyList, or SecretList / CertificateList when the template names
// that class), with the number of objects found; none per C_FindObjects batch.
Status FindObjectsInit(CK_SESSION_HANDLE h, CK_ATTRIBUTE_PTR tmpl, CK_ULONG count) {
  VAULTP11_ASSIGN_OR_RETURN(CallContext c, BeginAudited(h, "KeyList"));
  if (tmpl == nullptr && count != 0) return Err(CKR_ARGUMENTS_BAD, "C_FindObjectsInit: pTemplate is NULL");
  std::lock_guard<std::mutex> l(c.session->mu);
  RefreshGrants(c);  // as of now, under the session lock: a C_Logout meanwhile ends the search
  if (c.session->find) return Err(CKR_OPERATION_ACTIVE, "a search is already active");
  VAULTP11_ASSIGN_OR_RETURN(AttributeMap t, Template(tmpl, count));
  if (auto cls = t.GetUlong(CKA_CLASS)) {
    if (*cls == CKO_DATA) AuditRename("SecretList");
    if (*cls == CKO_CERTIFICATE) AuditRename("CertificateList");
  }
  if (const Bytes* label = t.Get(CKA_LABEL)) AuditName(std::string(label->begin(), label->end()));
  c.provider->SyncFromStore();
  FindState st;
  VAULTP11_ASSIGN_OR_RETURN(const std::vector<CK_OBJECT_HANDLE> found, c.token->Find(t));
  for (CK_OBJECT_HANDLE oh : found) {
    auto o = c.token->Get(oh);
    if (!o.ok()) continue;
    if (!Listable(c, *o.value())) continue;
    // Session objects of other applications don't exist here; session objects are visible to
    // every session of this application (spec 6.7.6).
    st.results.push_back(oh);
  }
  AuditCount(static_cast<int64_t>(st.results.size()));
  c.session->find = std::move(st);
  return OkStatus();
}

Status FindObjects(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE_PTR out, CK_ULONG max, CK_ULONG_PTR count) {
  VAULTP11_ASSIGN_OR_RETURN(CallContext c, Begin(h));
  if ((out == nullptr && max != 0) || count == nullptr) return Err(CKR_ARGUMENTS_BAD, "C_FindObjects: NULL argument");
  std::lock_guard<std::mutex> l(c.session->mu);
  if (!c.session->find) return Err(CKR_OPERATION_NOT_INITIALIZED, "C_FindObjectsInit was not called");
  FindState& st = *c.session->find;
  CK_ULONG n = 0;
  while (n < max && st.next < st.results.size()) out[n++] = st.results[st.next++];
  *count = n;
  return OkStatus();
}

Status FindObjectsFinal(CK_SESSION_HANDLE h) {
  VAULTP11_ASSIGN_OR_RETURN(CallContext c, Begin(h));
  std::lock_guard<std::mutex> l(c.session->mu);
  if (!c.session->find) return Err(CKR_OPERATION_NOT_INITIALIZED, "C_FindObjectsInit was not called");
  c.session->find.reset();
  return OkStatus();
}

Status GenerateKey(CK_SESSION_HANDLE h, CK_MECHANISM_PTR mech, CK_ATTRIBUTE_PTR tmpl, CK_ULONG count,
                   CK_OBJECT_HANDLE_PTR out) {
  VAULTP11_ASSIGN_OR_RETURN(CallContext c, BeginAudited(h, "KeyCreate"));
  if (mech == nullptr || out == nullptr || (tmpl == nullptr && count != 0))
    return Err(CKR_ARGUMENTS_BAD, "C_GenerateKey: NULL argument");
  AuditMechanism(mech->mechanism);
  const MechanismEntry* m = FindMechanism(mech->mechanism);
  if (m == nullptr || !(m->flags & CKF_GENERATE)) return Err(CKR_MECHANISM_INVALID, "mechanism 0x{:x} cannot generate a key", mech->mechanism);
  if (mech->pParameter != nullptr || mech->ulParameterLen != 0)
    return Err(CKR_MECHANISM_PARAM_INVALID, "CKM_AES_KEY_GEN takes no parameter");
  VAULTP11_ASSIGN_OR_RETURN(AttributeMap t, Template(tmpl, count));
  VAULTP11_ASSIGN_OR_RETURN(bool new_version, TakeNewVersion(t));
  if (c.token->is_pool()) {
    VAULTP11_ASSIGN_OR_RETURN(auto requested, model::RequestedProtection(t, AttributeMap{}));
    VAULTP11_RETURN_IF_ERROR(RequireHsmInPool(c, requested));
    // Check access before generating and copying to every member.
    model::Object probe;
    probe.attrs = t;
    probe.attrs.SetUlong(CKA_CLASS, CKO_SECRET_KEY);
    if (!t.Has(CKA_PRIVATE)) probe.attrs.SetBool(CKA_PRIVATE, true);
    if (!t.Has(CKA_TOKEN)) probe.attrs.SetBool(CKA_TOKEN, false);
    VAULTP11_RETURN_IF_ERROR(AuthorizeNew(c, probe, auth::kCreate));
    VAULTP11_ASSIGN_OR_RETURN(auto key, model::GenerateHsmSecretKey(mech->mechanism, t, *c.token->hsm()));
    ApplyVaultPrivacy(*key);
    key->owner_session = h;
    auto added = c.token->Add(key, new_version);
    if (!added.ok()) {
      c.token->DiscardHsmKey(*key);
      return added.error();
    }
    *out = added.value();
    AuditVersionOf(*key);
    return OkStatus();
  }
  VAULTP11_ASSIGN_OR_RETURN(auto key, model::GenerateSecretKey(mech->mechanism, t));
  ApplyVaultPrivacy(*key);
  VAULTP11_RETURN_IF_ERROR(AuthorizeNew(c, *key, auth::kCreate));
  key->owner_session = h;
  VAULTP11_ASSIGN_OR_RETURN(*out, c.token->Add(key, new_version));
  AuditVersionOf(*key);
  return OkStatus();
}

Status GenerateKeyPair(CK_SESSION_HANDLE h, CK_MECHANISM_PTR mech, CK_ATTRIBUTE_PTR pub, CK_ULONG pub_count,
                       CK_ATTRIBUTE_PTR priv, CK_ULONG priv_count, CK_OBJECT_HANDLE_PTR pub_out,
                       CK_OBJECT_HANDLE_PTR priv_out) {
  VAULTP11_ASSIGN_OR_RETURN(CallContext c, BeginAudited(h, "KeyCreate"));
  if (mech == nullptr || pub_out == nullptr || priv_out == nullptr || (pub == nullptr && pub_count != 0) ||
      (priv == nullptr && priv_count != 0))
    return Err(CKR_ARGUMENTS_BAD, "C_GenerateKeyPair: NULL argument");
  AuditMechanism(mech->mechanism);
  const MechanismEntry* m = FindMechanism(mech->mechanism);
  if (m == nullptr || !(m->flags & CKF_GENERATE_KEY_PAIR))
    return Err(CKR_MECHANISM_INVALID, "mechanism 0x{:x} cannot generate a key pair", mech->mechanism);
  if (mech->pParameter != nullptr || mech->ulParameterLen != 0)
    return Err(CKR_MECHANISM_PARAM_INVALID, "key pair generation takes no mechanism parameter");
  VAULTP11_ASSIGN_OR_RETURN(AttributeMap pt, Template(pub, pub_count));
  VAULTP11_ASSIGN_OR_RETURN(AttributeMap vt, Template(priv, priv_count));
  VAULTP11_ASSIGN_OR_RETURN(bool new_version_pub, TakeNewVersion(pt));
  VAULTP11_ASSIGN_OR_RETURN(bool new_version_priv, TakeNewVersion(vt));
  const bool new_version = new_version_pub || new_version_priv;
  // Check access before the (slow) generation, on the would-be objects' class and label.
  {
    model::Object probe;
    probe.attrs = vt;
    probe.attrs.SetUlong(CKA_CLASS, CKO_PRIVATE_KEY);
    if (!vt.Has(CKA_PRIVATE)) probe.attrs.SetBool(CKA_PRIVATE, true);
    if (!vt.Has(CKA_LABEL) && pt.Has(CKA_LABEL)) probe.attrs.Set(CKA_LABEL, *pt.Get(CKA_LABEL));
    VAULTP11_RETURN_IF_ERROR(AuthorizeNew(c, probe, auth::kCreate));
  }
  VAULTP11_ASSIGN_OR_RETURN(auto requested, model::RequestedProtection(pt, vt));
  VAULTP11_RETURN_IF_ERROR(RequireHsmInPool(c, requested));
  bool use_hsm = requested ? *requested == VAULTP11_PROTECTION_HSM : c.token->default_hsm();
  if (use_hsm && c.token->hsm() == nullptr)
    return Err(CKR_ATTRIBUTE_VALUE_INVALID, "vault {} has no HSM: HSM protection needs a premium vault with hsms",
               c.token->name());
  VAULTP11_ASSIGN_OR_RETURN(model::KeyPair kp, use_hsm ? model::GenerateHsmKeyPair(mech->mechanism, pt, vt, *c.token->hsm())
                                                       : model::GenerateKeyPair(mech->mechanism, pt, vt));
  ApplyVaultPrivacy(*kp.private_key);
  RefreshGrants(c);  // a logout during the generation refuses the new keys
  Status allowed = AuthorizeNew(c, *kp.public_key, auth::kCreate);
  if (allowed.ok()) allowed = AuthorizeNew(c, *kp.private_key, auth::kCreate);
  if (allowed.ok()) allowed = CheckPairing(c, *kp.public_key);
  if (!allowed.ok()) {
    c.token->DiscardHsmKey(*kp.private_key);
    return allowed;
  }
  kp.public_key->owner_session = h;
  kp.private_key->owner_session = h;
  auto added = c.token->AddPair(kp.public_key, kp.private_key, new_version);
  if (!added.ok()) {
    c.token->DiscardHsmKey(*kp.private_key);
    return added.error();
  }
  AuditVersionOf(*kp.private_key);
  auto handles = added.value();
  *pub_out = handles.first;
  *priv_out = handles.second;
  return OkStatus();
}

}  // namespace vaultp11::core

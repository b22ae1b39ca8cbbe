#include "core/context.h"

#include "core/audit_hooks.h"

namespace vaultp11::core {

namespace {
// What a public key or certificate of the vault is open for without a grant: reading it and the
// public-key operations (REFERENCE "Public-key operations ... need only read").
constexpr uint32_t kPublicUse = auth::kList | auth::kGet | auth::kVerify | auth::kEncrypt | auth::kWrapKey;
}  // namespace

bool AppOwned(const model::Object& o) { return !o.is_token() && !o.vault_origin; }

bool OpenToAll(const model::Object& o, uint32_t perm) {
  if (o.is_private()) return false;
  if (AppOwned(o)) return true;
  const CK_OBJECT_CLASS cls = o.cls();
  return (cls == CKO_PUBLIC_KEY || cls == CKO_CERTIFICATE) && (perm & ~kPublicUse) == 0;
}

void ApplyVaultPrivacy(model::Object& o) {
  const CK_OBJECT_CLASS cls = o.cls();
  if (o.is_token() && cls != CKO_PUBLIC_KEY && cls != CKO_CERTIFICATE) o.attrs.SetBool(CKA_PRIVATE, true);
}

Result<CallContext> Begin(CK_SESSION_HANDLE h) {
  VAULTP11_ASSIGN_OR_RETURN(Provider * p, GetProvider());
  VAULTP11_ASSIGN_OR_RETURN(SessionPtr s, p->GetSession(h));
  Token* t = s->token();
  return CallContext{p, std::move(s), t};
}

const auth::Grants* GrantsOf(const CallContext& c) {
  if (!c.grants_read) {
    c.grants_cache = c.token->grants();
    c.grants_read = true;
  }
  return c.grants_cache.get();
}

Result<CallContext> BeginAudited(CK_SESSION_HANDLE h, const char* op) {
  AuditOperation(op);
  VAULTP11_ASSIGN_OR_RETURN(CallContext c, Begin(h));
  if (CurrentAudit() != nullptr) AuditToken(*c.token, GrantsOf(c));
  return c;
}

bool Listable(const CallContext& c, const model::Object& o) {
  if (OpenToAll(o, auth::kList)) return true;
  const auth::Grants* g = GrantsOf(c);
  return g && g->Allows(auth::KindOfClass(o.cls()), o.label(), auth::kList);
}

bool Visible(const CallContext& c, const model::Object& o) {
  if (OpenToAll(o, auth::kList)) return true;
  const auth::Grants* g = GrantsOf(c);
  return g && g->AllowsAny(auth::KindOfClass(o.cls()), o.label(), auth::kAll);
}

Result<model::ObjectPtr> GetVisible(const CallContext& c, CK_OBJECT_HANDLE h, CK_RV invalid_rv) {
  auto o = c.token->Get(h);
  if (!o.ok()) return Err(invalid_rv, "handle {} is not a visible object of this session", h);
  AuditObject(*o.value());
  if (!Visible(c, *o.value())) {
    // It exists, but not for this principal: the caller sees an invalid handle, the audit log
    // a denial.
    AuditDenied(/*unauthenticated=*/GrantsOf(c) == nullptr);
    return Err(invalid_rv, "handle {} is not a visible object of this session", h);
  }
  return o;
}

bool Permits(const CallContext& c, const model::Object& o, uint32_t perm) {
  if (OpenToAll(o, perm)) return true;
  const auth::Grants* g = GrantsOf(c);
  return g && g->Allows(auth::KindOfClass(o.cls()), o.label(), perm);
}

Status Authorize(const CallContext& c, const model::Object& o, uint32_t perm, CK_RV deny_rv) {
  if (OpenToAll(o, perm)) return OkStatus();
  const auth::Grants* g = GrantsOf(c);
  if (!g) return Err(CKR_USER_NOT_LOGGED_IN, "vault {}: log in first", c.token->name());
  if (g->Allows(auth::KindOfClass(o.cls()), o.label(), perm)) return OkStatus();
  AuditDenied();
  return Err(deny_rv, "vault {}: principal {} is not allowed to do this to '{}'", c.token->name(), g->principal,
             o.label());
}

Status AuthorizeNew(const CallContext& c, const model::Object& o, uint32_t perm) {
  AuditObject(o);
  if (o.is_token() && !c.session->read_write())
    return Err(CKR_SESSION_READ_ONLY, "token objects need a read/write session");
  const auth::Grants* g = GrantsOf(c);
  if (!g) {
    if (!o.is_token() && !o.is_private()) return OkStatus();  // public session objects
    return Err(CKR_USER_NOT_LOGGED_IN, "vault {}: log in first", c.token->name());
  }
  if (o.is_token() && !c.token->store()->Writable())
    return Err(CKR_TOKEN_WRITE_PROTECTED, "vault {} is read-only", c.token->name());
  if (!g->Allows(auth::KindOfClass(o.cls()), o.label(), perm)) {
    AuditDenied();
    return Err(CKR_ACTION_PROHIBITED, "vault {}: principal {} may not create '{}'", c.token->name(), g->principal,
               o.label());
  }
  return OkStatus();
}

void EndPrivateOperations(Provider& p, const Token* token) {
  auto end = [](auto& op, uint32_t perm) {
    if (op && op->key && !OpenToAll(*op->key, perm)) op.reset();
  };
  for (const SessionPtr& s : p.SessionsOn(token)) {
    std::lock_guard<std::mutex> l(s->mu);
    s->find.reset();
    end(s->sign, auth::kSign);
    end(s->verify, auth::kVerify);
    end(s->encrypt, auth::kEncrypt);
    end(s->decrypt, auth::kDecrypt);
  }
}

Result<bool> TakeNewVersion(model::AttributeMap& tmpl) {
  const Bytes* v = tmpl.Get(CKA_VAULTP11_NEW_VERSION);
  if (v == nullptr) return false;
  if (v->size() != sizeof(CK_BBOOL)) return Err(CKR_ATTRIBUTE_VALUE_INVALID, "CKA_VAULTP11_NEW_VERSION must be a CK_BBOOL");
  bool b = (*v)[0] != CK_FALSE;
  tmpl.Erase(CKA_VAULTP11_NEW_VERSION);
  return b;
}

}  // namespace vaultp11::core

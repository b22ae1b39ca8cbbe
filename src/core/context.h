// Helpers shared by the object and crypto calls: the session context, object visibility and
// the one permission check every call goes through.
#pragma once

#include "auth/access.h"
#include "core/provider.h"

namespace vaultp11::core {

struct CallContext {
  Provider* provider;
  SessionPtr session;
  Token* token;
  // Who is logged in on the token, read on the call's first access check and kept for its
  // later ones (GrantsOf); calls without a check never take the token's login lock.
  mutable std::shared_ptr<const auth::Grants> grants_cache;
  mutable bool grants_read = false;
};

// Who is logged in on the call's token (null: nobody), as first read during the call.
const auth::Grants* GrantsOf(const CallContext& c);
// Reads it again at the next check (after a slow step, such as a key generation, during which
// the principal may have logged out; or once an *Init holds its session's lock, so that a
// C_Logout, which ends operations under that lock, cannot be overtaken).
inline void RefreshGrants(CallContext& c) { c.grants_read = false; }

Result<CallContext> Begin(CK_SESSION_HANDLE h);
// Begin() for a call that is audited operation `op` (core/audit_hooks.h) on the session's
// vault: names the operation, then the vault and who is logged in there.
Result<CallContext> BeginAudited(CK_SESSION_HANDLE h, const char* op);

// Whether the object is the application's own: a session object this process made (created,
// generated or unwrapped without a vault object's material), not a vault object nor a copy of
// one. Such objects live only in this application's memory.
bool AppOwned(const model::Object& o);
// Whether `perm` on the object needs no grant (and no login). Spec 4.4 and 6.7.6 ("permitted
// object accesses by sessions"): the application's own public session objects are open to every
// use their attributes allow (read, modify, copy, destroy, sign, decrypt, ...). The vault's public
// keys and certificates are open for reading and public-key operations (verify, encrypt, wrap).
// Nothing else is: a vault secret, secret key or private key needs a grant even if its
// CKA_PRIVATE says false.
bool OpenToAll(const model::Object& o, uint32_t perm);
// Vault token objects other than public keys and certificates are private (CKA_PRIVATE true
// whatever the template said): their values are read only under the access model.
void ApplyVaultPrivacy(model::Object& o);

// Whether C_FindObjects returns the object: objects open to all (OpenToAll), private ones when the
// principal may list them.
bool Listable(const CallContext& c, const model::Object& o);
// Whether a handle to the object may be used at all: public objects always, private ones when
// the principal holds some permission on them (so that a permission such as sign works without
// list, while objects the principal has no right to do not exist for it: no existence oracle).
// Unusable handles are CKR_OBJECT_HANDLE_INVALID (or `invalid_rv` for key arguments).
bool Visible(const CallContext& c, const model::Object& o);
Result<model::ObjectPtr> GetVisible(const CallContext& c, CK_OBJECT_HANDLE h, CK_RV invalid_rv = CKR_OBJECT_HANDLE_INVALID);

// The permission check (REFERENCE.md "PKCS#11 call -> permission"). Without a login only
// public objects may be read or used for public-key operations; everything else is
// CKR_USER_NOT_LOGGED_IN. A denial returns `deny_rv`.
Status Authorize(const CallContext& c, const model::Object& o, uint32_t perm, CK_RV deny_rv);
// The same check without recording a denial in the audit event (for probes such as "may it
// read?" that decide which rule applies).
bool Permits(const CallContext& c, const model::Object& o, uint32_t perm);
// For objects about to be created (they have no handle yet).
Status AuthorizeNew(const CallContext& c, const model::Object& o, uint32_t perm);

// The certificate/key pairing rule (core/objects.cc): a certificate carries a key's CKA_ID or
// joins a key item, and a key carries a certificate's CKA_ID, only when the certificate
// certifies that key; else CKR_ATTRIBUTE_VALUE_INVALID.
Status CheckPairing(const CallContext& c, const model::Object& o);

// C_Logout: ends the searches, and the operations whose key is not open to all (OpenToAll), of
// every session of the application on the token (spec 5.6 lets a token end them; a vault does
// not finish a signature for a principal that has left). Each ended operation is audited as
// cancelled.
void EndPrivateOperations(Provider& p, const Token* token);

// Takes CKA_VAULTP11_NEW_VERSION out of a creation template (it asks for a new version of the
// item and is not stored): its value, false when absent; not a CK_BBOOL is
// CKR_ATTRIBUTE_VALUE_INVALID.
Result<bool> TakeNewVersion(model::AttributeMap& tmpl);

}  // namespace vaultp11::core

// Cryptographic calls (spec 5.8-5.15). Each call works on its session's operation state under
// the session lock only; no token- or module-wide lock is held during crypto.
#include <cstring>

#include "backend/ossl/ossl_backend.h"
#include "backend/p11/inner_ops.h"
#include "core/audit_hooks.h"
#include "core/calls.h"
#include "core/context.h"
#include "core/mechanisms.h"
#include "core/pool_ops.h"

namespace vaultp11::core {

namespace {

struct KeyUse {
  CK_ATTRIBUTE_TYPE usage;  // CKA_SIGN, ...
  uint32_t perm;
  CK_FLAGS mech_flag;
  CK_RV invalid_handle_rv;
};

constexpr KeyUse kSignUse{CKA_SIGN, auth::kSign, CKF_SIGN, CKR_KEY_HANDLE_INVALID};
constexpr KeyUse kVerifyUse{CKA_VERIFY, auth::kVerify, CKF_VERIFY, CKR_KEY_HANDLE_INVALID};
constexpr KeyUse kEncryptUse{CKA_ENCRYPT, auth::kEncrypt, CKF_ENCRYPT, CKR_KEY_HANDLE_INVALID};
constexpr KeyUse kDecryptUse{CKA_DECRYPT, auth::kDecrypt, CKF_DECRYPT, CKR_KEY_HANDLE_INVALID};
constexpr KeyUse kWrapUse{CKA_WRAP, auth::kWrapKey, CKF_WRAP, CKR_WRAPPING_KEY_HANDLE_INVALID};
constexpr KeyUse kUnwrapUse{CKA_UNWRAP, auth::kUnwrapKey, CKF_UNWRAP, CKR_UNWRAPPING_KEY_HANDLE_INVALID};

// A key ready for an operation: in-process (key) or in the vault's HSM (hsm + hsm_handle).
struct PreparedKey {
  model::ObjectPtr object;
  ossl::KeyRef key;
  const model::HsmKey* hsm = nullptr;
  CK_OBJECT_HANDLE hsm_handle = CK_INVALID_HANDLE;
  std::shared_ptr<p11::InnerToken> hsm_token;  // the vault's HSM, or the pool member used
};

// Signature length of an HSM key from its mirrored public attributes: the modulus length for
// RSA, twice the field size for ECDSA (CKA_EC_POINT is DER OCTET STRING(04 || X || Y)).
size_t HsmSignatureLength(const model::Object& o) {
  if (o.key_type() == CKK_RSA) {
    const Bytes* n = o.attrs.Get(CKA_MODULUS);
    return n ? n->size() : 0;
  }
  const Bytes* q = o.attrs.Get(CKA_EC_POINT);
  if (!q || q->size() < 3) return 0;
  size_t header = ((*q)[1] & 0x80) ? 2 + ((*q)[1] & 0x7f) : 2;
  return q->size() > header ? q->size() - header - 1 : 0;
}

// Checks a key for one use: the mechanism offers it, the handle is a visible key, the caller
// may use it, its usage attribute is true, the key is enabled and (for sign, encrypt and wrap)
// inside its validity window, and CKA_ALLOWED_MECHANISMS (if set) lists the mechanism.
Result<PreparedKey> PrepareKey(const CallContext& c, CK_OBJECT_HANDLE h, const CK_MECHANISM& mech, const KeyUse& use) {
  AuditMechanism(mech.mechanism);
  const MechanismEntry* m = FindMechanism(mech.mechanism);
  if (m == nullptr || !(m->flags & use.mech_flag))
    return Err(CKR_MECHANISM_INVALID, "mechanism 0x{:x} cannot be used for this operation", mech.mechanism);
  VAULTP11_ASSIGN_OR_RETURN(model::ObjectPtr o, GetVisible(c, h, use.invalid_handle_rv));
  if (!o->is_key()) return Err(use.invalid_handle_rv, "object {} is not a key", h);
  // Public-key use (verify, encrypt, wrap with a public key) needs only read.
  const bool read_suffices = o->cls() == CKO_PUBLIC_KEY && Permits(c, *o, auth::kGet);
  if (!read_suffices) VAULTP11_RETURN_IF_ERROR(Authorize(c, *o, use.perm, CKR_KEY_FUNCTION_NOT_PERMITTED));
  if (!o->attrs.GetBool(use.usage, false))
    return Err(CKR_KEY_FUNCTION_NOT_PERMITTED, "the key's {} is false", model::AttrName(use.usage));
  // Life cycle: a disabled key does nothing; outside nbf/exp only verify, decrypt and unwrap.
  const bool protecting = use.usage == CKA_SIGN || use.usage == CKA_ENCRYPT || use.usage == CKA_WRAP;
  VAULTP11_RETURN_IF_ERROR(model::CheckKeyLifecycle(o->attrs, protecting, model::UnixNow()));
  if (const Bytes* allowed = o->attrs.Get(CKA_ALLOWED_MECHANISMS); allowed && !allowed->empty()) {
    bool found = false;
    for (size_t i = 0; i + sizeof(CK_MECHANISM_TYPE) <= allowed->size(); i += sizeof(CK_MECHANISM_TYPE)) {
      CK_MECHANISM_TYPE t;
      std::memcpy(&t, allowed->data() + i, sizeof(t));
      found |= (t == mech.mechanism);
    }
    if (!found) return Err(CKR_MECHANISM_INVALID, "mechanism not in the key's CKA_ALLOWED_MECHANISMS");
  }
  if (const model::HsmKey* hsm = o->material->hsm()) {
    // A pool key's member is chosen per operation (pool_ops.h).
    if (hsm->pool) return PreparedKey{std::move(o), {}, hsm};
    VAULTP11_ASSIGN_OR_RETURN(model::InnerKeyRef ik, o->material->HsmTarget());
    return PreparedKey{std::move(o), {}, hsm, ik.handle, std::move(ik.token)};
  }
  VAULTP11_ASSIGN_OR_RETURN(ossl::KeyRef k, o->Key());
  return PreparedKey{std::move(o), std::move(k)};
}

// Runs make(inner handle) for an HSM key. A handle the HSM no longer knows (a module reset, the
// key re-made by another process) is looked up again once by CKA_ID; inner handle errors never
// reach the caller, whose handle is still good: a key that is really gone is CKR_DEVICE_ERROR.
template <typename Make>
auto WithHsmHandle(PreparedKey& k, Make make) -> decltype(make(CK_OBJECT_HANDLE{})) {
  auto stale = [](CK_RV rv) { return rv == CKR_OBJECT_HANDLE_INVALID || rv == CKR_KEY_HANDLE_INVALID; };
  auto r = make(k.hsm_handle);
  if (r.ok() || !stale(r.rv())) return r;
  k.object->material->ForgetHsmHandle();
  auto h = k.object->material->HsmTarget();
  if (!h.ok()) return h.error();
  k.hsm_handle = h->handle;
  k.hsm_token = h->token;
  r = make(k.hsm_handle);
  if (!r.ok() && stale(r.rv())) return Err(CKR_DEVICE_ERROR, "the key's HSM object is gone: {}", r.error().message);
  return r;
}

// C_WrapKey gives the key's material to whoever knows the wrapping key, so exporting is a
// permission of its own, whatever the wrapping key is (a session key the caller made, a public
// key it imported): a vault key needs `release` on it (the model's export permission), or
// `backup` when the wrapping key is a trusted token key of this vault (the vault's own backup
// path). The application's own session keys follow the spec alone (public ones) or need `get`
// (private ones, as any read of them).
Status AuthorizeExport(const CallContext& c, const model::Object& target, const model::Object& wrapping) {
  if (AppOwned(target)) return Authorize(c, target, auth::kGet, CKR_KEY_FUNCTION_NOT_PERMITTED);
  const bool trusted_vault_key = !AppOwned(wrapping) && wrapping.is_token() && wrapping.attrs.GetBool(CKA_TRUSTED, false);
  if (trusted_vault_key && Permits(c, target, auth::kBackup)) return OkStatus();
  return Authorize(c, target, auth::kRelease, CKR_KEY_FUNCTION_NOT_PERMITTED);
}

// Begin() for a call that may end an operation (its event is submitted with this call's result).
Result<CallContext> BeginContinuing(CK_SESSION_HANDLE h) {
  VAULTP11_ASSIGN_OR_RETURN(CallContext c, Begin(h));
  AuditContinuing();
  return c;
}

Status CheckInput(CK_BYTE_PTR in, CK_ULONG in_len) {
  if (in == nullptr && in_len != 0) return Err(CKR_ARGUMENTS_BAD, "input is NULL with length {}", in_len);
  return OkStatus();
}

std::span<const uint8_t> In(CK_BYTE_PTR in, CK_ULONG len) {
  return in == nullptr ? std::span<const uint8_t>() : std::span<const uint8_t>(in, len);
}

// Ends `state` unless `st` is OK or CKR_BUFFER_TOO_SMALL (spec 5.2: any other error ends the
// operation).
template <typename T>
Status Finish(std::optional<T>& state, Status st) {
  if (!st.ok() && st.rv() != CKR_BUFFER_TOO_SMALL) state.reset();
  return st;
}

// The cipher size-query idiom with a cached output: computed once, returned once.
template <typename Compute>
Status CipherOut(std::optional<CipherState>& state, CK_BYTE_PTR out, CK_ULONG_PTR out_len, bool ends, Compute compute) {
  CipherState& st = *state;
  if (!st.pending) {
    auto r = compute(st);
    if (!r.ok()) {
      state.reset();
      return r.error();
    }
    st.pending = std::move(r).value();
  }
  Status cs = CopyOut(*st.pending, out, out_len);
  if (!cs.ok() || out == nullptr) return cs;  // length query or too small: keep the output
  st.pending.reset();
  if (ends) state.reset();
  return OkStatus();
}

// Fixed-length outputs (signatures, digests): the length is known before any work, so a
// length query or a short buffer computes nothing and keeps the operation; otherwise the
// output is computed, the operation ends and the result is copied.
template <typename State, typename Compute>
Status FixedOut(std::optional<State>& state, size_t n, CK_BYTE_PTR out, CK_ULONG_PTR out_len, Compute compute) {
  if (out == nullptr) {
    *out_len = n;
    return OkStatus();
  }
  if (*out_len < n) {
    *out_len = n;
    return Error{CKR_BUFFER_TOO_SMALL, "output buffer too small", n};
  }
  auto r = compute();
  state.reset();
  if (!r.ok()) return r.error();
  return CopyOut(r.value(), out, out_len);
}

// C_SignUpdate / C_VerifyUpdate: the first Update makes the operation multi-part; raw
// (single-part) mechanisms end it with CKR_FUNCTION_NOT_SUPPORTED.
template <typename State>
Status MultiPartUpdate(std::optional<State>& st, const char* what, CK_BYTE_PTR in, CK_ULONG in_len) {
  if (!st) return Err(CKR_OPERATION_NOT_INITIALIZED, "no {} operation", what);
  VAULTP11_RETURN_IF_ERROR(Finish(st, CheckInput(in, in_len)));
  if (st->single_part) return Finish(st, Err(CKR_OPERATION_ACTIVE, "a single-part {} is in progress", what));
  if (!st->op->SupportsMultiPart()) return Finish(st, Err(CKR_FUNCTION_NOT_SUPPORTED, "this mechanism is single-part only"));
  st->multi_part = true;
  return Finish(st, st->op->Update(In(in, in_len)));
}

Status CipherInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE key, bool encrypt) {
  VAULTP11_ASSIGN_OR_RETURN(CallContext c, BeginAudited(h, encrypt ? "KeyEncrypt" : "KeyDecrypt"));
  if (mech == nullptr) return Err(CKR_ARGUMENTS_BAD, "pMechanism is NULL");
  std::lock_guard<std::mutex> l(c.session->mu);
  auto& slot = encrypt ? c.session->encrypt : c.session->decrypt;
  if (slot) return Err(CKR_OPERATION_ACTIVE, "an {} operation is active", encrypt ? "encrypt" : "decrypt");
  RefreshGrants(c);  // as of now, under the session lock (C_Logout ends operations under it)
  VAULTP11_ASSIGN_OR_RETURN(PreparedKey k, PrepareKey(c, key, *mech, encrypt ? kEncryptUse : kDecryptUse));
  // HSM keys (a pair's private half, a pool's AES key) run in the HSM; public keys in-process.
  auto op = k.hsm && k.hsm->pool ? NewPoolCipherOp(k.object, *mech, encrypt)
            : k.hsm ? WithHsmHandle(k,
                                  [&](CK_OBJECT_HANDLE ih) {
                                    return encrypt ? p11::NewInnerEncryptOp(k.hsm_token, ih, *mech)
                                                   : p11::NewInnerDecryptOp(k.hsm_token, ih, *mech);
                                  })
            : encrypt ? ossl::NewEncryptOp(k.key, *mech)
                      : ossl::NewDecryptOp(k.key, *mech);
  if (!op.ok()) return op.error();
  slot = CipherState{std::move(op).value(), std::move(k.object), false, std::nullopt, TakeAudit()};
  return OkStatus();
}

// Checks an encrypt/decrypt call that returns output: the operation must be active, and a
// NULL length pointer ends it (spec 5.2: errors other than CKR_BUFFER_TOO_SMALL end it).
Status CheckCipherCall(std::optional<CipherState>& slot, bool encrypt, CK_ULONG_PTR out_len) {
  if (!slot) return Err(CKR_OPERATION_NOT_INITIALIZED, "no {} operation", encrypt ? "encrypt" : "decrypt");
  if (out_len == nullptr) return Finish(slot, Err(CKR_ARGUMENTS_BAD, "output length pointer is NULL"));
  return OkStatus();
}

Status CipherOneShot(CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR out_len,
                     bool encrypt) {
  VAULTP11_ASSIGN_OR_RETURN(CallContext c, BeginContinuing(h));
  std::lock_guard<std::mutex> l(c.session->mu);
  auto& slot = encrypt ? c.session->encrypt : c.session->decrypt;
  VAULTP11_RETURN_IF_ERROR(CheckCipherCall(slot, encrypt, out_len));
  VAULTP11_RETURN_IF_ERROR(Finish(slot, CheckInput(in, in_len)));
  if (slot->multi_part) return Finish(slot, Err(CKR_OPERATION_ACTIVE, "a multi-part operation is in progress"));
  slot->single_part = true;
  auto data = In(in, in_len);
  return CipherOut(slot, out, out_len, true, [&](CipherState& st) { return st.op->OneShot(data); });
}

Status CipherUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR out_len,
                    bool encrypt) {
  VAULTP11_ASSIGN_OR_RETURN(CallContext c, BeginContinuing(h));
  std::lock_guard<std::mutex> l(c.session->mu);
  auto& slot = encrypt ? c.session->encrypt : c.session->decrypt;
  VAULTP11_RETURN_IF_ERROR(CheckCipherCall(slot, encrypt, out_len));
  VAULTP11_RETURN_IF_ERROR(Finish(slot, CheckInput(in, in_len)));
  if (slot->single_part) return Finish(slot, Err(CKR_OPERATION_ACTIVE, "a single-part operation is in progress"));
  if (!slot->op->SupportsMultiPart()) return Finish(slot, Err(CKR_FUNCTION_NOT_SUPPORTED, "this mechanism is single-part only"));
  slot->multi_part = true;
  auto data = In(in, in_len);
  return CipherOut(slot, out, out_len, false, [&](CipherState& st) { return st.op->Update(data); });
}

Status CipherFinal(CK_SESSION_HANDLE h, CK_BYTE_PTR out, CK_ULONG_PTR out_len, bool encrypt) {
  VAULTP11_ASSIGN_OR_RETURN(CallContext c, BeginContinuing(h));
  std::lock_guard<std::mutex> l(c.session->mu);
  auto& slot = encrypt ? c.session->encrypt : c.session->decrypt;
  VAULTP11_RETURN_IF_ERROR(CheckCipherCall(slot, encrypt, out_len));
  if (slot->single_part) return Finish(slot, Err(CKR_OPERATION_ACTIVE, "a single-part operation is in progress"));
  if (!slot->op->SupportsMultiPart()) return Finish(slot, Err(CKR_FUNCTION_NOT_SUPPORTED, "this mechanism is single-part only"));
  return CipherOut(slot, out, out_len, true, [&](CipherState& st) { return st.op->Final(); });
}

}  // namespace

// ---- encrypt / decrypt ----------------------------------------------------------------------

Status EncryptInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE key) { return CipherInit(h, mech, key, true); }
Status Encrypt(CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR out_len) {
  return CipherOneShot(h, in, in_len, out, out_len, true);
}
Status EncryptUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR out_len) {
  return CipherUpdate(h, in, in_len, out, out_len, true);
}
Status EncryptFinal(CK_SESSION_HANDLE h, CK_BYTE_PTR out, CK_ULONG_PTR out_len) { return CipherFinal(h, out, out_len, true); }
Status DecryptInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE key) { return CipherInit(h, mech, key, false); }
Status Decrypt(CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR out_len) {
  return CipherOneShot(h, in, in_len, out, out_len, false);
}
Status DecryptUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR out_len) {
  return CipherUpdate(h, in, in_len, out, out_len, false);
}
Status DecryptFinal(CK_SESSION_HANDLE h, CK_BYTE_PTR out, CK_ULONG_PTR out_len) { return CipherFinal(h, out, out_len, false); }

// ---- digest ---------------------------------------------------------------------------------

Status DigestInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR mech) {
  VAULTP11_ASSIGN_OR_RETURN(CallContext c, Begin(h));
  if (mech == nullptr) return Err(CKR_ARGUMENTS_BAD, "pMechanism is NULL");
  std::lock_guard<std::mutex> l(c.session->mu);
  if (c.session->digest) return Err(CKR_OPERATION_ACTIVE, "a digest operation is active");
  const MechanismEntry* m = FindMechanism(mech->mechanism);
  if (m == nullptr || !(m->flags & CKF_DIGEST)) return Err(CKR_MECHANISM_INVALID, "mechanism 0x{:x} is not a digest", mech->mechanism);
  VAULTP11_ASSIGN_OR_RETURN(auto op, ossl::NewDigestOp(*mech));
  c.session->digest = DigestState{std::move(op), false};
  return OkStatus();
}

Status Digest(CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR out_len) {
  VAULTP11_ASSIGN_OR_RETURN(CallContext c, Begin(h));
  std::lock_guard<std::mutex> l(c.session->mu);
  auto& st = c.session->digest;
  if (!st) return Err(CKR_OPERATION_NOT_INITIALIZED, "no digest operation");
  if (out_len == nullptr) return Finish(st, Err(CKR_ARGUMENTS_BAD, "pulDigestLen is NULL"));
  VAULTP11_RETURN_IF_ERROR(Finish(st, CheckInput(in, in_len)));
  if (st->multi_part) return Finish(st, Err(CKR_OPERATION_ACTIVE, "a multi-part digest is in progress"));
  st->single_part = true;
  return FixedOut(st, st->op->Length(), out, out_len, [&]() -> Result<Bytes> {
    VAULTP11_RETURN_IF_ERROR(st->op->Update(In(in, in_len)));
    return st->op->Final();
  });
}

Status DigestUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len) {
  VAULTP11_ASSIGN_OR_RETURN(CallContext c, Begin(h));
  std::lock_guard<std::mutex> l(c.session->mu);
  auto& st = c.session->digest;
  if (!st) return Err(CKR_OPERATION_NOT_INITIALIZED, "no digest operation");
  VAULTP11_RETURN_IF_ERROR(Finish(st, CheckInput(in, in_len)));
  if (st->single_part) return Finish(st, Err(CKR_OPERATION_ACTIVE, "a single-part digest is in progress"));
  st->multi_part = true;
  return Finish(st, st->op->Update(In(in, in_len)));
}

Status DigestKey(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE key) {
  VAULTP11_ASSIGN_OR_RETURN(CallContext c, Begin(h));
  std::lock_guard<std::mutex> l(c.session->mu);
  auto& st = c.session->digest;
  if (!st) return Err(CKR_OPERATION_NOT_INITIALIZED, "no digest operation");
  if (st->single_part) return Finish(st, Err(CKR_OPERATION_ACTIVE, "a single-part digest is in progress"));
  auto o = GetVisible(c, key, CKR_KEY_HANDLE_INVALID);
  if (!o.ok()) return Finish(st, o.status());
  // Key material never feeds a digest the caller can read.
  return Finish(st, Err(CKR_KEY_INDIGESTIBLE, "key values cannot be digested"));
}

Status DigestFinal(CK_SESSION_HANDLE h, CK_BYTE_PTR out, CK_ULONG_PTR out_len) {
  VAULTP11_ASSIGN_OR_RETURN(CallContext c, Begin(h));
  std::lock_guard<std::mutex> l(c.session->mu);
  auto& st = c.session->digest;
  if (!st) return Err(CKR_OPERATION_NOT_INITIALIZED, "no digest operation");
  if (out_len == nullptr) return Finish(st, Err(CKR_ARGUMENTS_BAD, "pulDigestLen is NULL"));
  if (st->single_part) return Finish(st, Err(CKR_OPERATION_ACTIVE, "a single-part digest is in progress"));
  return FixedOut(st, st->op->Length(), out, out_len, [&] { return st->op->Final(); });
}

// ---- sign / verify --------------------------------------------------------------------------

Status SignInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE key) {
  VAULTP11_ASSIGN_OR_RETURN(CallContext c, BeginAudited(h, "KeySign"));
  if (mech == nullptr) return Err(CKR_ARGUMENTS_BAD, "pMechanism is NULL");
  std::lock_guard<std::mutex> l(c.session->mu);
  if (c.session->sign) return Err(CKR_OPERATION_ACTIVE, "a sign operation is active");
  RefreshGrants(c);  // as of now, under the session lock (C_Logout ends operations under it)
  VAULTP11_ASSIGN_OR_RETURN(PreparedKey k, PrepareKey(c, key, *mech, kSignUse));
  const size_t hsm_sig_len = k.hsm ? HsmSignatureLength(*k.object) : 0;
  VAULTP11_ASSIGN_OR_RETURN(auto op, k.hsm && k.hsm->pool ? NewPoolSignOp(k.object, *mech, hsm_sig_len)
                                     : k.hsm ? WithHsmHandle(k,
                                                             [&](CK_OBJECT_HANDLE ih) {
                                                               return p11::NewInnerSignOp(k.hsm_token, ih, *mech,
                                                                                          hsm_sig_len);
                                                             })
                                           : ossl::NewSignOp(k.key, *mech));
  c.session->sign = SignState{std::move(op), std::move(k.object), false, TakeAudit()};
  return OkStatus();
}

Status Sign(CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR sig, CK_ULONG_PTR sig_len) {
  VAULTP11_ASSIGN_OR_RETURN(CallContext c, BeginContinuing(h));
  std::lock_guard<std::mutex> l(c.session->mu);
  auto& st = c.session->sign;
  if (!st) return Err(CKR_OPERATION_NOT_INITIALIZED, "no sign operation");
  if (sig_len == nullptr) return Finish(st, Err(CKR_ARGUMENTS_BAD, "pulSignatureLen is NULL"));
  VAULTP11_RETURN_IF_ERROR(Finish(st, CheckInput(in, in_len)));
  if (st->multi_part) return Finish(st, Err(CKR_OPERATION_ACTIVE, "a multi-part signature is in progress"));
  st->single_part = true;
  return FixedOut(st, st->op->SignatureLength(), sig, sig_len, [&] { return st->op->Sign(In(in, in_len)); });
}

Status SignUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len) {
  VAULTP11_ASSIGN_OR_RETURN(CallContext c, BeginContinuing(h));
  std::lock_guard<std::mutex> l(c.session->mu);
  return MultiPartUpdate(c.session->sign, "sign", in, in_len);
}

Status SignFinal(CK_SESSION_HANDLE h, CK_BYTE_PTR sig, CK_ULONG_PTR sig_len) {
  VAULTP11_ASSIGN_OR_RETURN(CallContext c, BeginContinuing(h));
  std::lock_guard<std::mutex> l(c.session->mu);
  auto& st = c.session->sign;
  if (!st) return Err(CKR_OPERATION_NOT_INITIALIZED, "no sign operation");
  if (sig_len == nullptr) return Finish(st, Err(CKR_ARGUMENTS_BAD, "pulSignatureLen is NULL"));
  if (st->single_part) return Finish(st, Err(CKR_OPERATION_ACTIVE, "a single-part signature is in progress"));
  if (!st->op->SupportsMultiPart()) return Finish(st, Err(CKR_FUNCTION_NOT_SUPPORTED, "this mechanism is single-part only"));
  return FixedOut(st, st->op->SignatureLength(), sig, sig_len, [&] { return st->op->Final(); });
}

Status VerifyInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE key) {
  VAULTP11_ASSIGN_OR_RETURN(CallContext c, BeginAudited(h, "KeyVerify"));
  if (mech == nullptr) return Err(CKR_ARGUMENTS_BAD, "pMechanism is NULL");
  std::lock_guard<std::mutex> l(c.session->mu);
  if (c.session->verify) return Err(CKR_OPERATION_ACTIVE, "a verify operation is active");
  RefreshGrants(c);  // as of now, under the session lock (C_Logout ends operations under it)
  VAULTP11_ASSIGN_OR_RETURN(PreparedKey k, PrepareKey(c, key, *mech, kVerifyUse));
  VAULTP11_ASSIGN_OR_RETURN(auto op, ossl::NewVerifyOp(k.key, *mech));
  c.session->verify = VerifyState{std::move(op), std::move(k.object), false, TakeAudit()};
  return OkStatus();
}

Status Verify(CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR sig, CK_ULONG sig_len) {
  VAULTP11_ASSIGN_OR_RETURN(CallContext c, BeginContinuing(h));
  std::lock_guard<std::mutex> l(c.session->mu);
  auto& st = c.session->verify;
  if (!st) return Err(CKR_OPERATION_NOT_INITIALIZED, "no verify operation");
  VAULTP11_RETURN_IF_ERROR(Finish(st, CheckInput(in, in_len)));
  VAULTP11_RETURN_IF_ERROR(Finish(st, CheckInput(sig, sig_len)));
  if (st->multi_part) return Finish(st, Err(CKR_OPERATION_ACTIVE, "a multi-part verification is in progress"));
  Status r = st->op->Verify(In(in, in_len), In(sig, sig_len));
  st.reset();
  return r;
}

Status VerifyUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR in, CK_ULONG in_len) {
  VAULTP11_ASSIGN_OR_RETURN(CallContext c, BeginContinuing(h));
  std::lock_guard<std::mutex> l(c.session->mu);
  return MultiPartUpdate(c.session->verify, "verify", in, in_len);
}

Status VerifyFinal(CK_SESSION_HANDLE h, CK_BYTE_PTR sig, CK_ULONG sig_len) {
  VAULTP11_ASSIGN_OR_RETURN(CallContext c, BeginContinuing(h));
  std::lock_guard<std::mutex> l(c.session->mu);
  auto& st = c.session->verify;
  if (!st) return Err(CKR_OPERATION_NOT_INITIALIZED, "no verify operation");
  VAULTP11_RETURN_IF_ERROR(Finish(st, CheckInput(sig, sig_len)));
  if (!st->op->SupportsMultiPart()) return Finish(st, Err(CKR_FUNCTION_NOT_SUPPORTED, "this mechanism is single-part only"));
  Status r = st->op->Final(In(sig, sig_len));
  st.reset();
  return r;
}

// ---- wrap / unwrap --------------------------------------------------------------------------

Status WrapKey(CK_SESSION_HANDLE h, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE wrapping, CK_OBJECT_HANDLE key,
               CK_BYTE_PTR out, CK_ULONG_PTR out_len) {
  VAULTP11_ASSIGN_OR_RETURN(CallContext c, BeginAudited(h, "KeyWrap"));
  if (mech == nullptr || out_len == nullptr) return Err(CKR_ARGUMENTS_BAD, "C_WrapKey: NULL argument");
  VAULTP11_ASSIGN_OR_RETURN(PreparedKey w, PrepareKey(c, wrapping, *mech, kWrapUse));
  if (w.hsm) return Err(CKR_MECHANISM_INVALID, "wrapping with an HSM key is not supported");
  VAULTP11_ASSIGN_OR_RETURN(model::ObjectPtr target, GetVisible(c, key, CKR_KEY_HANDLE_INVALID));
  if (AuditCall* a = CurrentAudit()) a->event.extra = {{"wrappedKey", target->label()}};
  if (target->cls() != CKO_SECRET_KEY && target->cls() != CKO_PRIVATE_KEY)
    return Err(CKR_KEY_NOT_WRAPPABLE, "only secret and private keys can be wrapped");
  VAULTP11_RETURN_IF_ERROR(AuthorizeExport(c, *target, *w.object));
  if (!target->attrs.GetBool(CKA_EXTRACTABLE, false)) return Err(CKR_KEY_UNEXTRACTABLE, "the key is not extractable");
  if (target->attrs.GetBool(CKA_WRAP_WITH_TRUSTED, false) && !w.object->attrs.GetBool(CKA_TRUSTED, false))
    return Err(CKR_KEY_NOT_WRAPPABLE, "the key may only be wrapped with a trusted key");
  VAULTP11_ASSIGN_OR_RETURN(auto bytes, target->material->Secret());
  VAULTP11_ASSIGN_OR_RETURN(Bytes wrapped, ossl::Wrap(w.key, *mech, *bytes));
  return CopyOut(wrapped, out, out_len);
}

Status UnwrapKey(CK_SESSION_HANDLE h, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE unwrapping, CK_BYTE_PTR in,
                 CK_ULONG in_len, CK_ATTRIBUTE_PTR tmpl, CK_ULONG count, CK_OBJECT_HANDLE_PTR out) {
  VAULTP11_ASSIGN_OR_RETURN(CallContext c, BeginAudited(h, "KeyUnwrap"));
  if (mech == nullptr || out == nullptr || in == nullptr || (tmpl == nullptr && count != 0))
    return Err(CKR_ARGUMENTS_BAD, "C_UnwrapKey: NULL argument");
  // The unwrapped key would be a software key: pools hold HSM keys only.
  if (c.token->is_pool())
    return Err(CKR_ATTRIBUTE_VALUE_INVALID, "managed HSM pool {} holds HSM keys only: C_UnwrapKey cannot import there",
               c.token->name());
  VAULTP11_ASSIGN_OR_RETURN(PreparedKey u, PrepareKey(c, unwrapping, *mech, kUnwrapUse));
  VAULTP11_ASSIGN_OR_RETURN(model::AttributeMap t, model::ParseTemplate(tmpl, count));
  VAULTP11_ASSIGN_OR_RETURN(bool new_version, TakeNewVersion(t));
  SecureBytes raw;
  if (u.hsm) {
    // An HSM key unwraps by decrypting in the HSM (RSA mechanisms); the result is a software key
    // of the vault, as the vault's unwrapKey operation returns the key to the caller.
    if (mech->mechanism != CKM_RSA_PKCS_OAEP && mech->mechanism != CKM_RSA_PKCS)
      return Err(CKR_MECHANISM_INVALID, "HSM keys unwrap with CKM_RSA_PKCS_OAEP or CKM_RSA_PKCS");
    VAULTP11_ASSIGN_OR_RETURN(auto op, WithHsmHandle(u, [&](CK_OBJECT_HANDLE ih) {
                                return p11::NewInnerDecryptOp(u.hsm_token, ih, *mech);
                              }));
    auto r = op->OneShot(In(in, in_len));
    if (!r.ok()) {
      // Bad wrapped bytes come back from HSMs as various codes (SoftHSMv2: CKR_ARGUMENTS_BAD);
      // everything but a device, session or memory failure means the wrapped key is invalid.
      CK_RV rv = r.rv();
      bool device = rv == CKR_DEVICE_ERROR || rv == CKR_DEVICE_REMOVED || rv == CKR_DEVICE_MEMORY ||
                    rv == CKR_TOKEN_NOT_PRESENT || rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED ||
                    rv == CKR_HOST_MEMORY || rv == CKR_USER_NOT_LOGGED_IN;
      if (!device) rv = CKR_WRAPPED_KEY_INVALID;
      return Err(rv, "unwrap in the HSM failed: {}", r.error().message);
    }
    raw = std::move(r).value();
  } else {
    VAULTP11_ASSIGN_OR_RETURN(raw, ossl::Unwrap(u.key, *mech, In(in, in_len)));
  }
  VAULTP11_ASSIGN_OR_RETURN(auto obj, model::UnwrappedKey(t, std::move(raw)));
  ApplyVaultPrivacy(*obj);
  if (AuditCall* a = CurrentAudit()) a->event.extra = {{"newKey", obj->label()}};
  VAULTP11_RETURN_IF_ERROR(AuthorizeNew(c, *obj, obj->is_token() ? auth::kImport : auth::kUnwrapKey));
  VAULTP11_RETURN_IF_ERROR(CheckPairing(c, *obj));
  obj->owner_session = h;
  VAULTP11_ASSIGN_OR_RETURN(*out, c.token->Add(obj, new_version));
  return OkStatus();
}

// ---- random and legacy ----------------------------------------------------------------------

Status SeedRandom(CK_SESSION_HANDLE h, CK_BYTE_PTR seed, CK_ULONG len) {
  VAULTP11_RETURN_IF_ERROR(Begin(h));
  if (seed == nullptr && len != 0) return Err(CKR_ARGUMENTS_BAD, "pSeed is NULL");
  // The DRBG seeds itself from the OS; caller entropy is not mixed in.
  return Err(CKR_RANDOM_SEED_NOT_SUPPORTED, "seeding is not supported");
}

Status GenerateRandom(CK_SESSION_HANDLE h, CK_BYTE_PTR out, CK_ULONG len) {
  VAULTP11_RETURN_IF_ERROR(Begin(h));
  if (out == nullptr && len != 0) return Err(CKR_ARGUMENTS_BAD, "pRandomData is NULL");
  if (len == 0) return OkStatus();
  return ossl::RandomBytes(std::span<uint8_t>(out, len));
}

Status GetFunctionStatus(CK_SESSION_HANDLE h) {
  VAULTP11_RETURN_IF_ERROR(Begin(h));
  return Err(CKR_FUNCTION_NOT_PARALLEL, "no function runs in parallel");
}

Status CancelFunction(CK_SESSION_HANDLE h) {
  VAULTP11_RETURN_IF_ERROR(Begin(h));
  return Err(CKR_FUNCTION_NOT_PARALLEL, "no function runs in parallel");
}

}  // namespace vaultp11::core

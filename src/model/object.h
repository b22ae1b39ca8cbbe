// Object models one PKCS#11 object of a vault token: its plain attributes, immutable once built,
// and a shared Material that holds the secret part and the OpenSSL key derived from it.
#pragma once

#include <p11-kit/pkcs11.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "backend/ossl/ossl_backend.h"
#include "backend/p11/inner_token.h"
#include "backend/pool/pool.h"
#include "vaultp11/vaultp11.h"
#include "model/attributes.h"
#include "model/lifecycle.h"
#include "util/result.h"
#include "util/secure_bytes.h"

namespace vaultp11::model {

// HsmKey says where an HSM-protected key lives: the vault's inner token (null while the HSM is
// unavailable, with the reason) and the CKA_ID of the key's objects there. A managed HSM pool's
// key names the pool instead (token null): copies with that CKA_ID live on its members.
struct HsmKey {
  std::shared_ptr<p11::InnerToken> token;
  std::string unavailable;  // why token is null
  Bytes inner_id;
  CK_OBJECT_CLASS object_class = CKO_PRIVATE_KEY;
  std::shared_ptr<pool::HsmPool> pool;  // pool keys only
};

// One inner object to run an operation on: the member (or vault HSM) and the handle there.
struct InnerKeyRef {
  std::shared_ptr<p11::InnerToken> token;
  CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
};

// Material models the secret part of an object (PKCS#8 DER of a private key, raw AES key,
// a data object's value) and the OpenSSL key derived from it, loaded on first use and cached
// for every session and every later copy of the object (attribute changes keep the material).
class Material {
 public:
  using Loader = std::function<Result<SecureBytes>()>;
  // Secret already in memory (new and session objects).
  explicit Material(SecureBytes secret);
  // Secret loaded from the store on first use (token objects read at start-up).
  explicit Material(Loader loader);
  // No secret: public keys, whose OpenSSL key is built from their attributes.
  Material() = default;
  // The key lives in an HSM: no secret here, only the reference.
  explicit Material(HsmKey hsm);

  // The HSM reference, or null for software material.
  const HsmKey* hsm() const { return hsm_ ? &*hsm_ : nullptr; }
  // The key's inner handle, found by CKA_ID on first use and cached (found again after the
  // inner module reset itself in a forked child). HSM unavailable: CKR_DEVICE_ERROR.
  Result<CK_OBJECT_HANDLE> HsmHandle();
  // The inner token and handle to use for a vault's HSM key (HsmHandle with its token).
  Result<InnerKeyRef> HsmTarget();
  // Drops the cached inner handle (the HSM said it is not valid): the next HsmHandle looks again.
  void ForgetHsmHandle() {
    std::lock_guard<std::mutex> l(mu_);
    hsm_handle_ = CK_INVALID_HANDLE;
  }
  // A pool key's handle on the member `lease` holds, found by CKA_ID once per member
  // generation (and module epoch) and cached. The member lacks it: CKR_KEY_HANDLE_INVALID.
  Result<CK_OBJECT_HANDLE> PoolHandle(const pool::MemberLease& lease);
  void ForgetPoolHandle(size_t member);

  Result<std::shared_ptr<const SecureBytes>> Secret();
  // The key for the backend (class/type decide how the secret or attributes are read).
  Result<ossl::KeyRef> Key(CK_OBJECT_CLASS cls, CK_KEY_TYPE type, const AttributeMap& attrs);

 private:
  std::mutex mu_;  // guards everything below during loading
  Loader loader_;
  std::shared_ptr<const SecureBytes> secret_;
  std::atomic<bool> key_ready_{false};
  ossl::KeyRef key_;
  std::optional<HsmKey> hsm_;
  CK_OBJECT_HANDLE hsm_handle_ = CK_INVALID_HANDLE;  // guarded by mu_
  uint64_t hsm_epoch_ = 0;                           // guarded by mu_
  struct MemberHandle {
    CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
    uint64_t generation = 0, epoch = 0;
  };
  std::vector<MemberHandle> member_handles_;  // guarded by mu_: pool keys, by member
};

struct Object {
  AttributeMap attrs;   // every non-secret attribute, including CKA_CLASS, CKA_KEY_TYPE
  std::shared_ptr<Material> material;
  int64_t store_id = 0;               // row in the store (token objects)
  CK_SESSION_HANDLE owner_session = 0;  // creating session (session objects)
  // A session object whose material came from a vault object (a C_CopyObject of one): it is not
  // the application's own and keeps the vault's access rules (core/context.h AppOwned).
  bool vault_origin = false;

  CK_OBJECT_CLASS cls() const { return attrs.GetUlong(CKA_CLASS).value_or(CK_UNAVAILABLE_INFORMATION); }
  CK_KEY_TYPE key_type() const { return attrs.GetUlong(CKA_KEY_TYPE).value_or(CK_UNAVAILABLE_INFORMATION); }
  bool is_token() const { return attrs.GetBool(CKA_TOKEN); }
  bool is_private() const { return attrs.GetBool(CKA_PRIVATE); }
  bool is_key() const {
    CK_OBJECT_CLASS c = cls();
    return c == CKO_PRIVATE_KEY || c == CKO_PUBLIC_KEY || c == CKO_SECRET_KEY;
  }
  std::string label() const { return attrs.GetString(CKA_LABEL); }
  Result<ossl::KeyRef> Key() const { return material->Key(cls(), key_type(), attrs); }
};

using ObjectPtr = std::shared_ptr<const Object>;

// Answers one attribute for C_GetAttributeValue. Returns the value, or CKR_ATTRIBUTE_SENSITIVE /
// CKR_ATTRIBUTE_TYPE_INVALID. `may_read_secret_value` is the caller's permission to read a data
// object's value (secrets get) or a key's material (keys release).
Result<SecureBytes> ReadAttribute(const Object& obj, CK_ATTRIBUTE_TYPE type, bool may_read_secret_value);

// Approximate size for C_GetObjectSize.
CK_ULONG ObjectSize(const Object& obj);

// ---- factories (C_GenerateKeyPair, C_GenerateKey, C_CreateObject, C_UnwrapKey, C_CopyObject) --

struct KeyPair {
  std::shared_ptr<Object> public_key;
  std::shared_ptr<Object> private_key;
};

Result<KeyPair> GenerateKeyPair(CK_MECHANISM_TYPE mech, const AttributeMap& pub_template,
                                const AttributeMap& priv_template);
// A software key pair from an existing private key (PKCS#8 DER, RSA or EC), e.g. the key of an
// imported certificate: the templates as for generation, CKA_LOCAL false, never "always
// sensitive" or "never extractable" (the key existed outside).
Result<KeyPair> ImportKeyPair(const AttributeMap& pub_template, const AttributeMap& priv_template,
                              const SecureBytes& pkcs8);
// An HSM-protected key pair: generated inside `hsm` (sensitive, never extractable), public
// attributes mirrored on both outer objects; the outer private object holds only the reference.
// With `hsm.pool` set, the pair is generated on one member with CKA_EXTRACTABLE and
// CKA_WRAP_WITH_TRUSTED (so only the security domain can carry it) and copied to the other
// members; it is returned only once `quorum` members hold it (else CKR_DEVICE_ERROR, no copy
// left behind).
Result<KeyPair> GenerateHsmKeyPair(CK_MECHANISM_TYPE mech, const AttributeMap& pub_template,
                                   const AttributeMap& priv_template, const HsmKey& hsm);
// A key pair from an existing private key (as ImportKeyPair) whose private key goes into the
// vault's HSM `hsm` (not a pool): unwrapped there under a one-time transport key, sensitive and
// never extractable (but wrappable under the security domain when the HSM holds one, like a
// generated key), with its public key beside it; the outer private object holds only the
// reference. The caller drops `pkcs8` as soon as this returns.
Result<KeyPair> ImportHsmKeyPair(const AttributeMap& pub_template, const AttributeMap& priv_template,
                                 const SecureBytes& pkcs8, const HsmKey& hsm);
// A pool's AES key (C_GenerateKey, 128/192/256 bits): generated on one member, copied to the
// others under the security domain (HsmPool::Replicate); `hsm.pool` must be set.
Result<std::shared_ptr<Object>> GenerateHsmSecretKey(CK_MECHANISM_TYPE mech, const AttributeMap& tmpl,
                                                     const HsmKey& hsm);
// The protection a generation template asks for (either half), if any; a bad value is
// CKR_ATTRIBUTE_VALUE_INVALID.
Result<std::optional<CK_ULONG>> RequestedProtection(const AttributeMap& a, const AttributeMap& b);
Result<std::shared_ptr<Object>> GenerateSecretKey(CK_MECHANISM_TYPE mech, const AttributeMap& tmpl);
Result<std::shared_ptr<Object>> CreateObject(const AttributeMap& tmpl);
// A key made from unwrapped bytes (raw secret key or PKCS#8 private key) and the template.
Result<std::shared_ptr<Object>> UnwrappedKey(const AttributeMap& tmpl, SecureBytes key_bytes);
// C_CopyObject: the template may only change CKA_TOKEN, CKA_PRIVATE, CKA_MODIFIABLE,
// CKA_DESTROYABLE, CKA_COPYABLE (to false), CKA_LABEL and CKA_ID.
Result<std::shared_ptr<Object>> CopyObject(const Object& src, const AttributeMap& tmpl);
// C_SetAttributeValue: the changed object, or CKR_ATTRIBUTE_READ_ONLY / CKR_ACTION_PROHIBITED.
Result<std::shared_ptr<Object>> ModifyObject(const Object& src, const AttributeMap& changes);

// Whether object `obj` matches every attribute of a C_FindObjectsInit template.
bool Matches(const Object& obj, const AttributeMap& tmpl);

// The bytes that go to the store's secret column for an object (empty if none).
Result<SecureBytes> SecretForStore(const Object& obj);

}  // namespace vaultp11::model

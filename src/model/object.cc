#include "model/object.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <set>
#include <tuple>

#include "model/lifecycle.h"

namespace vaultp11::model {

// ---- Material -------------------------------------------------------------------------------

Material::Material(SecureBytes secret)
    : secret_(std::make_shared<const SecureBytes>(std::move(secret))) {}
Material::Material(Loader loader) : loader_(std::move(loader)) {}

Material::Material(HsmKey hsm) : hsm_(std::move(hsm)) {}

Result<InnerKeyRef> Material::HsmTarget() {
  if (!hsm_ || hsm_->pool) return Err(CKR_GENERAL_ERROR, "not a vault HSM key");
  VAULTP11_ASSIGN_OR_RETURN(CK_OBJECT_HANDLE h, HsmHandle());
  return InnerKeyRef{hsm_->token, h};
}

Result<CK_OBJECT_HANDLE> Material::PoolHandle(const pool::MemberLease& lease) {
  if (!hsm_ || !hsm_->pool || !lease) return Err(CKR_GENERAL_ERROR, "not a pool key");
  const uint64_t epoch = lease.token->module()->object_epoch();
  {
    std::lock_guard<std::mutex> l(mu_);
    if (lease.index < member_handles_.size()) {
      const MemberHandle& c = member_handles_[lease.index];
      if (c.handle != CK_INVALID_HANDLE && c.generation == lease.generation && c.epoch == epoch) return c.handle;
    }
  }
  p11::AttrTemplate t;
  t.Ulong(CKA_CLASS, hsm_->object_class).Data(CKA_ID, hsm_->inner_id);
  VAULTP11_ASSIGN_OR_RETURN(auto found, lease.token->FindObjects(t, 1));
  // Two copies (two processes copied a missed key at once) are the same key: either serves.
  if (found.empty())
    return Err(CKR_KEY_HANDLE_INVALID, "hsm {} of pool {} holds no copy of the key", hsm_->pool->member_name(lease.index),
               hsm_->pool->name());
  std::lock_guard<std::mutex> l(mu_);
  if (member_handles_.size() < hsm_->pool->size()) member_handles_.resize(hsm_->pool->size());
  member_handles_[lease.index] = MemberHandle{found[0], lease.generation, epoch};
  return found[0];
}

void Material::ForgetPoolHandle(size_t member) {
  std::lock_guard<std::mutex> l(mu_);
  if (member < member_handles_.size()) member_handles_[member] = MemberHandle{};
}

Result<CK_OBJECT_HANDLE> Material::HsmHandle() {
  if (!hsm_ || hsm_->pool) return Err(CKR_GENERAL_ERROR, "not a vault HSM key");
  if (!hsm_->token) return Err(CKR_DEVICE_ERROR, "the vault's HSM is unavailable: {}", hsm_->unavailable);
  uint64_t epoch = hsm_->token->module()->object_epoch();
  {
    std::lock_guard<std::mutex> l(mu_);
    if (hsm_handle_ != CK_INVALID_HANDLE && hsm_epoch_ == epoch) return hsm_handle_;
  }
  p11::AttrTemplate t;
  t.Ulong(CKA_CLASS, hsm_->object_class).Data(CKA_ID, hsm_->inner_id);
  VAULTP11_ASSIGN_OR_RETURN(auto found, hsm_->token->FindObjects(t, 2));
  if (found.empty())
    return Err(CKR_DEVICE_ERROR, "the key is missing from {}", hsm_->token->description());
  if (found.size() > 1)
    return Err(CKR_DEVICE_ERROR, "two objects share the key's CKA_ID in {}", hsm_->token->description());
  std::lock_guard<std::mutex> l(mu_);
  hsm_handle_ = found[0];
  hsm_epoch_ = epoch;
  return hsm_handle_;
}

Result<std::shared_ptr<const SecureBytes>> Material::Secret() {
  std::lock_guard<std::mutex> l(mu_);
  if (!secret_ && loader_) {
    VAULTP11_ASSIGN_OR_RETURN(SecureBytes s, loader_());
    secret_ = std::make_shared<const SecureBytes>(std::move(s));
  }
  if (!secret_) return Err(hsm_ ? CKR_KEY_UNEXTRACTABLE : CKR_GENERAL_ERROR, "object has no secret material here");
  return secret_;
}

Result<ossl::KeyRef> Material::Key(CK_OBJECT_CLASS cls, CK_KEY_TYPE type, const AttributeMap& attrs) {
  // Fast path: the key is built once; afterwards the hot path takes no lock.
  if (key_ready_.load(std::memory_order_acquire)) return key_;
  if (hsm_) return Err(CKR_GENERAL_ERROR, "an HSM key has no in-process material");
  ossl::KeyRef k;
  k.key_type = type;
  k.object_class = cls;
  if (cls == CKO_SECRET_KEY) {
    VAULTP11_ASSIGN_OR_RETURN(k.secret, Secret());
  } else if (cls == CKO_PRIVATE_KEY) {
    VAULTP11_ASSIGN_OR_RETURN(auto der, Secret());
    VAULTP11_ASSIGN_OR_RETURN(k.pkey, ossl::PrivateKeyFromDer(*der));
  } else if (cls == CKO_PUBLIC_KEY) {
    if (type == CKK_RSA) {
      const Bytes* n = attrs.Get(CKA_MODULUS);
      const Bytes* e = attrs.Get(CKA_PUBLIC_EXPONENT);
      if (!n || !e) return Err(CKR_GENERAL_ERROR, "RSA public key without modulus");
      VAULTP11_ASSIGN_OR_RETURN(k.pkey, ossl::RsaPublicFromComponents(*n, *e));
    } else if (type == CKK_EC) {
      const Bytes* p = attrs.Get(CKA_EC_PARAMS);
      const Bytes* q = attrs.Get(CKA_EC_POINT);
      if (!p || !q) return Err(CKR_GENERAL_ERROR, "EC public key without point");
      VAULTP11_ASSIGN_OR_RETURN(k.pkey, ossl::EcPublicFromPoint(*p, *q));
    } else {
      return Err(CKR_KEY_TYPE_INCONSISTENT, "unsupported public key type");
    }
  } else {
    return Err(CKR_KEY_HANDLE_INVALID, "object is not a key");
  }
  if (k.pkey) k.prepared = std::make_shared<ossl::PreparedContexts>();
  std::lock_guard<std::mutex> l(mu_);
  if (!key_ready_.load(std::memory_order_relaxed)) {
    key_ = std::move(k);
    key_ready_.store(true, std::memory_order_release);
  }
  return key_;
}

// ---- attribute policy -----------------------------------------------------------------------
// Declarative per-class rules (spec tables 10-29 and their footnotes):
//  kGiven: may appear in a C_CreateObject / generation template; kModify: C_SetAttributeValue;
//  kSecret: lives in the material, never in the plain map.
namespace {

enum Flag : unsigned { kGiven = 1, kModify = 2, kSecret = 4, kNeedsCreate = 8 };

struct Rule {
  CK_ATTRIBUTE_TYPE type;
  unsigned flags;
};

constexpr Rule kCommon[] = {
    {CKA_CLASS, kGiven}, {CKA_TOKEN, kGiven}, {CKA_PRIVATE, kGiven},
    {CKA_MODIFIABLE, kGiven}, {CKA_LABEL, kGiven | kModify}, {CKA_COPYABLE, kGiven | kModify},
    {CKA_DESTROYABLE, kGiven | kModify}, {CKA_VAULTP11_VERSION, 0},
};
constexpr Rule kKey[] = {
    {CKA_KEY_TYPE, kGiven}, {CKA_ID, kGiven | kModify}, {CKA_START_DATE, kGiven | kModify},
    {CKA_END_DATE, kGiven | kModify}, {CKA_DERIVE, kGiven | kModify}, {CKA_LOCAL, 0},
    {CKA_KEY_GEN_MECHANISM, 0}, {CKA_ALLOWED_MECHANISMS, kGiven},
    {CKA_VAULTP11_PROTECTION, kGiven}, {CKA_VAULTP11_HSM_KEY_ID, 0},
};
// Life cycle (lifecycle.h): keys and secrets. Keys' CK_DATEs above stay consistent with them.
constexpr Rule kLifecycle[] = {
    {CKA_VAULTP11_ENABLED, kGiven | kModify}, {CKA_VAULTP11_NOT_BEFORE, kGiven | kModify},
    {CKA_VAULTP11_EXPIRES, kGiven | kModify}, {CKA_VAULTP11_TAGS, kGiven | kModify},
};
constexpr Rule kPublic[] = {
    {CKA_SUBJECT, kGiven | kModify}, {CKA_ENCRYPT, kGiven | kModify}, {CKA_VERIFY, kGiven | kModify},
    {CKA_VERIFY_RECOVER, kGiven | kModify}, {CKA_WRAP, kGiven | kModify}, {CKA_TRUSTED, 0},
    {CKA_PUBLIC_KEY_INFO, 0},
    {CKA_MODULUS, kGiven | kNeedsCreate}, {CKA_MODULUS_BITS, kGiven}, {CKA_PUBLIC_EXPONENT, kGiven},
    {CKA_EC_PARAMS, kGiven}, {CKA_EC_POINT, kGiven | kNeedsCreate},
};
constexpr Rule kPrivate[] = {
    {CKA_SUBJECT, kGiven | kModify}, {CKA_SENSITIVE, kGiven | kModify}, {CKA_DECRYPT, kGiven | kModify},
    {CKA_SIGN, kGiven | kModify}, {CKA_SIGN_RECOVER, kGiven | kModify}, {CKA_UNWRAP, kGiven | kModify},
    {CKA_EXTRACTABLE, kGiven | kModify}, {CKA_ALWAYS_SENSITIVE, 0}, {CKA_NEVER_EXTRACTABLE, 0},
    {CKA_WRAP_WITH_TRUSTED, kGiven | kModify}, {CKA_ALWAYS_AUTHENTICATE, kGiven},
    {CKA_PUBLIC_KEY_INFO, 0},
    {CKA_MODULUS, kGiven | kNeedsCreate}, {CKA_PUBLIC_EXPONENT, kGiven | kNeedsCreate},
    {CKA_MODULUS_BITS, 0},
    {CKA_PRIVATE_EXPONENT, kGiven | kSecret | kNeedsCreate}, {CKA_PRIME_1, kGiven | kSecret | kNeedsCreate},
    {CKA_PRIME_2, kGiven | kSecret | kNeedsCreate}, {CKA_EXPONENT_1, kGiven | kSecret | kNeedsCreate},
    {CKA_EXPONENT_2, kGiven | kSecret | kNeedsCreate}, {CKA_COEFFICIENT, kGiven | kSecret | kNeedsCreate},
    {CKA_EC_PARAMS, kGiven}, {CKA_EC_POINT, 0}, {CKA_VALUE, kGiven | kSecret | kNeedsCreate},
};
constexpr Rule kSecretKey[] = {
    {CKA_SENSITIVE, kGiven | kModify}, {CKA_ENCRYPT, kGiven | kModify}, {CKA_DECRYPT, kGiven | kModify},
    {CKA_SIGN, kGiven | kModify}, {CKA_VERIFY, kGiven | kModify}, {CKA_WRAP, kGiven | kModify},
    {CKA_UNWRAP, kGiven | kModify}, {CKA_EXTRACTABLE, kGiven | kModify}, {CKA_ALWAYS_SENSITIVE, 0},
    {CKA_NEVER_EXTRACTABLE, 0}, {CKA_WRAP_WITH_TRUSTED, kGiven | kModify}, {CKA_TRUSTED, 0},
    {CKA_VALUE, kGiven | kSecret | kNeedsCreate}, {CKA_VALUE_LEN, kGiven}, {CKA_CHECK_VALUE, 0},
};
// X.509 certificates (spec 4.6): public; CKA_VALUE is the DER. CKA_SUBJECT, CKA_ISSUER and
// CKA_SERIAL_NUMBER are taken from the certificate when the template does not give them. Tags
// as on keys and secrets.
constexpr Rule kCertificate[] = {
    {CKA_CERTIFICATE_TYPE, kGiven}, {CKA_TRUSTED, kGiven}, {CKA_CERTIFICATE_CATEGORY, kGiven},
    {CKA_CHECK_VALUE, 0}, {CKA_START_DATE, kGiven}, {CKA_END_DATE, kGiven}, {CKA_PUBLIC_KEY_INFO, 0},
    {CKA_SUBJECT, kGiven}, {CKA_ID, kGiven | kModify}, {CKA_ISSUER, kGiven | kModify},
    {CKA_SERIAL_NUMBER, kGiven | kModify}, {CKA_VALUE, kGiven}, {CKA_URL, kGiven},
    {CKA_HASH_OF_SUBJECT_PUBLIC_KEY, kGiven}, {CKA_HASH_OF_ISSUER_PUBLIC_KEY, kGiven},
    {CKA_JAVA_MIDP_SECURITY_DOMAIN, kGiven}, {CKA_NAME_HASH_ALGORITHM, kGiven},
    {CKA_VAULTP11_TAGS, kGiven | kModify},
};
constexpr Rule kData[] = {
    {CKA_APPLICATION, kGiven | kModify}, {CKA_OBJECT_ID, kGiven | kModify},
    {CKA_VALUE, kGiven | kSecret},  // a new value is a new object (secret versions)
    {CKA_VAULTP11_CONTENT_TYPE, kGiven | kModify},
};

std::optional<unsigned> RuleFor(CK_OBJECT_CLASS cls, CK_ATTRIBUTE_TYPE t) {
  auto find = [t](std::span<const Rule> rules) -> std::optional<unsigned> {
    for (const Rule& r : rules)
      if (r.type == t) return r.flags;
    return std::nullopt;
  };
  if (auto f = find(kCommon)) return f;
  if (cls == CKO_PUBLIC_KEY || cls == CKO_PRIVATE_KEY || cls == CKO_SECRET_KEY || cls == CKO_DATA)
    if (auto f = find(kLifecycle)) return f;
  switch (cls) {
    case CKO_PUBLIC_KEY:
      if (auto f = find(kKey)) return f;
      return find(kPublic);
    case CKO_PRIVATE_KEY:
      if (auto f = find(kKey)) return f;
      return find(kPrivate);
    case CKO_SECRET_KEY:
      if (auto f = find(kKey)) return f;
      return find(kSecretKey);
    case CKO_DATA:
      return find(kData);
    case CKO_CERTIFICATE:
      return find(kCertificate);
    default:
      return std::nullopt;
  }
}

// A secret's value and content type within their limits (vaultp11.h).
Status CheckSecretValues(const AttributeMap& a) {
  if (const Bytes* ct = a.Get(CKA_VAULTP11_CONTENT_TYPE)) {
    if (ct->size() > VAULTP11_MAX_CONTENT_TYPE_CHARS)
      return Err(CKR_ATTRIBUTE_VALUE_INVALID, "CKA_VAULTP11_CONTENT_TYPE has {} characters (at most {})", ct->size(),
                 VAULTP11_MAX_CONTENT_TYPE_CHARS);
    for (uint8_t c : *ct)
      if (c < 0x20 || c > 0x7e)
        return Err(CKR_ATTRIBUTE_VALUE_INVALID, "CKA_VAULTP11_CONTENT_TYPE must be printable ASCII");
  }
  if (a.GetUlong(CKA_CLASS) == CKO_DATA)
    if (const Bytes* v = a.Get(CKA_VALUE); v && v->size() > VAULTP11_MAX_SECRET_BYTES)
      return Err(CKR_ATTRIBUTE_VALUE_INVALID, "a secret's value has {} bytes (at most {})", v->size(),
                 VAULTP11_MAX_SECRET_BYTES);
  return OkStatus();
}

// Every attribute of `tmpl` must be known for the class and allowed in a template.
// `generate` forbids the attributes the token computes itself (modulus, point, value).
Status CheckTemplate(CK_OBJECT_CLASS cls, const AttributeMap& tmpl, bool generate) {
  VAULTP11_RETURN_IF_ERROR(CheckSecretValues(tmpl));
  for (const auto& [t, v] : tmpl.values()) {
    auto f = RuleFor(cls, t);
    if (!f) return Err(CKR_ATTRIBUTE_TYPE_INVALID, "{} is not an attribute of this object class", AttrName(t));
    if (!(*f & kGiven)) return Err(CKR_ATTRIBUTE_READ_ONLY, "{} is set by the token", AttrName(t));
    if (generate && (*f & kNeedsCreate))
      return Err(CKR_TEMPLATE_INCONSISTENT, "{} cannot be given when generating a key", AttrName(t));
  }
  // The life-cycle values (window in both forms, tags) are checked before any key is made.
  AttributeMap scratch;
  return ApplyLifecycle(cls, tmpl, AttributeMap{}, scratch);
}

Status ExpectUlong(const AttributeMap& tmpl, CK_ATTRIBUTE_TYPE t, CK_ULONG want) {
  if (!tmpl.Has(t)) return OkStatus();
  auto v = tmpl.GetUlong(t);
  if (!v || *v != want)
    return Err(CKR_TEMPLATE_INCONSISTENT, "{} does not fit the mechanism or the other template", AttrName(t));
  return OkStatus();
}

// Defaults shared by every object, then the template's own values on top (the life-cycle ones
// resolved: both forms of the window, canonical tags).
Status Base(AttributeMap& a, CK_OBJECT_CLASS cls, const AttributeMap& tmpl) {
  a.SetUlong(CKA_CLASS, cls);
  a.SetBool(CKA_TOKEN, false);
  a.SetBool(CKA_PRIVATE, cls == CKO_PRIVATE_KEY || cls == CKO_SECRET_KEY);
  a.SetBool(CKA_MODIFIABLE, true);
  a.SetBool(CKA_COPYABLE, true);
  a.SetBool(CKA_DESTROYABLE, true);
  a.Set(CKA_LABEL, Bytes{});
  a.Set(CKA_VAULTP11_VERSION, Bytes{});  // set when stored (core/token.cc)
  if (cls == CKO_CERTIFICATE) {
    a.SetUlong(CKA_CERTIFICATE_TYPE, CKC_X_509);
    a.SetBool(CKA_TRUSTED, false);
    a.SetUlong(CKA_CERTIFICATE_CATEGORY, 0);  // unspecified
    for (auto t : {CKA_ID, CKA_START_DATE, CKA_END_DATE, CKA_SUBJECT, CKA_ISSUER, CKA_SERIAL_NUMBER, CKA_URL,
                   CKA_HASH_OF_SUBJECT_PUBLIC_KEY, CKA_HASH_OF_ISSUER_PUBLIC_KEY})
      a.Set(t, Bytes{});
    a.SetUlong(CKA_JAVA_MIDP_SECURITY_DOMAIN, 0);
  } else if (cls != CKO_DATA) {
    a.Set(CKA_ID, Bytes{});
    a.Set(CKA_START_DATE, Bytes{});
    a.Set(CKA_END_DATE, Bytes{});
    a.SetBool(CKA_DERIVE, false);
    a.Set(CKA_ALLOWED_MECHANISMS, Bytes{});
    a.SetBool(CKA_LOCAL, false);
    a.SetUlong(CKA_KEY_GEN_MECHANISM, CK_UNAVAILABLE_INFORMATION);
    a.SetUlong(CKA_VAULTP11_PROTECTION, VAULTP11_PROTECTION_SOFTWARE);
  }
  switch (cls) {
    case CKO_PUBLIC_KEY:
      a.Set(CKA_SUBJECT, Bytes{});
      for (auto t : {CKA_ENCRYPT, CKA_VERIFY, CKA_VERIFY_RECOVER, CKA_WRAP}) a.SetBool(t, true);
      a.SetBool(CKA_TRUSTED, false);
      break;
    case CKO_PRIVATE_KEY:
      a.Set(CKA_SUBJECT, Bytes{});
      for (auto t : {CKA_DECRYPT, CKA_SIGN, CKA_SIGN_RECOVER, CKA_UNWRAP}) a.SetBool(t, true);
      a.SetBool(CKA_SENSITIVE, true);
      a.SetBool(CKA_EXTRACTABLE, false);
      a.SetBool(CKA_WRAP_WITH_TRUSTED, false);
      a.SetBool(CKA_ALWAYS_AUTHENTICATE, false);
      break;
    case CKO_SECRET_KEY:
      for (auto t : {CKA_ENCRYPT, CKA_DECRYPT, CKA_WRAP, CKA_UNWRAP}) a.SetBool(t, true);
      a.SetBool(CKA_SIGN, false);
      a.SetBool(CKA_VERIFY, false);
      a.SetBool(CKA_SENSITIVE, true);
      a.SetBool(CKA_EXTRACTABLE, false);
      a.SetBool(CKA_WRAP_WITH_TRUSTED, false);
      a.SetBool(CKA_TRUSTED, false);
      break;
    case CKO_DATA:
      a.Set(CKA_APPLICATION, Bytes{});
      a.Set(CKA_OBJECT_ID, Bytes{});
      a.Set(CKA_VAULTP11_CONTENT_TYPE, Bytes{});
      break;
    default:
      break;
  }
  for (const auto& [t, v] : tmpl.values()) {
    auto f = RuleFor(cls, t);
    if (f && (*f & kSecret)) continue;
    a.Set(t, v);
  }
  return ApplyLifecycle(cls, tmpl, AttributeMap{}, a);
}

// CKA_ALWAYS_AUTHENTICATE needs a context-specific login this module does not offer.
Status CheckUnsupportedFlags(const AttributeMap& a) {
  if (a.GetBool(CKA_ALWAYS_AUTHENTICATE))
    return Err(CKR_ATTRIBUTE_VALUE_INVALID, "CKA_ALWAYS_AUTHENTICATE true is not supported");
  return OkStatus();
}

// Usage flags the template left unset default to what the key type can do: EC keys sign and
// verify only; no key offers sign/verify recovery. (Least privilege; RSA keys keep the
// encrypt/decrypt/wrap/unwrap defaults consumers expect.)
void TypeDefaults(AttributeMap& a, const AttributeMap& tmpl, CK_KEY_TYPE type) {
  auto dflt = [&](CK_ATTRIBUTE_TYPE t, bool v) {
    if (!tmpl.Has(t) && a.Has(t)) a.SetBool(t, v);
  };
  bool rsa = type == CKK_RSA;
  for (auto t : {CKA_DECRYPT, CKA_UNWRAP, CKA_ENCRYPT, CKA_WRAP}) dflt(t, rsa);
  dflt(CKA_SIGN_RECOVER, false);
  dflt(CKA_VERIFY_RECOVER, false);
}

void SetSensitivityHistory(AttributeMap& a, bool local) {
  a.SetBool(CKA_ALWAYS_SENSITIVE, local && a.GetBool(CKA_SENSITIVE));
  a.SetBool(CKA_NEVER_EXTRACTABLE, local && !a.GetBool(CKA_EXTRACTABLE));
}

// Public attributes of an asymmetric key, mirrored on both objects of the pair.
Status AddPublicAttributes(AttributeMap& a, EVP_PKEY* pkey, CK_KEY_TYPE type, bool is_public) {
  if (type == CKK_RSA) {
    VAULTP11_ASSIGN_OR_RETURN(Bytes n, ossl::RsaModulus(pkey));
    VAULTP11_ASSIGN_OR_RETURN(Bytes e, ossl::RsaPublicExponent(pkey));
    a.Set(CKA_MODULUS, std::move(n));
    a.Set(CKA_PUBLIC_EXPONENT, std::move(e));
    a.SetUlong(CKA_MODULUS_BITS, ossl::RsaModulusBits(pkey));
  } else {
    VAULTP11_ASSIGN_OR_RETURN(Bytes p, ossl::EcParams(pkey));
    VAULTP11_ASSIGN_OR_RETURN(Bytes q, ossl::EcPoint(pkey));
    a.Set(CKA_EC_PARAMS, std::move(p));
    a.Set(CKA_EC_POINT, std::move(q));
  }
  VAULTP11_ASSIGN_OR_RETURN(Bytes spki, ossl::PublicKeyInfo(pkey));
  a.Set(CKA_PUBLIC_KEY_INFO, std::move(spki));
  (void)is_public;
  return OkStatus();
}

Result<std::shared_ptr<Object>> PrivateKeyObject(AttributeMap a, ossl::PkeyRef pkey, CK_KEY_TYPE type) {
  VAULTP11_RETURN_IF_ERROR(AddPublicAttributes(a, pkey.get(), type, false));
  VAULTP11_ASSIGN_OR_RETURN(SecureBytes der, ossl::PrivateKeyToDer(pkey.get()));
  auto obj = std::make_shared<Object>();
  obj->attrs = std::move(a);
  obj->material = std::make_shared<Material>(std::move(der));
  return obj;
}

Result<std::shared_ptr<Object>> PublicKeyObject(AttributeMap a, EVP_PKEY* pkey, CK_KEY_TYPE type) {
  VAULTP11_RETURN_IF_ERROR(AddPublicAttributes(a, pkey, type, true));
  auto obj = std::make_shared<Object>();
  obj->attrs = std::move(a);
  obj->material = std::make_shared<Material>();
  return obj;
}

// Secret keys, imports and unwrapped keys are software keys in a vault (AES HSM keys belong to
// managed HSM pools; importing into an HSM comes with pools).
Status SoftwareOnly(const AttributeMap& tmpl) {
  if (!tmpl.Has(CKA_VAULTP11_PROTECTION)) return OkStatus();
  if (tmpl.GetUlong(CKA_VAULTP11_PROTECTION) != VAULTP11_PROTECTION_SOFTWARE)
    return Err(CKR_ATTRIBUTE_VALUE_INVALID, "only key pairs can be generated with HSM protection in a vault");
  return OkStatus();
}

Status CheckAesLength(size_t len) {
  if (len != 16 && len != 24 && len != 32)
    return Err(CKR_KEY_SIZE_RANGE, "AES keys are 16, 24 or 32 bytes, not {}", len);
  return OkStatus();
}

Result<std::shared_ptr<Object>> SecretKeyObject(AttributeMap a, SecureBytes value) {
  VAULTP11_RETURN_IF_ERROR(CheckAesLength(value.size()));
  if (a.Has(CKA_VALUE_LEN) && a.GetUlong(CKA_VALUE_LEN) != value.size())
    return Err(CKR_TEMPLATE_INCONSISTENT, "CKA_VALUE_LEN does not match the key");
  a.SetUlong(CKA_VALUE_LEN, value.size());
  auto obj = std::make_shared<Object>();
  obj->attrs = std::move(a);
  obj->material = std::make_shared<Material>(std::move(value));
  return obj;
}

const SecureBytes* TemplateSecret(const AttributeMap& tmpl, CK_ATTRIBUTE_TYPE t, SecureBytes& holder) {
  const Bytes* v = tmpl.Get(t);
  if (!v) return nullptr;
  holder.assign(v->begin(), v->end());
  return &holder;
}

}  // namespace

// ---- reading --------------------------------------------------------------------------------

Result<SecureBytes> ReadAttribute(const Object& obj, CK_ATTRIBUTE_TYPE type, bool may_read_secret_value) {
  CK_OBJECT_CLASS cls = obj.cls();
  auto rule = RuleFor(cls, type);
  if (rule && (*rule & kSecret)) {
    if (cls == CKO_DATA) {
      if (!may_read_secret_value) return Err(CKR_ATTRIBUTE_SENSITIVE, "secret value needs the get permission");
      VAULTP11_ASSIGN_OR_RETURN(auto s, obj.material->Secret());
      return SecureBytes(*s);
    }
    // Key material: readable only from a non-sensitive, extractable key (spec 4.9 footnote 8),
    // and only by a caller allowed to export it.
    if (obj.attrs.GetBool(CKA_SENSITIVE, true) || !obj.attrs.GetBool(CKA_EXTRACTABLE, false))
      return Err(CKR_ATTRIBUTE_SENSITIVE, "{} of a sensitive or unextractable key", AttrName(type));
    if (!may_read_secret_value) return Err(CKR_ATTRIBUTE_SENSITIVE, "{} needs the export permission", AttrName(type));
    VAULTP11_ASSIGN_OR_RETURN(ossl::KeyRef k, obj.Key());
    if (cls == CKO_SECRET_KEY) return SecureBytes(*k.secret);
    if (obj.key_type() == CKK_EC) return ossl::EcPrivateScalar(k.pkey.get());
    return ossl::RsaPrivateComponent(k.pkey.get(), type);
  }
  const Bytes* v = obj.attrs.Get(type);
  if (v == nullptr) {
    // Objects stored before the life-cycle attributes existed answer their defaults.
    if (auto d = LifecycleDefault(cls, obj.attrs, type)) return SecureBytes(d->begin(), d->end());
    // ... and before versions and content types.
    if (type == CKA_VAULTP11_VERSION || (type == CKA_VAULTP11_CONTENT_TYPE && cls == CKO_DATA)) return SecureBytes{};
    return Err(CKR_ATTRIBUTE_TYPE_INVALID, "{} is not an attribute of this object", AttrName(type));
  }
  return SecureBytes(v->begin(), v->end());
}

CK_ULONG ObjectSize(const Object& obj) {
  CK_ULONG n = 0;
  for (const auto& [t, v] : obj.attrs.values()) n += sizeof(CK_ATTRIBUTE) + v.size();
  return n;
}

bool Matches(const Object& obj, const AttributeMap& tmpl) {
  for (const auto& [t, v] : tmpl.values()) {
    const Bytes* have = obj.attrs.Get(t);
    if (have == nullptr) return false;
    if (*have == v) continue;
    // Tags are stored in canonical form: a template's own spacing and order still match.
    if (t != CKA_VAULTP11_TAGS) return false;
    auto canonical = CanonicalTags(v);
    if (!canonical.ok() || canonical.value() != *have) return false;
  }
  return true;
}

Result<SecureBytes> SecretForStore(const Object& obj) {
  if (obj.cls() == CKO_PUBLIC_KEY || obj.cls() == CKO_CERTIFICATE || (obj.material && obj.material->hsm()))
    return SecureBytes{};
  if (obj.cls() == CKO_DATA && !obj.material) return SecureBytes{};
  VAULTP11_ASSIGN_OR_RETURN(auto s, obj.material->Secret());
  return SecureBytes(*s);
}

// ---- factories ------------------------------------------------------------------------------

namespace {

// What a key-pair template pair asks for, checked once for both protections.
struct PairSpec {
  CK_KEY_TYPE type = CKK_RSA;
  CK_ULONG bits = 0;  // RSA
  Bytes exponent;     // RSA, empty = 65537
  Bytes ec_params;    // EC
};

Result<PairSpec> CheckPairTemplates(CK_MECHANISM_TYPE mech, const AttributeMap& pub_t, const AttributeMap& priv_t) {
  PairSpec spec;
  if (mech == CKM_RSA_PKCS_KEY_PAIR_GEN) spec.type = CKK_RSA;
  else if (mech == CKM_EC_KEY_PAIR_GEN) spec.type = CKK_EC;
  else return Err(CKR_MECHANISM_INVALID, "mechanism 0x{:x} does not generate key pairs", mech);
  VAULTP11_RETURN_IF_ERROR(ExpectUlong(pub_t, CKA_CLASS, CKO_PUBLIC_KEY));
  VAULTP11_RETURN_IF_ERROR(ExpectUlong(priv_t, CKA_CLASS, CKO_PRIVATE_KEY));
  VAULTP11_RETURN_IF_ERROR(ExpectUlong(pub_t, CKA_KEY_TYPE, spec.type));
  VAULTP11_RETURN_IF_ERROR(ExpectUlong(priv_t, CKA_KEY_TYPE, spec.type));
  VAULTP11_RETURN_IF_ERROR(CheckTemplate(CKO_PUBLIC_KEY, pub_t, true));
  VAULTP11_RETURN_IF_ERROR(CheckTemplate(CKO_PRIVATE_KEY, priv_t, true));
  if (spec.type == CKK_RSA) {
    if (pub_t.Has(CKA_EC_PARAMS) || priv_t.Has(CKA_EC_PARAMS))
      return Err(CKR_TEMPLATE_INCONSISTENT, "CKA_EC_PARAMS in an RSA template");
    auto bits = pub_t.GetUlong(CKA_MODULUS_BITS);
    if (!bits) return Err(CKR_TEMPLATE_INCOMPLETE, "CKA_MODULUS_BITS missing from the public key template");
    spec.bits = *bits;
    if (const Bytes* e = pub_t.Get(CKA_PUBLIC_EXPONENT)) {
      if (priv_t.Has(CKA_PUBLIC_EXPONENT) && *priv_t.Get(CKA_PUBLIC_EXPONENT) != *e)
        return Err(CKR_TEMPLATE_INCONSISTENT, "public exponents differ");
      spec.exponent = *e;
    }
  } else {
    if (pub_t.Has(CKA_MODULUS_BITS) || pub_t.Has(CKA_PUBLIC_EXPONENT))
      return Err(CKR_TEMPLATE_INCONSISTENT, "RSA attributes in an EC template");
    const Bytes* params = pub_t.Get(CKA_EC_PARAMS);
    if (!params) params = priv_t.Get(CKA_EC_PARAMS);
    if (!params) return Err(CKR_TEMPLATE_INCOMPLETE, "CKA_EC_PARAMS missing from the public key template");
    if (pub_t.Has(CKA_EC_PARAMS) && priv_t.Has(CKA_EC_PARAMS) && *pub_t.Get(CKA_EC_PARAMS) != *priv_t.Get(CKA_EC_PARAMS))
      return Err(CKR_TEMPLATE_INCONSISTENT, "EC parameters differ");
    spec.ec_params = *params;
  }
  return spec;
}

// The attributes of both halves of a generated pair (before the key-specific ones). The
// life-cycle attributes are per object: each half takes its own template's.
Status PairAttributes(CK_MECHANISM_TYPE mech, const PairSpec& spec, const AttributeMap& pub_t, const AttributeMap& priv_t,
                    AttributeMap& pub, AttributeMap& priv) {
  VAULTP11_RETURN_IF_ERROR(Base(pub, CKO_PUBLIC_KEY, pub_t));
  VAULTP11_RETURN_IF_ERROR(Base(priv, CKO_PRIVATE_KEY, priv_t));
  // Both halves share CKA_ID, CKA_LABEL and the protection: a value given for one is used
  // for the other.
  for (auto t : {CKA_ID, CKA_LABEL, CKA_VAULTP11_PROTECTION}) {
    if (pub_t.Has(t) && !priv_t.Has(t)) priv.Set(t, *pub_t.Get(t));
    if (priv_t.Has(t) && !pub_t.Has(t)) pub.Set(t, *priv_t.Get(t));
  }
  TypeDefaults(pub, pub_t, spec.type);
  TypeDefaults(priv, priv_t, spec.type);
  for (AttributeMap* a : {&pub, &priv}) {
    a->SetUlong(CKA_KEY_TYPE, spec.type);
    a->SetBool(CKA_LOCAL, true);
    a->SetUlong(CKA_KEY_GEN_MECHANISM, mech);
  }
  SetSensitivityHistory(priv, true);
  return OkStatus();
}

}  // namespace

Result<std::optional<CK_ULONG>> RequestedProtection(const AttributeMap& a, const AttributeMap& b) {
  std::optional<CK_ULONG> out;
  for (const AttributeMap* m : {&a, &b}) {
    if (!m->Has(CKA_VAULTP11_PROTECTION)) continue;
    auto v = m->GetUlong(CKA_VAULTP11_PROTECTION);
    if (!v || (*v != VAULTP11_PROTECTION_SOFTWARE && *v != VAULTP11_PROTECTION_HSM))
      return Err(CKR_ATTRIBUTE_VALUE_INVALID, "CKA_VAULTP11_PROTECTION must be SOFTWARE (1) or HSM (2)");
    if (out && *out != *v) return Err(CKR_TEMPLATE_INCONSISTENT, "the two templates ask for different protections");
    out = *v;
  }
  return out;
}

Result<KeyPair> GenerateKeyPair(CK_MECHANISM_TYPE mech, const AttributeMap& pub_t, const AttributeMap& priv_t) {
  VAULTP11_ASSIGN_OR_RETURN(PairSpec spec, CheckPairTemplates(mech, pub_t, priv_t));
  ossl::PkeyRef pkey;
  if (spec.type == CKK_RSA) {
    VAULTP11_ASSIGN_OR_RETURN(pkey, ossl::GenerateRsa(spec.bits, spec.exponent));
  } else {
    VAULTP11_ASSIGN_OR_RETURN(pkey, ossl::GenerateEc(spec.ec_params));
  }
  AttributeMap pub, priv;
  VAULTP11_RETURN_IF_ERROR(PairAttributes(mech, spec, pub_t, priv_t, pub, priv));
  pub.SetUlong(CKA_VAULTP11_PROTECTION, VAULTP11_PROTECTION_SOFTWARE);
  priv.SetUlong(CKA_VAULTP11_PROTECTION, VAULTP11_PROTECTION_SOFTWARE);
  VAULTP11_RETURN_IF_ERROR(CheckUnsupportedFlags(priv));
  KeyPair kp;
  VAULTP11_ASSIGN_OR_RETURN(kp.public_key, PublicKeyObject(std::move(pub), pkey.get(), spec.type));
  VAULTP11_ASSIGN_OR_RETURN(kp.private_key, PrivateKeyObject(std::move(priv), pkey, spec.type));
  return kp;
}

namespace {

// Runs a generation `fn(token)` on a pool member that holds the security domain; a member that
// fails is taken out of service and the next one tried. Returns (member, its token, fn's value).
template <typename Fn>
auto OnPoolMember(const pool::HsmPool& pool, Fn fn)
    -> Result<std::tuple<size_t, std::shared_ptr<p11::InnerToken>,
                         std::remove_cvref_t<decltype(fn(std::declval<const p11::InnerToken&>()).value())>>> {
  std::vector<bool> exclude(pool.size());
  for (;;) {
    VAULTP11_ASSIGN_OR_RETURN(size_t i, pool.GenerationMember(exclude));
    exclude[i] = true;
    uint64_t generation = pool.Generation(i);
    auto token = pool.Token(i);
    if (!token) continue;
    auto r = fn(*token);
    if (r.ok()) return std::make_tuple(i, std::move(token), std::move(r).value());
    if (!pool.ReportFailure(i, generation, r.error())) return r.error();
  }
}

}  // namespace

Result<KeyPair> ImportKeyPair(const AttributeMap& pub_t, const AttributeMap& priv_t, const SecureBytes& pkcs8) {
  auto pk = ossl::PrivateKeyFromDer(pkcs8);
  if (!pk.ok()) return Err(CKR_ATTRIBUTE_VALUE_INVALID, "the private key is not an RSA or EC key in PKCS#8");
  ossl::PkeyRef pkey = pk.value();
  PairSpec spec;
  if (EVP_PKEY_is_a(pkey.get(), "RSA")) spec.type = CKK_RSA;
  else if (EVP_PKEY_is_a(pkey.get(), "EC")) spec.type = CKK_EC;
  else return Err(CKR_ATTRIBUTE_VALUE_INVALID, "only RSA and EC keys can be imported");
  VAULTP11_RETURN_IF_ERROR(CheckTemplate(CKO_PUBLIC_KEY, pub_t, true));
  VAULTP11_RETURN_IF_ERROR(CheckTemplate(CKO_PRIVATE_KEY, priv_t, true));
  AttributeMap pub, priv;
  VAULTP11_RETURN_IF_ERROR(PairAttributes(CK_UNAVAILABLE_INFORMATION, spec, pub_t, priv_t, pub, priv));
  for (AttributeMap* a : {&pub, &priv}) {
    a->SetBool(CKA_LOCAL, false);  // made elsewhere
    a->SetUlong(CKA_VAULTP11_PROTECTION, VAULTP11_PROTECTION_SOFTWARE);
  }
  SetSensitivityHistory(priv, false);
  VAULTP11_RETURN_IF_ERROR(CheckUnsupportedFlags(priv));
  KeyPair kp;
  VAULTP11_ASSIGN_OR_RETURN(kp.public_key, PublicKeyObject(std::move(pub), pkey.get(), spec.type));
  VAULTP11_ASSIGN_OR_RETURN(kp.private_key, PrivateKeyObject(std::move(priv), pkey, spec.type));
  return kp;
}

Result<KeyPair> GenerateHsmKeyPair(CK_MECHANISM_TYPE mech, const AttributeMap& pub_t, const AttributeMap& priv_t,
                                   const HsmKey& hsm) {
  VAULTP11_ASSIGN_OR_RETURN(PairSpec spec, CheckPairTemplates(mech, pub_t, priv_t));
  if (!hsm.token && !hsm.pool) return Err(CKR_DEVICE_ERROR, "the vault's HSM is unavailable: {}", hsm.unavailable);
  AttributeMap pub, priv;
  VAULTP11_RETURN_IF_ERROR(PairAttributes(mech, spec, pub_t, priv_t, pub, priv));
  // HSM keys never leave the HSM in the clear.
  if (priv.GetBool(CKA_EXTRACTABLE) || !priv.GetBool(CKA_SENSITIVE, true))
    return Err(CKR_TEMPLATE_INCONSISTENT, "HSM-protected private keys are sensitive and not extractable");
  VAULTP11_RETURN_IF_ERROR(CheckUnsupportedFlags(priv));
  if (spec.type == CKK_RSA) {
    if (spec.bits != 2048 && spec.bits != 3072 && spec.bits != 4096)
      return Err(CKR_KEY_SIZE_RANGE, "RSA keys are 2048, 3072 or 4096 bits, not {}", spec.bits);
    static const Bytes kF4 = {1, 0, 1};
    Bytes e = spec.exponent;
    while (e.size() > 1 && e[0] == 0) e.erase(e.begin());
    if (!e.empty() && e != kF4) return Err(CKR_ATTRIBUTE_VALUE_INVALID, "the public exponent must be 65537");
  } else {
    // Checks the curve is one of the vault's (P-256, P-384, P-521, secp256k1).
    VAULTP11_RETURN_IF_ERROR(ossl::GenerateEc(spec.ec_params).status());
  }
  HsmKey ref = hsm;
  ref.object_class = CKO_PRIVATE_KEY;
  ref.inner_id.resize(16);
  VAULTP11_RETURN_IF_ERROR(ossl::RandomBytes(ref.inner_id));
  // A pool key is generated on one member (which holds the security domain) and must be
  // copyable only under that domain.
  std::shared_ptr<p11::InnerToken> gen_token = hsm.token;
  size_t gen_member = 0;
  const bool in_pool = hsm.pool != nullptr;
  // Inner objects are named by the random CKA_ID; usage follows the outer key (C_UnwrapKey with
  // an RSA HSM key decrypts in the HSM, so it needs CKA_DECRYPT there). A vault's session key
  // is an inner session object (on the inner login session: gone at C_Finalize at the latest);
  // pool keys are token objects, as replication makes them on every member.
  const bool inner_token = in_pool || priv.GetBool(CKA_TOKEN);
  // A vault's token key can be backed up when its HSM holds a security domain: it is then
  // wrappable under trusted keys only (the domain), like a pool key, never in the clear.
  bool under_domain = in_pool;
  if (!in_pool && inner_token) {
    auto dk = pool::FindDomainKey(*gen_token);
    under_domain = dk.ok() && dk.value() != CK_INVALID_HANDLE;
  }
  p11::AttrTemplate it_pub, it_priv;
  it_pub.Bool(CKA_TOKEN, inner_token).Bool(CKA_PRIVATE, false).Bool(CKA_VERIFY, true).Data(CKA_ID, ref.inner_id);
  it_priv.Bool(CKA_TOKEN, inner_token).Bool(CKA_PRIVATE, true).Bool(CKA_SENSITIVE, true)
      .Bool(CKA_EXTRACTABLE, under_domain).Bool(CKA_SIGN, priv.GetBool(CKA_SIGN)).Data(CKA_ID, ref.inner_id);
  if (under_domain) it_priv.Bool(CKA_WRAP_WITH_TRUSTED, true);
  if (spec.type == CKK_RSA) {
    it_pub.Ulong(CKA_MODULUS_BITS, spec.bits).Data(CKA_PUBLIC_EXPONENT, Bytes{1, 0, 1}).Bool(CKA_ENCRYPT, true);
    it_priv.Bool(CKA_DECRYPT, priv.GetBool(CKA_DECRYPT) || priv.GetBool(CKA_UNWRAP));
  } else {
    it_pub.Data(CKA_EC_PARAMS, spec.ec_params);
  }
  CK_MECHANISM m{mech, nullptr, 0};
  p11::KeyPairHandles handles;
  if (in_pool) {
    VAULTP11_ASSIGN_OR_RETURN(auto g, OnPoolMember(*hsm.pool, [&](const p11::InnerToken& t) {
                                return t.GenerateKeyPair(m, it_pub, it_priv);
                              }));
    std::tie(gen_member, gen_token, handles) = std::move(g);
  } else {
    VAULTP11_ASSIGN_OR_RETURN(handles, gen_token->GenerateKeyPair(m, it_pub, it_priv));
  }
  // Mirror the public key: read it back from the HSM and build it in-process.
  std::vector<CK_ATTRIBUTE_TYPE> want = spec.type == CKK_RSA
                                            ? std::vector<CK_ATTRIBUTE_TYPE>{CKA_MODULUS, CKA_PUBLIC_EXPONENT}
                                            : std::vector<CK_ATTRIBUTE_TYPE>{CKA_EC_PARAMS, CKA_EC_POINT};
  auto values = gen_token->GetAttributes(handles.public_key, want);
  bool replicated = false;
  auto cleanup = [&] {
    if (replicated) {
      hsm.pool->DestroyEverywhere(ref.inner_id);
      return;
    }
    (void)gen_token->DestroyObject(handles.private_key);
    (void)gen_token->DestroyObject(handles.public_key);
  };
  if (!values.ok()) {
    cleanup();
    return values.error();
  }
  for (auto t : want)
    if (!(*values)[t].ok()) {
      cleanup();
      return Err(CKR_DEVICE_ERROR, "the HSM did not return {} of the new public key", AttrName(t));
    }
  auto& v0 = (*values)[want[0]].value;
  auto& v1 = (*values)[want[1]].value;
  auto pkey = spec.type == CKK_RSA ? ossl::RsaPublicFromComponents(v0, v1) : ossl::EcPublicFromPoint(v0, v1);
  if (!pkey.ok()) {
    cleanup();
    return pkey.error();
  }
  if (in_pool) {
    // The copies: the private key unwrapped under the domain on every other member, with the
    // public key made from its public values there.
    auto copies = hsm.pool->Replicate(gen_member, CKO_PRIVATE_KEY, ref.inner_id);
    if (!copies.ok()) {
      cleanup();
      return copies.error();
    }
    replicated = true;
  }
  for (AttributeMap* a : {&pub, &priv}) {
    a->SetUlong(CKA_VAULTP11_PROTECTION, VAULTP11_PROTECTION_HSM);
    a->Set(CKA_VAULTP11_HSM_KEY_ID, ref.inner_id);
  }
  KeyPair kp;
  auto pub_obj = PublicKeyObject(std::move(pub), pkey->get(), spec.type);
  Status st = pub_obj.status();
  if (st.ok()) st = AddPublicAttributes(priv, pkey->get(), spec.type, false);
  if (!st.ok()) {
    cleanup();
    return st.error();
  }
  kp.public_key = std::move(pub_obj).value();
  kp.private_key = std::make_shared<Object>();
  kp.private_key->attrs = std::move(priv);
  kp.private_key->material = std::make_shared<Material>(std::move(ref));
  return kp;
}

Result<KeyPair> ImportHsmKeyPair(const AttributeMap& pub_t, const AttributeMap& priv_t, const SecureBytes& pkcs8,
                                 const HsmKey& hsm) {
  if (hsm.pool) return Err(CKR_FUNCTION_NOT_SUPPORTED, "keys are imported into a vault's HSM, not a pool's");
  if (!hsm.token) return Err(CKR_DEVICE_ERROR, "the vault's HSM is unavailable: {}", hsm.unavailable);
  // The outer objects as for a software import (checks, public attributes), then the key
  // itself into the HSM.
  VAULTP11_ASSIGN_OR_RETURN(KeyPair kp, ImportKeyPair(pub_t, priv_t, pkcs8));
  AttributeMap& priv = kp.private_key->attrs;
  if (priv.GetBool(CKA_EXTRACTABLE) || !priv.GetBool(CKA_SENSITIVE, true))
    return Err(CKR_TEMPLATE_INCONSISTENT, "HSM-protected private keys are sensitive and not extractable");
  const CK_KEY_TYPE type = kp.private_key->key_type();
  HsmKey ref = hsm;
  ref.object_class = CKO_PRIVATE_KEY;
  ref.inner_id.resize(16);
  VAULTP11_RETURN_IF_ERROR(ossl::RandomBytes(ref.inner_id));
  const auto& t = hsm.token;
  auto dk = pool::FindDomainKey(*t);
  const bool under_domain = dk.ok() && dk.value() != CK_INVALID_HANDLE;
  // The key travels to the HSM wrapped (CKM_AES_KEY_WRAP_PAD) under a one-time AES key that
  // is made here, handed to the HSM as a session object, and destroyed on both sides after.
  auto one_time = std::make_shared<SecureBytes>(32);
  VAULTP11_RETURN_IF_ERROR(ossl::RandomBytes(*one_time));
  CK_MECHANISM kwp{CKM_AES_KEY_WRAP_PAD, nullptr, 0};
  VAULTP11_ASSIGN_OR_RETURN(Bytes wrapped, ossl::Wrap(ossl::KeyRef{CKK_AES, CKO_SECRET_KEY, {}, one_time}, kwp, pkcs8));
  p11::AttrTemplate kt;
  kt.Ulong(CKA_CLASS, CKO_SECRET_KEY).Ulong(CKA_KEY_TYPE, CKK_AES).Bool(CKA_TOKEN, false).Bool(CKA_PRIVATE, true)
      .Bool(CKA_SENSITIVE, true).Bool(CKA_EXTRACTABLE, false).Bool(CKA_UNWRAP, true).Data(CKA_VALUE, *one_time);
  auto kh = t->CreateObject(kt);
  one_time.reset();
  if (!kh.ok()) return Err(kh.rv(), "the HSM did not take the transport key: {}", kh.error().message);
  p11::AttrTemplate it_priv;
  it_priv.Ulong(CKA_CLASS, CKO_PRIVATE_KEY).Ulong(CKA_KEY_TYPE, type).Bool(CKA_TOKEN, true).Bool(CKA_PRIVATE, true)
      .Bool(CKA_SENSITIVE, true).Bool(CKA_EXTRACTABLE, under_domain).Bool(CKA_SIGN, priv.GetBool(CKA_SIGN))
      .Data(CKA_ID, ref.inner_id);
  if (under_domain) it_priv.Bool(CKA_WRAP_WITH_TRUSTED, true);
  if (type == CKK_RSA) it_priv.Bool(CKA_DECRYPT, priv.GetBool(CKA_DECRYPT) || priv.GetBool(CKA_UNWRAP));
  auto h = t->UnwrapKey(kwp, *kh, wrapped, it_priv);
  (void)t->DestroyObject(*kh);
  if (!h.ok()) return Err(h.rv(), "the HSM did not take the key: {}", h.error().message);
  // Its public half beside it, as generation leaves it (backups read the public values there).
  const AttributeMap& pub = kp.public_key->attrs;
  p11::AttrTemplate it_pub;
  it_pub.Ulong(CKA_CLASS, CKO_PUBLIC_KEY).Ulong(CKA_KEY_TYPE, type).Bool(CKA_TOKEN, true).Bool(CKA_PRIVATE, false)
      .Bool(CKA_VERIFY, true).Data(CKA_ID, ref.inner_id);
  for (CK_ATTRIBUTE_TYPE a : type == CKK_RSA ? std::vector<CK_ATTRIBUTE_TYPE>{CKA_MODULUS, CKA_PUBLIC_EXPONENT}
                                             : std::vector<CK_ATTRIBUTE_TYPE>{CKA_EC_PARAMS, CKA_EC_POINT})
    if (const Bytes* v = pub.Get(a)) it_pub.Data(a, *v);
  if (type == CKK_RSA) it_pub.Bool(CKA_ENCRYPT, true);
  auto ph = t->CreateObject(it_pub);
  if (!ph.ok()) {
    (void)t->DestroyObject(*h);
    return Err(ph.rv(), "the HSM did not take the public key: {}", ph.error().message);
  }
  for (AttributeMap* a : {&kp.public_key->attrs, &priv}) {
    a->SetUlong(CKA_VAULTP11_PROTECTION, VAULTP11_PROTECTION_HSM);
    a->Set(CKA_VAULTP11_HSM_KEY_ID, ref.inner_id);
  }
  kp.private_key->material = std::make_shared<Material>(std::move(ref));
  return kp;
}

Result<std::shared_ptr<Object>> GenerateSecretKey(CK_MECHANISM_TYPE mech, const AttributeMap& tmpl) {
  if (mech != CKM_AES_KEY_GEN) return Err(CKR_MECHANISM_INVALID, "mechanism 0x{:x} does not generate secret keys", mech);
  VAULTP11_RETURN_IF_ERROR(ExpectUlong(tmpl, CKA_CLASS, CKO_SECRET_KEY));
  VAULTP11_RETURN_IF_ERROR(ExpectUlong(tmpl, CKA_KEY_TYPE, CKK_AES));
  VAULTP11_RETURN_IF_ERROR(CheckTemplate(CKO_SECRET_KEY, tmpl, true));
  VAULTP11_RETURN_IF_ERROR(SoftwareOnly(tmpl));
  auto len = tmpl.GetUlong(CKA_VALUE_LEN);
  if (!len) return Err(CKR_TEMPLATE_INCOMPLETE, "CKA_VALUE_LEN missing");
  VAULTP11_RETURN_IF_ERROR(CheckAesLength(*len));
  SecureBytes value(*len);
  VAULTP11_RETURN_IF_ERROR(ossl::RandomBytes(value));
  AttributeMap a;
  VAULTP11_RETURN_IF_ERROR(Base(a, CKO_SECRET_KEY, tmpl));
  a.SetUlong(CKA_KEY_TYPE, CKK_AES);
  a.SetBool(CKA_LOCAL, true);
  a.SetUlong(CKA_KEY_GEN_MECHANISM, mech);
  SetSensitivityHistory(a, true);
  return SecretKeyObject(std::move(a), std::move(value));
}

Result<std::shared_ptr<Object>> GenerateHsmSecretKey(CK_MECHANISM_TYPE mech, const AttributeMap& tmpl,
                                                     const HsmKey& hsm) {
  if (mech != CKM_AES_KEY_GEN) return Err(CKR_MECHANISM_INVALID, "mechanism 0x{:x} does not generate secret keys", mech);
  if (!hsm.pool) return Err(CKR_ATTRIBUTE_VALUE_INVALID, "AES HSM keys live in managed HSM pools only");
  VAULTP11_RETURN_IF_ERROR(ExpectUlong(tmpl, CKA_CLASS, CKO_SECRET_KEY));
  VAULTP11_RETURN_IF_ERROR(ExpectUlong(tmpl, CKA_KEY_TYPE, CKK_AES));
  VAULTP11_RETURN_IF_ERROR(CheckTemplate(CKO_SECRET_KEY, tmpl, true));
  auto len = tmpl.GetUlong(CKA_VALUE_LEN);
  if (!len) return Err(CKR_TEMPLATE_INCOMPLETE, "CKA_VALUE_LEN missing");
  VAULTP11_RETURN_IF_ERROR(CheckAesLength(*len));
  AttributeMap a;
  VAULTP11_RETURN_IF_ERROR(Base(a, CKO_SECRET_KEY, tmpl));
  a.SetUlong(CKA_KEY_TYPE, CKK_AES);
  a.SetUlong(CKA_VALUE_LEN, *len);
  a.SetBool(CKA_LOCAL, true);
  a.SetUlong(CKA_KEY_GEN_MECHANISM, mech);
  if (a.GetBool(CKA_EXTRACTABLE) || !a.GetBool(CKA_SENSITIVE, true))
    return Err(CKR_TEMPLATE_INCONSISTENT, "HSM-protected keys are sensitive and not extractable");
  if (a.GetBool(CKA_SIGN) || a.GetBool(CKA_VERIFY) || a.GetBool(CKA_DERIVE))
    return Err(CKR_TEMPLATE_INCONSISTENT, "pool AES keys encrypt, decrypt, wrap and unwrap only");
  a.SetBool(CKA_SENSITIVE, true);
  a.SetBool(CKA_EXTRACTABLE, false);
  SetSensitivityHistory(a, true);
  HsmKey ref = hsm;
  ref.object_class = CKO_SECRET_KEY;
  ref.inner_id.resize(16);
  VAULTP11_RETURN_IF_ERROR(ossl::RandomBytes(ref.inner_id));
  p11::AttrTemplate gt;
  gt.Ulong(CKA_CLASS, CKO_SECRET_KEY).Ulong(CKA_KEY_TYPE, CKK_AES).Bool(CKA_TOKEN, true).Bool(CKA_PRIVATE, true)
      .Bool(CKA_SENSITIVE, true).Bool(CKA_EXTRACTABLE, true).Bool(CKA_WRAP_WITH_TRUSTED, true)
      .Bool(CKA_ENCRYPT, a.GetBool(CKA_ENCRYPT)).Bool(CKA_DECRYPT, a.GetBool(CKA_DECRYPT))
      .Bool(CKA_WRAP, a.GetBool(CKA_WRAP)).Bool(CKA_UNWRAP, a.GetBool(CKA_UNWRAP)).Data(CKA_ID, ref.inner_id)
      .Ulong(CKA_VALUE_LEN, *len);
  CK_MECHANISM m{mech, nullptr, 0};
  VAULTP11_ASSIGN_OR_RETURN(auto g, OnPoolMember(*hsm.pool, [&](const p11::InnerToken& t) { return t.GenerateKey(m, gt); }));
  auto& [member, token, h] = g;
  auto copies = hsm.pool->Replicate(member, CKO_SECRET_KEY, ref.inner_id);
  if (!copies.ok()) {
    (void)token->DestroyObject(h);
    return copies.error();
  }
  a.SetUlong(CKA_VAULTP11_PROTECTION, VAULTP11_PROTECTION_HSM);
  a.Set(CKA_VAULTP11_HSM_KEY_ID, ref.inner_id);
  auto obj = std::make_shared<Object>();
  obj->attrs = std::move(a);
  obj->material = std::make_shared<Material>(std::move(ref));
  return obj;
}

static Result<std::shared_ptr<Object>> CertificateObject(const AttributeMap& tmpl) {
  auto type = tmpl.GetUlong(CKA_CERTIFICATE_TYPE);
  if (!type) return Err(CKR_TEMPLATE_INCOMPLETE, "CKA_CERTIFICATE_TYPE missing");
  if (*type != CKC_X_509) return Err(CKR_ATTRIBUTE_VALUE_INVALID, "only X.509 certificates (CKC_X_509) are supported");
  if (tmpl.GetBool(CKA_TRUSTED)) return Err(CKR_ATTRIBUTE_READ_ONLY, "only the security officer may set CKA_TRUSTED");
  const Bytes* der = tmpl.Get(CKA_VALUE);
  if (der == nullptr || der->empty()) return Err(CKR_TEMPLATE_INCOMPLETE, "CKA_VALUE (the certificate's DER) missing");
  VAULTP11_ASSIGN_OR_RETURN(ossl::CertFields fields, ossl::ParseCertificate(*der));
  AttributeMap a;
  VAULTP11_RETURN_IF_ERROR(Base(a, CKO_CERTIFICATE, tmpl));
  if (a.Get(CKA_SUBJECT)->empty()) a.Set(CKA_SUBJECT, fields.subject);
  if (a.Get(CKA_ISSUER)->empty()) a.Set(CKA_ISSUER, fields.issuer);
  if (a.Get(CKA_SERIAL_NUMBER)->empty()) a.Set(CKA_SERIAL_NUMBER, fields.serial);
  a.Set(CKA_CHECK_VALUE, fields.check_value);
  a.Set(CKA_PUBLIC_KEY_INFO, fields.public_key_info);
  auto obj = std::make_shared<Object>();
  obj->attrs = std::move(a);
  obj->material = std::make_shared<Material>();
  return obj;
}

Result<std::shared_ptr<Object>> CreateObject(const AttributeMap& tmpl) {
  auto cls = tmpl.GetUlong(CKA_CLASS);
  if (!cls) return Err(CKR_TEMPLATE_INCOMPLETE, "CKA_CLASS missing");
  if (*cls != CKO_DATA && *cls != CKO_PUBLIC_KEY && *cls != CKO_PRIVATE_KEY && *cls != CKO_SECRET_KEY &&
      *cls != CKO_CERTIFICATE)
    return Err(CKR_ATTRIBUTE_VALUE_INVALID, "objects of class 0x{:x} cannot be created here", *cls);
  VAULTP11_RETURN_IF_ERROR(CheckTemplate(*cls, tmpl, false));
  if (*cls == CKO_CERTIFICATE) return CertificateObject(tmpl);
  VAULTP11_RETURN_IF_ERROR(SoftwareOnly(tmpl));
  AttributeMap a;
  VAULTP11_RETURN_IF_ERROR(Base(a, *cls, tmpl));
  if (*cls == CKO_DATA) {
    const Bytes* v = tmpl.Get(CKA_VALUE);
    auto obj = std::make_shared<Object>();
    obj->attrs = std::move(a);
    obj->material = std::make_shared<Material>(v ? SecureBytes(v->begin(), v->end()) : SecureBytes{});
    return obj;
  }
  auto type = tmpl.GetUlong(CKA_KEY_TYPE);
  if (!type) return Err(CKR_TEMPLATE_INCOMPLETE, "CKA_KEY_TYPE missing");
  SetSensitivityHistory(a, false);
  if (*cls == CKO_SECRET_KEY) {
    if (*type != CKK_AES) return Err(CKR_ATTRIBUTE_VALUE_INVALID, "only AES secret keys are supported");
    const Bytes* v = tmpl.Get(CKA_VALUE);
    if (!v) return Err(CKR_TEMPLATE_INCOMPLETE, "CKA_VALUE missing");
    return SecretKeyObject(std::move(a), SecureBytes(v->begin(), v->end()));
  }
  if (*type != CKK_RSA && *type != CKK_EC)
    return Err(CKR_ATTRIBUTE_VALUE_INVALID, "key type 0x{:x} is not supported", *type);
  TypeDefaults(a, tmpl, *type);
  if (*cls == CKO_PUBLIC_KEY) {
    ossl::PkeyRef pkey;
    if (*type == CKK_RSA) {
      const Bytes* n = tmpl.Get(CKA_MODULUS);
      const Bytes* e = tmpl.Get(CKA_PUBLIC_EXPONENT);
      if (!n || !e) return Err(CKR_TEMPLATE_INCOMPLETE, "CKA_MODULUS and CKA_PUBLIC_EXPONENT are required");
      if (tmpl.Has(CKA_EC_PARAMS) || tmpl.Has(CKA_EC_POINT)) return Err(CKR_TEMPLATE_INCONSISTENT, "EC attributes on an RSA key");
      VAULTP11_ASSIGN_OR_RETURN(pkey, ossl::RsaPublicFromComponents(*n, *e));
      if (tmpl.Has(CKA_MODULUS_BITS) && tmpl.GetUlong(CKA_MODULUS_BITS) != ossl::RsaModulusBits(pkey.get()))
        return Err(CKR_TEMPLATE_INCONSISTENT, "CKA_MODULUS_BITS does not match CKA_MODULUS");
    } else {
      const Bytes* p = tmpl.Get(CKA_EC_PARAMS);
      const Bytes* q = tmpl.Get(CKA_EC_POINT);
      if (!p || !q) return Err(CKR_TEMPLATE_INCOMPLETE, "CKA_EC_PARAMS and CKA_EC_POINT are required");
      if (tmpl.Has(CKA_MODULUS)) return Err(CKR_TEMPLATE_INCONSISTENT, "RSA attributes on an EC key");
      VAULTP11_ASSIGN_OR_RETURN(pkey, ossl::EcPublicFromPoint(*p, *q));
    }
    return PublicKeyObject(std::move(a), pkey.get(), *type);
  }
  // Private key import.
  ossl::PkeyRef pkey;
  if (*type == CKK_RSA) {
    ossl::RsaComponents c;
    const Bytes* n = tmpl.Get(CKA_MODULUS);
    const Bytes* e = tmpl.Get(CKA_PUBLIC_EXPONENT);
    const Bytes* d = tmpl.Get(CKA_PRIVATE_EXPONENT);
    if (!n || !e || !d)
      return Err(CKR_TEMPLATE_INCOMPLETE, "CKA_MODULUS, CKA_PUBLIC_EXPONENT and CKA_PRIVATE_EXPONENT are required");
    c.n = *n;
    c.e = *e;
    c.d.assign(d->begin(), d->end());
    SecureBytes h;
    if (TemplateSecret(tmpl, CKA_PRIME_1, h)) c.p = h;
    if (TemplateSecret(tmpl, CKA_PRIME_2, h)) c.q = h;
    if (TemplateSecret(tmpl, CKA_EXPONENT_1, h)) c.dp = h;
    if (TemplateSecret(tmpl, CKA_EXPONENT_2, h)) c.dq = h;
    if (TemplateSecret(tmpl, CKA_COEFFICIENT, h)) c.qinv = h;
    VAULTP11_ASSIGN_OR_RETURN(pkey, ossl::RsaPrivateFromComponents(c));
  } else {
    const Bytes* p = tmpl.Get(CKA_EC_PARAMS);
    const Bytes* v = tmpl.Get(CKA_VALUE);
    if (!p || !v) return Err(CKR_TEMPLATE_INCOMPLETE, "CKA_EC_PARAMS and CKA_VALUE are required");
    VAULTP11_ASSIGN_OR_RETURN(pkey, ossl::EcPrivateFromScalar(*p, *v));
  }
  VAULTP11_RETURN_IF_ERROR(CheckUnsupportedFlags(a));
  return PrivateKeyObject(std::move(a), std::move(pkey), *type);
}

Result<std::shared_ptr<Object>> UnwrappedKey(const AttributeMap& tmpl, SecureBytes key_bytes) {
  auto cls = tmpl.GetUlong(CKA_CLASS);
  if (!cls) return Err(CKR_TEMPLATE_INCOMPLETE, "CKA_CLASS missing from the unwrap template");
  auto type = tmpl.GetUlong(CKA_KEY_TYPE);
  if (!type) return Err(CKR_TEMPLATE_INCOMPLETE, "CKA_KEY_TYPE missing from the unwrap template");
  if (*cls != CKO_SECRET_KEY && *cls != CKO_PRIVATE_KEY)
    return Err(CKR_TEMPLATE_INCONSISTENT, "only secret and private keys can be unwrapped");
  VAULTP11_RETURN_IF_ERROR(CheckTemplate(*cls, tmpl, true));
  VAULTP11_RETURN_IF_ERROR(SoftwareOnly(tmpl));
  AttributeMap a;
  VAULTP11_RETURN_IF_ERROR(Base(a, *cls, tmpl));
  SetSensitivityHistory(a, false);
  if (*cls == CKO_SECRET_KEY) {
    if (*type != CKK_AES) return Err(CKR_TEMPLATE_INCONSISTENT, "only AES secret keys are supported");
    if (tmpl.Has(CKA_VALUE_LEN) && tmpl.GetUlong(CKA_VALUE_LEN) != key_bytes.size()) {
      // Padded mechanisms (RSA) carry the exact length; a shorter CKA_VALUE_LEN truncates
      // per spec only for block-padded wraps, which are not offered.
      return Err(CKR_TEMPLATE_INCONSISTENT, "CKA_VALUE_LEN does not match the unwrapped key");
    }
    if (key_bytes.size() != 16 && key_bytes.size() != 24 && key_bytes.size() != 32)
      return Err(CKR_WRAPPED_KEY_INVALID, "unwrapped key has {} bytes, not an AES length", key_bytes.size());
    return SecretKeyObject(std::move(a), std::move(key_bytes));
  }
  if (*type != CKK_RSA && *type != CKK_EC) return Err(CKR_TEMPLATE_INCONSISTENT, "unsupported key type");
  TypeDefaults(a, tmpl, *type);
  auto pk = ossl::PrivateKeyFromDer(key_bytes);
  if (!pk.ok()) return Err(CKR_WRAPPED_KEY_INVALID, "unwrapped bytes are not a private key");
  ossl::PkeyRef pkey = pk.value();
  bool is_rsa = EVP_PKEY_is_a(pkey.get(), "RSA");
  if ((*type == CKK_RSA) != is_rsa) return Err(CKR_TEMPLATE_INCONSISTENT, "CKA_KEY_TYPE does not match the unwrapped key");
  VAULTP11_RETURN_IF_ERROR(CheckUnsupportedFlags(a));
  return PrivateKeyObject(std::move(a), std::move(pkey), *type);
}

Result<std::shared_ptr<Object>> CopyObject(const Object& src, const AttributeMap& tmpl) {
  if (!src.attrs.GetBool(CKA_COPYABLE, true)) return Err(CKR_ACTION_PROHIBITED, "object is not copyable (CKA_COPYABLE false)");
  auto obj = std::make_shared<Object>(src);
  obj->store_id = 0;
  obj->owner_session = 0;
  obj->vault_origin = src.vault_origin || src.is_token();
  obj->attrs.Set(CKA_VAULTP11_VERSION, Bytes{});  // a stored copy gets its own (core/token.cc)
  for (const auto& [t, v] : tmpl.values()) {
    switch (t) {
      case CKA_TOKEN: case CKA_PRIVATE: case CKA_MODIFIABLE: case CKA_DESTROYABLE: case CKA_LABEL: case CKA_ID:
        obj->attrs.Set(t, v);
        break;
      case CKA_COPYABLE:
        if (!v.empty() && v[0] != CK_FALSE) return Err(CKR_ATTRIBUTE_READ_ONLY, "CKA_COPYABLE can only become false");
        obj->attrs.Set(t, v);
        break;
      default: {
        const Bytes* have = src.attrs.Get(t);
        if (have && *have == v) break;
        if (!RuleFor(src.cls(), t)) return Err(CKR_ATTRIBUTE_TYPE_INVALID, "{} is not an attribute of this object", AttrName(t));
        return Err(CKR_ATTRIBUTE_READ_ONLY, "{} cannot be changed by a copy", AttrName(t));
      }
    }
  }
  return obj;
}

Result<std::shared_ptr<Object>> ModifyObject(const Object& src, const AttributeMap& changes) {
  if (!src.attrs.GetBool(CKA_MODIFIABLE, true)) return Err(CKR_ACTION_PROHIBITED, "object is not modifiable (CKA_MODIFIABLE false)");
  auto obj = std::make_shared<Object>(src);
  for (const auto& [t, v] : changes.values()) {
    auto f = RuleFor(src.cls(), t);
    // An attribute this object does not carry (e.g. CKA_MODULUS_BITS of an EC key) is invalid.
    if (!f || (!(*f & (kModify | kSecret)) && !src.attrs.Has(t)))
      return Err(CKR_ATTRIBUTE_TYPE_INVALID, "{} is not an attribute of this object", AttrName(t));
    if (!(*f & kModify)) return Err(CKR_ATTRIBUTE_READ_ONLY, "{} cannot be modified", AttrName(t));
    // Spec 4.9 footnote 11: CKA_SENSITIVE only false -> true, CKA_EXTRACTABLE only true -> false.
    if (t == CKA_SENSITIVE && src.attrs.GetBool(CKA_SENSITIVE) && v[0] == CK_FALSE)
      return Err(CKR_ATTRIBUTE_READ_ONLY, "CKA_SENSITIVE cannot go back to false");
    if (t == CKA_EXTRACTABLE && !src.attrs.GetBool(CKA_EXTRACTABLE) && v[0] != CK_FALSE)
      return Err(CKR_ATTRIBUTE_READ_ONLY, "CKA_EXTRACTABLE cannot go back to true");
    if (t == CKA_COPYABLE && v[0] != CK_FALSE)
      return Err(CKR_ATTRIBUTE_READ_ONLY, "CKA_COPYABLE can only become false");
    // Spec 4.9/4.10 (footnote 11 of their tables): CKA_WRAP_WITH_TRUSTED, once true, is read-only.
    if (t == CKA_WRAP_WITH_TRUSTED && src.attrs.GetBool(CKA_WRAP_WITH_TRUSTED) && v[0] == CK_FALSE)
      return Err(CKR_ATTRIBUTE_READ_ONLY, "CKA_WRAP_WITH_TRUSTED cannot go back to false");
    if (IsLifecycleAttribute(t)) continue;  // resolved together below
    obj->attrs.Set(t, v);
  }
  VAULTP11_RETURN_IF_ERROR(CheckSecretValues(changes));
  // Setting one form of the window sets the other; tags are stored canonical.
  bool lifecycle = false;
  for (const auto& [t, v] : changes.values()) lifecycle |= IsLifecycleAttribute(t);
  if (lifecycle) VAULTP11_RETURN_IF_ERROR(ApplyLifecycle(src.cls(), changes, src.attrs, obj->attrs));
  return obj;
}

}  // namespace vaultp11::model

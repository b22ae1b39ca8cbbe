#include "model/attributes.h"

#include <cstring>

#include "vaultp11/vaultp11.h"

namespace vaultp11::model {

const Bytes* AttributeMap::Get(CK_ATTRIBUTE_TYPE t) const {
  auto it = values_.find(t);
  return it == values_.end() ? nullptr : &it->second;
}

bool AttributeMap::GetBool(CK_ATTRIBUTE_TYPE t, bool dflt) const {
  const Bytes* v = Get(t);
  if (v == nullptr || v->size() != 1) return dflt;
  return (*v)[0] != CK_FALSE;
}

std::optional<CK_ULONG> AttributeMap::GetUlong(CK_ATTRIBUTE_TYPE t) const {
  const Bytes* v = Get(t);
  if (v == nullptr || v->size() != sizeof(CK_ULONG)) return std::nullopt;
  CK_ULONG out;
  std::memcpy(&out, v->data(), sizeof(out));
  return out;
}

std::string AttributeMap::GetString(CK_ATTRIBUTE_TYPE t) const {
  const Bytes* v = Get(t);
  return v ? std::string(v->begin(), v->end()) : std::string();
}

void AttributeMap::SetUlong(CK_ATTRIBUTE_TYPE t, CK_ULONG v) {
  Bytes b(sizeof(v));
  std::memcpy(b.data(), &v, sizeof(v));
  values_[t] = std::move(b);
}

Bytes AttributeMap::Serialize() const {
  Bytes out;
  size_t total = 0;
  for (const auto& [t, v] : values_) total += 12 + v.size();
  out.reserve(total);
  for (const auto& [t, v] : values_) {
    uint64_t type = t;
    uint32_t len = static_cast<uint32_t>(v.size());
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(type >> (8 * i)));
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(len >> (8 * i)));
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

Result<AttributeMap> AttributeMap::Deserialize(std::span<const uint8_t> data) {
  AttributeMap m;
  size_t pos = 0;
  while (pos < data.size()) {
    if (data.size() - pos < 12) return Err(CKR_DEVICE_ERROR, "stored attributes truncated");
    uint64_t type = 0;
    uint32_t len = 0;
    for (int i = 0; i < 8; ++i) type |= static_cast<uint64_t>(data[pos + i]) << (8 * i);
    for (int i = 0; i < 4; ++i) len |= static_cast<uint32_t>(data[pos + 8 + i]) << (8 * i);
    pos += 12;
    if (data.size() - pos < len) return Err(CKR_DEVICE_ERROR, "stored attribute value truncated");
    m.values_[static_cast<CK_ATTRIBUTE_TYPE>(type)] = Bytes(data.begin() + pos, data.begin() + pos + len);
    pos += len;
  }
  return m;
}

AttrKind KindOf(CK_ATTRIBUTE_TYPE t) {
  switch (t) {
    case CKA_TOKEN: case CKA_PRIVATE: case CKA_MODIFIABLE: case CKA_COPYABLE:
    case CKA_DESTROYABLE: case CKA_SENSITIVE: case CKA_ENCRYPT: case CKA_DECRYPT:
    case CKA_WRAP: case CKA_UNWRAP: case CKA_SIGN: case CKA_SIGN_RECOVER: case CKA_VERIFY:
    case CKA_VERIFY_RECOVER: case CKA_DERIVE: case CKA_EXTRACTABLE: case CKA_LOCAL:
    case CKA_NEVER_EXTRACTABLE: case CKA_ALWAYS_SENSITIVE: case CKA_WRAP_WITH_TRUSTED:
    case CKA_TRUSTED: case CKA_ALWAYS_AUTHENTICATE: case CKA_VAULTP11_ENABLED:
      return AttrKind::kBool;
    case CKA_CLASS: case CKA_KEY_TYPE: case CKA_MODULUS_BITS: case CKA_VALUE_LEN:
    case CKA_KEY_GEN_MECHANISM: case CKA_CERTIFICATE_TYPE: case CKA_CERTIFICATE_CATEGORY:
    case CKA_VAULTP11_NOT_BEFORE: case CKA_VAULTP11_EXPIRES:
      return AttrKind::kUlong;
    case CKA_START_DATE: case CKA_END_DATE:
      return AttrKind::kDate;
    case CKA_ALLOWED_MECHANISMS:
      return AttrKind::kMechanisms;
    default:
      return AttrKind::kBytes;
  }
}

Result<AttributeMap> ParseTemplate(const CK_ATTRIBUTE* attrs, CK_ULONG count) {
  AttributeMap m;
  if (count > 0 && attrs == nullptr) return Err(CKR_ARGUMENTS_BAD, "template is NULL with count {}", count);
  if (count > 4096) return Err(CKR_TEMPLATE_INCONSISTENT, "template has {} attributes", count);
  for (CK_ULONG i = 0; i < count; ++i) {
    const CK_ATTRIBUTE& a = attrs[i];
    if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION || a.ulValueLen > (1UL << 20))
      return Err(CKR_ATTRIBUTE_VALUE_INVALID, "{}: length {} out of range", AttrName(a.type), a.ulValueLen);
    if (a.ulValueLen > 0 && a.pValue == nullptr)
      return Err(CKR_ATTRIBUTE_VALUE_INVALID, "{}: NULL value with length {}", AttrName(a.type), a.ulValueLen);
    switch (KindOf(a.type)) {
      case AttrKind::kBool:
        if (a.ulValueLen != sizeof(CK_BBOOL))
          return Err(CKR_ATTRIBUTE_VALUE_INVALID, "{}: CK_BBOOL must be 1 byte, got {}", AttrName(a.type), a.ulValueLen);
        break;
      case AttrKind::kUlong:
        if (a.ulValueLen != sizeof(CK_ULONG))
          return Err(CKR_ATTRIBUTE_VALUE_INVALID, "{}: CK_ULONG must be {} bytes, got {}", AttrName(a.type),
                     sizeof(CK_ULONG), a.ulValueLen);
        break;
      case AttrKind::kDate:
        if (a.ulValueLen != 0 && a.ulValueLen != sizeof(CK_DATE))
          return Err(CKR_ATTRIBUTE_VALUE_INVALID, "{}: CK_DATE must be 0 or 8 bytes", AttrName(a.type));
        for (CK_ULONG j = 0; j < a.ulValueLen; ++j) {
          uint8_t c = static_cast<const uint8_t*>(a.pValue)[j];
          if (c < '0' || c > '9') return Err(CKR_ATTRIBUTE_VALUE_INVALID, "{}: CK_DATE must be digits", AttrName(a.type));
        }
        break;
      case AttrKind::kMechanisms:
        if (a.ulValueLen % sizeof(CK_MECHANISM_TYPE) != 0)
          return Err(CKR_ATTRIBUTE_VALUE_INVALID, "CKA_ALLOWED_MECHANISMS: length not a multiple of {}",
                     sizeof(CK_MECHANISM_TYPE));
        break;
      case AttrKind::kBytes:
        break;
    }
    const uint8_t* p = static_cast<const uint8_t*>(a.pValue);
    Bytes v(p, p + a.ulValueLen);
    if (a.ulValueLen == 0) v.clear();
    const Bytes* prev = m.Get(a.type);
    if (prev != nullptr && *prev != v)
      return Err(CKR_TEMPLATE_INCONSISTENT, "{} given twice with different values", AttrName(a.type));
    m.Set(a.type, std::move(v));
  }
  return m;
}

std::string AttrName(CK_ATTRIBUTE_TYPE t) {
  switch (t) {
#define N(x) case x: return #x;
    N(CKA_CLASS) N(CKA_TOKEN) N(CKA_PRIVATE) N(CKA_LABEL) N(CKA_APPLICATION) N(CKA_VALUE)
    N(CKA_OBJECT_ID) N(CKA_CERTIFICATE_TYPE) N(CKA_ISSUER) N(CKA_SERIAL_NUMBER) N(CKA_KEY_TYPE)
    N(CKA_SUBJECT) N(CKA_ID) N(CKA_SENSITIVE) N(CKA_ENCRYPT) N(CKA_DECRYPT) N(CKA_WRAP)
    N(CKA_UNWRAP) N(CKA_SIGN) N(CKA_SIGN_RECOVER) N(CKA_VERIFY) N(CKA_VERIFY_RECOVER)
    N(CKA_DERIVE) N(CKA_START_DATE) N(CKA_END_DATE) N(CKA_MODULUS) N(CKA_MODULUS_BITS)
    N(CKA_PUBLIC_EXPONENT) N(CKA_PRIVATE_EXPONENT) N(CKA_PRIME_1) N(CKA_PRIME_2)
    N(CKA_EXPONENT_1) N(CKA_EXPONENT_2) N(CKA_COEFFICIENT) N(CKA_VALUE_LEN) N(CKA_EXTRACTABLE)
    N(CKA_LOCAL) N(CKA_NEVER_EXTRACTABLE) N(CKA_ALWAYS_SENSITIVE) N(CKA_KEY_GEN_MECHANISM)
    N(CKA_MODIFIABLE) N(CKA_COPYABLE) N(CKA_DESTROYABLE) N(CKA_EC_PARAMS) N(CKA_EC_POINT)
    N(CKA_ALWAYS_AUTHENTICATE) N(CKA_WRAP_WITH_TRUSTED) N(CKA_TRUSTED) N(CKA_ALLOWED_MECHANISMS)
    N(CKA_PUBLIC_KEY_INFO) N(CKA_CHECK_VALUE) N(CKA_WRAP_TEMPLATE) N(CKA_UNWRAP_TEMPLATE)
    N(CKA_VAULTP11_PROTECTION) N(CKA_VAULTP11_HSM_KEY_ID) N(CKA_VAULTP11_ENABLED) N(CKA_VAULTP11_NOT_BEFORE)
    N(CKA_VAULTP11_EXPIRES) N(CKA_VAULTP11_TAGS)
    N(CKA_VAULTP11_VERSION) N(CKA_VAULTP11_NEW_VERSION) N(CKA_VAULTP11_CONTENT_TYPE)
#undef N
    default:
      return fmt::format("attribute 0x{:x}", t);
  }
}

}  // namespace vaultp11::model

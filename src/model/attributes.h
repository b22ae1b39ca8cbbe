// AttributeMap holds the plain (non-secret) attribute values of one object, keyed by type.
#pragma once

#include <p11-kit/pkcs11.h>

#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "util/result.h"
#include "util/secure_bytes.h"

namespace vaultp11::model {

class AttributeMap {
 public:
  bool Has(CK_ATTRIBUTE_TYPE t) const { return values_.count(t) != 0; }
  const Bytes* Get(CK_ATTRIBUTE_TYPE t) const;
  bool GetBool(CK_ATTRIBUTE_TYPE t, bool dflt = false) const;
  std::optional<CK_ULONG> GetUlong(CK_ATTRIBUTE_TYPE t) const;
  std::string GetString(CK_ATTRIBUTE_TYPE t) const;

  void Set(CK_ATTRIBUTE_TYPE t, Bytes v) { values_[t] = std::move(v); }
  void Set(CK_ATTRIBUTE_TYPE t, std::span<const uint8_t> v) { values_[t] = Bytes(v.begin(), v.end()); }
  void SetBool(CK_ATTRIBUTE_TYPE t, bool v) { values_[t] = Bytes{static_cast<uint8_t>(v ? CK_TRUE : CK_FALSE)}; }
  void SetUlong(CK_ATTRIBUTE_TYPE t, CK_ULONG v);
  void SetString(CK_ATTRIBUTE_TYPE t, std::string_view s) { values_[t] = Bytes(s.begin(), s.end()); }
  void Erase(CK_ATTRIBUTE_TYPE t) { values_.erase(t); }

  const std::map<CK_ATTRIBUTE_TYPE, Bytes>& values() const { return values_; }

  // Compact binary form for the store: repeated (u64 type, u32 length, bytes), little endian.
  Bytes Serialize() const;
  static Result<AttributeMap> Deserialize(std::span<const uint8_t> data);

 private:
  std::map<CK_ATTRIBUTE_TYPE, Bytes> values_;
};

// How an attribute type is stored and checked (sizes in templates).
enum class AttrKind { kBool, kUlong, kBytes, kDate, kMechanisms };
AttrKind KindOf(CK_ATTRIBUTE_TYPE t);

// A caller's template, validated for value sizes (CKR_ATTRIBUTE_VALUE_INVALID for a bool that is
// not one byte, a CK_ULONG of the wrong size, a date not 0 or 8 bytes; CKR_TEMPLATE_INCONSISTENT
// for a type given twice with different values).
Result<AttributeMap> ParseTemplate(const CK_ATTRIBUTE* attrs, CK_ULONG count);

std::string AttrName(CK_ATTRIBUTE_TYPE t);

}  // namespace vaultp11::model

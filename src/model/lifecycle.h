// Life-cycle attributes of keys and secrets (vaultp11.h): CKA_VAULTP11_ENABLED, the validity
// window CKA_VAULTP11_NOT_BEFORE / CKA_VAULTP11_EXPIRES kept consistent with the standard
// CKA_START_DATE / CKA_END_DATE, and CKA_VAULTP11_TAGS; and the rule a key use obeys.
#pragma once

#include <p11-kit/pkcs11.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "model/attributes.h"
#include "util/result.h"
#include "util/secure_bytes.h"
#include "vaultp11/vaultp11.h"

namespace vaultp11::model {

// 9999-12-31T23:59:59Z: the last second a CK_DATE can name.
inline constexpr CK_ULONG kMaxUnixTime = 253402300799UL;
inline constexpr int64_t kSecondsPerDay = 86400;

// Whether `t` is one of the six attributes ApplyLifecycle resolves (the four vendor ones and
// the two CK_DATEs).
bool IsLifecycleAttribute(CK_ATTRIBUTE_TYPE t);

// A CK_DATE ("YYYYMMDD") as days since 1970-01-01: nullopt for an empty date ("" or
// "00000000"); CKR_ATTRIBUTE_VALUE_INVALID for anything that is not a calendar day of 1970-9999.
Result<std::optional<int64_t>> ParseDate(std::span<const uint8_t> date, CK_ATTRIBUTE_TYPE t);
// The CK_DATE of a day (days since 1970-01-01).
Bytes DateOfDay(int64_t days);
// Unix seconds as "YYYY-MM-DDTHH:MM:SSZ".
std::string FormatUnixTime(int64_t secs);

// The window an object's attributes say, in Unix seconds (0 = not set). Objects stored before
// the vendor attributes existed have only the dates: their window is derived from them (the
// start day's 00:00:00Z, the end day's 23:59:59Z).
struct Window {
  CK_ULONG not_before = 0;
  CK_ULONG expires = 0;
};
Window CurrentWindow(const AttributeMap& attrs, bool has_dates);

// The tags in canonical form (compact JSON, names sorted), or CKR_ATTRIBUTE_VALUE_INVALID
// (see CKA_VAULTP11_TAGS). An empty value is "{}".
Result<Bytes> CanonicalTags(std::span<const uint8_t> json);

// Resolves the life-cycle attributes given in `tmpl` over an object whose attributes are
// `current` (empty for a new object) and writes the result into `out`: the window in both forms
// (the dates only for keys: `cls` != CKO_DATA), canonical tags, the enabled flag. Unchanged
// attributes are written from `current` (so older objects gain the vendor attributes).
// Errors: CKR_ATTRIBUTE_VALUE_INVALID (bad value), CKR_TEMPLATE_INCONSISTENT (the two forms
// disagree, or not-before after expiry).
Status ApplyLifecycle(CK_OBJECT_CLASS cls, const AttributeMap& tmpl, const AttributeMap& current, AttributeMap& out);

// The value an object that predates the life-cycle attributes answers for one of them, or
// nullopt when `t` is not one (ENABLED true, the window from the dates, tags "{}").
std::optional<Bytes> LifecycleDefault(CK_OBJECT_CLASS cls, const AttributeMap& attrs, CK_ATTRIBUTE_TYPE t);

// The rule of a key use at time `now` (Unix seconds): a disabled key refuses every use; outside
// its window a key refuses the protecting uses (sign, encrypt, wrap: `protecting` true) and
// keeps verify, decrypt and unwrap. Refusals are CKR_KEY_FUNCTION_NOT_PERMITTED.
Status CheckKeyLifecycle(const AttributeMap& attrs, bool protecting, int64_t now);

// The clock the rule uses (the system's UTC time, in seconds).
int64_t UnixNow();

}  // namespace vaultp11::model
